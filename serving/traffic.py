"""Champion-challenger traffic: sticky weighted splits between versions, and the report
that compares a shadow version's answers with the live ones."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from typing import Any

import fsspec
import numpy as np


def choose_version(weights: dict[str, int], key: str | None) -> str:
    """A version drawn by ``weights`` (percentages); the same ``key`` always gets the same
    version while the weights stay the same, so one customer sees one version."""
    if key:
        point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 10_000 / 100
    else:
        point = random.random() * 100
    total = 0.0
    for version, weight in weights.items():
        total += weight
        if point < total:
            return version
    return next(reversed(weights))


def read_shadow(location: str, model: str) -> Iterable[dict[str, Any]]:
    """The shadow answers of ``model``: records of kind ``shadow`` in the trail, wherever it
    is, and the ``shadow-*.jsonl`` files local trails kept before they were chained."""
    from serving.audit import read_records
    from serving.audit.sinks import is_local

    for record in read_records(location, kind="shadow"):
        if record.get("model") == model:
            yield record
    if not is_local(location):
        return
    fs, base = fsspec.core.url_to_fs(location.removeprefix("file://").rstrip("/"))
    for path in sorted(fs.glob(f"{base}/shadow-*.jsonl")):
        with fs.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    if record.get("model") == model:
                        yield record


def compare(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """How champion and challenger differed: agreement of label-like outputs, and the
    distributions of numeric ones."""
    pairs: dict[str, list[tuple[Any, Any]]] = {}
    count = 0
    versions: set[tuple[str, str]] = set()
    for record in records:
        count += 1
        versions.add((record["champion"], record["challenger"]))
        for live, shadow in zip(record["champion_outputs"], record["challenger_outputs"],
                                strict=False):
            for name, value in live.items():
                if name in shadow:
                    pairs.setdefault(name, []).append((value, shadow[name]))
    report: dict[str, Any] = {"requests": count, "versions": sorted(versions), "outputs": {}}
    for name, values in pairs.items():
        live, shadow = zip(*values, strict=True)
        if all(isinstance(v, str) for v in live):
            report["outputs"][name] = {
                "kind": "label", "examples": len(live),
                "agreement": float(np.mean([a == b for a, b in values])),
            }
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in live):
            a, b = np.asarray(live, float), np.asarray(shadow, float)
            report["outputs"][name] = {
                "kind": "score", "examples": len(a),
                "mean_abs_diff": float(np.abs(a - b).mean()),
                "champion_quantiles": np.quantile(a, [0.1, 0.5, 0.9]).round(6).tolist(),
                "challenger_quantiles": np.quantile(b, [0.1, 0.5, 0.9]).round(6).tolist(),
            }
    return report
