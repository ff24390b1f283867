"""Protocol decode and encode around a task: wire request → raw batch → wire response.

Knows the protocols and tasks, not HTTP and not Ray (the gateway is the thin part).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel

from serving.errors import BadRequest, InvalidInput, RequestTimeout
from serving.protocol import binary
from serving.protocol.codec import check_count, check_header, rows_to_array
from serving.protocol.v1 import PredictRequest, PredictResponse, instances_to_columns
from serving.protocol.v2 import InferenceRequest, InferenceResponse, ResponseOutput
from serving.tasks import Task

Outputs = dict[str, np.ndarray]


def decode_v2(request: InferenceRequest, task: Task,
              binary_inputs: dict[int, np.ndarray] | None = None,
              max_instances: int | None = None) -> np.ndarray:
    """The task's raw batch from a V2 request (one input, named as in the metadata);
    ``binary_inputs`` holds the inputs that came as binary tensor data, by position. The
    declared shape is checked and its batch counted before any data is converted."""
    spec = task.input_spec
    matching = [n for n, i in enumerate(request.inputs) if i.name == spec.name]
    if not matching:
        names = ", ".join(i.name for i in request.inputs)
        raise InvalidInput(f"expected an input named '{spec.name}' ({spec.datatype}), got: {names}")
    tensor = request.inputs[matching[0]]
    if tensor.datatype.upper() != spec.datatype:
        raise InvalidInput(
            f"input '{spec.name}' must be {spec.datatype}, got {tensor.datatype}"
        )
    if max_instances is not None:
        check_header(tensor.name, tensor.datatype, tensor.shape)  # 422 for an absurd shape
        check_count(tensor.shape[0] if tensor.shape else 1, max_instances)
    array = (binary_inputs or {}).get(matching[0])
    return task.check_raw(tensor.as_numpy() if array is None else array)


def v2_parameters(request: InferenceRequest) -> dict[str, Any] | None:
    """The request's parameters for the model: without the binary extension's own."""
    if not request.parameters:
        return request.parameters
    return {k: v for k, v in request.parameters.items() if k not in binary.PARAMETERS}


def requested_outputs(task: Task, request: InferenceRequest) -> list[str]:
    """The outputs a V2 request asks for (all when it names none); an unknown one is a 422
    before the model runs, so a refused request leaves no decision record."""
    names = [spec.name for spec in task.output_specs]
    asked = [o.name for o in request.outputs or []]
    unknown = sorted(set(asked) - set(names))
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has {names}")
    return asked or names


def encode_v2(
    task: Task, model: str, version: str, outputs: Outputs, request: InferenceRequest
) -> tuple[InferenceResponse, dict[str, np.ndarray]]:
    """The V2 answer, and the outputs the client asked to get as binary tensor data (left
    without ``data`` in the answer; ``serving.protocol.binary`` writes them)."""
    names = requested_outputs(task, request)
    asked = {o.name: o.parameters for o in request.outputs or []}
    raw = {n: outputs[n] for n in names if binary.wants_binary(request.parameters, asked.get(n))}
    return InferenceResponse(
        model_name=model,
        model_version=version,
        id=request.id,
        outputs=[ResponseOutput.from_array(n, outputs[n], with_data=n not in raw)
                 for n in names],
    ), raw


def decode_v1(request: PredictRequest, task: Task,
              max_instances: int | None = None) -> np.ndarray:
    """The task's raw batch from a TF-Serving request (rows or columns), counted before
    it is converted."""
    rows = instances_to_columns(request, task.input_spec.name)
    if max_instances is not None:
        check_count(len(rows), max_instances)
    return task.check_raw(rows_to_array(rows, task.input_spec))


def rows(outputs: Outputs,
         values_of: Callable[[np.ndarray], list[Any]] | None = None) -> list[dict[str, Any]]:
    """Columnar outputs → one JSON-ready dict per example (each column by ``values_of``,
    ``jsonable`` unless given)."""
    convert = values_of or jsonable
    columns = {name: convert(values) for name, values in outputs.items()}
    count = len(next(iter(columns.values())))
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]


def encode_v1(version: str, outputs: Outputs) -> PredictResponse:
    return PredictResponse(predictions=rows(outputs), model_version=version)


def decode_records(records: list[BaseModel], task: Task,
                   deadline: float = math.inf) -> np.ndarray:
    """The task's raw batch from task route records (``deadline``: ``time.monotonic()``
    past which a task with slow records gives up with ``RequestTimeout``)."""
    if not records:
        raise InvalidInput("no records to score")
    return task.check_raw(task.records_to_raw_within(records, deadline))


async def decode_records_within(records: list[BaseModel], task: Task,
                                timeout_s: float) -> np.ndarray:
    """``decode_records`` for the gateway: records that take real work (``slow_records``:
    PNGs) are decoded off the event loop, within ``timeout_s`` (``RequestTimeout``, 504)."""
    if not task.slow_records:
        return decode_records(records, task)
    deadline = time.monotonic() + timeout_s
    work = asyncio.to_thread(decode_records, records, task, deadline)
    try:
        return await asyncio.wait_for(work, timeout_s)
    except (TimeoutError, RequestTimeout):  # whichever sees the deadline first: one answer
        raise RequestTimeout(
            f"the request's records were not decoded within {timeout_s:g}s") from None


def jsonable(values: np.ndarray) -> list[Any]:
    """JSON-ready rows; rows of strings drop the '' that pads ragged lists to a tensor."""
    if values.dtype == object:  # lists first: indexing an object array per row is slower
        if values.ndim == 2:
            return [[str(v) for v in row if v != ""] for row in values.tolist()]
        return [str(v) for v in values.tolist()]
    return values.tolist()


def parse_version(version: str | None) -> str | None:
    if version is not None and not version.isdigit():
        raise BadRequest(f"version must be a number, got '{version}'")
    return version
