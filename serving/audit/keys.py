"""The trail's secrets: the tokenizing key and the trail key, and what derives from them.

Both are at least 32 characters of random text (a new key file holds 32 random bytes in
hex), from an environment variable (a Kubernetes Secret on
a cluster) or a key file in a folder apart from the trail (local use). A key file is
created atomically: written in full under a temporary name, flushed, then hard-linked to
its name, so a crash never leaves an empty or half-written key, and two replicas starting
at once end up sharing the first one's key.

The trail key yields two keys (HKDF-SHA256): the HMAC key that authenticates each record,
and the Ed25519 key that signs the checkpoints of each chain's head. A verifier needs only
the Ed25519 public key (``finserve audit public-key``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from serving.audit.records import canonical_v1

TOKEN_PREFIX = "tok_"
KEY_BYTES = 32
TOKEN_KEY_FILE = "token.key"
TRAIL_KEY_FILE = "trail.key"
PUBLIC_KEY_FILE = "trail.pub"


class TrailKeyError(ValueError):
    """A key that is missing, unreadable or too short."""


def read_or_create_key(path: Path) -> bytes:
    """The hex key in ``path``, created (atomically, owner-only) if there is none."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(KEY_BYTES).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made it first: use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)
    return parse_key(path.read_text(), str(path))


def parse_key(text: str, where: str) -> bytes:
    """A key's bytes: its text, stripped (hex from ``openssl rand -hex 32``, or the 48
    letters and digits the chart generates); at least 32 characters."""
    key = text.strip().encode()
    if len(key) < KEY_BYTES:
        raise TrailKeyError(f"{where}: a key must be at least {KEY_BYTES} characters "
                            f"(e.g. `openssl rand -hex 32`), got {len(key)}")
    return key


def load_key(env_var: str, keys_dir: str | None, file_name: str) -> bytes:
    """A key from ``env_var``, else from ``keys_dir/file_name`` (created if missing); with
    neither (a cluster, where keys come from Secrets) a clear error."""
    value = os.environ.get(env_var)
    if value:
        return parse_key(value, f"${env_var}")
    if not keys_dir:
        raise TrailKeyError(f"set {env_var}: this trail keeps no local key files (audit.keys_dir "
                        "is empty), so the key must come from a Secret")
    return read_or_create_key(Path(keys_dir) / file_name)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Tokenizer:
    """Keyed hash (HMAC-SHA256) of personal values: stable per key, not reversible."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def token(self, value: Any) -> str:
        # tokens must not change with the record format: one customer, one token, always
        mac = hmac.new(self.key, canonical_v1(value), hashlib.sha256).hexdigest()[:32]
        return TOKEN_PREFIX + mac


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"finserve trail " + purpose).derive(secret)


@dataclass(frozen=True)
class TrailKeys:
    """The record-authenticating HMAC key and the checkpoint-signing key."""

    mac_key: bytes
    signing_key: Ed25519PrivateKey

    @classmethod
    def from_secret(cls, secret: bytes) -> TrailKeys:
        return cls(_derive(secret, b"record mac"),
                   Ed25519PrivateKey.from_private_bytes(_derive(secret, b"checkpoint ed25519")))

    def mac(self, record_hash: str) -> str:
        """A record's ``mac``: HMAC-SHA256 of its hash, 128 bits in hex."""
        return hmac.new(self.mac_key, record_hash.encode(), hashlib.sha256).hexdigest()[:32]

    def sign(self, message: bytes) -> str:
        return self.signing_key.sign(message).hex()

    @property
    def public_hex(self) -> str:
        return public_hex(self.signing_key.public_key())


def public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def load_public_key(value: str) -> Ed25519PublicKey:
    """A public key from its hex (64 characters) or a file holding it."""
    text = value.strip()
    if len(text) != 64 and Path(text).is_file():
        text = Path(text).read_text().strip()
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise TrailKeyError(f"not an Ed25519 public key (64 hex characters): {value!r}") from None


def write_public_key(keys_dir: str | None, keys: TrailKeys) -> None:
    """Leave the public key beside the local key files, for ``finserve audit verify``."""
    if keys_dir:
        path = Path(keys_dir) / PUBLIC_KEY_FILE
        if not path.exists() or path.read_text().strip() != keys.public_hex:
            path.write_text(keys.public_hex + "\n")
