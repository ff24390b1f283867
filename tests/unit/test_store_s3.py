"""The model store on a real S3 API (moto's server, tests/s3.py), read through s3fs, and
replicas that start while it cannot be read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import s3fs

from serving import store as store_module
from serving.protocol.examples import protocol_bodies
from serving.runtime import ModelRunner, TaskProcessing
from serving.store import MANIFEST, SAVED_MODEL_DIR, ModelStore, StoreUnavailable
from serving.tasks import get_task
from tests.integration.conftest import wait_for
from tests.unit.test_store import VARIABLES, _flip_byte

if TYPE_CHECKING:
    from tests.s3 import S3

pytest_plugins = ["tests.s3"]


def _upload(tiny_store: ModelStore, s3: S3, cache: Path, versions: tuple[str, ...] = ("1",),
            ) -> ModelStore:
    """An ``s3://`` store in the test's bucket holding the tiny store's fraud ``versions``
    (published through the store itself), cached below ``cache``."""
    store = ModelStore(f"s3://{s3.bucket}/models", cache_dir=str(cache))
    for version in versions:
        store.publish("fraud", Path(tiny_store.root) / "fraud" / version / SAVED_MODEL_DIR,
                      tiny_store.manifest("fraud", version))
    return store


def _scores(store: ModelStore, version: str = "1") -> np.ndarray:
    """Scores of a ready runner for a few built-in fraud rows."""
    runner = ModelRunner(store, "fraud", "fraud", [version], intra_op_threads=1)
    runner.load_all()
    assert runner.ready, runner.reason
    x = TaskProcessing(store, "fraud", "fraud", [version]).preprocess(
        version, get_task("fraud").sample_data(seed=2, n=4).raw).data
    return runner.predict_batch([(version, x)])[0]["scores"]


def test_a_version_loads_from_s3_and_predicts_as_the_local_store(tiny_store, s3, tmp_path):
    store = _upload(tiny_store, s3, tmp_path / "cache")
    np.testing.assert_array_equal(_scores(store), _scores(tiny_store))
    assert any(p.endswith(VARIABLES) for p in s3.gets())  # it did come from S3


def test_versions_and_latest_are_listed_from_s3(tiny_store, s3, tmp_path):
    store = _upload(tiny_store, s3, tmp_path / "cache", ("1", "2"))
    assert store.models() == ["fraud"] and store.versions("fraud") == ["1", "2"]
    assert store.resolve("fraud", "latest") == "2" == store.manifest("fraud").version
    assert store.next_version("fraud") == "3"
    s3.server.client().copy_object(  # another writer publishes version 3 (a manifest only)
        Bucket=s3.bucket, Key="models/fraud/3/manifest.json",
        CopySource={"Bucket": s3.bucket, "Key": "models/fraud/2/manifest.json"})
    assert store.versions("fraud") == ["1", "2", "3"]  # not a listing cached before


def test_a_second_load_reads_the_saved_model_from_the_cache(tiny_store, s3, tmp_path):
    store = _upload(tiny_store, s3, tmp_path / "cache")
    first = _scores(store)
    s3.requests.clear()
    np.testing.assert_array_equal(_scores(store), first)
    reads = s3.gets()
    assert reads and all(p.endswith(f"/{MANIFEST}") for p in reads), reads


def test_a_tampered_cached_file_is_fetched_again_never_served(tiny_store, s3, tmp_path, caplog):
    store = _upload(tiny_store, s3, tmp_path / "cache")
    cached = store.verified("fraud", "1").path
    _flip_byte(cached / VARIABLES)
    s3.requests.clear()
    with caplog.at_level(logging.WARNING, logger="finserve.store"):
        np.testing.assert_array_equal(_scores(store), _scores(tiny_store))
    assert any(f"{VARIABLES} does not match" in r.getMessage() for r in caplog.records)
    assert any(p.endswith(VARIABLES) for p in s3.gets())
    assert (cached / VARIABLES).read_bytes() == (
        Path(tiny_store.root) / "fraud" / "1" / VARIABLES).read_bytes()


def _unavailable(store: ModelStore, match: str) -> None:
    """Loading fails with one clear error naming the store; the runner is not ready."""
    runner = ModelRunner(store, "fraud", "fraud", ["1"], intra_op_threads=1)
    with pytest.raises(StoreUnavailable, match=match) as failed:
        runner.load_all()
    assert failed.value.status_code == 503 and store.root in failed.value.message
    shown = failed.value.__cause__ or (None if failed.value.__suppress_context__
                                       else failed.value.__context__)
    assert shown is None  # one line, no chained client traceback
    assert not runner.ready


def test_a_wrong_secret_key_is_refused_naming_the_store(tiny_store, s3, tmp_path, monkeypatch):
    store = _upload(tiny_store, s3, tmp_path / "cache")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    _unavailable(ModelStore(store.root, cache_dir=str(tmp_path / "cache")),
                 "could not be read: PermissionError: Forbidden")


def test_a_bucket_that_does_not_exist_is_named(s3, tmp_path):
    store = ModelStore(f"s3://{s3.bucket}-missing/models", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(StoreUnavailable, match=f"bucket '{s3.bucket}-missing' does not exist"):
        store.models()
    _unavailable(store, "does not exist")


def test_an_interrupted_download_is_never_served(tiny_store, s3, tmp_path):
    """A file gone from the bucket after the listing (or a connection cut) fails the load;
    nothing it left is served: the next load downloads the whole version."""
    store = _upload(tiny_store, s3, tmp_path / "cache")
    s3.server.fault = lambda method, path: (
        (404, b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>")
        if method == "GET" and path.endswith(VARIABLES) else None)
    _unavailable(store, "FileNotFoundError: gone")
    versions = next((tmp_path / "cache").iterdir()) / "fraud"
    assert list(versions.iterdir()) == []  # no copy, no staging folder
    s3.server.fault = None
    np.testing.assert_array_equal(_scores(store), _scores(tiny_store))
    assert [p.name for p in versions.iterdir()] == ["1"]


def test_an_upload_that_never_published_is_replaced_not_blocking(tiny_store, s3, tmp_path):
    """Files of a version without its manifest (a publisher cut off) are not listed, and
    publishing that version again replaces them rather than failing as 'already exists'."""
    key = f"models/fraud/1/{SAVED_MODEL_DIR}/left-over.bin"
    s3.server.client().put_object(Bucket=s3.bucket, Key=key, Body=b"half")
    assert ModelStore(f"s3://{s3.bucket}/models").versions("fraud") == []
    store = _upload(tiny_store, s3, tmp_path / "cache")
    assert store.versions("fraud") == ["1"] and store.verify("fraud", "1")
    listed = s3.server.client().list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert key not in {o["Key"] for o in listed}


def _forbidden(method: str, path: str) -> tuple[int, bytes]:
    """S3 refusing every request, as it does a revoked key."""
    return 403, b"<Error><Code>AccessDenied</Code><Message>revoked</Message></Error>"


def _calls(app: Any, *calls: tuple[str, str]) -> list[tuple[int, dict[str, Any]]]:
    """(status, JSON) of each (method, path) on the gateway's ASGI app; POSTs send fraud's
    V2 example body."""
    import asyncio

    import httpx

    body = protocol_bodies("fraud")["v2"]

    async def go() -> list[tuple[int, dict[str, Any]]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            answers = [await client.request(m, p, json=body if m == "POST" else None)
                       for m, p in calls]
        return [(a.status_code, a.json()) for a in answers]
    return asyncio.run(go())


def test_a_runner_started_while_its_store_is_unreadable_is_not_ready_then_loads(
        tiny_store, s3, tmp_path, monkeypatch):
    """No exception out of the replica's start: not ready, the reason naming the store,
    and ready, serving the store's latest version, once the store reads again."""
    monkeypatch.setattr(store_module, "STORE_RETRY_S", 0.05)
    store = _upload(tiny_store, s3, tmp_path / "cache", versions=("1", "2"))
    s3.server.fault = _forbidden
    runner = ModelRunner(ModelStore(store.root, cache_dir=str(tmp_path / "c2")), "fraud",
                         "fraud", [], intra_op_threads=1)
    runner.load_latest()
    assert not runner.ready and store.root in runner.reason and "Forbidden" in runner.reason
    with pytest.raises(StoreUnavailable):
        runner.artifact_sha256("2")
    s3.server.fault = None
    wait_for(lambda: runner.ready, interval=0.05)
    assert runner.reason is None and runner.versions == ["2"]
    assert runner.artifact_sha256("2") == store.manifest("fraud", "2").artifact_sha256


def test_a_gateway_started_while_its_store_is_unreadable_answers_503_until_it_reads(
        tiny_store, s3, tmp_path, make_gateway, monkeypatch):
    """The replica starts (a failed start would take every model down with it): readiness
    is 503 and a prediction 503 naming the store; once it reads, both are 200. A routing
    update on a replica already routed still fails while the store is unreadable, and the
    routing it had keeps answering."""
    monkeypatch.setattr(store_module, "STORE_RETRY_S", 0.05)
    store = _upload(tiny_store, s3, tmp_path / "cache")
    s3.server.fault = _forbidden
    gateway = make_gateway(store_uri=store.root, models=[{"name": "fraud"}])
    gateway.reconfigure({})
    app = gateway.__serve_build_asgi_app__()
    ready, ready_model, answer = _calls(app, ("GET", "/v2/health/ready"),
                                        ("GET", "/v2/models/fraud/ready"),
                                        ("POST", "/v2/models/fraud/infer"))
    assert ready == (503, {"ready": False, "models": {"fraud": False}})
    for status, error in (ready_model, answer):
        assert status == 503 and store.root in error["error"], error
    s3.server.fault = None
    wait_for(lambda: _calls(app, ("GET", "/v2/health/ready"))[0][0] == 200, interval=0.05)
    assert _calls(app, ("POST", "/v2/models/fraud/infer"))[0][0] == 200
    s3.server.fault = _forbidden
    with pytest.raises(StoreUnavailable):
        gateway.reconfigure({"models": {"fraud": {"versions": ["latest"]}}})
    assert [s for s, _ in _calls(app, ("GET", "/v2/health/ready"),
                                 ("POST", "/v2/models/fraud/infer"))] == [200, 200]
