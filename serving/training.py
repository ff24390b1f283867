"""The training lifecycle: data → preprocessing → model → held-out evaluation → new version.

The held-out metric is computed on the *exported* SavedModel through the same signature
the server calls, so the manifest describes exactly what is served.
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving.drift import DriftReference, reference_for
from serving.store import SAVED_MODEL_DIR, Manifest, ModelStore, utc_now
from serving.tasks import Dataset, PostprocessContext, Task, get_task

SIGNATURE = "serving_default"
#: progress callback: (epoch done, epochs, logs)
Progress = Callable[[int, int, dict[str, float]], None]


def data_digest(data: Dataset) -> str:
    """sha256 of the raw inputs and targets, to tie a version to its training data."""
    h = hashlib.sha256()
    if data.raw.dtype == object:
        for value in data.raw.reshape(-1):
            h.update(str(value).encode())
            h.update(b"\0")
    else:
        h.update(np.ascontiguousarray(data.raw).tobytes())
    h.update(np.ascontiguousarray(data.target).tobytes())
    return h.hexdigest()


def export_saved_model(task: Task, model: Any, params: dict[str, Any], path: Path) -> None:
    """Write ``model`` as a SavedModel whose ``serving_default`` maps ``inputs`` to the
    task's named outputs (``scores`` and any others)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=task.serving_outputs(model, params),
        input_signature=[task.model_input_spec(params)],
    )
    archive.write_out(str(path), verbose=False)


def load_signature(path: str | Path, jit_compile: bool = False
                   ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Load a SavedModel's serving signature as a numpy → {name: numpy} function;
    ``jit_compile``: answered by XLA per batch-size bucket once compiled (serving/jit.py)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signature = loaded.signatures[SIGNATURE]

    def call(x: np.ndarray) -> dict[str, np.ndarray]:
        return {name: t.numpy() for name, t in signature(inputs=tf.constant(x)).items()}

    call.loaded = loaded  # keep the trackable alive with the function
    if not jit_compile:
        return call
    from serving.jit import JitSignature

    return JitSignature(signature, call, name=str(path))


def predict_in_batches(call: Callable[[np.ndarray], dict[str, np.ndarray]], x: np.ndarray,
                       batch: int = 1024) -> dict[str, np.ndarray]:
    parts = [call(x[i : i + batch]) for i in range(0, len(x), batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def train(
    task_name: str,
    store: ModelStore,
    *,
    model_name: str | None = None,
    data_path: str | None = None,
    epochs: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Manifest:
    """Train ``task_name`` on the built-in data or ``data_path`` and publish a new version."""
    import keras

    task = get_task(task_name)
    model_name = model_name or task.name
    keras.utils.set_random_seed(seed)
    data = task.load_data(data_path) if data_path else task.sample_data(seed=seed, n=samples)
    train_set, holdout = task.split(data, seed=seed)
    params = task.fit_preprocessing(train_set)
    epochs = epochs or task.default_epochs
    model = _fit(task, train_set, params, epochs, progress)

    with tempfile.TemporaryDirectory(prefix="finserve-export-") as tmp:
        export_dir = Path(tmp) / SAVED_MODEL_DIR
        export_saved_model(task, model, params, export_dir)
        served = load_signature(export_dir)
        outputs = predict_in_batches(served, task.preprocess(holdout.raw, params))
        manifest = Manifest(
            model=model_name,
            task=task.name,
            version=store.next_version(model_name),
            created_at=utc_now(),
            training_data={
                "source": data.source,
                "rows": len(data),
                "train_rows": len(train_set),
                "holdout_rows": len(holdout),
                "sha256": data_digest(data),
            },
            # the tree digest, each file's sha256 and the parameters' digest
            # (preprocessing_sha256) are computed by the store as it publishes
            artifact_sha256="",
            metrics=task.evaluate(holdout, outputs, params).as_dict(),
            preprocessing=task.stored_params(params),
            training={"epochs": epochs, "seed": seed, "batch_size": task.batch_size},
            framework=_framework(),
            drift_reference=drift_reference(task, train_set, holdout, outputs, params),
        )
        return store.publish(model_name, export_dir, manifest)


def drift_reference(task: Task, train_set: Dataset, holdout: Dataset,
                    outputs: dict[str, np.ndarray], params: dict[str, Any]) -> DriftReference:
    """The version's training distribution (serving/drift.py): its raw input columns over
    the training rows, its scores over the held-out answers (postprocessed with the
    default options, as served)."""
    answers: dict[str, np.ndarray] = {}
    if task.outputs_with("score"):
        ctx = PostprocessContext(params, task.options(None), task.request_params(None),
                                 task.context(holdout.raw, params))
        answers = task.postprocess(outputs, ctx)
    return reference_for(task, train_set.raw, answers)


def _fit(task: Task, train_set: Dataset, params: dict[str, Any], epochs: int,
         progress: Progress | None) -> Any:
    """The task's Keras model, fit on the preprocessed training set."""
    x_train = task.preprocess(train_set.raw, params)
    y_train = task.targets(train_set, params)
    model = task.build_model(params)
    model.fit(
        x_train, y_train, epochs=epochs, batch_size=task.batch_size, verbose=0, shuffle=True,
        callbacks=[_ProgressCallback(epochs, progress)] if progress else [],
    )
    return model


def _framework() -> dict[str, str]:
    """The versions a model was trained with, for its manifest."""
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}


class _ProgressCallback:
    """Adapts Keras epoch ends to a plain progress function."""

    def __new__(cls, epochs: int, progress: Progress):
        import keras

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                progress(epoch + 1, epochs, dict(logs or {}))

        return _Callback()
