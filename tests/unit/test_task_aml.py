"""AML transaction monitoring: schema, generator, rules baseline, decisions, the user's
file, the model against the rules, and reason codes faithful to the model."""

import numpy as np
import pytest
from pydantic import ValidationError

from serving.errors import InvalidInput
from serving.runtime import ModelRunner, TaskProcessing
from serving.store import ModelStore
from serving.tasks import PostprocessContext, get_task
from serving.tasks.aml import (
    COLUMNS,
    CUSTOMER_TYPES,
    FEATURES,
    MAX_REASONS,
    REASONS,
    CustomerActivity,
    recall_at_alert_rate,
    rules_alert,
)
from serving.training import train

CUSTOMER = {
    "total_in": 4200, "total_out": 3900, "transaction_count": 32, "max_daily_transactions": 3,
    "cash_share": 0.08, "near_threshold_count": 0, "round_amount_share": 0.15,
    "new_counterparty_share": 0.1, "high_risk_geo_share": 0.0, "max_counterparty_risk": 0.15,
    "pass_through_ratio": 0.2, "account_age_days": 2100, "customer_type": "retail",
}


@pytest.fixture(scope="module")
def aml(tmp_path_factory):
    """A small AML model, its runner and its pre/post steps."""
    store = ModelStore(tmp_path_factory.mktemp("aml-store"))
    train("aml", store, samples=20000, epochs=10, seed=0)  # about 5 s
    runner = ModelRunner(store, "aml", "aml", ["1"])
    runner.load_all()
    return store, runner, TaskProcessing(store, "aml", "aml", ["1"])


def _score_raw(aml, raw):
    _, runner, steps = aml
    batch = steps.preprocess("1", raw)
    outputs = runner.predict_batch([("1", batch.data)])[0]
    batch.data = outputs
    return outputs, steps.postprocess("1", batch)


def _answer(aml, records):
    raw = get_task("aml").records_to_raw([CustomerActivity(**r) for r in records])
    return _score_raw(aml, raw)


# --- the record and the raw batch -----------------------------------------------------
@pytest.mark.parametrize(
    "bad", [{"total_in": -1}, {"cash_share": 1.2}, {"near_threshold_count": 2.5},
            {"pass_through_ratio": float("nan")}, {"customer_type": "trust"},
            {"account_age_days": 40000}, {"customer_id": "C1"}],
)
def test_record_schema_rejects_bad_fields(bad):
    with pytest.raises(ValidationError):
        CustomerActivity(**{**CUSTOMER, **bad})


def test_records_follow_the_documented_column_order():
    task = get_task("aml")
    assert tuple(CustomerActivity.model_fields) == FEATURES
    raw = task.records_to_raw([CustomerActivity(**{**CUSTOMER, "customer_type": "business",
                                                   "near_threshold_count": 4})])
    assert raw.shape == (1, len(FEATURES))
    assert raw[0, FEATURES.index("customer_type")] == CUSTOMER_TYPES.index("business") == 1
    assert raw[0, FEATURES.index("near_threshold_count")] == 4


def test_generator_has_a_realistic_base_rate_and_the_rules_miss_much_of_it():
    data = get_task("aml").sample_data(seed=0, n=20_000)
    y = data.target.astype(bool)
    assert 0.02 < y.mean() < 0.05
    alerts = rules_alert(data.raw)
    assert 0.02 < alerts.mean() < 0.10
    assert 0.15 < y[alerts].mean() < 0.5  # most rule alerts are false positives
    assert 0.2 < alerts[y].mean() < 0.6  # and many suspicious customers pass them
    counts = data.raw[:, FEATURES.index("near_threshold_count")]
    assert (data.raw[:, FEATURES.index("transaction_count")] >= counts).all()


@pytest.mark.parametrize(("change", "fires"), [
    ({}, False),
    ({"near_threshold_count": 3}, True),
    ({"near_threshold_count": 2}, False),
    ({"high_risk_geo_share": 0.3, "total_in": 12000, "total_out": 9000}, True),
    ({"high_risk_geo_share": 0.3}, False),  # too little value moved
    ({"pass_through_ratio": 0.85, "total_in": 60000}, True),
    ({"pass_through_ratio": 0.85, "total_in": 40000}, False),
])
def test_rules_baseline_fires_on_its_thresholds(change, fires):
    raw = get_task("aml").records_to_raw([CustomerActivity(**{**CUSTOMER, **change})])
    assert rules_alert(raw).tolist() == [fires]


def test_recall_at_alert_rate_counts_the_top_scores():
    y = np.array([1, 0, 1, 0, 0, 1], np.float32)
    score = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.05])
    assert recall_at_alert_rate(y, score, 3) == pytest.approx((2 / 3, 2 / 3))
    assert recall_at_alert_rate(y, score, 0) == (0.0, 0.0)
    assert recall_at_alert_rate(np.zeros(6), score, 2) == (0.0, 0.0)


def test_user_csv_is_read_with_customer_types_by_name_and_checked(tmp_path):
    task = get_task("aml")
    header = ",".join([*FEATURES, "suspicious", "customer_id"])
    rows = ["5000,4800,30,3,0.1,0,0.2,0.1,0,0.1,0.2,900,retail,0,C1",
            "90000,88000,60,9,0.6,4,0.7,0.5,0.1,0.4,0.9,40,business,1,C2"]
    (tmp_path / "aml.csv").write_text("\n".join([header, *rows]) + "\n")
    data = task.load_data(tmp_path / "aml.csv")
    assert data.raw.shape == (2, len(FEATURES)) and data.target.tolist() == [0, 1]
    assert data.raw[:, -1].tolist() == [0, 1]
    assert data.raw[1, FEATURES.index("near_threshold_count")] == 4
    (tmp_path / "bad.csv").write_text("\n".join([header, rows[0].replace(",0.1,0,", ",1.5,0,", 1)])
                                      + "\n")
    with pytest.raises(InvalidInput, match="cash_share must be >= 0 and <= 1"):
        task.load_data(tmp_path / "bad.csv")
    (tmp_path / "trust.csv").write_text("\n".join([header, rows[0].replace("retail", "trust")])
                                        + "\n")
    with pytest.raises(ValueError, match="customer_type must be one of retail, business"):
        task.load_data(tmp_path / "trust.csv")
    (tmp_path / "short.csv").write_text("total_in,suspicious\n1,0\n")
    with pytest.raises(ValueError, match=r"missing column.*cash_share"):
        task.load_data(tmp_path / "short.csv")


# --- preprocessing and decisions -----------------------------------------------------------
def test_preprocessing_one_hot_encodes_the_customer_type():
    task = get_task("aml")
    params = task.fit_preprocessing(task.sample_data(seed=0, n=2000))
    x = task.preprocess(task.records_to_raw([CustomerActivity(**CUSTOMER)]), params)
    assert x.shape == (1, len(COLUMNS)) == (1, params["input_width"])
    kind = [i for i, c in enumerate(COLUMNS) if c == "customer_type"]
    assert x[0, kind].tolist() == [1.0, 0.0]
    assert params["reference_customer"]["customer_type"] == 0  # retail, the most common
    assert len(params["reference_input"]) == len(COLUMNS)


def test_decisions_follow_the_thresholds_and_clear_has_no_reasons():
    task = get_task("aml")
    p = np.array([[0.02], [0.2], [0.7]], np.float32)
    attributions = np.zeros((3, len(COLUMNS)))
    attributions[:, FEATURES.index("cash_share")] = 0.3
    out = task.postprocess({"scores": p, "attributions": attributions},
                           PostprocessContext({}, task.options(None)))
    assert out["decision"].tolist() == ["clear", "review", "alert"]
    assert out["reason_codes"].shape == (3, MAX_REASONS)
    assert out["reason_codes"][:, 0].tolist() == ["", "A05", "A05"]
    stricter = task.postprocess(
        {"scores": p}, PostprocessContext({}, task.options({"alert_threshold": 0.8})))
    assert stricter["decision"].tolist() == ["clear", "review", "review"]
    with pytest.raises(ValueError, match="unknown postprocess option"):
        task.options({"block_threshold": 0.5})


# --- the trained model ----------------------------------------------------------------
def test_the_model_beats_the_rules_on_held_out_data(aml):
    store, _, _ = aml
    metrics = store.manifest("aml").metrics
    assert metrics["metric"] == "recall_at_rules_alert_rate"
    assert "rules" in metrics["baseline_name"]
    assert 0.2 < metrics["baseline"] < 0.6
    assert metrics["value"] > metrics["baseline"] + 0.1
    assert metrics["average_precision"] > 2 * metrics["rules_average_precision"]


def test_attributions_add_up_to_the_change_from_the_reference(aml):
    store, _, _ = aml
    ref = store.manifest("aml").preprocessing["reference_customer"]
    reference = {**ref, "customer_type": CUSTOMER_TYPES[int(ref["customer_type"])]}
    suspicious = {**CUSTOMER, "near_threshold_count": 5, "cash_share": 0.7, "total_in": 52000}
    outputs, _ = _answer(aml, [reference, suspicious])
    p = outputs["scores"].reshape(-1)
    total = outputs["attributions"].sum(axis=1)
    assert abs(total[0]) < 1e-3  # the reference itself has nothing to explain
    assert total[1] == pytest.approx(p[1] - p[0], abs=0.01)  # integrated gradients completeness


ACTIVE = {**CUSTOMER, "total_in": 60000, "total_out": 57000, "transaction_count": 60}


@pytest.mark.parametrize(
    ("base", "feature", "value"),
    [(CUSTOMER, "near_threshold_count", 6), (CUSTOMER, "new_counterparty_share", 0.9),
     (CUSTOMER, "cash_share", 0.9), (ACTIVE, "high_risk_geo_share", 0.9)],
)
def test_raising_a_red_flag_raises_the_score_and_names_it_first(aml, base, feature, value):
    _, answers = _answer(aml, [base, {**base, feature: value}])
    before, after = answers["suspicion_score"]
    assert after > before
    assert answers["decision"].tolist() == ["clear", "review" if after < 0.4 else "alert"]
    code, statement = REASONS[feature]
    assert answers["reason_codes"][1][0] == code  # the dominant reason
    assert answers["reasons"][1][0] == statement
    assert (answers["reason_codes"][0] == "").all()  # cleared: no reasons


def test_undoing_the_first_reason_lowers_the_score(aml):
    """Faithfulness on flagged customers: setting the feature named first back to the
    reference customer's value lowers the suspicion score."""
    store, _, _ = aml
    reference = store.manifest("aml").preprocessing["reference_customer"]
    data = get_task("aml").sample_data(seed=7, n=4000)
    raw = data.raw[data.target == 1]
    _, answers = _score_raw(aml, raw)
    flagged = np.flatnonzero(answers["decision"] != "clear")
    assert len(flagged) >= 20
    code_to_feature = {code: name for name, (code, _) in REASONS.items()}
    undone = raw[flagged].copy()
    for row, code in enumerate(answers["reason_codes"][flagged, 0]):
        feature = code_to_feature[code]
        undone[row, FEATURES.index(feature)] = reference[feature]
    _, after = _score_raw(aml, undone)
    drop = answers["suspicion_score"][flagged] - after["suspicion_score"]
    assert (drop > 0).all()
    assert np.median(drop) > 0.1
