"""Conversions between wire tensors (datatype, shape, flat or nested data) and numpy.

Checks happen here, at the boundary: datatype names, the declared shape (bounded, and
matched by nested data row by row), element counts, finiteness of floats, and each task's
expected tensor shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np

from serving.errors import BadRequest, InvalidInput, PayloadTooLarge

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
#: the most elements a wire tensor may declare (a 0 dimension counted as 1); far more than
#: any request body carries, so counts and shapes stay within int64 and numpy's limits
MAX_ELEMENTS = 1 << 31
#: what an output means, declared by its task: ``decision`` (the answer metrics count by
#: outcome and a shadow version is compared on), ``score`` (a probability or confidence),
#: ``label`` (a class that is not the decision), ``reason`` (reason codes or statements),
#: ``estimate`` and ``bound`` (a forecast and its interval), ``detail`` (anything else)
OutputRole = Literal["decision", "score", "label", "reason", "estimate", "bound", "detail"]
_NUMPY_TO_V2 = {np.dtype(v).kind + str(np.dtype(v).itemsize): k for k, v in V2_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor a task takes or returns; ``shape`` uses -1 for the batch axis, and
    an output declares its ``role``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    description: str = ""
    role: OutputRole | None = None

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


def check_count(count: int, max_instances: int) -> None:
    """413 for a batch over the limit; every route counts before it decodes anything."""
    if count > max_instances:
        raise PayloadTooLarge(f"{count} instances in one request; the limit is {max_instances}")


def v2_datatype(array: np.ndarray) -> str:
    """The V2 datatype name for a numpy array."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    try:
        return _NUMPY_TO_V2[array.dtype.kind + str(array.dtype.itemsize)]
    except KeyError as exc:
        raise TypeError(f"no V2 datatype for numpy dtype {array.dtype}") from exc


def _flatten(name: str, shape: list[int], data: Any) -> list[Any]:
    """The elements of V2 data in row-major order: flat data as it is, nested data only when
    every level has the length the declared shape gives it (ragged rows are an error, not
    re-aligned)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data  # flat; a list among the elements fails the element type check
    if len(shape) < 2:
        raise InvalidInput(f"input '{name}' has nested data but its shape {shape} has one "
                           "dimension: send it flat")
    if len(data) != shape[0]:
        raise InvalidInput(f"input '{name}' has {len(data)} rows of nested data but its "
                           f"shape {shape} says {shape[0]}")
    level, depth = data, 0
    while level and isinstance(level[0], list):
        depth += 1
        if depth >= len(shape):
            raise InvalidInput(f"input '{name}' nests its data deeper than its shape {shape}")
        want = shape[depth]
        if set(map(type, level)) != {list} or set(map(len, level)) != {want}:
            _raise_ragged(name, shape[:depth], level, want)
        level = list(chain.from_iterable(level))
    if depth != len(shape) - 1:
        raise InvalidInput(f"input '{name}' nests its data {depth + 1} levels deep but its "
                           f"shape {shape} has {len(shape)}: send it flat or fully nested")
    return level


def _raise_ragged(name: str, outer: list[int], level: list[Any], want: int) -> None:
    """Name the first row of ``level`` (the lists at one depth) that is not ``want`` long."""
    index = next(i for i, row in enumerate(level) if not isinstance(row, list) or len(row) != want)
    row = level[index]
    where = "row " + (str(index) if len(outer) == 1 else
                      "".join(f"[{int(i)}]" for i in np.unravel_index(index, outer)))
    got = (f"has {len(row)} values, expected {want}" if isinstance(row, list)
           else f"is not a list of {want} values")
    raise InvalidInput(f"input '{name}': {where} {got}")


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
    # Python ints (np.prod wraps around past int64); a 0 counted as 1, as numpy bounds it
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:
        raise InvalidInput(f"input '{name}' declares shape {shape}: a tensor has at most "
                           f"{MAX_ELEMENTS} elements, not counting a 0 dimension")
    return dtype, math.prod(shape)


def to_numpy(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """Decode one wire tensor to numpy, checking datatype, element count and finiteness."""
    dtype, expected = check_header(name, datatype, shape)
    flat = _flatten(name, shape, data)
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
