"""Apply a Serve config declaratively, the way ``serve deploy`` and KubeRay do.

Declarative deploys give an application a code version derived from its import path and
``args``, so a change to a deployment's ``user_config`` alone (the gateway's routing: model
versions, canary weights, shadows) reaches running replicas as ``reconfigure`` calls:
nothing restarts and no request is dropped. A change to ``args`` replaces the replicas, and
the imperative ``serve.run`` replaces every replica on every call. This uses the same client
call as Ray's own ``serve run config.yaml``.
"""

from __future__ import annotations

import time
from typing import Any

TERMINAL_FAILURES = {"DEPLOY_FAILED", "UNHEALTHY"}


def apply_config(config: dict[str, Any]) -> None:
    """Submit a whole Serve config (every application; ones not listed are removed)."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
    )
    client.deploy_apps(schema)


def wait_running(names: list[str], timeout_s: float = 300, poll_s: float = 0.5) -> None:
    """Block until every named application is RUNNING; raise with Serve's message when one
    fails to deploy."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = {n: s for n, s in states.items() if s in TERMINAL_FAILURES}
        if failed:
            name = next(iter(failed))
            raise RuntimeError(f"application '{name}' {failed[name]}: {apps[name].message}")
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"applications not running after {timeout_s:g}s: {states}")
        time.sleep(poll_s)
