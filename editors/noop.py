"""The control editor: changes nothing. Every metric's no-edit value comes from it."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from editors import register_editor
from editors.base import BaseEditor, EditRequest, EditResult
from editors.hparams import Hparams


@dataclasses.dataclass(frozen=True)
class NoopHparams(Hparams):
    """No hyperparameters."""


@register_editor("noop", description="changes nothing; the harness's control")
class NoopEditor(BaseEditor):
    hparams_class = NoopHparams

    def edit(self, pipe: Any, requests: Sequence[EditRequest]) -> EditResult:
        self.check_requests(requests)
        return EditResult({}, info={"requests": len(requests)})
