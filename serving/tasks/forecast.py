"""Price forecasting: the last 30 daily prices → a price path over the next 1-10 days with
an 80 % band (quantile regression on cumulative log returns).

Built-in data: a seeded synthetic generator (``generate``) of daily price series whose log
price is a random-walk level with drift, a mean-reverting (Ornstein-Uhlenbeck) deviation
with calm and turbulent volatility regimes, and observation noise (docs/models.md).
The held-out period is the last part of every series (walk-forward, no look-ahead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.data import require_columns
from serving.errors import InvalidInput
from serving.protocol.codec import TensorSpec
from serving.tasks.base import Dataset, Evaluation, PostprocessContext, Task

#: Prices in a window (the raw input's width).
WINDOW = 30
#: Longest forecast horizon, in days.
MAX_HORIZON = 10
DEFAULT_HORIZON = 5
#: Quantiles the model predicts for every horizon: the 80 % band and the median.
QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)
#: Largest price accepted, and the largest day-on-day move (up or down, as a factor):
#: windows outside these are not daily prices of one instrument.
MAX_PRICE = 1e9
MAX_DAILY_FACTOR = 10.0
#: Windows per built-in series: a series is WINDOW + WINDOWS_PER_SERIES * MAX_HORIZON days.
WINDOWS_PER_SERIES = 250

Price = Annotated[float, Field(gt=0, le=MAX_PRICE)]


class PriceWindow(BaseModel):
    """The most recent daily prices of one instrument, oldest first."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prices: list[Price] = Field(
        min_length=WINDOW,
        max_length=WINDOW,
        description=f"The last {WINDOW} daily closing prices, oldest first; each > 0.",
    )


class ForecastParameters(BaseModel):
    """Per-request parameters."""

    model_config = ConfigDict(extra="forbid")

    horizon: int = Field(
        DEFAULT_HORIZON, ge=1, le=MAX_HORIZON,
        description=f"Days ahead to forecast, 1-{MAX_HORIZON}.",
    )


@dataclass
class SeriesDataset(Dataset):
    """Windows (``raw``, [N, WINDOW] prices) and the next MAX_HORIZON prices (``target``),
    with the series each window comes from and the time index of its last price."""

    series: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def take(self, index: np.ndarray) -> SeriesDataset:
        return SeriesDataset(self.raw[index], self.target[index], self.source,
                             self.series[index], self.end[index])


def simulate_series(length: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic daily price series (documented in docs/models.md).

    log p_t = log p_0 + level_t + x_t + e_t with
    level_t = level_{t-1} + mu + N(0, 0.002²)   (random walk with drift mu ~ N(3e-4, 3e-4²)),
    x_t = (1 - kappa) x_{t-1} + sigma_t N(0, 1)  (OU deviation, kappa ~ U(0.1, 0.3)),
    sigma_t = 0.01 in the calm regime, 0.03 in the turbulent one (two-state Markov chain,
    calm → turbulent with probability 0.02 a day, turbulent → calm 0.05), e_t ~ N(0, 0.002²).
    """
    p0 = np.exp(rng.uniform(np.log(10), np.log(500)))
    mu = rng.normal(3e-4, 3e-4)
    kappa = rng.uniform(0.1, 0.3)
    level = np.cumsum(mu + rng.normal(0, 0.002, length))
    switch = rng.random(length)
    turbulent = np.zeros(length, bool)
    state = rng.random() < 0.3
    for t in range(length):
        state = (switch[t] >= 0.05) if state else (switch[t] < 0.02)
        turbulent[t] = state
    shocks = np.where(turbulent, 0.03, 0.01) * rng.normal(0, 1, length)
    x = np.zeros(length)
    for t in range(1, length):
        x[t] = (1 - kappa) * x[t - 1] + shocks[t]
    noise = rng.normal(0, 0.002, length)
    return p0 * np.exp(level + x + noise)


def windows(prices: np.ndarray, series: int = 0) -> SeriesDataset:
    """Windows of one series with stride MAX_HORIZON: window i is
    ``prices[i*H : i*H + WINDOW]`` and its target the next H prices, so every price is the
    target of at most one window and a walk-forward cut between two windows drops none."""
    h = MAX_HORIZON
    count = (len(prices) - WINDOW) // h
    if count < 1:
        return SeriesDataset(np.zeros((0, WINDOW), np.float32), np.zeros((0, h), np.float32),
                             series=np.zeros(0, np.int64), end=np.zeros(0, np.int64))
    starts = np.arange(count) * h
    raw = np.stack([prices[s : s + WINDOW] for s in starts]).astype(np.float32)
    target = np.stack([prices[s + WINDOW : s + WINDOW + h] for s in starts]).astype(np.float32)
    return SeriesDataset(raw, target, series=np.full(count, series, np.int64),
                         end=starts + WINDOW - 1)


def concat(parts: list[SeriesDataset], source: str = "builtin") -> SeriesDataset:
    return SeriesDataset(
        np.concatenate([p.raw for p in parts]), np.concatenate([p.target for p in parts]),
        source, np.concatenate([p.series for p in parts]), np.concatenate([p.end for p in parts]),
    )


def generate(n: int, seed: int = 0) -> SeriesDataset:
    """``n`` windows from ceil(n / WINDOWS_PER_SERIES) synthetic series (the last shorter)."""
    rng = np.random.default_rng(seed)
    parts, left, index = [], n, 0
    while left > 0:
        count = min(left, WINDOWS_PER_SERIES)
        parts.append(windows(simulate_series(WINDOW + count * MAX_HORIZON, rng), index))
        left -= count
        index += 1
    return concat(parts)


def log_returns(raw: np.ndarray) -> np.ndarray:
    return np.diff(np.log(raw.astype(np.float64)), axis=1)


class ForecastTask(Task):
    name = "forecast"
    description = (
        f"Price forecast over the next 1-{MAX_HORIZON} days with an 80 % band, from the last "
        f"{WINDOW} daily prices."
    )
    route = "forecast"
    quick_training = (6000, 3)
    Record = PriceWindow
    raw_fields = ("prices",)
    Parameters = ForecastParameters
    input_spec = TensorSpec(
        "prices", "FP32", (-1, WINDOW), f"the last {WINDOW} daily prices, oldest first, > 0"
    )
    output_specs = (
        TensorSpec("forecast", "FP32", (-1, -1), "median price for days 1..horizon",
                   role="estimate"),
        TensorSpec("lower", "FP32", (-1, -1), "10 % quantile price for days 1..horizon",
                   role="bound"),
        TensorSpec("upper", "FP32", (-1, -1), "90 % quantile price for days 1..horizon",
                   role="bound"),
    )
    default_epochs = 15
    batch_size = 128
    samples = 24_000
    generate = staticmethod(generate)

    # --- data -------------------------------------------------------------------------
    def dataset_from_columns(self, columns: dict[str, list[Any]]) -> Dataset:
        """Columns ``date`` (sortable), ``price`` (> 0) and optional ``series`` (an id)."""
        require_columns(columns, ["date", "price"])
        price = np.asarray(columns["price"], dtype=np.float64)
        if not np.isfinite(price).all() or (price <= 0).any() or (price > MAX_PRICE).any():
            raise ValueError(f"column 'price' must hold finite prices in (0, {MAX_PRICE:g}]")
        ids = columns["series"] if "series" in columns else [""] * len(price)
        dates = columns["date"]
        if any(d is None for d in dates):
            raise ValueError("column 'date' has empty values")
        parts: list[SeriesDataset] = []
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(ids):
            groups.setdefault(str(s), []).append(i)
        for name in sorted(groups):
            rows = sorted(groups[name], key=lambda i: dates[i])
            if len({dates[i] for i in rows}) < len(rows):
                raise ValueError(f"series {name!r} has more than one price for a date")
            part = windows(price[rows], len(parts))
            if len(part):  # series shorter than a window and its target are skipped
                parts.append(part)
        if not parts:
            raise ValueError(
                f"no series has the {WINDOW + MAX_HORIZON} prices a window and its target need"
            )
        return concat(parts, source="columns")

    def split(self, data: Dataset, seed: int = 0, holdout: float = 0.2) -> tuple[Dataset, Dataset]:
        """Walk-forward split: the last ``holdout`` of every series' windows are held out;
        training windows whose targets reach the held-out period are dropped (none, with
        the stride-H windows ``windows`` builds)."""
        data = _as_series(data)
        train_rows, hold_rows = [], []
        for s in np.unique(data.series):
            rows = np.flatnonzero(data.series == s)
            rows = rows[np.argsort(data.end[rows], kind="stable")]
            n_hold = round(holdout * len(rows))
            if n_hold == 0:
                train_rows.append(rows)
                continue
            held = rows[len(rows) - n_hold :]
            cutoff = data.end[held[0]] + 1  # first held-out target time
            train = rows[: len(rows) - n_hold]
            train_rows.append(train[data.end[train] + MAX_HORIZON < cutoff])
            hold_rows.append(held)
        empty = np.zeros(0, np.int64)
        return (data.take(np.concatenate(train_rows or [empty])),
                data.take(np.concatenate(hold_rows or [empty])))

    # --- preprocessing ----------------------------------------------------------------
    def records_to_raw(self, records: list[BaseModel]) -> np.ndarray:
        return np.array([r.prices for r in records], dtype=np.float32)

    def check_raw(self, raw: np.ndarray) -> np.ndarray:
        """The Record's price bounds (``raw_fields``), then day-on-day moves."""
        array = super().check_raw(raw)
        if (np.abs(log_returns(array)) > np.log(MAX_DAILY_FACTOR)).any():
            raise InvalidInput(
                f"a price moves by more than a factor {MAX_DAILY_FACTOR:g} from one day to the "
                "next; send split-adjusted daily prices of one instrument, oldest first"
            )
        return array

    def fit_preprocessing(self, train: Dataset) -> dict[str, Any]:
        scale = float(log_returns(train.raw).std()) + 1e-6
        return {
            "window": WINDOW,
            "max_horizon": MAX_HORIZON,
            "quantiles": list(QUANTILES),
            "return_scale": round(scale, 8),
            "input_width": 2 * (WINDOW - 1),
        }

    def preprocess(self, raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Daily log returns, and log prices relative to the last one, over the scale."""
        scale = params["return_scale"]
        logp = np.log(raw.astype(np.float64))
        returns = np.diff(logp, axis=1) / scale
        level = (logp[:, :-1] - logp[:, -1:]) / (scale * np.sqrt(WINDOW))
        return np.concatenate([returns, level], axis=1).astype(np.float32)

    def context(self, raw: np.ndarray, params: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"last_price": raw[:, -1].astype(np.float32)}

    def targets(self, data: Dataset, params: dict[str, Any]) -> np.ndarray:
        """Cumulative log returns to each horizon over the scale, [N, H, 1]."""
        y = np.log(data.target.astype(np.float64) / data.raw[:, -1:].astype(np.float64))
        return (y / params["return_scale"])[:, :, None].astype(np.float32)

    # --- model ------------------------------------------------------------------------
    def build_model(self, params: dict[str, Any]) -> Any:
        import keras

        horizons = params["max_horizon"]
        inputs = keras.Input((params["input_width"],), name="inputs")
        h = inputs
        for _ in range(2):
            h = keras.layers.Dense(32, activation="relu")(h)
            h = keras.layers.Dropout(0.2)(h)
        raw = keras.layers.Reshape((horizons, 3))(keras.layers.Dense(horizons * 3)(h))
        outputs = _quantile_head()(name="quantiles")(raw)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=_pinball_loss(QUANTILES))
        return model

    # --- postprocessing and evaluation -------------------------------------------------
    def postprocess(self, outputs: dict[str, np.ndarray],
                    ctx: PostprocessContext) -> dict[str, np.ndarray]:
        horizon = int(ctx.request_params.get("horizon", DEFAULT_HORIZON))
        last = np.asarray(ctx.preprocess_context["last_price"], np.float64).reshape(-1, 1)
        paths = self._price_quantiles(outputs["scores"], last, ctx.fit_params)[:, :horizon]
        return {
            "forecast": paths[..., 1].astype(np.float32),
            "lower": paths[..., 0].astype(np.float32),
            "upper": paths[..., 2].astype(np.float32),
        }

    @staticmethod
    def _price_quantiles(scores: np.ndarray, last: np.ndarray,
                         params: dict[str, Any]) -> np.ndarray:
        """[N, H, 3] scaled cumulative-log-return quantiles → sorted price quantiles (log
        returns clipped to ±20, so prices stay finite in FP32)."""
        q = np.sort(np.asarray(scores, np.float64), axis=-1) * params["return_scale"]
        return last[:, :, None] * np.exp(np.clip(q, -20.0, 20.0))

    def evaluate(self, holdout: Dataset, outputs: dict[str, np.ndarray],
                 params: dict[str, Any]) -> Evaluation:
        """MAPE of the median forecast (default horizon; every horizon in ``extra``) against
        the naive last-price and the drift forecasts, and the 80 % band's coverage."""
        raw = holdout.raw.astype(np.float64)
        actual = holdout.target.astype(np.float64)
        last = raw[:, -1:]
        paths = self._price_quantiles(outputs["scores"], last, params)
        steps = np.arange(1, actual.shape[1] + 1)
        drift = np.log(raw[:, -1:] / raw[:, :1]) / (raw.shape[1] - 1)
        forecasts = {
            "model": paths[..., 1],
            "naive": np.repeat(last, len(steps), axis=1),
            "drift": last * np.exp(drift * steps),
        }
        mape = {k: 100 * np.mean(np.abs(f - actual) / actual, axis=0) for k, f in forecasts.items()}
        h = DEFAULT_HORIZON - 1
        best = min(("naive", "drift"), key=lambda k: mape[k][h])
        inside = (paths[..., 0] <= actual) & (actual <= paths[..., 2])
        width = 100 * np.mean((paths[..., 2] - paths[..., 0]) / last, axis=0)
        extra = {f"mape_h{i}": float(mape["model"][i - 1]) for i in steps}
        extra.update({
            "naive_mape_h5": float(mape["naive"][h]),
            "drift_mape_h5": float(mape["drift"][h]),
            "coverage_80": float(inside.mean()),
            "coverage_80_h5": float(inside[:, h].mean()),
            "band_width_pct_h5": float(width[h]),
        })
        return Evaluation(
            metric=f"mape_h{DEFAULT_HORIZON}",
            value=float(mape["model"][h]),
            baseline=float(mape[best][h]),
            baseline_name={"naive": "naive (last price)", "drift": "drift"}[best],
            extra=extra,
        )


def _as_series(data: Dataset) -> SeriesDataset:
    """Datasets without series metadata are taken as one series of stride-H windows."""
    if isinstance(data, SeriesDataset) and len(data.series) == len(data):
        return data
    n = len(data)
    return SeriesDataset(data.raw, data.target, data.source, np.zeros(n, np.int64),
                         np.arange(n, dtype=np.int64) * MAX_HORIZON + WINDOW - 1)


@cache
def _quantile_head() -> type:
    """A layer keeping quantiles ordered: median, median - softplus(a), median + softplus(b)."""
    import keras

    class QuantileHead(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            ops = keras.ops
            median = x[..., 1]
            lower = median - ops.softplus(x[..., 0])
            upper = median + ops.softplus(x[..., 2])
            return ops.stack([lower, median, upper], axis=-1)

    return QuantileHead


def _pinball_loss(quantiles: tuple[float, ...]) -> Any:
    """Mean pinball (quantile) loss of [N, H, Q] predictions against [N, H, 1] targets."""
    import keras

    q = np.asarray(quantiles, np.float32)

    def pinball(y_true: Any, y_pred: Any) -> Any:
        error = y_true - y_pred
        return keras.ops.mean(keras.ops.maximum(q * error, (q - 1) * error), axis=-1)

    return pinball
