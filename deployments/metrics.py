"""Prometheus metrics through Ray Serve's metrics API (exported by every Ray node)."""

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


class GatewayMetrics:
    """Requests by model, version, route and status; latency; decisions; shadow answers."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "finserve_requests", "HTTP requests answered by the gateway.",
            tag_keys=("model", "version", "route", "status"),
        )
        self.latency = metrics.Histogram(
            "finserve_request_latency_ms", "Gateway latency per request (ms).",
            boundaries=LATENCY_MS, tag_keys=("model", "route"),
        )
        self.decisions = metrics.Counter(
            "finserve_decisions", "Answers by outcome (the output of role decision).",
            tag_keys=("model", "version", "outcome"),
        )
        self.shadow = metrics.Counter(
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
        self.latency = metrics.Histogram(
            "finserve_stage_latency_ms", "Time spent in a pipeline stage (ms).",
            boundaries=LATENCY_MS, tag_keys=("model", "stage"),
        )
        self.batch = metrics.Histogram(
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
    skips the batch queue and writes its decision record without a thread hop (levers
    22 and 23 in benchmarks/levers.md)."""

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
