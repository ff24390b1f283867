"""Every class of bad input gets its 4xx with a JSON error, and the server keeps answering."""

import pytest

from tests.conftest import golden

pytestmark = pytest.mark.integration

FRAUD_ROW = [24.5, 14, 0.1, 3.2, 0, 1, 0, 1500, 0.9]


def _v2(data, shape=(1, 9), datatype="FP32", name="features"):
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}]}


CASES = [
    # (method path, raw body or json, expected status, words in the error)
    ("/v2/models/fraud/infer", b"{not json", 400, "not valid JSON"),
    ("/v2/models/fraud/infer", b"", 400, "empty"),
    # a lone surrogate is no Unicode text, and no answer could echo it as UTF-8
    ("/v2/models/fraud/infer", b'{"id":"a\\udfffb","inputs":[{"name":"features","shape":[1,9],'
     b'"datatype":"FP32","data":[24.5,14,0.1,3.2,0,1,0,1500,0.9]}]}', 400, "not valid JSON"),
    ("/v1/sentiment/analyze", b'{"records":[{"text":"\\ud800 up"}]}', 400, "not valid JSON"),
    ("/v2/models/fraud/infer", [], 422, "body"),
    ("/v2/models/fraud/infer", {"inputs": []}, 422, "inputs"),
    ("/v2/models/fraud/infer", {"input": []}, 422, "inputs"),
    ("/v2/models/fraud/infer", _v2(FRAUD_ROW[:8], (1, 8)), 422, "shape"),
    ("/v2/models/fraud/infer", _v2(FRAUD_ROW, (1, 10)), 422, "elements"),
    ("/v2/models/fraud/infer", _v2(["x", *FRAUD_ROW[1:]]), 422, "must be a number"),
    ("/v2/models/fraud/infer", b'{"inputs":[{"name":"features","shape":[1,9],"datatype":"FP32",'
     b'"data":[NaN,14,0.1,3.2,0,1,0,1500,0.9]}]}', 422, "NaN"),
    ("/v2/models/fraud/infer", b'{"inputs":[{"name":"features","shape":[1,9],"datatype":"FP32",'
     b'"data":[1e999,14,0.1,3.2,0,1,0,1500,0.9]}]}', 422, "NaN or infinity"),
    ("/v2/models/fraud/infer", _v2([], (0, 9)), 422, "empty batch"),
    ("/v2/models/fraud/infer", _v2(FRAUD_ROW, datatype="INT32"), 422, "must be FP32"),
    ("/v2/models/fraud/infer", _v2(FRAUD_ROW, name="x"), 422, "features"),
    ("/v2/models/fraud/infer", _v2([-5, *FRAUD_ROW[1:]]), 422, ">= 0"),
    ("/v2/models/fraud/infer", _v2(FRAUD_ROW * 65, (65, 9)), 413, "limit is 64"),
    ("/v2/models/sentiment/infer", _v2([1], (1,), "BYTES", "text"), 422, "string"),
    ("/v2/models/sentiment/infer", _v2(["  "], (1,), "BYTES", "text"), 422, "empty"),
    ("/v2/models/nope/infer", _v2(FRAUD_ROW), 404, "not served"),
    ("/v2/models/fraud/versions/9/infer", _v2(FRAUD_ROW), 404, "no version '9'"),
    ("/v2/models/fraud/versions/latest/infer", _v2(FRAUD_ROW), 400, "must be a number"),
    ("/v1/models/fraud:predict", {"instances": []}, 422, "empty batch"),
    ("/v1/models/fraud:predict", {"instances": [FRAUD_ROW, FRAUD_ROW[:3]]}, 422, "features"),
    ("/v1/models/fraud:predict", {"instances": [FRAUD_ROW], "inputs": [FRAUD_ROW]}, 422,
     "exactly one"),
    ("/v1/models/fraud:predict", {"instances": "abc"}, 422, "list"),
    ("/v1/models/nope:predict", {"instances": [FRAUD_ROW]}, 404, "not served"),
    ("/v1/models/fraud/versions/3:predict", {"instances": [FRAUD_ROW]}, 404, "no version"),
    ("/v1/sentiment/analyze", {"records": []}, 422, "records"),
    ("/v1/sentiment/analyze", {"records": [{"text": 5}]}, 422, "text"),
    ("/v1/sentiment/analyze", {"records": [{"txt": "x"}]}, 422, "text"),
    ("/v1/fraud/score", {"records": [{"amount": "ten"}]}, 422, "amount"),
    ("/v1/fraud/score", b'{"records":[{"amount":NaN,"hour":1,"merchant_risk":0.1,'
     b'"distance_km":1,"velocity_1h":0,"card_present":true,"foreign":false,'
     b'"account_age_days":9,"amount_to_avg":1}]}', 422, "amount"),
    ("/v1/fraud/score?version=9", golden("fraud_task_request.json"), 404, "no version"),
    ("/v1/sentiment/analyze", {"records": [{"text": "x" * 70000}]}, 413, "larger than"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_gets_a_clear_4xx(client, path, body, status, words):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert words.lower() in r.json()["error"].lower()


def test_streamed_oversized_body_without_length_gets_413(client):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    r = client.post("/v1/sentiment/analyze", content=chunks())
    assert r.status_code == 413


def test_unknown_routes_and_methods_get_json_errors(client):
    r = client.get("/v3/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = client.get("/v2/models/fraud/infer")
    assert r.status_code == 405 and "error" in r.json()


def test_good_requests_still_answer_after_the_barrage(client):
    for case in CASES:
        path, body = case[0], case[1]
        client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
    r = client.post("/v1/fraud/score", json=golden("fraud_task_request.json"))
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert client.get("/v2/health/ready").status_code == 200
