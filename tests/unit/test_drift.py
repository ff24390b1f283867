"""Drift (PSI) as credit-risk teams measure it: the measure itself, the reference a version
stores, and the live gauges of the gateway's replicas (docs/monitoring.md)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from benchmarks.driftcost import served_answers
from deployments.drift_metrics import DriftMetrics
from serving.config import Drift, ModelSettings
from serving.drift import (
    EPSILON,
    Binning,
    DriftReference,
    Window,
    band,
    column_reference,
    psi,
    reference_for,
)
from serving.store import MANIFEST, ModelStore
from serving.tasks import get_task

#: fraud's amount multiplied by 3: after a full window (2,000 rows, the default) drawn from
#: the training distribution, one-row requests with the shifted amount take the amount's
#: PSI above 0.25 within this many requests (measured: 983 here, 912-979 with five other
#: seeds: a little under half the window); a window full of them gives about 1.2
SHIFTED_REQUESTS = 1000
COLUMN_TASKS = ("fraud", "credit", "aml")


def test_psi_is_the_hand_computed_value():
    # expected 50/50, live 30/70: (0.3-0.5)ln(0.3/0.5) + (0.7-0.5)ln(0.7/0.5)
    assert psi([0.5, 0.5], [30, 70]) == pytest.approx(0.10217 + 0.06729, abs=1e-4)
    # an empty live bin counts as 1e-4: (1e-4-0.25)ln(1e-4/0.25) + (0.5-0.25)ln(0.5/0.25) + 0
    assert EPSILON == 1e-4
    assert psi([0.25, 0.25, 0.5], [0, 50, 50]) == pytest.approx(1.95527 + 0.17329, abs=1e-4)
    assert psi([0.5, 0.5], [50, 50]) == 0.0
    assert math.isnan(psi([0.5, 0.5], [0, 0]))
    assert [band(v) for v in (0.05, 0.1, 0.2, 0.25, 0.3)] == [
        "stable", "stable", "watch", "watch", "act"]


def test_numeric_columns_get_deciles_with_open_ends_and_few_values_a_bin_each():
    values = np.arange(1000, dtype=np.float64)
    numeric = column_reference(values, "input", 0)
    assert numeric.kind == "numeric" and len(numeric.edges) == 9
    assert numeric.shares == [0.1] * 10
    binning = Binning(DriftReference(columns={"x": numeric, "flag": column_reference(
        np.array([0, 0, 0, 1]), "input", 1, categories=[0, 1])}))
    assert binning.reference.columns["flag"].kind == "categorical"
    assert binning.reference.columns["flag"].shares == [0.75, 0.25]
    # far outside the training range: the open outer bins; a category by its value
    raw = np.array([[-1e9, 1], [1e9, 0], [500, 1]], np.float32)
    assert binning.indices(3, raw, {}).tolist() == [[0, 9, 5], [1, 0, 1]]
    few = column_reference(np.array([0, 1, 1, 2, 2, 2]), "input", 0)
    assert few.kind == "categorical" and few.edges == [0.5, 1.5]


def test_the_window_holds_exactly_the_last_rows():
    binning = Binning(DriftReference(columns={"x": column_reference(
        np.arange(100.0), "input", 0)}))
    window = Window(binning, size=50)
    rng = np.random.default_rng(0)
    seen = []
    for n in (7, 30, 1, 64, 13, 49):  # wraps around, and one batch larger than the window
        raw = rng.uniform(0, 100, (n, 1)).astype(np.float32)
        seen.append(raw)
        window.add(binning.indices(n, raw, {}))
        last = np.concatenate(seen)[-50:]
        expected = binning.report(binning.counts(binning.indices(len(last), last, {})))
        assert window.report() == expected


@pytest.mark.parametrize("task_name", COLUMN_TASKS)
def test_fresh_training_distribution_rows_stay_stable_in_every_column(task_name):
    task = get_task(task_name)
    reference = reference_for(task, task.sample_data(seed=0).raw, {})
    assert [c.source for c in reference.columns.values()] == ["input"] * len(task.raw_fields)
    binning = Binning(reference)
    raw = task.sample_data(seed=11, n=2000).raw
    report = binning.report(binning.counts(binning.indices(len(raw), raw, {})))
    assert max(v for v, _ in report.values()) < 0.1, report


@pytest.mark.parametrize("model", [*COLUMN_TASKS, "sentiment"])
def test_a_trained_version_stores_its_reference_and_its_own_scores_stay_stable(
        tiny_store, model):
    """The manifest's reference covers the input columns (column tasks) and the score
    outputs; new rows from the generator, answered by the served version, stay under 0.1
    in every column, the score included."""
    task = get_task(model)
    reference = tiny_store.manifest(model, "1").drift_reference
    scores = [n for n, c in reference.columns.items() if c.source != "input"]
    assert scores and all(c.source in task.outputs_with("score")
                          for c in reference.columns.values() if c.source != "input")
    assert len(reference.columns) - len(scores) == (len(task.raw_fields)
                                                   if model in COLUMN_TASKS else 0)
    assert bool(reference.note) == (model not in COLUMN_TASKS)
    raw = task.sample_data(seed=12, n=2000).raw
    binning = Binning(reference)
    report = binning.report(binning.counts(binning.indices(len(raw), raw,
                                                           served_answers(tiny_store, model, raw))))
    assert all(rows == 2000 for _, rows in report.values())
    assert max(v for v, _ in report.values()) < 0.1, report


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _monitor(store: ModelStore, monkeypatch, **drift) -> tuple[DriftMetrics, _Clock, dict]:
    """A drift monitor of fraud on ``store`` with its own clock; the gauges it sets."""
    clock = _Clock()
    monitor = DriftMetrics(store, [ModelSettings(name="fraud", drift=drift)], clock=clock)
    gauges: dict[tuple[str, str, str], float] = {}
    monkeypatch.setattr(monitor.gauge, "set", lambda value, tags: gauges.__setitem__(
        (tags["model"], tags["version"], tags["feature"]), value))
    return monitor, clock, gauges


def _send(monitor: DriftMetrics, clock: _Clock, store: ModelStore, raw: np.ndarray,
          until: Callable[[], bool] = lambda: False) -> int:
    """One-row requests of fraud v1, answered by the served version, a publish interval
    apart (the gauges are set after each); how many were sent when ``until`` held."""
    answers = served_answers(store, "fraud", raw)
    for i in range(len(raw)):
        clock.now += Drift().publish_interval_s
        monitor.observe("fraud", "1", raw[i:i + 1], {k: v[i:i + 1] for k, v in answers.items()})
        if until():
            return i + 1
    return len(raw)


def test_a_shifted_feature_crosses_act_within_the_stated_requests(tiny_store, monkeypatch):
    """2,000 one-row requests from the training distribution keep every gauge under 0.1;
    then fraud's amount times 3 takes the amount's PSI above 0.25 within
    SHIFTED_REQUESTS requests, while the columns that did not move stay under 0.1."""
    monitor, clock, gauges = _monitor(tiny_store, monkeypatch)
    task = get_task("fraud")
    _send(monitor, clock, tiny_store, task.sample_data(seed=13, n=2000).raw)
    assert len(gauges) == len(task.raw_fields) + 1  # and the score
    assert max(gauges.values()) < 0.1, gauges
    shifted = task.sample_data(seed=14, n=SHIFTED_REQUESTS + 1).raw
    shifted[:, 0] *= 3
    amount = ("fraud", "1", "amount")
    crossed = _send(monitor, clock, tiny_store, shifted, until=lambda: gauges[amount] > 0.25)
    assert gauges[amount] > 0.25 and crossed <= SHIFTED_REQUESTS, crossed
    assert crossed > 500  # not at once: the window still holds the stable rows
    others = {k[2]: v for k, v in gauges.items() if k[2] not in ("amount", "fraud_probability")}
    assert max(others.values()) < 0.1, others


def test_a_version_idle_for_idle_s_gets_nan_gauges(tiny_store, monkeypatch):
    """A version retired from routing: its gauges become NaN (no alert fires on NaN) at
    the next publication of the model once it has answered nothing for idle_s."""
    monitor, clock, gauges = _monitor(tiny_store, monkeypatch, min_rows=50, window_rows=100)
    raw = get_task("fraud").sample_data(seed=15, n=60).raw
    _send(monitor, clock, tiny_store, raw)
    assert gauges and not any(math.isnan(v) for v in gauges.values())
    clock.now += Drift().idle_s + 1
    monitor.observe("fraud", "2", raw[:1], {})  # another version answers: a publication
    assert all(math.isnan(v) for k, v in gauges.items() if k[1] == "1")
    assert "1" not in monitor.models["fraud"].windows


def test_drift_settings_are_checked_and_can_turn_monitoring_off(tiny_store):
    with pytest.raises(ValidationError, match="min_rows must not exceed"):
        Drift(window_rows=200, min_rows=300)
    off = DriftMetrics(tiny_store, [ModelSettings(name="fraud", drift={"enabled": False})])
    off.observe("fraud", "1", np.zeros((1, 9), np.float32), {})
    assert off.models == {}


def _post(app, path: str, body: dict, times: int = 1) -> list[int]:
    import asyncio

    import httpx

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return [(await client.post(path, json=body)).status_code for _ in range(times)]
    return asyncio.run(go())


def _v2(raw: np.ndarray) -> dict:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(raw.shape),
                        "data": raw.reshape(-1).tolist()}]}


def test_the_gateway_publishes_psi_gauges_per_model_version_and_feature(
        make_gateway, monkeypatch, caplog):
    gw = make_gateway(models=[{"name": "fraud", "drift": {"min_rows": 50, "window_rows": 100}},
                              {"name": "forecast"}])
    gw.reconfigure({"models": {"fraud": {"versions": ["2"]}}})
    gauges: dict[tuple[str, str, str], float] = {}
    monkeypatch.setattr(gw.drift.gauge, "set", lambda value, tags: gauges.__setitem__(
        (tags["model"], tags["version"], tags["feature"]), value))
    app = gw.__serve_build_asgi_app__()
    raw = get_task("fraud").sample_data(seed=16, n=64).raw
    with caplog.at_level(logging.INFO, logger="finserve.drift"):
        assert _post(app, "/v2/models/fraud/infer", _v2(raw)) == [200]
        body = json.loads((Path(__file__).parents[1] / "testdata" /
                           "forecast_task_request.json").read_text())
        assert _post(app, "/v1/forecast/forecast", body, times=2) == [200, 200]
    features = {*get_task("fraud").raw_fields, "fraud_probability"}
    assert {k for k in gauges} == {("fraud", "2", f) for f in features}
    assert all(0 <= v < 1 for v in gauges.values())
    said = [r.getMessage() for r in caplog.records if "forecast" in r.getMessage()]
    assert len(said) == 1 and "nothing is monitored" in said[0]


def test_a_version_without_a_reference_is_served_unmonitored_and_said_once(
        tiny_store, make_gateway, tmp_path, monkeypatch, caplog):
    """A manifest written before drift monitoring loads, verifies and serves; the replica
    says once that the version is not monitored, and sets no gauge for it."""
    root = tmp_path / "old-store"
    shutil.copytree(Path(tiny_store.root) / "fraud" / "1", root / "fraud" / "1")
    shutil.copytree(Path(tiny_store.root) / "forecast" / "1", root / "forecast" / "1")
    manifest = root / "fraud" / "1" / MANIFEST
    manifest.chmod(0o644)
    data = json.loads(manifest.read_text())
    del data["drift_reference"]
    manifest.write_text(json.dumps(data))
    store = ModelStore(root)
    assert store.manifest("fraud", "1").drift_reference is None and store.verify("fraud", "1")

    gw = make_gateway(store_uri=str(root), models=[
        {"name": "fraud", "drift": {"min_rows": 50, "window_rows": 100}}, {"name": "forecast"}])
    gw.reconfigure({})
    gauges: list[dict] = []
    monkeypatch.setattr(gw.drift.gauge, "set", lambda value, tags: gauges.append(tags))
    app = gw.__serve_build_asgi_app__()
    raw = get_task("fraud").sample_data(seed=17, n=64).raw  # enough rows for gauges
    with caplog.at_level(logging.WARNING, logger="finserve.drift"):
        assert _post(app, "/v2/models/fraud/infer", _v2(raw), times=3) == [200] * 3
    said = [r.getMessage() for r in caplog.records if "fraud v1" in r.getMessage()]
    assert len(said) == 1 and "no drift_reference" in said[0], said
    assert gauges == []
