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

#: outputs a shadow version is compared on by agreement, whatever their type
AGREEMENT_ROLES = ("decision", "label")


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


def agrees(decisions: Iterable[str], live: dict[str, np.ndarray],
           shadow: dict[str, np.ndarray]) -> bool:
    """Whether a shadow answer made the live answer's decisions (the outputs the task
    declares with role ``decision``)."""
    return all(np.array_equal(live[n], shadow[n]) for n in decisions if n in live)


def output_roles(task_name: str | None) -> dict[str, str]:
    """The declared role of each output of a task (none for an unknown or absent task:
    shadow records written before they named their task)."""
    from serving.tasks import TASKS, get_task

    if task_name not in TASKS:
        return {}
    return {s.name: s.role for s in get_task(task_name).output_specs if s.role}


def compare(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """How champion and challenger differed: agreement of the outputs whose declared role is
    decision or label (by type, strings, where the record names no task), and the
    distributions of numeric ones; ``decision`` names the task's decision output."""
    pairs: dict[str, list[tuple[Any, Any]]] = {}
    roles: dict[str, str] = {}
    count = 0
    versions: set[tuple[str, str]] = set()
    for record in records:
        count += 1
        versions.add((record["champion"], record["challenger"]))
        roles.update(output_roles(record.get("task")))
        for live, shadow in zip(record["champion_outputs"], record["challenger_outputs"],
                                strict=False):
            for name, value in live.items():
                if name in shadow:
                    pairs.setdefault(name, []).append((value, shadow[name]))
    report: dict[str, Any] = {"requests": count, "versions": sorted(versions), "outputs": {}}
    decision = next((n for n in pairs if roles.get(n) == "decision"), None)
    if decision is not None:
        report["decision"] = decision
    for name, values in pairs.items():
        live, shadow = zip(*values, strict=True)
        role = roles.get(name)
        if role in AGREEMENT_ROLES or (role is None and all(isinstance(v, str) for v in live)):
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
