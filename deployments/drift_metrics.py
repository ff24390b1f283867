"""Live drift in the gateway replicas: the PSI of each monitored column (serving/drift.py)
over the last rows each version answered, as the gauge ``finserve_psi{model,version,
feature}`` (exported by Ray as ``ray_finserve_psi``).

Per request: one ``np.searchsorted`` per column into a ring of bin indices (``Window``);
the bins are counted and the gauges set at most every ``publish_interval_s``, when a
request of the model is answered. A version's reference is read from its manifest the
first time it answers in the replica; one without (trained before drift monitoring) is
served unmonitored, said once in the log. Drift never fails a request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
from ray.serve import metrics

from serving.config import Drift, ModelSettings
from serving.drift import Binning, Window
from serving.store import ModelStore

log = logging.getLogger("finserve.drift")
#: seconds before a manifest that could not be read is read again
RETRY_S = 60.0
Publish = Callable[[str, str, str, float], None]


class ModelDrift:
    """One model's windows per version, and when its gauges are next set."""

    def __init__(self, model: str, settings: Drift, store: ModelStore,
                 publish: Publish) -> None:
        self.model, self.settings, self.store, self.publish = model, settings, store, publish
        self.windows: dict[str, Window] = {}
        self.seen: dict[str, float] = {}  # version: when it last answered
        self.skip: dict[str, float] = {}  # version: not monitored until then
        self.next_publish = 0.0

    def observe(self, version: str, raw: np.ndarray, outputs: dict[str, np.ndarray],
                now: float) -> None:
        window = self.windows.get(version) or self._open(version, now)
        if window is not None:
            window.add(window.binning.indices(len(raw), raw, outputs))
            self.seen[version] = now
        if now >= self.next_publish:
            self.next_publish = now + self.settings.publish_interval_s
            self.report(now)

    def _open(self, version: str, now: float) -> Window | None:
        """The version's window, its reference read from its manifest; None (and a line
        in the log) when it has none or it cannot be read now."""
        if now < self.skip.get(version, -math.inf):
            return None
        try:
            reference = self.store.manifest(self.model, version).drift_reference
        except Exception as exc:
            log.warning("drift: %s v%s: manifest unreadable (%s); not monitored for %.0fs",
                        self.model, version, exc, RETRY_S)
            self.skip[version] = now + RETRY_S
            return None
        if reference is None or not reference.columns:
            self.skip[version] = math.inf
            if reference is None:
                log.warning("drift: %s v%s is not monitored: its manifest has no "
                            "drift_reference (trained before drift monitoring; a version "
                            "trained now has one)", self.model, version)
            else:
                log.info("drift: %s v%s is not monitored: %s", self.model, version,
                         reference.note)
            return None
        window = self.windows[version] = Window(Binning(reference), self.settings.window_rows)
        return window

    def report(self, now: float) -> None:
        """Set every version's gauges (with at least ``min_rows`` rows); NaN for one idle
        for ``idle_s``, whose window is dropped."""
        for version, window in list(self.windows.items()):
            idle = now - self.seen.get(version, now) > self.settings.idle_s
            for feature, (value, rows) in window.report().items():
                if idle:
                    value = math.nan
                elif rows < self.settings.min_rows:
                    continue
                self.publish(self.model, version, feature, value)
            if idle:
                del self.windows[version], self.seen[version]


class DriftMetrics:
    """The gateway's drift monitor: ``observe`` each answer; gauges follow."""

    def __init__(self, store: ModelStore, models: list[ModelSettings],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gauge = metrics.Gauge(
            "finserve_psi", "Population stability index of a model input column or score "
            "over the replica's recent rows against the version's training data (0.1: "
            "watch, 0.25: act).", tag_keys=("model", "version", "feature"))
        self.clock = clock
        self.models = {m.name: ModelDrift(m.name, m.drift, store, self._set)
                       for m in models if m.drift.enabled}
        self._failed: set[str] = set()

    def _set(self, model: str, version: str, feature: str, value: float) -> None:
        self.gauge.set(value, tags={"model": model, "version": version, "feature": feature})

    def observe(self, model: str, version: str, raw: np.ndarray,
                outputs: dict[str, np.ndarray]) -> None:
        """Count one answered batch (its raw input and answers) against its version."""
        drift = self.models.get(model)
        if drift is None:
            return
        try:
            drift.observe(version, raw, outputs, self.clock())
        except Exception:  # monitoring must never fail an answer
            if model not in self._failed:
                self._failed.add(model)
                log.exception("drift: observing %s v%s failed; later failures are not logged",
                              model, version)
