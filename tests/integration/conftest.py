"""One real local Ray Serve per test session, serving the tiny store's models."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


#: every task the session's app serves; fraud first
ALL_MODELS = ("fraud", "sentiment", "credit", "digits", "forecast", "recommend")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    """Poll until ``condition()`` is truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")


def app_args(store_uri: str, audit: str, **limits: Any) -> dict[str, Any]:
    return {
        "store_uri": store_uri,
        "audit": {"location": audit},
        "limits": {"max_body_bytes": 65536, "max_instances": 64, **limits},
        "models": [
            {"name": "fraud", "versions": ["2", "1"],
             "model": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002}},
            *({"name": name} for name in ALL_MODELS[1:]),
        ],
    }


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[int]:
    """A local Ray with Serve's proxy on a free loopback port; yields the port."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(num_cpus=8, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def trail(tmp_path_factory: pytest.TempPathFactory):
    """The decision trail folder of the session's app."""
    return tmp_path_factory.mktemp("trail")


@pytest.fixture(scope="session")
def base_url(ray_serve: int, tiny_store, trail) -> str:
    """The FinServe app deployed from ``deployments.app:build_app`` on the tiny store."""
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(app_args(tiny_store.root, str(trail))), name="finserve", route_prefix="/")
    url = f"http://127.0.0.1:{ray_serve}"
    wait_for(lambda: httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200)
    return url


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c
