"""The contract every use case implements, from raw data to a served decision.

A task turns *raw inputs* (the array a client sends on the V2 route: numbers in a
documented column order, or strings) into model tensors (``preprocess``), builds the
Keras model that training fits and exports, and turns scores into decisions
(``postprocess``). Training and serving call the same ``preprocess``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

from serving.errors import InvalidInput
from serving.protocol.codec import OutputRole, TensorSpec
from serving.tasks._domain import record_domain


@dataclass
class Dataset:
    """Raw inputs (as served) and training targets, row-aligned."""

    raw: np.ndarray
    target: np.ndarray
    source: str = "builtin"

    def __len__(self) -> int:
        return len(self.target)

    def take(self, index: np.ndarray) -> Dataset:
        return Dataset(self.raw[index], self.target[index], self.source)


@dataclass
class PostprocessContext:
    """What postprocessing knows besides the model outputs."""

    #: the version's preprocessing parameters (``fit_preprocessing``, stored with it)
    fit_params: dict[str, Any]
    #: the model's postprocessing options (``default_options`` and the Serve config's)
    options: dict[str, Any] = field(default_factory=dict)
    #: this request's validated parameters (``Parameters``)
    request_params: dict[str, Any] = field(default_factory=dict)
    #: per-example values Preprocess handed past the model (``Task.context``)
    preprocess_context: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Evaluation:
    """A held-out metric next to the same metric for a trivial baseline."""

    metric: str
    value: float
    baseline: float
    baseline_name: str
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": round(self.value, 6),
            "baseline": round(self.baseline, 6),
            "baseline_name": self.baseline_name,
            **{k: round(v, 6) for k, v in self.extra.items()},
        }


class Task(abc.ABC):
    """One finance use case. Subclasses set the class attributes and the methods below."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: the task route is ``POST /v1/{model}/{route}``
    route: ClassVar[str]
    #: the named-field record the task route takes, one per example
    Record: ClassVar[type[BaseModel]]
    #: the raw input tensor (V2 input, V1 instance)
    input_spec: ClassVar[TensorSpec]
    #: the outputs ``postprocess`` returns, one entry per example each
    output_specs: ClassVar[tuple[TensorSpec, ...]]
    #: default training settings
    default_epochs: ClassVar[int] = 5
    batch_size: ClassVar[int] = 64
    #: a small, fast training run for the test tiers: (samples, epochs); None samples: all
    quick_training: ClassVar[tuple[int | None, int]] = (4000, 3)
    #: postprocessing options and their defaults (overridable per model in the Serve config)
    default_options: ClassVar[dict[str, Any]] = {}
    #: per-request parameters (V2 ``parameters``, V1 ``parameters``, task route
    #: ``parameters``), validated at the gateway; None when the task takes none
    Parameters: ClassVar[type[BaseModel] | None] = None
    #: the ``Record`` fields the raw input holds, in its column order (one list field: the
    #: same bounds for every element); their declared ranges, whole numbers, booleans (0/1)
    #: and categories (index) are checked on every protocol's raw batch (``check_raw``)
    raw_fields: ClassVar[tuple[str, ...]] = ()
    #: ``records_to_raw`` does real work (decodes images): the gateway runs it off its event
    #: loop and within the request timeout
    slow_records: ClassVar[bool] = False
    #: record fields that identify a person; tokenized in the decision trail: the whole raw
    #: input when its tensor is named here, else the named columns (``raw_fields``)
    personal_fields: ClassVar[tuple[str, ...]] = ()
    #: outputs that follow from other outputs (reason statements from reason codes); the
    #: decision trail records only their source
    derived_outputs: ClassVar[tuple[str, ...]] = ()
    #: keys of the preprocessing parameters that serving builds from the stored ones and
    #: keeps on them (lookup indexes, ``cached``); never stored with a version
    runtime_caches: ClassVar[tuple[str, ...]] = ()
    #: serve the signature compiled by XLA per batch-size bucket (serving/jit.py); off for
    #: every task so far (benchmarks/levers.md, row 42); a Serve config's
    #: ``model.jit_compile`` turns it on per model
    jit_compile: ClassVar[bool] = False

    # --- data -------------------------------------------------------------------------
    #: how many examples the built-in data has by default
    samples: ClassVar[int] = 0

    @staticmethod
    def generate(n: int, seed: int) -> Dataset:
        """The task's seeded generator of ``n`` examples (a task with real data a package
        ships overrides ``sample_data`` instead)."""
        raise NotImplementedError

    def sample_data(self, seed: int = 0, n: int | None = None) -> Dataset:
        """The built-in training data: ``generate`` ``n`` (default ``samples``) examples."""
        return self.generate(n or self.samples, seed)

    @abc.abstractmethod
    def dataset_from_columns(self, columns: dict[str, list[Any]]) -> Dataset:
        """Build a dataset from named columns (the user's CSV or Parquet file)."""

    def load_data(self, path: str | Path) -> Dataset:
        """Read the user's CSV or Parquet file; columns are documented in docs/models.md."""
        from serving.data import read_table

        dataset = self.dataset_from_columns(read_table(path))
        dataset.source = str(path)
        return dataset

    def split(self, data: Dataset, seed: int = 0, holdout: float = 0.2) -> tuple[Dataset, Dataset]:
        """Shuffled train / held-out split; tasks with time order override this."""
        order = np.random.default_rng(seed).permutation(len(data))
        cut = int(len(data) * (1 - holdout))
        return data.take(order[:cut]), data.take(order[cut:])

    # --- preprocessing ----------------------------------------------------------------
    @abc.abstractmethod
    def fit_preprocessing(self, train: Dataset) -> dict[str, Any]:
        """Learn preprocessing parameters (JSON-serialisable) from training data only."""

    @abc.abstractmethod
    def preprocess(self, raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """Raw inputs (checked against ``input_spec``) to the model's input tensor."""

    @abc.abstractmethod
    def records_to_raw(self, records: list[BaseModel]) -> np.ndarray:
        """Named-field records (task route) to the raw input array."""

    def records_to_raw_within(self, records: list[BaseModel], deadline: float) -> np.ndarray:
        """``records_to_raw``; a task with ``slow_records`` stops with ``RequestTimeout``
        once ``time.monotonic()`` passes ``deadline``."""
        return self.records_to_raw(records)

    def context(self, raw: np.ndarray, params: dict[str, Any]) -> dict[str, np.ndarray]:
        """Per-example values the Preprocess stage hands to ``postprocess`` past the model
        (a forecast's last price, whether a customer is known); none by default."""
        return {}

    def targets(self, data: Dataset, params: dict[str, Any]) -> np.ndarray:
        """Training targets for the model's loss."""
        return data.target

    # --- model ------------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self, params: dict[str, Any]) -> Any:
        """A compiled Keras model taking ``preprocess`` output and returning scores."""

    def serving_outputs(self, model: Any, params: dict[str, Any]) -> Any:
        """The exported signature's body: model inputs → a dict of named output tensors.

        ``scores`` by default; a task adds outputs computed on the served model itself
        (attributions for reason codes, for example).
        """

        def outputs(inputs: Any) -> dict[str, Any]:
            return {"scores": model(inputs, training=False)}

        return outputs

    def model_input_spec(self, params: dict[str, Any]) -> Any:
        """The ``tf.TensorSpec`` of the exported signature's input (named ``inputs``)."""
        import tensorflow as tf

        width = params.get("input_width")
        dtype = tf.int32 if params.get("input_dtype") == "int32" else tf.float32
        shape = [None] if width is None else [None, int(width)]
        return tf.TensorSpec(shape, dtype, name="inputs")

    # --- postprocessing and evaluation -------------------------------------------------
    @abc.abstractmethod
    def postprocess(self, outputs: dict[str, np.ndarray],
                    ctx: PostprocessContext) -> dict[str, np.ndarray]:
        """Model outputs (``scores`` and any others) to named answers, one entry per example."""

    @abc.abstractmethod
    def evaluate(self, holdout: Dataset, outputs: dict[str, np.ndarray],
                 params: dict[str, Any]) -> Evaluation:
        """Held-out metric of the exported model against a trivial baseline."""

    def summarize(self, answers: dict[str, np.ndarray],
                  ctx: PostprocessContext) -> dict[str, Any] | None:
        """An answer about the whole request on the task route (a cheque's amount); none
        by default."""
        return None

    # --- helpers shared by tasks ------------------------------------------------------
    @classmethod
    def outputs_with(cls, role: OutputRole) -> tuple[str, ...]:
        """The names of the outputs that declare ``role``, in ``output_specs`` order."""
        return tuple(spec.name for spec in cls.output_specs if spec.role == role)

    def cached(self, params: dict[str, Any], key: str, build: Callable[[], Any]) -> Any:
        """``params[key]``, built once per parameters object; ``key`` must be one of the
        task's declared ``runtime_caches``."""
        if key not in self.runtime_caches:
            raise KeyError(f"task '{self.name}' declares no runtime cache '{key}'")
        value = params.get(key)
        if value is None:
            value = params[key] = build()
        return value

    def stored_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Preprocessing parameters as a version stores them: without ``runtime_caches``."""
        return {k: v for k, v in params.items() if k not in self.runtime_caches}

    def request_params(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """Validate per-request parameters against ``Parameters``; defaults filled in. The
        gateway calls it once per request (the task route's body model validates them as
        it parses)."""
        if self.Parameters is None:
            if given:
                raise InvalidInput(f"model task '{self.name}' takes no parameters")
            return {}
        try:
            return self.Parameters.model_validate(given or {}).model_dump()
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"parameters.{where}: {first['msg']}") from None

    def options(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """Postprocessing options: defaults, then the Serve config's overrides."""
        unknown = set(overrides or {}) - set(self.default_options)
        if unknown:
            raise ValueError(
                f"unknown postprocess option(s) for task '{self.name}': {sorted(unknown)}; "
                f"known: {sorted(self.default_options)}"
            )
        return {**self.default_options, **(overrides or {})}

    def check_raw(self, raw: np.ndarray) -> np.ndarray:
        """Check a raw batch against ``input_spec`` (shape, datatype, finiteness) and the
        values its ``Record`` declares (``raw_fields``); the one check of every protocol."""
        array = self.input_spec.check(raw)
        if self.input_spec.datatype == "BYTES":
            return array
        if array.dtype.kind not in "iuf":
            raise InvalidInput(f"input '{self.input_spec.name}' must be numeric")
        if not np.isfinite(array).all():
            raise InvalidInput(f"input '{self.input_spec.name}' contains NaN or infinity")
        array = array.astype(np.float32, copy=False)
        if self.raw_fields:
            record_domain(self.Record, self.raw_fields).check(array)
        return array
