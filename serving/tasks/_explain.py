"""Reason codes computed on the served model: integrated gradients in the exported
signature, then ranked per raw feature and mapped to plain-language statements."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from serving.protocol.codec import TensorSpec

IG_STEPS = 32


def reason_outputs(max_reasons: int, codes_doc: str) -> tuple[TensorSpec, TensorSpec]:
    """The ranked reason codes and their statements, as a task with reason codes declares
    them; the statements follow from the codes (list "reasons" in ``derived_outputs``)."""
    return (TensorSpec("reason_codes", "BYTES", (-1, max_reasons), codes_doc, role="reason"),
            TensorSpec("reasons", "BYTES", (-1, max_reasons), "statements of the reason codes",
                       role="reason"))


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
    if attributions is None:
        return np.full((rows, slots), "", object), np.full((rows, slots), "", object)
    group, code_of, text_of = _reason_table(tuple(columns), tuple(statements.items()))
    per_feature = np.asarray(attributions, np.float64) @ group  # [rows, features]
    # per row, the features by how much they raised the score (ties in column order), the
    # first ``slots`` of them that raised it by more than ``threshold``
    order = np.argsort(-per_feature, axis=1, kind="stable")[:, :slots]
    keep = np.take_along_axis(per_feature, order, axis=1) > threshold
    if mask is not None:
        keep &= np.asarray(mask, bool)[:, None]
    chosen = np.full((rows, slots), len(code_of) - 1)  # the last entry of a table is ''
    chosen[:, : order.shape[1]] = np.where(keep, order, len(code_of) - 1)
    return code_of[chosen], text_of[chosen]


@lru_cache(maxsize=32)
def _reason_table(columns: tuple[str, ...], statements: tuple[tuple[str, tuple[str, str]], ...]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Once per task: the 0/1 matrix summing model columns into raw features, and each
    feature's code and statement (then '' for no reason)."""
    names = list(dict.fromkeys(columns))
    group = np.zeros((len(columns), len(names)))
    group[np.arange(len(columns)), [names.index(name) for name in columns]] = 1.0
    table = dict(statements)
    code_of = np.array([table[name][0] for name in names] + [""], dtype=object)
    text_of = np.array([table[name][1] for name in names] + [""], dtype=object)
    return group, code_of, text_of
