"""The model store: ``<root>/<model>/<version>/`` holding a SavedModel and its manifest.

A version is immutable once written: it is staged under a temporary name and published
by writing ``manifest.json`` last, so a reader never sees half a version. ``root`` is a
local folder or any fsspec URI (``s3://bucket/models``, ``memory://``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
from pydantic import BaseModel, Field

from serving import __version__
from serving.errors import ModelNotFound, VersionExists, VersionNotFound

MANIFEST = "manifest.json"
SAVED_MODEL_DIR = "saved_model"
LATEST = "latest"


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
    metrics: dict[str, Any] = Field(description="Held-out metric and its baseline.")
    preprocessing: dict[str, Any] = Field(description="Parameters preprocessing needs.")
    training: dict[str, Any] = Field(default_factory=dict, description="Epochs, seed, sizes.")
    package_version: str = Field(default=__version__, description="finserve that trained it.")
    framework: dict[str, str] = Field(default_factory=dict, description="TF and Keras versions.")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def digest_dir(path: str | Path) -> str:
    """sha256 over the relative paths and contents of every file below ``path``."""
    root = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(file.relative_to(root).as_posix().encode())
        h.update(b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


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

    # --- reading ----------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of models with at least one published version."""
        if not self.fs.exists(self._base):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._base, detail=False)]
        return sorted(n for n in names if not n.startswith(".") and self.versions(n))

    def versions(self, model: str) -> list[str]:
        """Published versions of ``model``, oldest first."""
        base = self._path(model)
        if not self.fs.exists(base):
            return []
        found = []
        for entry in self.fs.ls(base, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.isdigit() and self.fs.exists(self._path(model, name, MANIFEST)):
                found.append(name)
        return sorted(found, key=int)

    def resolve(self, model: str, version: str | int = LATEST) -> str:
        """A concrete version: ``latest`` is the highest published one."""
        versions = self.versions(model)
        if not versions:
            raise ModelNotFound(model)
        version = str(version)
        if version == LATEST:
            return versions[-1]
        if version not in versions:
            raise VersionNotFound(model, version, versions)
        return version

    def manifest(self, model: str, version: str | int = LATEST) -> Manifest:
        version = self.resolve(model, version)
        with self.fs.open(self._path(model, version, MANIFEST), "r") as f:
            return Manifest.model_validate_json(f.read())

    def local_path(self, model: str, version: str | int = LATEST) -> Path:
        """A local folder holding the version (downloaded and verified for remote roots)."""
        version = self.resolve(model, version)
        if self.is_local:
            return Path(self._path(model, version))
        target = self.cache_dir / hashlib.sha256(self.root.encode()).hexdigest()[:12] / model
        target = target / version
        if not (target / MANIFEST).exists():
            staging = target.with_name(f".{version}-{uuid.uuid4().hex[:8]}")
            self.fs.get(self._path(model, version) + "/", str(staging) + "/", recursive=True)
            manifest = Manifest.model_validate_json((staging / MANIFEST).read_text())
            if digest_dir(staging / SAVED_MODEL_DIR) != manifest.artifact_sha256:
                shutil.rmtree(staging, ignore_errors=True)
                raise ValueError(f"{model} v{version}: downloaded artifact digest mismatch")
            if target.exists():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                staging.rename(target)
        return target

    def verify(self, model: str, version: str | int = LATEST) -> bool:
        """True when the stored SavedModel still matches the manifest's digest."""
        path = self.local_path(model, version)
        manifest = Manifest.model_validate_json((path / MANIFEST).read_text())
        return digest_dir(path / SAVED_MODEL_DIR) == manifest.artifact_sha256

    # --- writing ----------------------------------------------------------------------
    def next_version(self, model: str) -> str:
        versions = self.versions(model)
        return str(int(versions[-1]) + 1 if versions else 1)

    def publish(self, model: str, saved_model_dir: str | Path, manifest: Manifest) -> Manifest:
        """Copy a SavedModel in as ``manifest.version`` and publish it; never overwrites."""
        version = manifest.version
        final = self._path(model, version)
        if self.fs.exists(final):
            raise VersionExists(f"{model} version {version} already exists; versions are immutable")
        manifest = manifest.model_copy(
            update={"artifact_sha256": digest_dir(saved_model_dir), "model": model}
        )
        staging = self._path(model, f".staging-{version}-{uuid.uuid4().hex[:8]}")
        self.fs.makedirs(staging, exist_ok=True)
        self.fs.put(str(saved_model_dir) + "/", staging + f"/{SAVED_MODEL_DIR}/", recursive=True)
        self.fs.mv(staging, final, recursive=True)
        with self.fs.open(final + f"/{MANIFEST}", "w") as f:  # the publishing step
            f.write(json.dumps(manifest.model_dump(), indent=2, sort_keys=True))
        if self.is_local:
            _make_read_only(Path(final))
        return manifest


def _make_read_only(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            p.chmod(0o444)
