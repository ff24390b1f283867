"""The decision trail on its own: chaining, group commit, failures, keys, formats, and
``verify`` against each way of tampering an auditor would try."""

import asyncio
import gzip
import hashlib
import json
import stat
import threading

import numpy as np
import pytest

from serving import audit
from serving.audit import keys as trail_keys
from serving.audit.records import canonical_v1

SECRET = b"a-test-trail-key-of-32-characters!"
KEYS = audit.TrailKeys.from_secret(SECRET)
PUBLIC = KEYS.signing_key.public_key()


def _record(i: int, **extra):
    return audit.decision_record(
        request_id=f"r{i}", key_id="k", model="fraud", version="1", artifact_sha256="ab",
        route="v2", inputs={"data": [[i]]}, outputs={"decision": ["block"], "p": [i / 10]},
        latency_ms=1.0, **extra)


def _trail(tmp_path, chain="c1", rotate_bytes=1 << 20, sink=None, **options):
    sink = sink or audit.JsonlSink(tmp_path / "trail", chain, rotate_bytes)
    marks = audit.JsonlSink(tmp_path / "cp", chain, prefix="checkpoints")
    return audit.Trail(sink, KEYS, chain, checkpoints=marks, **options)


def _write(tmp_path, n=5, chain="c1", rotate_bytes=1 << 20, anchor=True):
    async def go():
        trail = _trail(tmp_path, chain, rotate_bytes)
        for i in range(n):
            await trail.append(_record(i))
        if anchor:
            await trail.write_checkpoint()
    asyncio.run(go())


def _verify(tmp_path, trail_key=None):
    return audit.verify(str(tmp_path / "trail"), str(tmp_path / "cp"), PUBLIC, trail_key)


def _lines(tmp_path):
    files = sorted((tmp_path / "trail").glob("decisions-*.jsonl"))
    return files, [line for f in files for line in f.read_text().splitlines()]


def _rewrite(tmp_path, lines, chain="c1"):
    for f in (tmp_path / "trail").glob(f"decisions-{chain}-*"):
        f.unlink()
    (tmp_path / "trail" / f"decisions-{chain}-00000.jsonl").write_text("\n".join(lines) + "\n")


def _rechain(records):
    """What an attacker without the trail key can do: recompute every hash and link."""
    prev, lines = audit.GENESIS, []
    for record in records:
        body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
        body["prev"] = prev
        prev = hashlib.sha256(audit.canonical(body)).hexdigest()
        lines.append(json.dumps({**body, "hash": prev, "mac": record["mac"]}))
    return lines


def test_a_complete_trail_verifies_rotates_and_compresses_closed_segments(tmp_path):
    _write(tmp_path, n=40, rotate_bytes=2000)
    for _ in range(100):  # closed segments are compressed in the background
        if not len(list((tmp_path / "trail").glob("*.jsonl"))) > 1:
            break
        threading.Event().wait(0.05)
    packed = sorted((tmp_path / "trail").glob("decisions-c1-*.jsonl.gz"))
    assert packed and len(list((tmp_path / "trail").glob("*.jsonl"))) == 1
    assert gzip.decompress(packed[0].read_bytes()).startswith(b'{"artifact_sha256"')
    report = _verify(tmp_path, SECRET)
    assert report.ok and report.records == 40 and report.chains == 1, report.problems
    assert [r["seq"] for r in audit.read_records(str(tmp_path / "trail"))] == list(range(40))
    assert report.checkpoints == 2 and not report.notes  # opened, and the last record


def test_trail_files_and_folders_are_owner_only(tmp_path):
    _write(tmp_path, n=2)
    for path in [tmp_path / "trail", *(tmp_path / "trail").iterdir(), *(tmp_path / "cp").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_concurrent_records_share_writes_and_all_become_durable(tmp_path):
    writes = []

    class Counting(audit.JsonlSink):
        def write(self, lines):
            writes.append(len(lines))
            super().write(lines)

    async def go():
        trail = _trail(tmp_path, sink=Counting(tmp_path / "trail", "c1"))
        sealed = await asyncio.gather(*(trail.append(_record(i)) for i in range(50)))
        await trail.write_checkpoint()
        return sealed

    sealed = asyncio.run(go())
    assert sum(writes) == 50 and len(writes) < 50  # group commit
    assert sorted(r["seq"] for r in sealed) == list(range(50))
    assert _verify(tmp_path).ok


def test_a_waiter_that_goes_away_does_not_stall_the_others(tmp_path):
    """A client that disconnects cancels its wait; the records around it still become
    durable and every other waiter is answered (the trail never hangs)."""
    async def go():
        trail = _trail(tmp_path)
        waits = [asyncio.ensure_future(trail.append(_record(i))) for i in range(20)]
        await asyncio.sleep(0)  # all queued in one group
        waits[3].cancel()
        done = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 10)
        later = await asyncio.wait_for(trail.append(_record(20)), 10)
        await trail.write_checkpoint()
        return done, later

    done, later = asyncio.run(go())
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(r, dict) for i, r in enumerate(done) if i != 3)
    assert later["seq"] == 20
    report = _verify(tmp_path)
    assert report.ok and report.records == 21  # the cancelled one's decision is kept too


# --- tampering, as an attacker who can write the trail but holds no key would ---------------
def test_an_altered_record_is_detected(tmp_path):
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    record = json.loads(lines[2])
    record["outputs"]["decision"] = ["approve"]
    lines[2] = json.dumps(record)
    _rewrite(tmp_path, lines)
    report = _verify(tmp_path)
    assert not report.ok and any("altered" in p and "r2" in p for p in report.problems)


def test_a_decision_rewritten_and_rechained_is_detected_by_the_public_key_alone(tmp_path):
    """block → approve, every later hash recomputed: the chain links, but its head no longer
    matches the signed checkpoint."""
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    records = [json.loads(x) for x in lines]
    records[1]["outputs"]["decision"] = ["approve"]
    _rewrite(tmp_path, _rechain(records))
    report = _verify(tmp_path)
    assert report.problems == [
        "chain c1 record 4: differs from its signed checkpoint (records altered and re-chained)"]


def test_an_edit_after_the_last_checkpoint_is_caught_by_the_trail_key(tmp_path):
    _write(tmp_path, anchor=False)  # only the opening checkpoint: every record is the tail
    _, lines = _lines(tmp_path)
    records = [json.loads(x) for x in lines]
    records[3]["outputs"]["decision"] = ["approve"]
    _rewrite(tmp_path, _rechain(records))
    public_only = _verify(tmp_path)
    assert public_only.ok and "records 0-4 follow the last checkpoint" in public_only.notes[0]
    report = _verify(tmp_path, SECRET)
    assert [p.split(":")[0] for p in report.problems] == [
        "chain c1 record 3 (r3)", "chain c1 record 4 (r4)"]
    assert all("mac mismatch" in p for p in report.problems)


def test_records_cut_off_the_end_are_detected(tmp_path):
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    _rewrite(tmp_path, lines[:3])
    assert _verify(tmp_path).problems == [
        "chain c1: records 3-4 missing (truncated; a checkpoint names record 4)"]


def test_a_deleted_chain_is_detected(tmp_path):
    _write(tmp_path, chain="c1")
    _write(tmp_path, chain="c2")
    for f in (tmp_path / "trail").glob("decisions-c2-*"):
        f.unlink()
    assert _verify(tmp_path).problems == [
        "chain c2: all 5 records missing (the chain was deleted)"]


def test_a_removed_or_reordered_record_is_detected(tmp_path):
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    _rewrite(tmp_path, lines[:2] + lines[3:])
    assert any("removed" in p for p in _verify(tmp_path).problems)
    lines[1], lines[2] = lines[2], lines[1]
    _rewrite(tmp_path, lines)
    assert not _verify(tmp_path).ok


def test_a_made_up_chain_and_a_forged_checkpoint_are_detected(tmp_path):
    _write(tmp_path)
    _, lines = _lines(tmp_path)
    foreign = [json.loads(x) for x in lines]
    for r in foreign:
        r["chain"] = "f00"
    _rewrite(tmp_path, _rechain(foreign), chain="f00")
    assert _verify(tmp_path).problems == [
        "chain f00: no signed checkpoint (a chain FinServe did not write, 5 records)"]
    other = audit.TrailKeys.from_secret(b"an-attacker-s-own-key-of-32-chars!")
    forged = audit.trail.checkpoint(other, "f00", 4, json.loads(_rechain(foreign)[-1])["hash"])
    forged["public_key"] = KEYS.public_hex  # claims to be ours; the signature says otherwise
    (tmp_path / "cp" / "checkpoints-f00-00000.jsonl").write_bytes(audit.canonical(forged) + b"\n")
    problems = _verify(tmp_path).problems
    assert any("not signed by this trail's key (forged)" in p for p in problems)
    assert any("chain f00: no signed checkpoint" in p for p in problems)


def test_verify_without_the_public_key_says_it_cannot_check_checkpoints(tmp_path):
    _write(tmp_path)
    report = audit.verify(str(tmp_path / "trail"), str(tmp_path / "cp"))
    assert not report.ok and "no public key given" in report.problems[0]


# --- failures ---------------------------------------------------------------------------
class FailingSink(audit.JsonlSink):
    """A real segment file whose writes fail after part of the batch reached it (a disk
    that fills mid-write)."""

    fail = False

    def write(self, lines):
        if not self.fail:
            return super().write(lines)
        f = self._open()
        start = f.tell()
        f.write(lines[0][:20])
        f.flush()
        self._undo(start)
        raise OSError(28, "No space left on device")


def test_a_failed_write_is_a_503_and_the_chain_stays_verifiable(tmp_path):
    sink = FailingSink(tmp_path / "trail", "c1")

    async def go():
        trail = _trail(tmp_path, sink=sink)
        await trail.append(_record(0))
        sink.fail = True
        with pytest.raises(audit.TrailUnavailable) as info:
            await asyncio.gather(*(trail.append(_record(i)) for i in (1, 2)))
        sink.fail = False
        after = await trail.append(_record(3))
        await trail.write_checkpoint()
        return info.value, after

    error, after = asyncio.run(go())
    assert error.status_code == 503 and after["seq"] == 1  # the refused ones gave it back
    report = _verify(tmp_path, SECRET)
    assert report.ok and report.records == 2, report.problems


def test_a_torn_last_line_is_a_note_and_a_torn_line_inside_a_problem(tmp_path):
    _write(tmp_path, n=3)
    _, lines = _lines(tmp_path)
    path = tmp_path / "trail" / "decisions-c1-00000.jsonl"
    path.write_text("\n".join(lines) + "\n" + lines[0][:30])  # a crash mid-write, never acked
    report = _verify(tmp_path)
    assert report.ok and any("torn last line" in n for n in report.notes)
    path.write_text(lines[0] + "\n" + lines[1][:30] + "\n" + lines[2] + "\n")
    assert any("unreadable line" in p for p in _verify(tmp_path).problems)


def test_an_unwritable_checkpoint_place_refuses_the_first_answer(tmp_path):
    class Broken:
        def write(self, lines):
            raise OSError("read-only file system")

    async def go():
        trail = audit.Trail(audit.JsonlSink(tmp_path / "trail", "c1"), KEYS, "c1",
                            checkpoints=Broken())
        await trail.append(_record(1))

    with pytest.raises(audit.TrailUnavailable, match="first checkpoint"):
        asyncio.run(go())
    assert not list((tmp_path / "trail").glob("*.jsonl")) or not _lines(tmp_path)[1]


def test_a_value_the_format_cannot_hold_refuses_the_answer_without_a_gap(tmp_path):
    async def go():
        trail = _trail(tmp_path)
        with pytest.raises(audit.TrailUnavailable):
            await trail.append({**_record(0), "parameters": {"n": 2**70}})
        sealed = await trail.append(_record(1))
        await trail.write_checkpoint()
        return sealed

    assert asyncio.run(go())["seq"] == 0  # nothing was sealed for the refused one
    assert _verify(tmp_path).ok


# --- keys -----------------------------------------------------------------------------------
def test_a_key_file_is_created_whole_owner_only_and_shared_by_racing_writers(tmp_path):
    path = tmp_path / "keys" / "token.key"
    found: list[bytes] = []
    threads = [threading.Thread(target=lambda: found.append(
        trail_keys.read_or_create_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(found)) == 1 and len(found[0]) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["token.key"]  # no temporary left


def test_an_empty_or_short_key_is_refused_not_used(tmp_path, monkeypatch):
    path = tmp_path / "token.key"
    path.write_text("")
    with pytest.raises(trail_keys.TrailKeyError, match="at least 32"):
        trail_keys.read_or_create_key(path)
    monkeypatch.setenv("FINSERVE_TRAIL_KEY", "short")
    with pytest.raises(trail_keys.TrailKeyError, match="FINSERVE_TRAIL_KEY"):
        trail_keys.load_key("FINSERVE_TRAIL_KEY", str(tmp_path), "trail.key")


def test_without_a_key_folder_the_keys_must_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("FINSERVE_TOKEN_KEY", raising=False)
    with pytest.raises(trail_keys.TrailKeyError, match="set FINSERVE_TOKEN_KEY"):
        trail_keys.load_key("FINSERVE_TOKEN_KEY", None, "token.key")
    monkeypatch.setenv("FINSERVE_TOKEN_KEY", "x" * 48)
    assert trail_keys.load_key("FINSERVE_TOKEN_KEY", None, "token.key") == b"x" * 48


def test_personal_values_are_tokenized_stably_and_unreadably():
    tokens = audit.Tokenizer(b"k" * 32)
    assert tokens.token("cust-42") == tokens.token("cust-42")
    assert tokens.token("cust-42") != audit.Tokenizer(b"o" * 32).token("cust-42")
    assert "cust-42" not in tokens.token("cust-42")
    # tokens never change with the record format: HMAC over format 1's canonical JSON
    assert tokens.token("c") == "tok_" + __import__("hmac").new(
        b"k" * 32, canonical_v1("c"), "sha256").hexdigest()[:32]


def test_public_key_round_trip(tmp_path):
    (tmp_path / "trail.pub").write_text(KEYS.public_hex + "\n")
    assert audit.keys.public_hex(audit.load_public_key(str(tmp_path / "trail.pub"))) == \
        KEYS.public_hex
    with pytest.raises(trail_keys.TrailKeyError):
        audit.load_public_key("not-a-key")


# --- formats ------------------------------------------------------------------------------
def test_older_formats_still_verify_and_their_alterations_are_still_caught(tmp_path):
    """Format 1 (stdlib JSON, no ``format`` field) and format 3 (columns, no mac) beside
    format 4: all verify; an altered format-1 record is still caught."""
    old = tmp_path / "trail"
    old.mkdir()
    prev, lines = audit.GENESIS, []
    for seq in range(3):  # what the format-1 writer produced
        body = {**_record(seq), "inputs": {"data": [[1e-05 * seq]]}, "chain": "v1",
                "seq": seq, "prev": prev}
        prev = hashlib.sha256(canonical_v1(body)).hexdigest()
        lines.append(json.dumps({**body, "hash": prev}))
    (old / "decisions-v1-00000.jsonl").write_text("\n".join(lines) + "\n")
    body = {**_record(0), "format": 3, "chain": "v3", "seq": 0, "prev": audit.GENESIS}
    v3 = {**body, "hash": hashlib.sha256(audit.canonical(body)).hexdigest()}
    (old / "decisions-v3-00000.jsonl").write_bytes(audit.canonical(v3) + b"\n")
    _write(tmp_path, n=2)
    report = _verify(tmp_path)
    assert report.ok and report.records == 6 and report.chains == 3, report.problems
    assert "4 records in formats 1-3" in report.notes[0]
    new = [r for r in audit.read_records(str(old)) if r["chain"] == "c1"]
    assert [r["format"] for r in new] == [audit.RECORD_FORMAT] * 2 == [4, 4]

    altered = json.loads(lines[1])
    altered["outputs"] = [{"p": 0.5}]
    lines[1] = json.dumps(altered)
    (old / "decisions-v1-00000.jsonl").write_text("\n".join(lines) + "\n")
    assert any("v1 record 1" in p and "altered" in p for p in _verify(tmp_path).problems)


def test_an_unknown_record_format_is_a_problem_not_a_crash(tmp_path):
    _write(tmp_path, n=2)
    _, lines = _lines(tmp_path)
    for bad in (99, True, [2]):
        record = json.loads(lines[1])
        record["format"] = bad
        _rewrite(tmp_path, [lines[0], json.dumps(record)])
        problems = _verify(tmp_path).problems
        assert "chain c1 record 1 (r1): hash mismatch (record altered)" in problems


def test_a_format_4_record_is_compact(tmp_path):
    """No input digest beside the inputs, derived outputs left out, columns not rows."""
    outputs = {"decision": np.array(["block"], object), "reason_codes": np.array([["F09"]],
               object), "reasons": np.array([["Amount far above usual"]], object)}
    record = audit.decision_record(
        request_id="r", key_id=None, model="fraud", version="1", artifact_sha256="ab",
        route="task", inputs={"data": [[1.0]]}, latency_ms=1.0,
        outputs=audit.recorded_outputs(outputs, derived=("reasons",)))
    assert set(record["outputs"]) == {"decision", "reason_codes"}
    assert "input_sha256" not in record


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


def test_a_reused_request_id_names_several_decisions_and_each_is_found_by_its_id(tmp_path):
    async def go():
        trail = _trail(tmp_path)
        for _ in range(2):
            await trail.append({**_record(0), "request_id": "same"})
    asyncio.run(go())
    where = str(tmp_path / "trail")
    with pytest.raises(LookupError, match="c1:0, c1:1"):
        audit.find(where, "same")
    assert audit.find(where, "c1:1")["seq"] == 1
    with pytest.raises(KeyError):
        audit.find(where, "nope")


def test_checkpoints_follow_a_moving_head_every_interval(tmp_path):
    async def go():
        trail = _trail(tmp_path, checkpoint_interval_s=0.05)
        for i in range(3):
            await trail.append(_record(i))
            await asyncio.sleep(0.15)
    asyncio.run(go())
    report = _verify(tmp_path)
    assert report.ok and report.checkpoints == 4 and not report.notes  # open + one per move


def _recorder(tmp_path):
    from serving.config import Audit

    return audit.Recorder(Audit(location=str(tmp_path / "trail"), keys_dir=str(tmp_path / "k")))


def test_the_recorder_keeps_its_keys_apart_from_the_trail_and_tokenizes_named_columns(
        tmp_path, monkeypatch):
    from serving.tasks.fraud import FraudTask

    monkeypatch.delenv("FINSERVE_TOKEN_KEY", raising=False)
    monkeypatch.delenv("FINSERVE_TRAIL_KEY", raising=False)
    (tmp_path / "trail").mkdir()
    (tmp_path / "trail" / ".token-key").write_text("t" * 64)  # before format 4: kept
    recorder = _recorder(tmp_path)
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "token.key", "trail.key", "trail.pub"]
    assert recorder.tokenizer.key == b"t" * 64  # tokens stay what they were

    class Personal(FraudTask):
        personal_fields = ("amount", "account_age_days")

    raw = np.array([[950.0, 3, 0.85, 1200, 6, 0, 1, 20, 7.5]], np.float32)
    inputs = recorder.inputs(Personal(), raw)
    assert inputs["tokenized"] == ["amount", "account_age_days"]
    row = inputs["data"][0]
    assert row[0].startswith("tok_") and row[7].startswith("tok_") and row[2] == 0.85
    assert recorder.inputs(FraudTask(), raw)["tokenized"] == []


def test_a_cluster_recorder_without_keys_in_its_environment_does_not_start(
        tmp_path, monkeypatch):
    from serving.config import Audit

    monkeypatch.delenv("FINSERVE_TOKEN_KEY", raising=False)
    monkeypatch.setenv("FINSERVE_TRAIL_KEY", "x" * 40)
    with pytest.raises(ValueError, match="set FINSERVE_TOKEN_KEY"):
        audit.Recorder(Audit(location=str(tmp_path), keys_dir=None))


def test_a_record_alone_in_its_process_is_written_without_a_thread_and_a_busy_one_with(
        tmp_path, monkeypatch):
    """``alone``: one request in flight, so its record is committed in its own task and on
    the event loop; otherwise records go through the writer thread and group commit."""
    hops = []
    real = asyncio.to_thread

    async def counting(fn, *args):
        hops.append(getattr(fn.__self__, "prefix", None))  # a sink's write: which sink
        return await real(fn, *args)

    monkeypatch.setattr(audit.trail.asyncio, "to_thread", counting)
    busy = {"now": False}

    async def go():
        trail = _trail(tmp_path, alone=lambda: not busy["now"])
        await trail.append(_record(0))  # opens the chain (a checkpoint, in the thread)
        opened = len(hops)
        alone = [await trail.append(_record(i)) for i in range(1, 4)]
        inline = len(hops) - opened
        busy["now"] = True
        grouped = await asyncio.gather(*(trail.append(_record(i)) for i in range(4, 10)))
        await trail.write_checkpoint()
        return inline, alone + grouped

    inline, sealed = asyncio.run(go())
    assert inline == 0  # three records alone: no thread hop
    assert "decisions" in hops  # the busy ones: through the writer thread
    assert [r["seq"] for r in sealed] == list(range(1, 10))
    report = _verify(tmp_path, SECRET)
    assert report.ok and report.records == 10, report.problems


def test_a_failed_write_alone_is_a_503_and_gives_its_place_back(tmp_path):
    sink = FailingSink(tmp_path / "trail", "c1")

    async def go():
        trail = _trail(tmp_path, sink=sink, alone=lambda: True)
        await trail.append(_record(0))
        sink.fail = True
        with pytest.raises(audit.TrailUnavailable):
            await trail.append(_record(1))
        sink.fail = False
        after = await trail.append(_record(2))
        await trail.write_checkpoint()
        return after

    assert asyncio.run(go())["seq"] == 1
    report = _verify(tmp_path, SECRET)
    assert report.ok and report.records == 2, report.problems


def test_an_append_alone_waits_for_a_group_already_being_written(tmp_path):
    """A group is in the writer thread (slow disk) when a request alone in its process
    appends: its record is written after that group, never beside or before it."""
    state = {"alone": False}

    class Slow(audit.JsonlSink):
        def write(self, lines):
            if not state["alone"]:
                threading.Event().wait(0.05)
            super().write(lines)

    async def go():
        trail = _trail(tmp_path, sink=Slow(tmp_path / "trail", "c1"),
                       alone=lambda: state["alone"])
        await trail.append(_record(0))

        async def late():
            await asyncio.sleep(0)  # the first group's flush has started and is writing
            state["alone"] = True
            return await trail.append(_record(3))

        done = await asyncio.gather(trail.append(_record(1)), trail.append(_record(2)), late())
        await trail.write_checkpoint()
        return done

    asyncio.run(go())
    assert [r["seq"] for r in audit.read_records(str(tmp_path / "trail"))] == [0, 1, 2, 3]
    assert _verify(tmp_path, SECRET).ok
