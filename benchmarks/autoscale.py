"""Autoscaling under a load step: how long until a second Model replica takes traffic.

FinServe serves sentiment with its Model stage in replicas of its own
(``placement: model-replicas``) under the autoscaling settings below, exactly as
``finserve serve`` runs it; after ``IDLE_S`` of steady idleness, wrk steps the load from
nothing to ``CONNECTIONS`` connections of 64-headline requests. A child process
(``python -m benchmarks.autoscale``) joins that server's own Ray, by its GCS address, as a
second driver, with the server's single-machine environment (Ray on loopback), and reads
Serve's replica states every ``POLL_S``: the replica is *added* when Serve creates it and
*serving* when it is RUNNING (Serve routes to it from then on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def run_step(url: str, body: Path, gcs_address: str, timeout: float = 600) -> dict[str, Any]:
    """``load_step`` in a child process whose Ray takes loopback as its node's address, as
    ``finserve serve``'s does (``local_only_env``; Ray reads it when it is imported, and the
    bench's own process imported Ray long before), with the server's token auth."""
    from deployments.deploy import local_only_env

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.autoscale", url, str(body), gcs_address],
        # a local ray.init() turns token auth on unless RAY_AUTH_MODE says otherwise, and a
        # driver given an address turns it on only when told (ray/_private/worker.py)
        env={**os.environ, **local_only_env(),
             "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")},
        capture_output=True, text=True,
        timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the autoscaling step failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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


if __name__ == "__main__":  # run_step's child: URL BODY GCS_ADDRESS; the step's JSON last
    print(json.dumps(load_step(sys.argv[1], Path(sys.argv[2]), sys.argv[3])))
