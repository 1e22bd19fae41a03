"""Task registry. ``get_task(name, world)`` builds a task for the model's world (imagenet or toy)."""
from __future__ import annotations

from iceb.tasks.base import EvalPrompt, Task, TaskError, TaskInstance
from iceb.utils.registry import Registry

TASKS: Registry = Registry("task", entry_point_group="iceb.tasks")

TASKS.register("smoke", "iceb.tasks.smoke:SmokeTask",
               description="mechanics check: 10 fixed everyday-object edits, template prompts only")
TASKS.register("ace", "iceb.tasks.ace:ACETask",
               description="arbitrary concept editing on ICEB's official split (toy world: the toy split)")
TASKS.register("rectification", "iceb.tasks.rectification:RectificationTask",
               description="concept rectification: misunderstood aliases -> their class (official ICEB / toy)")
TASKS.register("ace-1k", "iceb.tasks.ace:ACE1kTask",
               description="arbitrary concept editing on the project's 1000-class split, up to 1000 edits")
TASKS.register("rectification-1k", "iceb.tasks.rectification:Rectification1kTask",
               description="concept rectification on the project's 1000-class split")
TASKS.register("artists", "iceb.tasks.artists:ArtistsTask",
               description="artist-style erasure towards 'art', 1 to 1000 artists (EMCID/UCE lists and prompts)")
TASKS.register("nsfw", "iceb.tasks.nsfw:NSFWTask",
               description="NSFW erasure: UCE-style erase of nudity/sexual/blood, NudeNet counts on I2P's 4,703 prompts")
TASKS.register("debias", "iceb.tasks.debias:DebiasTask",
               description="gender debiasing of EMCID's 37 professions: Delta = |p_female - 0.5| / 0.5 over 10 "
                           "seeds (editors with a debiasing mode: emcid)")


def get_task(name: str, world: str = "imagenet", **kwargs) -> Task:
    """An instantiated task; ``name`` may also be ``package.module:Class`` or a task file path.

    Args:
        name: A registered task name (``iceb list tasks``), an entry point of the group ``iceb.tasks``,
            ``package.module:Class``, or a user task file (``.json``, ``.jsonl``, ``.csv``, ``.yaml``).
        world: The model's world (``"imagenet"`` or ``"toy"``), for tasks that serve both; a task class
            whose constructor takes no ``world`` is built without it.
        **kwargs: Passed to the task's constructor; ``split="dev"`` asks for the task's dev split (requests
            reserved for tuning; split tasks only); ``score_requests=k`` scores a fixed sample of k requests at
            edit counts above k (split tasks only; see :class:`iceb.tasks.ace.SplitTask`).

    Returns:
        The :class:`Task` instance.

    Raises:
        KeyError: An unknown name (:class:`~iceb.utils.registry.UnknownNameError`, listing the known names
            and the closest match).
        ImportError: A ``package.module:Class`` or entry point that cannot be imported.
        TaskError: A task file or split that cannot be read.
    """
    from pathlib import Path

    split = kwargs.pop("split", "test")
    is_file = name not in TASKS and ":" not in name and Path(name).suffix in (".json", ".jsonl", ".csv", ".yaml", ".yml")
    if kwargs.get("score_requests") is None:
        kwargs.pop("score_requests", None)
    if split != "test" or "score_requests" in kwargs:
        from iceb.tasks.ace import SplitTask, check_split_name

        check_split_name(split)
        cls = None if is_file else TASKS.get(name)  # an unknown name: the registry's did-you-mean error
        if cls is None or not (isinstance(cls, type) and issubclass(cls, SplitTask)):
            if split == "test":
                raise TaskError(f"task {name!r} does not score a sample of its requests (score_requests); the split "
                                f"tasks do: 'ace', 'rectification', 'ace-1k', 'rectification-1k'")
            raise TaskError(f"task {name!r} has no {split} split; tasks with one: 'ace' and 'rectification' on the "
                            f"toy world")
        return cls(world=world, split=split, **kwargs)
    if is_file:
        from iceb.tasks.user import UserTask  # user-defined task file

        return UserTask.from_file(name, world=world, **kwargs)
    cls = TASKS.get(name)
    try:
        return cls(world=world, **kwargs)
    except TypeError:
        return cls(**kwargs)


__all__ = ["TASKS", "EvalPrompt", "Task", "TaskError", "TaskInstance", "get_task"]
