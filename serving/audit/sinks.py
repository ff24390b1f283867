"""Where records go, and how they are read back, whatever the place.

A sink's ``write(lines)`` is all or nothing and durable when it returns: a local file is
fsynced, and a failed write is cut back off the file, so a full disk costs the requests of
that write (HTTP 503), never a torn chain. Local segments are owner-only, rotated by size,
and gzip-compressed once closed. PostgreSQL (``serving.audit_postgres``) commits each write
in one transaction.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import fsspec

log = logging.getLogger("finserve.audit")
DECISIONS = "decisions"
CHECKPOINTS = "checkpoints"
#: PostgreSQL tables of each kind of line
TABLES = {DECISIONS: "finserve_decisions", CHECKPOINTS: "finserve_checkpoints"}


class Sink(Protocol):
    def write(self, lines: list[bytes]) -> None: ...


def resolve_location(location: str) -> str:
    """A location as given, or ``env:NAME``: the value of the environment variable NAME (a
    database URL holds a password, so the Serve config names the variable, never the URL)."""
    if not location.startswith("env:"):
        return location
    value = os.environ.get(location[4:], "")
    if not value:
        raise ValueError(f"the decision trail's location is {location}, but "
                         f"${location[4:]} is not set")
    return value


def is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def is_local(location: str) -> bool:
    return location != "stdout" and not is_postgres(location) and (
        "://" not in location or location.startswith("file://"))


class JsonlSink:
    """Append-only JSON lines in ``directory``, fsynced, rotated at ``rotate_bytes``; a
    closed segment is compressed to ``.jsonl.gz`` in the background."""

    #: a write is a local append and fsync (``Trail`` may make it on the event loop)
    writes_locally = True

    def __init__(self, directory: str | Path, chain: str, rotate_bytes: int = 64 << 20,
                 prefix: str = DECISIONS, compress: bool = True) -> None:
        self.directory = Path(directory)
        self.chain = chain
        self.rotate_bytes = rotate_bytes
        self.prefix = prefix
        self.compress = compress
        self.segment = 0
        self._file: Any = None

    def _path(self, segment: int) -> Path:
        return self.directory / f"{self.prefix}-{self.chain}-{segment:05d}.jsonl"

    def _open(self) -> Any:
        if self._file is not None and self._file.tell() >= self.rotate_bytes:
            self._close_segment()
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._path(self.segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                         0o600)
            self._file = os.fdopen(fd, "ab")
        return self._file

    def _close_segment(self) -> None:
        self._file.close()
        self._file = None
        closed = self._path(self.segment)
        self.segment += 1
        if self.compress:
            threading.Thread(target=compress_segment, args=(closed,), daemon=True).start()

    def write(self, lines: list[bytes]) -> None:
        f = self._open()
        start = f.tell()
        try:
            f.write(b"".join(line + b"\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            self._undo(start)
            raise

    def _undo(self, start: int) -> None:
        """Cut a failed write off the segment; if even that fails, leave the segment (its
        torn last line was never acknowledged) and go on in a new one."""
        try:
            self._file.truncate(start)
            os.fsync(self._file.fileno())
        except OSError:
            log.error("could not cut a failed write off %s; starting a new segment",
                      self._path(self.segment))
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
            self.segment += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def compress_segment(path: Path) -> None:
    """``x.jsonl`` → ``x.jsonl.gz`` (written in full under a temporary name, fsynced,
    renamed), then the original removed; a crash leaves one complete copy or the other."""
    target = path.with_name(path.name + ".gz")
    tmp = path.with_name(path.name + ".gz.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with (os.fdopen(fd, "wb") as raw, path.open("rb") as source,
              gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz):
            shutil.copyfileobj(source, gz, 1 << 20)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        path.unlink()
    except OSError as exc:
        log.warning("could not compress %s (%s); it stays uncompressed", path, exc)
        tmp.unlink(missing_ok=True)


class StdoutSink:
    """Records as JSON lines on stdout, for a log collector to ship (not durable: the
    collector decides what survives)."""

    def write(self, lines: list[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(line + b"\n" for line in lines))
        sys.stdout.flush()


class FsspecSink:
    """One object per group commit under an fsspec URI (object stores have no append)."""

    def __init__(self, uri: str, chain: str, prefix: str = DECISIONS) -> None:
        self.fs, self.base = fsspec.core.url_to_fs(uri.rstrip("/"))
        self.chain = chain
        self.prefix = prefix
        self.count = 0

    def write(self, lines: list[bytes]) -> None:
        path = f"{self.base}/{self.prefix}-{self.chain}-{self.count:09d}.jsonl"
        with self.fs.open(path, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        self.count += 1


def make_sink(location: str, chain: str, rotate_bytes: int = 64 << 20,
              prefix: str = DECISIONS, compress: bool = True) -> Sink:
    """``stdout``, a PostgreSQL URL, a local folder, or an fsspec URI (``s3://...``)."""
    if location == "stdout":
        return StdoutSink()
    if is_postgres(location):
        from serving.audit_postgres import PostgresSink

        return PostgresSink(location, TABLES[prefix])
    if not is_local(location):
        return FsspecSink(location, chain, prefix)
    return JsonlSink(location.removeprefix("file://"), chain, rotate_bytes, prefix, compress)


@dataclass(frozen=True)
class Line:
    """One stored line: where it is (for messages), its bytes, and whether it ended (a
    last line without its newline is a write that never completed)."""

    where: str
    data: bytes
    complete: bool = True


def read_lines(location: str, prefix: str = DECISIONS) -> Iterator[Line]:
    """Every stored line of one kind, in segment and line order; compressed segments too."""
    if is_postgres(location):
        from serving.audit_postgres import read_postgres

        for number, data in enumerate(read_postgres(location, TABLES[prefix]), 1):
            yield Line(f"{TABLES[prefix]} row {number}", data)
        return
    fs, base = fsspec.core.url_to_fs(location.removeprefix("file://").rstrip("/"))
    for path in segments(fs, base, prefix):
        opener = gzip.open if path.endswith(".gz") else (lambda f: f)
        with fs.open(path, "rb") as raw, opener(raw) as f:
            for number, data in enumerate(f, 1):
                if data.strip():
                    yield Line(f"{path}:{number}", data.rstrip(b"\n"), data.endswith(b"\n"))


def segments(fs: Any, base: str, prefix: str) -> list[str]:
    """Segment files in order, a compressed copy standing for its original."""
    plain = fs.glob(f"{base}/{prefix}-*.jsonl")
    packed = fs.glob(f"{base}/{prefix}-*.jsonl.gz")
    done = {p.removesuffix(".gz") for p in packed}
    return sorted([p for p in plain if p not in done] + packed,
                  key=lambda p: p.removesuffix(".gz"))
