"""Signatures compiled by XLA per batch-size bucket (serving/jit.py), on real SavedModels."""

import time

import numpy as np
import pytest

from serving import jit
from serving.config import ModelStageSettings
from serving.runtime import ModelRunner
from serving.tasks import get_task
from serving.training import load_signature


def _inputs(store, model, n):
    task = get_task(model)
    return task.preprocess(task.sample_data(seed=3, n=n).raw,
                           store.manifest(model, "1").preprocessing)


def _wait_compiled(signature, size, timeout=60.0):
    deadline = time.monotonic() + timeout
    while size not in signature.compiled_buckets and signature.failed is None:
        assert time.monotonic() < deadline, f"bucket {size} not compiled in {timeout} s"
        time.sleep(0.02)


def test_buckets_waste_at_most_a_fifth_of_a_call():
    assert jit.BUCKETS[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)
    assert jit.MAX_ROWS == 4096 and len(jit.BUCKETS) == 44
    assert [jit.bucket(n) for n in (1, 9, 64, 65, 1088, 4096)] == [1, 10, 64, 80, 1280, 4096]
    assert all((jit.bucket(n) - n) / jit.bucket(n) < 0.2 for n in range(1, jit.MAX_ROWS + 1))


def test_padding_repeats_the_last_row():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert jit.pad_rows(x, 3) is x
    np.testing.assert_array_equal(jit.pad_rows(x, 5), [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])


@pytest.mark.parametrize("model", ["fraud", "sentiment"])
def test_compiled_buckets_answer_what_the_plain_signature_answers(tiny_store, model):
    path = tiny_store.local_path(model, "1") / "saved_model"
    plain, compiled = load_signature(path), load_signature(path, jit_compile=True)
    x = _inputs(tiny_store, model, 70)
    for rows in (1, 9, 64, 70):  # 9 and 70 are padded (to 10 and 80)
        compiled.compile_now(x[:rows])
        want, got = plain(x[:rows]), compiled(x[:rows])
        assert set(got) == set(want)
        for name, value in want.items():
            assert got[name].shape == value.shape and got[name].dtype == value.dtype
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
    assert compiled.compiled_buckets == [1, 10, 64, 80] and compiled.failed is None


def test_an_uncompiled_bucket_is_answered_plainly_and_compiled_in_the_background(tiny_store):
    path = tiny_store.local_path("fraud", "1") / "saved_model"
    plain, compiled = load_signature(path), load_signature(path, jit_compile=True)
    x = _inputs(tiny_store, "fraud", 11)  # padded to 12
    assert compiled.compiled_buckets == []
    np.testing.assert_array_equal(compiled(x)["scores"], plain(x)["scores"])  # not compiled yet
    _wait_compiled(compiled, 12)
    assert compiled.compiled_buckets == [12]
    np.testing.assert_allclose(compiled(x)["scores"], plain(x)["scores"], rtol=1e-5)
    empty = compiled(x[:0])
    assert {name: v.shape[0] for name, v in empty.items()} == {"scores": 0, "attributions": 0}


def test_calls_above_the_largest_bucket_are_split(tiny_store, monkeypatch):
    monkeypatch.setattr(jit, "MAX_ROWS", 8)
    path = tiny_store.local_path("fraud", "1") / "saved_model"
    plain, compiled = load_signature(path), load_signature(path, jit_compile=True)
    x = _inputs(tiny_store, "fraud", 19)
    compiled.compile_now(x[:8])
    compiled.compile_now(x[:3])
    got = compiled(x)  # 8 + 8 + 3 rows
    assert got["scores"].shape == (19, 1)
    np.testing.assert_allclose(got["scores"], plain(x)["scores"], rtol=1e-5)


def test_a_signature_xla_cannot_compile_is_served_plainly():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    def signature(inputs):  # string formatting has no XLA kernel on CPU
        return {"text": tf.strings.as_string(inputs), "sum": tf.reduce_sum(inputs, axis=1)}

    def plain(x):
        return {k: v.numpy() for k, v in signature(inputs=tf.constant(x)).items()}

    compiled = jit.JitSignature(signature, plain)
    x = np.ones((3, 2), np.float32)
    compiled.compile_now(x)
    assert compiled.failed and compiled.compiled_buckets == []
    np.testing.assert_array_equal(compiled(x)["sum"], [2, 2, 2])
    compiled(np.ones((5, 2), np.float32))
    assert compiled._pending == set(), "no compile is tried once XLA is off"


def test_the_runner_compiles_where_the_task_and_the_config_say(tiny_store):
    assert ModelStageSettings().jit_compile is None  # the task's default
    assert not any(get_task(t).jit_compile for t in ("fraud", "credit", "sentiment",
                                                     "forecast", "aml", "digits", "recommend"))
    on = ModelRunner(tiny_store, "fraud", "fraud", ["1"], intra_op_threads=1, jit_compile=True)
    off = ModelRunner(tiny_store, "sentiment", "sentiment", ["1"], jit_compile=False)
    default = ModelRunner(tiny_store, "sentiment", "sentiment", ["1"])
    assert isinstance(on.get("1"), jit.JitSignature)
    assert not isinstance(off.get("1"), jit.JitSignature)
    assert not isinstance(default.get("1"), jit.JitSignature)
    # the load's warm-up calls (1 row and 8) start those buckets' compiles
    _wait_compiled(on.get("1"), 8)
    _wait_compiled(on.get("1"), 1)
    assert on.get("1").compiled_buckets == [1, 8]


def test_the_executable_cache_is_a_folder_only_its_user_can_write(tmp_path, monkeypatch):
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path / "xla"))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    jit.use_cache_dir()
    assert (tmp_path / "xla").stat().st_mode & 0o777 == 0o700
    assert jit.cache_dir() == tmp_path / "xla"
    assert jit.os.environ["TF_XLA_FLAGS"] == (
        f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={tmp_path / 'xla'}")
    jit.use_cache_dir()  # a folder already named is left as it is
    assert jit.os.environ["TF_XLA_FLAGS"].count("persistent_cache_directory") == 1
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # executables in it are code: another user could plant some
    monkeypatch.setenv(jit.CACHE_ENV, str(shared))
    monkeypatch.setenv("TF_XLA_FLAGS", "")
    assert jit.cache_dir() is None
    jit.use_cache_dir()
    assert "persistent_cache_directory" not in jit.os.environ["TF_XLA_FLAGS"]


def test_the_compile_thread_runs_at_a_lower_priority():
    def niceness():
        return jit.os.getpriority(jit.os.PRIO_PROCESS, jit.threading.get_native_id())

    mine = niceness()
    theirs = jit._compiler.submit(niceness).result(timeout=30)
    assert theirs == min(19, mine + jit.COMPILE_NICENESS)
    assert niceness() == mine
