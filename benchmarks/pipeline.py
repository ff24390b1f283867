"""FinServe's pipeline without Ray, for the servers the bench compares FinServe with.

One model's answer is FinServe's: the task's raw-input check, its preprocessing, the
SavedModel's signature (or any ``Predict``), the task's postprocessing with the Serve
config's options and what preprocessing hands past the model (``Task.context``). The
answer goes back as V2 outputs encoded as FinServe encodes them
(``serving.protocol.codec.from_numpy``: BYTES for strings, FP32 for float32). Used by the
baselines (``benchmarks/baselines.py``) and by the peers (``benchmarks/peers/``), which run
in venvs of their own: this module imports only what ``serving``'s core needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import load_serve_config
from serving.protocol.codec import from_numpy
from serving.runtime import _configure_tensorflow as configure_tensorflow
from serving.store import SAVED_MODEL_DIR, ModelStore
from serving.tasks import PostprocessContext, Task, get_task
from serving.training import load_signature

Predict = Callable[[np.ndarray], dict[str, np.ndarray]]
#: how a server calls a stored model: (SavedModel directory, task, preprocessing params)
Loader = Callable[[Path, Task, dict[str, Any]], Predict]


def signature(path: Path, task: Task, params: dict[str, Any]) -> Predict:
    """The SavedModel's serving signature called directly, as FinServe's Model stage does
    (compiled by XLA where the task's default says so, as the shipped Serve config leaves it)."""
    return load_signature(path, jit_compile=task.jit_compile)


@dataclass
class Served:
    """One model as FinServe serves it: task, preprocessing params, options, predict."""

    task: Task
    params: dict[str, Any]
    options: dict[str, Any]
    predict: Predict

    def answer(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The postprocessed outputs for a raw batch (text as str or UTF-8 bytes)."""
        raw = self.task.check_raw(_text(raw) if self.task.input_spec.datatype == "BYTES"
                                  else raw)
        outputs = self.predict(self.task.preprocess(raw, self.params))
        context = PostprocessContext(self.params, self.options,
                                     preprocess_context=self.task.context(raw, self.params))
        return self.task.postprocess(outputs, context)


def _text(raw: np.ndarray) -> np.ndarray:
    """A BYTES tensor as an object array of str, as FinServe decodes it (servers give
    str, numpy unicode or UTF-8 bytes)."""
    flat = [v.decode("utf-8") if isinstance(v, bytes) else v for v in raw.reshape(-1).tolist()]
    return np.array(flat, dtype=object).reshape(raw.shape)


def load_served(config: str | Path, loader: Loader = signature,
                only: list[str] | None = None, tf_threads: bool = False,
                ) -> dict[str, Served]:
    """Every model of a Serve config (or those in ``only``), loaded from its store;
    ``tf_threads``: TensorFlow's thread pools as FinServe sets them in each replica (the
    Model stage's ``intra_op_threads``/``inter_op_threads``), for one process per core."""
    _, args = load_serve_config(config)
    store = ModelStore(args.store_uri)
    models = [m for m in args.models if only is None or m.name in only]
    if tf_threads and models:
        configure_tensorflow(models[0].model.intra_op_threads, models[0].model.inter_op_threads)
    served: dict[str, Served] = {}
    for m in models:
        task = get_task(m.task_name)
        params = store.manifest(m.name).preprocessing
        predict = loader(store.local_path(m.name) / SAVED_MODEL_DIR, task, params)
        served[m.name] = Served(task, params, task.options(m.options), predict)
    return served


def raw_of(tensor: dict[str, Any]) -> np.ndarray:
    """A V2 JSON request tensor (flat data) as numpy: object for BYTES, float32 otherwise."""
    dtype = object if tensor["datatype"] == "BYTES" else np.float32
    return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])


def v2_outputs(answers: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Postprocessed outputs as V2 response tensors, encoded as FinServe encodes them."""
    outputs = []
    for name, value in answers.items():
        datatype, shape, data = from_numpy(np.asarray(value))
        outputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    return outputs
