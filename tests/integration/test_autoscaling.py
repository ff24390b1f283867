"""Per-stage autoscaling on the real local Ray Serve: the Model stage grows under load and
shrinks after it with no failed request; fractional GPU replicas pack onto the GPUs Ray
declares and stop at that capacity."""

from __future__ import annotations

import time

import pytest

from tests.conftest import golden
from tests.integration.conftest import app_args, wait_for
from tests.integration.load import Load

pytestmark = pytest.mark.integration
GPUS = 2  # the session's Ray declares two logical GPUs
PER_REPLICA = 0.5


def _replicas(app: str, deployment: str) -> dict[str, int]:
    from ray import serve

    application = serve.status().applications.get(app)
    status = application.deployments.get(deployment) if application else None
    if status is None:  # not created yet
        return {}
    return {str(s).rsplit(".", 1)[-1]: n for s, n in status.replica_states.items() if n}


def _heavy_body() -> dict:
    """64 headlines per request, so the Model stage, not HTTP, is what saturates."""
    texts = [r["text"] for r in golden("sentiment_task_request.json")["records"]]
    return {"records": [{"text": texts[i % len(texts)]} for i in range(64)]}


def test_the_model_stage_scales_up_under_load_and_back_down(ray_serve, serve_apps, base_url,
                                                            tiny_store, trail):
    args = app_args(tiny_store.root, str(trail))
    args["models"] = [{"name": "sentiment", "placement": "model-replicas", "model": {
        "max_ongoing_requests": 1, "max_batch_size": 1,
        "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1,
                        "upscale_delay_s": 1, "downscale_delay_s": 4,
                        "look_back_period_s": 2}}}]
    serve_apps.put("scaling", args, route_prefix="/scaling")
    url = f"http://127.0.0.1:{ray_serve}/scaling/v1/sentiment/analyze"
    timeline: dict[str, float] = {}
    try:
        assert _replicas("scaling", "sentiment-model") == {"RUNNING": 1}
        start = time.monotonic()
        with Load(url, _heavy_body(), threads=12, max_seconds=400) as load:
            def added() -> bool:
                return sum(_replicas("scaling", "sentiment-model").values()) > 1
            wait_for(added, timeout=180)
            timeline["replica_added"] = time.monotonic() - start
            wait_for(lambda: _replicas("scaling", "sentiment-model").get("RUNNING", 0) > 1,
                     timeout=180)
            timeline["replica_serving"] = time.monotonic() - start
            served_before = load.statuses[200]
            wait_for(lambda: load.statuses[200] > served_before + 20, timeout=120)
        stopped = time.monotonic()
        timeline["load_stopped"] = stopped - start
        assert load.failed == 0, load.errors[:5]
        wait_for(lambda: _replicas("scaling", "sentiment-model") == {"RUNNING": 1},
                 timeout=180)
        timeline["scaled_down"] = time.monotonic() - start
        print(f"\nautoscaling timeline, seconds from load start: {timeline}; "
              f"{load.statuses[200]} answered, {load.failed} failed")
    finally:
        serve_apps.delete("scaling")


def test_fractional_gpu_replicas_pack_onto_the_gpus_and_stop_at_capacity(
        ray_serve, serve_apps, base_url, tiny_store, trail):
    import httpx

    args = app_args(tiny_store.root, str(trail))
    args["models"] = [{"name": "sentiment", "placement": "model-replicas",
                       "model": {"num_gpus": PER_REPLICA, "num_replicas": 6}}]
    serve_apps.put("gpu", args, route_prefix="/gpu", wait=False)
    capacity = int(GPUS / PER_REPLICA)
    try:
        wait_for(lambda: _replicas("gpu", "sentiment-model").get("RUNNING") == capacity,
                 timeout=300)
        time.sleep(5)  # still no fifth: the GPUs are full
        states = _replicas("gpu", "sentiment-model")
        assert states.get("RUNNING") == capacity and sum(states.values()) == 6, states
        r = httpx.post(f"http://127.0.0.1:{ray_serve}/gpu/v1/sentiment/analyze",
                       json=golden("sentiment_task_request.json"), timeout=30)
        assert r.status_code == 200  # the placed replicas serve while the rest wait
    finally:
        serve_apps.delete("gpu")
