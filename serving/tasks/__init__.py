"""The use cases FinServe trains and serves; one module per task.

Adding a task is adding a module with a ``Task`` subclass and an entry in ``TASKS``.
"""

from __future__ import annotations

from serving.tasks.base import Dataset, Evaluation, Task
from serving.tasks.fraud import FraudTask
from serving.tasks.sentiment import SentimentTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (FraudTask, SentimentTask)}


def get_task(name: str) -> Task:
    """The task called ``name``; the error lists the known ones."""
    try:
        return TASKS[name]()
    except KeyError:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}") from None


__all__ = ["TASKS", "Dataset", "Evaluation", "Task", "get_task"]
