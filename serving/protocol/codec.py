"""Conversions between wire tensors (datatype, shape, flat or nested data) and numpy.

Checks happen here, at the boundary: datatype names, element counts against the
declared shape, finiteness of floats, and each task's expected tensor shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import BadRequest, InvalidInput

#: Open Inference Protocol datatypes and their numpy dtypes.
V2_DTYPES: dict[str, np.dtype | type] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_OK = object()
_JSON_NUMBERS = {int, float, bool}
#: the most dimensions a wire tensor may declare (numpy's own limit is 64)
MAX_RANK = 8
_NUMPY_TO_V2 = {np.dtype(v).kind + str(np.dtype(v).itemsize): k for k, v in V2_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor a task takes or returns; ``shape`` uses -1 for the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    description: str = ""

    def check(self, array: np.ndarray) -> np.ndarray:
        """Return ``array`` reshaped to this spec, or raise ``InvalidInput`` saying why."""
        want = self.shape
        if array.ndim == len(want) + 1 and array.shape[-1] == 1 and want[-1] != 1:
            array = array.reshape(array.shape[:-1])  # accept [N, 1] for [N]
        if array.ndim == len(want) - 1 and len(want) == 1:
            array = array.reshape(-1)
        if array.ndim != len(want) or any(
            w != -1 and w != got for w, got in zip(want, array.shape, strict=True)
        ):
            raise InvalidInput(
                f"input '{self.name}' must have shape {list(want)} (-1 = any batch size), "
                f"got {list(array.shape)}"
            )
        if array.shape[0] == 0:
            raise InvalidInput(f"input '{self.name}' is an empty batch")
        return array


def v2_datatype(array: np.ndarray) -> str:
    """The V2 datatype name for a numpy array."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        return _NUMPY_TO_V2[array.dtype.kind + str(array.dtype.itemsize)]
    except KeyError as exc:
        raise TypeError(f"no V2 datatype for numpy dtype {array.dtype}") from exc


def _flatten(data: Any) -> list[Any]:
    """Flatten nested lists (V2 allows either flat or row-major nested data)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def check_header(name: str, datatype: Any, shape: Any) -> tuple[Any, int]:
    """A wire tensor's numpy dtype and element count, after checking its datatype name and
    shape (JSON and binary tensors alike)."""
    dtype = V2_DTYPES.get(datatype.upper()) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(
            f"input '{name}' has unknown datatype '{datatype}'; use one of {', '.join(V2_DTYPES)}"
        )
    if not isinstance(shape, list) or any(
            not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        raise InvalidInput(f"input '{name}' has an invalid shape {shape}")
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"input '{name}' has {len(shape)} dimensions; at most {MAX_RANK}")
    return dtype, int(np.prod(shape)) if shape else 1


def to_numpy(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """Decode one wire tensor to numpy, checking datatype, element count and finiteness."""
    dtype, expected = check_header(name, datatype, shape)
    flat = _flatten(data)
    if len(flat) != expected:
        raise InvalidInput(
            f"input '{name}' declares shape {shape} ({expected} elements) "
            f"but carries {len(flat)}"
        )
    if dtype is np.object_:
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInput(f"input '{name}' is BYTES: every element must be a string")
        try:
            for v in flat:
                v.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"input '{name}' holds text that is not valid UTF-8") from None
        array = np.array(flat, dtype=object)
    else:
        # JSON numbers come as exact ints, floats (and bools); one pass over their types
        # is ten times cheaper than isinstance per element, which runs only to name a bad one
        if not set(map(type, flat)) <= _JSON_NUMBERS:
            bad = next((v for v in flat if not isinstance(v, int | float)), _OK)
            if bad is not _OK:
                raise InvalidInput(
                    f"input '{name}' is {datatype}: every element must be a number, got {bad!r}"
                )
        try:
            array = np.asarray(flat, dtype=np.float64)
        except (OverflowError, ValueError):
            raise InvalidInput(f"input '{name}' holds a number too large for {datatype}") from None
        if not np.isfinite(array).all():
            raise InvalidInput(f"input '{name}' contains NaN or infinity")
        kind = np.dtype(dtype).kind
        if kind in "iu":
            info = np.iinfo(dtype)
            if (array != np.round(array)).any() or (array < info.min).any() or (
                array > info.max
            ).any():
                raise InvalidInput(f"input '{name}' must hold whole numbers within {datatype}")
        array = array.astype(dtype)
    return array.reshape(shape)


def from_numpy(array: np.ndarray) -> tuple[str, list[int], list[Any]]:
    """Encode a numpy array as (datatype, shape, flat data) for the wire."""
    datatype = v2_datatype(array)
    flat = array.reshape(-1)
    data = [str(v) for v in flat.tolist()] if datatype == "BYTES" else flat.tolist()
    return datatype, list(array.shape), data


def rows_to_array(rows: list[Any], spec: TensorSpec) -> np.ndarray:
    """Turn a list of instances (numbers, strings or nested lists) into a checked array."""
    if not isinstance(rows, list):
        raise BadRequest("instances must be a JSON list")
    if not rows:
        raise InvalidInput(f"input '{spec.name}' is an empty batch")
    shape = [len(rows)]
    probe = rows[0]
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    return spec.check(to_numpy(spec.name, spec.datatype, shape, rows))
