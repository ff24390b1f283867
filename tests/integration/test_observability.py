"""What operators see and what an overloaded stage answers: Prometheus metrics through Ray
Serve's metrics API on Ray's metrics port, JSON logs carrying the request id, and a full
stage queue turned into 503 with Retry-After instead of a hang."""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import golden
from tests.integration.conftest import app_args, wait_for

pytestmark = pytest.mark.integration
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _scrape() -> list[tuple[str, dict[str, str], float]]:
    """Every sample on this Ray node's Prometheus endpoint."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def _total(samples, name: str, **labels: str) -> float:
    return sum(value for n, ls, value in samples
               if n == name and all(ls.get(k) == v for k, v in labels.items()))


def test_requests_stages_batches_and_decisions_are_exported_to_prometheus(client):
    before = _total(_scrape(), "ray_finserve_requests_total", model="fraud",
                    route="/v1/fraud/score", status="200")
    body = golden("fraud_task_request.json")
    for _ in range(5):
        assert client.post("/v1/fraud/score", json=body).status_code == 200
    assert client.post("/v1/fraud/score", json={"records": []}).status_code == 422

    def seen() -> dict[str, float]:
        samples = _scrape()
        figures = {
            "answered": _total(samples, "ray_finserve_requests_total", model="fraud",
                               route="/v1/fraud/score", status="200", version="2") - before,
            "rejected": _total(samples, "ray_finserve_requests_total",
                               route="/v1/fraud/score", status="422"),
            "latency": _total(samples, "ray_finserve_request_latency_ms_count", model="fraud",
                              route="/v1/fraud/score"),
            "batches": _total(samples, "ray_finserve_batch_size_count", model="fraud",
                              stage="model"),
            **{stage: _total(samples, "ray_finserve_stage_latency_ms_count", model="fraud",
                             stage=stage) for stage in ("preprocess", "model", "postprocess")},
            "outcomes": len({ls["outcome"] for n, ls, _ in samples
                             if n == "ray_finserve_decisions_total"
                             and ls.get("model") == "fraud"
                             and ls.get("outcome") in ("approve", "review", "block")}),
        }
        return figures

    wanted = {"answered": 5, "rejected": 1, "latency": 5, "batches": 5, "preprocess": 5,
              "model": 5, "postprocess": 5, "outcomes": 1}

    def exported() -> dict[str, float] | None:  # each Ray process exports every few seconds
        figures = seen()
        return figures if all(figures[k] >= v for k, v in wanted.items()) else None

    try:
        wait_for(exported, timeout=90, interval=2)
    except AssertionError:
        pytest.fail(f"metrics short of {wanted}: {seen()}")


def test_replica_logs_are_json_lines_carrying_the_request_id(client):
    import ray

    rid = f"obs-{uuid.uuid4().hex[:12]}"
    r = client.post("/v1/fraud/score", json=golden("fraud_task_request.json"),
                    headers={"x-request-id": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path()) / "serve"

    def lines() -> list[dict]:
        found = []
        for path in logs.glob("replica_finserve_*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if rid in line:
                    found.append(json.loads(line))  # every line is one JSON object
        return found

    def is_access_line(entry: dict) -> bool:
        """The gateway's own access line (the stages' lines carry the route too)."""
        return (entry.get("deployment") == "finserve_gateway"
                and entry.get("route") == "/v1/fraud/score")

    def with_access_line() -> list[dict]:
        """The lines, once the gateway's access line is among them (written after the
        answer, so it may come after the stages' lines)."""
        found = lines()
        return found if any(is_access_line(e) for e in found) else []

    found = wait_for(with_access_line, timeout=30)
    assert {entry["request_id"] for entry in found} == {rid}
    assert all({"message", "levelname", "deployment", "replica"} <= set(e) for e in found)
    access = [e for e in found if is_access_line(e)]
    assert access[0]["message"].startswith("POST /v1/fraud/score 200"), found


def test_a_full_stage_queue_answers_503_with_retry_after_never_a_hang(
        ray_serve, serve_apps, base_url, tiny_store, tmp_path):
    args = app_args(tiny_store.root, str(tmp_path / "trail"))
    args["models"] = [{"name": "sentiment", "placement": "model-replicas", "model": {
        "max_ongoing_requests": 1, "max_queued_requests": 1, "max_batch_size": 1}}]
    serve_apps.put("queue", args, route_prefix="/queue")
    url = f"http://127.0.0.1:{ray_serve}/queue/v1/sentiment/analyze"
    texts = [r["text"] for r in golden("sentiment_task_request.json")["records"]]
    body = {"records": [{"text": texts[i % len(texts)]} for i in range(64)]}
    try:
        def post(_: int) -> httpx.Response:
            return httpx.post(url, json=body, timeout=60)

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(post, range(48)))
        statuses = [r.status_code for r in answers]
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses, statuses
        busy = [r for r in answers if r.status_code == 503]
        assert busy, "no request was turned away by the full queue"
        for r in busy:
            assert r.headers.get("retry-after") == "1", (r.headers, r.text)
            assert "busy" in r.json()["error"]
        # the stage recovers: once the burst is over the same request is answered
        assert httpx.post(url, json=body, timeout=60).status_code == 200
    finally:
        serve_apps.delete("queue")
