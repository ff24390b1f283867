"""What each serving stage does, free of Ray: load versions, preprocess, batch-predict,
postprocess. The Ray Serve deployments in ``deployments.stages`` are thin adapters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import ModelNotReady, VersionNotFound
from serving.store import SAVED_MODEL_DIR, ModelStore
from serving.tasks import Step, Task, get_task
from serving.training import load_signature

log = logging.getLogger("finserve.runtime")


@dataclass
class Batch:
    """What travels between stages: model inputs (then outputs) and the context that
    Preprocess hands to Postprocess past the model."""

    data: Any
    context: dict[str, np.ndarray] = field(default_factory=dict)


class TaskSteps:
    """Preprocessing and postprocessing of one model's served versions."""

    def __init__(
        self, store: ModelStore, model: str, task: str, versions: list[str],
        options: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.task: Task = get_task(task)
        self.options = self.task.options(options)
        self.params = {v: store.manifest(model, v).preprocessing for v in versions}

    def _params(self, version: str) -> dict[str, Any]:
        try:
            return self.params[version]
        except KeyError:
            raise VersionNotFound(self.model, version, list(self.params)) from None

    def preprocess(self, version: str, raw: np.ndarray) -> Batch:
        params = self._params(version)
        return Batch(self.task.preprocess(raw, params), self.task.context(raw, params))

    def postprocess(
        self, version: str, batch: Batch, parameters: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        step = Step(self._params(version), self.options, parameters or {}, batch.context)
        return self.task.postprocess(batch.data, step)


class ModelRunner:
    """Loads a model's served versions and predicts on batches.

    ``predict_batch`` is the vectorised function the Model stage puts under
    ``@serve.batch``: it groups the queued requests by version and calls each version's
    signature once.
    """

    def __init__(
        self, store: ModelStore, model: str, task: str, versions: list[str],
        intra_op_threads: int | None = None, inter_op_threads: int | None = None,
    ) -> None:
        self.store = store
        self.model = model
        self.task: Task = get_task(task)
        self.versions = list(versions)
        self.threads = (intra_op_threads, inter_op_threads)
        self._calls: dict[str, Any] = {}
        self.digests: dict[str, str] = {}
        self.load_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return len(self._calls) == len(self.versions)

    def load(self) -> None:
        """Load and warm up every served version (the first calls of a signature are slow)."""
        start = time.perf_counter()
        _configure_tensorflow(*self.threads)
        for version in self.versions:
            manifest = self.store.manifest(self.model, version)
            call = load_signature(self.store.local_path(self.model, version) / SAVED_MODEL_DIR)
            example = self.task.preprocess(
                self.task.sample_data(seed=1, n=8).raw, manifest.preprocessing
            )
            for size in (1, len(example)):
                call(example[:size])
            self._calls[version] = call
            self.digests[version] = manifest.artifact_sha256
        self.load_seconds = time.perf_counter() - start
        log.info("%s: loaded versions %s in %.1fs", self.model, self.versions, self.load_seconds)

    def predict_batch(
        self, requests: list[tuple[str, np.ndarray]]
    ) -> list[dict[str, np.ndarray]]:
        """Predict a list of (version, inputs) with one signature call per version."""
        if not self.ready:
            raise ModelNotReady(f"model '{self.model}' is still loading")
        results: list[dict[str, np.ndarray]] = [{} for _ in requests]
        by_version: dict[str, list[int]] = {}
        for i, (version, _) in enumerate(requests):
            by_version.setdefault(version, []).append(i)
        for version, indices in by_version.items():
            call = self._calls.get(version)
            if call is None:
                raise VersionNotFound(self.model, version, self.versions)
            arrays = [requests[i][1] for i in indices]
            outputs = call(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
            bounds = np.cumsum([len(a) for a in arrays])[:-1]
            for name, values in outputs.items():
                for i, part in zip(indices, np.split(values, bounds), strict=True):
                    results[i][name] = part
        return results


def _configure_tensorflow(intra: int | None, inter: int | None) -> None:
    """Thread pools per replica, and GPU memory growth instead of grabbing it all."""
    import tensorflow as tf

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # already initialised in this process
        log.debug("TensorFlow runtime already initialised; thread settings unchanged")
