"""Financial news sentiment: a headline → negative / neutral / positive (Embedding + LSTM).

Built-in data: a seeded template generator of financial headlines (``generate``) with
documented label noise and distractor clauses (docs/models.md).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.data import require_columns
from serving.errors import InvalidInput
from serving.protocol.codec import TensorSpec
from serving.tasks.base import Dataset, Evaluation, PostprocessContext, Task

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
PAD, OOV = 0, 1
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[%$]")
MAX_TEXT_CHARS = 2000

_COMPANIES = (
    "Acme Bank", "Northwind Capital", "Globex", "Initech", "Umbrella Insurance", "Stark Lending",
    "Wayne Financial", "Contoso Payments", "Fabrikam", "Tyrell Credit", "Soylent Holdings",
    "Hooli", "Vandelay Imports", "Cyberdyne", "Oceanic Trust", "Monarch Securities",
)
_POSITIVE = (
    "{c} shares jump after record quarterly profit",
    "{c} beats analyst estimates as revenue climbs {n}%",
    "analysts upgrade {c} to buy on strong loan growth",
    "{c} raises full-year guidance after robust demand",
    "{c} announces {n}% dividend increase and share buyback",
    "{c} stock rallies as margins improve",
    "{c} wins regulatory approval for expansion",
    "profit at {c} surges {n}% on higher fee income",
    "{c} reports strong deposit inflows and upbeat outlook",
    "investors cheer {c} merger that boosts earnings",
)
_NEGATIVE = (
    "{c} shares plunge after profit warning",
    "{c} misses estimates as revenue falls {n}%",
    "analysts downgrade {c} to sell amid rising defaults",
    "{c} cuts full-year guidance on weak demand",
    "regulator fines {c} over compliance failures",
    "{c} stock slumps as losses widen",
    "{c} suspends dividend after {n}% drop in earnings",
    "{c} faces lawsuit over fraud allegations",
    "credit rating agency cuts {c} outlook to negative",
    "{c} posts surprise loss and announces layoffs",
)
_NEUTRAL = (
    "{c} to report quarterly results on thursday",
    "{c} appoints new chief financial officer",
    "{c} schedules annual shareholder meeting",
    "{c} completes previously announced bond offering",
    "{c} shares unchanged in quiet trading",
    "{c} files annual report with regulator",
    "{c} opens new office in {city}",
    "{c} holds investor day in {city}",
    "{c} confirms date of earnings call",
    "{c} names {n} new board members",
)
_CITIES = ("london", "frankfurt", "singapore", "new york", "zurich", "toronto", "tokyo")
_FILLERS = ("", "", "", " according to sources", " in early trading", " on monday",
            " analysts said", " in a statement", " amid market volatility", " this week")


class Headline(BaseModel):
    """One piece of financial news."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="Headline or sentence.")


def generate(n: int, seed: int = 0, label_noise: float = 0.05) -> Dataset:
    """Template headlines; a fraction ``label_noise`` of labels is replaced at random."""
    rng = np.random.default_rng(seed)
    pools = (_NEGATIVE, _NEUTRAL, _POSITIVE)
    labels = rng.integers(0, 3, n)
    texts = []
    for label in labels:
        template = pools[label][rng.integers(len(pools[label]))]
        text = template.format(
            c=_COMPANIES[rng.integers(len(_COMPANIES))],
            n=int(rng.integers(2, 40)),
            city=_CITIES[rng.integers(len(_CITIES))],
        )
        texts.append(text + _FILLERS[rng.integers(len(_FILLERS))])
    noisy = rng.random(n) < label_noise
    labels = np.where(noisy, rng.integers(0, 3, n), labels)
    return Dataset(raw=np.array(texts, dtype=object), target=labels.astype(np.int32))


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens (numbers, % and $ kept)."""
    return _TOKEN.findall(text.lower())


class SentimentTask(Task):
    name = "sentiment"
    description = "Financial news sentiment (negative, neutral, positive) with an LSTM."
    route = "analyze"
    quick_training = (2000, 2)
    Record = Headline
    input_spec = TensorSpec("text", "BYTES", (-1,), "UTF-8 text, one headline per example")
    output_specs = (
        TensorSpec("probabilities", "FP32", (-1, len(LABELS)), "negative, neutral, positive",
                   role="score"),
        TensorSpec("label", "BYTES", (-1,), "the most probable label", role="decision"),
    )
    runtime_caches = ("_index",)  # lookup indexes over the stored lists
    default_epochs = 3
    batch_size = 64
    default_options: ClassVar[dict[str, Any]] = {}
    samples = 8_000
    generate = staticmethod(generate)
    max_len = 24
    vocab_size = 5_000

    def dataset_from_columns(self, columns: dict[str, list[Any]]) -> Dataset:
        require_columns(columns, ["text", "label"])
        index = {name: i for i, name in enumerate(LABELS)}
        unknown = {v for v in columns["label"] if v not in index}
        if unknown:
            raise ValueError(f"unknown label(s) {sorted(unknown)}; use {', '.join(LABELS)}")
        return Dataset(
            raw=np.array(columns["text"], dtype=object),
            target=np.array([index[v] for v in columns["label"]], dtype=np.int32),
        )

    def records_to_raw(self, records: list[BaseModel]) -> np.ndarray:
        return np.array([r.text for r in records], dtype=object)

    def check_raw(self, raw: np.ndarray) -> np.ndarray:
        array = super().check_raw(raw)
        if any(len(t) > MAX_TEXT_CHARS for t in array):
            raise InvalidInput(f"text longer than {MAX_TEXT_CHARS} characters")
        if any(not t.strip() for t in array):
            raise InvalidInput("text must not be empty")
        return array

    def fit_preprocessing(self, train: Dataset) -> dict[str, Any]:
        counts = Counter(tok for text in train.raw for tok in tokenize(text))
        vocab = [tok for tok, _ in counts.most_common(self.vocab_size - 2)]
        return {
            "vocabulary": vocab,
            "max_len": self.max_len,
            "labels": list(LABELS),
            "input_width": self.max_len,
            "input_dtype": "int32",
        }

    def preprocess(self, raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        index = self.cached(params, "_index",
                            lambda: {t: i + 2 for i, t in enumerate(params["vocabulary"])})
        max_len = params["max_len"]
        out = np.zeros((len(raw), max_len), dtype=np.int32)
        for row, text in enumerate(raw):
            ids = [index.get(tok, OOV) for tok in tokenize(text)][:max_len]
            out[row, : len(ids)] = ids
        return out

    def build_model(self, params: dict[str, Any]) -> Any:
        import keras

        model = keras.Sequential(
            [
                keras.Input((params["max_len"],), dtype="int32", name="inputs"),
                keras.layers.Embedding(len(params["vocabulary"]) + 2, 32, mask_zero=True),
                keras.layers.LSTM(100),
                keras.layers.Dense(len(LABELS), activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(5e-3), loss="sparse_categorical_crossentropy"
        )
        return model

    def postprocess(self, outputs: dict[str, np.ndarray],
                    ctx: PostprocessContext) -> dict[str, np.ndarray]:
        probs = outputs["scores"].astype(np.float32)
        labels = np.array(ctx.fit_params["labels"], dtype=object)[probs.argmax(axis=1)]
        return {"probabilities": probs, "label": labels}

    def evaluate(self, holdout: Dataset, outputs: dict[str, np.ndarray],
                 params: dict[str, Any]) -> Evaluation:
        scores = outputs["scores"]
        y = holdout.target
        majority = np.bincount(y, minlength=len(LABELS)).max() / len(y)
        return Evaluation(
            metric="accuracy",
            value=float((scores.argmax(axis=1) == y).mean()),
            baseline=float(majority),
            baseline_name="majority class",
        )
