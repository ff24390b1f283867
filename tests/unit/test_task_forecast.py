"""The forecast task: schema, preprocessing, quantile → price band, horizon, walk-forward split."""

import numpy as np
import pytest
from pydantic import ValidationError

from serving.errors import InvalidInput
from serving.tasks import PostprocessContext, get_task
from serving.tasks.forecast import (
    DEFAULT_HORIZON,
    MAX_HORIZON,
    WINDOW,
    PriceWindow,
    SeriesDataset,
    generate,
)


@pytest.fixture(scope="module")
def task():
    return get_task("forecast")


def _prices(n: int = WINDOW, start: float = 100.0) -> list[float]:
    return [start * (1 + 0.01 * np.sin(i)) for i in range(n)]


# --- schema and raw checks -------------------------------------------------------------
def test_record_takes_thirty_positive_prices(task):
    record = PriceWindow(prices=_prices())
    raw = task.records_to_raw([record, record])
    assert raw.shape == (2, WINDOW) and raw.dtype == np.float32
    assert task.check_raw(raw) is not None


@pytest.mark.parametrize(
    "prices",
    [_prices(WINDOW - 1), _prices(WINDOW + 1), [], [*_prices(WINDOW - 1), -1.0],
     [*_prices(WINDOW - 1), 0.0], [*_prices(WINDOW - 1), float("nan")],
     [*_prices(WINDOW - 1), float("inf")], [*_prices(WINDOW - 1), "ten"],
     [*_prices(WINDOW - 1), 1e12]],
    ids=["short", "long", "empty", "negative", "zero", "nan", "inf", "text", "huge"],
)
def test_record_rejects_bad_windows(prices):
    with pytest.raises(ValidationError):
        PriceWindow(prices=prices)


def test_record_rejects_unknown_fields():
    with pytest.raises(ValidationError):
        PriceWindow(prices=_prices(), ticker="ACME")


def test_raw_checks_shape_sign_range_and_finiteness(task):
    good = np.array([_prices()], np.float32)
    for bad, message in (
        (good[:, :-1], "shape"),
        (np.concatenate([good, good[:, :1]], axis=1), "shape"),
        (np.zeros((0, WINDOW), np.float32), "empty"),
        (np.where(np.arange(WINDOW) == 3, -1.0, good), "> 0"),
        (np.where(np.arange(WINDOW) == 3, 0.0, good), "> 0"),
        (np.where(np.arange(WINDOW) == 3, np.nan, good), "NaN"),
        (np.where(np.arange(WINDOW) == 3, 1e12, good), "<="),
        (np.where(np.arange(WINDOW) == 3, 1e-3, good), "factor"),
        (np.where(np.arange(WINDOW) >= 20, good * 12, good), "factor"),
    ):
        with pytest.raises(InvalidInput, match=message):
            task.check_raw(bad)


# --- parameters --------------------------------------------------------------------------
def test_horizon_parameter_defaults_and_bounds(task):
    assert task.request_params(None) == {"horizon": DEFAULT_HORIZON}
    assert task.request_params({"horizon": MAX_HORIZON}) == {"horizon": MAX_HORIZON}
    for bad in (0, MAX_HORIZON + 1, -3, 2.5, "soon"):
        with pytest.raises(InvalidInput, match=r"parameters\.horizon"):
            task.request_params({"horizon": bad})
    with pytest.raises(InvalidInput, match=r"parameters\.horizn"):
        task.request_params({"horizn": 3})


# --- preprocessing -----------------------------------------------------------------------
def test_preprocess_shape_scale_invariance_and_context(task):
    data = task.sample_data(seed=0, n=300)
    train, holdout = task.split(data)
    params = task.fit_preprocessing(train)
    x = task.preprocess(holdout.raw, params)
    assert x.shape == (len(holdout), params["input_width"]) and x.dtype == np.float32
    assert np.isfinite(x).all()
    # log returns do not depend on the price level or currency unit
    np.testing.assert_allclose(task.preprocess(holdout.raw * 10, params), x, atol=1e-4)
    np.testing.assert_array_equal(task.context(holdout.raw, params)["last_price"],
                                  holdout.raw[:, -1])
    y = task.targets(train, params)
    assert y.shape == (len(train), MAX_HORIZON, 1) and np.isfinite(y).all()


# --- postprocessing ----------------------------------------------------------------------
def _step(last, horizon=None, scale=0.02):
    parameters = {} if horizon is None else {"horizon": horizon}
    return PostprocessContext({"return_scale": scale}, {}, parameters,
                {"last_price": np.asarray(last, np.float32)})


def test_postprocess_turns_quantiles_into_an_ordered_price_band(task):
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 2, (4, MAX_HORIZON, 3)).astype(np.float32)  # deliberately unordered
    last = [10.0, 100.0, 250.0, 3.5]
    out = task.postprocess({"scores": scores}, _step(last))
    assert set(out) == {spec.name for spec in task.output_specs}
    for name in ("forecast", "lower", "upper"):
        assert out[name].shape == (4, DEFAULT_HORIZON) and out[name].dtype == np.float32
    assert (out["lower"] <= out["forecast"]).all() and (out["forecast"] <= out["upper"]).all()
    assert (out["lower"] > 0).all()
    median = np.sort(scores, axis=-1)[:, :DEFAULT_HORIZON, 1]
    np.testing.assert_allclose(out["forecast"], np.array(last)[:, None] * np.exp(0.02 * median),
                               rtol=1e-5)


def test_postprocess_honours_the_horizon(task):
    scores = np.zeros((2, MAX_HORIZON, 3), np.float32)
    scores[..., 0], scores[..., 2] = -1, 1
    for horizon in (1, 3, MAX_HORIZON):
        out = task.postprocess({"scores": scores}, _step([50.0, 60.0], horizon))
        assert out["forecast"].shape == (2, horizon)
        np.testing.assert_allclose(out["forecast"], [[50.0] * horizon, [60.0] * horizon])
        np.testing.assert_allclose(out["upper"][0], 50 * np.exp(0.02), rtol=1e-6)


def test_model_head_keeps_quantiles_ordered(task):
    params = {"input_width": 2 * (WINDOW - 1), "max_horizon": MAX_HORIZON}
    model = task.build_model(params)
    x = np.random.default_rng(1).normal(0, 3, (16, params["input_width"])).astype(np.float32)
    q = np.asarray(model(x))
    assert q.shape == (16, MAX_HORIZON, 3)
    assert (q[..., 0] <= q[..., 1]).all() and (q[..., 1] <= q[..., 2]).all()


# --- split: walk-forward, no look-ahead ---------------------------------------------------
def _assert_no_look_ahead(train: SeriesDataset, holdout: SeriesDataset) -> None:
    assert len(train) and len(holdout)
    for s in np.unique(np.concatenate([train.series, holdout.series])):
        tr_end = train.end[train.series == s]
        ho_end = holdout.end[holdout.series == s]
        if not len(ho_end):
            continue
        first_held_target = ho_end.min() + 1
        # every training target time (end + 1 .. end + H) is before every held-out target
        assert (tr_end + MAX_HORIZON < first_held_target).all()
        # and so is every training window (end - WINDOW + 1 .. end)
        assert (tr_end < first_held_target).all()
        # the held-out period is the last part of the series
        assert ho_end.min() > tr_end.max()


def test_split_is_walk_forward_with_no_look_ahead(task):
    data = generate(1200, seed=2)  # 5 series of 240 windows
    train, holdout = task.split(data, holdout=0.2)
    assert len(train) + len(holdout) == len(data)  # stride-H windows: nothing is purged
    assert len(np.unique(holdout.series)) == 5  # every series has its held-out tail
    _assert_no_look_ahead(train, holdout)
    # the windows' prices really are the series' prices at those times
    assert np.allclose(data.raw[1:, : WINDOW - MAX_HORIZON][data.series[1:] == data.series[:-1]],
                       data.raw[:-1, MAX_HORIZON:][data.series[1:] == data.series[:-1]])


def test_split_purges_training_windows_whose_targets_reach_the_held_out_period(task):
    rng = np.random.default_rng(0)
    n = 60  # stride-1 windows of one series: targets of the last H - 1 train rows overlap
    data = SeriesDataset(
        raw=rng.uniform(1, 2, (n, WINDOW)).astype(np.float32),
        target=rng.uniform(1, 2, (n, MAX_HORIZON)).astype(np.float32),
        series=np.zeros(n, np.int64), end=np.arange(n) + WINDOW - 1,
    )
    train, holdout = task.split(data, holdout=0.25)
    assert len(holdout) == 15 and len(train) == n - 15 - (MAX_HORIZON - 1)
    _assert_no_look_ahead(train, holdout)


# --- user data -----------------------------------------------------------------------------
def test_user_csv_with_series_and_unsorted_dates(task, tmp_path):
    days = WINDOW + 3 * MAX_HORIZON
    lines = ["series,date,price"]
    for name, base in (("ACME", 100.0), ("GLOBEX", 20.0)):
        for day in reversed(range(days)):  # newest first: the loader sorts by date
            lines.append(f"{name},2025-{1 + day // 28:02d}-{1 + day % 28:02d},{base + day}")
    csv = tmp_path / "prices.csv"
    csv.write_text("\n".join(lines) + "\n")
    data = task.load_data(csv)
    assert len(data) == 6 and data.source == str(csv)
    first = data.raw[data.series == 0][0]
    np.testing.assert_allclose(first, 100.0 + np.arange(WINDOW))
    np.testing.assert_allclose(data.target[0], 100.0 + WINDOW + np.arange(MAX_HORIZON))
    _assert_no_look_ahead(*task.split(data, holdout=0.34))


def test_user_data_without_series_and_with_bad_columns(task):
    days = WINDOW + 2 * MAX_HORIZON
    data = task.dataset_from_columns({"date": list(range(days)), "price": [5.0] * days})
    assert len(data) == 2
    with pytest.raises(ValueError, match="missing column"):
        task.dataset_from_columns({"day": [1], "price": [1.0]})
    with pytest.raises(ValueError, match="price"):
        task.dataset_from_columns({"date": list(range(days)), "price": [-1.0] * days})
    with pytest.raises(ValueError, match="more than one price"):
        task.dataset_from_columns({"date": [1] * days, "price": [5.0] * days})
    with pytest.raises(ValueError, match="no series"):
        task.dataset_from_columns({"date": [1, 2], "price": [1.0, 2.0]})


# --- evaluation -----------------------------------------------------------------------------
def test_evaluation_against_naive_and_drift(task):
    data = generate(500, seed=5)
    _, holdout = task.split(data)
    params = {"return_scale": 0.02}
    truth = np.log(holdout.target / holdout.raw[:, -1:]) / 0.02
    perfect = truth[..., None] + np.array([-1.0, 0.0, 1.0])  # exact median, a +-2 % band
    ev = task.evaluate(holdout, {"scores": perfect}, params)
    assert ev.metric == f"mape_h{DEFAULT_HORIZON}" and ev.value < 1e-3
    assert ev.extra["coverage_80"] == 1.0
    assert ev.baseline_name in {"naive (last price)", "drift"}
    assert ev.baseline == min(ev.extra["naive_mape_h5"], ev.extra["drift_mape_h5"])
    naive = task.evaluate(holdout, {"scores": np.zeros_like(perfect)}, params)
    assert naive.value == pytest.approx(naive.extra["naive_mape_h5"])
    assert {f"mape_h{h}" for h in range(1, MAX_HORIZON + 1)} <= set(naive.extra)


# --- lifecycle: export, load, serve ------------------------------------------------------------
def test_exported_model_serves_an_ordered_band(tmp_path):
    from serving.runtime import ModelRunner, TaskProcessing
    from serving.store import ModelStore
    from serving.training import train

    store = ModelStore(tmp_path / "store")
    manifest = train("forecast", store, samples=2000, epochs=2, seed=1)
    assert manifest.metrics["metric"] == "mape_h5" and manifest.training_data["holdout_rows"] == 400
    runner = ModelRunner(store, "forecast", "forecast", ["1"], intra_op_threads=1)
    runner.load_all()
    steps = TaskProcessing(store, "forecast", "forecast", ["1"])
    task = get_task("forecast")
    raw = task.check_raw(task.records_to_raw([PriceWindow(prices=_prices()),
                                              PriceWindow(prices=_prices(start=7.0))]))
    batch = steps.preprocess("1", raw)
    batch.data = runner.predict_batch([("1", batch.data)])[0]
    out = steps.postprocess("1", batch, task.request_params({"horizon": 7}))
    assert out["forecast"].shape == (2, 7)
    assert (out["lower"] <= out["forecast"]).all() and (out["forecast"] <= out["upper"]).all()
    assert 50 < out["forecast"][0, 0] < 200 and 3 < out["forecast"][1, 0] < 14
