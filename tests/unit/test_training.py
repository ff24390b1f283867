"""Training lifecycle and the Model stage's batch function, on real SavedModels (no Ray)."""

import numpy as np
import pytest

from serving import __version__
from serving.config import default_model_names
from serving.errors import ModelNotReady, VersionNotFound
from serving.runtime import ModelRunner, TaskProcessing
from serving.store import params_digest
from serving.tasks import get_task
from serving.training import load_signature


def test_manifest_records_what_a_model_risk_team_asks_for(tiny_store):
    m = tiny_store.manifest("fraud", "1")
    assert (m.model, m.task, m.version) == ("fraud", "fraud", "1")
    assert m.training_data["rows"] == 8000 and len(m.training_data["sha256"]) == 64
    assert m.training_data["holdout_rows"] == 1600
    assert m.metrics["metric"] == "roc_auc" and m.metrics["baseline"] == 0.5
    assert m.metrics["value"] > 0.6  # the model learned something beyond the constant score
    assert m.package_version == __version__
    assert m.framework["tensorflow"].startswith("2.")
    assert set(m.preprocessing) >= {"mean", "std", "features"}
    assert not any(k.startswith("_") for k in m.preprocessing)
    # what loading verifies: each SavedModel file's sha256 and the parameters' digest
    assert {"saved_model.pb", "variables/variables.index"} <= set(m.files)
    assert all(len(d) == 64 for d in m.files.values())
    assert m.preprocessing_sha256 == params_digest(m.preprocessing)
    assert tiny_store.verify("fraud", "1")


def test_each_training_run_is_a_new_version(tiny_store):
    assert tiny_store.versions("fraud") == ["1", "2", "3"]
    one, two = tiny_store.manifest("fraud", "1"), tiny_store.manifest("fraud", "2")
    assert one.artifact_sha256 != two.artifact_sha256
    assert one.training_data["sha256"] != two.training_data["sha256"]  # other seed, other data


def test_sentiment_beats_the_majority_class(tiny_store):
    m = tiny_store.manifest("sentiment")
    assert m.metrics["value"] > m.metrics["baseline"] + 0.2


def _runner(store, model, versions):
    runner = ModelRunner(store, model, model, versions, intra_op_threads=1)
    runner.load_all()
    return runner


def test_batch_function_groups_by_version_and_matches_direct_calls(tiny_store):
    runner = _runner(tiny_store, "fraud", ["1", "2"])
    steps = TaskProcessing(tiny_store, "fraud", "fraud", ["1", "2"])
    raw = get_task("fraud").sample_data(seed=9, n=7).raw
    requests = [("1", steps.preprocess("1", raw[:3]).data),
                ("2", steps.preprocess("2", raw[3:4]).data),
                ("1", steps.preprocess("1", raw[4:]).data)]
    results = runner.predict_batch(requests)
    assert [len(r["scores"]) for r in results] == [3, 1, 3]
    for version, (_, x), got in zip(["1", "2", "1"], requests, results, strict=True):
        direct = load_signature(tiny_store.local_path("fraud", version) / "saved_model")(x)
        np.testing.assert_allclose(got["scores"], direct["scores"], rtol=1e-5)
    other = load_signature(tiny_store.local_path("fraud", "1") / "saved_model")(requests[1][1])
    assert not np.allclose(results[1]["scores"], other["scores"])


def test_batch_function_refuses_unknown_versions_and_unloaded_models(tiny_store):
    runner = ModelRunner(tiny_store, "fraud", "fraud", ["1"])
    x = np.zeros((1, 11), np.float32)
    with pytest.raises(ModelNotReady):
        runner.predict_batch([("1", x)])
    runner.load_all()
    assert runner.ready and runner.digests["1"] == tiny_store.manifest("fraud", "1").artifact_sha256
    with pytest.raises(VersionNotFound):
        runner.predict_batch([("5", x)])
    # a published version the runner was not configured with loads on first use, so a
    # rolling update whose gateway is ahead of its stages never fails a request
    assert runner.predict_batch([("2", x)])[0]["scores"].shape == (1, 1)
    assert "2" in runner.digests


def test_fraud_reviews_and_blocks_carry_reasons_from_the_served_model(tiny_store):
    from serving.tasks.fraud import REASONS

    runner = _runner(tiny_store, "fraud", ["2"])
    steps = TaskProcessing(tiny_store, "fraud", "fraud", ["2"])
    ordinary = [24.5, 14, 0.1, 3.2, 0, 1, 0, 1500, 0.9]
    risky = [950.0, 3, 0.9, 1200.0, 6, 0, 1, 20, 7.5]
    batch = steps.preprocess("2", np.array([ordinary, risky], np.float32))
    batch.data = runner.predict_batch([("2", batch.data)])[0]
    answers = steps.postprocess("2", batch)
    assert answers["decision"].tolist()[0] == "approve"
    assert answers["decision"].tolist()[1] in ("review", "block")
    assert (answers["reason_codes"][0] == "").all()  # approvals carry no reasons
    codes = [c for c in answers["reason_codes"][1] if c]
    assert codes and set(codes) <= {code for code, _ in REASONS.values()}


def test_a_serving_process_loads_and_calls_every_model_without_importing_keras(tiny_store):
    """TensorFlow's import pulls in Keras and scikit-learn (a second per replica start);
    serving needs neither, gives the same answers without them, and Keras still imports
    afterwards for whatever needs it."""
    import subprocess
    import sys

    script = f"""
import sys
from serving.runtime import ModelRunner, TaskProcessing, import_tensorflow
from serving.store import ModelStore
from serving.tasks import get_task
import_tensorflow()
print("imported", "keras" in sys.modules, "sklearn" in sys.modules)
store = ModelStore({str(tiny_store.root)!r})
for name in {sorted(default_model_names())!r}:
    runner = ModelRunner(store, name, name, ["1"])
    runner.load_all()
    batch = TaskProcessing(store, name, name, ["1"]).preprocess(
        "1", get_task(name).sample_data(seed=5, n=8).raw)
    for key, values in sorted(runner.predict_batch([("1", batch.data)])[0].items()):
        print(name, key, values.round(5).tolist())
print("served", "keras" in sys.modules)
import keras
print("keras", keras.layers.Dense(2)(keras.ops.ones((1, 3))).shape)
"""
    def run(preload: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", preload + script], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.splitlines()

    lean = run("")
    assert lean[0] == "imported False False"
    assert lean[-2:] == ["served False", "keras (1, 2)"]
    assert lean[1:-2] == run("import keras\n")[1:-2]  # the same answers as with Keras
    assert {line.split()[0] for line in lean[1:-2]} == set(default_model_names())


def test_a_loaded_version_leaves_the_long_lived_heap_out_of_garbage_collection(tiny_store):
    """After a version loads, what the process holds for good (TensorFlow, Ray's modules,
    the signature) is frozen, so a full collection no longer scans it (a fresh process:
    the freeze is process-wide)."""
    import subprocess
    import sys

    script = f"""
import gc
from serving.runtime import GC_YOUNG_THRESHOLD, ModelRunner, import_tensorflow
from serving.store import ModelStore
import_tensorflow()
before = len(gc.get_objects())
runner = ModelRunner(ModelStore({str(tiny_store.root)!r}), "fraud", "fraud", ["1"])
runner.load_all()
print(before, gc.get_freeze_count(), len(gc.get_objects()), gc.get_threshold()[0],
      GC_YOUNG_THRESHOLD)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, frozen, scanned, threshold, wanted = map(int, out.stdout.split())
    assert frozen > before > 50_000  # TensorFlow alone is far more than this
    assert scanned < before // 20
    assert threshold == wanted
