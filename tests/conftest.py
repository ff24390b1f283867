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


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory):
    """fraud v1 and v2 and sentiment v1, trained small and fast on the built-in data."""
    from serving.store import ModelStore
    from serving.training import train

    store = ModelStore(tmp_path_factory.mktemp("store"))
    train("fraud", store, samples=8000, epochs=3, seed=1)
    train("fraud", store, samples=8000, epochs=4, seed=2)
    train("sentiment", store, samples=2000, epochs=2, seed=1)
    return store
