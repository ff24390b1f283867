"""Where a model's pipeline runs (``ModelSettings.placement``), behind one interface.

- ``InGateway``: Preprocess, Model and Postprocess in the gateway replica, batched there.
- ``ModelReplicas``: the steps in the gateway, the Model stage a deployment of its own.
- ``StageReplicas``: all three stages deployments of their own, chained.

The gateway calls ``run`` (retried on a lost replica, within the request deadline),
``preload``, ``artifact_sha256`` and ``ready``, whatever the placement.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from deployments.http import causes, overloaded, unwrap
from deployments.metrics import StageMetrics
from deployments.stages import Model
from serving.config import ModelSettings
from serving.errors import FinServeError, ModelUnavailable, RequestTimeout
from serving.runtime import Batch, TaskProcessing, merge_rows, split_rows
from serving.store import ModelStore

log = logging.getLogger("finserve.gateway")
READY_TIMEOUT_S = 2.0
RETRIES = 3
REPLICA_LOST = (RayActorError, ActorUnavailableError)
Outputs = dict[str, np.ndarray]


def replica_lost(exc: BaseException) -> bool:
    """A replica died under the request: Ray raises it directly, or (for a stage waiting on
    a dead upstream stage) as a RayServeException caused by it."""
    return any(isinstance(e, REPLICA_LOST) for e in causes(exc))


class Placement(abc.ABC):
    """A model's pipeline as the gateway calls it, wherever its stages run."""

    def __init__(self, model: str, timeout_s: float) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self._digests: dict[str, str] = {}

    async def run(self, version: str, raw: np.ndarray, request_params: dict[str, Any]
                  ) -> Outputs:
        """The pipeline; predictions are idempotent, so a replica that dies mid-request
        (scale-down, node loss) costs a retry on another replica, not a failed request."""
        for attempt in range(1, RETRIES + 1):
            try:
                return await self.run_once(version, raw, request_params)
            except Exception as exc:
                if not replica_lost(exc):
                    raise
                if attempt == RETRIES:
                    raise ModelUnavailable(
                        f"model '{self.model}' lost its replica; retry shortly") from exc
                log.warning("retrying %s after a lost replica (%s)", self.model,
                            type(exc).__name__)
        raise AssertionError("unreachable")

    @abc.abstractmethod
    async def run_once(self, version: str, raw: np.ndarray,
                       request_params: dict[str, Any]) -> Outputs:
        """Preprocess → Model → Postprocess, once."""

    @abc.abstractmethod
    def preload(self, versions: list[str]) -> None:
        """Ask the stages to load ``versions`` before traffic reaches them (best effort)."""

    async def artifact_sha256(self, version: str) -> str:
        """The digest of the SavedModel that answers ``version`` as its Model stage verified
        and loaded it (every replica checks the same manifest), for the decision record."""
        if version not in self._digests:
            self._digests[version] = await self._model_digest(version)
        return self._digests[version]

    @abc.abstractmethod
    async def _model_digest(self, version: str) -> str: ...

    @abc.abstractmethod
    async def ready(self) -> bool:
        """Whether the Model stage has loaded every version it serves."""

    async def within_deadline(self, last: Awaitable[Any],
                              *upstream: DeploymentResponse) -> Any:
        """The last stage's answer within the request timeout (504, cancelling the chain);
        a stage's FinServeError comes out as itself, a full queue as 503."""
        try:
            return await asyncio.wait_for(last, timeout=self.timeout_s)
        except TimeoutError:
            for response in (last, *upstream):
                if isinstance(response, DeploymentResponse):
                    response.cancel()
            raise RequestTimeout(
                f"model '{self.model}' did not answer within {self.timeout_s:g}s") from None
        except Exception as exc:
            inner = unwrap(exc)
            if isinstance(inner, FinServeError):
                raise inner from None
            if overloaded(exc):  # a stage's queue is full: 503 with Retry-After, no wait
                raise ModelUnavailable(
                    f"model '{self.model}' is busy; retry shortly") from None
            raise


class _ProcessingHere(Placement):
    """Preprocess and Postprocess in this (gateway) replica."""

    def __init__(self, settings: ModelSettings, store: ModelStore, timeout_s: float) -> None:
        super().__init__(settings.name, timeout_s)
        self.processing = TaskProcessing(store, settings.name, settings.task_name, [],
                                         settings.options)
        self.metrics = {stage: StageMetrics(settings.name, stage)
                        for stage in ("preprocess", "postprocess")}

    def preprocess(self, version: str, raw: np.ndarray) -> Batch:
        started = time.perf_counter()
        batch = self.processing.preprocess(version, raw)
        self.metrics["preprocess"].observe(started)
        return batch

    def postprocess(self, version: str, scores: Batch, context: dict[str, np.ndarray],
                    request_params: dict[str, Any]) -> Outputs:
        started = time.perf_counter()
        outputs = self.processing.postprocess(version, Batch(scores.data, context),
                                              request_params)
        self.metrics["postprocess"].observe(started)
        return outputs

    def preload(self, versions: list[str]) -> None:
        self.processing.configure(versions, self.processing.options)


#: one request's share of a merged batch: version, raw rows, request parameters
Call = tuple[str, np.ndarray, dict[str, Any]]


def mergeable(calls: list[Call]) -> list[list[int]]:
    """The calls that can go through the pipeline together (one version, equal request
    parameters), as lists of indices in arrival order."""
    groups: list[tuple[str, dict[str, Any], list[int]]] = []
    for i, (version, _, params) in enumerate(calls):
        group = next((g for g in groups if g[0] == version and g[1] == params), None)
        if group is None:
            groups.append((version, params, [i]))
        else:
            group[2].append(i)
    return [indices for _, _, indices in groups]


class InGateway(_ProcessingHere):
    """The whole pipeline in the gateway replica, once per merged batch: ``@serve.batch``
    gathers the requests waiting in the replica, and those of one version and equal
    parameters are preprocessed, predicted (the Model stage's own code) and postprocessed
    together, then split back into each request's rows (levers row 37). A request
    ``alone`` in the replica skips the queue."""

    def __init__(self, settings: ModelSettings, store: ModelStore, timeout_s: float,
                 alone: Callable[[], bool] = lambda: False) -> None:
        super().__init__(settings, store, timeout_s)
        stage = Model.func_or_class  # the class under @serve.deployment
        self.stage = stage(store.root, settings.name, settings.task_name, settings.model)
        self.alone = alone
        # a queue of this instance's own, as the Model stage keeps (one per model)
        self.batched = serve.batch(
            max_batch_size=settings.model.max_batch_size,
            batch_wait_timeout_s=settings.model.batch_wait_timeout_s,
        )(self._answer_batch)

    async def run_once(self, version: str, raw: np.ndarray,
                       request_params: dict[str, Any]) -> Outputs:
        self.stage.artifact_sha256(version)  # a refused version: 503, not batched
        call = (version, raw, request_params)
        if self.alone():
            answer = self.answer([call])[0]
        else:
            answer = await self.within_deadline(self.batched(call))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def _answer_batch(self, calls: list[Call]) -> list[Outputs | Exception]:
        return self.answer(calls)

    def answer(self, calls: list[Call]) -> list[Outputs | Exception]:
        """Each call's outputs, or the exception that refused it. A merged group that fails
        is answered again call by call, so that one request's failure stays its own."""
        answers: list[Outputs | Exception] = [{} for _ in calls]
        for indices in mergeable(calls):
            try:
                outputs = self._pipeline([calls[i] for i in indices])
            except Exception as exc:
                outputs = [exc] if len(indices) == 1 else [
                    self._alone_or_error(calls[i]) for i in indices]
            for i, result in zip(indices, outputs, strict=True):
                answers[i] = result
        return answers

    def _alone_or_error(self, call: Call) -> Outputs | Exception:
        try:
            return self._pipeline([call])[0]
        except Exception as exc:
            return exc

    def _pipeline(self, calls: list[Call]) -> list[Outputs]:
        """Preprocess, Model and Postprocess once over calls of one version and equal
        parameters."""
        version, _, request_params = calls[0]
        raws = [raw for _, raw, _ in calls]
        batch = self.preprocess(version, merge_rows(raws))
        scores = self.stage.scores([(version, batch.data)])[0]
        outputs = self.postprocess(version, Batch(scores), batch.context, request_params)
        return split_rows(outputs, [len(raw) for raw in raws])

    def preload(self, versions: list[str]) -> None:
        super().preload(versions)
        self.stage.preload(versions)

    async def _model_digest(self, version: str) -> str:
        return self.stage.artifact_sha256(version)

    async def ready(self) -> bool:
        return bool(self.stage.ready()["ready"])


def _preload(model: str, handles: tuple[DeploymentHandle, ...], versions: list[str]) -> None:
    for handle in handles:
        try:
            handle.preload.remote(versions)  # best effort: one replica each
        except Exception:  # the first request of a version will load it instead
            log.warning("could not ask %s to preload %s", model, versions)


async def _handle_ready(handle: DeploymentHandle) -> bool:
    try:
        state = await asyncio.wait_for(handle.ready.remote(), timeout=READY_TIMEOUT_S)
    except Exception:  # timeout, replica starting or failed: not ready
        return False
    return bool(state["ready"])


class ModelReplicas(_ProcessingHere):
    """The steps in the gateway replica, the Model stage a deployment of its own (GPUs,
    scaling apart)."""

    def __init__(self, settings: ModelSettings, store: ModelStore, timeout_s: float,
                 model: DeploymentHandle) -> None:
        super().__init__(settings, store, timeout_s)
        self.handle = model

    async def run_once(self, version: str, raw: np.ndarray,
                       request_params: dict[str, Any]) -> Outputs:
        batch = self.preprocess(version, raw)
        scores = await self.within_deadline(self.handle.remote(version, Batch(batch.data)))
        return self.postprocess(version, scores, batch.context, request_params)

    def preload(self, versions: list[str]) -> None:
        super().preload(versions)
        _preload(self.model, (self.handle,), versions)

    async def _model_digest(self, version: str) -> str:
        # a full queue: busy
        return await self.within_deadline(self.handle.artifact_sha256.remote(version))

    async def ready(self) -> bool:
        return await _handle_ready(self.handle)


class StageReplicas(Placement):
    """Preprocess, Model and Postprocess deployments of their own, chained without
    awaiting the middle ones."""

    def __init__(self, settings: ModelSettings, timeout_s: float, preprocess: DeploymentHandle,
                 model: DeploymentHandle, postprocess: DeploymentHandle) -> None:
        super().__init__(settings.name, timeout_s)
        self.preprocess, self.handle, self.postprocess = preprocess, model, postprocess

    async def run_once(self, version: str, raw: np.ndarray,
                       request_params: dict[str, Any]) -> Outputs:
        x = self.preprocess.remote(version, raw)
        scores = self.handle.remote(version, x)
        outputs = self.postprocess.remote(version, scores, request_params)
        return await self.within_deadline(outputs, scores, x)

    def preload(self, versions: list[str]) -> None:
        _preload(self.model, (self.preprocess, self.handle, self.postprocess), versions)

    async def _model_digest(self, version: str) -> str:
        return await self.within_deadline(self.handle.artifact_sha256.remote(version))

    async def ready(self) -> bool:
        return await _handle_ready(self.handle)


def placement(settings: ModelSettings, store: ModelStore, timeout_s: float,
              handles: dict[str, DeploymentHandle],
              alone: Callable[[], bool] = lambda: False) -> Placement:
    """The placement ``settings`` names, over the stage deployments ``build_app`` bound
    for it (``handles``: model, preprocess, postprocess); ``alone`` says whether a request
    is alone in the gateway replica."""
    if settings.placement == "gateway":
        return InGateway(settings, store, timeout_s, alone)
    if settings.placement == "model-replicas":
        return ModelReplicas(settings, store, timeout_s, handles["model"])
    return StageReplicas(settings, timeout_s, handles["preprocess"], handles["model"],
                         handles["postprocess"])
