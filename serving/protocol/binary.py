"""The binary tensor data extension of the Open Inference Protocol over HTTP (KServe V2,
Triton): a body of a JSON header of ``Inference-Header-Content-Length`` bytes followed by
the raw bytes of the tensors whose ``parameters.binary_data_size`` says how many bytes they
take, in the order they are listed. Numbers are little-endian and row-major; a BYTES
element is a 4-byte little-endian length and then its UTF-8 bytes.

A client asks for binary outputs with ``parameters.binary_data_output: true`` on the
request or ``parameters.binary_data: true`` on one output; the answer then has the same
layout, with the same header.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pydantic_core

from serving.errors import BadRequest, InvalidInput
from serving.protocol.codec import check_header, v2_datatype

#: the HTTP header that gives the JSON header's length in bytes
HEADER = "inference-header-content-length"
SIZE = "binary_data_size"
CONTENT_TYPE = "application/octet-stream"
#: request parameters that belong to this extension, not to the model
PARAMETERS = frozenset({"binary_data_output"})
_LENGTH = struct.Struct("<I")


def split(body: bytes, header_length: str) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """The JSON header of a binary request, with ``data: []`` standing in for each binary
    input, and the decoded binary inputs by their position in ``inputs``."""
    count = header_length.isascii() and header_length.isdigit() and len(header_length) < 16
    if not count or not 0 < int(header_length) <= len(body):
        raise BadRequest(f"{HEADER} must be a byte count within the body's {len(body)} "
                         f"bytes, got '{header_length[:32]}'")
    length = int(header_length)
    try:
        header = pydantic_core.from_json(body[:length])  # strict: no lone surrogates
    except ValueError:
        raise BadRequest(f"the first {length} bytes of the body are not a JSON header") from None
    inputs = header.get("inputs") if isinstance(header, dict) else None
    if not isinstance(inputs, list):
        raise BadRequest("the JSON header must be an object with a list of 'inputs'")
    arrays: dict[int, np.ndarray] = {}
    offset = length
    for index, tensor in enumerate(inputs):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or SIZE not in parameters:
            continue  # this one carries JSON data
        size = parameters[SIZE]
        name = tensor.get("name")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input '{name}': {SIZE} must be a byte count, got {size!r}")
        if "data" in tensor:
            raise BadRequest(f"input '{name}' has both {SIZE} and JSON data")
        chunk = body[offset:offset + size]
        if len(chunk) < size:
            raise BadRequest(f"input '{name}' declares {size} bytes but the body ends "
                             f"{len(chunk)} bytes after its start")
        offset += size
        arrays[index] = decode(str(name), tensor.get("datatype"), tensor.get("shape"), chunk)
        tensor["data"] = []
    if offset != len(body):
        raise BadRequest(f"{len(body) - offset} bytes follow the last binary input")
    return header, arrays


def decode(name: str, datatype: Any, shape: Any, chunk: bytes) -> np.ndarray:
    """One binary tensor as numpy, with the checks JSON tensors get (count, finiteness)."""
    dtype, count = check_header(name, datatype, shape)
    if dtype is np.object_:
        values = _unpack_bytes(name, chunk)
        if len(values) != count:
            raise InvalidInput(f"input '{name}' declares shape {shape} ({count} elements) "
                               f"but carries {len(values)}")
        return np.array(values, dtype=object).reshape(shape)
    dt = np.dtype(dtype).newbyteorder("<")
    if len(chunk) != count * dt.itemsize:
        raise InvalidInput(f"input '{name}' declares shape {shape} of {datatype}, "
                           f"{count * dt.itemsize} bytes, but carries {len(chunk)}")
    array = np.frombuffer(chunk, dtype=dt).astype(dtype)  # native order, writable
    if dt.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"input '{name}' contains NaN or infinity")
    if dt.kind == "b" and not np.isin(np.frombuffer(chunk, np.uint8), (0, 1)).all():
        raise InvalidInput(f"input '{name}' is BOOL: every byte must be 0 or 1")
    return array.reshape(shape)


def _unpack_bytes(name: str, chunk: bytes) -> list[str]:
    values, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InvalidInput(f"input '{name}': a BYTES element's length is cut short")
        (size,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + size > len(chunk):
            raise InvalidInput(f"input '{name}': a BYTES element runs past its tensor")
        try:
            values.append(chunk[offset:offset + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{name}' holds text that is not valid UTF-8") from None
        offset += size
    return values


def encode(array: np.ndarray) -> bytes:
    """A tensor's raw bytes on the wire."""
    if v2_datatype(array) == "BYTES":
        parts = []
        for value in array.reshape(-1):
            data = str(value).encode("utf-8")
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def wants_binary(parameters: dict[str, Any] | None, output: dict[str, Any] | None) -> bool:
    """Whether an output goes out as binary: asked on the output, else on the request."""
    if output and "binary_data" in output:
        return bool(output["binary_data"])
    return bool((parameters or {}).get("binary_data_output"))


def response(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """A binary answer: ``header`` (outputs listed in order, those in ``arrays`` without
    ``data``) then those outputs' bytes; and the header's length for the HTTP header."""
    chunks = []
    for output in header["outputs"]:
        array = arrays.get(output["name"])
        if array is None:
            continue
        chunk = encode(array)
        output.pop("data", None)
        output["parameters"] = {**(output.get("parameters") or {}), SIZE: len(chunk)}
        chunks.append(chunk)
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(chunks), len(head)

