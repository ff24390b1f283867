"""What each serving stage does, free of Ray: load versions, preprocess, batch-predict,
postprocess. The Ray Serve deployments in ``deployments.stages`` are thin adapters.

Stages serve whichever version the gateway asks for: the configured versions are loaded
up front, any other published version is loaded on first use (versions are immutable, so
this is safe). A rolling update whose gateway and stages briefly disagree on the version
list therefore never fails a request.

Every version is checked against its manifest as it loads (``ModelStore.verified``), once,
never per request. A version that does not match is refused: it is logged with the file
that differs, its requests get 503 (``IntegrityError``) and the model is not ready.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import ModelNotFound, ModelNotReady, VersionNotFound
from serving.store import (
    SAVED_MODEL_DIR,
    IntegrityError,
    ModelStore,
    StoreUnavailable,
    check_params,
    retry_while_unavailable,
)
from serving.tasks import PostprocessContext, Task, get_task
from serving.training import load_signature

log = logging.getLogger("finserve.runtime")
#: young objects the cyclic collector lets accumulate before a collection (Python: 700)
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Keep what a serving process holds for good (Ray, TensorFlow, the loaded versions,
    the app) out of the cyclic garbage collector's scans, and collect young objects less
    often. Each full collection scanned some 400,000 such objects, and requests' short-lived
    objects triggered them every few hundred requests: 0.2 ms of CPU per 64-row request, in
    pauses of about 0.1 s (docs/benchmarks.md, row 30). Call when a version has loaded; the
    versions a process loads stay loaded, so nothing frozen becomes garbage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


@dataclass
class Batch:
    """What travels between stages: model inputs (then outputs) and the context that
    Preprocess hands to Postprocess past the model."""

    data: Any
    context: dict[str, np.ndarray] = field(default_factory=dict)
    #: set by the Model stage: the verified digest of the SavedModel that produced ``data``
    artifact_sha256: str | None = None


class _Versions:
    """Per-version state loaded from the store once, on demand, under a lock. A version
    refused by its integrity check stays refused in this process (``refused``)."""

    def __init__(self, store: ModelStore, model: str) -> None:
        self.store = store
        self.model = model
        self.loaded: dict[str, Any] = {}
        self.refused: dict[str, str] = {}  # version: why
        self._lock = threading.Lock()

    def get(self, version: str) -> Any:
        state = self.loaded.get(version)
        if state is not None:
            return state
        with self._lock:
            if version in self.refused:
                raise IntegrityError(self.refused[version])
            if version not in self.loaded:
                try:
                    self.store.resolve(self.model, version)
                except (ModelNotFound, VersionNotFound):
                    raise VersionNotFound(self.model, version, sorted(self.loaded)) from None
                try:
                    self.loaded[version] = self.load(version)
                except IntegrityError as exc:
                    self.refused[version] = exc.message
                    log.error("%s", exc.message)
                    raise
                settle_heap()
            return self.loaded[version]

    def preload(self, versions: list[str]) -> None:
        """Load ``versions`` now; a refused one is logged and left out (it answers 503)."""
        for version in versions:
            try:
                self.get(version)
            except IntegrityError:
                continue

    def load(self, version: str) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class TaskProcessing(_Versions):
    """A model's preprocessing and postprocessing (its task's, with each version's fit
    parameters), wherever they run: in the gateway or in stage deployments."""

    def __init__(
        self, store: ModelStore, model: str, task: str, versions: list[str],
        options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(store, model)
        self.task: Task = get_task(task)
        self.configure(versions, options)

    def configure(self, versions: list[str], options: dict[str, Any] | None = None) -> None:
        """Load the configured versions' parameters and set postprocessing options."""
        self.options = self.task.options(options)
        self.preload(versions)

    def load(self, version: str) -> dict[str, Any]:
        manifest = self.store.manifest(self.model, version)
        check_params(manifest)
        return manifest.preprocessing

    def preprocess(self, version: str, raw: np.ndarray) -> Batch:
        params = self.get(version)
        return Batch(self.task.preprocess(raw, params), self.task.context(raw, params))

    def postprocess(
        self, version: str, batch: Batch, request_params: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        ctx = PostprocessContext(self.get(version), self.options, request_params or {},
                                 batch.context)
        return self.task.postprocess(batch.data, ctx)


class ModelRunner(_Versions):
    """A model's SavedModel signatures, and prediction on batches of requests.

    ``predict_batch`` is the vectorised function the Model stage puts under
    ``@serve.batch``: it groups the queued requests by version and calls each version's
    signature once.
    """

    def __init__(
        self, store: ModelStore, model: str, task: str, versions: list[str],
        intra_op_threads: int | None = None, inter_op_threads: int | None = None,
        jit_compile: bool | None = None,
    ) -> None:
        super().__init__(store, model)
        self.task: Task = get_task(task)
        self.jit_compile = self.task.jit_compile if jit_compile is None else jit_compile
        self.versions = list(versions)
        self.threads = (intra_op_threads, inter_op_threads)
        self.digests: dict[str, str] = {}  # version: verified digest of what was loaded
        self.verify_seconds: dict[str, float] = {}  # version: time its check took
        self.load_seconds: float | None = None
        self.unavailable: str | None = None  # why the store could not be read, until it can
        self._configured = False

    @property
    def ready(self) -> bool:
        """Configured, the store read, and every configured or preloaded version loaded
        (none refused)."""
        return (self._configured and self.unavailable is None
                and all(v in self.loaded for v in self.versions))

    @property
    def reason(self) -> str | None:
        """Why the runner is not ready: the store could not be read, or a configured or
        preloaded version was refused."""
        reasons = [self.unavailable, *(self.refused[v] for v in self.versions
                                       if v in self.refused)]
        return "; ".join(r for r in reasons if r) or None

    def artifact_sha256(self, version: str) -> str:
        """The sha256 of the SavedModel files verified and loaded for ``version`` (the
        digest a decision record binds); raises ``IntegrityError`` for a refused one."""
        self.get(version)
        return self.digests[version]

    def load_all(self, versions: list[str] | None = None) -> None:
        """Load and warm up the configured versions (before the replica takes traffic)."""
        start = time.perf_counter()
        _configure_tensorflow(*self.threads)
        if versions is not None:
            self.versions = list(versions)
        super().preload(self.versions)
        self._configured = True
        self.load_seconds = time.perf_counter() - start
        log.info("%s: versions %s loaded in %.1fs%s", self.model, self.versions,
                 self.load_seconds, f", not ready: {self.reason}" if self.reason else "")

    def load_latest(self) -> None:
        """Load the store's latest version (with any preloaded since) before traffic. A
        store that cannot be read does not fail the replica: it starts not ready,
        ``reason`` naming the store, and loads in the background once the store reads."""

        def attempt() -> None:
            latest = self.store.resolve(self.model)
            self.load_all(list(dict.fromkeys([latest, *self.versions])))
            self.unavailable = None

        def failed(exc: StoreUnavailable) -> None:
            self.unavailable = exc.message

        try:
            attempt()
        except StoreUnavailable as exc:
            failed(exc)
            log.error("%s: not ready, retrying in the background: %s", self.model, exc.message)
            retry_while_unavailable(self.model, attempt, failed)

    def preload(self, versions: list[str]) -> None:
        """Load ``versions`` and count them in readiness from now on."""
        self.versions = list(dict.fromkeys([*self.versions, *versions]))
        super().preload(versions)

    def load(self, version: str) -> Any:
        """Verify one version against its manifest, load its signature and pay its first,
        slow calls now."""
        _configure_tensorflow(*self.threads)
        verified = self.store.verified(self.model, version)
        log.info("%s v%s: verified %s in %.3fs", self.model, version,
                 verified.artifact_sha256[:12], verified.seconds)
        call = load_signature(verified.path / SAVED_MODEL_DIR, jit_compile=self.jit_compile)
        example = self.task.preprocess(
            self.task.sample_data(seed=1, n=8).raw, verified.manifest.preprocessing
        )
        for size in (1, len(example)):
            call(example[:size])
        self.digests[version] = verified.artifact_sha256
        self.verify_seconds[version] = verified.seconds
        return call

    def predict_batch(
        self, requests: list[tuple[str, np.ndarray]]
    ) -> list[dict[str, np.ndarray]]:
        """Predict a list of (version, inputs) with one signature call per version."""
        if not self._configured:
            raise ModelNotReady(self.unavailable or f"model '{self.model}' is still loading")
        results: list[dict[str, np.ndarray]] = [{} for _ in requests]
        by_version: dict[str, list[int]] = {}
        for i, (version, _) in enumerate(requests):
            by_version.setdefault(version, []).append(i)
        for version, indices in by_version.items():
            call = self.get(version)
            arrays = [requests[i][1] for i in indices]
            outputs = call(merge_rows(arrays))
            for i, part in zip(indices, split_rows(outputs, [len(a) for a in arrays]),
                               strict=True):
                results[i] = part
        return results


def merge_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Several requests' rows as one batch, in order (no copy for one)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def split_rows(outputs: dict[str, np.ndarray], lengths: list[int]
               ) -> list[dict[str, np.ndarray]]:
    """A merged batch's outputs back into each request's rows (``lengths``, in order)."""
    if len(lengths) == 1:
        return [outputs]
    bounds = np.cumsum(lengths)[:-1]
    parts = {name: np.split(values, bounds) for name, values in outputs.items()}
    return [{name: split[i] for name, split in parts.items()} for i in range(len(lengths))]


_tf_configured = False
#: what TensorFlow's own import loads from Keras (and Keras loads scikit-learn)
_KERAS_EAGER_IMPORT = "keras.src.optimizers"


def import_tensorflow() -> Any:
    """TensorFlow, imported without Keras when nothing has imported either yet.

    Serving only calls SavedModel signatures. TensorFlow's import loads Keras, and with it
    scikit-learn, to register Keras optimizers for SavedModels that hold them: 1.0 of its
    2.5 s here, on every replica start (docs/benchmarks.md). A failing import is what TF
    expects when Keras is absent; Keras imports normally afterwards if anything needs it.
    """
    skip = "tensorflow" not in sys.modules and "keras" not in sys.modules
    if skip:
        sys.modules[_KERAS_EAGER_IMPORT] = None  # type: ignore[assignment]
    try:
        import tensorflow as tf
    finally:
        if skip:
            sys.modules.pop(_KERAS_EAGER_IMPORT, None)
    return tf


def _configure_tensorflow(intra: int | None, inter: int | None) -> None:
    """Thread pools per replica, and GPU memory growth instead of grabbing it all."""
    global _tf_configured
    if _tf_configured:
        return
    tf = import_tensorflow()

    try:
        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:  # already initialised in this process
        log.debug("TensorFlow runtime already initialised; thread settings unchanged")
    _tf_configured = True
