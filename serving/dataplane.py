"""Protocol decode and encode around a task: wire request → raw batch → wire response.

Knows the protocols and tasks, not HTTP and not Ray (the gateway is the thin part).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel

from serving.errors import BadRequest, InvalidInput, PayloadTooLarge
from serving.protocol import binary
from serving.protocol.codec import rows_to_array
from serving.protocol.v1 import PredictRequest, PredictResponse, instances_to_columns
from serving.protocol.v2 import InferenceRequest, InferenceResponse, ResponseOutput
from serving.tasks import Task

Outputs = dict[str, np.ndarray]


def check_size(raw: np.ndarray, max_instances: int) -> np.ndarray:
    if len(raw) > max_instances:
        raise PayloadTooLarge(
            f"{len(raw)} instances in one request; the limit is {max_instances}"
        )
    return raw


def decode_v2(request: InferenceRequest, task: Task,
              binary_inputs: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The task's raw batch from a V2 request (one input, named as in the metadata);
    ``binary_inputs`` holds the inputs that came as binary tensor data, by position."""
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
    array = (binary_inputs or {}).get(matching[0])
    return task.check_raw(tensor.as_numpy() if array is None else array)


def v2_parameters(request: InferenceRequest) -> dict[str, Any] | None:
    """The request's parameters for the model: without the binary extension's own."""
    if not request.parameters:
        return request.parameters
    return {k: v for k, v in request.parameters.items() if k not in binary.PARAMETERS}


def encode_v2(
    task: Task, model: str, version: str, outputs: Outputs, request: InferenceRequest
) -> tuple[InferenceResponse, dict[str, np.ndarray]]:
    """The V2 answer, and the outputs the client asked to get as binary tensor data (left
    without ``data`` in the answer; ``serving.protocol.binary`` writes them)."""
    names = [spec.name for spec in task.output_specs]
    asked = {o.name: o.parameters for o in request.outputs or []}
    if asked:
        unknown = sorted(set(asked) - set(names))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model has {names}")
        names = list(asked)
    raw = {n: outputs[n] for n in names if binary.wants_binary(request.parameters, asked.get(n))}
    return InferenceResponse(
        model_name=model,
        model_version=version,
        id=request.id,
        outputs=[ResponseOutput.from_array(n, outputs[n], with_data=n not in raw)
                 for n in names],
    ), raw


def decode_v1(request: PredictRequest, task: Task) -> np.ndarray:
    """The task's raw batch from a TF-Serving request (rows or columns)."""
    rows = instances_to_columns(request, task.input_spec.name)
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


def decode_records(records: list[BaseModel], task: Task) -> np.ndarray:
    if not records:
        raise InvalidInput("no records to score")
    return task.check_raw(task.records_to_raw(records))


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
