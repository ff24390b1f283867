"""Prometheus metrics through Ray Serve's metrics API (exported by every Ray node).

A request's updates are kept in the process and recorded through Ray's API every
``FLUSH_INTERVAL_S``, as Ray Serve records its own request metrics (its
``RAY_SERVE_METRICS_EXPORT_INTERVAL_MS``, 100 ms): the request pays a dict update, not
Ray's tag handling (lever 35 in benchmarks/levers.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import numpy as np
from ray.serve import metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_MS = [0.5, 1, 2, 3, 5, 8, 12, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000]
#: the gateway puts the model a request went to under this ASGI scope key
MODEL_SCOPE_KEY = "finserve.model"
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
FLUSH_INTERVAL_S = 0.1
Tags = frozenset[tuple[str, str]]


class _Buffer:
    """The process's pending counter increments and histogram observations, recorded by
    one task on the event loop every ``FLUSH_INTERVAL_S`` (at once where no loop runs)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[metrics.Counter, Tags], float] = {}
        self.observed: dict[tuple[metrics.Histogram, Tags], list[float]] = {}
        self.task: asyncio.Task[None] | None = None

    def pending(self) -> None:
        """Something waits to be recorded: make sure the flushing task runs."""
        if self.task is not None and not self.task.done():
            return
        try:
            self.task = asyncio.get_running_loop().create_task(self._flush_forever())
        except RuntimeError:  # no event loop in this thread: record now
            self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        counts, self.counts = self.counts, {}
        observed, self.observed = self.observed, {}
        for (counter, tags), value in counts.items():
            counter.inc(value, tags=dict(tags))
        for (histogram, tags), values in observed.items():
            tag_dict = dict(tags)
            for value in values:
                histogram.observe(value, tags=tag_dict)


_BUFFER = _Buffer()


class BufferedCounter:
    """A Ray Serve counter whose increments are recorded every ``FLUSH_INTERVAL_S``."""

    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...]) -> None:
        self.metric = metrics.Counter(name, description, tag_keys=tag_keys)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = (self.metric, frozenset((tags or {}).items()))
        _BUFFER.counts[key] = _BUFFER.counts.get(key, 0.0) + value
        _BUFFER.pending()


class BufferedHistogram:
    """A Ray Serve histogram whose observations are recorded every ``FLUSH_INTERVAL_S``."""

    def __init__(self, name: str, description: str, boundaries: list[float],
                 tag_keys: tuple[str, ...]) -> None:
        self.metric = metrics.Histogram(name, description, boundaries=boundaries,
                                        tag_keys=tag_keys)

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        _BUFFER.observed.setdefault((self.metric, frozenset((tags or {}).items())),
                                    []).append(value)
        _BUFFER.pending()


class GatewayMetrics:
    """Requests by model, version, route and status; latency; decisions; shadow answers."""

    def __init__(self) -> None:
        self.requests = BufferedCounter(
            "finserve_requests", "HTTP requests answered by the gateway.",
            tag_keys=("model", "version", "route", "status"),
        )
        self.latency = BufferedHistogram(
            "finserve_request_latency_ms", "Gateway latency per request (ms).",
            boundaries=LATENCY_MS, tag_keys=("model", "route"),
        )
        self.decisions = BufferedCounter(
            "finserve_decisions", "Answers by outcome (the output of role decision).",
            tag_keys=("model", "version", "outcome"),
        )
        self.shadow = BufferedCounter(
            "finserve_shadow_answers", "Shadow answers, by agreement with the live answer.",
            tag_keys=("model", "challenger", "agrees"),
        )

    def outcomes(self, model: str, version: str, outputs: dict[str, np.ndarray],
                 decisions: tuple[str, ...]) -> None:
        """Count answers by outcome: the first one-dimensional of the ``decisions`` (the
        outputs the task declares with role decision)."""
        for name in decisions:
            if name in outputs and outputs[name].ndim == 1:
                for value, count in Counter(outputs[name].tolist()).items():
                    self.decisions.inc(count, tags={"model": model, "version": version,
                                                    "outcome": str(value)})
                return


class StageMetrics:
    """Latency of one stage, and batch sizes in the Model stage."""

    def __init__(self, model: str, stage: str) -> None:
        self.tags = {"model": model, "stage": stage}
        self.latency = BufferedHistogram(
            "finserve_stage_latency_ms", "Time spent in a pipeline stage (ms).",
            boundaries=LATENCY_MS, tag_keys=("model", "stage"),
        )
        self.batch = BufferedHistogram(
            "finserve_batch_size", "Examples per model signature call.",
            boundaries=BATCH_SIZES, tag_keys=("model", "stage"),
        )

    def observe(self, started: float, batch_size: int | None = None) -> None:
        self.latency.observe((time.perf_counter() - started) * 1000, tags=self.tags)
        if batch_size is not None:
            self.batch.observe(batch_size, tags=self.tags)


class InFlight:
    """How many requests the gateway replica is answering now, on every route. A request
    alone in its replica has nothing to batch with and nothing to share a write with: it
    skips the batch queue and writes its decision record without a thread hop (lever
    34 in benchmarks/levers.md)."""

    def __init__(self) -> None:
        self.count = 0

    def alone(self) -> bool:
        return self.count <= 1


class RequestMetricsMiddleware:
    """Counts every answer by route template, model, version and status, and the requests
    in flight (pure ASGI)."""

    def __init__(self, app: ASGIApp, gateway_metrics: GatewayMetrics,
                 in_flight: InFlight) -> None:
        self.app = app
        self.metrics = gateway_metrics
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "version": ""}

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key == b"x-model-version":
                        seen["version"] = value.decode()
            await send(message)

        self.in_flight.count += 1
        try:
            # let the requests that arrived together count themselves before any of them
            # asks whether it is alone (an answer that never awaits would run to its end)
            await asyncio.sleep(0)
            await self.app(scope, receive, recording)
        finally:
            self.in_flight.count -= 1
            route = getattr(scope.get("route"), "path", "unmatched")
            model = scope.get(MODEL_SCOPE_KEY, "")
            self.metrics.requests.inc(tags={
                "model": model, "version": seen["version"], "route": route,
                "status": str(seen["status"]),
            })
            self.metrics.latency.observe((time.perf_counter() - started) * 1000,
                                         tags={"model": model, "route": route})
