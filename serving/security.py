"""API keys (stored only as hashes, compared in constant time, scoped to models) and
per-key rate limits.

A key reads ``fsk_<id>_<secret>``: the id selects the entry, the secret's sha256 is
compared with ``hmac.compare_digest``. Key files are YAML or JSON:
``{"keys": [{"id": "teller-app", "sha256": "...", "models": ["fraud"], "rate_per_s": 50}]}``.
A served key file is re-read when it changes (``KeyFile``), so a removed key stops working
within seconds, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import FinServeError

PREFIX = "fsk"
log = logging.getLogger("finserve.security")


class Unauthenticated(FinServeError):
    """No key, or a key that matches none (HTTP 401)."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(FinServeError):
    """A valid key that may not call this model (HTTP 403)."""

    status_code = 403


class RateLimited(FinServeError):
    """The key's request rate is over its limit (HTTP 429 with Retry-After)."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, round(retry_after_s + 0.5)))}


class ApiKey(BaseModel):
    """One caller: its id (in logs and the decision trail), hash, models and rate."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Caller id.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the secret part.")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Models or '*'.")
    rate_per_s: float | None = Field(None, gt=0, description="Sustained requests per second.")
    burst: int | None = Field(None, ge=1, description="Requests allowed at once.")

    def may_call(self, model: str) -> bool:
        return "*" in self.models or model in self.models


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(key_id: str, models: list[str] | None = None,
            rate_per_s: float | None = None) -> tuple[str, ApiKey]:
    """A new key: the plaintext (shown once) and the entry to store."""
    secret = secrets.token_urlsafe(32)
    entry = ApiKey(id=key_id, sha256=hash_secret(secret), models=models or ["*"],
                   rate_per_s=rate_per_s)
    return f"{PREFIX}_{key_id}_{secret}", entry


class KeyRing:
    """The accepted keys; ``authenticate`` turns an Authorization header into a key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = {k.id: k for k in keys}

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls([ApiKey.model_validate(k) for k in data.get("keys", [])])

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """A whole key file, strictly: a mapping with a ``keys`` list (an empty or cut-short
        file is an error, never a ring without keys)."""
        data = yaml.safe_load(text)
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("a key file is a mapping with a 'keys' list")
        return cls([ApiKey.model_validate(k) for k in data["keys"]])

    def authenticate(self, authorization: str | None) -> ApiKey:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        prefix, _, rest = token.strip().partition("_")
        key_id, _, secret = rest.partition("_")  # ids have no "_"; secrets may
        entry = self.keys.get(key_id) if prefix == PREFIX else None
        # compare even for unknown ids, so timing does not tell which ids exist
        expected = entry.sha256 if entry else "0" * 64
        if not hmac.compare_digest(hash_secret(secret), expected) or entry is None:
            raise Unauthenticated("invalid API key")
        return entry

    @staticmethod
    def authorize(key: ApiKey, model: str) -> None:
        if not key.may_call(model):
            raise Forbidden(f"key '{key.id}' may not call model '{model}'")


def write_keys(path: str | Path, keys: list[ApiKey]) -> None:
    """Replace the key file in one step (a new file renamed over it), so a server that
    re-reads it never sees half of it."""
    path = Path(path)
    text = yaml.safe_dump({"keys": [k.model_dump() for k in keys]}, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: what identifies one version of a file: device, inode, size, mtime (ns)
Stamp = tuple[int, int, int, int]


class KeyFile:
    """The key ring of a key file, re-read when the file changes: a removed key stops
    working within ``check_every_s``, a new one starts.

    At most every ``check_every_s`` a call stats the path (following symlinks, so the atomic
    ``..data`` swap of a Kubernetes Secret volume shows as a new inode); a changed file is
    parsed whole and swapped in at once. A file that does not parse, or disappears, keeps
    the keys in force and logs an error. Writers should replace the file in one step
    (``write_keys`` does, and Kubernetes does)."""

    def __init__(self, path: str | Path, check_every_s: float = 1.0,
                 clock: Any = time.monotonic) -> None:
        self.path = Path(path)
        self.check_every_s = check_every_s
        self.clock = clock
        self._stamp: Stamp | None = self._stat()
        self.ring = KeyRing.from_file(self.path)  # a broken file at start-up is fatal
        self._next_check = clock() + check_every_s

    @property
    def keys(self) -> dict[str, ApiKey]:
        return self.current().keys

    def authenticate(self, authorization: str | None) -> ApiKey:
        return self.current().authenticate(authorization)

    def current(self) -> KeyRing:
        """The ring in force, after a cheap check for a new file when one is due."""
        now = self.clock()
        if now >= self._next_check:
            self._next_check = now + self.check_every_s
            self.reload_if_changed()
        return self.ring

    def reload_if_changed(self) -> bool:
        """Swap in the file's keys if it changed since the last read; whether it did."""
        stamp: Stamp | None = None
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            ring = KeyRing.parse(self.path.read_text())
            if self._stat() != stamp:  # rewritten while read: read it at the next check
                return False
        except FileNotFoundError as exc:
            return self._keep(None, exc)
        except (OSError, ValueError, yaml.YAMLError) as exc:  # ValidationError: ValueError
            return self._keep(stamp, exc)
        removed = sorted(set(self.ring.keys) - set(ring.keys))
        added = sorted(set(ring.keys) - set(self.ring.keys))
        self.ring, self._stamp = ring, stamp
        log.warning("API key file %s reloaded: %d keys, added %s, removed %s",
                    self.path, len(ring.keys), added or "none", removed or "none")
        return True

    def _keep(self, stamp: Stamp | None, exc: Exception) -> bool:
        """Keep the ring in force; log once per broken version of the file."""
        if stamp != self._stamp:
            log.error("API key file %s not reloaded, keeping its %d keys: %s",
                      self.path, len(self.ring.keys), exc)
        self._stamp = stamp
        return False

    def _stat(self) -> Stamp:
        st = os.stat(self.path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class RateLimiter:
    """Token buckets per key id, refilled at the key's rate (this replica's share)."""

    def __init__(self, default_rate_per_s: float | None = None, clock: Any = time.monotonic,
                 replicas: int = 1) -> None:
        self.default_rate = default_rate_per_s
        self.replicas = max(1, replicas)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, last time)

    def check(self, key: ApiKey) -> None:
        rate = key.rate_per_s or self.default_rate
        if rate is None:
            return
        rate /= self.replicas
        burst = float(key.burst or max(1.0, rate))
        now = self.clock()
        tokens, last = self._buckets.get(key.id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[key.id] = (tokens, now)
            raise RateLimited(f"rate limit of key '{key.id}' exceeded",
                              retry_after_s=(1.0 - tokens) / rate)
        self._buckets[key.id] = (tokens - 1.0, now)
