"""The three stage deployments of a model's pipeline: thin adapters over serving.runtime.

Versions, batching and postprocessing options arrive as ``user_config``, so changing them
reconfigures running replicas in place (``reconfigure``) instead of replacing them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from serving.runtime import Batch, ModelRunner, TaskSteps
from serving.store import ModelStore


class _Steps:
    """A model's task steps, configured with its versions and options."""

    def __init__(self, store_uri: str, model: str, task: str) -> None:
        self.steps = TaskSteps(ModelStore(store_uri), model, task, [])

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.steps.configure(config["versions"], config.get("options"))


@serve.deployment
class Preprocess(_Steps):
    """Raw records → model tensors (``task.preprocess``) for a model's versions."""

    def __call__(self, version: str, raw: np.ndarray) -> Batch:
        return self.steps.preprocess(version, raw)


@serve.deployment
class Postprocess(_Steps):
    """Model outputs → decisions, labels and reasons (``task.postprocess``)."""

    def __call__(
        self, version: str, batch: Batch, parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        return self.steps.postprocess(version, batch, parameters)


@serve.deployment
class Model:
    """SavedModel signatures of a model's versions behind ``@serve.batch``."""

    def __init__(self, store_uri: str, model: str, task: str, threads: dict[str, Any]) -> None:
        self.runner = ModelRunner(
            ModelStore(store_uri), model, task, [],
            intra_op_threads=threads.get("intra_op_threads"),
            inter_op_threads=threads.get("inter_op_threads"),
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Load new versions before answering with them; keep serving the loaded ones."""
        self.predict.set_max_batch_size(config["max_batch_size"])
        self.predict.set_batch_wait_timeout_s(config["batch_wait_timeout_s"])
        self.runner.load_all(config["versions"])

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
