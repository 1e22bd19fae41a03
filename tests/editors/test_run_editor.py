"""editors.run: the one way to run an editor (modes, request checks, timing, the NaN refusal)."""
from __future__ import annotations

import dataclasses
import zlib

import pytest
import torch

from editors.base import BaseEditor, EditRequest, EditResult, RequestError
from editors.hparams import Hparams
from editors.run import EditMode, NonFiniteEditError, edit_in_rounds, make_editor, run_editor
from editors.weights import get_tensor

TO_V = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"
REQS = [EditRequest("cat", "dog"), EditRequest("apple", "orange"), EditRequest("car", "bicycle")]


@dataclasses.dataclass(frozen=True)
class _Hp(Hparams):
    strength: float = 0.05
    nan: bool = False


class _Scale(BaseEditor):
    """Scales one weight by a factor of the requests' sources; counts its calls."""

    name = "test-run-scale"
    hparams_class = _Hp
    supports = frozenset({"update"})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def edit(self, pipe, requests):
        self.calls.append(len(requests))
        w = get_tensor(pipe, TO_V).detach().clone()
        new = w * (1.0 + self.hparams.strength * sum(zlib.crc32(r.source.encode()) % 7 + 1 for r in requests))
        if self.hparams.nan:
            new[0, 0] = float("nan")
            return _unchecked({TO_V: new})
        return EditResult({TO_V: new}, timings={"solve": 1.0})


def _unchecked(tensors):
    """An EditResult built around its own finiteness check (an editor that mutates its result afterwards)."""
    res = EditResult({})
    res.tensors.update(tensors)
    return res


def test_edit_mode_parses_and_prints_the_row_strings():
    assert str(EditMode()) == "batch" and str(EditMode("sequential", 3)) == "sequential-3"
    assert EditMode.parse("sequential-3") == EditMode("sequential", 3)
    assert EditMode.parse("batch") == EditMode() and EditMode.parse("sequential") == EditMode("sequential", 1)
    for text in ("batch", "sequential-1", "sequential-12"):
        assert str(EditMode.parse(text)) == text
    with pytest.raises(ValueError, match="mode must be 'batch' or 'sequential'"):
        EditMode("parallel")
    with pytest.raises(ValueError, match="rounds needs mode 'sequential'"):
        EditMode("batch", 2)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        EditMode("sequential", 0)
    with pytest.raises(ValueError):
        EditMode.parse("sequential-x")
    with pytest.raises(RequestError, match="number of requests"):
        EditMode("sequential", 4).check(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EditMode().rounds = 2  # type: ignore[misc]


def test_batch_mode_is_one_edit_call_as_before(tiny_pipe):
    ed = make_editor(_Scale, _Hp(), progress=False)
    res = run_editor(ed, tiny_pipe, REQS, EditMode())
    assert ed.calls == [3]
    direct = _Scale(_Hp()).edit(tiny_pipe, REQS)
    assert torch.equal(res.tensors[TO_V], direct.tensors[TO_V])
    assert res.timings["solve"] == 1.0 and res.timings["edit_seconds"] >= 0
    assert run_editor(ed, tiny_pipe, REQS, "batch").tensors[TO_V].equal(direct.tensors[TO_V])


def test_sequential_mode_is_edit_in_rounds_as_before(tiny_pipe):
    ed = make_editor(_Scale, _Hp(), progress=False)
    before = get_tensor(tiny_pipe, TO_V).detach().clone()
    res = run_editor(ed, tiny_pipe, REQS, EditMode("sequential", 3))
    assert ed.calls == [1, 1, 1]
    want = edit_in_rounds(_Scale(_Hp()), tiny_pipe, REQS, 3)
    assert torch.equal(res.tensors[TO_V], want.tensors[TO_V])
    info = {k: v for k, v in res.info.items() if k != "cost"}
    assert info == {"mode": "sequential", "rounds": 3} and res.timings["solve"] == 3.0
    assert torch.equal(get_tensor(tiny_pipe, TO_V), before)  # the pipeline is left clean
    import editors

    assert editors.edit_in_rounds is edit_in_rounds  # still importable from the package


def test_request_checks_come_first(tiny_pipe):
    ed = make_editor(_Scale, _Hp(), progress=False)
    with pytest.raises(RequestError, match="does not support 'erase'"):
        run_editor(ed, tiny_pipe, [EditRequest("cat", kind="erase")])
    with pytest.raises(RequestError, match="number of requests"):
        run_editor(ed, tiny_pipe, REQS[:2], EditMode("sequential", 3))
    assert ed.calls == []


@pytest.mark.parametrize("mode", [EditMode(), EditMode("sequential", 2)])
def test_a_nan_edit_is_refused_naming_the_editor(tiny_pipe, mode):
    ed = make_editor(_Scale, _Hp(nan=True), progress=False)
    with pytest.raises(FloatingPointError, match="editor test-run-scale produced non-finite values") as info:
        run_editor(ed, tiny_pipe, REQS, mode)
    assert isinstance(info.value, NonFiniteEditError) and info.value.editor == "test-run-scale"
    assert torch.isfinite(get_tensor(tiny_pipe, TO_V)).all()


def test_make_editor_uses_the_protocol_constructor(tmp_path):
    from editors.base import Editor

    ed = make_editor(_Scale, _Hp(strength=0.5), cache_dir=tmp_path, progress=False)
    assert isinstance(ed, Editor)
    assert ed.hparams.strength == 0.5 and ed.cache_dir == tmp_path and ed.progress is False
