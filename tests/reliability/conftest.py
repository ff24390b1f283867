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
def ray_serve(grpc_port: int) -> Iterator[int]:
    """The integration tier's local Ray Serve (gRPC on ``grpc_port``); in a session that
    runs both tiers, the one that tier already started (one Ray per process)."""
    import ray

    if ray.is_initialized():
        from ray.serve.context import _get_global_client

        yield int(_get_global_client().get_serve_details()["http_options"]["port"])
    else:
        yield from inspect.unwrap(integration.ray_serve)(grpc_port)


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


@pytest.fixture(scope="session")
def finserve_served(tiny_store: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`finserve serve` as users run it (its own Ray behind the HAProxy ingress, in a
    subprocess), requiring API keys, with two gateway replicas serving fraud: the server,
    its key file and the plaintext of each key (``steady`` and ``revoked``)."""
    from types import SimpleNamespace

    from serving.security import new_key, write_keys
    from tests.integration.test_cli_serve import finserve_serve

    folder = tmp_path_factory.mktemp("finserve-serve")
    plain, entries = {}, []
    for key_id in ("steady", "revoked"):
        plain[key_id], entry = new_key(key_id, ["fraud"])
        entries.append(entry)
    keys_file = folder / "api-keys.yaml"
    write_keys(keys_file, entries)
    args = {"store_uri": tiny_store.root,
            "audit": {"location": str(folder / "trail"), "keys_dir": str(folder / "keys")},
            "security": {"api_keys_file": str(keys_file), "require_auth": True},
            "gateway": {"num_replicas": 2, "num_cpus": 0.2, "max_ongoing_requests": 64},
            "models": [{"name": "fraud"}]}
    with finserve_serve(folder, args) as server:
        yield SimpleNamespace(server=server, url=server.url, keys_file=keys_file,
                              plain=plain, entries={e.id: e for e in entries})
