"""Drift of served traffic from a version's training data, measured as credit-risk teams
measure it: the population stability index (PSI) of each raw input column and each score.

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

``e_i`` is the share of the training rows in bin ``i`` (the reference, stored in the
version's manifest), ``a_i`` the share of the live rows. Below 0.1 the population is
stable, 0.1 to 0.25 worth watching, above 0.25 worth acting on (``band``). A share of 0
(a bin empty in training or in the live rows) counts as ``EPSILON`` (1e-4), so the
logarithm stays finite: an empty live bin whose training share was ``e`` adds
``e * ln(e / 1e-4)`` (0.69 for a decile), a live share ``a`` in a bin training never saw
adds ``a * ln(a / 1e-4)``.

Bins (``column_reference``): the deciles of the training values, the outer bins open
(``(-inf, e1]`` ... ``(e9, +inf)``; a manifest stores the inner edges); a categorical
column (bool, category, or at most ``BINS`` distinct training values) gets one bin per
value, edges halfway between. Live rows are binned with one ``np.searchsorted`` per column
per batch (``Binning``); ``Window`` keeps the bins of the last rows a replica answered.

By chance alone, ``n`` rows drawn from the training distribution give a PSI of about
``(bins - 1) / n`` (0.018 for 500 rows in 10 bins), so a PSI over a few rows means little
(``DEFAULT_MIN_ROWS``).

Which columns a task has (``reference_for``): its raw fields when the raw input is a row of
named columns (fraud, credit, aml), personal fields left out; tasks whose input is text,
an image or a price window (sentiment, recommend, digits, forecast) keep only the
distribution of their score outputs (role ``score``), and say so in ``note``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from serving.tasks import Task

BINS = 10
EPSILON = 1e-4
WATCH = 0.1
ACT = 0.25
#: rows a PSI needs before it is published or judged (see the module's docstring)
DEFAULT_MIN_ROWS = 500
#: ``ColumnReference.source`` of a column of the raw input
INPUT = "input"
Band = Literal["stable", "watch", "act"]


def band(value: float) -> Band:
    """stable (PSI <= 0.1), watch (up to 0.25) or act (above 0.25)."""
    return "act" if value > ACT else "watch" if value > WATCH else "stable"


def psi(expected: Sequence[float] | np.ndarray, counts: Sequence[int] | np.ndarray,
        epsilon: float = EPSILON) -> float:
    """The PSI of live ``counts`` per bin against the reference's ``expected`` shares; a
    share below ``epsilon`` counts as ``epsilon``. NaN without live rows."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    e = np.maximum(np.asarray(expected, np.float64), epsilon)
    a = np.maximum(counts / total, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


class ColumnReference(BaseModel):
    """The training distribution of one column: its bins and the share of rows in each."""

    source: str = Field(description="'input' (a column of the raw input), or the output "
                        "the column is read from.")
    column: int | None = Field(None, description="Column of the raw input or of a 2-D "
                               "output; none for a 1-D output.")
    kind: Literal["numeric", "categorical"] = Field(
        description="numeric: decile bins; categorical: one bin per value.")
    edges: list[float] = Field(description="Inner bin edges, ascending: the bins are "
                               "(-inf, e1], (e1, e2], ..., (ek, +inf).")
    shares: list[float] = Field(description="Share of the training rows in each bin.")


class DriftReference(BaseModel):
    """A version's training distribution per monitored column (``serving.drift``)."""

    bins: int = Field(BINS, description="Bins of a numeric column (deciles).")
    input_rows: int = Field(0, description="Training rows the input columns were binned from.")
    score_rows: int = Field(0, description="Held-out rows the scores were binned from.")
    columns: dict[str, ColumnReference] = Field(
        default_factory=dict, description="Raw input columns, then score outputs, by name.")
    note: str = Field("", description="What is not monitored, and why.")


def column_reference(values: np.ndarray, source: str, column: int | None = None,
                     categories: Sequence[float] | None = None,
                     bins: int = BINS) -> ColumnReference:
    """The bins of ``values`` and their shares: one per category (given, or the distinct
    values when there are at most ``bins``), else deciles."""
    values = np.asarray(values, np.float64).reshape(-1)
    if categories is None:
        distinct = np.unique(values)
        categories = distinct if len(distinct) <= bins else None
    if categories is not None:
        kind, cats = "categorical", np.unique(np.asarray(categories, np.float64))
        edges = (cats[1:] + cats[:-1]) / 2
    else:
        kind, edges = "numeric", np.unique(np.quantile(values, np.arange(1, bins) / bins))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return ColumnReference(source=source, column=column, kind=kind, edges=edges.tolist(),
                           shares=(counts / max(len(values), 1)).round(6).tolist())


class Binning:
    """A reference ready for batches: every row's bin in every column, counts, PSI."""

    def __init__(self, reference: DriftReference) -> None:
        self.reference = reference
        # input columns in raw order, then score columns by output (a manifest sorts keys)
        ordered = sorted(reference.columns.items(), key=lambda item: (
            item[1].source != INPUT, item[1].source, item[1].column or 0))
        self.names = [name for name, _ in ordered]
        self.columns = [column for _, column in ordered]
        self.edges = [np.asarray(c.edges, np.float64) for c in self.columns]
        self.sizes = np.array([len(e) + 1 for e in self.edges], np.int64)
        # each column's bins, then one slot for rows that lack the column
        self.offsets = np.cumsum(np.concatenate([[0], self.sizes + 1]))[:-1, None]
        self.reads_input = any(c.source == INPUT for c in self.columns)
        # what ``indices`` reads per column, as plain values (it runs on every request)
        self._plan = [(c.source == INPUT, c.source, c.column, edges, int(size))
                      for c, edges, size in zip(self.columns, self.edges, self.sizes,
                                                strict=True)]

    def indices(self, rows: int, raw: np.ndarray | None,
                outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The bin of each of ``rows`` rows in each column, ``[columns, rows]``: one
        ``np.searchsorted`` per column; a column the batch lacks gets its missing slot."""
        out = np.empty((len(self._plan), rows), np.int16)
        for j, (is_input, source, column, edges, size) in enumerate(self._plan):
            array = raw if is_input else outputs.get(source)
            if array is not None and column is not None:
                array = array[:, column] if array.ndim == 2 and array.shape[1] > column \
                    else None
            if array is None or array.shape != (rows,):
                out[j] = size
            else:
                out[j] = np.searchsorted(edges, array, side="left")
        return out

    def counts(self, indices: np.ndarray) -> np.ndarray:
        """Rows per bin of every column, missing slots included (flat, by ``offsets``)."""
        return np.bincount((indices + self.offsets).ravel(), minlength=int(sum(self.sizes + 1)))

    def report(self, counts: np.ndarray) -> dict[str, tuple[float, int]]:
        """(PSI, rows) of every column from flat ``counts``."""
        out = {}
        for name, col, start, size in zip(self.names, self.columns, self.offsets[:, 0],
                                           self.sizes, strict=True):
            binned = counts[start:start + size]
            out[name] = (psi(col.shares, binned), int(binned.sum()))
        return out


class Window:
    """The bins of the last ``size`` rows (a ring over ``Binning.indices``)."""

    def __init__(self, binning: Binning, size: int) -> None:
        self.binning = binning
        self.ring = np.zeros((len(binning.columns), size), np.int16)
        self.filled = 0
        self.position = 0

    def add(self, indices: np.ndarray) -> None:
        """Keep the bins of a batch's rows (``[columns, rows]``), the oldest rows out."""
        size, n = self.ring.shape[1], indices.shape[1]
        if n >= size:
            self.ring[:], self.position, self.filled = indices[:, -size:], 0, size
            return
        first = min(n, size - self.position)
        self.ring[:, self.position:self.position + first] = indices[:, :first]
        self.ring[:, :n - first] = indices[:, first:]
        self.position = (self.position + n) % size
        self.filled = min(size, self.filled + n)

    def report(self) -> dict[str, tuple[float, int]]:
        """(PSI, rows) of every column over the rows in the window."""
        return self.binning.report(self.binning.counts(self.ring[:, :self.filled]))


def input_columns(task: Task) -> list[tuple[str, int, list[float] | None]]:
    """(name, column, categories) of each monitored raw input column: the raw fields of a
    task whose raw input is a row of named columns, personal fields left out; the
    categories of a bool or category field (others: None)."""
    from serving.tasks._domain import record_domain

    spec = task.input_spec
    fields = task.raw_fields
    if spec.datatype == "BYTES" or len(spec.shape) != 2 or spec.shape[1] != len(fields):
        return []
    bounds = record_domain(task.Record, fields).bounds
    return [(b.name, i, [0.0, 1.0] if b.kind == "bool" else
             list(map(float, range(len(b.categories)))) if b.kind == "category" else None)
            for i, b in enumerate(bounds) if b.name not in task.personal_fields]


def score_columns(task: Task, answers: Mapping[str, np.ndarray]
                  ) -> dict[str, tuple[str, int | None, np.ndarray]]:
    """Name: (output, column, values) of each score column in ``answers``: a 1-D score
    output as it is, each column of a 2-D one (``name[i]``), only the first (best) of one
    whose width varies (recommend's top-k)."""
    out: dict[str, tuple[str, int | None, np.ndarray]] = {}
    for spec in task.output_specs:
        values = answers.get(spec.name) if spec.role == "score" else None
        if values is None:
            continue
        if values.ndim == 1:
            out[spec.name] = (spec.name, None, values)
            continue
        width = values.shape[1] if spec.shape[-1] != -1 else min(1, values.shape[1])
        for i in range(width):
            out[f"{spec.name}[{i}]"] = (spec.name, i, values[:, i])
    return out


def reference_for(task: Task, train_raw: np.ndarray,
                  holdout_answers: Mapping[str, np.ndarray]) -> DriftReference:
    """A version's reference: its raw input columns binned over the training rows, its
    score outputs over the held-out answers of the exported model."""
    inputs = input_columns(task)
    scores = score_columns(task, holdout_answers)
    columns = {name: column_reference(train_raw[:, i], INPUT, i, categories)
               for name, i, categories in inputs}
    columns |= {name: column_reference(values, output, column)
                for name, (output, column, values) in scores.items()}
    return DriftReference(
        input_rows=len(train_raw) if inputs else 0,
        score_rows=next((len(v) for _, _, v in scores.values()), 0),
        columns=columns, note=_note(task, bool(inputs), bool(scores)))


def _note(task: Task, inputs: bool, scores: bool) -> str:
    """What a reference leaves out, in words."""
    notes = []
    if not inputs:
        what = "only the score outputs are monitored" if scores else (
            "the task has no score output either: nothing is monitored")
        notes.append(f"the raw input ({task.input_spec.name}) is not a row of named "
                     f"columns (text, an image, a price window): {what}")
    elif not scores:
        notes.append("the task has no score output: only its input columns are monitored")
    personal = [f for f in task.personal_fields if inputs and f in task.raw_fields]
    if personal:
        notes.append(f"personal fields are not monitored: {', '.join(personal)}")
    return "; ".join(notes)
