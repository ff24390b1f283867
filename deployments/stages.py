"""The three stage deployments of a model's pipeline: thin adapters over serving.runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from serving.runtime import Batch, ModelRunner, TaskSteps
from serving.store import ModelStore


@serve.deployment
class Preprocess:
    """Raw records → model tensors (``task.preprocess``) for a model's served versions."""

    def __init__(self, store_uri: str, model: str, task: str, versions: list[str]) -> None:
        self.steps = TaskSteps(ModelStore(store_uri), model, task, versions)

    def __call__(self, version: str, raw: np.ndarray) -> Batch:
        return self.steps.preprocess(version, raw)


@serve.deployment
class Postprocess:
    """Scores → decisions and labels (``task.postprocess``)."""

    def __init__(
        self, store_uri: str, model: str, task: str, versions: list[str],
        options: dict[str, Any],
    ) -> None:
        self.steps = TaskSteps(ModelStore(store_uri), model, task, versions, options)

    def __call__(
        self, version: str, batch: Batch, parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        return self.steps.postprocess(version, batch, parameters)


@serve.deployment
class Model:
    """SavedModel signatures of a model's served versions behind ``@serve.batch``."""

    def __init__(
        self, store_uri: str, model: str, task: str, versions: list[str],
        batching: dict[str, Any],
    ) -> None:
        self.runner = ModelRunner(
            ModelStore(store_uri), model, task, versions,
            intra_op_threads=batching.get("intra_op_threads"),
            inter_op_threads=batching.get("inter_op_threads"),
        )
        self.predict.set_max_batch_size(batching["max_batch_size"])
        self.predict.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])
        self.runner.load()  # Serve routes no request here before the constructor returns

    def ready(self) -> dict[str, Any]:
        return {
            "ready": self.runner.ready,
            "digests": self.runner.digests,
            "load_seconds": self.runner.load_seconds,
        }

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(self, requests: list[tuple[str, np.ndarray]]) -> list[Any]:
        return self.runner.predict_batch(requests)

    async def __call__(self, version: str, batch: Batch) -> Batch:
        return Batch(await self.predict((version, batch.data)), batch.context)
