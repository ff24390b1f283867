"""The recommend task: schema, cold start, exclusion of held products, k, ranking, split,
and a small trained model beating the popularity ranking."""

import numpy as np
import pytest
from pydantic import ValidationError

from serving.errors import InvalidInput
from serving.tasks import Dataset, PostprocessContext, get_task
from serving.tasks.recommend import CATALOG, PRODUCTS, TOP_K, Customer, generate


@pytest.fixture(scope="module")
def task():
    return get_task("recommend")


def _params(holdings: dict[str, list[str]]) -> dict:
    """Preprocessing parameters fitted on a tiny hand-written training set."""
    pairs = [(c, PRODUCTS.index(p)) for c, held in holdings.items() for p in held]
    train = Dataset(np.array([c for c, _ in pairs], dtype=object),
                    np.array([p for _, p in pairs], np.int32))
    return get_task("recommend").fit_preprocessing(train)


def _answer(task, params, customers, scores=None, **parameters):
    raw = task.check_raw(task.records_to_raw([Customer(customer_id=c) for c in customers]))
    x = task.preprocess(raw, params)
    if scores is None:  # a model preferring later catalog entries
        scores = np.tile(np.linspace(1, 2, len(PRODUCTS)), (len(raw), 1))
        scores /= scores.sum(axis=1, keepdims=True)
    ctx = PostprocessContext(params, {}, task.request_params(parameters),
                             task.context(raw, params))
    return x, task.postprocess({"scores": np.asarray(scores, np.float32)}, ctx)


# --- schema and raw checks -------------------------------------------------------------
def test_record_takes_a_customer_id(task):
    raw = task.records_to_raw([Customer(customer_id="C000042"), Customer(customer_id="x")])
    assert raw.tolist() == ["C000042", "x"] and raw.dtype == object


@pytest.mark.parametrize(
    "record",
    [{"customer_id": ""}, {"customer_id": "   "}, {"customer_id": "c" * 65},
     {"customer_id": 42}, {"customer_id": None}, {}, {"customer_id": "C1", "segment": "x"}],
    ids=["empty", "blank", "long", "number", "null", "missing", "extra"],
)
def test_record_rejects_bad_ids(record):
    with pytest.raises(ValidationError):
        Customer(**record)


def test_raw_checks(task):
    for bad, message in (([""], "empty"), (["  "], "empty"), (["c" * 65], "longer"),
                         ([], "empty batch")):
        with pytest.raises(InvalidInput, match=message):
            task.check_raw(np.array(bad, dtype=object))
    with pytest.raises(InvalidInput, match="shape"):
        task.check_raw(np.array([["a", "b"], ["c", "d"]], dtype=object))


# --- parameters --------------------------------------------------------------------------
def test_k_parameter_defaults_and_bounds(task):
    assert task.request_params(None) == {"k": TOP_K}
    assert task.request_params({"k": len(CATALOG)}) == {"k": len(CATALOG)}
    for bad in (0, -1, len(CATALOG) + 1, 1.5, "all"):
        with pytest.raises(InvalidInput, match=r"parameters\.k"):
            task.request_params({"k": bad})
    with pytest.raises(InvalidInput, match=r"parameters\.top"):
        task.request_params({"top": 3})


# --- postprocessing ----------------------------------------------------------------------
def test_unknown_customer_gets_the_popularity_ranking(task):
    params = _params({"A": ["mortgage", "insurance_home"],
                      "B": ["mortgage", "savings_easy", "insurance_home"], "C": ["mortgage"]})
    x, out = _answer(task, params, ["A", "stranger"], k=3)
    assert x[:, 0].tolist() == [1, 0]
    assert out["cold_start"].tolist() == [False, True] and out["cold_start"].dtype == bool
    assert out["products"][1].tolist() == ["mortgage", "insurance_home", "savings_easy"]
    np.testing.assert_allclose(out["scores"][1], [3 / 6, 2 / 6, 1 / 6], rtol=1e-5)


def test_held_products_are_excluded_and_k_is_honoured(task):
    held = ["fx_account", "business_account", "business_card", "business_loan"]  # the last 4
    params = _params({"A": held, "B": ["mortgage"]})
    for k in (1, TOP_K, 12):
        _, out = _answer(task, params, ["A", "B", "A"], k=k)
        assert out["products"].shape == (3, k) and out["scores"].shape == (3, k)
        assert out["scores"].dtype == np.float32
        assert not set(out["products"][0]) & set(held)
        assert "mortgage" not in out["products"][1]
    _, out = _answer(task, params, ["A"], k=1)
    assert out["products"][0].tolist() == ["insurance_travel"]  # best product not held
    _, out = _answer(task, params, ["A"])
    assert out["products"].shape == (1, TOP_K)  # default k


def test_top_k_is_sorted_by_score_and_renormalised(task):
    params = _params({"A": ["current_basic"], "B": ["mortgage"]})
    rng = np.random.default_rng(0)
    scores = rng.dirichlet(np.ones(len(PRODUCTS)), size=2)
    _, out = _answer(task, params, ["A", "B"], scores=scores, k=len(PRODUCTS) - 1)
    s = out["scores"]
    assert (np.diff(s, axis=1) <= 0).all()
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-5)  # over the products not held
    for row in range(2):
        expected = [PRODUCTS[j] for j in np.argsort(-scores[row])]
        held = "current_basic" if row == 0 else "mortgage"
        assert out["products"][row].tolist() == [p for p in expected if p != held]


def test_fewer_products_left_than_k_are_padded_with_empty_ids(task):
    params = _params({"A": list(PRODUCTS[:-2])})
    _, out = _answer(task, params, ["A"], k=4)
    assert out["products"][0].tolist()[:2] == list(PRODUCTS[-2:][::-1])
    assert out["products"][0].tolist()[2:] == ["", ""]
    assert out["scores"][0, 2:].tolist() == [0.0, 0.0]


def test_outputs_encode_for_every_route(task):
    from serving import dataplane
    from serving.protocol.v2 import ResponseOutput

    params = _params({"A": ["mortgage"]})
    _, out = _answer(task, params, ["A", "new"], k=2)
    rows = dataplane.rows(out)
    assert rows[1]["cold_start"] is True and len(rows[0]["products"]) == 2
    assert all(isinstance(p, str) for p in rows[0]["products"])
    datatypes = {s.name: s.datatype for s in task.output_specs}
    for name, values in out.items():
        wire = ResponseOutput.from_array(name, values)
        assert wire.datatype == datatypes[name] and wire.shape == list(values.shape)


# --- data and split ------------------------------------------------------------------------
def test_generator_has_segments_worth_of_customers(task):
    data = task.sample_data(seed=0)
    customers = set(data.raw.tolist())
    assert len(data) == task.samples and 2000 <= len(customers) <= 4000
    assert set(np.unique(data.target)) <= set(range(len(PRODUCTS)))
    pairs = set(zip(data.raw.tolist(), data.target.tolist(), strict=True))
    assert len(pairs) == len(data)  # a customer holds a product once


def test_split_leaves_one_held_product_out_per_customer(task):
    data = generate(3000, seed=3)
    train, holdout = task.split(data, seed=1)
    assert len(train) == 2400 and len(holdout) == 600
    assert len(set(holdout.raw.tolist())) == len(holdout)  # one per customer
    train_pairs = set(zip(train.raw.tolist(), train.target.tolist(), strict=True))
    hold_pairs = set(zip(holdout.raw.tolist(), holdout.target.tolist(), strict=True))
    assert not train_pairs & hold_pairs
    assert set(holdout.raw.tolist()) <= set(train.raw.tolist())  # known customers


def test_user_csv_loader(task, tmp_path):
    csv = tmp_path / "holdings.csv"
    csv.write_text("customer_id,product_id\n17,mortgage\n17,mortgage\n17,savings_easy\n"
                   "abc,fund_index\n")
    data = task.load_data(csv)
    pairs = set(zip(data.raw.tolist(), data.target.tolist(), strict=True))
    assert pairs == {("17", PRODUCTS.index("mortgage")), ("17", PRODUCTS.index("savings_easy")),
                     ("abc", PRODUCTS.index("fund_index"))}
    with pytest.raises(ValueError, match="unknown product"):
        task.dataset_from_columns({"customer_id": ["a"], "product_id": ["yacht"]})
    with pytest.raises(ValueError, match="missing column"):
        task.dataset_from_columns({"customer": ["a"], "product_id": ["mortgage"]})


# --- a trained model ------------------------------------------------------------------------
def test_trained_model_beats_popularity_and_serves_end_to_end(tmp_path):
    from serving.runtime import ModelRunner, TaskProcessing
    from serving.store import ModelStore
    from serving.training import train

    store = ModelStore(tmp_path / "store")
    m = train("recommend", store, samples=8000, epochs=8, seed=0)
    assert m.metrics["metric"] == "hit_rate@5" and m.metrics["baseline_name"] == "popularity"
    assert m.metrics["value"] > m.metrics["baseline"] + 0.1
    assert m.metrics["ndcg@5"] > m.metrics["popularity_ndcg@5"]
    params = m.preprocessing
    assert not any(k.startswith("_") for k in params)

    runner = ModelRunner(store, "recommend", "recommend", ["1"], intra_op_threads=1)
    runner.load_all()
    steps = TaskProcessing(store, "recommend", "recommend", ["1"])
    task = get_task("recommend")
    customer = params["customers"][0]
    held = {p for j, p in enumerate(params["products"]) if params["holdings"][0] >> j & 1}
    batch = steps.preprocess("1", task.check_raw(np.array([customer, "nobody"], dtype=object)))
    batch.data = runner.predict_batch([("1", batch.data)])[0]
    out = steps.postprocess("1", batch, task.request_params({"k": 3}))
    assert out["products"].shape == (2, 3) and out["cold_start"].tolist() == [False, True]
    assert not set(out["products"][0]) & held
    popular = [params["products"][j] for j in np.argsort(-np.array(params["popularity"]))[:3]]
    assert out["products"][1].tolist() == popular
