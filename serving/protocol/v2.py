"""Open Inference Protocol (KServe V2 / Triton) request and response models."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.protocol.codec import from_numpy, to_numpy, v2_datatype


class RequestInput(BaseModel):
    """One input tensor: row-major ``data`` (flat or nested) of ``shape`` and ``datatype``."""

    name: str = Field(description="Tensor name, as listed in the model metadata.")
    shape: list[int] = Field(description="Tensor shape; the first axis is the batch.")
    datatype: str = Field(description="V2 datatype, e.g. FP32, INT64, BYTES.")
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="Tensor contents in row-major order.")

    def as_numpy(self) -> np.ndarray:
        """Decode to numpy, checking datatype, element count and finiteness."""
        return to_numpy(self.name, self.datatype, self.shape, self.data)


class RequestOutput(BaseModel):
    """An output the client asks for by name."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """``POST /v2/models/{model}[/versions/{version}]/infer`` body."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "tx-42",
                "inputs": [
                    {
                        "name": "text",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": ["Shares surge after record quarterly profit"],
                    }
                ],
            }
        }
    )

    id: str | None = Field(default=None, description="Echoed back in the response.")
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        None, description="Tensor contents in row-major order; absent for an output sent as "
        "binary tensor data (parameters.binary_data_size gives its bytes).")

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, with_data: bool = True
                   ) -> ResponseOutput:
        if not with_data:
            return cls(name=name, shape=list(array.shape), datatype=v2_datatype(array))
        datatype, shape, data = from_numpy(array)
        return cls(name=name, shape=shape, datatype=datatype, data=data)

    def as_numpy(self) -> np.ndarray:
        return to_numpy(self.name, self.datatype, self.shape, self.data or [])


class InferenceResponse(BaseModel):
    """Inference answer: which model and version answered, and the output tensors."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    """A model input or output; an input's ``parameters`` name what its values may be:
    ``columns`` (one per last-axis column, in order) or ``elements`` (every element)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    """``GET /v2/models/{model}`` answer."""

    name: str
    versions: list[str]
    platform: str = "tensorflow_savedmodel"
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None


class ServerMetadata(BaseModel):
    """``GET /v2`` answer."""

    name: str = "finserve"
    version: str
    extensions: list[str] = Field(default_factory=list)
