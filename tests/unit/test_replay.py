"""`finserve audit replay` on records of the current format and of the one before it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from serving import audit
from serving.dataplane import decode_v2, rows
from serving.protocol.v2 import InferenceRequest
from serving.replay import replay
from serving.runtime import Batch, ModelRunner, TaskProcessing
from serving.tasks import get_task
from tests.conftest import golden


def _answer(store: Any, version: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fraud's raw golden batch and the outputs the pipeline gives it, in process."""
    task = get_task("fraud")
    raw = decode_v2(InferenceRequest.model_validate(golden("fraud_v2_request.json")), task)
    steps = TaskProcessing(store, "fraud", "fraud", [version])
    runner = ModelRunner(store, "fraud", "fraud", [version])
    runner.load_all()
    batch = steps.preprocess(version, raw)
    scores = runner.predict_batch([(version, batch.data)])[0]
    return raw, steps.postprocess(version, Batch(scores, batch.context), {})


def _write(folder: Path, request_id: str, outputs: Any, fmt: int, store: Any) -> None:
    """One sealed record of ``fmt`` holding ``outputs``, as that format's writer wrote it."""
    raw, _ = _answer(store, "1")
    inputs = {"name": "transaction", "data": audit.recorded(raw), "tokenized": False}
    body = {**audit.decision_record(
        request_id=request_id, key_id=None, model="fraud", version="1",
        artifact_sha256=store.manifest("fraud", "1").artifact_sha256, route="v2",
        inputs=inputs, outputs=outputs, latency_ms=1.0),
        "format": fmt, "chain": "c1", "seq": 0, "prev": audit.GENESIS}
    body["hash"] = hashlib.sha256(audit.CANONICAL[fmt](body)).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decisions-c1-00000.jsonl").write_text(json.dumps(body) + "\n")


def test_format_3_records_hold_output_columns_and_replay(tiny_store, tmp_path):
    _, outputs = _answer(tiny_store, "1")
    columns = audit.recorded_outputs(outputs)
    assert set(columns) == set(outputs)
    assert all(len(values) == len(outputs["decision"]) for values in columns.values())
    assert columns["reason_codes"] == outputs["reason_codes"].tolist()  # '' padding kept
    _write(tmp_path / "t3", "r3", columns, 3, tiny_store)
    assert audit.verify(str(tmp_path / "t3")).ok
    result = replay(str(tmp_path / "t3"), "r3", tiny_store)
    assert result["matches"], result["differences"]

    columns["decision"][0] = "review" if columns["decision"][0] != "review" else "approve"
    _write(tmp_path / "t3x", "r3", columns, 3, tiny_store)
    result = replay(str(tmp_path / "t3x"), "r3", tiny_store)
    assert not result["matches"]
    assert [d.split(":")[0] for d in result["differences"]] == ["example 0 decision"]


def test_format_2_records_of_one_dict_per_example_still_replay(tiny_store, tmp_path):
    _, outputs = _answer(tiny_store, "1")
    _write(tmp_path / "t2", "r2", rows(outputs), 2, tiny_store)  # ragged reasons, no ''
    assert audit.verify(str(tmp_path / "t2")).ok
    result = replay(str(tmp_path / "t2"), "r2", tiny_store)
    assert result["matches"], result["differences"]

    altered = rows(outputs)
    altered[1]["fraud_probability"] += 0.25
    _write(tmp_path / "t2x", "r2", altered, 2, tiny_store)
    result = replay(str(tmp_path / "t2x"), "r2", tiny_store)
    assert not result["matches"]
    assert [d.split(":")[0] for d in result["differences"]] == ["example 1 fraud_probability"]


def test_format_4_records_leave_derived_outputs_out_and_replay(tiny_store, tmp_path):
    """The current writer: a chained, authenticated record without the reason statements
    (they follow from the codes); replay compares what was recorded."""
    import asyncio

    raw, outputs = _answer(tiny_store, "1")
    keys = audit.TrailKeys.from_secret(b"k" * 32)
    record = audit.decision_record(
        request_id="r4", key_id=None, model="fraud", version="1",
        artifact_sha256=tiny_store.manifest("fraud", "1").artifact_sha256, route="v2",
        inputs={"name": "features", "data": audit.recorded(raw), "tokenized": []},
        outputs=audit.recorded_outputs(outputs, derived=("reasons",)), latency_ms=1.0)
    trail = audit.Trail(audit.JsonlSink(tmp_path / "t4", "c4"), keys, "c4")
    sealed = asyncio.run(trail.append(record))
    assert "reasons" not in sealed["outputs"] and sealed["format"] == 4
    result = replay(str(tmp_path / "t4"), "c4:0", tiny_store)
    assert result["matches"], result["differences"]
    assert result["decision_id"] == "c4:0" and result["request_id"] == "r4"
