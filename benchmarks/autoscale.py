"""Autoscaling under a load step: how long until a second Model replica takes traffic.

FinServe serves sentiment with its Model stage in replicas of its own
(``placement: model-replicas``) under the autoscaling settings below, exactly as
``finserve serve`` runs it; after ``IDLE_S`` of steady idleness, wrk steps the load from
nothing to ``CONNECTIONS`` connections of 64-headline requests. The bench's process joins
FinServe's local Ray as a second driver and reads Serve's replica states every ``POLL_S``:
the replica is *added* when Serve creates it and *serving* when it is RUNNING (Serve
routes to it from then on).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import yaml

MODEL = "sentiment"
DEPLOYMENT = f"{MODEL}-model"
CONNECTIONS = 16
LOAD_S = 45
POLL_S = 0.2
IDLE_S = 15  # steady and idle before the step, not the first seconds after the deploy
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2,
               "upscale_delay_s": 0, "downscale_delay_s": 30, "look_back_period_s": 2}


def write_config(config: Path, out: Path) -> Path:
    """The benchmark Serve config with sentiment alone, its Model stage autoscaled."""
    data = yaml.safe_load(config.read_text())
    application = data["applications"][0]
    application["args"]["models"] = [{
        "name": MODEL, "placement": "model-replicas",
        "model": {"max_batch_size": 32, "max_ongoing_requests": 8,
                  "autoscaling": AUTOSCALING},
    }]
    for deployment in application.get("deployments") or []:
        routing = deployment.get("user_config") or {}
        if isinstance(routing.get("models"), dict):
            routing["models"] = {MODEL: routing["models"].get(MODEL, {"versions": ["latest"]})}
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _states() -> dict[str, int]:
    from ray import serve

    for application in serve.status().applications.values():
        status = application.deployments.get(DEPLOYMENT)
        if status is not None:
            return {str(s).rsplit(".", 1)[-1]: n for s, n in status.replica_states.items() if n}
    return {}


def load_step(url: str, body: Path, gcs_address: str) -> dict[str, Any]:
    """Step the load and time the second replica, reading replica states from the Ray
    cluster at ``gcs_address``: the server's own, never "the latest local Ray", which
    another process may have started or stopped meanwhile."""
    import ray

    from benchmarks.loadgen import wrk

    ray.init(address=gcs_address, logging_level="ERROR", log_to_driver=False)
    try:
        time.sleep(IDLE_S)
        before = _states()
        load: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: load.update(wrk(url, body, CONNECTIONS, LOAD_S)), daemon=True)
        start = time.monotonic()
        worker.start()
        timeline: dict[str, float] = {}
        while worker.is_alive() and "serving_s" not in timeline:
            states = _states()
            elapsed = round(time.monotonic() - start, 2)
            if sum(states.values()) > 1:
                timeline.setdefault("added_s", elapsed)
            if states.get("RUNNING", 0) > 1:
                timeline["serving_s"] = elapsed
            time.sleep(POLL_S)
        worker.join()
        return {"autoscaling": AUTOSCALING, "connections": CONNECTIONS, "load_s": LOAD_S,
                "idle_before_s": IDLE_S,
                "replicas_before": before, "replicas_after": _states(), **timeline,
                "load": load}
    finally:
        ray.shutdown()
