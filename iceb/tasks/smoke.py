"""A tiny fixed task for checking mechanics (any model): 10 everyday-object edits, template prompts only.

It has no holdout classifier ids and no free-form prompts; use it with model-independent metrics
(``image-change``). Its numbers say nothing about an editor's quality.
"""
from __future__ import annotations

from editors.requests import DEFAULT_TEMPLATES, EditRequest
from iceb.tasks import TASKS
from iceb.tasks.base import EvalPrompt, Task, TaskInstance

PAIRS = [("cat", "dog"), ("apple", "orange"), ("car", "bicycle"), ("chair", "table"), ("tree", "flower"),
         ("house", "castle"), ("boat", "airplane"), ("guitar", "piano"), ("cup", "bottle"), ("horse", "cow")]
HOLDOUT = ["bird", "clock", "shoe", "lamp"]


class SmokeTask(Task):
    name = "smoke"
    description = "mechanics check: 10 fixed everyday-object edits, template prompts only"
    default_edits = (1, 5, 10)
    default_metrics = ("image-change",)

    def __init__(self, world: str = "imagenet"):
        self.world_name = world

    @property
    def max_edits(self) -> int:
        return len(PAIRS)

    def _build(self, n: int) -> TaskInstance:
        requests, prompts = [], []
        for i, (src, dst) in enumerate(PAIRS[:n]):
            requests.append(EditRequest(src, dst, DEFAULT_TEMPLATES, seed=1000 + i, request_id=f"smoke-{i}"))
            for j, t in enumerate(DEFAULT_TEMPLATES):
                prompts.append(EvalPrompt(t.format(src), 100 * i + j, "edit", src, dst, f"smoke-{i}"))
        for k, name in enumerate(HOLDOUT):
            prompts.append(EvalPrompt(f"A photo of {name}", 5000 + k, "holdout", name, None, f"holdout-{k}"))
        return TaskInstance(self.name, n, tuple(requests), tuple(prompts), self.world_name)


TASKS.register("smoke", SmokeTask)
