"""The gateway's gRPC methods outside Serve (``make_gateway``), called as Ray Serve calls
them: the answer equals the HTTP V2 route's, the decision is recorded and named in the
trailing metadata, and refusals carry the gRPC code of their HTTP status, never UNKNOWN."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

from serving.audit import read_records
from serving.protocol.grpc_v2 import pb
from serving.security import new_key, write_keys
from tests.conftest import golden


class FakeContext:
    """What Ray Serve's ``RayServegRPCContext`` offers a deployment method."""

    def __init__(self, **metadata: str) -> None:
        self.metadata = [(k, v) for k, v in metadata.items()]
        self.code_: grpc.StatusCode | None = None
        self.details_ = ""
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code_ = code

    def set_details(self, details: str) -> None:
        self.details_ = details

    def set_trailing_metadata(self, metadata: list[tuple[str, str]]) -> None:
        self.trailing = dict(metadata)


def call(gateway: Any, method: str, request: Any, **metadata: str) -> tuple[Any, FakeContext]:
    context = FakeContext(**metadata)
    answer = asyncio.run(getattr(gateway, method)(request, grpc_context=context))
    return answer, context


def fraud_request(features: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="fraud", model_version=version, id="tx-9",
                                   raw_input_contents=[features.astype("<f4").tobytes()])
    request.inputs.add(name="features", datatype="FP32", shape=features.shape)
    return request


FEATURES = np.asarray(golden("fraud_v2_request.json")["inputs"][0]["data"],
                      np.float32).reshape(-1, 9)


@pytest.fixture
def gateway(make_gateway):
    gw = make_gateway()
    gw.reconfigure({"models": {"fraud": {"versions": ["2", "1"]}}})
    return gw


def test_model_infer_answers_as_the_http_route_and_records_the_decision(gateway, tmp_path):
    answer, context = call(gateway, "ModelInfer", fraud_request(FEATURES),
                           **{"x-request-id": "grpc-1"})
    assert context.code_ is None, context.details_
    assert (answer.model_name, answer.model_version, answer.id) == ("fraud", "2", "tx-9")
    result = triton.InferResult(answer)

    async def http() -> dict:
        transport = httpx.ASGITransport(app=gateway.__serve_build_asgi_app__())
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return (await client.post("/v2/models/fraud/infer",
                                      json=golden("fraud_v2_request.json"))).json()

    for output in asyncio.run(http())["outputs"]:
        got = result.as_numpy(output["name"])
        if got.dtype == object:
            assert [v.decode() for v in got.reshape(-1)] == output["data"]
        else:
            np.testing.assert_allclose(got.reshape(-1), output["data"], rtol=1e-6)
    record = next(r for r in read_records(str(tmp_path / "trail"))
                  if r["request_id"] == "grpc-1")
    assert record["route"] == "grpc" and record["version"] == "2"
    assert context.trailing["x-decision-id"] == f"{record['chain']}:{record['seq']}"
    assert context.trailing["x-model-version"] == "2"
    assert context.trailing["x-request-id"] == "grpc-1"
    pinned, context = call(gateway, "ModelInfer", fraud_request(FEATURES, version="1"))
    assert pinned.model_version == "1" and context.code_ is None


def test_health_metadata_and_readiness(gateway):
    assert call(gateway, "ServerLive", pb.ServerLiveRequest())[0].live
    assert call(gateway, "ServerReady", pb.ServerReadyRequest())[0].ready
    meta = call(gateway, "ServerMetadata", pb.ServerMetadataRequest())[0]
    assert meta.name == "finserve" and "model_version_routing" in meta.extensions
    model = call(gateway, "ModelMetadata", pb.ModelMetadataRequest(name="fraud"))[0]
    assert list(model.versions) == ["2", "1"] and model.platform == "tensorflow_savedmodel"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("features", "FP32", [-1, 9])]
    assert call(gateway, "ModelReady", pb.ModelReadyRequest(name="fraud", version="1"))[0].ready


def _refused(gateway: Any, method: str, request: Any, **metadata: str) -> FakeContext:
    answer, context = call(gateway, method, request, **metadata)
    assert answer == type(answer)()  # an empty message beside the status
    return context


@pytest.mark.parametrize(("request_", "metadata", "code", "details"), [
    (pb.ModelInferRequest(model_name="nope"), {}, "NOT_FOUND", "model 'nope' is not served"),
    (fraud_request(FEATURES, version="9"), {}, "NOT_FOUND", "has no version '9'"),
    (fraud_request(FEATURES, version="x"), {}, "INVALID_ARGUMENT", "version must be a number"),
    (fraud_request(FEATURES[:, :8]), {}, "INVALID_ARGUMENT", "must have shape [-1, 9]"),
    (fraud_request(np.full((1, 9), np.nan, np.float32)), {}, "INVALID_ARGUMENT",
     "NaN or infinity"),
    (fraud_request(np.zeros((65, 9), np.float32)), {}, "RESOURCE_EXHAUSTED",
     "65 instances in one request; the limit is 64"),
    (fraud_request(FEATURES), {"x-request-id": "bad id!"}, "INVALID_ARGUMENT", "x-request-id"),
])
def test_refusals_carry_the_grpc_code_of_their_http_status(
        make_gateway, request_, metadata, code, details):
    gateway = make_gateway(limits={"max_instances": 64})
    gateway.reconfigure({"models": {"fraud": {"versions": ["2", "1"]}}})
    context = _refused(gateway, "ModelInfer", request_, **metadata)
    assert context.code_ == grpc.StatusCode[code]
    assert details in context.details_


def test_an_oversized_message_is_resource_exhausted(make_gateway):
    gateway = make_gateway(limits={"max_body_bytes": 4096})
    gateway.reconfigure({})
    context = _refused(gateway, "ModelInfer", fraud_request(np.zeros((200, 9), np.float32)))
    assert context.code_ == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than the limit of 4096 bytes" in context.details_


def test_keys_are_checked_as_on_http(make_gateway, tmp_path, tiny_store):
    plain = {}
    entries = []
    for key_id, models, rate in (("ops", ["*"], None), ("desk", ["forecast"], None),
                                 ("slow", ["*"], 0.001)):
        plain[key_id], entry = new_key(key_id, models, rate)
        entries.append(entry)
    keys = tmp_path / "keys.yaml"
    write_keys(keys, entries)
    gateway = make_gateway(security={"require_auth": True, "api_keys_file": str(keys)})
    gateway.reconfigure({})

    def code(method: str, request: Any, key: str | None) -> grpc.StatusCode | None:
        metadata = {"authorization": f"Bearer {key}"} if key else {}
        return call(gateway, method, request, **metadata)[1].code_

    infer = fraud_request(FEATURES)
    assert code("ModelInfer", infer, None) == grpc.StatusCode.UNAUTHENTICATED
    assert code("ModelInfer", infer, "fsk_ops_wrong") == grpc.StatusCode.UNAUTHENTICATED
    assert code("ServerMetadata", pb.ServerMetadataRequest(), None) == (
        grpc.StatusCode.UNAUTHENTICATED)
    assert code("ServerLive", pb.ServerLiveRequest(), None) is None  # probes stay open
    assert code("ModelInfer", infer, plain["desk"]) == grpc.StatusCode.PERMISSION_DENIED
    assert code("ModelMetadata", pb.ModelMetadataRequest(name="fraud"), plain["desk"]) == (
        grpc.StatusCode.PERMISSION_DENIED)
    assert code("ModelInfer", infer, plain["ops"]) is None
    codes = [code("ModelInfer", infer, plain["slow"]) for _ in range(3)]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert code("ModelInfer", pb.ModelInferRequest(model_name="nope"), plain["desk"]) == (
        grpc.StatusCode.NOT_FOUND)


def test_the_rest_of_tritons_service_is_unimplemented_not_internal(gateway):
    answer, context = call(gateway, "ModelConfig", pb.ModelConfigRequest(name="fraud"))
    assert context.code_ == grpc.StatusCode.UNIMPLEMENTED and "ModelInfer" in context.details_
    assert isinstance(answer, pb.ModelConfigResponse)

    async def stream() -> list[Any]:
        return [m async for m in gateway.ModelStreamInfer(iter(()), grpc_context=context)]

    context = FakeContext()
    assert asyncio.run(stream()) == [] and context.code_ == grpc.StatusCode.UNIMPLEMENTED
