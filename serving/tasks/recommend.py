"""Product recommendation: a customer → the top-k products of the bank's catalog they do not
hold yet, by collaborative filtering (customer and product embeddings, softmax over the
catalog). Unknown customers get the popularity ranking (cold start).

Built-in data: a seeded synthetic generator (``generate``) of customers in six segments
(student, young professional, family, affluent, retiree, small business), each with its own
product affinities (docs/models.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.data import require_columns
from serving.errors import InvalidInput
from serving.protocol.codec import TensorSpec
from serving.tasks.base import Dataset, Evaluation, PostprocessContext, Task

#: The product catalog: (id, name). Served answers name products by id.
CATALOG: tuple[tuple[str, str], ...] = (
    ("current_basic", "Basic current account"),
    ("current_premium", "Premium current account"),
    ("student_account", "Student account"),
    ("savings_easy", "Easy-access savings"),
    ("savings_fixed", "Fixed-term deposit"),
    ("card_classic", "Classic credit card"),
    ("card_rewards", "Rewards credit card"),
    ("card_platinum", "Platinum credit card"),
    ("loan_student", "Student loan"),
    ("loan_personal", "Personal loan"),
    ("loan_auto", "Auto loan"),
    ("mortgage", "Mortgage"),
    ("fund_index", "Index fund"),
    ("fund_managed", "Managed portfolio"),
    ("pension", "Personal pension"),
    ("insurance_home", "Home insurance"),
    ("insurance_life", "Life insurance"),
    ("insurance_travel", "Travel insurance"),
    ("fx_account", "Multi-currency FX account"),
    ("business_account", "Business current account"),
    ("business_card", "Business credit card"),
    ("business_loan", "Business loan"),
)
PRODUCTS: tuple[str, ...] = tuple(pid for pid, _ in CATALOG)
MAX_ID_CHARS = 64
TOP_K = 5

#: Segments of the built-in generator: (name, share of customers, products held beyond the
#: first two ~ Binomial(n, 0.5) with this n, affinity weight per product; others 0.15).
SEGMENTS: tuple[tuple[str, float, int, dict[str, float]], ...] = (
    ("student", 0.15, 2, {
        "student_account": 10, "loan_student": 6, "savings_easy": 3, "card_classic": 2,
        "insurance_travel": 2, "fx_account": 2, "current_basic": 1}),
    ("young_professional", 0.22, 4, {
        "current_basic": 6, "card_rewards": 6, "savings_easy": 5, "loan_auto": 3,
        "loan_personal": 3, "fund_index": 3, "insurance_travel": 3, "fx_account": 2,
        "pension": 2}),
    ("family", 0.25, 4, {
        "current_basic": 6, "mortgage": 7, "insurance_home": 6, "insurance_life": 5,
        "loan_auto": 4, "savings_easy": 4, "card_classic": 3, "loan_personal": 3}),
    ("affluent", 0.12, 5, {
        "current_premium": 8, "card_platinum": 7, "fund_managed": 6, "fund_index": 4,
        "savings_fixed": 4, "pension": 4, "mortgage": 3, "fx_account": 3,
        "insurance_travel": 3}),
    ("retiree", 0.16, 3, {
        "current_basic": 6, "savings_fixed": 7, "savings_easy": 5, "insurance_home": 4,
        "pension": 3, "fund_managed": 2, "insurance_life": 2, "insurance_travel": 2}),
    ("small_business", 0.10, 4, {
        "business_account": 10, "business_card": 7, "business_loan": 6, "fx_account": 4,
        "current_basic": 3, "insurance_home": 2, "card_rewards": 1}),
)
_OTHER_AFFINITY = 0.15


class Customer(BaseModel):
    """A customer to recommend products to."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    customer_id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, pattern=r"\S",
        description="Customer id as in the training data; unknown ids get the cold-start "
        "(popularity) answer.",
    )


class RecommendParameters(BaseModel):
    """Per-request parameters."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(
        TOP_K, ge=1, le=len(CATALOG),
        description=f"How many products to recommend, 1-{len(CATALOG)}.",
    )


def generate(n: int, seed: int = 0) -> Dataset:
    """``n`` (customer_id, product) holdings of synthetic customers, customer by customer.

    A customer's segment is drawn by share; they hold 2 + Binomial(n_seg, 0.5) distinct
    products (at most the catalog), drawn without replacement with probability proportional
    to the segment's affinity times a per-customer Gamma(2, 1/2) taste factor per product.
    Customers are generated until there are ``n`` rows; the last one may be cut short.
    """
    rng = np.random.default_rng(seed)
    shares = np.array([s[1] for s in SEGMENTS])
    affinity = np.full((len(SEGMENTS), len(PRODUCTS)), _OTHER_AFFINITY)
    for row, (_, _, _, weights) in enumerate(SEGMENTS):
        for pid, w in weights.items():
            affinity[row, PRODUCTS.index(pid)] = w
    customers: list[str] = []
    products: list[int] = []
    index = 0
    while len(products) < n:
        index += 1
        seg = rng.choice(len(SEGMENTS), p=shares / shares.sum())
        count = min(2 + rng.binomial(SEGMENTS[seg][2], 0.5), len(PRODUCTS))
        weights = affinity[seg] * rng.gamma(2.0, 0.5, len(PRODUCTS))
        held = rng.choice(len(PRODUCTS), size=count, replace=False, p=weights / weights.sum())
        customers += [f"C{index:06d}"] * count
        products += held.tolist()
    return Dataset(
        raw=np.array(customers[:n], dtype=object), target=np.array(products[:n], np.int32)
    )


class RecommendTask(Task):
    personal_fields = ("customer_id",)
    name = "recommend"
    description = (
        "Top-k products of the catalog a customer does not hold yet (collaborative filtering; "
        "popularity ranking for unknown customers)."
    )
    route = "recommend"
    quick_training = (4000, 4)
    Record = Customer
    Parameters = RecommendParameters
    input_spec = TensorSpec("customer_id", "BYTES", (-1,), "customer id, 1-64 characters")
    output_specs = (
        TensorSpec("products", "BYTES", (-1, -1), "top-k product ids, best first", role="decision"),
        TensorSpec("scores", "FP32", (-1, -1),
                   "estimated probability each is the customer's next product", role="score"),
        TensorSpec("cold_start", "BOOL", (-1,), "unknown customer: popularity ranking",
                   role="detail"),
    )
    runtime_caches = ("_index", "_held")  # lookup indexes over the stored lists
    default_epochs = 10
    batch_size = 128
    samples = 12_000
    generate = staticmethod(generate)
    embedding_dim = 16

    # --- data -------------------------------------------------------------------------
    def dataset_from_columns(self, columns: dict[str, list[Any]]) -> Dataset:
        """Columns ``customer_id`` and ``product_id`` (a catalog id), one row per holding."""
        require_columns(columns, ["customer_id", "product_id"])
        index = {pid: i for i, pid in enumerate(PRODUCTS)}
        unknown = sorted({str(p) for p in columns["product_id"]} - set(index))
        if unknown:
            raise ValueError(
                f"unknown product id(s) {unknown[:10]}; the catalog has {', '.join(PRODUCTS)}"
            )
        seen: set[tuple[str, int]] = set()
        for cid, pid in zip(columns["customer_id"], columns["product_id"], strict=True):
            cid = str(cid).strip() if cid is not None else ""
            if not cid or len(cid) > MAX_ID_CHARS:
                raise ValueError(f"customer_id must be 1-{MAX_ID_CHARS} characters, got {cid!r}")
            seen.add((cid, index[str(pid)]))  # a holding counts once
        pairs = sorted(seen)
        return Dataset(
            raw=np.array([c for c, _ in pairs], dtype=object),
            target=np.array([p for _, p in pairs], dtype=np.int32),
        )

    def split(self, data: Dataset, seed: int = 0, holdout: float = 0.2) -> tuple[Dataset, Dataset]:
        """Leave-one-out: a share ``holdout`` of the rows is held out, one held product per
        customer (customers drawn at random; a second one each only if there are not enough
        customers), and every held-out customer keeps at least one product in training."""
        rng = np.random.default_rng(seed)
        n_hold = len(data) - int(len(data) * (1 - holdout))
        rows_of: dict[str, list[int]] = {}
        for row, cid in enumerate(data.raw):
            rows_of.setdefault(cid, []).append(row)
        rank = np.zeros(len(data), np.int64)  # 0 = stays in training
        for rows in rows_of.values():
            rank[rng.permutation(rows)] = np.arange(len(rows))
        candidates = np.flatnonzero(rank > 0)
        order = np.lexsort((rng.random(len(candidates)), rank[candidates]))
        held = np.sort(candidates[order[:n_hold]])
        train = np.setdiff1d(np.arange(len(data)), held)
        return data.take(train), data.take(held)

    # --- preprocessing ----------------------------------------------------------------
    def records_to_raw(self, records: list[BaseModel]) -> np.ndarray:
        return np.array([r.customer_id for r in records], dtype=object)

    def check_raw(self, raw: np.ndarray) -> np.ndarray:
        array = super().check_raw(raw)
        if any(len(c) > MAX_ID_CHARS for c in array):
            raise InvalidInput(f"customer_id longer than {MAX_ID_CHARS} characters")
        if any(not c.strip() for c in array):
            raise InvalidInput("customer_id must not be empty")
        return array

    def fit_preprocessing(self, train: Dataset) -> dict[str, Any]:
        """Known customers, their holdings as bit masks over ``products`` (bit j = product
        j), and the popularity share of every product."""
        customers = sorted(set(train.raw.tolist()))
        position = {c: i for i, c in enumerate(customers)}
        masks = [0] * len(customers)
        for cid, product in zip(train.raw, train.target, strict=True):
            masks[position[cid]] |= 1 << int(product)
        counts = np.bincount(train.target, minlength=len(PRODUCTS)).astype(np.float64)
        return {
            "products": list(PRODUCTS),
            "customers": customers,
            "holdings": masks,
            "popularity": (counts / counts.sum()).round(6).tolist(),
            "embedding_dim": self.embedding_dim,
            "input_width": 1,
            "input_dtype": "int32",
        }

    def preprocess(self, raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Customer ids (surrounding blanks ignored) → [N, 1] embedding rows: 1 + position
        among known customers, or 0 for an unknown customer."""
        index = self.cached(params, "_index",
                            lambda: {c: i + 1 for i, c in enumerate(params["customers"])})
        return np.array([index.get(str(c).strip(), 0) for c in raw], np.int32).reshape(-1, 1)

    def context(self, raw: np.ndarray, params: dict[str, Any]) -> dict[str, np.ndarray]:
        rows = self.preprocess(raw, params)[:, 0]
        return {"customer": rows, "known": rows > 0}

    # --- model ------------------------------------------------------------------------
    def build_model(self, params: dict[str, Any]) -> Any:
        """Customer embedding → logits over the catalog (product embeddings and biases)."""
        import keras

        inputs = keras.Input((1,), dtype="int32", name="inputs")
        user = keras.layers.Embedding(
            len(params["customers"]) + 1, params["embedding_dim"],
            embeddings_regularizer=keras.regularizers.L2(3e-4), name="customer_embedding",
        )(inputs)
        user = keras.layers.Flatten()(user)
        scores = keras.layers.Dense(len(params["products"]), activation="softmax",
                                    name="product_embedding")(user)
        model = keras.Model(inputs, scores)
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss="sparse_categorical_crossentropy")
        return model

    # --- postprocessing and evaluation -------------------------------------------------
    def postprocess(self, outputs: dict[str, np.ndarray],
                    ctx: PostprocessContext) -> dict[str, np.ndarray]:
        params = ctx.fit_params
        k = int(ctx.request_params.get("k", TOP_K))
        known = np.asarray(ctx.preprocess_context["known"], bool).reshape(-1)
        rows = np.asarray(ctx.preprocess_context["customer"]).reshape(-1)
        scores, held = self._candidates(outputs["scores"], rows, known, params)
        top = np.argsort(np.where(held, 1.0, -scores), axis=1, kind="stable")[:, :k]
        ids = np.array(params["products"], dtype=str)[top]
        ids[np.take_along_axis(held, top, axis=1)] = ""  # fewer than k products left to offer
        return {
            "products": ids,
            "scores": np.take_along_axis(scores, top, axis=1).astype(np.float32),
            "cold_start": ~known,
        }

    def _held(self, params: dict[str, Any]) -> np.ndarray:
        """[1 + customers, products] bool matrix of training holdings (row 0: unknown)."""

        def build() -> np.ndarray:
            masks = np.array([0, *params["holdings"]], dtype=np.int64)
            bits = np.arange(len(params["products"]), dtype=np.int64)
            return (masks[:, None] >> bits) & 1 == 1

        return self.cached(params, "_held", build)

    def _candidates(self, scores: np.ndarray, rows: np.ndarray, known: np.ndarray,
                    params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Scores renormalised over the products a customer does not hold (0 for held
        ones; the popularity share for unknown customers), and the held mask."""
        scores = np.asarray(scores, np.float64).copy()
        scores[~known] = np.asarray(params["popularity"], np.float64)
        held = self._held(params)[rows]
        scores[held] = 0.0
        total = scores.sum(axis=1, keepdims=True)
        scores[known] /= np.where(total[known] > 0, total[known], 1.0)
        return scores, held

    def evaluate(self, holdout: Dataset, outputs: dict[str, np.ndarray],
                 params: dict[str, Any]) -> Evaluation:
        """Hit rate@5 of the held-out product among products not held in training, against
        the popularity ranking scored the same way; NDCG@5 of both in ``extra``."""
        rows = self.preprocess(holdout.raw, params)[:, 0]
        known = rows > 0
        target = holdout.target.astype(np.int64)
        model, held = self._candidates(outputs["scores"], rows, known, params)
        popular, _ = self._candidates(
            np.tile(params["popularity"], (len(rows), 1)), rows, np.zeros_like(known), params
        )
        model[held], popular[held] = -1.0, -1.0  # never ranked above an offered product
        hits = {name: _rank_of(s, target) for name, s in (("model", model), ("pop", popular))}
        return Evaluation(
            metric=f"hit_rate@{TOP_K}",
            value=float(np.mean(hits["model"] < TOP_K)),
            baseline=float(np.mean(hits["pop"] < TOP_K)),
            baseline_name="popularity",
            extra={
                f"ndcg@{TOP_K}": _ndcg(hits["model"]),
                f"popularity_ndcg@{TOP_K}": _ndcg(hits["pop"]),
                "hit_rate@1": float(np.mean(hits["model"] < 1)),
                "holdout_customers": float(len(set(holdout.raw.tolist()))),
                "unknown_holdout_share": float(np.mean(~known)),
            },
        )


def _rank_of(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target product (ties counted against it)."""
    mine = scores[np.arange(len(target)), target]
    return (scores > mine[:, None]).sum(axis=1) + (scores == mine[:, None]).sum(axis=1) - 1


def _ndcg(rank: np.ndarray, k: int = TOP_K) -> float:
    """NDCG@k with one relevant product: 1 / log2(rank + 2) inside the top k, else 0."""
    return float(np.mean(np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)))
