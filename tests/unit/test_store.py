import json
import os
from pathlib import Path

import pytest

from serving.errors import ModelNotFound, VersionExists, VersionNotFound
from serving.store import MANIFEST, Manifest, ModelStore, digest_dir, utc_now


def _saved_model(tmp: Path, content: str = "weights") -> Path:
    d = tmp / "export"
    (d / "variables").mkdir(parents=True, exist_ok=True)
    (d / "saved_model.pb").write_text(content)
    (d / "variables" / "variables.index").write_text(content * 2)
    return d


def _manifest(version: str) -> Manifest:
    return Manifest(
        model="fraud", task="fraud", version=version, created_at=utc_now(),
        training_data={"source": "builtin", "rows": 10, "sha256": "ab"}, artifact_sha256="",
        metrics={"metric": "roc_auc", "value": 0.9, "baseline": 0.5, "baseline_name": "c"},
        preprocessing={"mean": [0.0]},
    )


def test_publish_and_read_back(tmp_path):
    store = ModelStore(tmp_path / "store")
    export = _saved_model(tmp_path)
    published = store.publish("fraud", export, _manifest(store.next_version("fraud")))
    assert published.version == "1"
    assert published.artifact_sha256 == digest_dir(export)
    assert store.models() == ["fraud"]
    assert store.manifest("fraud", "latest") == published
    assert (store.local_path("fraud", "1") / "saved_model" / "saved_model.pb").read_text() == (
        "weights"
    )
    assert store.verify("fraud", "1")


def test_versions_are_immutable(tmp_path):
    store = ModelStore(tmp_path / "store")
    store.publish("fraud", _saved_model(tmp_path), _manifest("1"))
    with pytest.raises(VersionExists, match="immutable"):
        store.publish("fraud", _saved_model(tmp_path, "other"), _manifest("1"))
    pb = store.local_path("fraud", "1") / "saved_model" / "saved_model.pb"
    assert not os.access(pb, os.W_OK) or os.geteuid() == 0  # root ignores modes
    assert oct(pb.stat().st_mode & 0o777) == "0o444"


def test_latest_is_the_highest_number_not_the_last_string(tmp_path):
    store = ModelStore(tmp_path / "store")
    for v in ("1", "2", "10"):
        store.publish("fraud", _saved_model(tmp_path, v), _manifest(v))
    assert store.versions("fraud") == ["1", "2", "10"]
    assert store.resolve("fraud") == "10"
    assert store.next_version("fraud") == "11"


def test_unknown_model_and_version_are_named_errors(tmp_path):
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelNotFound):
        store.resolve("fraud")
    store.publish("fraud", _saved_model(tmp_path), _manifest("1"))
    with pytest.raises(VersionNotFound, match="served versions: 1"):
        store.resolve("fraud", "7")


def test_half_written_version_is_invisible(tmp_path):
    store = ModelStore(tmp_path / "store")
    (tmp_path / "store" / "fraud" / "1" / "saved_model").mkdir(parents=True)  # no manifest
    assert store.versions("fraud") == []
    assert store.models() == []


def test_verify_detects_a_changed_artifact(tmp_path):
    store = ModelStore(tmp_path / "store")
    store.publish("fraud", _saved_model(tmp_path), _manifest("1"))
    pb = store.local_path("fraud", "1") / "saved_model" / "saved_model.pb"
    pb.chmod(0o644)
    pb.write_text("tampered")
    assert not store.verify("fraud", "1")


def test_fsspec_root_round_trip_downloads_and_checks_digest(tmp_path):
    store = ModelStore("memory://finserve-test-store", cache_dir=str(tmp_path / "cache"))
    store.publish("fraud", _saved_model(tmp_path), _manifest("1"))
    assert store.versions("fraud") == ["1"]
    local = store.local_path("fraud", "1")
    assert local.is_relative_to(tmp_path / "cache")
    assert json.loads((local / MANIFEST).read_text())["version"] == "1"
    assert store.verify("fraud", "1")
