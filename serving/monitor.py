"""``finserve monitor``: the PSI of a model's recorded traffic against its training data,
from the decision trail over a time window (serving/drift.py for the measure).

Each decision record holds the raw rows a version answered (``inputs.data``) and its
answers (``outputs``), so the trail alone says what the replicas saw; each version is
compared with the reference in its own manifest. ``plot`` draws the report as a PNG.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from serving.audit import read_records
from serving.drift import ACT, DEFAULT_MIN_ROWS, INPUT, WATCH, Binning, band
from serving.store import ModelStore

#: bin indices gathered before they are counted (bounds memory on a long trail)
FLUSH_ROWS = 65_536
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
COLORS = {"stable": "#2e7d32", "watch": "#f9a825", "act": "#c62828", "few rows": "#9e9e9e"}


def duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d`` ... as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"'{text}' is not a duration such as 30m, 24h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def moment(text: str) -> datetime:
    """An ISO 8601 time (UTC when it names no zone)."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class FeatureDrift:
    """The PSI of one column of one version over the window."""

    version: str
    feature: str
    kind: str  # "input" (a raw input column) or "score" (a score output's column)
    psi: float
    rows: int
    min_rows: int

    @property
    def band(self) -> str:
        return "few rows" if self.rows < self.min_rows else band(self.psi)


@dataclass
class DriftReport:
    model: str
    since: datetime | None
    until: datetime | None
    records: dict[str, int] = field(default_factory=dict)  # version: decisions read
    features: list[FeatureDrift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def act(self) -> bool:
        """Whether any column with enough rows is in the act band (PSI above 0.25)."""
        return any(f.band == "act" for f in self.features)


class _Counts:
    """One version's rows per bin, counted ``FLUSH_ROWS`` rows at a time."""

    def __init__(self, binning: Binning) -> None:
        self.binning = binning
        self.pending: list[np.ndarray] = []
        self.rows = 0
        self.counts = np.zeros(0, np.int64)

    def add(self, indices: np.ndarray) -> None:
        self.pending.append(indices)
        self.rows += indices.shape[1]
        if self.rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> np.ndarray:
        if self.pending:
            counted = self.binning.counts(np.concatenate(self.pending, axis=1))
            self.counts = counted + self.counts if len(self.counts) else counted
            self.pending, self.rows = [], 0
        return self.counts


def drift_report(trail: str, store: ModelStore, model: str, since: datetime | None = None,
                 until: datetime | None = None, version: str | None = None,
                 min_rows: int = DEFAULT_MIN_ROWS) -> DriftReport:
    """PSI per version and column of ``model``'s decisions recorded in [since, until)."""
    report = DriftReport(model, since, until)
    versions: dict[str, _Counts | None] = {}
    for record in _decisions(trail, model, since, until, version):
        v = str(record.get("version"))
        report.records[v] = report.records.get(v, 0) + 1
        if v not in versions:
            binning = _binning(store, model, v, report.notes)
            versions[v] = _Counts(binning) if binning is not None else None
        counts = versions[v]
        if counts is not None:
            counts.add(_indices(counts.binning, record))
    for v in sorted(versions, key=lambda s: (len(s), s)):
        counts = versions[v]
        if counts is None:
            continue
        columns = counts.binning.reference.columns
        for name, (value, rows) in counts.binning.report(counts.flush()).items():
            report.features.append(
                FeatureDrift(v, name, "input" if columns[name].source == INPUT else "score",
                             value, rows, min_rows))
    return report


def _decisions(trail: str, model: str, since: datetime | None, until: datetime | None,
               version: str | None) -> Iterator[dict[str, Any]]:
    for record in read_records(trail):
        if record.get("model") != model or (version and record.get("version") != version):
            continue
        try:
            at = moment(str(record.get("time")))
        except ValueError:
            continue
        if (since is None or at >= since) and (until is None or at < until):
            yield record


def _binning(store: ModelStore, model: str, version: str, notes: list[str]) -> Binning | None:
    """The version's reference, ready to bin; None (with a note) when it has none."""
    try:
        reference = store.manifest(model, version).drift_reference
    except Exception as exc:
        notes.append(f"v{version}: no manifest in {store.root} ({exc}); not compared")
        return None
    if reference is None or not reference.columns:
        notes.append(f"v{version}: " + ("its manifest has no drift reference (trained before "
                                        "drift monitoring); not compared" if reference is None
                                        else reference.note))
        return None
    if reference.note:
        notes.append(f"v{version}: {reference.note}")
    return Binning(reference)


def _indices(binning: Binning, record: dict[str, Any]) -> np.ndarray:
    """The bins of one record's rows: its raw input (as recorded) and its answers."""
    data = (record.get("inputs") or {}).get("data") or []
    raw = _numeric(data) if binning.reads_input else None
    recorded = record.get("outputs") or {}
    outputs = {c.source: np.asarray(recorded[c.source], np.float64)
               for c in binning.columns if c.source != INPUT and c.source in recorded}
    return binning.indices(len(data), raw, outputs)


def _numeric(data: list[Any]) -> np.ndarray:
    """Recorded rows as numbers; a tokenized (personal) value becomes NaN."""
    try:
        return np.asarray(data, np.float64)
    except (TypeError, ValueError):
        return np.asarray([[v if isinstance(v, int | float) else np.nan for v in row]
                           for row in data], np.float64)


def plot(report: DriftReport, path: str | Path) -> Path:
    """A PNG of the report: per version, a bar per column coloured by its band, and the
    0.1 and 0.25 lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    versions = list(dict.fromkeys(f.version for f in report.features))
    columns = max(sum(f.version == v for f in report.features) for v in versions)
    fig, axes = plt.subplots(len(versions), 1, sharex=True, squeeze=False,
                             figsize=(8, 1.0 + len(versions) * (0.6 + 0.28 * columns)))
    for ax, version in zip(axes[:, 0], versions, strict=True):
        rows = [f for f in report.features if f.version == version]
        ax.barh([f.feature for f in rows], [f.psi for f in rows],
                color=[COLORS[f.band] for f in rows])
        for i, f in enumerate(rows):
            ax.text(f.psi, i, f" {f.psi:.3f}", va="center", fontsize=7)
        ax.axvline(WATCH, color=COLORS["watch"], linestyle="--")
        ax.axvline(ACT, color=COLORS["act"], linestyle="--")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(f"version {version}: {report.records[version]} decisions, "
                     f"{rows[0].rows} rows", fontsize=9)
    highest = max((f.psi for f in report.features if f.psi == f.psi), default=0.0)
    axes[-1, 0].set_xlim(0, max(ACT * 1.2, highest * 1.12))  # room for the values
    axes[-1, 0].set_xlabel("population stability index (PSI) against the training data; "
                           "lines at 0.1 (watch) and 0.25 (act)", fontsize=8)
    bands = dict.fromkeys(f.band for f in report.features)
    fig.legend(handles=[Patch(color=COLORS[b], label=b) for b in COLORS if b in bands],
               loc="upper right", fontsize=7)
    fig.suptitle(_title(report), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _title(report: DriftReport) -> str:
    def when(t: datetime | None) -> str:
        return t.strftime("%Y-%m-%d %H:%M") if t else "…"

    return f"{report.model}: drift from {when(report.since)} to {when(report.until)} UTC"
