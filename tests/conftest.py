"""Fixtures shared by every tier: a tiny model store trained once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTDATA = Path(__file__).parent / "testdata"


def golden(name: str) -> Any:
    """A golden request or response from tests/testdata/."""
    return json.loads((TESTDATA / name).read_text())


def _tiny_models() -> tuple[tuple[str, int | None, int, int], ...]:
    """(task, samples, epochs, seed): every default model trained small (its task's
    ``quick_training``), and fraud twice more (versions 2 and 3, for routing tests)."""
    from serving.config import default_models
    from serving.tasks import get_task

    runs: list[tuple[str, int | None, int, int]] = []
    for m in default_models():
        samples, epochs = get_task(m.task_name).quick_training
        runs.append((m.task_name, samples, epochs, 1))
        if m.task_name == "fraud":
            runs += [("fraud", samples, epochs + 1, 2), ("fraud", samples, epochs - 1, 3)]
    return tuple(runs)


#: the models every test session trains small: (task, samples, epochs, seed)
TINY_MODELS = _tiny_models()


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory):
    """Every task trained small and fast on its built-in data (fraud in three versions)."""
    from serving.store import ModelStore
    from serving.training import train

    store = ModelStore(tmp_path_factory.mktemp("store"))
    for task, samples, epochs, seed in TINY_MODELS:
        train(task, store, samples=samples, epochs=epochs, seed=seed)
    return store
