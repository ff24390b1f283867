"""Re-run a recorded decision on the exact model version it names, in process."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving import audit
from serving.dataplane import rows
from serving.runtime import Batch, ModelRunner, TaskProcessing
from serving.store import ModelStore


def replay(trail: str, request_id: str, store: ModelStore, atol: float = 1e-5) -> dict[str, Any]:
    """Find the record (by decision id or request id), check the artifact digest, predict
    again and compare outputs."""
    record = audit.find(trail, request_id)
    model, version = record["model"], record["version"]
    manifest = store.manifest(model, version)
    result: dict[str, Any] = {"request_id": record.get("request_id"),
                              "decision_id": audit.decision_id(record), "model": model,
                              "version": version}
    if manifest.artifact_sha256 != record["artifact_sha256"] or not store.verify(model, version):
        return {**result, "matches": False, "reason": "the stored artifact is not the one "
                "that answered (digest differs)"}
    if record["inputs"].get("tokenized"):  # True (formats 1-3) or the tokenized names
        return {**result, "matches": False,
                "reason": "the input holds tokenized personal fields; it cannot be re-run"}
    processing = TaskProcessing(store, model, manifest.task, [version])
    runner = ModelRunner(store, model, manifest.task, [version])
    runner.load_all()
    spec = processing.task.input_spec
    raw = np.asarray(record["inputs"]["data"], dtype=object if spec.datatype == "BYTES"
                     else np.float32)
    batch = processing.preprocess(version, processing.task.check_raw(raw))
    batch = Batch(runner.predict_batch([(version, batch.data)])[0], batch.context)
    outputs = processing.postprocess(version, batch, record.get("parameters"))
    again = rows(outputs)
    if isinstance(record["outputs"], dict):  # formats 3-4: columns, as the model gave them
        recorded_now = audit.recorded_outputs(outputs)
        then = _examples(record["outputs"])
        now = _examples({n: recorded_now[n] for n in record["outputs"] if n in recorded_now})
    else:  # formats 1 and 2: one dict per example, as the answer lists it
        then, now = record["outputs"], again
    mismatches = _differences(then, now, atol)
    return {**result, "matches": not mismatches, "differences": mismatches, "outputs": again}


def _examples(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """A format-3 record's output columns as one dict per example."""
    examples = zip(*columns.values(), strict=False)  # uneven columns: `verify` says altered
    return [dict(zip(columns, values, strict=True)) for values in examples]


def _differences(recorded: list[dict[str, Any]], again: list[dict[str, Any]],
                 atol: float) -> list[str]:
    if len(recorded) != len(again):
        return [f"{len(recorded)} recorded answers, {len(again)} now"]
    out = []
    for i, (a, b) in enumerate(zip(recorded, again, strict=True)):
        for name in a:
            x, y = a[name], b.get(name)
            same = (np.allclose(np.asarray(x, float), np.asarray(y, float), atol=atol)
                    if _numeric(x) else x == y)
            if not same:
                out.append(f"example {i} {name}: recorded {x!r}, now {y!r}")
    return out


def _numeric(value: Any) -> bool:
    flat = np.asarray(value, dtype=object).reshape(-1)
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat)
