"""One switch for every progress bar of a process: ICEB's own and those of diffusers, transformers and
huggingface_hub (``--no-progress``)."""
from __future__ import annotations

import os

#: environment variables that turn the bars off in the processes this one starts (tqdm >= 4.66 reads
#: ``TQDM_DISABLE`` when it is imported, huggingface_hub its own: in this process the calls below do it)
_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def silence_progress_bars() -> None:
    """Hide every progress bar from now on, in this process and the processes it starts.

    ICEB's bars follow ``progress=False`` already, and ICEB turns every pipeline's own sampling bar off
    (``set_progress_bar_config(disable=True)`` where it calls a pipeline); this reaches the bars ICEB does
    not own: diffusers' "Loading pipeline components", transformers' checkpoint-shard and huggingface_hub's
    download bars, and (through ``TQDM_DISABLE``) every tqdm of a child process. A library that is not
    installed is skipped.
    """
    os.environ.update(_ENV)
    try:
        import diffusers.utils.logging as dlog

        dlog.disable_progress_bar()
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
    try:
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass

