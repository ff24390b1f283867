"""The decision trail: one hash-chained record per answered prediction.

Each gateway replica writes its own chain (``chain`` id, ``seq`` from 0, ``prev`` = the
previous record's ``hash``; ``hash`` = sha256 over the canonical JSON of the rest, in the
record's ``format``), so
``verify`` finds an altered record (hash), a removed one (a gap in ``seq``) and a reordered
one (``prev`` mismatch). Personal fields are replaced by keyed-hash tokens before a record
is written. Writes are group-committed: concurrent requests share one write and fsync, and
each request returns only after its record is durable.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import fsspec
import numpy as np
import orjson

from serving.errors import FinServeError
from serving.store import utc_now

GENESIS = "0" * 64
TOKEN_PREFIX = "tok_"


class TrailUnavailable(FinServeError):
    """The decision record could not be written, so no answer is given (HTTP 503)."""

    status_code = 503
    headers = {"Retry-After": "1"}


#: the record format written now; ``verify`` reads every format in ``CANONICAL``.
#: 3: as 2, with ``outputs`` as columns (``{"name": [one value per example]}``, each output
#: tensor as the model gave it) instead of one dict per example: 64-row records are a
#: third smaller and five times cheaper to build (docs/benchmarks.md, row 28).
RECORD_FORMAT = 3


def canonical_v1(value: Any) -> bytes:
    """Format 1 (records without ``format``) and tokens: the standard library's JSON with
    sorted keys, compact separators, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical(value: Any) -> bytes:
    """Format 2: orjson with sorted keys (compact, UTF-8). The same text as format 1 except
    for number formatting (``1e-05`` is ``0.00001``), and six times faster on a 64-row
    record (docs/benchmarks.md)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


CANONICAL = {1: canonical_v1, 2: canonical, 3: canonical}


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def recorded(values: np.ndarray) -> list[Any]:
    """An array as a record holds it, as nested lists of its shape: float32 values in their
    shortest form (``0.3``, which reads back as the same float32, not
    ``0.30000001192092896``); strings as they are, with the '' that pads ragged rows."""
    if values.dtype == np.float32:
        return orjson.loads(orjson.dumps(np.ascontiguousarray(values),
                                         option=orjson.OPT_SERIALIZE_NUMPY))
    return values.tolist()


def recorded_outputs(outputs: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    """A format-3 record's ``outputs``: each output tensor by name, as ``recorded``."""
    return {name: recorded(values) for name, values in outputs.items()}


class Tokenizer:
    """Keyed hash (HMAC-SHA256) of personal values: stable per key, not reversible."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def token(self, value: Any) -> str:
        # tokens must not change with the record format: one customer, one token, always
        mac = hmac.new(self.key, canonical_v1(value), hashlib.sha256).hexdigest()[:32]
        return TOKEN_PREFIX + mac

    def scrub(self, records: list[dict[str, Any]], fields: tuple[str, ...]) -> list[dict]:
        return [{k: self.token(v) if k in fields else v for k, v in r.items()} for r in records]


class Sink(Protocol):
    def write(self, lines: list[bytes]) -> None: ...


class JsonlSink:
    """Append-only JSON lines in ``directory``, fsynced, rotated at ``rotate_bytes``."""

    def __init__(self, directory: str | Path, chain: str, rotate_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.chain = chain
        self.rotate_bytes = rotate_bytes
        self.segment = 0
        self._file: Any = None

    def _open(self) -> Any:
        if self._file is None or self._file.tell() >= self.rotate_bytes:
            if self._file is not None:
                self._file.close()
                self.segment += 1
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"decisions-{self.chain}-{self.segment:05d}.jsonl"
            self._file = path.open("ab")
        return self._file

    def write(self, lines: list[bytes]) -> None:
        f = self._open()
        f.write(b"".join(line + b"\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


class StdoutSink:
    """Records as JSON lines on stdout, for a log collector to ship."""

    def write(self, lines: list[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(line + b"\n" for line in lines))
        sys.stdout.flush()


class FsspecSink:
    """One object per group commit under an fsspec URI (object stores have no append)."""

    def __init__(self, uri: str, chain: str) -> None:
        self.fs, self.base = fsspec.core.url_to_fs(uri.rstrip("/"))
        self.chain = chain
        self.count = 0

    def write(self, lines: list[bytes]) -> None:
        path = f"{self.base}/decisions-{self.chain}-{self.count:09d}.jsonl"
        with self.fs.open(path, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        self.count += 1


def make_sink(target: str, chain: str, rotate_bytes: int = 64 << 20) -> Sink:
    """``stdout``, a local folder, or an fsspec URI such as ``s3://bucket/trail``."""
    if target == "stdout":
        return StdoutSink()
    if "://" in target and not target.startswith("file://"):
        return FsspecSink(target, chain)
    return JsonlSink(target.removeprefix("file://"), chain, rotate_bytes)


@dataclass
class Trail:
    """Builds chained records and group-commits them to a sink."""

    sink: Sink
    chain: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    seq: int = 0
    prev: str = GENESIS
    _pending: list[tuple[bytes, asyncio.Future[None]]] = field(default_factory=list)
    _flushing: asyncio.Task[None] | None = None

    def seal(self, record: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Give ``record`` its place in the chain and its hash (call in order); the sealed
        record and its line: the canonical JSON that was hashed, with the hash added."""
        record = {**record, "format": RECORD_FORMAT, "chain": self.chain, "seq": self.seq,
                  "prev": self.prev}
        body = canonical(record)
        record["hash"] = hashlib.sha256(body).hexdigest()
        self.seq += 1
        self.prev = record["hash"]
        return record, body[:-1] + b',"hash":"' + record["hash"].encode() + b'"}'

    async def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Seal and durably write ``record``; raises ``TrailUnavailable`` if it cannot."""
        try:
            sealed, line = self.seal(record)
        except TypeError as exc:  # a value the record format cannot hold (never sealed)
            raise TrailUnavailable(f"decision trail unavailable: {exc}") from exc
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((line, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await future
        return sealed

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.sink.write, [line for line, _ in batch])
            except Exception as exc:  # the disk is full, the bucket unreachable …
                error = TrailUnavailable(f"decision trail unavailable: {type(exc).__name__}")
                for _, future in batch:
                    if not future.done():  # a waiter may be gone (client disconnected)
                        future.set_exception(error)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)


def decision_record(
    *, request_id: str, key_id: str | None, model: str, version: str, artifact_sha256: str,
    route: str, inputs: Any, outputs: dict[str, list[Any]], latency_ms: float,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of one decision, before it is chained."""
    return {
        "request_id": request_id, "time": utc_now(), "key_id": key_id, "model": model,
        "version": version, "artifact_sha256": artifact_sha256, "route": route,
        "input_sha256": digest(inputs), "inputs": inputs, "parameters": parameters or {},
        "outputs": outputs, "latency_ms": round(latency_ms, 3),
    }


# --- reading and verifying ---------------------------------------------------------------
def read_records(location: str) -> Iterator[dict[str, Any]]:
    """Every record under a folder or fsspec URI, in file and line order."""
    fs, base = fsspec.core.url_to_fs(location.rstrip("/"))
    for path in sorted(fs.glob(f"{base}/decisions-*.jsonl")):
        with fs.open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        yield {"_corrupt": f"{path}:{number}"}


@dataclass
class Verification:
    records: int = 0
    chains: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(location: str) -> Verification:
    """Check every chain: hashes, contiguous sequence numbers and links."""
    report = Verification()
    chains: dict[str, list[dict[str, Any]]] = {}
    for record in read_records(location):
        report.records += 1
        if "_corrupt" in record:
            report.problems.append(f"unreadable line at {record['_corrupt']}")
            continue
        chains.setdefault(record.get("chain", "?"), []).append(record)
    report.chains = len(chains)
    for chain, records in chains.items():
        prev, expected_seq = GENESIS, 0
        for record in records:
            body = {k: v for k, v in record.items() if k != "hash"}
            where = f"chain {chain} seq {record.get('seq')} ({record.get('request_id')})"
            if record.get("seq") != expected_seq:
                report.problems.append(
                    f"{where}: expected seq {expected_seq} (removed or reordered record)")
            fmt = record.get("format", 1)
            encode = CANONICAL.get(fmt) if type(fmt) is int else None
            if encode is None:
                report.problems.append(f"{where}: unknown record format {fmt!r}")
            elif _sha256(encode, body) != record.get("hash"):
                report.problems.append(f"{where}: hash mismatch (record altered)")
            if record.get("prev") != prev:
                report.problems.append(f"{where}: does not follow the previous record")
            prev = record.get("hash", "")
            expected_seq = int(record.get("seq", expected_seq)) + 1
    return report


def _sha256(encode: Any, body: dict[str, Any]) -> str | None:
    try:
        return hashlib.sha256(encode(body)).hexdigest()
    except (TypeError, ValueError):  # a value its format cannot hold: altered
        return None


def find(location: str, request_id: str) -> dict[str, Any]:
    for record in read_records(location):
        if record.get("request_id") == request_id:
            return record
    raise KeyError(f"no decision record for request id '{request_id}' in {location}")


# --- what the gateway uses ------------------------------------------------------------------
def token_key(location: str, env_var: str) -> bytes:
    """The tokenizing key: from ``env_var``, else a key file kept beside a local trail."""
    value = os.environ.get(env_var)
    if value:
        return value.encode()
    if location == "stdout" or ("://" in location and not location.startswith("file://")):
        raise ValueError(f"set {env_var}: a trail at {location} needs a shared tokenizing key")
    path = Path(location.removeprefix("file://")) / ".token-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(32).hex().encode())
        os.close(fd)
    except FileExistsError:
        pass
    return path.read_bytes().strip()


class Recorder:
    """Decision records (chained, durable, before the answer) and shadow comparisons."""

    def __init__(self, settings: Any, store: Any) -> None:
        self.location = settings.location
        chain = uuid.uuid4().hex[:12]
        self.trail = Trail(make_sink(self.location, chain, settings.rotate_mb << 20), chain)
        self.token_key_env = settings.token_key_env
        self._tokenizer: Tokenizer | None = None
        self.store = store
        self._digests: dict[tuple[str, str], str] = {}

    def digest_of(self, model: str, version: str) -> str:
        key = (model, version)
        if key not in self._digests:
            self._digests[key] = self.store.manifest(model, version).artifact_sha256
        return self._digests[key]

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(token_key(self.location, self.token_key_env))
        return self._tokenizer

    def inputs(self, task: Any, raw: Any) -> dict[str, Any]:
        """The raw batch as recorded: personal inputs become keyed-hash tokens."""
        values = recorded(raw)
        personal = task.input_spec.name in task.personal_fields
        if personal:
            values = [self.tokenizer.token(v) for v in values]
        return {"name": task.input_spec.name, "data": values, "tokenized": personal}

    async def decision(self, *, request_id: str, key: Any, served: Any, version: str,
                       route: str, raw: Any, parameters: dict[str, Any],
                       outputs: dict[str, Any], latency_ms: float) -> dict[str, Any]:
        try:
            record = decision_record(
                request_id=request_id, key_id=key.id if key else None, model=served.name,
                version=version, artifact_sha256=self.digest_of(served.name, version),
                route=route, inputs=self.inputs(served.task, raw),
                outputs=recorded_outputs(outputs), latency_ms=latency_ms,
                parameters=parameters,
            )
        except (OSError, ValueError, TypeError) as exc:  # no tokenizing key, unreadable
            # manifest, a value the record format cannot hold
            raise TrailUnavailable(f"decision trail unavailable: {exc}") from exc
        return await self.trail.append(record)

    def shadow(self, request_id: str, served: Any, champion: str, challenger: str, raw: Any,
               live: dict[str, Any], shadow: dict[str, Any]) -> None:
        """Append the pair of answers for ``finserve compare`` (local trails only)."""
        from serving.dataplane import rows

        if not isinstance(self.trail.sink, JsonlSink):
            return
        record = {
            "request_id": request_id, "time": utc_now(), "model": served.name,
            "champion": champion, "challenger": challenger,
            "input_sha256": digest(self.inputs(served.task, raw)),
            "champion_outputs": rows(live, recorded),
            "challenger_outputs": rows(shadow, recorded),
        }
        path = self.trail.sink.directory / f"shadow-{self.trail.chain}.jsonl"
        with path.open("ab") as f:
            f.write(canonical(record) + b"\n")
