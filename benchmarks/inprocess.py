"""The model's own limit: its SavedModel signature called in this process, no HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from serving.store import SAVED_MODEL_DIR, ModelStore
from serving.tasks import PostprocessContext, get_task
from serving.training import load_signature

#: powers of two up to 8,192 examples per call: a signature with integrated gradients
#: (fraud, credit) still gains from 4,096 to 8,192 on two cores, so a sweep that stopped
#: at 256 (before 2026-12-02, 13:55) under-stated its limit by half or more
BATCHES = tuple(2**i for i in range(14))


def _timed(fn: Callable[[], object], seconds: float) -> list[float]:
    """Per-call seconds of ``fn`` called for about ``seconds`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def model_limit(store: ModelStore, model: str, task_name: str, raw: np.ndarray,
                options: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Instances/s of the signature per batch size (``BATCHES``); the best of them; and the
    p50 of one instance through preprocess + signature (+ postprocess) at batch 1."""
    task = get_task(task_name)
    params = store.manifest(model).preprocessing
    call = load_signature(store.local_path(model) / SAVED_MODEL_DIR)
    rows = np.resize(np.arange(len(raw)), max(BATCHES))
    x = task.preprocess(raw[rows], params)
    sweep = []
    for b in BATCHES:
        times = _timed(lambda b=b: call(x[:b]), seconds)
        sweep.append({"batch": b, "instances_per_s": b * len(times) / sum(times),
                      "p50_ms": float(np.median(times)) * 1e3})
    best = max(sweep, key=lambda r: r["instances_per_s"])
    one = raw[:1]
    step = PostprocessContext(params, task.options(options))
    pre_call = _timed(lambda: call(task.preprocess(one, params)), seconds)
    full = _timed(lambda: task.postprocess(call(task.preprocess(one, params)), step), seconds)
    return {
        "sweep": sweep,
        "best_batch": best["batch"],
        "best_instances_per_s": best["instances_per_s"],
        "batch1_call_p50_ms": sweep[0]["p50_ms"],
        "batch1_pre_call_p50_ms": float(np.median(pre_call)) * 1e3,
        "batch1_pre_call_post_p50_ms": float(np.median(full)) * 1e3,
    }
