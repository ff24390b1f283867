"""MLServer's custom inference runtime serving FinServe's models through FinServe's pipeline.

Runs in the mlserver venv (``benchmarks/peers/launch.py``), named as the ``implementation``
of each model's ``model-settings.json``; ``parameters.extra.config`` is the bench's Serve
config. MLServer loads it in each of its parallel workers; adaptive batching (when a model's
settings turn it on) merges requests before they reach ``predict``.
"""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from benchmarks.pipeline import Served, load_served, v2_outputs


class FinServeRuntime(MLModel):
    """One FinServe model: the request's first input tensor through FinServe's pipeline."""

    served: Served

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self.served = load_served(extra["config"], only=[self.name], tf_threads=True)[self.name]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Runs in an inference worker's process, as MLServer's own runtimes do."""
        answers = self.served.answer(NumpyCodec.decode_input(payload.inputs[0]))
        outputs = [ResponseOutput(**o) for o in v2_outputs(answers)]
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 id=payload.id, outputs=outputs)
