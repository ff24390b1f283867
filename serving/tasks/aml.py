"""AML transaction monitoring: a customer's recent activity → suspicion score, a decision
(alert / review / clear) and ranked reason codes for the compliance analyst.

One example is one customer over one monitoring window (30 days in the built-in data):
aggregates a bank's transaction-monitoring system already computes. Reason codes are
computed on the served model like credit's: integrated-gradients attributions against a
reference customer (the training medians, a retail customer), summed per raw feature.

The held-out metric compares the model with the threshold rules banks run today
(``rules_alert``): at the rules' own alert rate, the share of suspicious customers caught.

Built-in data: a seeded synthetic generator (``generate``) of normal retail and business
customers and three laundering typologies (structuring, pass-through, high-risk
geographies) with label noise, documented in docs/models.md.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.data import require_columns
from serving.protocol.codec import TensorSpec
from serving.tasks._explain import integrated_gradients, rank_reasons, reason_outputs
from serving.tasks._layers import binary_mlp
from serving.tasks.base import Dataset, Evaluation, PostprocessContext, Task

CUSTOMER_TYPES = ("retail", "business")
#: Raw feature order on the V2 and V1 routes (customer_type as its index in CUSTOMER_TYPES);
#: ``CustomerActivity`` declares each one's values.
FEATURES: tuple[str, ...] = (
    "total_in", "total_out", "transaction_count", "max_daily_transactions", "cash_share",
    "near_threshold_count", "round_amount_share", "new_counterparty_share",
    "high_risk_geo_share", "max_counterparty_risk", "pass_through_ratio", "account_age_days",
    "customer_type",
)
_NUMERIC = FEATURES[:-1]
_LOG_FEATURES = ("total_in", "total_out", "transaction_count", "max_daily_transactions",
                 "near_threshold_count", "account_age_days")
#: the raw feature behind each model column (customer_type one-hot)
COLUMNS: tuple[str, ...] = (*_NUMERIC, *("customer_type" for _ in CUSTOMER_TYPES))
#: what a compliance analyst reads for a feature that raised the suspicion score
REASONS: dict[str, tuple[str, str]] = {
    "total_in": ("A01", "High value received in the period"),
    "total_out": ("A02", "High value sent in the period"),
    "transaction_count": ("A03", "High number of transactions in the period"),
    "max_daily_transactions": ("A04", "Bursts of many transactions on a single day"),
    "cash_share": ("A05", "High share of activity in cash"),
    "near_threshold_count": ("A06", "Cash deposits just under the reporting threshold "
                                    "(possible structuring)"),
    "round_amount_share": ("A07", "High share of round-amount transactions"),
    "new_counterparty_share": ("A08", "Many new counterparties"),
    "high_risk_geo_share": ("A09", "Value sent to or received from high-risk jurisdictions"),
    "max_counterparty_risk": ("A10", "Dealings with a high-risk counterparty"),
    "pass_through_ratio": ("A11", "Funds moved out soon after arriving (pass-through)"),
    "account_age_days": ("A12", "Recently opened account"),
    "customer_type": ("A13", "Customer type"),
}
MAX_REASONS = 3
#: cash deposits counted as just under the 10,000 currency-transaction reporting threshold
NEAR_THRESHOLD_BAND = (9_000.0, 10_000.0)


class CustomerActivity(BaseModel):
    """One customer's activity over the monitoring window (amounts in account currency)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    total_in: float = Field(ge=0, le=1e10, description="Value received in the window.")
    total_out: float = Field(ge=0, le=1e10, description="Value sent in the window.")
    transaction_count: int = Field(ge=0, le=1_000_000, description="Transactions in the window.")
    max_daily_transactions: int = Field(
        ge=0, le=100_000, description="Transactions on the busiest day of the window.")
    cash_share: float = Field(ge=0, le=1, description="Share of the value in cash.")
    near_threshold_count: int = Field(
        ge=0, le=100_000,
        description="Cash deposits of 9,000-9,999.99, just under the 10,000 reporting threshold.")
    round_amount_share: float = Field(
        ge=0, le=1, description="Share of transactions in round amounts (multiples of 100).")
    new_counterparty_share: float = Field(
        ge=0, le=1, description="Share of the value with counterparties first seen in the window.")
    high_risk_geo_share: float = Field(
        ge=0, le=1, description="Share of the value sent to or received from high-risk "
                                "jurisdictions.")
    max_counterparty_risk: float = Field(
        ge=0, le=1, description="Highest risk score of a counterparty in the window, 0-1.")
    pass_through_ratio: float = Field(
        ge=0, le=1, description="Share of the value received that was sent out within 3 days.")
    account_age_days: float = Field(ge=0, le=36500, description="Age of the account in days.")
    customer_type: Literal["retail", "business"]


# --- the built-in data ------------------------------------------------------------------
Columns = dict[str, np.ndarray]


def _retail(rng: np.random.Generator, m: int) -> Columns:
    """Salaried retail customers: 10 % with a new account, 8 % sending remittances to
    high-risk jurisdictions."""
    remit = rng.random(m) < 0.08
    total_in = rng.lognormal(np.log(3000), 0.8, m)
    return {
        "total_in": total_in, "total_out": total_in * rng.lognormal(-0.03, 0.25, m),
        "transaction_count": 5 + rng.poisson(25, m),
        "max_daily_transactions": 1 + rng.poisson(1.5, m), "cash_share": rng.beta(1.2, 9, m),
        "near_threshold_count": (rng.random(m) < 0.01) * (1 + rng.poisson(0.3, m)),
        "round_amount_share": rng.beta(2, 9, m), "new_counterparty_share": rng.beta(1.5, 9, m),
        "high_risk_geo_share": remit * rng.beta(1.5, 6, m),
        "max_counterparty_risk": rng.beta(2, 9, m) + remit * 0.35 * rng.random(m),
        "pass_through_ratio": rng.beta(2, 7, m),
        "account_age_days": np.where(rng.random(m) < 0.1, 5 + rng.gamma(1.2, 100, m),
                                     60 + rng.gamma(2, 1200, m)),
    }


def _business(rng: np.random.Generator, m: int) -> Columns:
    """Businesses: 25 % cash-intensive (daily takings), 15 % importers from high-risk
    jurisdictions, 25 % payroll or payment flows that pass money straight through."""
    cash_heavy, importer, payroll = (rng.random((3, m)) < [[0.25], [0.15], [0.25]])
    total_in = rng.lognormal(np.log(60000), 1.1, m)
    count = 20 + rng.poisson(150, m)
    return {
        "total_in": total_in, "total_out": total_in * rng.lognormal(-0.03, 0.2, m),
        "transaction_count": count, "max_daily_transactions": 2 + rng.poisson(count / 20),
        "cash_share": np.where(cash_heavy, rng.beta(6, 4, m), rng.beta(1.2, 8, m)),
        "near_threshold_count": rng.poisson(np.where(cash_heavy, 1.5, 0.05)),
        "round_amount_share": rng.beta(2, 7, m), "new_counterparty_share": rng.beta(2, 8, m),
        "high_risk_geo_share": importer * rng.beta(1.5, 6, m),
        "max_counterparty_risk": rng.beta(2, 7, m) + importer * 0.3 * rng.random(m),
        "pass_through_ratio": np.where(payroll, rng.beta(9, 2, m), rng.beta(2, 6, m)),
        "account_age_days": 180 + rng.gamma(2, 1500, m),
    }


def _toward(value: np.ndarray, target: Any, weight: np.ndarray) -> np.ndarray:
    """``value`` moved a ``weight`` (0-1) of the way to ``target``."""
    return value + weight * (target - value)


def _own(rng: np.random.Generator, u: np.ndarray) -> np.ndarray:
    """A secondary trace's own intensity ~ U(0, 1), independent of the typology's core one
    (``u``): a launderer shows some of a typology's signs, not all of them together."""
    return rng.random(len(u))


def _structuring(rng: np.random.Generator, c: Columns, u: np.ndarray) -> Columns:
    """Cash split into deposits just under the reporting threshold, several a day."""
    near = rng.binomial(7, u)
    cash = near * rng.uniform(*NEAR_THRESHOLD_BAND, len(u))
    return {
        "total_in": c["total_in"] + cash,
        "total_out": c["total_out"] + cash * rng.uniform(0.5, 1.0, len(u)),
        "transaction_count": c["transaction_count"] + near, "near_threshold_count": near,
        "max_daily_transactions": c["max_daily_transactions"] + rng.binomial(3, _own(rng, u)),
        "cash_share": _toward(c["cash_share"], 0.85, _own(rng, u)),
        "round_amount_share": _toward(c["round_amount_share"], 0.8, _own(rng, u) / 2),
    }


def _pass_through(rng: np.random.Generator, c: Columns, u: np.ndarray) -> Columns:
    """Money mules: money from many new payers, sent on within days; often a new account."""
    extra = c["total_in"] * (np.exp(2.5 * _own(rng, u)) - 1)
    new = rng.random(len(u)) < 0.6
    return {
        "total_in": c["total_in"] + extra,
        "total_out": c["total_out"] + extra * rng.uniform(0.85, 1.0, len(u)),
        "transaction_count": c["transaction_count"] + rng.poisson(20 * u),
        "max_daily_transactions": c["max_daily_transactions"] + rng.binomial(4, _own(rng, u)),
        "pass_through_ratio": _toward(c["pass_through_ratio"], 0.95, u),
        "new_counterparty_share": _toward(c["new_counterparty_share"], 0.8, _own(rng, u)),
        "account_age_days": np.where(new, 5 + rng.gamma(1.2, 100, len(u)),
                                     c["account_age_days"]),
    }


def _high_risk_geo(rng: np.random.Generator, c: Columns, u: np.ndarray) -> Columns:
    """Value moved through high-risk jurisdictions and risky counterparties."""
    scale = np.exp(1.5 * _own(rng, u))
    return {
        "total_in": c["total_in"] * scale, "total_out": c["total_out"] * scale,
        "high_risk_geo_share": _toward(c["high_risk_geo_share"], rng.beta(5, 2, len(u)), u),
        "max_counterparty_risk": _toward(c["max_counterparty_risk"], 0.9, _own(rng, u)),
        "round_amount_share": _toward(c["round_amount_share"], 0.8, _own(rng, u) / 2),
        "new_counterparty_share": _toward(c["new_counterparty_share"], 0.7, _own(rng, u) / 2),
    }


Trace = Callable[[np.random.Generator, Columns, np.ndarray], Columns]
#: normal customers: the share that are businesses
BUSINESS_SHARE = 0.18
#: the typologies: (its trace on a normal customer, share of all customers, share business)
TYPOLOGIES: tuple[tuple[Trace, float, float], ...] = (
    (_structuring, 0.011, 0.3), (_pass_through, 0.010, 0.2), (_high_risk_geo, 0.009, 0.55),
)
#: label noise: suspicious activity never reported, and normal activity reported defensively
MISSED_RATE, DEFENSIVE_RATE = 0.10, 0.004


def generate(n: int, seed: int = 0) -> Dataset:
    """Synthetic customer-windows: a normal retail or business customer; for a few percent
    a typology's trace on top, of intensity u ~ U(0, 1) (a low one barely shows); then the
    label (suspicious when traced) with ``MISSED_RATE`` / ``DEFENSIVE_RATE`` flipped."""
    rng = np.random.default_rng(seed)
    shares = [share for _, share, _ in TYPOLOGIES]
    typology = rng.choice(len(TYPOLOGIES) + 1, n, p=[1 - sum(shares), *shares]) - 1
    business = rng.random(n) < np.array([BUSINESS_SHARE, *(b for *_, b in TYPOLOGIES)])[
        typology + 1]
    retail, firm = _retail(rng, n), _business(rng, n)
    columns = {f: np.where(business, firm[f], retail[f]).astype(np.float64) for f in retail}
    for k, (trace, _, _) in enumerate(TYPOLOGIES):
        rows = np.flatnonzero(typology == k)
        traced = trace(rng, {f: v[rows] for f, v in columns.items()}, rng.random(len(rows)))
        for name, values in traced.items():
            columns[name][rows] = values
    columns["customer_type"] = business.astype(np.float64)
    raw = _consistent(np.column_stack([columns[f] for f in FEATURES]))
    suspicious = typology >= 0
    flip = rng.random(n) < np.where(suspicious, MISSED_RATE, DEFENSIVE_RATE)
    return Dataset(raw=raw.astype(np.float32), target=(suspicious ^ flip).astype(np.float32))


def _consistent(raw: np.ndarray) -> np.ndarray:
    """Shares within 0-1, the near-threshold deposits and the busiest day within the
    transaction count, whole days of account age."""
    col = {name: i for i, name in enumerate(FEATURES)}
    shares = [col[f] for f in FEATURES if f.endswith(("_share", "_risk", "_ratio"))]
    raw[:, shares] = np.clip(raw[:, shares], 0, 1)
    count = col["transaction_count"]
    raw[:, count] = np.maximum(raw[:, count], raw[:, col["near_threshold_count"]])
    for name in ("max_daily_transactions", "near_threshold_count"):
        raw[:, col[name]] = np.minimum(raw[:, col[name]], raw[:, count])
    raw[:, col["account_age_days"]] = np.round(np.minimum(raw[:, col["account_age_days"]], 36500))
    return raw


# --- the rules banks run today ----------------------------------------------------------
#: threshold rules: (name, the rule as a function of the raw columns)
RULES: tuple[tuple[str, Callable[[Columns], np.ndarray]], ...] = (
    ("structuring: 3+ cash deposits just under the threshold",
     lambda c: c["near_threshold_count"] >= 3),
    ("high-risk geography: 25 %+ of the value, 20,000+ moved",
     lambda c: (c["high_risk_geo_share"] >= 0.25) & (c["total_in"] + c["total_out"] >= 20_000)),
    ("rapid movement: 80 %+ passed through, 50,000+ received",
     lambda c: (c["pass_through_ratio"] >= 0.8) & (c["total_in"] >= 50_000)),
)


def rules_alert(raw: np.ndarray) -> np.ndarray:
    """Whether any of ``RULES`` fires for each raw row."""
    columns = {name: raw[:, i] for i, name in enumerate(FEATURES)}
    return np.logical_or.reduce([rule(columns) for _, rule in RULES])


def recall_at_alert_rate(y: np.ndarray, score: np.ndarray, alerts: int) -> tuple[float, float]:
    """Recall and precision of the ``alerts`` highest scores (the same workload as the
    rules); 0 when there is nothing to find or nothing is alerted."""
    if alerts == 0 or y.sum() == 0:
        return 0.0, 0.0
    top = np.argsort(-score, kind="stable")[:alerts]
    caught = float(y[top].sum())
    return caught / float(y.sum()), caught / alerts


def _type_index(value: Any) -> Any:
    """A customer type's index from its name; an index (or a gap) as it is."""
    if not isinstance(value, str):
        return value
    if value not in CUSTOMER_TYPES:
        raise ValueError(f"customer_type must be one of {', '.join(CUSTOMER_TYPES)}; "
                         f"got {value!r}")
    return CUSTOMER_TYPES.index(value)


class AmlTask(Task):
    name = "aml"
    description = ("Suspicious-activity score of a customer's recent transactions, with an "
                   "alert / review / clear decision and reason codes.")
    route = "monitor"
    quick_training = (10000, 6)
    Record = CustomerActivity
    raw_fields = FEATURES
    #: aggregates only: the customer's id stays with the caller (request id, record order)
    personal_fields = ()
    input_spec = TensorSpec(
        "activity", "FP32", (-1, len(FEATURES)),
        "columns: " + ", ".join(FEATURES) + " (customer_type as category index)",
    )
    output_specs = (
        TensorSpec("suspicion_score", "FP32", (-1,), "probability the activity is suspicious",
                   role="score"),
        TensorSpec("decision", "BYTES", (-1,), "alert, review or clear", role="decision"),
        *reason_outputs(MAX_REASONS, "for alert and review; '' pads"),
    )
    derived_outputs = ("reasons",)
    default_epochs = 10
    batch_size = 256
    default_options: ClassVar[dict[str, Any]] = {"review_threshold": 0.1, "alert_threshold": 0.4}
    samples = 40_000
    generate = staticmethod(generate)

    def dataset_from_columns(self, columns: dict[str, list[Any]]) -> Dataset:
        """The thirteen feature columns (customer_type by name or index) and ``suspicious``
        (0/1); values are checked against ``CustomerActivity``."""
        require_columns(columns, [*FEATURES, "suspicious"])
        coded = dict(columns)
        coded["customer_type"] = [_type_index(v) for v in columns["customer_type"]]
        raw = np.column_stack([np.asarray(coded[f], dtype=np.float32) for f in FEATURES])
        return Dataset(raw=self.check_raw(raw),
                       target=np.asarray(columns["suspicious"], dtype=np.float32))

    def records_to_raw(self, records: list[BaseModel]) -> np.ndarray:
        numeric = attrgetter(*_NUMERIC)
        return np.array([(*numeric(r), CUSTOMER_TYPES.index(r.customer_type)) for r in records],
                        dtype=np.float32)

    # --- preprocessing ----------------------------------------------------------------
    @staticmethod
    def _numeric(raw: np.ndarray) -> np.ndarray:
        x = raw[:, : len(_NUMERIC)].astype(np.float32, copy=True)
        for name in _LOG_FEATURES:
            i = FEATURES.index(name)
            x[:, i] = np.log1p(x[:, i])
        return x

    def fit_preprocessing(self, train: Dataset) -> dict[str, Any]:
        x = self._numeric(train.raw)
        kind = int(np.bincount(train.raw[:, -1].astype(int), minlength=2).argmax())
        reference_raw = [*np.median(train.raw[:, : len(_NUMERIC)], axis=0).tolist(), kind]
        params = {
            "features": list(FEATURES),
            "mean": x.mean(axis=0).round(6).tolist(),
            "std": (x.std(axis=0) + 1e-6).round(6).tolist(),
            "input_width": len(COLUMNS),
            "reference_customer": dict(zip(FEATURES, map(float, reference_raw), strict=True)),
            "suspicious_rate": float(train.target.mean()),
        }
        params["reference_input"] = self.preprocess(
            np.array([reference_raw], np.float32), params
        )[0].round(6).tolist()
        return params

    def preprocess(self, raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        numeric = (self._numeric(raw) - np.asarray(params["mean"], np.float32)) / np.asarray(
            params["std"], np.float32)
        kind = np.eye(len(CUSTOMER_TYPES), dtype=np.float32)[raw[:, -1].astype(int)]
        return np.concatenate([numeric, kind], axis=1).astype(np.float32)

    # --- model ------------------------------------------------------------------------
    def build_model(self, params: dict[str, Any]) -> Any:
        return binary_mlp(params["input_width"], learning_rate=3e-3)

    def serving_outputs(self, model: Any, params: dict[str, Any]) -> Any:
        """Scores and integrated-gradients attributions against the reference customer."""
        return integrated_gradients(model, params["reference_input"])

    # --- postprocessing and evaluation ------------------------------------------------
    def postprocess(self, outputs: dict[str, np.ndarray],
                    ctx: PostprocessContext) -> dict[str, np.ndarray]:
        options = ctx.options
        p = outputs["scores"].reshape(-1).astype(np.float32)
        decision = np.where(p >= options["alert_threshold"], "alert",
                            np.where(p >= options["review_threshold"], "review", "clear")
                            ).astype(object)
        codes, texts = rank_reasons(outputs.get("attributions"), len(p), COLUMNS, REASONS,
                                    MAX_REASONS, mask=decision != "clear")
        return {"suspicion_score": p, "decision": decision, "reason_codes": codes,
                "reasons": texts}

    def evaluate(self, holdout: Dataset, outputs: dict[str, np.ndarray],
                 params: dict[str, Any]) -> Evaluation:
        """Recall at the rules' alert rate: flag as many customers as the rules do, the
        highest scores first, and count the suspicious ones caught."""
        from sklearn.metrics import average_precision_score

        y = holdout.target
        p = outputs["scores"].reshape(-1)
        rules = rules_alert(holdout.raw)
        recall, precision = recall_at_alert_rate(y, p, int(rules.sum()))
        found = y.sum() > 0
        rules_recall = float(y[rules].sum() / y.sum()) if found else 0.0
        return Evaluation(
            metric="recall_at_rules_alert_rate", value=recall, baseline=rules_recall,
            baseline_name="threshold rules (structuring, high-risk geography, rapid movement)",
            extra={
                "precision_at_rules_alert_rate": precision,
                "rules_precision": float(y[rules].mean()) if rules.any() else 0.0,
                "rules_alert_rate": float(rules.mean()),
                "average_precision": float(average_precision_score(y, p)) if found else 0.0,
                "rules_average_precision": (float(average_precision_score(y, rules))
                                            if found else 0.0),
                "suspicious_rate": float(y.mean()),
            },
        )
