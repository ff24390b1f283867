"""Credit risk: an applicant → probability of default, grade, decision and ranked reasons.

Reason codes are computed on the served model itself: the exported signature returns
integrated-gradients attributions of the default probability against a documented
reference applicant (the training medians and modes), and postprocessing ranks the raw
features that raised the risk and maps them to plain-language statements.

Built-in data: a seeded synthetic generator of applicants (``generate``), documented in
docs/models.md.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.data import require_columns
from serving.protocol.codec import TensorSpec
from serving.tasks._explain import integrated_gradients, rank_reasons, reason_outputs
from serving.tasks._layers import binary_mlp
from serving.tasks.base import Dataset, Evaluation, PostprocessContext, Task

HOME = ("rent", "mortgage", "own")
PURPOSE = ("debt_consolidation", "credit_card", "home_improvement", "car", "small_business",
           "other")
#: Raw feature order on the V2 and V1 routes (categoricals as their index in HOME / PURPOSE);
#: ``Applicant`` declares each one's values.
FEATURES: tuple[str, ...] = (
    "annual_income", "debt_to_income", "credit_utilization", "credit_history_years",
    "delinquencies_2y", "inquiries_6m", "open_accounts", "loan_amount", "term_months",
    "employment_years", "home_ownership", "purpose",
)
#: Plain-language statement for a feature that raised the applicant's risk.
REASONS: dict[str, tuple[str, str]] = {
    "annual_income": ("R01", "Income insufficient for the amount of credit requested"),
    "debt_to_income": ("R02", "Debt-to-income ratio too high"),
    "credit_utilization": ("R03", "Proportion of balances to credit limits too high"),
    "credit_history_years": ("R04", "Length of credit history too short"),
    "delinquencies_2y": ("R05", "Delinquency on accounts in the last two years"),
    "inquiries_6m": ("R06", "Too many recent credit inquiries"),
    "open_accounts": ("R07", "Number of open credit accounts"),
    "loan_amount": ("R08", "Loan amount too high relative to income"),
    "term_months": ("R09", "Loan term too long"),
    "employment_years": ("R10", "Length of employment too short"),
    "home_ownership": ("R11", "Housing status"),
    "purpose": ("R12", "Purpose of the loan"),
}
GRADES: tuple[tuple[str, float], ...] = (("A", 0.05), ("B", 0.10), ("C", 0.20), ("D", 0.35))
MAX_REASONS = 4


class Applicant(BaseModel):
    """A loan application."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    annual_income: float = Field(ge=1, le=1e8, description="Gross annual income.")
    debt_to_income: float = Field(ge=0, le=5, description="Monthly debt / monthly income.")
    credit_utilization: float = Field(ge=0, le=5, description="Revolving balances / limits.")
    credit_history_years: float = Field(ge=0, le=80, description="Age of the oldest account.")
    delinquencies_2y: int = Field(ge=0, le=100, description="30+ days late, last 2 years.")
    inquiries_6m: int = Field(ge=0, le=100, description="Hard credit inquiries, 6 months.")
    open_accounts: int = Field(ge=0, le=200, description="Open credit accounts.")
    loan_amount: float = Field(ge=1, le=1e8, description="Amount requested.")
    term_months: int = Field(ge=6, le=480, description="Loan term in months.")
    employment_years: float = Field(ge=0, le=70, description="Years with current employer.")
    home_ownership: Literal["rent", "mortgage", "own"]
    purpose: Literal[
        "debt_consolidation", "credit_card", "home_improvement", "car", "small_business", "other"
    ]


def generate(n: int, seed: int = 0) -> Dataset:
    """Synthetic applicants; default ~ Bernoulli(sigmoid(z)) with the logit below."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(11.0, 0.5, n)
    history = np.clip(rng.gamma(3.0, 4.0, n), 0, 60)
    employment = np.clip(rng.gamma(2.0, 3.0, n), 0, 45)
    dti = np.clip(rng.beta(2.2, 6.0, n) * 1.2, 0, 2)
    utilization = np.clip(rng.beta(2.0, 3.0, n) * 1.1, 0, 2)
    delinquencies = rng.poisson(0.3 + 0.4 * (utilization > 0.8), n)
    inquiries = rng.poisson(1.0, n)
    open_accounts = rng.poisson(8, n)
    loan = np.clip(income * rng.lognormal(-1.6, 0.6, n), 1000, None)
    term = rng.choice([36, 60], n, p=[0.7, 0.3])
    home = rng.choice(len(HOME), n, p=[0.4, 0.4, 0.2])
    purpose = rng.choice(len(PURPOSE), n, p=[0.4, 0.2, 0.1, 0.12, 0.08, 0.1])
    z = (
        -4.0
        + 3.0 * dti
        + 2.2 * utilization
        - 0.06 * history
        + 0.55 * delinquencies
        + 0.18 * inquiries
        - 0.45 * (np.log(income) - 11.0)
        + 1.4 * (loan / income)
        + 0.35 * (term == 60)
        - 0.05 * employment
        - 0.3 * (home == 2)
        + 0.6 * (purpose == 4)
    )
    default = rng.random(n) < 1 / (1 + np.exp(-z))
    raw = np.column_stack(
        [income, dti, utilization, history, delinquencies, inquiries, open_accounts, loan, term,
         employment, home, purpose]
    ).astype(np.float32)
    return Dataset(raw=raw, target=default.astype(np.float32))


def _index(name: str) -> int:
    return FEATURES.index(name)


#: Model input columns and the raw feature each comes from (attributions sum per feature).
_NUMERIC = ("annual_income", "debt_to_income", "credit_utilization", "credit_history_years",
            "delinquencies_2y", "inquiries_6m", "open_accounts", "loan_amount", "term_months",
            "employment_years")
COLUMNS: tuple[str, ...] = (
    *_NUMERIC, *("home_ownership" for _ in HOME), *("purpose" for _ in PURPOSE)
)


class CreditTask(Task):
    name = "credit"
    description = "Probability of default, risk grade, decision and ranked reason codes."
    route = "decide"
    quick_training = (8000, 4)
    Record = Applicant
    raw_fields = FEATURES
    input_spec = TensorSpec(
        "applicant", "FP32", (-1, len(FEATURES)),
        "columns: " + ", ".join(FEATURES) + " (home_ownership and purpose as category index)",
    )
    output_specs = (
        TensorSpec("default_probability", "FP32", (-1,), "probability of default", role="score"),
        TensorSpec("grade", "BYTES", (-1,), "risk grade A (best) to E", role="label"),
        TensorSpec("decision", "BYTES", (-1,), "approve, review or decline", role="decision"),
        *reason_outputs(MAX_REASONS, "ranked; '' pads"),
    )
    derived_outputs = ("reasons",)
    default_epochs = 10
    batch_size = 256
    default_options: ClassVar[dict[str, Any]] = {"approve_below": 0.10, "decline_at": 0.30}
    samples = 30_000
    generate = staticmethod(generate)

    def dataset_from_columns(self, columns: dict[str, list[Any]]) -> Dataset:
        require_columns(columns, [*FEATURES, "defaulted"])
        coded = dict(columns)
        for name, values in (("home_ownership", HOME), ("purpose", PURPOSE)):
            coded[name] = [values.index(v) if isinstance(v, str) else v for v in columns[name]]
        raw = np.column_stack([np.asarray(coded[f], dtype=np.float32) for f in FEATURES])
        return Dataset(raw=raw, target=np.asarray(columns["defaulted"], dtype=np.float32))

    def records_to_raw(self, records: list[BaseModel]) -> np.ndarray:
        numeric = attrgetter(*_NUMERIC)
        return np.array([(*numeric(r), HOME.index(r.home_ownership), PURPOSE.index(r.purpose))
                         for r in records], dtype=np.float32)

    # --- preprocessing ----------------------------------------------------------------
    @staticmethod
    def _numeric(raw: np.ndarray) -> np.ndarray:
        x = raw[:, : len(_NUMERIC)].astype(np.float32, copy=True)
        income = x[:, _index("annual_income")]
        x[:, _index("loan_amount")] = x[:, _index("loan_amount")] / income  # loan-to-income
        x[:, _index("annual_income")] = np.log(income)
        for name in ("credit_history_years", "delinquencies_2y", "inquiries_6m",
                     "employment_years"):
            x[:, _index(name)] = np.log1p(x[:, _index(name)])
        return x

    def fit_preprocessing(self, train: Dataset) -> dict[str, Any]:
        x = self._numeric(train.raw)
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        median = np.median(train.raw, axis=0)
        modes = {n: int(np.bincount(train.raw[:, _index(n)].astype(int)).argmax())
                 for n in ("home_ownership", "purpose")}
        reference_raw = [*median[: len(_NUMERIC)].tolist(), modes["home_ownership"],
                         modes["purpose"]]
        params = {
            "features": list(FEATURES),
            "mean": mean.round(6).tolist(),
            "std": std.round(6).tolist(),
            "input_width": len(COLUMNS),
            "reference_applicant": dict(zip(FEATURES, map(float, reference_raw), strict=True)),
            "default_rate": float(train.target.mean()),
        }
        params["reference_input"] = self.preprocess(
            np.array([reference_raw], np.float32), params
        )[0].round(6).tolist()
        return params

    def preprocess(self, raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        numeric = (self._numeric(raw) - np.asarray(params["mean"], np.float32)) / np.asarray(
            params["std"], np.float32
        )
        home = np.eye(len(HOME), dtype=np.float32)[raw[:, _index("home_ownership")].astype(int)]
        purpose = np.eye(len(PURPOSE), dtype=np.float32)[raw[:, _index("purpose")].astype(int)]
        return np.concatenate([numeric, home, purpose], axis=1).astype(np.float32)

    # --- model ------------------------------------------------------------------------
    def build_model(self, params: dict[str, Any]) -> Any:
        return binary_mlp(params["input_width"], learning_rate=2e-3)

    def serving_outputs(self, model: Any, params: dict[str, Any]) -> Any:
        """Scores and integrated-gradients attributions against the reference applicant."""
        return integrated_gradients(model, params["reference_input"])

    # --- postprocessing -------------------------------------------------------------------
    def postprocess(self, outputs: dict[str, np.ndarray],
                    ctx: PostprocessContext) -> dict[str, np.ndarray]:
        p = outputs["scores"].reshape(-1).astype(np.float32)
        options = ctx.options
        decision = np.where(p < options["approve_below"], "approve",
                            np.where(p < options["decline_at"], "review", "decline"))
        grade = np.full(len(p), "E", dtype=object)
        for letter, bound in reversed(GRADES):
            grade[p < bound] = letter
        codes, statements = rank_reasons(outputs.get("attributions"), len(p), COLUMNS,
                                         REASONS, MAX_REASONS)
        return {"default_probability": p, "grade": grade, "decision": decision.astype(object),
                "reason_codes": codes, "reasons": statements}

    def evaluate(self, holdout: Dataset, outputs: dict[str, np.ndarray],
                 params: dict[str, Any]) -> Evaluation:
        from sklearn.metrics import roc_auc_score

        y = holdout.target
        dti_only = roc_auc_score(y, holdout.raw[:, _index("debt_to_income")])
        return Evaluation(
            metric="roc_auc", value=float(roc_auc_score(y, outputs["scores"].reshape(-1))),
            baseline=0.5, baseline_name="constant score",
            extra={"dti_only_roc_auc": float(dti_only), "default_rate": float(y.mean())},
        )
