"""After the load, the replica loss and the barrage: one intact decision record per answered
prediction, none for a refused one; and on a copy of that trail, each way of tampering an
auditor would try is named by `verify` holding only the public key."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from serving.audit import TrailKeys, canonical, load_public_key, read_records, verify
from serving.audit.trail import checkpoint
from tests.reliability.load import Load, valid_calls

pytestmark = pytest.mark.reliability


def test_one_intact_decision_record_per_answered_prediction(base_url, ledger, trail):
    if not ledger.answered():  # run alone: answer something first
        with Load(base_url, valid_calls(), ledger, clients=4) as load:
            while load.tally.sent < 50:
                time.sleep(0.1)
    answered = ledger.answered()
    records = list(read_records(str(trail)))
    ours = Counter(r.get("request_id") for r in records
                   if str(r.get("request_id")).startswith(ledger.prefix))
    report = verify(str(trail), f"{trail}-checkpoints", public_key(trail))
    written = len(records) - ledger.baseline
    print(f"\n[reliability] decision trail: answered_2xx={len(answered)} "
          f"refused_or_lost={len(ledger.status) - len(answered)} records_written={written} "
          f"records_verified={report.records} chains={report.chains} "
          f"problems={len(report.problems)}")
    assert not [rid for rid, n in ours.items() if n > 1], "request ids recorded twice"
    assert not answered - set(ours), f"{len(answered - set(ours))} answers without a record"
    assert not set(ours) - answered, f"{len(set(ours) - answered)} records of refused requests"
    assert written == len(answered)
    assert report.ok, report.problems[:5]


def public_key(trail: Path):
    return load_public_key(f"{trail}-keys/trail.pub")


def _chain_files(folder: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("decisions-*.jsonl")):
        files.setdefault(path.name.split("-")[1], []).append(path)
    return files


def _rechained(lines: list[bytes], edit) -> list[bytes]:
    """Edit records and recompute every hash and link after them, as one without the trail
    key can (the macs stay the old ones)."""
    out, prev = [], None
    for line in lines:
        record = json.loads(line)
        edit(record)
        if prev is not None:
            record["prev"] = prev
        body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
        record["hash"] = prev = hashlib.sha256(canonical(body)).hexdigest()
        out.append(json.dumps(record).encode())
    return out


def _tamper_cases(chain: str) -> dict[str, tuple]:
    """name → (how to tamper the copy, the words verify's problem must hold)."""
    def cut_tail(folder, files):
        path = files[chain][-1]
        lines = path.read_bytes().splitlines()
        path.write_bytes(b"\n".join(lines[:-5]) + b"\n")

    def delete_chain(folder, files):
        for path in files[chain]:
            path.unlink()

    def block_to_approve(folder, files):
        path = files[chain][0]
        lines = path.read_bytes().splitlines()
        def edit(r):
            if r["seq"] == 1:
                r["latency_ms"] = 0.5  # any field: here the least suspicious one
        path.write_bytes(b"\n".join(_rechained(lines, edit)) + b"\n")

    def foreign_chain(folder, files):
        lines = files[chain][0].read_bytes().splitlines()[:3]
        def edit(r):
            r["chain"] = "f0f0f0f0f0f0"
        (folder / "decisions-f0f0f0f0f0f0-00000.jsonl").write_bytes(
            b"\n".join(_rechained(lines, edit)) + b"\n")

    def forged_checkpoint(folder, files):
        other = TrailKeys.from_secret(b"an attacker's key of 32 characters")
        mark = checkpoint(other, chain, 10**6, "0" * 64)
        marks = folder.parent / f"{folder.name}-checkpoints"
        with (marks / f"checkpoints-{chain}-00000.jsonl").open("ab") as f:
            f.write(canonical(mark) + b"\n")

    return {"truncated": (cut_tail, "missing (truncated"),
            "chain deleted": (delete_chain, "missing (the chain was deleted)"),
            "edited and re-chained": (block_to_approve, "differs from its signed checkpoint"),
            "foreign chain": (foreign_chain, "no signed checkpoint"),
            "forged checkpoint": (forged_checkpoint, "(forged)")}


def test_each_way_of_tampering_the_trail_is_named_with_only_the_public_key(
        base_url, ledger, trail, tmp_path):
    time.sleep(2.5)  # past the checkpoint interval: every chain's head is signed
    files = _chain_files(trail)
    chain = max(files, key=lambda c: sum(p.stat().st_size for p in files[c]))
    found = {}
    for name, (tamper, words) in _tamper_cases(chain).items():
        copy = tmp_path / name.replace(" ", "-") / "trail"
        shutil.copytree(trail, copy)
        shutil.copytree(f"{trail}-checkpoints", f"{copy}-checkpoints")
        tamper(copy, _chain_files(copy))
        started = time.perf_counter()
        report = verify(str(copy), f"{copy}-checkpoints", public_key(trail))
        found[name] = (report, time.perf_counter() - started)
        assert any(words in p for p in report.problems), (name, report.problems[:5])
    clean, _ = found["truncated"]
    seconds = max(t for _, t in found.values())
    print(f"\n[reliability] trail tampering: cases={len(found)} detected="
          f"{sum(not r.ok for r, _ in found.values())} records={clean.records} "
          f"chains={clean.chains} checkpoints={clean.checkpoints} "
          f"verify_s_max={seconds:.2f}")
