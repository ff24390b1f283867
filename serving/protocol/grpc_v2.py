"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, KServe V2 and
Triton): its protobuf messages to and from the V2 models and numpy, and the gRPC status of
each HTTP status.

The messages are the ones ``tritonclient`` generates from Triton's
``grpc_service.proto``, a superset of KServe's ``grpc_predict_v2.proto`` with the same
package, service, message names and field numbers: a server built on them answers KServe's
and Triton's clients alike. (A second copy of the same messages generated here would clash
with tritonclient's in protobuf's one descriptor pool of a process that loads both.)

Inputs come as typed ``contents`` (``fp32_contents``, ``bytes_contents``, ...) or as
``raw_input_contents``, one little-endian buffer per input (what tritonclient sends);
outputs go out as ``raw_output_contents`` (what tritonclient reads), a BYTES element being
a 4-byte little-endian length and its UTF-8 bytes, as in the HTTP binary extension
(``serving.protocol.binary``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from serving.errors import InvalidInput
from serving.protocol import binary
from serving.protocol.codec import v2_datatype
from serving.protocol.v2 import InferenceRequest, ModelMetadata, RequestInput, RequestOutput

#: the gRPC service and the import path of the function that registers it on a server
#: (Ray Serve's ``grpc_options.grpc_servicer_functions``)
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICER_FUNCTION = "serving.protocol.grpc_v2.add_servicer"

# tritonclient's generated messages give 'grpc_service_pb2' (the .proto's stem) as their
# module, which nothing can import, and pickle finds a class by its module: Ray Serve's
# Python proxy pickles each request message for the replica. That name is ``pb``.
sys.modules.setdefault(pb.ModelInferRequest.__module__, pb)


def add_servicer(servicer: Any, server: Any) -> None:
    """Register ``inference.GRPCInferenceService`` on a gRPC server: the servicer function
    Ray Serve's proxies and replicas call (importing this module first, so the messages
    pickle)."""
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)

#: the gRPC status code (by name) of each HTTP status an error carries. 413 (a message or
#: batch over the limit) is RESOURCE_EXHAUSTED, as gRPC itself answers a message over its
#: size limit; 429 too, so the message says which. Unlisted statuses are INTERNAL.
STATUS_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ALREADY_EXISTS",
    413: "RESOURCE_EXHAUSTED",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def status_code(http_status: int) -> str:
    """The gRPC status code name for an HTTP status (``OK`` for 2xx)."""
    if 200 <= http_status < 300:
        return "OK"
    return STATUS_CODES.get(http_status, "INTERNAL")


#: the typed contents field of each datatype (FP16 and BF16 travel only as raw bytes)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def parameters(params: Any) -> dict[str, Any] | None:
    """A ``map<string, InferParameter>`` as plain values (None when empty)."""
    values = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()
              if v.WhichOneof("parameter_choice")}
    return values or None


def _typed_data(tensor: Any) -> list[Any]:
    """The elements of an input sent as typed ``contents``, as JSON-like values."""
    filled = [f.name for f, _ in tensor.contents.ListFields()]
    if not filled:
        return []
    expected = CONTENTS_FIELD.get(tensor.datatype.upper())
    if filled != [expected]:
        where = f"its {expected}" if expected else "raw_input_contents"
        raise InvalidInput(f"input '{tensor.name}' is {tensor.datatype}: send its values in "
                           f"{where}, got {', '.join(filled)}")
    values = list(getattr(tensor.contents, expected))
    if expected != "bytes_contents":
        return values
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{tensor.name}' holds text that is not valid UTF-8") from None


def infer_request(message: Any) -> tuple[InferenceRequest, dict[int, np.ndarray]]:
    """A ``ModelInferRequest`` as the V2 request the HTTP route decodes, and the inputs
    that came as raw bytes, decoded, by position (as the binary extension gives them)."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} tensors for "
                           f"{len(message.inputs)} inputs: send one per input, in order")
    arrays: dict[int, np.ndarray] = {}
    inputs = []
    for index, tensor in enumerate(message.inputs):
        shape = list(tensor.shape)
        if raw:
            if tensor.contents.ListFields():
                raise InvalidInput(f"input '{tensor.name}' has contents but the request "
                                   "sends raw_input_contents: send one or the other")
            arrays[index] = binary.decode(tensor.name, tensor.datatype, shape, raw[index])
        data = [] if raw else _typed_data(tensor)
        inputs.append(RequestInput(name=tensor.name, shape=shape, datatype=tensor.datatype,
                                   parameters=parameters(tensor.parameters), data=data))
    if not inputs:
        raise InvalidInput("the request has no inputs")
    try:
        request = InferenceRequest(
            id=message.id or None, parameters=parameters(message.parameters), inputs=inputs,
            outputs=[RequestOutput(name=o.name, parameters=parameters(o.parameters))
                     for o in message.outputs] or None)
    except ValidationError as exc:  # typed protobuf fields: a defensive check only
        raise InvalidInput(str(exc.errors()[0]["msg"])) from None
    return request, arrays


def infer_response(model: str, version: str, request_id: str | None,
                   outputs: dict[str, np.ndarray], names: list[str]) -> Any:
    """A ``ModelInferResponse`` with the outputs ``names`` as ``raw_output_contents``."""
    response = pb.ModelInferResponse(model_name=model, model_version=version,
                                     id=request_id or "")
    for name in names:
        array = outputs[name]
        response.outputs.add(name=name, datatype=v2_datatype(array), shape=array.shape)
        response.raw_output_contents.append(binary.encode(array))
    return response


def model_metadata(metadata: ModelMetadata) -> Any:
    """A ``ModelMetadataResponse`` (the protocol's message has no ``parameters``: the
    inputs' column domains are in the HTTP metadata only)."""
    def tensors(items: list[Any]) -> list[Any]:
        return [pb.ModelMetadataResponse.TensorMetadata(
            name=t.name, datatype=t.datatype, shape=t.shape) for t in items]

    return pb.ModelMetadataResponse(
        name=metadata.name, versions=metadata.versions, platform=metadata.platform,
        inputs=tensors(metadata.inputs), outputs=tensors(metadata.outputs))
