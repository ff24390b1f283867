import asyncio
import hashlib
import json

import numpy as np
import pytest

from serving import audit


def _record(i: int, **extra):
    return audit.decision_record(
        request_id=f"r{i}", key_id="k", model="fraud", version="1", artifact_sha256="ab",
        route="v2", inputs={"data": [[i]]}, outputs=[{"p": i / 10}], latency_ms=1.0, **extra)


def _write(tmp_path, n=5, rotate_bytes=1 << 20):
    async def go():
        trail = audit.Trail(audit.JsonlSink(tmp_path, "c1", rotate_bytes), "c1")
        for i in range(n):
            await trail.append(_record(i))
    asyncio.run(go())


def _lines(tmp_path):
    files = sorted(tmp_path.glob("decisions-*.jsonl"))
    return files, [line for f in files for line in f.read_text().splitlines()]


def test_a_complete_trail_verifies_and_rotates(tmp_path):
    _write(tmp_path, n=40, rotate_bytes=2000)
    files, lines = _lines(tmp_path)
    assert len(files) > 1 and len(lines) == 40
    report = audit.verify(str(tmp_path))
    assert report.ok and report.records == 40 and report.chains == 1
    assert [json.loads(x)["seq"] for x in lines] == list(range(40))


def test_concurrent_records_share_writes_and_all_become_durable(tmp_path):
    writes = []

    class Counting(audit.JsonlSink):
        def write(self, lines):
            writes.append(len(lines))
            super().write(lines)

    async def go():
        trail = audit.Trail(Counting(tmp_path, "c1"), "c1")
        return await asyncio.gather(*(trail.append(_record(i)) for i in range(50)))

    sealed = asyncio.run(go())
    assert sum(writes) == 50 and len(writes) < 50  # group commit
    assert sorted(r["seq"] for r in sealed) == list(range(50))
    assert audit.verify(str(tmp_path)).ok


def test_a_waiter_that_goes_away_does_not_stall_the_others(tmp_path):
    """A client that disconnects cancels its wait; the records around it still become
    durable and every other waiter is answered (the trail never hangs)."""
    async def go():
        trail = audit.Trail(audit.JsonlSink(tmp_path, "c1"), "c1")
        waits = [asyncio.ensure_future(trail.append(_record(i))) for i in range(20)]
        await asyncio.sleep(0)  # all queued in one group
        waits[3].cancel()
        done = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 10)
        later = await asyncio.wait_for(trail.append(_record(20)), 10)
        return done, later

    done, later = asyncio.run(go())
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(r, dict) for i, r in enumerate(done) if i != 3)
    assert later["seq"] == 20
    report = audit.verify(str(tmp_path))
    assert report.ok and report.records == 21  # the cancelled one's decision is kept too


def _rewrite(tmp_path, lines):
    for f in tmp_path.glob("decisions-*.jsonl"):
        f.unlink()
    (tmp_path / "decisions-c1-00000.jsonl").write_text("\n".join(lines) + "\n")


def test_an_altered_record_is_detected(tmp_path):
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    record = json.loads(lines[2])
    record["outputs"] = [{"p": 0.0}]
    lines[2] = json.dumps(record)
    _rewrite(tmp_path, lines)
    report = audit.verify(str(tmp_path))
    assert not report.ok and any("altered" in p and "r2" in p for p in report.problems)


def test_a_removed_record_is_detected(tmp_path):
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    _rewrite(tmp_path, lines[:2] + lines[3:])
    report = audit.verify(str(tmp_path))
    assert not report.ok and any("removed" in p for p in report.problems)


def test_reordered_records_are_detected(tmp_path):
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(tmp_path, lines)
    assert not audit.verify(str(tmp_path)).ok


def test_a_sink_that_fails_refuses_the_answer():
    class Broken:
        def write(self, lines):
            raise OSError("disk full")

    async def go():
        trail = audit.Trail(Broken(), "c")
        await trail.append(_record(1))

    with pytest.raises(audit.TrailUnavailable) as info:
        asyncio.run(go())
    assert info.value.status_code == 503


def test_personal_values_are_tokenized_stably_and_unreadably(tmp_path):
    key = audit.token_key(str(tmp_path), "NO_SUCH_ENV_VAR_FOR_TEST")
    assert key == audit.token_key(str(tmp_path), "NO_SUCH_ENV_VAR_FOR_TEST")  # kept
    assert oct((tmp_path / ".token-key").stat().st_mode & 0o777) == "0o600"
    tokens = audit.Tokenizer(key)
    assert tokens.token("cust-42") == tokens.token("cust-42")
    assert tokens.token("cust-42") != audit.Tokenizer(b"other").token("cust-42")
    scrubbed = tokens.scrub([{"customer_id": "cust-42", "k": 5}], ("customer_id",))
    assert "cust-42" not in json.dumps(scrubbed) and scrubbed[0]["k"] == 5


def test_remote_trails_need_a_shared_key(monkeypatch):
    monkeypatch.delenv("FINSERVE_TOKEN_KEY", raising=False)
    with pytest.raises(ValueError, match="FINSERVE_TOKEN_KEY"):
        audit.token_key("s3://bucket/trail", "FINSERVE_TOKEN_KEY")
    monkeypatch.setenv("FINSERVE_TOKEN_KEY", "shared")
    assert audit.token_key("s3://bucket/trail", "FINSERVE_TOKEN_KEY") == b"shared"


def test_records_are_written_in_the_current_format_and_older_trails_still_verify(tmp_path):
    """Format 1 (stdlib JSON, no ``format`` field) was written before formats 2 and 3
    (orjson): a trail holding both kinds verifies, and an altered format-1 record is still
    caught. (tests/unit/test_replay.py has format 2 beside 3.)"""
    old = tmp_path / "old"
    old.mkdir()
    prev, lines = audit.GENESIS, []
    for seq in range(3):  # what the format-1 writer produced
        body = {**_record(seq), "inputs": {"data": [[1e-05 * seq]]}, "chain": "v1",
                "seq": seq, "prev": prev}
        prev = hashlib.sha256(audit.canonical_v1(body)).hexdigest()
        lines.append(json.dumps({**body, "hash": prev}))
    (old / "decisions-v1-00000.jsonl").write_text("\n".join(lines) + "\n")
    _write(old, n=2)  # a format-2 chain beside it
    report = audit.verify(str(old))
    assert report.ok and report.records == 5 and report.chains == 2, report.problems
    new = [r for r in audit.read_records(str(old)) if r["chain"] == "c1"]
    assert [r["format"] for r in new] == [audit.RECORD_FORMAT] * 2 == [3, 3]

    altered = json.loads(lines[1])
    altered["outputs"] = [{"p": 0.5}]
    lines[1] = json.dumps(altered)
    (old / "decisions-v1-00000.jsonl").write_text("\n".join(lines) + "\n")
    assert any("v1 seq 1" in p and "altered" in p for p in audit.verify(str(old)).problems)


def test_an_unknown_record_format_is_a_problem_not_a_crash(tmp_path):
    _write(tmp_path, n=2)
    _, lines = _lines(tmp_path)
    for bad in (99, True, [2]):
        record = json.loads(lines[1])
        record["format"] = bad
        _rewrite(tmp_path, [lines[0], json.dumps(record)])
        problems = audit.verify(str(tmp_path)).problems
        assert problems == [f"chain c1 seq 1 (r1): unknown record format {bad!r}"]


def test_float32_values_are_recorded_in_their_shortest_form_and_read_back_exactly():
    rng = np.random.default_rng(3)
    values = np.concatenate([
        np.array([0.3, 1e-05, 7.630131e-06, -7.0262058e13, 3.4e38, 1e-45, -0.0], np.float32),
        rng.normal(size=5000).astype(np.float32) * 10.0 ** rng.integers(-20, 20, 5000),
    ]).astype(np.float32).reshape(-1, 1)
    kept = audit.recorded(values)
    assert kept[0] == [0.3] and kept[1] == [1e-05]  # not 0.30000001192092896
    again = json.loads(audit.canonical({"data": kept}))["data"]
    assert np.array_equal(np.asarray(again, np.float32), values)
    # the canonical text is stable through a write and a read, as verify needs
    assert audit.canonical(json.loads(audit.canonical(kept))) == audit.canonical(kept)
    assert audit.recorded(np.array([[1, 2]], np.int64)) == [[1, 2]]


def test_a_value_the_format_cannot_hold_refuses_the_answer_without_a_gap(tmp_path):
    async def go():
        trail = audit.Trail(audit.JsonlSink(tmp_path, "c1"), "c1")
        with pytest.raises(audit.TrailUnavailable):
            await trail.append({**_record(0), "parameters": {"n": 2**70}})
        return await trail.append(_record(1))

    assert asyncio.run(go())["seq"] == 0  # nothing was sealed for the refused one
    assert audit.verify(str(tmp_path)).ok
