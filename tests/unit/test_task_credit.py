"""Credit risk: schema, preprocessing, decisions, and reason codes faithful to the model."""

import numpy as np
import pytest
from pydantic import ValidationError

from serving.errors import InvalidInput
from serving.runtime import ModelRunner, TaskProcessing
from serving.store import ModelStore
from serving.tasks import PostprocessContext, get_task
from serving.tasks.credit import COLUMNS, FEATURES, MAX_REASONS, REASONS, Applicant
from serving.training import train

APPLICANT = {
    "annual_income": 62000, "debt_to_income": 0.18, "credit_utilization": 0.25,
    "credit_history_years": 11, "delinquencies_2y": 0, "inquiries_6m": 1, "open_accounts": 7,
    "loan_amount": 12000, "term_months": 36, "employment_years": 6,
    "home_ownership": "mortgage", "purpose": "debt_consolidation",
}


@pytest.fixture(scope="module")
def credit(tmp_path_factory):
    """A small credit model, its runner and its pre/post steps."""
    store = ModelStore(tmp_path_factory.mktemp("credit-store"))
    train("credit", store, samples=12000, epochs=8, seed=0)
    runner = ModelRunner(store, "credit", "credit", ["1"])
    runner.load_all()
    return store, runner, TaskProcessing(store, "credit", "credit", ["1"])


def _answer(credit, records):
    _, runner, steps = credit
    raw = get_task("credit").records_to_raw([Applicant(**r) for r in records])
    batch = steps.preprocess("1", raw)
    outputs = runner.predict_batch([("1", batch.data)])[0]
    batch.data = outputs
    return outputs, steps.postprocess("1", batch)


@pytest.mark.parametrize(
    "bad", [{"annual_income": 0}, {"debt_to_income": -0.1}, {"home_ownership": "castle"},
            {"purpose": "yacht"}, {"term_months": 3}, {"credit_utilization": float("nan")},
            {"delinquencies_2y": 1.5}, {"nickname": "x"}],
)
def test_applicant_schema_rejects_bad_records(bad):
    with pytest.raises(ValidationError):
        Applicant(**{**APPLICANT, **bad})


def test_raw_rows_are_range_checked():
    task = get_task("credit")
    raw = task.records_to_raw([Applicant(**APPLICANT)])
    assert raw[0, FEATURES.index("home_ownership")] == 1  # mortgage
    for name, value in (("debt_to_income", 9.0), ("purpose", 2.5), ("purpose", 6)):
        bad = raw.copy()
        bad[0, FEATURES.index(name)] = value
        with pytest.raises(InvalidInput, match=name):
            task.check_raw(bad)


def test_preprocessing_one_hot_encodes_categories():
    task = get_task("credit")
    params = task.fit_preprocessing(task.sample_data(seed=0, n=2000))
    x = task.preprocess(task.records_to_raw([Applicant(**APPLICANT)]), params)
    assert x.shape == (1, len(COLUMNS)) == (1, params["input_width"])
    home = [i for i, c in enumerate(COLUMNS) if c == "home_ownership"]
    assert x[0, home].tolist() == [0.0, 1.0, 0.0]
    assert len(params["reference_input"]) == len(COLUMNS)


def test_decisions_and_grades_follow_thresholds():
    task = get_task("credit")
    p = np.array([[0.02], [0.15], [0.5]], np.float32)
    out = task.postprocess({"scores": p, "attributions": np.zeros((3, len(COLUMNS)))},
                           PostprocessContext({}, task.options(None)))
    assert out["decision"].tolist() == ["approve", "review", "decline"]
    assert out["grade"].tolist() == ["A", "C", "E"]
    assert out["reason_codes"].shape == (3, MAX_REASONS)
    assert (out["reason_codes"] == "").all()  # no attribution, no reason


def test_attributions_add_up_to_the_change_from_the_reference(credit):
    store, _, _ = credit
    ref = store.manifest("credit").preprocessing["reference_applicant"]
    reference = {**APPLICANT, **{k: v for k, v in ref.items()
                                 if k not in ("home_ownership", "purpose")}}
    reference["home_ownership"] = ("rent", "mortgage", "own")[int(ref["home_ownership"])]
    reference["purpose"] = ("debt_consolidation", "credit_card", "home_improvement", "car",
                            "small_business", "other")[int(ref["purpose"])]
    outputs, _ = _answer(credit, [reference, APPLICANT])
    p = outputs["scores"].reshape(-1)
    total = outputs["attributions"].sum(axis=1)
    assert abs(total[0]) < 1e-3  # the reference itself has nothing to explain
    assert total[1] == pytest.approx(p[1] - p[0], abs=0.01)  # integrated gradients completeness


@pytest.mark.parametrize(
    ("feature", "value"),
    [("credit_utilization", 1.1), ("debt_to_income", 0.75), ("delinquencies_2y", 4)],
)
def test_raising_an_adverse_feature_raises_risk_and_names_it(credit, feature, value):
    _, answers = _answer(credit, [APPLICANT, {**APPLICANT, feature: value}])
    before, after = answers["default_probability"]
    assert after > before
    code, statement = REASONS[feature]
    assert code in answers["reason_codes"][1].tolist()
    assert answers["reason_codes"][1][0] == code  # the dominant reason
    assert statement in answers["reasons"][1].tolist()
