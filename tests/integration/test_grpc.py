"""The Open Inference Protocol over gRPC through Ray Serve's gRPC ingress: tritonclient.grpc,
unchanged, gets every default model's answer as the HTTP V2 route gives it, the decision is
recorded and named in the trailing metadata, and every refusal has the gRPC code of its
HTTP status (never UNKNOWN or INTERNAL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving import audit
from serving.protocol.examples import protocol_bodies
from serving.protocol.grpc_v2 import pb
from serving.tasks import get_task
from tests.grpc_client import as_inputs, assert_same_outputs, refusal
from tests.integration.conftest import ALL_MODELS, app_args, wait_for

pytestmark = pytest.mark.integration

#: the session's application; other tests deploy more, so every call names it
APP = {"application": "finserve"}


@pytest.fixture(scope="module")
def triton_client(grpc_port: int, base_url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    wait_for(lambda: client.is_server_ready(headers=APP), timeout=60)
    yield client
    client.close()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_model_answers_over_grpc_as_on_the_http_v2_route(
        model, triton_client, client, trail):
    body = protocol_bodies(get_task(model).name)["v2"]
    http = client.post(f"/v2/models/{model}/infer", json=body)
    assert http.status_code == 200, http.text
    rid = f"grpc-{model}-{uuid.uuid4().hex[:8]}"
    result = triton_client.infer(model, as_inputs(body), parameters=body.get("parameters"),
                                 headers={**APP, "x-request-id": rid}, client_timeout=60)
    answer = result.get_response()
    assert (answer.model_name, answer.model_version) == (model, http.json()["model_version"])
    assert_same_outputs(result, http.json()["outputs"])
    records = [r for r in audit.read_records(str(trail)) if r["request_id"] == rid]
    assert len(records) == 1 and records[0]["route"] == "grpc"
    assert records[0]["model"] == model and records[0]["version"] == answer.model_version


def test_health_and_metadata_match_the_http_routes(triton_client, client):
    assert triton_client.is_server_live() and triton_client.is_server_ready(headers=APP)
    server = triton_client.get_server_metadata(headers=APP)
    assert server.name == client.get("/v2").json()["name"] == "finserve"
    for model in ALL_MODELS:
        assert triton_client.is_model_ready(model, headers=APP)
        meta = triton_client.get_model_metadata(model, headers=APP)
        http = client.get(f"/v2/models/{model}").json()
        assert list(meta.versions) == http["versions"]
        for kind in ("inputs", "outputs"):
            assert [(t.name, t.datatype, list(t.shape)) for t in getattr(meta, kind)] == [
                (t["name"], t["datatype"], t["shape"]) for t in http[kind]]
    assert triton_client.is_model_ready("fraud", "1", headers=APP)  # pinned, still served


def test_version_routing_and_the_decision_id_in_the_trailing_metadata(
        grpc_port, base_url, trail):
    body = protocol_bodies("fraud")["v2"]
    stub_request = pb.ModelInferRequest(model_name="fraud", model_version="1")
    tensor = body["inputs"][0]
    stub_request.inputs.add(name=tensor["name"], datatype="FP32", shape=tensor["shape"])
    stub_request.raw_input_contents.append(np.asarray(tensor["data"], "<f4").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(
            stub_request, metadata=[*APP.items(), ("x-request-id", "grpc-trail-1")], timeout=60)
    trailing = dict(call.trailing_metadata())
    assert answer.model_version == "1" and trailing["x-model-version"] == "1"
    assert trailing["x-request-id"] == "grpc-trail-1"
    record = next(r for r in audit.read_records(str(trail))
                  if r["request_id"] == "grpc-trail-1")
    assert trailing["x-decision-id"] == f"{record['chain']}:{record['seq']}"


def test_bad_input_gets_the_http_statuses_grpc_code_never_unknown(triton_client):
    fraud = protocol_bodies("fraud")["v2"]
    features = np.asarray(fraud["inputs"][0]["data"], np.float32).reshape(-1, 9)

    def infer(model: str, array: np.ndarray, datatype: str = "FP32", name: str = "features"
              ) -> Callable[[], Any]:
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return lambda: triton_client.infer(model, [tensor], headers=APP, client_timeout=60)

    nan = features.copy()
    nan[0, 0] = np.nan
    text = np.array(["x" * 70_000], dtype=object)
    cases = {
        "unknown model": (infer("nope", features), "NOT_FOUND", "model 'nope' is not served"),
        "wrong shape": (infer("fraud", features[:, :8]), "INVALID_ARGUMENT", "[-1, 9]"),
        "NaN": (infer("fraud", nan), "INVALID_ARGUMENT", "NaN or infinity"),
        "out of range": (infer("fraud", np.full((1, 9), -50, np.float32)), "INVALID_ARGUMENT",
                         "amount must be >= 0"),
        "wrong input": (infer("fraud", features, name="x"), "INVALID_ARGUMENT",
                        "expected an input named 'features'"),
        "too many": (infer("fraud", np.zeros((65, 9), np.float32)), "RESOURCE_EXHAUSTED",
                     "65 instances in one request; the limit is 64"),
        "too large": (infer("sentiment", text, "BYTES", "text"), "RESOURCE_EXHAUSTED",
                      "larger than the limit of 65536 bytes"),
        "unknown version": (lambda: triton_client.get_model_metadata(
            "fraud", "9", headers=APP), "NOT_FOUND", "has no version '9'"),
    }
    for case, (call, code, message) in cases.items():
        got, text_ = refusal(call)
        assert (got, message in text_) == (code, True), (case, got, text_)


@pytest.fixture(scope="module")
def keyed_app(ray_serve, serve_apps, base_url, tiny_store, api_keys, tmp_path_factory):
    """An app that requires keys, fraud and sentiment, called by its application name."""
    folder = tmp_path_factory.mktemp("grpc-keys")
    args = app_args(tiny_store.root, str(folder / "trail"), keys_file=api_keys["file"],
                    keys_dir=str(folder / "keys"))
    args["security"]["require_auth"] = True
    args["models"] = [{"name": "fraud"}, {"name": "sentiment"}]
    serve_apps.put("grpc-keys", args, route_prefix="/grpc-keys")
    yield {"application": "grpc-keys"}
    serve_apps.delete("grpc-keys")


def test_keys_are_checked_as_on_http(keyed_app, triton_client, api_keys):
    body = protocol_bodies("fraud")["v2"]

    def infer(model: str, key: str | None) -> Callable[[], Any]:
        headers = {**keyed_app, **({"authorization": f"Bearer {key}"} if key else {})}
        inputs = as_inputs(protocol_bodies(model)["v2"] if model != "fraud" else body)
        return lambda: triton_client.infer(model, inputs, headers=headers, client_timeout=60)

    assert refusal(infer("fraud", None))[0] == "UNAUTHENTICATED"
    assert refusal(infer("fraud", "fsk_ops_nope"))[0] == "UNAUTHENTICATED"
    assert refusal(lambda: triton_client.get_server_metadata(headers=keyed_app))[0] == (
        "UNAUTHENTICATED")
    assert triton_client.is_server_live(headers=keyed_app)  # probes stay open
    code, message = refusal(infer("sentiment", api_keys["fraud-desk"]))
    assert code == "PERMISSION_DENIED" and "may not call model 'sentiment'" in message
    assert infer("fraud", api_keys["ops"])().get_response().model_name == "fraud"
    outcomes = []
    for _ in range(4):
        try:
            infer("fraud", api_keys["slow"])()
            outcomes.append("OK")
        except InferenceServerException as exc:
            outcomes.append(str(exc.status()).removeprefix("StatusCode."))
    assert outcomes[0] == "OK" and "RESOURCE_EXHAUSTED" in outcomes, outcomes
