"""One real local Ray Serve per test session, serving the tiny store's models."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from deployments.deploy import free_port, grpc_options
from serving.config import default_model_names

pytestmark = pytest.mark.integration


#: every model the session's app serves: the default models (fraud first)
ALL_MODELS = default_model_names()


def wait_for(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.25) -> Any:
    """Poll until ``condition()`` is truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {value!r}) {condition}")


#: API keys of the session's app (keys are optional there; when sent they are checked)
KEYS = {
    "ops": {"models": ["*"], "rate_per_s": None},
    "fraud-desk": {"models": ["fraud"], "rate_per_s": None},
    "slow": {"models": ["*"], "rate_per_s": 1.0},
}


def app_args(store_uri: str, audit: str, keys_file: str | None = None,
             keys_dir: str | None = None, **limits: Any) -> dict[str, Any]:
    """The session app's arguments; the trail's key files in ``keys_dir`` (default: beside
    the trail, ``<audit>-keys``)."""
    return {
        "store_uri": store_uri,
        "audit": {"location": audit, "keys_dir": keys_dir or f"{audit}-keys"},
        "security": {"api_keys_file": keys_file},
        "limits": {"max_body_bytes": 65536, "max_instances": 64, **limits},
        # every placement is served: fraud's Model stage is a deployment of its own (the
        # replica-loss and rollout tests need one), credit's three stages are, the others
        # run in the gateway replica (the default)
        "models": [
            {"name": "fraud", "placement": "model-replicas",
             "model": {"max_batch_size": 16, "batch_wait_timeout_s": 0.002}},
            {"name": "credit", "placement": "stage-replicas"},
            *({"name": name} for name in ALL_MODELS[1:] if name != "credit"),
        ],
    }


@pytest.fixture(scope="session")
def grpc_port() -> int:
    """The session's gRPC port (the Open Inference Protocol over gRPC, Serve's proxy)."""
    return free_port()


@pytest.fixture(scope="session")
def ray_serve(grpc_port: int) -> Iterator[int]:
    """A local Ray with Serve's proxy on a free loopback port, and gRPC on ``grpc_port``;
    yields the HTTP port."""
    import ray
    from ray import serve

    port = free_port()
    # autoscaling that reacts within seconds: metrics pushed every 0.5 s instead of 10 s
    for name in ("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S",
                 "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"):
        os.environ.setdefault(name, "0.5")
    # as `finserve serve` and the chart run Serve (docs/benchmarks.md)
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    os.environ.setdefault("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    # two logical GPUs: GPU placement is proven on Ray's resources (no device here)
    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                grpc_options=grpc_options(grpc_port))
    yield port
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def trail(tmp_path_factory: pytest.TempPathFactory):
    """The decision trail folder of the session's app."""
    return tmp_path_factory.mktemp("trail")


@pytest.fixture(scope="session")
def api_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The key file of the session's app and each key's plaintext by id."""
    from serving.security import new_key, write_keys

    plaintexts, entries = {}, []
    for key_id, spec in KEYS.items():
        plaintexts[key_id], entry = new_key(key_id, spec["models"], spec["rate_per_s"])
        entries.append(entry)
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    write_keys(path, entries)
    return {"file": str(path), **plaintexts}


@pytest.fixture(scope="session")
def session_args(tiny_store, trail, api_keys) -> dict[str, Any]:
    """The session app's arguments; tests that redeploy restore these."""
    return app_args(tiny_store.root, str(trail), keys_file=api_keys["file"])


class ServeApps:
    """The applications of the session's Serve instance, applied as one declarative config
    (as KubeRay does), so args-only changes reconfigure running replicas in place."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.apps: dict[str, dict[str, Any]] = {}

    def put(self, name: str, args: dict[str, Any], route_prefix: str = "/",
            wait: bool = True, routing: dict[str, Any] | None = None) -> None:
        from deployments.deploy import apply_config, wait_running

        self.apps[name] = {"name": name, "route_prefix": route_prefix, "args": args,
                           "import_path": "deployments.app:build_app",
                           "logging_config": {"encoding": "JSON", "enable_access_log": True}}
        if routing is not None:
            self.apps[name]["deployments"] = [{"name": "gateway", "user_config": routing}]
        apply_config({"http_options": {"host": "127.0.0.1", "port": self.port},
                      "applications": list(self.apps.values())})
        if wait:
            wait_running([name])

    def delete(self, name: str) -> None:
        from deployments.deploy import apply_config

        self.apps.pop(name, None)
        apply_config({"http_options": {"host": "127.0.0.1", "port": self.port},
                      "applications": list(self.apps.values())})


#: the session app's routing: fraud v2 by default, v1 when pinned (v3 is for rollouts)
SESSION_ROUTING = {"models": {"fraud": {"versions": ["2", "1"]}}}


@pytest.fixture(scope="session")
def serve_apps(ray_serve: int) -> ServeApps:
    return ServeApps(ray_serve)


@pytest.fixture(scope="session")
def base_url(ray_serve: int, serve_apps: ServeApps, session_args) -> str:
    """The FinServe app deployed from ``deployments.app:build_app`` on the tiny store."""
    serve_apps.put("finserve", session_args, routing=SESSION_ROUTING)
    url = f"http://127.0.0.1:{ray_serve}"
    wait_for(lambda: httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200)
    return url


@pytest.fixture(scope="session")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c
