"""The bench's peers (issue 17) without their venvs: the shared pipeline answers as FinServe's
runtime does, the answer check refuses what differs, and the peers' settings and venvs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from benchmarks.peers import answers
from benchmarks.peers.launch import STAMP, PeerEnv, PeerSetupError, mlserver_folder, peer_system
from benchmarks.pipeline import load_served, v2_outputs
from serving.protocol.codec import from_numpy
from serving.runtime import ModelRunner, TaskProcessing
from serving.tasks import get_task

TESTDATA = Path(__file__).resolve().parents[1] / "testdata"
#: numbers (fraud), text (sentiment) and a task whose postprocessing reads what its
#: preprocessing hands past the model (forecast's last price)
MODELS = {"fraud": {"review_threshold": 0.2, "block_threshold": 0.6}, "sentiment": {},
          "forecast": {}}


def serve_config(path: Path, store_root: Path) -> Path:
    """A Serve config like the bench's: ``MODELS`` with options, from ``store_root``."""
    models = [{"name": m, **({"options": o} if o else {})} for m, o in MODELS.items()]
    path.write_text(yaml.safe_dump({"applications": [{
        "name": "finserve", "import_path": "deployments.app:build_app",
        "args": {"store_uri": str(store_root), "models": models}}]}))
    return path


def raw_batch(model: str) -> np.ndarray:
    """The records of tests/testdata/<model>_task_request.json as the task's raw batch."""
    task = get_task(model)
    records = json.loads((TESTDATA / f"{model}_task_request.json").read_text())["records"]
    return task.records_to_raw([task.Record.model_validate(r) for r in records])


def finserve_answer(store: Any, model: str, raw: np.ndarray) -> list[dict[str, Any]]:
    """FinServe's own answer in-process: its runtime's Preprocess, Model and Postprocess."""
    steps = TaskProcessing(store, model, model, ["latest"], MODELS[model])
    runner = ModelRunner(store, model, model, ["latest"])
    runner.load_all()
    batch = steps.preprocess("latest", get_task(model).check_raw(raw))
    batch.data = runner.predict_batch([("latest", batch.data)])[0]
    out = steps.postprocess("latest", batch)
    return [dict(zip(("name", "datatype", "shape", "data"), (k, *from_numpy(v)), strict=True))
            for k, v in out.items()]


@pytest.fixture(scope="module")
def served(tiny_store, tmp_path_factory):
    config = serve_config(tmp_path_factory.mktemp("peers") / "serve.yaml", tiny_store.root)
    return load_served(config)


@pytest.mark.parametrize("model", list(MODELS))
def test_the_peers_pipeline_answers_as_finserves_runtime(tiny_store, served, model):
    raw = raw_batch(model)
    got = {"outputs": v2_outputs(served[model].answer(raw))}
    expected = {"outputs": finserve_answer(tiny_store, model, raw)}
    assert answers.mismatch(expected, got) is None
    assert [o["name"] for o in got["outputs"]] == [o["name"] for o in expected["outputs"]]


def test_text_decoded_by_a_server_as_bytes_or_numpy_str_answers_the_same(served):
    raw = raw_batch("sentiment")
    want = v2_outputs(served["sentiment"].answer(raw))
    for decoded in (np.array([t.encode() for t in raw], dtype=object), raw.astype(str)):
        assert v2_outputs(served["sentiment"].answer(decoded)) == want


def test_only_loads_the_models_named(tiny_store, tmp_path):
    config = serve_config(tmp_path / "serve.yaml", tiny_store.root)
    assert list(load_served(config, only=["sentiment"])) == ["sentiment"]


EXPECTED = {"outputs": [
    {"name": "fraud_probability", "datatype": "FP32", "shape": [2], "data": [0.25, 1e-3]},
    {"name": "decision", "datatype": "BYTES", "shape": [2], "data": ["review", "allow"]}]}


def changed(name: str, **fields: Any) -> dict[str, Any]:
    """EXPECTED with the output ``name`` changed by ``fields``."""
    return {"outputs": [{**o, **fields} if o["name"] == name else o
                        for o in EXPECTED["outputs"]]}


def test_the_same_answer_passes_floats_within_the_tolerance_too():
    assert answers.mismatch(EXPECTED, EXPECTED) is None
    close = changed("fraud_probability", data=[0.25 * (1 + 5e-6), 1e-3 * (1 - 5e-6)])
    assert answers.mismatch(EXPECTED, close) is None
    extra = {**EXPECTED, "model_name": "fraud", "id": "x", "parameters": {}}
    assert answers.mismatch(EXPECTED, extra) is None  # envelope fields are the server's own


@pytest.mark.parametrize(("got", "says"), [
    (changed("decision", data=["review", "block"]), "strings differ"),
    (changed("fraud_probability", data=[0.25, 1e-3 * (1 + 1e-4)]), "values differ"),
    (changed("fraud_probability", datatype="FP64"), "datatype"),
    (changed("fraud_probability", shape=[2, 1]), "shape"),
    ({"outputs": EXPECTED["outputs"][:1]}, "outputs"),
    ({"outputs": [*EXPECTED["outputs"], {"name": "x", "datatype": "FP32", "shape": [2],
                                         "data": [0, 0]}]}, "outputs"),
])
def test_a_different_answer_is_refused_and_says_why(got, says):
    assert says in (answers.mismatch(EXPECTED, got) or "")


def test_an_error_or_unreadable_answer_is_refused():
    expected = json.dumps(EXPECTED).encode()
    assert answers.check(200, expected, expected) is None
    assert "HTTP 500" in (answers.check(500, b'{"error":"boom"}', expected) or "")
    assert "unreadable" in (answers.check(200, b"<html>", expected) or "")


def test_mlserver_batches_as_finserve_does_with_a_worker_per_core(tmp_path):
    config = Path(__file__).resolve().parents[2] / "deployments" / "serve.yaml"
    folder = mlserver_folder(config, ["fraud", "sentiment"], tmp_path / "ml",
                             {"http_port": 1, "grpc_port": 2, "metrics_port": 3})
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["parallel_workers"] == 2 and settings["host"] == "127.0.0.1"
    fraud = json.loads((folder / "fraud" / "model-settings.json").read_text())
    sentiment = json.loads((folder / "sentiment" / "model-settings.json").read_text())
    assert (fraud["max_batch_size"], sentiment["max_batch_size"]) == (64, 32)  # serve.yaml's
    assert 0 < fraud["max_batch_time"] <= 0.002  # batching acts; a lone request waits little
    assert fraud["implementation"].endswith("mlserver_runtime.FinServeRuntime")
    assert fraud["parameters"]["extra"]["config"] == str(config)


def test_kserve_runs_two_workers_from_its_own_venv(tmp_path):
    system = peer_system("kserve", Path("serve.yaml"), ["fraud"], tmp_path)
    assert system.cmd[0] == str(PeerEnv("kserve").bin("python"))
    assert system.cmd[system.cmd.index("--workers") + 1] == "2"
    assert system.env["PYTHONPATH"] and system.extra_ports  # FinServe importable; gRPC port


def test_a_venv_is_current_only_when_stamped_with_its_requirements(tmp_path):
    env = PeerEnv("kserve", envs=tmp_path)
    assert not env.current()
    env.root.mkdir()
    (env.root / STAMP).write_text("0" * 64)
    assert not env.current()  # made from another requirements file
    (env.root / STAMP).write_text(env.digest())
    assert env.current()


def test_a_failed_install_is_a_clear_error_with_its_log(tmp_path):
    env = PeerEnv("mlserver", envs=tmp_path, base_python=str(tmp_path / "no-python"))
    with pytest.raises(PeerSetupError, match=r"mlserver: .*venv.* failed") as caught:
        env.ensure()
    assert str(env.log) in str(caught.value) and env.log.exists()
    assert not env.current()


def test_a_peer_whose_venv_fails_is_left_out_and_says_why(monkeypatch, tmp_path):
    from benchmarks import run

    def fail(self: PeerEnv) -> None:
        raise PeerSetupError(f"{self.name}: pip failed")

    monkeypatch.setattr(PeerEnv, "ensure", fail)
    infos: dict[str, dict[str, Any]] = {}
    started: list[Any] = []
    targets = run.start_peers(tmp_path / "serve.yaml", ["fraud"], {"kserve", "mlserver"},
                              {}, {}, infos, started)
    assert targets == [] and started == []
    assert infos["kserve"]["error"] == "kserve: pip failed"
    assert infos["mlserver"]["error"] == "mlserver: pip failed"


def test_a_peer_is_timed_only_on_the_models_it_answered_as_finserve(monkeypatch, tmp_path):
    from benchmarks import run

    timed: list[str] = []
    monkeypatch.setattr(run, "settle", lambda url, body: (200, 0.0))
    monkeypatch.setattr(run, "wrk", lambda url, *a: timed.append(url) or {
        "rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "errors": 0})
    bodies = {(m, "v2", 64): tmp_path / f"{m}.json" for m in ("fraud", "credit")}
    bench = run.Bench(1, 0, bodies)
    peer = run.Target("kserve", "http://127.0.0.1:1", "v2", frozenset({"fraud"}))
    bench.interleaved([peer], ["fraud", "credit"], [run.Scenario("batch64 c=1", 64, 1)])
    assert timed == ["http://127.0.0.1:1/v2/models/fraud/infer"]
    assert [p["model"] for p in bench.points] == ["fraud"]
