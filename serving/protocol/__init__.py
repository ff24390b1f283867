"""Wire protocols: Open Inference Protocol (V2) and TF-Serving REST (V1).

Pure data and numpy codecs; no web framework here.
"""

from serving.protocol.codec import TensorSpec, from_numpy, to_numpy
from serving.protocol.v1 import PredictRequest, PredictResponse, instances_to_columns
from serving.protocol.v2 import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    ModelMetadata,
    RequestInput,
    ResponseOutput,
)

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "ModelMetadata",
    "PredictRequest",
    "PredictResponse",
    "RequestInput",
    "ResponseOutput",
    "TensorSpec",
    "from_numpy",
    "instances_to_columns",
    "to_numpy",
]
