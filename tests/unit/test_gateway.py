"""The gateway's class outside Serve, every model placed in it (``InGateway``): its routes
answer through the placement, and the decision and the shadow answer are recorded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from serving.audit import read_records

GOLDEN = Path(__file__).parents[1] / "testdata"


@pytest.fixture
def gateway(make_gateway, tmp_path):
    gateway = make_gateway()
    gateway.reconfigure({"models": {"fraud": {"versions": ["2"], "shadow": "3"}}})
    return gateway, tmp_path / "trail"


def _post(app, *requests: tuple[str, dict]) -> list[httpx.Response]:
    """POST each (path, body) in turn, on one event loop (the batch queues' own)."""
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            responses = [await client.post(path, json=body) for path, body in requests]
            await asyncio.sleep(0.5)  # the shadow answers, in the background
            return responses
    return asyncio.run(go())


def _golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text())


def test_every_protocol_answers_through_the_placement_and_is_recorded(gateway):
    gw, trail = gateway
    app = gw.__serve_build_asgi_app__()
    task, v2, v1 = _post(app, ("/v1/fraud/score", _golden("fraud_task_request.json")),
                         ("/v2/models/fraud/infer", _golden("fraud_v2_request.json")),
                         ("/v1/models/fraud:predict", _golden("fraud_v1_request.json")))
    assert task.status_code == 200, task.text
    assert task.json()["version"] == "2" and task.headers["x-decision-id"]
    assert v2.status_code == 200 and v2.json()["model_version"] == "2"
    assert v1.status_code == 200
    decisions = list(read_records(str(trail)))
    assert [r["route"] for r in decisions] == ["task", "v2", "v1"]
    shadows = list(read_records(str(trail), kind="shadow"))
    assert shadows and {s["task"] for s in shadows} == {"fraud"}
    assert {s["challenger"] for s in shadows} == {"3"}


def test_task_route_parameters_are_validated_once_with_defaults(gateway):
    gw, trail = gateway
    app = gw.__serve_build_asgi_app__()
    body = _golden("forecast_task_request.json")
    bad, ok = _post(app, ("/v1/forecast/forecast", {**body, "parameters": {"horizon": 0}}),
                    ("/v1/forecast/forecast", {**body, "parameters": {"horizon": 2}}))
    assert bad.status_code == 422
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["results"][0]["forecast"]) == 2
    recorded = list(read_records(str(trail)))
    assert recorded[-1]["parameters"] == {"horizon": 2}


def _assert_same_outputs(got: list[dict], expected: list[dict]) -> None:
    """V2 outputs alike: floats to rounding (a larger signature call may round apart)."""
    for out, exp in zip(got, expected, strict=True):
        assert {k: out[k] for k in ("name", "shape", "datatype")} == {
            k: exp[k] for k in ("name", "shape", "datatype")}
        floats = exp["datatype"].startswith("FP")
        assert out["data"] == (pytest.approx(exp["data"], rel=1e-5) if floats else exp["data"])


def test_a_request_alone_skips_the_batch_queue_and_concurrent_ones_are_batched(
        make_gateway, tmp_path):
    """The in-flight count decides: one request in the replica is answered at once;
    requests that overlap go through ``@serve.batch`` and share pipeline passes, each
    answered as it is alone."""
    gw = make_gateway()
    gw.reconfigure({"models": {"fraud": {"versions": ["2"]}}})
    app = gw.__serve_build_asgi_app__()
    placement = gw.models["fraud"].placement
    sizes: list[int] = []  # requests per pass of the pipeline, either way
    queued: list[int] = []  # requests that went through the batch queue
    pipeline, enqueue = placement._pipeline, placement.batched

    def counted(calls):
        sizes.append(len(calls))
        return pipeline(calls)

    async def counted_enqueue(call):
        queued.append(1)
        return await enqueue(call)

    placement._pipeline, placement.batched = counted, counted_enqueue
    body = _golden("fraud_v2_request.json")

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            alone = [await client.post("/v2/models/fraud/infer", json=body) for _ in range(3)]
            phases.append(len(queued))
            together = await asyncio.gather(*(
                client.post("/v2/models/fraud/infer", json=body) for _ in range(8)))
            return alone + list(together)

    phases: list[int] = []
    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [200] * 11
    assert phases == [0] and sizes[:3] == [1, 1, 1]  # each alone: answered at once
    assert len(queued) == 8 and max(sizes) > 1  # overlapping ones: queued and batched
    for answer in answers[1:]:
        _assert_same_outputs(answer.json()["outputs"], answers[0].json()["outputs"])
    assert gw.in_flight.count == 0
    assert len(list(read_records(str(tmp_path / "trail")))) == 11
