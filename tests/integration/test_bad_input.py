"""Every class of bad input gets its 4xx with a JSON error, and the server keeps answering."""

import base64
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import golden
from tests.integration.conftest import app_args
from tests.unit.test_task_digits import largest_png, png_declaring

pytestmark = pytest.mark.integration

FRAUD_ROW = [24.5, 14, 0.1, 3.2, 0, 1, 0, 1500, 0.9]


CREDIT_ROW = [62000, 0.18, 0.25, 11, 0, 1, 7, 12000, 36, 6, 1, 0]
OVER_LIMIT = "65 instances in one request; the limit is 64"
RAGGED = [FRAUD_ROW, FRAUD_ROW[:8], [*FRAUD_ROW, 1]]


def _v2(data, shape=(1, 9), datatype="FP32", name="features"):
    return {"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}]}


def _fraud(**values):
    """A row that scores a block on the session's models, with ``values`` changed."""
    from serving.tasks.fraud import FEATURES

    row = [950.0, 3, 0.85, 1200.0, 6, 0, 1, 20, 7.5]
    for name, value in values.items():
        row[FEATURES.index(name)] = value
    return row


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
    # every protocol checks the values the task route's Record declares (a block turned
    # into an approve on V2 and TF-Serving)
    ("/v2/models/fraud/infer", _v2(_fraud(merchant_risk=-50)), 422,
     "merchant_risk must be >= 0 and <= 1"),
    ("/v2/models/fraud/infer", _v2(_fraud(card_present=100)), 422, "card_present must be 0 or 1"),
    ("/v2/models/fraud/infer", _v2(_fraud(foreign=-100)), 422, "foreign must be 0 or 1"),
    ("/v2/models/fraud/infer", _v2(_fraud(hour=3.5)), 422, "hour must be a whole number"),
    ("/v1/models/fraud:predict", {"instances": [_fraud(card_present=100)]}, 422,
     "card_present must be 0 or 1"),
    ("/v1/models/credit:predict", {"instances": [[*CREDIT_ROW[:11], 2.5]]}, 422,
     "purpose must be a category index"),
    ("/v2/models/forecast/infer", _v2([-1.0] * 30, (1, 30), name="prices"), 422,
     "prices must hold values > 0"),
    # a shape whose element count overflows int64 (np.prod wrapped it to 0: a 500)
    ("/v2/models/fraud/infer", _v2([], (4294967296, 4294967296, 9)), 422, "at most"),
    # ragged rows whose total matches the shape were re-aligned silently (and answered)
    ("/v1/models/fraud:predict", {"instances": RAGGED}, 422, "row 1 has 8 values, expected 9"),
    ("/v2/models/fraud/infer", _v2(RAGGED, (3, 9)), 422, "row 1 has 8 values, expected 9"),
    # the batch is counted before anything is decoded: 413, not the data's 422
    ("/v2/models/fraud/infer", _v2([["x"] * 9] * 65, (65, 9)), 413, OVER_LIMIT),
    ("/v1/models/fraud:predict", {"instances": [["x"] * 9] * 65}, 413, OVER_LIMIT),
    ("/v1/fraud/score", {"records": [{"amount": "ten"}] * 65}, 413, OVER_LIMIT),
    # an unknown model or version is a 404 whatever the body: the path is checked first
    ("/v2/models/nope/infer", b"{not json", 404, "not served"),
    ("/v2/models/nope/infer", {"inputs": []}, 404, "not served"),
    ("/v2/models/fraud/versions/9/infer", b"{not json", 404, "no version '9'"),
    ("/v1/models/nope:predict", {"instances": "abc"}, 404, "not served"),
    ("/v1/nope/score", b"{not json", 404, "not served"),
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


def test_a_binary_tensor_shape_past_int64_is_a_422(client):
    """Its element count wrapped around to 0, which an empty tensor then matched."""
    header = json.dumps({"inputs": [{
        "name": "features", "shape": [4294967296, 4294967296, 9], "datatype": "FP32",
        "parameters": {"binary_data_size": 0}}]}).encode()
    r = client.post("/v2/models/fraud/infer", content=header,
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 422 and "at most" in r.json()["error"], r.text


# --- PNGs: counted and their headers read first, decoded off the event loop -----------------
@pytest.fixture(scope="module")
def pngs_url(ray_serve, serve_apps, base_url, tiny_store, tmp_path_factory):
    """Digits alone, with the default limits: 1 MiB bodies, 1024 instances."""
    trail = tmp_path_factory.mktemp("pngs-trail")
    args = app_args(tiny_store.root, str(trail), max_body_bytes=1 << 20, max_instances=1024)
    args["models"] = [{"name": "digits"}]
    serve_apps.put("pngs", args, route_prefix="/pngs")
    yield f"http://127.0.0.1:{ray_serve}/pngs"
    serve_apps.delete("pngs")


def _many_pngs(last: str | None = None) -> tuple[bytes, int]:
    """As many of the largest PNGs (2000x2000) as one 1 MiB body holds, ``last`` at the end."""
    png = largest_png()
    count = (1 << 20) // (len(png) + 20) - 1
    records = [{"png_base64": png}] * count
    if last is not None:
        records[-1] = {"png_base64": last}
    body = json.dumps({"records": records}).encode()
    assert len(body) <= 1 << 20
    return body, count


def test_a_request_of_big_pngs_leaves_the_replica_answering(pngs_url):
    """Decoding ~70 such PNGs (~0.1 s each) ran on the event loop: a health check on the same
    replica answered seconds late."""
    body, count = _many_pngs()
    latencies = []
    with httpx.Client(base_url=pngs_url, timeout=60) as probe, \
            ThreadPoolExecutor(1) as pool:
        assert probe.get("/v2/health/live").status_code == 200
        started = time.perf_counter()
        big = pool.submit(httpx.post, f"{pngs_url}/v1/digits/read", content=body, timeout=60)
        time.sleep(0.5)  # the body is in; its PNGs are being decoded
        while not big.done():
            sent = time.perf_counter()
            assert probe.get("/v2/health/live").status_code == 200
            latencies.append(time.perf_counter() - sent)
            time.sleep(0.1)
        answer = big.result()
    took = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == count
    print(f"{count} PNGs answered in {took:.1f}s; {len(latencies)} health checks meanwhile, "
          f"median {statistics.median(latencies or [0]) * 1000:.0f} ms, "
          f"slowest {max(latencies, default=0) * 1000:.0f} ms")
    assert len(latencies) >= 3 and max(latencies) < 1.0, (latencies, took)


def test_a_png_declaring_100000x100000_is_refused_before_any_png_is_decoded(pngs_url):
    body, count = _many_pngs(last=base64.b64encode(png_declaring(100_000, 100_000)).decode())
    started = time.perf_counter()
    r = httpx.post(f"{pngs_url}/v1/digits/read", content=body, timeout=60)
    took = time.perf_counter() - started
    assert r.status_code == 422, r.text
    assert f"records.{count - 1}" in r.json()["error"]
    assert "PNG is 100000x100000 pixels; at most 2000x2000" in r.json()["error"]
    assert took < 1.0, took  # the other PNGs were decoded first: seconds
