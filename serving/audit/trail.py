"""Chaining, group commit and signed checkpoints of one writer's records.

Each gateway replica writes its own chain (``chain`` id, ``seq`` from 0, ``prev`` = the
previous record's ``hash``, ``hash`` = sha256 of the record in its format, ``mac`` = HMAC
of the hash under the trail key). Records are sealed in the order they are written, when
their group is written: a group that fails to write hands its sequence numbers back, so
the chain never has a gap for a decision that was refused.

Checkpoints sign a chain's head (sequence number and hash, Ed25519) into a place apart
from the trail: one when the chain opens, before its first record, then at most every
``checkpoint_interval_s`` while the head moves (and every ``checkpoint_every`` records).
``verify`` compares the records with them: a chain without a checkpoint was not written by
FinServe, and one whose records end before its last checkpoint has lost records.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.audit.keys import TrailKeys
from serving.audit.records import GENESIS, RECORD_FORMAT, canonical
from serving.audit.sinks import Sink
from serving.errors import FinServeError
from serving.store import utc_now

log = logging.getLogger("finserve.audit")


class TrailUnavailable(FinServeError):
    """The decision record could not be written, so no answer is given (HTTP 503)."""

    status_code = 503
    headers = {"Retry-After": "1"}


def checkpoint(keys: TrailKeys, chain: str, seq: int, head: str) -> dict[str, Any]:
    """A signed statement that ``chain``'s record ``seq`` has hash ``head`` (seq -1 and
    the genesis hash: the chain was opened)."""
    body = {"format": RECORD_FORMAT, "kind": "checkpoint", "chain": chain, "seq": seq,
            "hash": head, "time": utc_now(), "public_key": keys.public_hex}
    return {**body, "signature": keys.sign(canonical(body))}


@dataclass
class Trail:
    """Builds chained records and group-commits them to a sink."""

    sink: Sink
    keys: TrailKeys
    chain: str
    checkpoints: Sink | None = None
    checkpoint_interval_s: float = 1.0
    checkpoint_every: int = 1000
    #: whether the writer's process has one request in flight: a group of one record then
    #: goes to a local file on the event loop, without the thread hop (nothing else waits)
    alone: Callable[[], bool] | None = None
    seq: int = 0
    prev: str = GENESIS
    _pending: list[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]] = field(
        default_factory=list)
    _flushing: asyncio.Task[None] | None = None
    _writing: bool = False  # a flush is under way (in its task or in an appender's)
    _opened: bool = False
    _anchored: int = -2  # seq of the last checkpoint written
    _ticker: asyncio.Task[None] | None = None
    _checkpoint_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def seal(self, record: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Give ``record`` its place in the chain, hash and mac (call in write order); the
        sealed record and its line. Raises TypeError, leaving the chain as it was, for a
        value the format cannot hold."""
        record = {**record, "format": RECORD_FORMAT, "chain": self.chain, "seq": self.seq,
                  "prev": self.prev}
        body = canonical(record)
        record["hash"] = hashlib.sha256(body).hexdigest()
        record["mac"] = self.keys.mac(record["hash"])
        self.seq += 1
        self.prev = record["hash"]
        tail = f',"hash":"{record["hash"]}","mac":"{record["mac"]}"}}'.encode()
        return record, body[:-1] + tail

    async def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Seal and durably write ``record``; raises ``TrailUnavailable`` if it cannot."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if self._ticker is None and self.checkpoints is not None:
            self._ticker = asyncio.create_task(self._tick())
        if not self._writing and (self._flushing is None or self._flushing.done()):
            # no flush runs or is scheduled: this append starts one (one at a time, or
            # two would seal and write their groups out of order)
            if len(self._pending) == 1 and self._opened and self._alone():
                await self._flush()  # nothing to group with: commit in this task
                return future.result()
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Commit what is pending, group by group, until nothing is (one flush at a time)."""
        if self._writing:  # another flush is under way and will take what is pending
            return
        self._writing = True
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(batch)
                if self.seq - 1 - self._anchored >= self.checkpoint_every:
                    await self.write_checkpoint()
        finally:
            self._writing = False

    async def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[Any]]]) -> None:
        """Open the chain if needed, seal the batch in order, write it; on failure give
        its sequence numbers back and fail its waiters."""
        if not self._opened:
            self._opened = await self.write_checkpoint()
            if not self._opened:
                return _fail(batch, "the chain's first checkpoint could not be written")
        start, sealed = (self.seq, self.prev), []
        for record, future in batch:
            try:
                sealed.append((*self.seal(record), future))
            except TypeError as exc:  # a value the record format cannot hold
                _fail([(record, future)], str(exc))
        if not sealed:
            return None
        try:
            await self._write([line for _, line, _ in sealed])
        except Exception as exc:  # the disk is full, the database gone …
            self.seq, self.prev = start
            log.error("decision trail write failed: %s: %s", type(exc).__name__, exc)
            return _fail([(r, f) for r, _, f in sealed], type(exc).__name__)
        for record, _, future in sealed:
            if not future.done():  # a waiter may be gone (client disconnected)
                future.set_result(record)
        return None

    async def _write(self, lines: list[bytes]) -> None:
        """Write a group: in a thread (the event loop goes on answering), or right here
        when it is one record of a request alone in its process and the sink is a local
        file (a thread hop costs more than the loop could do meanwhile)."""
        if len(lines) == 1 and self._alone():
            self.sink.write(lines)
        else:
            await asyncio.to_thread(self.sink.write, lines)

    def _alone(self) -> bool:
        """One request in flight in this process, and a sink that writes a local file."""
        return (self.alone is not None and self.alone()
                and getattr(self.sink, "writes_locally", False))

    async def write_checkpoint(self) -> bool:
        """Sign the head into the checkpoint sink (if the head moved); False on failure."""
        if self.checkpoints is None:
            return True
        async with self._checkpoint_lock:
            seq, head = self.seq - 1, self.prev
            if seq == self._anchored:
                return True
            line = canonical(checkpoint(self.keys, self.chain, seq, head))
            try:
                await asyncio.to_thread(self.checkpoints.write, [line])
            except Exception as exc:
                log.error("decision trail checkpoint failed: %s: %s", type(exc).__name__, exc)
                return False
            self._anchored = seq
            return True

    async def _tick(self) -> None:
        """Checkpoint a moved head every ``checkpoint_interval_s``, traffic or not."""
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            if self._opened:
                await self.write_checkpoint()


def _fail(batch: list[tuple[Any, asyncio.Future[Any]]], why: str) -> None:
    error = TrailUnavailable(f"decision trail unavailable: {why}")
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
