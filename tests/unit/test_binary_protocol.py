"""The V2 binary tensor data extension: bodies as Triton's own client builds them decode to
the same arrays, answers decode back, and every malformed body is a 400 or 422."""

import json

import numpy as np
import pytest
import tritonclient.http as triton

from serving import dataplane
from serving.errors import BadRequest, InvalidInput
from serving.protocol import binary
from serving.protocol.v2 import InferenceRequest
from serving.tasks import get_task
from tests.conftest import golden


def _triton_body(*inputs: triton.InferInput, outputs=None) -> tuple[bytes, str]:
    body, length = triton.InferenceServerClient.generate_request_body(
        list(inputs), outputs=outputs)
    return body, str(length)


def _input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def test_a_triton_client_body_decodes_to_the_same_arrays():
    features = np.random.default_rng(0).normal(size=(64, 30)).astype(np.float32)
    text = np.array(["Shares surge", "Bank fined €3m", ""], dtype=object)
    body, length = _triton_body(_input("features", features, "FP32"),
                                _input("text", text, "BYTES"))
    header, arrays = binary.split(body, length)
    assert [i["name"] for i in header["inputs"]] == ["features", "text"]
    assert all(i["data"] == [] for i in header["inputs"])
    np.testing.assert_array_equal(arrays[0], features)
    assert arrays[0].dtype == np.float32 and arrays[0].flags.writeable
    assert arrays[1].tolist() == ["Shares surge", "Bank fined €3m", ""]


def test_json_and_binary_inputs_mix_and_the_task_decodes_the_binary_one():
    task = get_task("fraud")
    request = golden("fraud_v2_request.json")
    tensor = request["inputs"][0]
    features = np.asarray(tensor["data"], np.float32).reshape(tensor["shape"])
    extra = triton.InferInput("note", [1], "BYTES")
    extra.set_data_from_numpy(np.array(["json"], dtype=object), binary_data=False)
    body, length = _triton_body(extra, _input("features", features, "FP32"))
    header, arrays = binary.split(body, length)
    assert list(arrays) == [1] and header["inputs"][0]["data"] == ["json"]
    raw = dataplane.decode_v2(InferenceRequest.model_validate(header), task, arrays)
    np.testing.assert_array_equal(raw, dataplane.decode_v2(
        InferenceRequest.model_validate(request), task))


def test_binary_outputs_are_left_out_of_the_json_and_decode_back():
    task = get_task("fraud")
    outputs = {"fraud_probability": np.array([0.1, 0.9], np.float32),
               "decision": np.array(["approve", "block"], dtype=object),
               "reason_codes": np.array([["", "", ""], ["F03", "F07", ""]], dtype=object),
               "reasons": np.array([["", "", ""], ["a", "b", ""]], dtype=object)}
    request = InferenceRequest.model_validate({
        **golden("fraud_v2_request.json"), "parameters": {"binary_data_output": True},
        "outputs": [{"name": "fraud_probability"},
                    {"name": "decision", "parameters": {"binary_data": False}},
                    {"name": "reason_codes"}]})
    answer, raw = dataplane.encode_v2(task, "fraud", "3", outputs, request)
    assert sorted(raw) == ["fraud_probability", "reason_codes"]
    assert dataplane.v2_parameters(request) == {}  # the extension's, not the model's
    content, length = binary.response(answer.model_dump(exclude_none=True), raw)
    header = json.loads(content[:length])
    by_name = {o["name"]: o for o in header["outputs"]}
    assert "data" not in by_name["fraud_probability"]
    assert by_name["decision"]["data"] == ["approve", "block"]
    assert by_name["fraud_probability"]["parameters"] == {"binary_data_size": 8}
    rest = content[length:]
    probability = binary.decode("p", "FP32", [2], rest[:8])
    np.testing.assert_array_equal(probability, outputs["fraud_probability"])
    codes = binary.decode("c", "BYTES", [2, 3], rest[8:])
    assert codes.tolist() == outputs["reason_codes"].tolist()


def _body(header: dict, tail: bytes = b"") -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + tail, str(len(head))


def _fp32(n: int, size: int | None = None, **extra) -> dict:
    return {"inputs": [{"name": "x", "shape": [n], "datatype": "FP32",
                        "parameters": {"binary_data_size": 4 * n if size is None else size},
                        **extra}]}


@pytest.mark.parametrize("body, length, error, words", [
    (b'{"inputs": []}', "abc", BadRequest, "byte count"),
    (b'{"inputs": []}', "99", BadRequest, "byte count"),
    (b'{"inputs": []}', "0", BadRequest, "byte count"),
    (b'{"inputs": []}', "9" * 5000, BadRequest, "byte count"),
    (b'{"inputs": []}', "\u00b2", BadRequest, "byte count"),
    (b'\xff\xfe{"inputs"}', "11", BadRequest, "not a JSON header"),
    (b'[1, 2]', "6", BadRequest, "list of 'inputs'"),
    (*_body(_fp32(2), b"\0" * 8 + b"extra"), BadRequest, "follow the last"),
    (*_body(_fp32(2), b"\0" * 5), BadRequest, "body ends"),
    (*_body(_fp32(2, size=-1)), BadRequest, "byte count"),
    (*_body(_fp32(2, size=True), b"\0"), BadRequest, "byte count"),
    (*_body(_fp32(2, data=[1, 2]), b"\0" * 8), BadRequest, "both"),
    (*_body(_fp32(2, size=4), b"\0" * 4), InvalidInput, "8 bytes"),
    (*_body(_fp32(1), np.array([np.nan], "<f4").tobytes()), InvalidInput, "NaN"),
    (*_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP128",
                         "parameters": {"binary_data_size": 4}}]}, b"\0" * 4),
     InvalidInput, "unknown datatype"),
    (*_body({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32",
                         "parameters": {"binary_data_size": 4}}]}, b"\0" * 4),
     InvalidInput, "invalid shape"),
    (*_body({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL",
                         "parameters": {"binary_data_size": 1}}]}, b"\x07"),
     InvalidInput, "0 or 1"),
    (*_body({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 6}}]}, b"\x05\0\0\0ab"),
     InvalidInput, "runs past"),
    (*_body({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 2}}]}, b"\x05\0"),
     InvalidInput, "cut short"),
    (*_body({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 6}}]}, b"\x02\0\0\0\xff\xfe"),
     InvalidInput, "UTF-8"),
    (*_body({"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 5}}]}, b"\x01\0\0\0a"),
     InvalidInput, "2 elements"),
    # np.prod wrapped these around to 0 elements, which an empty tensor then matched
    (*_body({"inputs": [{"name": "x", "shape": [4294967296, 4294967296, 9], "datatype": "FP32",
                         "parameters": {"binary_data_size": 0}}]}), InvalidInput, "at most"),
    (*_body({"inputs": [{"name": "t", "shape": [2**32, 2**32], "datatype": "BYTES",
                         "parameters": {"binary_data_size": 0}}]}), InvalidInput, "at most"),
])
def test_malformed_binary_bodies_are_client_errors(body, length, error, words):
    with pytest.raises(error, match=words) as info:
        binary.split(body, length)
    assert info.value.status_code in (400, 422)


def test_lone_surrogates_are_not_json_in_the_header_or_the_body():
    from deployments.http import error_response, strict_json

    with pytest.raises(json.JSONDecodeError):
        strict_json(b'{"id": "a\\udfffb"}')
    assert strict_json(b'{"a": NaN, "b": "\\u00e9"}')["b"] == "é"  # NaN: a 422 later
    with pytest.raises(BadRequest, match="not a JSON header"):
        binary.split(*_body({"inputs": [], "id": "\ud800"}))
    assert b"\\udfff" in error_response(422, "got: a\udfffb").body  # escaped, not a 500
