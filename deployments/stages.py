"""The three stage deployments of a model's pipeline: thin adapters over serving.runtime.

Stages take no routing: they answer for whichever version the gateway names (versions are
immutable), so routing changes touch only the gateway's ``user_config``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray import serve

from deployments.metrics import StageMetrics
from serving.config import ModelStageSettings
from serving.runtime import Batch, ModelRunner, TaskProcessing
from serving.store import ModelStore


class _ProcessingStage:
    """Base of the Preprocess and Postprocess deployments: a model's ``TaskProcessing``;
    any published version is loaded on first use."""

    stage = "processing"

    def __init__(self, store_uri: str, model: str, task: str,
                 options: dict[str, Any] | None = None) -> None:
        self.processing = TaskProcessing(ModelStore(store_uri), model, task, [], options)
        self.metrics = StageMetrics(model, self.stage)

    def preload(self, versions: list[str]) -> None:
        self.processing.configure(versions, self.processing.options)


@serve.deployment
class Preprocess(_ProcessingStage):
    """Raw records → model tensors (``task.preprocess``) for a model's versions."""

    stage = "preprocess"

    def __call__(self, version: str, raw: np.ndarray) -> Batch:
        started = time.perf_counter()
        batch = self.processing.preprocess(version, raw)
        self.metrics.observe(started)
        return batch


@serve.deployment
class Postprocess(_ProcessingStage):
    """Model outputs → decisions, labels and reasons (``task.postprocess``)."""

    stage = "postprocess"

    def __call__(
        self, version: str, batch: Batch, request_params: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        answers = self.processing.postprocess(version, batch, request_params)
        self.metrics.observe(started)
        return answers


@serve.deployment
class Model:
    """SavedModel signatures of a model's versions behind ``@serve.batch``.

    The latest version is loaded and warmed before the replica takes traffic; the gateway
    asks for the routed versions with ``preload``, and any other published version loads
    on first use, so a routing change never fails a request. A version that fails its
    integrity check is refused: the replica still starts, ``ready()`` says why it is not
    ready, and that version's requests get 503 before they reach the batch. So does a
    store that cannot be read at start, until it can (``ModelRunner.load_latest``).
    """

    def __init__(self, store_uri: str, model: str, task: str,
                 settings: ModelStageSettings) -> None:
        self.runner = ModelRunner(
            ModelStore(store_uri), model, task, [],
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            jit_compile=settings.jit_compile,
        )
        # a batch queue of this instance's own: @serve.batch on a method keeps one queue
        # for every instance in the process, and a gateway replica holds one Model per model
        self.predict = serve.batch(
            max_batch_size=settings.max_batch_size,
            batch_wait_timeout_s=settings.batch_wait_timeout_s,
        )(self._predict_batch)
        self.metrics = StageMetrics(model, "model")
        self.runner.load_latest()

    def preload(self, versions: list[str]) -> None:
        self.runner.preload(versions)

    def ready(self) -> dict[str, Any]:
        return {
            "ready": self.runner.ready,
            "reason": self.runner.reason,
            "digests": self.runner.digests,
            "load_seconds": self.runner.load_seconds,
            "verify_seconds": self.runner.verify_seconds,
        }

    def artifact_sha256(self, version: str) -> str:
        """The verified digest of the SavedModel this replica serves ``version`` from."""
        return self.runner.artifact_sha256(version)

    def scores(self, requests: list[tuple[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """The signature's outputs for each (version, model inputs), one call per version;
        observed as one batch."""
        started = time.perf_counter()
        results = self.runner.predict_batch(requests)
        self.metrics.observe(started, batch_size=sum(len(x) for _, x in requests))
        return results

    async def _predict_batch(self, requests: list[tuple[str, np.ndarray]]) -> list[Any]:
        return self.scores(requests)

    async def __call__(self, version: str, batch: Batch) -> Batch:
        """One request's scores, predicted with the others queued in this replica."""
        digest = self.runner.artifact_sha256(version)  # a refused version: 503, not batched
        scores = await self.predict((version, batch.data))
        return Batch(scores, batch.context, digest)
