"""Both models answer on V2, TF-Serving and task routes with the same numbers."""

import json

import numpy as np
import pytest

from serving.tasks import get_task
from tests.conftest import golden

pytestmark = pytest.mark.integration


def _v2(client, model, body, version=None):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _v2_output(answer, name):
    out = next(o for o in answer["outputs"] if o["name"] == name)
    return np.array(out["data"]).reshape(out["shape"])


def test_fraud_answers_alike_on_all_three_protocols(client):
    v2 = _v2(client, "fraud", golden("fraud_v2_request.json"))
    assert v2["model_name"] == "fraud" and v2["model_version"] == "2"
    assert v2["id"] == "golden-fraud-1"
    v1 = client.post("/v1/models/fraud:predict", json=golden("fraud_v1_request.json")).json()
    task = client.post("/v1/fraud/score", json=golden("fraud_task_request.json")).json()
    assert v1["model_version"] == "2" and task["version"] == "2"
    p_v2 = _v2_output(v2, "fraud_probability")
    p_v1 = np.array([p["fraud_probability"] for p in v1["predictions"]])
    p_task = np.array([r["fraud_probability"] for r in task["results"]])
    np.testing.assert_allclose(p_v1, p_v2, rtol=1e-6)
    np.testing.assert_allclose(p_task, p_v2, rtol=1e-6)
    assert p_v2[0] > p_v2[1]  # the risky transaction scores higher than the ordinary one
    assert [r["decision"] for r in task["results"]] == _v2_output(v2, "decision").tolist()


def test_sentiment_answers_alike_on_all_three_protocols(client):
    v2 = _v2(client, "sentiment", golden("sentiment_v2_request.json"))
    v1 = client.post("/v1/models/sentiment:predict",
                     json=golden("sentiment_v1_request.json")).json()
    cols = client.post("/v1/models/sentiment:predict",
                       json={"inputs": {"text": golden("sentiment_v1_request.json")["instances"]}}
                       ).json()
    task = client.post("/v1/sentiment/analyze", json=golden("sentiment_task_request.json")).json()
    probs = _v2_output(v2, "probabilities")
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for rows in (v1["predictions"], cols["predictions"], task["results"]):
        np.testing.assert_allclose([r["probabilities"] for r in rows], probs, rtol=1e-6)
    labels = [r["label"] for r in task["results"]]
    assert labels == _v2_output(v2, "label").tolist()
    assert labels[0] == "positive" and labels[1] == "negative"


def test_a_pinned_older_version_answers_when_asked(client):
    body = golden("fraud_v2_request.json")
    old = _v2(client, "fraud", body, version="1")
    new = _v2(client, "fraud", body)
    assert old["model_version"] == "1" and new["model_version"] == "2"
    assert not np.allclose(_v2_output(old, "fraud_probability"),
                           _v2_output(new, "fraud_probability"))
    task = client.post("/v1/fraud/score?version=1", json=golden("fraud_task_request.json")).json()
    assert task["version"] == "1"
    np.testing.assert_allclose([r["fraud_probability"] for r in task["results"]],
                               _v2_output(old, "fraud_probability"), rtol=1e-6)
    v1 = client.post("/v1/models/fraud/versions/1:predict", json=golden("fraud_v1_request.json"))
    assert v1.json()["model_version"] == "1"


def test_metadata_and_health_routes(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert client.get("/v2").json()["name"] == "finserve"
    meta = client.get("/v2/models/fraud").json()
    assert meta["versions"] == ["2", "1"]
    (tensor,) = meta["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("features", "FP32", [-1, 9])
    columns = [c["name"] for c in tensor["parameters"]["columns"]]
    assert columns == list(get_task("fraud").raw_fields)  # named in the raw input's order
    assert client.get("/v2/models/sentiment/versions/1/ready").json()["ready"] is True
    status = client.get("/v1/models/fraud").json()["model_version_status"]
    assert [s["version"] for s in status] == ["2", "1"]
    assert all(s["state"] == "AVAILABLE" for s in status)


def test_every_route_is_on_the_openapi_page(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v2/models/{model}/infer", "/v1/models/{model}:predict", "/v1/fraud/score",
                 "/v1/sentiment/analyze", "/v2/health/ready"):
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_request_ids_are_echoed(client):
    r = client.post("/v1/sentiment/analyze", json=golden("sentiment_task_request.json"),
                    headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["request_id"] == "abc-123"


def test_concurrent_requests_are_batched_and_all_answered(client, base_url):
    import concurrent.futures

    import httpx

    body = golden("fraud_v2_request.json")

    def one(_):
        with httpx.Client(base_url=base_url, timeout=30) as c:
            return c.post("/v2/models/fraud/infer", json=body).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(64)))
    first = _v2_output(answers[0], "fraud_probability")
    for a in answers:
        np.testing.assert_allclose(_v2_output(a, "fraud_probability"), first, rtol=1e-6)


def _triton(base_url):
    import tritonclient.http as triton

    return triton, triton.InferenceServerClient(base_url.removeprefix("http://"))


def test_triton_client_binary_tensors_get_the_json_answer(client, base_url):
    """Triton's own HTTP client, binary tensor data both ways, answers as JSON does."""
    triton, server = _triton(base_url)
    body = golden("fraud_v2_request.json")
    tensor = body["inputs"][0]
    rows = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
    batch = np.resize(rows, (64, rows.shape[1]))
    features = triton.InferInput("features", list(batch.shape), "FP32")
    features.set_data_from_numpy(batch, binary_data=True)
    wanted = [triton.InferRequestedOutput(n, binary_data=True)
              for n in ("fraud_probability", "decision", "reason_codes")]
    result = server.infer("fraud", [features], outputs=wanted)
    json_answer = _v2(client, "fraud", {"inputs": [{**tensor, "shape": list(batch.shape),
                                                    "data": batch.reshape(-1).tolist()}]})
    assert result.get_response()["model_version"] == json_answer["model_version"]
    np.testing.assert_allclose(result.as_numpy("fraud_probability"),
                               _v2_output(json_answer, "fraud_probability"), rtol=1e-6)
    decisions = [v.decode() for v in result.as_numpy("decision")]
    assert decisions == _v2_output(json_answer, "decision").tolist()
    assert result.as_numpy("reason_codes").shape == (64, 3)


def test_binary_input_with_json_output_and_bad_binary_bodies(client, base_url):
    triton, _ = _triton(base_url)
    body = golden("fraud_v2_request.json")
    tensor = body["inputs"][0]
    rows = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
    features = triton.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows, binary_data=True)
    raw, length = triton.InferenceServerClient.generate_request_body([features])
    headers = {"Inference-Header-Content-Length": str(length),
               "Content-Type": "application/octet-stream"}
    json_probability = _v2_output(_v2(client, "fraud", body), "fraud_probability")
    # Triton's client asks for every output as binary when it names none
    r = client.post("/v2/models/fraud/infer", content=raw, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-model-version"] == "2"
    result = triton.InferResult.from_response_body(
        r.content, header_length=int(r.headers["inference-header-content-length"]))
    assert [o["name"] for o in result.get_response()["outputs"]] == [
        "fraud_probability", "decision", "reason_codes", "reasons"]
    np.testing.assert_allclose(result.as_numpy("fraud_probability"), json_probability,
                               rtol=1e-6)
    # binary in, JSON out
    header = json.dumps({"inputs": [{"name": "features", "shape": list(rows.shape),
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": rows.nbytes}}]})
    r = client.post("/v2/models/fraud/infer", content=header.encode() + rows.tobytes(),
                    headers={**headers, "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    np.testing.assert_allclose(_v2_output(r.json(), "fraud_probability"), json_probability,
                               rtol=1e-6)
    nan = rows.copy()
    nan[0, 0] = np.nan
    bad = {
        "cut short": (raw[:-3], 400, "body ends"),
        "trailing bytes": (raw + b"\0\0\0\0", 400, "follow the last"),
        "NaN": (raw[:length] + nan.tobytes(), 422, "NaN"),
        "header not JSON": (b"\xff" * length + raw[length:], 400, "not a JSON header"),
    }
    for case, (content, status, words) in bad.items():
        r = client.post("/v2/models/fraud/infer", content=content, headers=headers)
        assert r.status_code == status and words in r.json()["error"], (case, r.text)
    r = client.post("/v2/models/fraud/infer", content=raw,
                    headers={**headers, "Inference-Header-Content-Length": "x"})
    assert r.status_code == 400 and "byte count" in r.json()["error"]


def test_every_protocol_refuses_what_the_task_routes_record_refuses(client, base_url):
    """One domain check: merchant_risk -50 turned this block into an approve on V2 (JSON and
    binary) and TF-Serving, while the task route's Record refused it."""
    triton, _ = _triton(base_url)
    row = [950.0, 3, -50, 1200.0, 6, 0, 1, 20, 7.5]
    features = triton.InferInput("features", [1, 9], "FP32")
    features.set_data_from_numpy(np.array([row], np.float32), binary_data=True)
    raw, length = triton.InferenceServerClient.generate_request_body([features])
    record = {**golden("fraud_task_request.json")["records"][0], "merchant_risk": -50}
    answers = {
        "v2": client.post("/v2/models/fraud/infer", json={"inputs": [
            {"name": "features", "shape": [1, 9], "datatype": "FP32", "data": row}]}),
        "v2 binary": client.post("/v2/models/fraud/infer", content=raw,
                                 headers={"Inference-Header-Content-Length": str(length)}),
        "tf-serving": client.post("/v1/models/fraud:predict", json={"instances": [row]}),
        "task route": client.post("/v1/fraud/score", json={"records": [record]}),
    }
    for protocol, r in answers.items():
        assert r.status_code == 422, (protocol, r.text)
        assert "merchant_risk" in r.json()["error"], (protocol, r.text)
    for protocol in ("v2", "v2 binary", "tf-serving"):
        assert answers[protocol].json()["error"] == (
            "merchant_risk must be >= 0 and <= 1; got -50 in example 0")
