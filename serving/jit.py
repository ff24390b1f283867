"""A SavedModel signature compiled with XLA, one executable per batch-size bucket.

XLA fuses a signature's small ops into a few kernels. It is off by default for every task
(``Task.jit_compile``) and turned on per model in the Serve config (``model.jit_compile``).
Measured here (benchmarks/levers.md, row 42): once its buckets were compiled, sentiment's
LSTM answered 1.04-1.32x the requests/s at 64 rows and 32 connections and 1.2-1.7x at one
row; but in `make bench`'s short points its replicas were still compiling the many batch
sizes that merged requests make, and a new replica came up about 0.5 s later. Fraud's and
credit's 64-row requests were served 0.85-0.93x as fast even compiled, and digits'
convolutions and recommend's lookups took more CPU per call.

XLA compiles once per input shape, 0.3-1 s of CPU each. So:

- a call's rows are padded up to the next bucket (``BUCKETS``: four per doubling, at most
  a fifth of a call wasted; larger calls are split);
- a bucket not compiled yet is answered by the plain signature while one background thread
  per process, at a lower CPU priority than the requests, compiles it: nothing waits for
  a compile, a replica starts as fast as before and each size's first calls cost what they
  did;
- compiled executables are kept on disk (``cache_dir``), so a restarted or added replica on
  the same machine loads them instead of compiling (0.5 → 0.15 s here);
- a bucket that fails to compile turns XLA off for that signature, which then answers as
  before.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from serving.training import predict_in_batches

log = logging.getLogger(__name__)

#: row counts a call is padded up to: four per doubling (1, 2, ... 8, 10, 12, 14, 16, 20,
#: ... 3,584, 4,096), so at most a fifth of a call's rows are padding
BUCKETS: tuple[int, ...] = tuple(sorted(
    {n for k in range(13) for n in (2**k, 2**k * 5 // 4, 2**k * 3 // 2, 2**k * 7 // 4)
     if n <= 4096}))
#: larger calls are split into calls of this many rows
MAX_ROWS = BUCKETS[-1]
#: how much lower than the requests' the compile thread's CPU priority is (nice steps)
COMPILE_NICENESS = 10
#: where compiled executables are kept (default: a folder of this user's in the temp dir)
CACHE_ENV = "FINSERVE_XLA_CACHE"
_FLAG = "--tf_xla_persistent_cache_directory"

Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


def _lower_priority() -> None:
    """Make this thread yield the CPU to the process's request threads (Linux: a
    thread's own nice value)."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, tid) + COMPILE_NICENESS))
    except OSError:  # not Linux, or not permitted: compile at the same priority
        log.debug("XLA compile thread keeps its priority")


# one compile at a time per process: a replica's models share its CPU with its requests
_compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xla-compile",
                               initializer=_lower_priority)


def cache_dir() -> Path | None:
    """The folder compiled executables are kept in, made private to this user; None (and
    a warning) if it is not: an executable in it is code this process would run."""
    path = Path(os.environ.get(CACHE_ENV) or
                Path(tempfile.gettempdir()) / f"finserve-xla-cache-{os.geteuid()}")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        log.warning("XLA cache %s unusable, compiling in every process: %s", path, exc)
        return None
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("XLA cache %s is writable by others, not used", path)
        return None
    return path


def use_cache_dir() -> None:
    """Point TensorFlow's persistent XLA cache at ``cache_dir()`` unless ``TF_XLA_FLAGS``
    already names one (TensorFlow reads the flags at its first compile)."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if _FLAG in flags:
        return
    path = cache_dir()
    if path is not None:
        os.environ["TF_XLA_FLAGS"] = f"{flags} {_FLAG}={path}".strip()


def bucket(rows: int) -> int:
    """The smallest bucket that holds ``rows`` (1 ≤ rows ≤ ``MAX_ROWS``)."""
    return next(b for b in BUCKETS if b >= rows)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """``x`` with its last row repeated up to ``rows`` rows (a real input, so padding
    cannot produce what the model was never shown)."""
    extra = rows - len(x)
    return x if extra == 0 else np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])


class JitSignature:
    """``plain`` (a numpy → {name: numpy} call of ``signature``) answered by XLA
    executables of ``signature`` where they are compiled."""

    def __init__(self, signature: Any, plain: Predict, name: str = "signature") -> None:
        import tensorflow as tf

        use_cache_dir()
        self._tf = tf
        self._plain = plain
        self.name = name
        self.loaded = getattr(plain, "loaded", None)  # keeps the SavedModel alive
        self._function = tf.function(lambda x: signature(inputs=x), jit_compile=True)
        self._compiled: dict[int, Any] = {}  # bucket: concrete function, compiled
        self._pending: set[int] = set()
        self._lock = threading.Lock()
        self.failed: str | None = None  # why XLA was turned off, if it was

    @property
    def compiled_buckets(self) -> list[int]:
        """The buckets answered by XLA so far."""
        return sorted(self._compiled)

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        rows = len(x)
        if rows == 0:
            return self._plain(x)
        if rows > MAX_ROWS:
            return predict_in_batches(self, x, MAX_ROWS)
        size = bucket(rows)
        compiled = self._compiled.get(size)
        if compiled is None:
            self._schedule(size, x)
            return self._plain(x)
        outputs = compiled(self._tf.constant(pad_rows(x, size)))
        return {name: t.numpy()[:rows] for name, t in outputs.items()}

    def compile_now(self, x: np.ndarray) -> None:
        """Compile the bucket of ``x``'s rows in this thread (tests, warm-up)."""
        self._compile(bucket(len(x)), x)

    def _schedule(self, size: int, x: np.ndarray) -> None:
        with self._lock:
            if self.failed is not None or size in self._pending:
                return
            self._pending.add(size)
        _compiler.submit(self._compile, size, x[-1:].copy())

    def _compile(self, size: int, example: np.ndarray) -> None:
        tf = self._tf
        started = time.perf_counter()
        try:
            padded = pad_rows(example, size)
            concrete = self._function.get_concrete_function(
                tf.TensorSpec(padded.shape, tf.as_dtype(padded.dtype)))
            concrete(tf.constant(padded))  # XLA compiles on the first call
        except Exception as exc:  # any failure: serve without XLA
            self.failed = f"{type(exc).__name__}: {exc}"
            self._compiled.clear()
            log.warning("%s: XLA off, served uncompiled: %s", self.name, self.failed)
            return
        self._compiled[size] = concrete
        log.info("%s: XLA bucket %d ready in %.2f s", self.name, size,
                 time.perf_counter() - started)
