"""The three stage deployments of a model's pipeline: thin adapters over serving.runtime.

Versions, batching and postprocessing options arrive as ``user_config``, so changing them
reconfigures running replicas in place (``reconfigure``) instead of replacing them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray import serve

from deployments.metrics import StageMetrics
from serving.runtime import Batch, ModelRunner, TaskSteps
from serving.store import ModelStore


class _Steps:
    """A model's task steps, configured with its versions and options."""

    stage = "steps"

    def __init__(self, store_uri: str, model: str, task: str) -> None:
        self.steps = TaskSteps(ModelStore(store_uri), model, task, [])
        self.metrics = StageMetrics(model, self.stage)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.steps.configure(config["versions"], config.get("options"))


@serve.deployment
class Preprocess(_Steps):
    """Raw records → model tensors (``task.preprocess``) for a model's versions."""

    stage = "preprocess"

    def __call__(self, version: str, raw: np.ndarray) -> Batch:
        started = time.perf_counter()
        batch = self.steps.preprocess(version, raw)
        self.metrics.observe(started)
        return batch


@serve.deployment
class Postprocess(_Steps):
    """Model outputs → decisions, labels and reasons (``task.postprocess``)."""

    stage = "postprocess"

    def __call__(
        self, version: str, batch: Batch, parameters: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        answers = self.steps.postprocess(version, batch, parameters)
        self.metrics.observe(started)
        return answers


@serve.deployment
class Model:
    """SavedModel signatures of a model's versions behind ``@serve.batch``."""

    def __init__(self, store_uri: str, model: str, task: str, threads: dict[str, Any]) -> None:
        self.runner = ModelRunner(
            ModelStore(store_uri), model, task, [],
            intra_op_threads=threads.get("intra_op_threads"),
            inter_op_threads=threads.get("inter_op_threads"),
        )
        self.metrics = StageMetrics(model, "model")

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
        started = time.perf_counter()
        results = self.runner.predict_batch(requests)
        self.metrics.observe(started, batch_size=sum(len(x) for _, x in requests))
        return results

    async def __call__(self, version: str, batch: Batch) -> Batch:
        return Batch(await self.predict((version, batch.data)), batch.context)
