import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from serving.errors import ModelNotFound, VersionExists, VersionNotFound
from serving.runtime import ModelRunner, TaskProcessing
from serving.store import (
    MANIFEST,
    IntegrityError,
    Manifest,
    ModelStore,
    digest_dir,
    params_digest,
    utc_now,
)
from serving.tasks import get_task


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


# --- integrity on load, with real SavedModels (copies of the session's tiny store) ----------
VARIABLES = "saved_model/variables/variables.data-00000-of-00001"


def _copy(tiny_store: ModelStore, tmp: Path, model: str = "fraud") -> ModelStore:
    """A writable local store holding a copy of ``model`` v1 from the tiny store."""
    root = tmp / "store"
    shutil.copytree(Path(tiny_store.root) / model / "1", root / model / "1")
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o644)
    return ModelStore(root)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(store: ModelStore, edit) -> None:
    path = Path(store.root) / "fraud" / "1" / MANIFEST
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _refused(store: ModelStore, match: str, caplog: pytest.LogCaptureFixture) -> ModelRunner:
    """The runner still starts, is not ready, says why, logs it and answers no request."""
    runner = ModelRunner(store, "fraud", "fraud", ["1"], intra_op_threads=1)
    with caplog.at_level(logging.ERROR, logger="finserve.runtime"):
        runner.load_all()
    assert not runner.ready and runner.reason and match in runner.reason
    assert any(match in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    with pytest.raises(IntegrityError, match="refused") as refused:
        runner.predict_batch([("1", np.zeros((1, 11), np.float32))])
    assert refused.value.status_code == 503
    with pytest.raises(IntegrityError):
        runner.artifact_sha256("1")
    return runner


def test_a_verified_version_exposes_the_digest_of_what_was_loaded(tiny_store, tmp_path):
    store = _copy(tiny_store, tmp_path)
    manifest = store.manifest("fraud", "1")
    assert set(manifest.files) == {
        "saved_model.pb", "fingerprint.pb", "variables/variables.index",
        "variables/variables.data-00000-of-00001"}
    assert manifest.preprocessing_sha256 == params_digest(manifest.preprocessing)
    verified = store.verified("fraud", "1")
    assert verified.artifact_sha256 == manifest.artifact_sha256 and verified.seconds > 0
    runner = ModelRunner(store, "fraud", "fraud", ["1"], intra_op_threads=1)
    runner.load_all()
    assert runner.ready and runner.reason is None
    assert runner.artifact_sha256("1") == manifest.artifact_sha256 == runner.digests["1"]
    assert set(runner.verify_seconds) == {"1"}


def test_a_byte_changed_in_the_variables_is_refused_naming_the_file(tiny_store, tmp_path,
                                                                    caplog):
    store = _copy(tiny_store, tmp_path)
    _flip_byte(Path(store.root) / "fraud" / "1" / VARIABLES)
    assert not store.verify("fraud", "1")
    with pytest.raises(IntegrityError, match=f"{VARIABLES} does not match its sha256"):
        store.verified("fraud", "1")
    _refused(store, VARIABLES, caplog)


@pytest.mark.parametrize("change, named", [
    ("add", "saved_model/assets/extra.txt is not in the manifest"),
    ("remove", "saved_model/fingerprint.pb is missing"),
])
def test_a_file_added_or_removed_is_refused(tiny_store, tmp_path, caplog, change, named):
    store = _copy(tiny_store, tmp_path)
    saved_model = Path(store.root) / "fraud" / "1" / "saved_model"
    if change == "add":
        (saved_model / "assets" / "extra.txt").write_text("not trained")
    else:
        (saved_model / "fingerprint.pb").unlink()
    _refused(store, named, caplog)


def test_edited_preprocessing_parameters_are_refused_by_both_stages(tiny_store, tmp_path,
                                                                     caplog):
    store = _copy(tiny_store, tmp_path)

    def edit(m: dict) -> None:
        m["preprocessing"]["mean"][0] += 1.0

    _edit_manifest(store, edit)
    named = "'preprocessing' does not match its preprocessing_sha256"
    _refused(store, named, caplog)
    steps = TaskProcessing(store, "fraud", "fraud", ["1"])  # preloading logs it, does not raise
    with pytest.raises(IntegrityError, match=named):
        steps.preprocess("1", get_task("fraud").sample_data(seed=1, n=2).raw)


def test_an_old_manifest_without_per_file_digests_is_verified_by_its_tree_digest(
        tiny_store, tmp_path, caplog):
    store = _copy(tiny_store, tmp_path)

    def strip(m: dict) -> None:
        m.pop("files", None)
        m.pop("preprocessing_sha256", None)

    _edit_manifest(store, strip)
    manifest = store.manifest("fraud", "1")
    assert manifest.files == {} and manifest.preprocessing_sha256 == ""
    runner = ModelRunner(store, "fraud", "fraud", ["1"], intra_op_threads=1)
    runner.load_all()
    assert runner.ready and runner.artifact_sha256("1") == manifest.artifact_sha256

    _flip_byte(Path(store.root) / "fraud" / "1" / VARIABLES)
    _refused(store, "the SavedModel files do not match artifact_sha256", caplog)


def test_verification_runs_when_a_version_loads_not_per_request(tiny_store, tmp_path):
    """Requests are answered by what was verified and loaded; they never re-read the store
    (a change made after the load is found at the next load)."""
    store = _copy(tiny_store, tmp_path)
    runner = ModelRunner(store, "fraud", "fraud", ["1"], intra_op_threads=1)
    runner.load_all()
    verified = runner.artifact_sha256("1")
    x = TaskProcessing(store, "fraud", "fraud", ["1"]).preprocess(
        "1", get_task("fraud").sample_data(seed=2, n=4).raw).data
    before = runner.predict_batch([("1", x)])[0]["scores"]
    _flip_byte(Path(store.root) / "fraud" / "1" / VARIABLES)
    for _ in range(3):
        np.testing.assert_array_equal(runner.predict_batch([("1", x)])[0]["scores"], before)
    assert runner.ready and runner.artifact_sha256("1") == verified
    assert not store.verify("fraud", "1")  # the next load refuses it


# --- the remote-store cache (fsspec memory://) ------------------------------------------------
def _remote(tiny_store: ModelStore, tmp: Path) -> ModelStore:
    """A memory:// store holding the tiny store's fraud v1, cached below ``tmp``."""
    store = ModelStore(f"memory://finserve-{uuid.uuid4().hex[:8]}", cache_dir=str(tmp / "cache"))
    store.publish("fraud", Path(tiny_store.root) / "fraud" / "1" / "saved_model",
                  tiny_store.manifest("fraud", "1"))
    return store


def test_a_cached_copy_that_differs_is_downloaded_again(tiny_store, tmp_path, caplog):
    store = _remote(tiny_store, tmp_path)
    cached = store.local_path("fraud", "1")
    good = (cached / VARIABLES).read_bytes()
    _flip_byte(cached / VARIABLES)
    with caplog.at_level(logging.WARNING, logger="finserve.store"):
        runner = ModelRunner(store, "fraud", "fraud", ["1"], intra_op_threads=1)
        runner.load_all()
    assert runner.ready and (cached / VARIABLES).read_bytes() == good
    assert runner.artifact_sha256("1") == store.manifest("fraud", "1").artifact_sha256
    assert any(VARIABLES in r.getMessage() and "downloading it again" in r.getMessage()
               for r in caplog.records)
    assert [p.name for p in cached.parent.iterdir()] == ["1"]  # nothing staged is left


def test_a_half_written_cache_is_never_served(tiny_store, tmp_path):
    """A cached folder with its manifest but not all its files (a crash mid-copy) and a
    staging folder left behind are neither served: the version is fetched again."""
    store = _remote(tiny_store, tmp_path)
    cached = store.local_path("fraud", "1")
    shutil.rmtree(cached / "saved_model" / "variables")
    shutil.copytree(cached, cached.with_name(".1-deadbeef"))
    assert store.local_path("fraud", "1") == cached and (cached / VARIABLES).exists()
    assert digest_dir(cached / "saved_model") == store.manifest("fraud", "1").artifact_sha256


def test_a_cached_copy_is_refused_when_the_store_itself_is_wrong(tiny_store, tmp_path,
                                                                 caplog):
    store = _remote(tiny_store, tmp_path)
    cached = store.local_path("fraud", "1")
    _flip_byte(cached / VARIABLES)
    with fsspec.open(f"{store.root}/fraud/1/{VARIABLES}", "rb") as f:
        data = bytearray(f.read())
    data[0] ^= 0x01
    with fsspec.open(f"{store.root}/fraud/1/{VARIABLES}", "wb") as f:
        f.write(bytes(data))
    with pytest.raises(IntegrityError, match=f"{VARIABLES}.*downloaded from {store.root}"):
        store.verified("fraud", "1")
    assert not cached.parent.exists() or list(cached.parent.iterdir()) == []
    _refused(store, f"downloaded from {store.root}", caplog)
    assert not cached.exists()
