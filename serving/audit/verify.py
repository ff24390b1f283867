"""Reading a trail back and proving it whole: ``verify``, ``find`` and the readers.

With only the trail's public key, ``verify`` finds an altered record (its hash), a removed
or reordered one (``seq`` and ``prev``), records cut off a chain's end or a whole chain
deleted (its signed checkpoints name records that are not there), a chain FinServe never
wrote (no signed checkpoint) and a forged checkpoint (its signature). Records written
after a chain's last checkpoint are anchored by their ``mac`` alone, which only a holder
of the trail key can check (``trail_key``).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from serving.audit.keys import TrailKeys, public_hex
from serving.audit.records import GENESIS, canonical, decision_id, record_hash
from serving.audit.sinks import CHECKPOINTS, Line, read_lines

Chains = dict[str, list[dict[str, Any]]]


@dataclass
class Verification:
    records: int = 0
    chains: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse(line: Line) -> dict[str, Any] | None:
    try:
        value = orjson.loads(line.data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def read_records(location: str, kind: str | None = "decision") -> Iterator[dict[str, Any]]:
    """Every readable record (of ``kind``; None: all) in stored order."""
    for line in read_lines(location):
        record = parse(line)
        if record is not None and (kind is None or record.get("kind", "decision") == kind):
            yield record


def verify(location: str, checkpoints: str | None = None, public_key: Ed25519PublicKey
           | None = None, trail_key: bytes | None = None) -> Verification:
    """Check every chain under ``location`` (all formats) against itself and, for format
    4, against the signed checkpoints at ``checkpoints``."""
    report = Verification()
    chains = _read_chains(location, report)
    keys = TrailKeys.from_secret(trail_key) if trail_key else None
    for chain, records in chains.items():
        _check_links(chain, records, keys, report)
    signed = [c for c in chains.values() if c[0].get("format", 1) >= 4]
    legacy = sum(len(c) for c in chains.values()) - sum(len(c) for c in signed)
    if legacy:
        report.notes.append(f"{legacy} records in formats 1-3: hash-chained, not signed")
    if signed or checkpoints:
        if public_key is None:
            report.problems.append("no public key given: the signed checkpoints cannot be "
                                   "checked (finserve audit public-key)")
        else:
            marks = _read_checkpoints(checkpoints or location, public_key, report)
            _check_anchors(chains, marks, keys is not None, report)
    return report


def _read_chains(location: str, report: Verification) -> Chains:
    chains: Chains = {}
    pending_torn: Line | None = None
    for line in read_lines(location):
        if pending_torn is not None:  # a torn line followed by more: not a crashed write
            report.problems.append(f"unreadable line at {pending_torn.where}")
            pending_torn = None
        record = parse(line)
        if record is None:
            if line.complete:
                report.problems.append(f"unreadable line at {line.where}")
            else:
                pending_torn = line
            continue
        report.records += 1
        chains.setdefault(str(record.get("chain", "?")), []).append(record)
    if pending_torn is not None:
        report.notes.append(f"torn last line at {pending_torn.where}: a write that failed "
                            "and was never acknowledged")
    report.chains = len(chains)
    return chains


def _check_links(chain: str, records: list[dict[str, Any]], keys: TrailKeys | None,
                 report: Verification) -> None:
    """Hashes, contiguous sequence numbers and links; macs when the trail key is given."""
    prev, expected = GENESIS, 0
    for record in records:
        where = f"chain {chain} record {record.get('seq')} ({record.get('request_id')})"
        if record.get("seq") != expected:
            report.problems.append(
                f"{where}: expected record {expected} (removed or reordered record)")
        if record_hash(record) != record.get("hash"):
            report.problems.append(f"{where}: hash mismatch (record altered)")
        if record.get("prev") != prev:
            report.problems.append(f"{where}: does not follow the previous record")
        if keys is not None and record.get("format", 1) >= 4 and not hmac.compare_digest(
                keys.mac(str(record.get("hash"))), str(record.get("mac"))):
            report.problems.append(f"{where}: mac mismatch (not written with the trail key)")
        prev = record.get("hash", "")
        seq = record.get("seq")
        expected = (seq if isinstance(seq, int) else expected) + 1


def _read_checkpoints(location: str, public_key: Ed25519PublicKey,
                      report: Verification) -> dict[str, dict[int, str]]:
    """Checkpoints whose signature holds: chain → {seq: head hash}."""
    marks: dict[str, dict[int, str]] = {}
    expected_key = public_hex(public_key)
    for line in read_lines(location, CHECKPOINTS):
        mark = parse(line)
        if mark is None or mark.get("kind") != "checkpoint":
            if line.complete:
                report.problems.append(f"unreadable checkpoint at {line.where}")
            continue
        body = {k: v for k, v in mark.items() if k != "signature"}
        try:
            if mark.get("public_key") != expected_key:
                raise InvalidSignature
            public_key.verify(bytes.fromhex(str(mark.get("signature"))), canonical(body))
        except (InvalidSignature, ValueError):
            report.problems.append(f"checkpoint at {line.where}: not signed by this trail's "
                                   "key (forged)")
            continue
        report.checkpoints += 1
        marks.setdefault(str(mark["chain"]), {})[int(mark["seq"])] = str(mark["hash"])
    return marks


def _check_anchors(chains: Chains, marks: dict[str, dict[int, str]], macs_checked: bool,
                   report: Verification) -> None:
    """Each chain against its checkpoints: foreign chains, deleted chains, truncation,
    re-chained edits; and how many records only their mac anchors."""
    for chain, records in chains.items():
        if records[0].get("format", 1) < 4:
            continue
        if chain not in marks:
            report.problems.append(f"chain {chain}: no signed checkpoint (a chain FinServe "
                                   f"did not write, {len(records)} records)")
            continue
        by_seq = {r.get("seq"): r for r in records}
        last = max(r.get("seq", -1) for r in records if isinstance(r.get("seq"), int))
        for seq, head in sorted(marks[chain].items()):
            if seq < 0:
                continue
            if seq not in by_seq:
                report.problems.append(f"chain {chain}: records {last + 1}-{seq} missing "
                                       f"(truncated; a checkpoint names record {seq})")
            elif by_seq[seq].get("hash") != head:
                report.problems.append(f"chain {chain} record {seq}: differs from its signed "
                                       "checkpoint (records altered and re-chained)")
        anchored = max(marks[chain])
        if last > anchored:
            how = "their macs checked" if macs_checked else "check with the trail key"
            report.notes.append(f"chain {chain}: records {anchored + 1}-{last} follow the "
                                f"last checkpoint ({how})")
    for chain in sorted(set(marks) - set(chains)):
        if max(marks[chain]) >= 0:
            report.problems.append(f"chain {chain}: all {max(marks[chain]) + 1} records "
                                   "missing (the chain was deleted)")


def find(location: str, wanted: str) -> dict[str, Any]:
    """The decision with FinServe's id ``chain:seq``, or the one decision with a request
    id; a request id a client reused names several, and the error lists their ids."""
    matches = [r for r in read_records(location)
               if decision_id(r) == wanted or r.get("request_id") == wanted]
    if not matches:
        raise KeyError(f"no decision record for request id '{wanted}' in {location}")
    exact = [r for r in matches if decision_id(r) == wanted]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    ids = ", ".join(decision_id(r) for r in matches[:20])
    raise LookupError(f"request id '{wanted}' names {len(matches)} decisions (a client "
                      f"reused it); replay one by its decision id: {ids}")
