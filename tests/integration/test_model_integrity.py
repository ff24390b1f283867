"""A tampered model store is never served: the model is not ready and says why, the reason
is logged naming the file, and every request gets a JSON 503 (a real local Ray Serve)."""

import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import golden
from tests.integration.conftest import app_args, wait_for

pytestmark = pytest.mark.integration

VARIABLES = "saved_model/variables/variables.data-00000-of-00001"


def _tampered_store(tiny_store, root: Path) -> Path:
    """fraud v1 with a byte changed in its variables; fraud-gw, a copy of it, with its
    preprocessing parameters edited in the manifest."""
    for name in ("fraud", "fraud-gw"):
        shutil.copytree(Path(tiny_store.root) / "fraud" / "1", root / name / "1")
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    variables = root / "fraud" / "1" / VARIABLES
    data = bytearray(variables.read_bytes())
    data[len(data) // 2] ^= 0x01
    variables.write_bytes(bytes(data))
    manifest = root / "fraud-gw" / "1" / "manifest.json"
    edited = json.loads(manifest.read_text())
    edited["preprocessing"]["mean"][0] += 1.0
    manifest.write_text(json.dumps(edited))
    return root


def _replica_log_lines(app: str, needle: str) -> list[str]:
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"
    return [line for path in logs.glob(f"replica_{app}_*.log")
            for line in path.read_text(errors="replace").splitlines() if needle in line]


def test_a_tampered_model_is_not_ready_and_answers_json_503(ray_serve, serve_apps, tiny_store,
                                                             tmp_path):
    from ray import serve

    root = _tampered_store(tiny_store, tmp_path / "store")
    args = app_args(str(root), str(tmp_path / "trail"))
    args["audit"] = {"enabled": False}  # nothing is answered, so nothing is recorded
    args["models"] = [
        {"name": "fraud", "placement": "model-replicas"},  # the Model stage on its own
        {"name": "fraud-gw", "task": "fraud"},  # every stage in the gateway replica
    ]
    serve_apps.put("tampered", args, route_prefix="/tampered")
    url = f"http://127.0.0.1:{ray_serve}/tampered"
    try:
        r = httpx.get(f"{url}/v2/health/ready", timeout=30)
        assert r.status_code == 503
        assert r.json() == {"ready": False, "models": {"fraud": False, "fraud-gw": False}}
        for name in ("fraud", "fraud-gw"):
            r = httpx.get(f"{url}/v2/models/{name}/ready", timeout=30)
            assert r.status_code == 503 and r.json()["ready"] is False

        state = serve.get_deployment_handle("fraud-model", "tampered").ready.remote().result()
        assert state["ready"] is False and state["digests"] == {}
        assert f"{VARIABLES} does not match its sha256" in state["reason"]

        r = httpx.post(f"{url}/v2/models/fraud/infer", json=golden("fraud_v2_request.json"),
                       timeout=30)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert "model 'fraud' version 1 refused" in r.json()["error"]
        assert VARIABLES in r.json()["error"]
        r = httpx.post(f"{url}/v1/fraud-gw/score", json=golden("fraud_task_request.json"),
                       timeout=30)
        assert r.status_code == 503 and "'preprocessing' does not match" in r.json()["error"]

        assert wait_for(lambda: _replica_log_lines("tampered", VARIABLES), timeout=30)
    finally:
        serve_apps.delete("tampered")
