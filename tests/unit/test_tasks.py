import numpy as np
import pytest
from pydantic import ValidationError

from serving.errors import InvalidInput
from serving.protocol.examples import task_example
from serving.tasks import TASKS, PostprocessContext, get_task
from serving.tasks._domain import record_domain
from serving.tasks.fraud import FEATURES, Transaction
from serving.tasks.sentiment import LABELS, OOV, tokenize


@pytest.mark.parametrize("name", sorted(TASKS))
def test_builtin_data_is_deterministic_per_seed(name):
    task = get_task(name)
    a, b, c = task.sample_data(seed=3, n=200), task.sample_data(seed=3, n=200), task.sample_data(
        seed=4, n=200
    )
    assert a.raw.tolist() == b.raw.tolist() and a.target.tolist() == b.target.tolist()
    assert a.raw.tolist() != c.raw.tolist()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_preprocessing_is_fit_on_train_and_shapes_the_model_input(name):
    task = get_task(name)
    data = task.sample_data(seed=0, n=500)
    train, holdout = task.split(data, seed=0)
    assert len(train) == 400 and len(holdout) == 100
    params = task.fit_preprocessing(train)
    x = task.preprocess(task.check_raw(holdout.raw), params)
    assert x.shape == (100, params["input_width"])
    assert np.isfinite(x.astype(np.float64)).all()


@pytest.mark.parametrize("name", ["credit", "digits", "forecast", "fraud", "recommend",
                                  "sentiment"])
def test_every_output_declares_its_role(name):
    task = get_task(name)
    assert all(spec.role for spec in task.output_specs)
    assert len(task.outputs_with("decision")) <= 1


def test_decisions_are_found_by_role_not_by_name():
    assert get_task("fraud").outputs_with("decision") == ("decision",)
    assert get_task("sentiment").outputs_with("decision") == ("label",)
    assert get_task("digits").outputs_with("decision") == ("digit",)
    assert get_task("forecast").outputs_with("decision") == ()


def test_runtime_caches_are_declared_built_once_and_never_stored():
    task = get_task("sentiment")
    params = {"vocabulary": ["a"]}
    built = task.cached(params, "_index", lambda: {"a": 2})
    assert task.cached(params, "_index", lambda: {}) is built
    assert task.stored_params(params) == {"vocabulary": ["a"]}
    with pytest.raises(KeyError, match="no runtime cache"):
        task.cached(params, "_other", dict)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(KeyError, match="known tasks"):
        get_task("nope")


# --- fraud ---------------------------------------------------------------------------
def _tx(**overrides):
    record = {"amount": 10.0, "hour": 12, "merchant_risk": 0.2, "distance_km": 1.0,
              "velocity_1h": 0, "card_present": True, "foreign": False,
              "account_age_days": 400, "amount_to_avg": 1.0}
    return {**record, **overrides}


def test_fraud_records_follow_the_documented_column_order():
    task = get_task("fraud")
    raw = task.records_to_raw([Transaction(**_tx(amount=77.0, hour=5, foreign=True))])
    assert raw.shape == (1, len(FEATURES))
    assert raw[0, FEATURES.index("amount")] == 77.0
    assert raw[0, FEATURES.index("hour")] == 5
    assert raw[0, FEATURES.index("foreign")] == 1.0


@pytest.mark.parametrize(
    "bad", [{"amount": -1}, {"hour": 24}, {"merchant_risk": 1.5}, {"amount": float("nan")},
            {"amount": "ten"}, {"extra": 1}, {"velocity_1h": 1.5}],
)
def test_fraud_record_schema_rejects_bad_fields(bad):
    with pytest.raises(ValidationError):
        Transaction(**_tx(**bad))


def test_fraud_raw_checks_ranges_and_finiteness():
    task = get_task("fraud")
    good = task.records_to_raw([Transaction(**_tx())])
    for column, value, message in (("amount", -5, "amount must be >= 0"), ("hour", 30, "hour"),
                                   ("amount", np.nan, "NaN")):
        bad = good.copy()
        bad[0, FEATURES.index(column)] = value
        with pytest.raises(InvalidInput, match=message):
            task.check_raw(bad)


def test_fraud_decisions_follow_the_configured_thresholds():
    task = get_task("fraud")
    options = task.options({"review_threshold": 0.3, "block_threshold": 0.7})
    out = task.postprocess({"scores": np.array([[0.1], [0.5], [0.9]], np.float32)},
                           PostprocessContext({}, options))
    assert out["decision"].tolist() == ["approve", "review", "block"]
    with pytest.raises(ValueError, match="unknown postprocess option"):
        task.options({"block": 1})


def test_fraud_generator_has_a_realistic_fraud_rate():
    rate = get_task("fraud").sample_data(seed=0, n=20_000).target.mean()
    assert 0.01 < rate < 0.06


# --- sentiment -------------------------------------------------------------------------
def test_tokenizer_handles_case_numbers_symbols_and_unicode():
    assert tokenize("Profit UP 12% to $5bn!") == ["profit", "up", "12", "%", "to", "$", "5bn"]
    assert tokenize("") == []
    assert tokenize("Zürich-based bank's") == ["z", "rich", "based", "bank's"]


def test_sentiment_preprocess_pads_truncates_and_maps_unknown_words():
    task = get_task("sentiment")
    params = {"vocabulary": ["profit", "jumps"], "max_len": 4, "labels": list(LABELS)}
    x = task.preprocess(np.array(["profit jumps", "zzz profit a b c d e"], dtype=object), params)
    assert x.tolist() == [[2, 3, 0, 0], [OOV, 2, OOV, OOV]]


def test_sentiment_rejects_empty_and_overlong_text():
    task = get_task("sentiment")
    with pytest.raises(InvalidInput, match="empty"):
        task.check_raw(np.array(["  "], dtype=object))
    with pytest.raises(InvalidInput, match="longer than"):
        task.check_raw(np.array(["x" * 5000], dtype=object))


def test_sentiment_labels_are_the_argmax():
    task = get_task("sentiment")
    out = task.postprocess({"scores": np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)},
                           PostprocessContext({"labels": list(LABELS)}))
    assert out["label"].tolist() == ["negative", "positive"]


def test_user_csv_loader_reads_documented_columns_and_names_missing_ones(tmp_path):
    task = get_task("sentiment")
    csv = tmp_path / "news.csv"
    csv.write_text('text,label\n"Bank profit jumps",positive\n"Bank fined",negative\n')
    data = task.load_data(csv)
    assert data.raw.tolist() == ["Bank profit jumps", "Bank fined"]
    assert data.target.tolist() == [2, 0]
    assert data.source == str(csv)
    (tmp_path / "bad.csv").write_text("headline,label\nx,positive\n")
    with pytest.raises(ValueError, match="missing column"):
        task.load_data(tmp_path / "bad.csv")


def test_user_parquet_loader_for_fraud(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    task = get_task("fraud")
    data = task.sample_data(seed=0, n=50)
    table = {f: data.raw[:, i].tolist() for i, f in enumerate(FEATURES)}
    table["is_fraud"] = data.target.tolist()
    pq.write_table(pa.table(table), tmp_path / "tx.parquet")
    loaded = task.load_data(tmp_path / "tx.parquet")
    np.testing.assert_allclose(loaded.raw, data.raw)
    np.testing.assert_array_equal(loaded.target, data.target)


# --- the values every protocol checks: the Record's ------------------------------------
NUMERIC_TASKS = [n for n in sorted(TASKS) if TASKS[n].input_spec.datatype != "BYTES"]


@pytest.mark.parametrize("name", NUMERIC_TASKS)
def test_every_numeric_raw_column_is_declared_by_the_record(name):
    task = get_task(name)
    domain = record_domain(task.Record, task.raw_fields)
    assert domain.elementwise or len(domain.bounds) == task.input_spec.shape[-1]
    assert all(b.low is not None and b.high is not None for b in domain.bounds)


def test_raw_column_order_and_category_indexes_follow_the_records():
    from serving.tasks.credit import FEATURES as CREDIT_FEATURES
    from serving.tasks.credit import HOME, PURPOSE, Applicant

    assert tuple(Transaction.model_fields) == FEATURES
    assert tuple(Applicant.model_fields) == CREDIT_FEATURES
    bounds = {b.name: b for b in record_domain(Applicant, CREDIT_FEATURES).bounds}
    assert bounds["home_ownership"].categories == HOME
    assert bounds["purpose"].categories == PURPOSE


def _outside(bound) -> list[float]:
    """Values just outside what ``bound`` allows (kept apart in float32)."""
    values = []
    if bound.low is not None:
        values.append(bound.low if bound.low_open else bound.low - 1)
    if bound.high is not None:
        values.append(bound.high * 1.01 + 1)
    if bound.whole:
        values.append(bound.low + 0.5)
    return values


#: tasks whose raw input is one column per Record field
COLUMN_TASKS = [n for n in sorted(TASKS) if len(TASKS[n].raw_fields) > 1]


@pytest.mark.parametrize("name", COLUMN_TASKS)
def test_the_raw_batch_refuses_what_the_record_refuses(name):
    """One source: each value the Record refuses on the task route, the raw batch of V2 and
    TF-Serving refuses too, naming the column and what it takes (from the task's request
    example)."""
    task = get_task(name)
    record = task_example(name)["records"][0]
    good = task.records_to_raw([task.Record(**record)])
    task.check_raw(good)
    for column, bound in enumerate(record_domain(task.Record, task.raw_fields).bounds):
        for value in _outside(bound):
            raw = good.copy()
            raw[0, column] = value
            with pytest.raises(InvalidInput, match=f"^{bound.name} must be .*; got "):
                task.check_raw(raw)
            if bound.kind != "category":  # the record takes the category's name
                with pytest.raises(ValidationError):
                    task.Record(**{**record, bound.name: value})


@pytest.mark.parametrize(("column", "value", "message"), [
    ("merchant_risk", -50, "merchant_risk must be >= 0 and <= 1; got -50 in example 1"),
    ("card_present", 100, r"card_present must be 0 or 1 \(false or true\); got 100"),
    ("foreign", -100, "foreign must be 0 or 1"),
    ("foreign", 0.5, "foreign must be 0 or 1"),
    ("hour", 3.5, "hour must be a whole number >= 0 and <= 23; got 3.5"),
    ("hour", 24, "hour must be a whole number >= 0 and <= 23; got 24"),
    ("velocity_1h", 1.5, "velocity_1h must be a whole number >= 0 and <= 10000"),
    ("amount_to_avg", 1e6, r"amount_to_avg must be >= 0 and <= 100000"),
])
def test_fraud_raw_batch_is_checked_against_the_transaction_schema(column, value, message):
    task = get_task("fraud")
    raw = task.records_to_raw([Transaction(**_tx()), Transaction(**_tx())])
    raw[1, FEATURES.index(column)] = value
    with pytest.raises(InvalidInput, match=message):
        task.check_raw(raw)
