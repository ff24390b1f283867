"""The JSON POST routes answered as plain ASGI (``deployments.fast_routes``) answer exactly
what their FastAPI routes answer: the same app with the fast path taken out of its
middlewares is the reference."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from deployments import fast_routes
from deployments.fast_routes import FastRoutes
from serving.protocol import binary

DATA = Path(__file__).parents[1] / "testdata"
V2 = json.loads((DATA / "fraud_v2_request.json").read_text())
V1 = json.loads((DATA / "fraud_v1_request.json").read_text())
TASK = json.loads((DATA / "fraud_task_request.json").read_text())
FORECAST = json.loads((DATA / "forecast_task_request.json").read_text())
ROW = V2["inputs"][0]["data"][0]
RECORD = TASK["records"][0]


def _v2(**changes) -> bytes:
    return json.dumps({**V2, **changes}).encode()


def _tensor(**changes) -> bytes:
    return _v2(inputs=[{**V2["inputs"][0], **changes}])


def _task(*records, **changes) -> bytes:
    return json.dumps({"records": list(records) or TASK["records"], **changes}).encode()


def _json(value) -> bytes:
    return json.dumps(value).encode()


#: (path, body, headers): answers, refusals at every check, and what the fast path leaves
V2_CASES = [
    ("/v2/models/fraud/infer", _v2(), {}),
    ("/v2/models/fraud/versions/2/infer", _v2(id=None), {}),
    ("/v2/models/fraud/infer?version=3", _v2(), {}),
    ("/v2/models/fraud/infer", _v2(outputs=[{"name": "decision"}]), {}),
    ("/v2/models/fraud/infer", _v2(parameters={"binary_data_output": True}), {}),
    ("/v2/models/fraud/infer", _v2(), {"x-routing-key": "customer-7"}),
    ("/v2/models/nope/infer", _v2(), {}),
    ("/v2/models/fraud/versions/99/infer", _v2(), {}),
    ("/v2/models/fraud/infer?version=99", _v2(), {}),
    ("/v2/models/nope/infer", b"{not json", {}),  # the path is checked before the body
    ("/v2/models/fraud/infer", b"{not json", {}),
    ("/v2/models/fraud/infer", b"", {}),
    ("/v2/models/fraud/infer", b"[1, 2]", {}),
    ("/v2/models/fraud/infer", b'{"inputs": []}', {}),
    ("/v2/models/fraud/infer", _tensor(datatype="INT64"), {}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 8]), {}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 9], data=[[*ROW[:8], "NaN"]]), {}),
    ("/v2/models/fraud/infer", _tensor(name="x"), {}),
    ("/v2/models/fraud/infer", _v2(outputs=[{"name": "nope"}]), {}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 9], data=[ROW]), {"x-request-id": "bad id!"}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 9], data=[ROW]), {binary.HEADER: "10"}),
]
V1_CASES = [
    ("/v1/models/fraud:predict", _json(V1), {}),
    ("/v1/models/fraud/versions/3:predict", _json(V1), {}),
    ("/v1/models/fraud:predict", _json({"inputs": {"features": V1["instances"]}}), {}),
    ("/v1/models/fraud:predict", _json({"instances": []}), {}),
    ("/v1/models/fraud:predict", _json({"instances": [ROW[:8]]}), {}),
    ("/v1/models/fraud:predict", _json({"signature_name": 3}), {}),
    ("/v1/models/nope:predict", _json(V1), {}),
    ("/v1/models/fraud:predict", b"{", {}),
]
TASK_CASES = [
    ("/v1/fraud/score", _task(), {}),
    ("/v1/fraud/score?version=3", _task(RECORD), {}),
    ("/v1/fraud/score?version=99", _task(), {}),
    ("/v1/fraud/score?version=99", b"", {}),
    ("/v1/fraud/score", _task(), {"x-routing-key": "customer-7"}),
    ("/v1/fraud/score", _task({**RECORD, "hour": 25}), {}),
    ("/v1/fraud/score", _task({**RECORD, "amount": "lots"}), {}),
    ("/v1/fraud/score", _task({k: v for k, v in RECORD.items() if k != "hour"}), {}),
    ("/v1/fraud/score", _json({"records": []}), {}),
    ("/v1/fraud/score", _json({"rows": [RECORD]}), {}),
    ("/v1/fraud/score", b"", {}),
    ("/v1/forecast/forecast", _json(FORECAST), {}),
    ("/v1/forecast/forecast", _json({**FORECAST, "parameters": {"horizon": 0}}), {}),
]
CASES = V2_CASES + V1_CASES + TASK_CASES
#: headers both answers carry alike (x-decision-id only where a decision was recorded)
SAME_HEADERS = ("content-type", "content-length", binary.HEADER.lower(), "x-model-version")
#: fields that differ between two answers to one request: the request id FinServe makes
PER_ANSWER = ("request_id",)


def _send(apps, cases):
    async def go():
        out = []
        for app in apps:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                out.append([await client.post(path, content=body, headers=headers)
                            for path, body, headers in cases])
        await asyncio.sleep(0.3)  # shadow answers, in the background
        return out
    return asyncio.run(go())


@pytest.fixture
def apps(make_gateway):
    """The gateway's app, and the same app without the fast path."""
    gateway = make_gateway()
    gateway.reconfigure({"models": {"fraud": {"versions": ["2", "3"], "shadow": "3"}}})
    fast = gateway.__serve_build_asgi_app__()
    reference = gateway.__serve_build_asgi_app__()
    reference.user_middleware = [m for m in reference.user_middleware
                                 if m.cls is not FastRoutes]
    return fast, reference


def _same_values(got, want, where: str) -> None:
    """JSON alike, floats to rounding (a signature call may round apart)."""
    if isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5), where
    elif isinstance(want, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            if key not in PER_ANSWER:
                _same_values(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same_values(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def test_every_answer_and_refusal_is_the_fastapi_routes_own(apps):
    fast, reference = _send(apps, CASES)
    for (path, body, _), got, want in zip(CASES, fast, reference, strict=True):
        where = f"{path} {body[:60]!r}"
        assert got.status_code == want.status_code, (where, got.text, want.text)
        if got.status_code == 200 and got.headers["content-type"] == "application/json":
            _same_values(got.json(), want.json(), where)
        elif got.status_code == 200:  # binary outputs: the JSON header part compared
            length = int(want.headers[binary.HEADER])
            _same_values(json.loads(got.content[:length]), json.loads(want.content[:length]),
                         where)
        else:
            assert got.content == want.content, where
        for name in SAME_HEADERS:
            if name != "content-length" or got.status_code != 200:  # floats' digits
                assert got.headers.get(name) == want.headers.get(name), (where, name)
        assert ("x-decision-id" in got.headers) == (got.status_code == 200), where


def test_json_posts_take_the_fast_path_and_other_requests_do_not(apps, monkeypatch):
    taken = []
    answer = fast_routes._answer

    async def counted(fast, request):
        taken.append(request.url.path)
        return await answer(fast, request)

    monkeypatch.setattr(fast_routes, "_answer", counted)
    fast, _ = apps
    [responses] = _send([fast], [V2_CASES[0], V2_CASES[1], V1_CASES[0], TASK_CASES[0],
                                 V2_CASES[-1]])
    assert [r.status_code for r in responses][:4] == [200, 200, 200, 200]
    assert taken == ["/v2/models/fraud/infer", "/v2/models/fraud/versions/2/infer",
                     "/v1/models/fraud:predict", "/v1/fraud/score"]


def test_the_fast_path_takes_only_routes_it_can_call(apps):
    fast, _ = apps
    paths = {f.route.path for f in fast_routes.fast_routes(fast.routes)}
    assert paths == {"/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer",
                     "/v1/models/{model}:predict", "/v1/models/{model}/versions/{version}:predict",
                     "/v1/fraud/score", "/v1/forecast/forecast"}


def test_binary_outputs_carry_the_decision_id(apps):
    fast, reference = _send(apps, [V2_CASES[4]])
    for response in (*fast, *reference):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == binary.CONTENT_TYPE
        assert response.headers["x-decision-id"] and response.headers["x-model-version"]
