"""Both models answer on V2, TF-Serving and task routes with the same numbers."""

import numpy as np
import pytest

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
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 9]}]
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
