"""The Open Inference Protocol over gRPC: requests as tritonclient.grpc builds them decode to
the arrays the HTTP route decodes, typed contents too, answers decode back through
tritonclient's own result, every malformed tensor is INVALID_ARGUMENT, and each HTTP status
has its gRPC code."""

from __future__ import annotations

import struct

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import _utils as triton_utils

from serving import dataplane, errors, security
from serving.errors import FinServeError, InvalidInput
from serving.protocol import grpc_v2
from serving.protocol.grpc_v2 import pb
from serving.protocol.v2 import InferenceRequest
from serving.tasks import get_task
from tests.conftest import golden


def _client_request(*inputs: tuple[str, np.ndarray, str], model: str = "fraud",
                    parameters: dict | None = None) -> pb.ModelInferRequest:
    """A ModelInferRequest as tritonclient.grpc's ``infer`` builds it (raw contents)."""
    tensors = []
    for name, array, datatype in inputs:
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return triton_utils._get_inference_request(
        model_name=model, inputs=tensors, model_version="", request_id="r-1", outputs=None,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
        parameters=parameters)


def test_raw_contents_as_tritonclient_sends_them_decode_to_the_http_routes_arrays():
    features = np.random.default_rng(0).normal(size=(64, 9)).astype(np.float32)
    text = np.array(["Shares surge", "Bank fined €3m", ""], dtype=object)
    request, arrays = grpc_v2.infer_request(_client_request(
        ("features", features, "FP32"), ("text", text, "BYTES")))
    assert request.id == "r-1" and [i.name for i in request.inputs] == ["features", "text"]
    np.testing.assert_array_equal(arrays[0], features)
    assert arrays[0].dtype == np.float32 and arrays[0].flags.writeable
    assert arrays[1].tolist() == ["Shares surge", "Bank fined €3m", ""]
    task = get_task("fraud")
    http = golden("fraud_v2_request.json")
    same = np.asarray(http["inputs"][0]["data"], np.float32).reshape(http["inputs"][0]["shape"])
    request, arrays = grpc_v2.infer_request(_client_request(("features", same, "FP32")))
    np.testing.assert_array_equal(dataplane.decode_v2(request, task, arrays),
                                  dataplane.decode_v2(InferenceRequest.model_validate(http), task))


def test_typed_contents_decode_like_raw_ones():
    message = pb.ModelInferRequest(model_name="sentiment")
    text = message.inputs.add(name="text", datatype="BYTES", shape=[2])
    text.contents.bytes_contents.extend([b"Profit up", "Fined €3m".encode()])
    grid = message.inputs.add(name="grid", datatype="FP32", shape=[2, 2])
    grid.contents.fp32_contents.extend([0.25, 1.5, -2.0, 3.0])
    request, arrays = grpc_v2.infer_request(message)
    assert arrays == {}
    assert request.inputs[0].as_numpy().tolist() == ["Profit up", "Fined €3m"]
    np.testing.assert_array_equal(request.inputs[1].as_numpy(),
                                  np.array([[0.25, 1.5], [-2.0, 3.0]], np.float32))


def test_bytes_elements_are_length_prefixed_little_endian():
    values = np.array([["ab", "€"], ["", "xyz"]], dtype=object)
    response = grpc_v2.infer_response("m", "1", None, {"codes": values}, ["codes"])
    raw = response.raw_output_contents[0]
    assert raw == b"".join(struct.pack("<I", len(v.encode())) + v.encode()
                           for v in values.reshape(-1))
    assert response.outputs[0].shape == [2, 2] and response.outputs[0].datatype == "BYTES"
    message = pb.ModelInferRequest(raw_input_contents=[raw[:-1]])
    message.inputs.add(name="codes", datatype="BYTES", shape=[2, 2])
    with pytest.raises(InvalidInput, match="runs past its tensor"):
        grpc_v2.infer_request(message)


def test_answers_decode_back_through_tritonclients_own_result():
    outputs = {
        "fraud_probability": np.array([0.125, 0.875], np.float32),
        "decision": np.array(["approve", "block"], dtype=object),
        "reason_codes": np.array([["R1", ""], ["R2", "R3"]], dtype=object),
        "digit": np.array([3, 7], np.int64),
        "cold_start": np.array([True, False]),
    }
    names = ["decision", "fraud_probability", "reason_codes", "digit", "cold_start"]
    response = grpc_v2.infer_response("fraud", "2", "tx-1", outputs, names)
    assert (response.model_name, response.model_version, response.id) == ("fraud", "2", "tx-1")
    assert [o.name for o in response.outputs] == names
    result = triton.InferResult(response)
    for name in names:
        got = result.as_numpy(name)
        want = outputs[name]
        if want.dtype == object:
            got = np.vectorize(bytes.decode, otypes=[object])(got)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


@pytest.mark.parametrize(("build", "message"), [
    (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[2]).contents
     .int_contents.extend([1, 2]), "send its values in its fp32_contents"),
    (lambda m: m.inputs.add(name="x", datatype="FP16", shape=[1]).contents
     .fp32_contents.append(1.0), "raw_input_contents"),
    (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[3]).contents
     .fp32_contents.extend([1.0, 2.0]), r"declares shape \[3\] \(3 elements\) but carries 2"),
    (lambda m: m.inputs.add(name="x", datatype="FP32", shape=[1]).contents
     .fp32_contents.append(float("nan")), "NaN or infinity"),
    (lambda m: m.inputs.add(name="x", datatype="BYTES", shape=[1]).contents
     .bytes_contents.append(b"\xff"), "not valid UTF-8"),
    (lambda m: m.inputs.add(name="x", datatype="FP33", shape=[1]), "unknown datatype"),
    (lambda m: None, "no inputs"),
])
def test_malformed_typed_tensors_are_invalid_input(build, message):
    request = pb.ModelInferRequest(model_name="fraud")
    build(request)
    with pytest.raises(InvalidInput, match=message):
        inference, _ = grpc_v2.infer_request(request)
        for tensor in inference.inputs:
            tensor.as_numpy()


@pytest.mark.parametrize(("raw", "message"), [
    ([struct.pack("<2f", 1.0, float("inf"))], "NaN or infinity"),
    ([b"\0" * 7], "8 bytes, but carries 7"),
    ([b"\0" * 8, b"\0"], "holds 2 tensors for 1 inputs"),
])
def test_malformed_raw_tensors_are_invalid_input(raw, message):
    request = pb.ModelInferRequest(model_name="fraud", raw_input_contents=raw)
    request.inputs.add(name="x", datatype="FP32", shape=[2])
    with pytest.raises(InvalidInput, match=message):
        grpc_v2.infer_request(request)


def test_raw_and_typed_contents_do_not_mix():
    request = pb.ModelInferRequest(model_name="fraud", raw_input_contents=[b"\0" * 4])
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="send one or the other"):
        grpc_v2.infer_request(request)


def test_parameters_come_as_plain_values():
    request = _client_request(("prices", np.zeros((1, 30), np.float32), "FP32"),
                              parameters={"horizon": 5, "band": 0.8, "why": True, "who": "a"})
    inference, _ = grpc_v2.infer_request(request)
    assert inference.parameters == {"horizon": 5, "band": 0.8, "why": True, "who": "a"}
    assert get_task("forecast").request_params({"horizon": 5})["horizon"] == 5


def _error_classes() -> list[type[FinServeError]]:
    found, todo = [], [FinServeError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_every_error_status_has_a_grpc_code_and_each_is_grpcs_own():
    assert {errors.InvalidInput, security.Unauthenticated, security.Forbidden,
            security.RateLimited} <= set(_error_classes())
    for cls in _error_classes():
        if cls.status_code != 500:
            assert cls.status_code in grpc_v2.STATUS_CODES, cls
    assert set(grpc_v2.STATUS_CODES.values()) <= set(grpc.StatusCode.__members__)
    assert {status: grpc_v2.status_code(status) for status in (
        200, 400, 401, 403, 404, 408, 413, 422, 429, 500, 503, 504)} == {
        200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
        404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED",
        422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
        503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def test_the_servicer_function_registers_the_service_tritonclient_calls():
    from unittest import mock

    from ray.serve._private.utils import import_attr

    add = import_attr(grpc_v2.SERVICER_FUNCTION)
    server = mock.Mock()
    add(mock.Mock(), server)
    (handlers,), _ = server.add_generic_rpc_handlers.call_args
    assert handlers[0].service_name() == "inference.GRPCInferenceService"
    assert {"ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata",
            "ModelInfer"} <= {m.name for m in grpc_v2.SERVICE.methods}


def test_messages_pickle_as_rays_python_proxy_hands_them_to_the_replica():
    """tritonclient's messages name their module 'grpc_service_pb2'; importing grpc_v2
    (the servicer function's module) makes that name resolve, in the proxy and replica."""
    import pickle

    message = _client_request(("features", np.ones((2, 9), np.float32), "FP32"))
    assert pickle.loads(pickle.dumps(message)) == message
