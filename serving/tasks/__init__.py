"""The use cases FinServe trains and serves; one module per task.

Adding a task is adding a module here with a ``Task`` subclass: it is found by name.
"""

from __future__ import annotations

import importlib
import pkgutil

from serving.tasks.base import Dataset, Evaluation, PostprocessContext, Task


def _discover() -> dict[str, type[Task]]:
    found: dict[str, type[Task]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Task) and value is not Task
                    and value.__module__ == module.__name__):
                found[value.name] = value
    return dict(sorted(found.items()))


TASKS: dict[str, type[Task]] = _discover()


def get_task(name: str) -> Task:
    """The task called ``name``; the error lists the known ones."""
    try:
        return TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Dataset", "Evaluation", "PostprocessContext", "Task", "get_task"]
