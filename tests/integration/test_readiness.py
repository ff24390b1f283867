"""Readiness is false while a model stage has no replica and true once it has loaded."""

import httpx
import pytest

from tests.integration.conftest import app_args, wait_for

pytestmark = pytest.mark.integration


def _answer(url: str, status: int):
    """The JSON body when ``url`` answers ``status``; None while it does not (or is slow)."""
    try:
        r = httpx.get(url, timeout=30)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == status else None


def test_ready_only_after_the_model_stage_has_loaded(ray_serve, serve_apps, tiny_store,
                                                     base_url, trail):
    args = app_args(tiny_store.root, str(trail), request_timeout_s=2)
    args["models"] = [{"name": "sentiment", "placement": "model-replicas",
                       "model": {"num_cpus": 64}}]  # the Model stage cannot be placed yet
    serve_apps.put("pending", args, route_prefix="/pending", wait=False)
    url = f"http://127.0.0.1:{ray_serve}/pending"
    try:
        not_ready = wait_for(lambda: _answer(f"{url}/v2/health/ready", 503), timeout=180)
        assert not_ready == {"ready": False, "models": {"sentiment": False}}
        r = httpx.get(f"{url}/v2/models/sentiment/ready", timeout=60)
        assert r.status_code == 503 and r.json()["ready"] is False
        r = httpx.post(f"{url}/v1/sentiment/analyze", json={"records": [{"text": "bank"}]},
                       timeout=60)
        assert r.status_code == 504 and "did not answer" in r.json()["error"]

        # now it fits: the replica starts and loads
        args["models"] = [{"name": "sentiment", "placement": "model-replicas"}]
        serve_apps.put("pending", args, route_prefix="/pending", wait=False)
        ready = wait_for(lambda: _answer(f"{url}/v2/health/ready", 200), timeout=300)
        assert ready == {"ready": True, "models": {"sentiment": True}}
        r = httpx.post(f"{url}/v1/sentiment/analyze", json={"records": [{"text": "bank"}]},
                       timeout=60)
        assert r.status_code == 200
    finally:
        serve_apps.delete("pending")
    assert httpx.get(f"{base_url}/v2/health/ready", timeout=60).status_code == 200
