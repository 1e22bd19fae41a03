"""The process group of a run: one process, or the ranks of an ``accelerate launch`` / ``torchrun`` group.

Every step that may fail on some ranks runs inside :meth:`Dist.collective`: the block's exception (or its
absence) is all-gathered, so either every rank goes on or every rank raises; no rank is left waiting in a
collective for a rank that died.
"""
from __future__ import annotations

import datetime
import os
from typing import Any


def check_launch(env: dict[str, str] | None = None) -> None:
    """Refuse an ``accelerate launch --num_processes K`` (K > 1) that started one process.

    accelerate starts a process group only with several GPUs (``--multi_gpu``); on a CPU-only or one-GPU
    machine it silently runs a single process, which would evaluate everything alone while the user expects
    K ranks. It leaves ``MASTER_ADDR`` set (asked for K > 1) but no ``WORLD_SIZE``: that is the sign.

    Args:
        env: The environment to read (default: ``os.environ``).

    Raises:
        ValueError: One line saying what to run instead.
    """
    env = os.environ if env is None else env
    launched = "ACCELERATE_MIXED_PRECISION" in env or "ACCELERATE_USE_CPU" in env
    if launched and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
        raise ValueError("accelerate launch started one process, not a group: it starts several only on several "
                         "GPUs. For K CPU processes run 'torchrun --nproc_per_node K -m iceb evaluate ... "
                         "--device cpu' (or 'accelerate launch --multi_gpu --num_processes K -m iceb evaluate ... "
                         "--device cpu'); with one GPU run 'iceb evaluate ...' as one process")


class Dist:
    """One process, or one rank of an ``accelerate launch`` / ``torchrun`` group (via accelerate)."""

    def __init__(self, device: str) -> None:
        check_launch()
        self.state = None
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
            # other ranks wait in a collective while rank 0 edits: a 1000-request edit can outlast the
            # default 30-minute timeout, so allow ICEB_DIST_TIMEOUT_H hours (default 24)
            hours = float(os.environ.get("ICEB_DIST_TIMEOUT_H", "24"))
            self.state = PartialState(cpu=cpu, timeout=datetime.timedelta(hours=hours))
            self.rank, self.world = self.state.process_index, self.state.num_processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        if self.state is None or requested not in ("auto", "cuda"):
            return requested
        return str(self.state.device)

    def split(self, items: list) -> list:
        if self.state is None:
            return list(items)
        with self.state.split_between_processes(list(items), apply_padding=False) as mine:
            return list(mine)

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def broadcast(self, obj: Any) -> Any:
        if self.state is None:
            return obj
        from accelerate.utils import broadcast_object_list

        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def collective(self) -> "_Collective":
        """``with dist.collective(): ...`` on every rank: if the block fails on any rank, all ranks raise.

        The failing rank raises its own exception; the others raise a RuntimeError naming the rank and its
        error. Work for rank 0 alone goes inside the block under ``if dist.main:``."""
        return _Collective(self)

    def _agree(self, err: BaseException | None) -> None:
        if self.state is None:
            return
        import torch.distributed as dist

        msgs: list[Any] = [None] * self.world
        dist.all_gather_object(msgs, None if err is None else (type(err).__name__, str(err)))
        if err is not None:
            return  # the caller re-raises its own error
        for i, m in enumerate(msgs):
            if m is not None:
                raise RuntimeError(f"rank {i} failed with {m[0]}: {m[1]}")


class _Collective:
    """The context manager of :meth:`Dist.collective` (the error sharing, written once)."""

    def __init__(self, dist: Dist) -> None:
        self.dist = dist

    def __enter__(self) -> "_Collective":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.dist._agree(exc)
        return False  # never swallow: this rank's own error propagates as it was

