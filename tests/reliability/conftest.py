"""The reliability tier (issue 5): the integration tier's local Ray Serve under sustained load,
a lost replica and hostile input, then the decision trail checked against every answer.

``FINSERVE_RELIABILITY_SECONDS`` sets how long each load runs (default 15 s); run with ``-s``
to see one summary line per test.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import conftest as integration
from tests.integration.conftest import *  # noqa: F403 - the integration tier's fixtures
from tests.reliability.load import Ledger

# hypothesis keeps its caches outside the work tree
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      str(Path(tempfile.gettempdir()) / "finserve-hypothesis"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: sustained load, replica loss and hostile input against a real "
        "local Ray Serve; FINSERVE_RELIABILITY_SECONDS sets the duration",
    )


@pytest.fixture(scope="session")
def seconds() -> float:
    """How long each load test runs."""
    return float(os.environ.get("FINSERVE_RELIABILITY_SECONDS", "15"))


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[int]:
    """The integration tier's local Ray Serve; in a session that runs both tiers, the one
    that tier already started (one Ray per process)."""
    import ray

    if ray.is_initialized():
        from ray.serve.context import _get_global_client

        yield int(_get_global_client().get_serve_details()["http_options"]["port"])
    else:
        yield from inspect.unwrap(integration.ray_serve)()


@pytest.fixture(scope="session")
def session_args(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The integration tier's session app with two fraud Model replicas, so that a killed one
    leaves one to retry on (with one, the outage lasts as long as the replacement starts)."""
    build = inspect.unwrap(integration.session_args)
    args = build(*(request.getfixturevalue(name) for name in inspect.signature(build).parameters))
    fraud = next(m for m in args["models"] if m["name"] == "fraud")
    fraud.setdefault("model", {})["num_replicas"] = 2
    return args


@pytest.fixture(scope="session")
def ledger(base_url: str, trail: Path) -> Ledger:
    """Every prediction request the tier sends, by request id, with the status it got."""
    return Ledger(trail)

