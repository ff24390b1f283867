"""All six use cases on all three protocols, and every bad-input class on every task."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from serving.dataplane import jsonable
from serving.tasks import get_task
from tests.conftest import golden
from tests.integration.conftest import ALL_MODELS

pytestmark = pytest.mark.integration


def _bodies(model: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], np.ndarray]:
    """The golden task-route body and the same batch as V2 and V1 requests."""
    body = golden(f"{model}_task_request.json")
    task = get_task(model)
    raw = task.check_raw(task.records_to_raw([task.Record(**r) for r in body["records"]]))
    spec = task.input_spec
    v2 = {"inputs": [{"name": spec.name, "shape": list(raw.shape), "datatype": spec.datatype,
                      "data": jsonable(raw.reshape(-1))}]}
    v1: dict[str, Any] = {"instances": jsonable(raw)}
    if "parameters" in body:
        v2["parameters"] = v1["parameters"] = body["parameters"]
    return body, v2, v1, raw


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    if a.shape != b.shape:
        return False
    flat = [v for v in a.reshape(-1)]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        return np.allclose(a.astype(float), b.astype(float), rtol=1e-5, atol=1e-6)
    return a.tolist() == b.tolist()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_each_model_answers_alike_on_v2_tf_serving_and_its_task_route(client, model):
    body, v2, v1, raw = _bodies(model)
    task = get_task(model)
    r_task = client.post(f"/v1/{model}/{task.route}", json=body)
    r_v2 = client.post(f"/v2/models/{model}/infer", json=v2)
    r_v1 = client.post(f"/v1/models/{model}:predict", json=v1)
    for r in (r_task, r_v2, r_v1):
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"]
    results, predictions = r_task.json()["results"], r_v1.json()["predictions"]
    outputs = {o["name"]: o for o in r_v2.json()["outputs"]}
    assert len(results) == len(predictions) == len(raw)
    for spec in task.output_specs:
        tensor = outputs[spec.name]
        data = np.asarray(tensor["data"], dtype=object).reshape(tensor["shape"])
        if tensor["datatype"] == "BYTES" and data.ndim == 2:  # rows drop the '' padding
            data = [[v for v in row if v != ""] for row in data.tolist()]
        for rows in (results, predictions):
            column = [row[spec.name] for row in rows]
            assert _same(column, data), (spec.name, column, data)


def test_answers_are_what_each_task_promises(client):
    """A few facts per task that hold for any sensible model."""
    credit = client.post("/v1/credit/decide", json=golden("credit_task_request.json")).json()
    safe, risky = credit["results"]
    assert risky["default_probability"] > safe["default_probability"]
    assert risky["reason_codes"] and all(c.startswith("R") for c in risky["reason_codes"])
    digits = client.post("/v1/digits/read", json=golden("digits_task_request.json")).json()
    assert digits["summary"]["amount"] == "1250"
    forecast = client.post("/v1/forecast/forecast",
                           json=golden("forecast_task_request.json")).json()
    for row in forecast["results"]:
        assert len(row["forecast"]) == 5
        assert all(lo <= f <= hi for lo, f, hi in
                   zip(row["lower"], row["forecast"], row["upper"], strict=True))
    rec = client.post("/v1/recommend/recommend",
                      json=golden("recommend_task_request.json")).json()["results"]
    assert [len(r["products"]) for r in rec] == [3, 3, 3]
    assert [r["cold_start"] for r in rec] == [False, False, True]  # unknown: popular picks
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rec)


def _bad_cases(model: str) -> list[tuple[str, str, Any, int]]:
    """(description, path, body, expected status) for every bad-input class."""
    body, v2, v1, raw = _bodies(model)
    task = get_task(model)
    spec = task.input_spec
    infer = f"/v2/models/{model}/infer"
    route = f"/v1/{model}/{task.route}"

    def tensor(**changes: Any) -> dict[str, Any]:
        return {**v2, "inputs": [{**v2["inputs"][0], **changes}]}

    flat = v2["inputs"][0]["data"]
    wrong_value = "text" if spec.datatype != "BYTES" else 5
    many = np.repeat(raw, 65 // len(raw) + 1, axis=0)[:65]
    cases = [
        ("malformed JSON", infer, b'{"inputs": [', 400),
        ("empty body", infer, b"", 400),
        ("empty batch", infer, tensor(shape=[0, *raw.shape[1:]], data=[]), 422),
        ("wrong shape", infer, tensor(shape=[len(raw), raw.size], data=flat), 422),
        ("missing elements", infer, tensor(data=flat[:-1]), 422),
        ("wrong datatype", infer,
         tensor(datatype="BYTES" if spec.datatype != "BYTES" else "FP32"), 422),
        ("wrong value type", infer, tensor(data=[wrong_value, *flat[1:]]), 422),
        ("unknown version", f"/v2/models/{model}/versions/99/infer", v2, 404),
        ("too many instances", f"/v1/models/{model}:predict",
         {**v1, "instances": jsonable(many)}, 413),
        ("oversized body", infer, b'{"inputs": [' + b" " * 70_000 + b"]}", 413),
        ("no records", route, {**body, "records": []}, 422),
        ("extra field", route, {**body, "records": [{**body["records"][0], "x": 1}]}, 422),
        ("wrong record", route, {**body, "records": [{"nothing": "here"}]}, 422),
        ("unknown parameter", route, {**body, "parameters": {"nope": 1}}, 422),
        ("unknown model", "/v2/models/nope/infer", v2, 404),
    ]
    if spec.datatype != "BYTES":
        nan = json.dumps(tensor()).replace(json.dumps(flat[0]), "NaN", 1).encode()
        cases.append(("NaN", infer, nan, 422))
    return cases


@pytest.mark.parametrize(
    ("model", "case"),
    [(m, i) for m in ALL_MODELS for i in range(len(_bad_cases(m)))],
    ids=[f"{m}-{c[0]}" for m in ALL_MODELS for c in _bad_cases(m)],
)
def test_every_bad_input_class_gets_its_4xx_on_every_task(client, model, case):
    description, path, body, status = _bad_cases(model)[case]
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, (description, r.text)
    assert r.json()["error"]


def test_models_in_one_gateway_replica_answer_concurrently_each_with_its_own_batches(
        base_url):
    """Several models run in the gateway replica (placement: gateway); requests to all of
    them at once are batched per model, never across models."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    models = [m for m in ALL_MODELS if m not in ("fraud", "credit")]  # the gateway-placed
    paths = {m: f"/v1/{m}/{get_task(m).route}" for m in models}
    with httpx.Client(base_url=base_url, timeout=30) as c:
        alone = {m: c.post(paths[m], json=golden(f"{m}_task_request.json")).json()["results"]
                 for m in models}

    def post(i: int) -> tuple[str, httpx.Response]:
        m = models[i % len(models)]
        return m, httpx.post(base_url + paths[m], json=golden(f"{m}_task_request.json"),
                             timeout=30)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(post, range(96)))
    for m, r in answers:
        assert r.status_code == 200, (m, r.text)
        assert _close(r.json()["results"], alone[m]), (m, r.json()["results"], alone[m])


def _close(a: Any, b: Any) -> bool:
    """Equal JSON, floats within 1e-5 (a batch's arithmetic may differ in the last bits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-5, atol=1e-6))
    return a == b
