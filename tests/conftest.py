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


#: the models every test session trains small: (task, samples, epochs, seed)
TINY_MODELS = (
    ("fraud", 8000, 3, 1),
    ("fraud", 8000, 4, 2),
    ("fraud", 8000, 2, 3),
    ("sentiment", 2000, 2, 1),
    ("credit", 8000, 4, 1),
    ("digits", None, 10, 1),
    ("forecast", 6000, 3, 1),
    ("recommend", 4000, 4, 1),
)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory):
    """Every task trained small and fast on its built-in data (fraud in three versions)."""
    from serving.store import ModelStore
    from serving.training import train

    store = ModelStore(tmp_path_factory.mktemp("store"))
    for task, samples, epochs, seed in TINY_MODELS:
        train(task, store, samples=samples, epochs=epochs, seed=seed)
    return store
