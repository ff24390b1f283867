"""The model store: ``<root>/<model>/<version>/`` holding a SavedModel and its manifest.

A version is immutable once written and published by writing ``manifest.json`` last, so
a reader never sees half a version: a local one is staged under a temporary name and
renamed into place; on an object store (no rename) its files are uploaded in place, and a
version without a manifest is not listed. ``root`` is a local folder or any fsspec URI
(``s3://bucket/models``, ``memory://``). An ``s3://`` root is read with s3fs, which takes its
endpoint (``AWS_ENDPOINT_URL``, for MinIO or Ceph) and credentials from the standard AWS
variables, files or the pod's identity; tests run it against moto's S3 server
(tests/s3.py). A store that cannot be read (credentials refused, no such bucket,
unreachable) raises ``StoreUnavailable`` (HTTP 503) naming the store; a replica that starts
while its store cannot be read starts not ready and keeps trying (``retry_while_unavailable``).

A version is verified against its manifest whenever it is loaded (``ModelStore.verified``):
each SavedModel file's sha256, the set of files, the tree digest ``artifact_sha256`` and
the preprocessing parameters' digest. Manifests written before per-file digests carry only
``artifact_sha256``, which then verifies the files alone. A copy that does not match is
refused with ``IntegrityError`` (HTTP 503) naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, Field

from serving import __version__
from serving.drift import DriftReference
from serving.errors import (
    FinServeError,
    ModelNotFound,
    ModelNotReady,
    VersionExists,
    VersionNotFound,
)

MANIFEST = "manifest.json"
SAVED_MODEL_DIR = "saved_model"
LATEST = "latest"
log = logging.getLogger("finserve.store")


class IntegrityError(ModelNotReady):
    """A stored version does not match its manifest, so it is refused (HTTP 503)."""

    headers = None  # no Retry-After: it stays refused until the store is repaired


class StoreUnavailable(ModelNotReady):
    """The store cannot be read (credentials refused, no such bucket, unreachable): HTTP
    503, the message naming the store."""


#: seconds between a not-ready replica's attempts to read a store it could not read
STORE_RETRY_S = 5.0


def retry_while_unavailable(what: str, attempt: Callable[[], None],
                            failed: Callable[[StoreUnavailable], None]) -> None:
    """Call ``attempt`` in a daemon thread every ``STORE_RETRY_S`` until it returns without
    ``StoreUnavailable``; ``failed`` gets each failure (the replica's readiness reason).
    Any other error ends the retries, logged."""

    def run() -> None:
        while True:
            time.sleep(STORE_RETRY_S)
            try:
                attempt()
            except StoreUnavailable as exc:
                failed(exc)
                continue
            except Exception:
                log.exception("%s: retry stopped", what)
                return
            log.info("%s: retries done (succeeded, or no longer needed)", what)
            return

    threading.Thread(target=run, name=f"store-retry {what}", daemon=True).start()


class Manifest(BaseModel):
    """What a version is, where it came from and how well it did on held-out data."""

    model: str = Field(description="Model name in the store.")
    task: str = Field(description="Task that trained it (serving.tasks).")
    version: str = Field(description="Version number, as a string.")
    created_at: str = Field(description="UTC time the version was written, ISO 8601.")
    training_data: dict[str, Any] = Field(
        description="Source, row count and sha256 digest of the training data."
    )
    artifact_sha256: str = Field(description="sha256 over the SavedModel files.")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of each SavedModel file by its path below saved_model/ (empty in "
        "older manifests: artifact_sha256 alone verifies those).",
    )
    preprocessing_sha256: str = Field(
        "", description="sha256 of the preprocessing parameters as canonical JSON "
        "(empty in older manifests)."
    )
    metrics: dict[str, Any] = Field(description="Held-out metric and its baseline.")
    preprocessing: dict[str, Any] = Field(description="Parameters preprocessing needs.")
    training: dict[str, Any] = Field(default_factory=dict, description="Epochs, seed, sizes.")
    package_version: str = Field(default=__version__, description="finserve that trained it.")
    framework: dict[str, str] = Field(default_factory=dict, description="TF and Keras versions.")
    drift_reference: DriftReference | None = Field(
        None, description="The training distribution of each raw input column and score "
        "output, which drift (PSI) is measured against (serving/drift.py). Not covered by "
        "the digests: it steers monitoring, never an answer. None in manifests written "
        "before drift monitoring: such a version is served, not monitored.")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def hash_files(path: str | Path) -> tuple[str, dict[str, str]]:
    """The tree digest (``digest_dir``) and each file's own sha256 by relative path, in one
    read of every file below ``path``."""
    root = Path(path)
    tree = hashlib.sha256()
    files: dict[str, str] = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        name = file.relative_to(root).as_posix()
        tree.update(name.encode())
        tree.update(b"\0")
        own = hashlib.sha256()
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                tree.update(chunk)
                own.update(chunk)
        files[name] = own.hexdigest()
    return tree.hexdigest(), files


def digest_dir(path: str | Path) -> str:
    """sha256 over the relative paths and contents of every file below ``path``."""
    return hash_files(path)[0]


def params_digest(params: dict[str, Any]) -> str:
    """sha256 of preprocessing parameters as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_params(manifest: Manifest) -> None:
    """Refuse parameters that no longer match ``preprocessing_sha256`` (when it is set)."""
    digest = manifest.preprocessing_sha256
    if digest and params_digest(manifest.preprocessing) != digest:
        raise IntegrityError(f"{_named(manifest)} refused: {MANIFEST} 'preprocessing' does "
                             "not match its preprocessing_sha256")


def check_artifact(path: str | Path, manifest: Manifest) -> str:
    """Check the version folder ``path`` against ``manifest``: parameters, the set of
    SavedModel files, each file's sha256 and the tree digest. Returns the tree digest of
    the bytes read; raises ``IntegrityError`` naming what differs."""
    check_params(manifest)
    tree, files = hash_files(Path(path) / SAVED_MODEL_DIR)
    problems = _file_problems(files, manifest.files) if manifest.files else []
    if not problems and tree != manifest.artifact_sha256:
        problems = ["the SavedModel files do not match artifact_sha256"
                    + ("" if manifest.files else " (the manifest has no per-file digests)")]
    if problems:
        raise IntegrityError(f"{_named(manifest)} refused: {'; '.join(problems)}")
    return tree


def _file_problems(actual: dict[str, str], expected: dict[str, str]) -> list[str]:
    where = f"{SAVED_MODEL_DIR}/"
    return [
        *(f"{where}{n} is missing" for n in sorted(expected.keys() - actual.keys())),
        *(f"{where}{n} is not in the manifest" for n in sorted(actual.keys() - expected.keys())),
        *(f"{where}{n} does not match its sha256" for n in sorted(expected.keys() & actual.keys())
          if expected[n] != actual[n]),
    ]


def _named(manifest: Manifest) -> str:
    return f"model '{manifest.model}' version {manifest.version}"


@dataclass(frozen=True)
class Verified:
    """A version checked against its manifest: its local folder and the tree digest of the
    files that were checked (``artifact_sha256``)."""

    path: Path
    manifest: Manifest
    artifact_sha256: str
    seconds: float


class ModelStore:
    """Versions of trained models under one root (local folder or fsspec URI)."""

    def __init__(self, root: str | os.PathLike[str], cache_dir: str | None = None) -> None:
        root = str(root)
        if "://" not in root:
            root = str(Path(root).expanduser().resolve())
        self.root = root.rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self.is_local = "://" not in root or root.startswith("file://")
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "finserve-store-cache")

    def __repr__(self) -> str:
        return f"ModelStore({self.root!r})"

    def _path(self, *parts: str) -> str:
        return "/".join([self._base, *parts])

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A failure to read the store (its client's error) as ``StoreUnavailable`` naming
        the store, in one line."""
        try:
            yield
        except FinServeError:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"model store {self.root} could not be read: "
                                   f"{type(exc).__name__}: {exc}") from None

    def _check_bucket(self) -> None:
        """Raise ``StoreUnavailable`` when the root's bucket does not exist (object stores,
        whose filesystems have ``split_path``); an empty store in a bucket is fine."""
        split = getattr(self.fs, "split_path", None)
        if split is None:
            return
        bucket = split(self._base)[0]
        with self._reading():
            found = self.fs.exists(bucket)
        if not found:
            raise StoreUnavailable(f"model store {self.root}: bucket '{bucket}' does not exist")

    # --- reading ----------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of models with at least one published version."""
        with self._reading():
            self.fs.invalidate_cache()  # listings change under other writers (s3fs caches)
            if not self.fs.exists(self._base):
                self._check_bucket()
                return []
            names = [p.rstrip("/").rsplit("/", 1)[-1]
                     for p in self.fs.ls(self._base, detail=False)]
        return sorted(n for n in names if not n.startswith(".") and self.versions(n))

    def versions(self, model: str) -> list[str]:
        """Published versions of ``model``, oldest first."""
        base = self._path(model)
        with self._reading():
            self.fs.invalidate_cache()  # listings change under other writers (s3fs caches)
            if not self.fs.exists(base):
                return []
            found = [name for name in (e.rstrip("/").rsplit("/", 1)[-1]
                                       for e in self.fs.ls(base, detail=False))
                     if name.isdigit() and self.fs.exists(self._path(model, name, MANIFEST))]
        return sorted(found, key=int)

    def resolve(self, model: str, version: str | int = LATEST) -> str:
        """A concrete version: ``latest`` is the highest published one."""
        versions = self.versions(model)
        if not versions:
            self._check_bucket()
            raise ModelNotFound(model)
        version = str(version)
        if version == LATEST:
            return versions[-1]
        if version not in versions:
            raise VersionNotFound(model, version, versions)
        return version

    def manifest(self, model: str, version: str | int = LATEST) -> Manifest:
        return self._read_manifest(model, self.resolve(model, version))

    def _read_manifest(self, model: str, version: str) -> Manifest:
        with self._reading(), self.fs.open(self._path(model, version, MANIFEST), "r") as f:
            text = f.read()
        return Manifest.model_validate_json(text)

    def local_path(self, model: str, version: str | int = LATEST) -> Path:
        """A local folder holding the version (downloaded and verified for remote roots)."""
        if self.is_local:
            return Path(self._path(model, self.resolve(model, version)))
        return self.verified(model, version).path

    def verified(self, model: str, version: str | int = LATEST) -> Verified:
        """The version's local folder, checked against its manifest now (``check_artifact``;
        remote roots: the cached copy, against the store's manifest). Raises
        ``IntegrityError`` naming the file that differs."""
        started = time.perf_counter()
        version = self.resolve(model, version)
        manifest = self._read_manifest(model, version)
        if self.is_local:
            path = Path(self._path(model, version))
            digest = check_artifact(path, manifest)
        else:
            path, digest = self._cached(model, version, manifest)
        return Verified(path, manifest, digest, time.perf_counter() - started)

    def verify(self, model: str, version: str | int = LATEST) -> bool:
        """True when the stored version still matches its manifest (``verified``)."""
        try:
            self.verified(model, version)
        except IntegrityError as exc:
            log.warning("%s", exc.message)
            return False
        return True

    def _cached(self, model: str, version: str, manifest: Manifest) -> tuple[Path, str]:
        """A verified copy in the local cache, and its digest. A cached copy that does not
        match the store's manifest is discarded and downloaded again; a download is checked
        in a staging folder before it is renamed into place, never served half-written."""
        target = self.cache_dir / hashlib.sha256(self.root.encode()).hexdigest()[:12] / model
        target = target / version
        if target.exists():
            try:
                return target, _check_copy(target, manifest)
            except IntegrityError as exc:
                log.warning("%s (cached copy %s); downloading it again", exc.message, target)
                _discard(target)
        staging = target.with_name(f".{version}-{uuid.uuid4().hex[:8]}")
        try:
            with self._reading():
                self.fs.get(self._path(model, version) + "/", str(staging) + "/",
                            recursive=True)
            digest = _check_copy(staging, manifest)
        except IntegrityError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise IntegrityError(f"{exc.message} (as downloaded from {self.root})") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            staging.rename(target)
        except OSError:  # another process put its verified copy in place meanwhile
            shutil.rmtree(staging, ignore_errors=True)
            return target, _check_copy(target, manifest)
        return target, digest

    # --- writing ----------------------------------------------------------------------
    def next_version(self, model: str) -> str:
        versions = self.versions(model)
        return str(int(versions[-1]) + 1 if versions else 1)

    def publish(self, model: str, saved_model_dir: str | Path, manifest: Manifest) -> Manifest:
        """Copy a SavedModel in as ``manifest.version`` and publish it; never overwrites."""
        version = manifest.version
        final = self._path(model, version)
        if self.fs.exists(final if self.is_local else f"{final}/{MANIFEST}"):
            raise VersionExists(f"{model} version {version} already exists; versions are immutable")
        tree, files = hash_files(saved_model_dir)
        params = json.loads(json.dumps(manifest.preprocessing))  # as a reader will parse them
        manifest = manifest.model_copy(update={
            "artifact_sha256": tree, "files": files, "model": model,
            "preprocessing_sha256": params_digest(params),
        })
        if self.is_local:  # staged, then renamed into place in one step
            staging = self._path(model, f".staging-{version}-{uuid.uuid4().hex[:8]}")
            self.fs.makedirs(staging, exist_ok=True)
            self.fs.put(str(saved_model_dir) + "/", staging + f"/{SAVED_MODEL_DIR}/",
                        recursive=True)
            self.fs.mv(staging, final, recursive=True)
        else:  # object stores cannot rename: upload in place, unseen until the manifest is
            if self.fs.exists(final):  # an earlier upload that never published
                self.fs.rm(final, recursive=True)
            self.fs.put(str(saved_model_dir) + "/", final + f"/{SAVED_MODEL_DIR}/",
                        recursive=True)
        with self.fs.open(final + f"/{MANIFEST}", "w") as f:  # the publishing step
            f.write(json.dumps(manifest.model_dump(), indent=2, sort_keys=True))
        if self.is_local:
            _make_read_only(Path(final))
        return manifest


def _check_copy(path: Path, manifest: Manifest) -> str:
    """``check_artifact`` for a downloaded copy, whose own manifest must be the store's."""
    try:
        copied = Manifest.model_validate_json((path / MANIFEST).read_text())
    except (OSError, ValueError):
        copied = None
    if copied != manifest:
        raise IntegrityError(f"{_named(manifest)} refused: its {MANIFEST} differs from the "
                             "store's")
    return check_artifact(path, manifest)


def _discard(path: Path) -> None:
    """Take a folder out of view at once (a rename), then delete it."""
    aside = path.with_name(f".{path.name}-discarded-{uuid.uuid4().hex[:8]}")
    try:
        path.rename(aside)
    except OSError:  # already gone, or replaced by another process
        return
    shutil.rmtree(aside, ignore_errors=True)


def _make_read_only(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(0o444)
