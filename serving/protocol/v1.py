"""TF-Serving REST (V1) predict request and response models.

``instances`` is the row form (one entry per example: a value, a list, or a dict of
named inputs); ``inputs`` is the columnar form (a tensor, or a dict of named tensors).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.errors import BadRequest, InvalidInput


class PredictRequest(BaseModel):
    """``POST /v1/models/{model}[/versions/{version}]:predict`` body."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"instances": ["Bank beats earnings estimates"]}}
    )

    signature_name: str | None = None
    instances: list[Any] | None = Field(default=None, description="Row form.")
    inputs: Any | None = Field(default=None, description="Columnar form.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="Per-request parameters of the model's task (extension)."
    )

    @model_validator(mode="after")
    def _one_form(self) -> PredictRequest:
        if (self.instances is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'instances' (rows) or 'inputs' (columns)")
        return self


class PredictResponse(BaseModel):
    """Row form answer (``predictions``), plus the version that answered."""

    predictions: list[Any]
    model_version: str | None = None


def instances_to_columns(request: PredictRequest, input_name: str) -> list[Any]:
    """Return the rows of the single named input that a task takes.

    Accepts ``instances`` as plain values or ``{input_name: value}`` dicts, and ``inputs``
    as a tensor or ``{input_name: tensor}``.
    """
    if request.instances is not None:
        rows = request.instances
        if rows and all(isinstance(r, dict) for r in rows):
            missing = [i for i, r in enumerate(rows) if input_name not in r]
            if missing:
                raise InvalidInput(f"instance {missing[0]} has no input named '{input_name}'")
            return [r[input_name] for r in rows]
        if any(isinstance(r, dict) for r in rows):
            raise BadRequest("instances must be all values or all objects, not a mix")
        return rows
    columns = request.inputs
    if isinstance(columns, dict):
        if input_name not in columns:
            raise InvalidInput(f"inputs has no tensor named '{input_name}'")
        columns = columns[input_name]
    if not isinstance(columns, list):
        raise InvalidInput(f"input '{input_name}' must be a list with one entry per example")
    return columns
