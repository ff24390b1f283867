"""The V2 infer fast path (``deployments.v2_infer``) answers exactly what the FastAPI route
answers: the same app with the fast path taken out of its middlewares is the reference."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from deployments.v2_infer import V2InferFastPath
from serving.protocol import binary

GOLDEN = json.loads((Path(__file__).parents[1] / "testdata" / "fraud_v2_request.json")
                    .read_text())
ROW = GOLDEN["inputs"][0]["data"][0]


def _body(**changes) -> bytes:
    return json.dumps({**GOLDEN, **changes}).encode()


def _tensor(**changes) -> bytes:
    return _body(inputs=[{**GOLDEN["inputs"][0], **changes}])


#: (path, body, headers): answers, refusals at every check, and what the fast path leaves
CASES = [
    ("/v2/models/fraud/infer", _body(), {}),
    ("/v2/models/fraud/versions/2/infer", _body(id=None), {}),
    ("/v2/models/fraud/infer?version=3", _body(), {}),
    ("/v2/models/fraud/infer", _body(outputs=[{"name": "decision"}]), {}),
    ("/v2/models/fraud/infer", _body(parameters={"binary_data_output": True}), {}),
    ("/v2/models/fraud/infer", _body(), {"x-routing-key": "customer-7"}),
    ("/v2/models/nope/infer", _body(), {}),
    ("/v2/models/fraud/versions/99/infer", _body(), {}),
    ("/v2/models/fraud/infer?version=99", _body(), {}),
    ("/v2/models/fraud/infer", b"{not json", {}),
    ("/v2/models/fraud/infer", b"", {}),
    ("/v2/models/fraud/infer", b"[1, 2]", {}),
    ("/v2/models/fraud/infer", b'{"inputs": []}', {}),
    ("/v2/models/fraud/infer", _tensor(datatype="INT64"), {}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 8]), {}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 9], data=[[*ROW[:8], "NaN"]]), {}),
    ("/v2/models/fraud/infer", _tensor(name="x"), {}),
    ("/v2/models/fraud/infer", _body(outputs=[{"name": "nope"}]), {}),
    ("/v2/models/fraud/infer", _body(parameters={"threshold": "high"}), {}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 9], data=[ROW]),
     {"x-request-id": "bad id!"}),
    ("/v2/models/fraud/infer", _tensor(shape=[1, 9], data=[ROW]),
     {binary.HEADER: "10"}),
]
#: headers both answers carry alike (x-decision-id only where a decision was recorded)
SAME_HEADERS = ("content-type", "content-length", binary.HEADER.lower(), "x-model-version")


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
                                 if m.cls is not V2InferFastPath]
    return fast, reference


def test_every_answer_and_refusal_is_the_fastapi_routes_own(apps):
    fast, reference = _send(apps, CASES)
    for (path, body, _), got, want in zip(CASES, fast, reference, strict=True):
        where = f"{path} {body[:60]!r}"
        assert got.status_code == want.status_code, (where, got.text, want.text)
        if got.headers.get("content-type") == "application/json" and got.status_code == 200:
            answer, expected = got.json(), want.json()
            outputs, expected_outputs = answer.pop("outputs"), expected.pop("outputs")
            assert answer == expected, where
            for out, exp in zip(outputs, expected_outputs, strict=True):
                data, exp_data = out.pop("data"), exp.pop("data")
                assert out == exp, where
                floats = exp["datatype"].startswith("FP")
                assert data == (pytest.approx(exp_data, rel=1e-5) if floats else exp_data)
        elif got.status_code == 200:  # binary outputs: tensors compared as bytes
            assert got.content[:int(got.headers[binary.HEADER])] == \
                want.content[:int(want.headers[binary.HEADER])], where
        else:
            assert got.content == want.content, where
        for name in SAME_HEADERS:
            assert got.headers.get(name) == want.headers.get(name), (where, name)
        assert ("x-decision-id" in got.headers) == (got.status_code == 200), where


def test_json_v2_requests_take_the_fast_path_and_binary_ones_do_not(apps, monkeypatch):
    taken = []
    answer = V2InferFastPath._answer

    async def counted(self, request):
        taken.append(request.url.path)
        return await answer(self, request)

    monkeypatch.setattr(V2InferFastPath, "_answer", counted)
    fast, _ = apps
    [responses] = _send([fast], [CASES[0], CASES[1], CASES[-1],
                                 ("/v1/models/fraud:predict", b'{"instances": []}', {})])
    assert [r.status_code for r in responses][:2] == [200, 200]
    assert taken == ["/v2/models/fraud/infer", "/v2/models/fraud/versions/2/infer"]


def test_binary_outputs_carry_the_decision_id(apps):
    fast, reference = _send(apps, [CASES[4]])
    for response in (*fast, *reference):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == binary.CONTENT_TYPE
        assert response.headers["x-decision-id"] and response.headers["x-model-version"]
