"""Reason codes computed on the served model: integrated gradients in the exported
signature, then ranked per raw feature and mapped to plain-language statements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IG_STEPS = 32


def integrated_gradients(model: Any, reference: Sequence[float], steps: int = IG_STEPS) -> Any:
    """Signature body returning ``scores`` and per-column ``attributions`` of the model's
    first output against ``reference`` (a model-input row); the trapezoid rule over
    ``steps`` intervals, so attributions add up to score(x) - score(reference)."""
    import tensorflow as tf

    ref = tf.constant([list(reference)], tf.float32)
    alphas = tf.reshape(tf.linspace(0.0, 1.0, steps + 1), [-1, 1, 1])

    def outputs(inputs: Any) -> dict[str, Any]:
        width = inputs.shape[-1]
        delta = inputs - ref
        path = tf.reshape(ref[None] + alphas * delta[None], [-1, width])
        with tf.GradientTape() as tape:
            tape.watch(path)
            score = model(path, training=False)[:, 0]
        grads = tf.reshape(tape.gradient(score, path), [steps + 1, -1, width])
        average = tf.reduce_mean((grads[:-1] + grads[1:]) / 2.0, axis=0)
        return {"scores": model(inputs, training=False), "attributions": delta * average}

    return outputs


def rank_reasons(
    attributions: np.ndarray | None,
    rows: int,
    columns: Sequence[str],
    statements: dict[str, tuple[str, str]],
    slots: int,
    mask: np.ndarray | None = None,
    threshold: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Reason codes and statements, ranked by how much each raw feature raised the score.

    ``columns`` names the raw feature behind each model column (one-hot groups and
    derived columns are summed); rows where ``mask`` is False get none. Arrays of shape
    [rows, slots], padded with ''. Versions exported without attributions get none.
    """
    n = rows
    codes = np.full((n, slots), "", dtype=object)
    texts = np.full((n, slots), "", dtype=object)
    if attributions is None:
        return codes, texts
    names = list(dict.fromkeys(columns))
    per_feature = np.zeros((n, len(names)), np.float64)
    for column, name in enumerate(columns):
        per_feature[:, names.index(name)] += attributions[:, column]
    # per row, the features by how much they raised the score (ties in column order), the
    # first ``slots`` of them that raised it by more than ``threshold``
    order = np.argsort(-per_feature, axis=1, kind="stable")[:, :slots]
    keep = np.take_along_axis(per_feature, order, axis=1) > threshold
    if mask is not None:
        keep &= np.asarray(mask, bool)[:, None]
    table = np.array([statements[name] for name in names], dtype=object)  # [features, 2]
    codes[:, : order.shape[1]] = np.where(keep, table[order, 0], "")
    texts[:, : order.shape[1]] = np.where(keep, table[order, 1], "")
    return codes, texts
