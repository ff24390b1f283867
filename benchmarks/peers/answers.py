"""Whether a peer's V2 answer is FinServe's: checked before a peer is timed on a model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: floats may differ this much, relatively (the same graph, another process)
RTOL = 1e-5


def mismatch(expected: dict[str, Any], got: dict[str, Any], rtol: float = RTOL) -> str | None:
    """Why the V2 answer ``got`` differs from ``expected`` (FinServe's), or None: the same
    output names, datatypes and shapes, strings equal, numbers within ``rtol``."""
    want = {o["name"]: o for o in expected.get("outputs", [])}
    have = {o["name"]: o for o in got.get("outputs", []) or []}
    if set(want) != set(have):
        return f"outputs {sorted(have)}, expected {sorted(want)}"
    for name, w in want.items():
        h = have[name]
        for key in ("datatype", "shape"):
            if h.get(key) != w[key]:
                return f"output '{name}': {key} {h.get(key)}, expected {w[key]}"
        if w["datatype"] == "BYTES":
            if list(h["data"]) != list(w["data"]):
                return f"output '{name}': strings differ: {h['data'][:3]} vs {w['data'][:3]}"
            continue
        a, b = np.asarray(h["data"], dtype=np.float64), np.asarray(w["data"], dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=0.0):
            worst = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) \
                if a.shape == b.shape else float("inf")
            return f"output '{name}': values differ (worst relative difference {worst:.2e})"
    return None


def check(status: int, body: bytes, expected: bytes) -> str | None:
    """``mismatch`` for an HTTP answer (status, body) against FinServe's answer's body."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        return mismatch(json.loads(expected), json.loads(body))
    except (ValueError, TypeError, KeyError) as exc:
        return f"unreadable answer ({type(exc).__name__}: {exc}): {body[:200]!r}"
