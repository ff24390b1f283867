"""The benchmark's Ray Serve floor: its no-op ASGI app and the config that serves it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks import floor
from serving.config import load_serve_config

ROOT = Path(__file__).resolve().parents[2]


def call(app: Any, scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[dict]:
    sent: list[dict[str, Any]] = []
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert not pending, "the app did not read every message"
    return sent


def http(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


def test_answers_the_saved_bytes_after_reading_the_whole_body():
    app = floor.Canned({"/v2/models/fraud/infer": b'{"outputs":[1]}'})
    body = [{"type": "http.request", "body": b"{", "more_body": True},
            {"type": "http.request", "body": b"}", "more_body": False}]
    start, content = call(app, http("/v2/models/fraud/infer"), body)
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-length"] == b"15"
    assert content["body"] == b'{"outputs":[1]}'


def test_a_path_without_a_saved_answer_is_a_json_404():
    start, content = call(floor.Canned({}), http("/v1/fraud/score"),
                          [{"type": "http.request", "body": b"{}"}])
    assert start["status"] == 404
    assert content["body"].startswith(b'{"error"')


def test_lifespan_completes_both_ways():
    sent = call(floor.Canned({}), {"type": "lifespan"},
                [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]


def test_saved_answers_are_found_by_their_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(floor, "ANSWERS", tmp_path)
    for path, answer in (("/v1/fraud/score", b"a"), ("/v2/models/credit/infer", b"b")):
        floor.answer_file(path).write_bytes(answer)
    answers = floor._answers()
    assert answers["/v1/fraud/score"] == b"a" and answers["/v2/models/credit/infer"] == b"b"
    assert answers["/v2/health/ready"]  # the bench's start-up check


def test_floor_config_is_finserves_with_only_the_app_swapped(tmp_path: Path):
    source = ROOT / "deployments" / "serve.yaml"
    out = floor.floor_config(source, tmp_path / "floor.yaml")
    original, swapped = yaml.safe_load(source.read_text()), yaml.safe_load(out.read_text())
    app, before = swapped["applications"][0], original["applications"][0]
    assert app["import_path"] == "benchmarks.floor:build_app"
    assert "deployments" not in app  # no gateway routing for a no-op app
    assert app["args"] == before["args"] and app["logging_config"] == before["logging_config"]
    assert swapped["http_options"] == original["http_options"]
    _, args = load_serve_config(out)  # what `finserve serve` reads first
    assert args.gateway.num_replicas == 2
