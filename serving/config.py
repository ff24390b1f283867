"""The typed argument of ``build_app``: one schema for the Serve config, the Helm values
and Python callers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving.drift import DEFAULT_MIN_ROWS
from serving.tasks import TASKS

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
RESERVED_NAMES = {"models", "health", "docs", "openapi"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Autoscaling(_Strict):
    """Ray Serve autoscaling on ongoing requests per replica."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept under no load.")
    max_replicas: int = Field(4, ge=1, description="Replicas at most.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Ongoing requests per replica.")
    upscale_delay_s: float = Field(3.0, ge=0, description="Sustained load before adding one.")
    downscale_delay_s: float = Field(60.0, ge=0, description="Quiet time before removing one.")
    look_back_period_s: float = Field(10.0, gt=0, description="Window of the load average.")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.min_replicas must not exceed max_replicas")
        return self


class Stage(_Strict):
    """Replicas and resources of one stage deployment."""

    num_replicas: int = Field(1, ge=1, description="Fixed replica count (without autoscaling).")
    autoscaling: Autoscaling | None = Field(None, description="Scale on load instead.")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests a replica takes at once.")
    num_cpus: float = Field(0.1, ge=0, description="Logical CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; fractions share a GPU.")
    memory_mb: int | None = Field(None, ge=1, description="Memory reserved per replica.")
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests queued for this stage before 503s (-1: no limit)."
    )

    def deployment_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        if self.memory_mb:
            actor["memory"] = self.memory_mb * 1024 * 1024
        options: dict[str, Any] = {
            "name": name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": actor,
        }
        if self.autoscaling:
            options["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            options["num_replicas"] = self.num_replicas
        return options


class ModelStageSettings(Stage):
    """The Model stage: a Stage plus batching and TensorFlow threads."""

    num_cpus: float = 0.5
    max_batch_size: int = Field(32, ge=1, description="Requests per @serve.batch call.")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="Wait to fill a batch. 0: take what is queued; under load "
        "requests queue while a batch runs, so batches still fill (docs/benchmarks.md).")
    intra_op_threads: int | None = Field(1, ge=1, description="TF intra-op threads per replica.")
    inter_op_threads: int | None = Field(1, ge=1, description="TF inter-op threads per replica.")
    jit_compile: bool | None = Field(
        None, description="Answer with the signature compiled by XLA per batch-size bucket, "
        "compiled in the background on first use (serving/jit.py). None: the task's default.")


class Drift(_Strict):
    """Drift monitoring in the gateway replicas: the population stability index (PSI) of
    each input column and score against the version's training data (serving/drift.py),
    as the gauge finserve_psi{model,version,feature} (docs/monitoring.md)."""

    enabled: bool = Field(True, description="Publish PSI gauges for this model (its versions "
                          "trained with a drift reference; others are served unmonitored).")
    window_rows: int = Field(2000, ge=100, le=1_000_000, description="PSI over the last this "
                             "many rows the replica answered, per version.")
    min_rows: int = Field(DEFAULT_MIN_ROWS, ge=50, description="No PSI until the window holds "
                          "this many rows: by chance alone PSI is about (bins - 1) / rows.")
    publish_interval_s: float = Field(5.0, gt=0, description="Update the gauges at most this "
                                      "often (when a request of the model is answered).")
    idle_s: float = Field(900.0, gt=0, description="A version that answered nothing for this "
                          "long (retired from routing) gets NaN gauges, which fire no alert, "
                          "and its window is dropped.")

    @model_validator(mode="after")
    def _enough_rows(self) -> Drift:
        if self.min_rows > self.window_rows:
            raise ValueError("drift.min_rows must not exceed drift.window_rows")
        return self


class ModelSettings(_Strict):
    """One served model: its task, versions and stage settings."""

    name: str = Field(description="Name in URLs and in the model store.")
    task: str | None = Field(None, description="Task module (serving.tasks); defaults to name.")
    placement: Literal["gateway", "model-replicas", "stage-replicas"] = Field(
        "gateway", description="Where the pipeline runs. gateway: Preprocess, Model and "
        "Postprocess in the gateway replica, batched there, no hop (the measured choice for "
        "small CPU models, docs/benchmarks.md). model-replicas: the Model stage is its own "
        "deployment (GPUs, scaling apart), the steps run in the gateway. stage-replicas: "
        "all three are deployments of their own (heavy steps).",
    )
    preprocess: Stage = Field(default_factory=Stage,
                              description="Preprocess deployment (stage-replicas only).")
    model: ModelStageSettings = Field(default_factory=ModelStageSettings,
                                      description="Model deployment; with placement gateway "
                                      "only its batching and thread settings apply.")
    postprocess: Stage = Field(default_factory=Stage,
                               description="Postprocess deployment (stage-replicas only).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Postprocessing options (decision thresholds)."
    )
    drift: Drift = Field(default_factory=Drift, description="Drift monitoring (PSI gauges).")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value) or value in RESERVED_NAMES:
            raise ValueError(
                f"model name '{value}' must be lower-case letters, digits and '-', "
                f"start with a letter, and not be one of {sorted(RESERVED_NAMES)}"
            )
        return value

    @property
    def task_name(self) -> str:
        return self.task or self.name

    @model_validator(mode="after")
    def _known_task(self) -> ModelSettings:
        if self.task_name not in TASKS:
            raise ValueError(
                f"model '{self.name}': unknown task '{self.task_name}'; known: {sorted(TASKS)}"
            )
        return self

    @model_validator(mode="after")
    def _gpu_needs_a_model_deployment(self) -> ModelSettings:
        if self.placement == "gateway" and self.model.num_gpus:
            raise ValueError(f"model '{self.name}': a GPU model needs its own deployment; "
                             "set placement: model-replicas")
        return self


class ModelRouting(_Strict):
    """Which versions of one model answer: the gateway's ``user_config``, so a change is
    applied to running replicas in place."""

    versions: list[str] = Field(
        default_factory=lambda: ["latest"],
        description="Versions served; the first answers requests that name none.",
    )
    traffic: dict[str, int] | None = Field(
        None, description="Weighted split of unpinned requests, e.g. {'2': 90, '3': 10}; "
        "sticky per x-routing-key header.",
    )
    shadow: str | None = Field(
        None, description="A version that gets a copy of live traffic; its answers are "
        "recorded for `finserve compare`, never returned.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ModelRouting:
        if not self.versions or len(set(self.versions)) != len(self.versions):
            raise ValueError("versions must be a non-empty list without repeats")
        if self.traffic is not None and (
            sum(self.traffic.values()) != 100 or min(self.traffic.values()) < 0
        ):
            raise ValueError("traffic weights must be >= 0 and add up to 100")
        return self

    @property
    def all_versions(self) -> list[str]:
        """Every version to serve: listed, weighted and shadow."""
        extra = [*(self.traffic or {}), *([self.shadow] if self.shadow else [])]
        return list(dict.fromkeys([*self.versions, *extra]))


class Routing(_Strict):
    """The gateway deployment's ``user_config``: routing per model (absent: latest)."""

    models: dict[str, ModelRouting] = Field(default_factory=dict)

    def of(self, model: str) -> ModelRouting:
        return self.models.get(model) or ModelRouting()


class Limits(_Strict):
    """Request limits enforced by the gateway."""

    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (413).")
    max_instances: int = Field(1024, ge=1, description="Most examples in one request (413).")
    request_timeout_s: float = Field(30.0, gt=0, description="Pipeline deadline (504).")


class Security(_Strict):
    """API keys and rate limits; FINSERVE_REQUIRE_AUTH and FINSERVE_API_KEYS_FILE override."""

    require_auth: bool = Field(False, description="Refuse calls without a valid API key.")
    api_keys_file: str | None = Field(None, description="YAML/JSON file of hashed keys.")
    rate_per_s: float | None = Field(None, gt=0, description="Default per-key rate.")


class Audit(_Strict):
    """The decision trail (serving/audit): where records and checkpoints go, and the keys."""

    enabled: bool = Field(True, description="Write a decision record per answer.")
    location: str = Field(
        "audit", description="A folder, a postgresql:// URL, an fsspec URI (s3://...), or "
        "'stdout' (not durable: a log collector decides what survives).")
    checkpoint_location: str | None = Field(
        None, description="Where the signed checkpoints of each chain's head go, apart from "
        "the trail: a folder, URI or postgresql:// URL. Default: the trail's folder or URI "
        "with '-checkpoints' added; the same database's checkpoint table.")
    checkpoint_interval_s: float = Field(
        1.0, gt=0, le=3600, description="Sign each chain's head at most this often while "
        "it moves: records newer than the last checkpoint are anchored by their mac only.")
    rotate_mb: int = Field(64, ge=1, description="Rotate local segment files at this size.")
    compress: bool = Field(True, description="gzip local segments once they are closed.")
    keys_dir: str | None = Field(
        "keys", description="Folder of the local key files (token.key, trail.key and the "
        "public trail.pub), apart from the trail; created owner-only. Empty: the keys must "
        "come from the environment (a cluster's Secrets).")
    token_key_env: str = Field(
        "FINSERVE_TOKEN_KEY", description="Env var holding the key that tokenizes personal "
        "fields (at least 32 characters).")
    trail_key_env: str = Field(
        "FINSERVE_TRAIL_KEY", description="Env var holding the trail key: it authenticates "
        "records (HMAC) and signs checkpoints (Ed25519); at least 32 characters.")


class AppArgs(_Strict):
    """Everything ``build_app`` needs; the Serve config's ``args`` and the chart's values."""

    store_uri: str = Field("model_store", description="Model store root: path or fsspec URI.")
    models: list[ModelSettings] = Field(min_length=1)
    gateway: Stage = Field(default_factory=lambda: Stage(num_cpus=0.2, max_ongoing_requests=64))
    limits: Limits = Field(default_factory=Limits)
    security: Security = Field(default_factory=Security)
    audit: Audit = Field(default_factory=Audit)

    @model_validator(mode="after")
    def _unique(self) -> AppArgs:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self

    def model(self, name: str) -> ModelSettings:
        return next(m for m in self.models if m.name == name)


GATEWAY = "gateway"
DEFAULT_MODELS_FILE = Path(__file__).with_name("default_models.yaml")


def default_models() -> list[ModelSettings]:
    """The models FinServe serves by default (serving/default_models.yaml), in order, each
    with its task's postprocessing options filled in."""
    from serving.tasks import get_task

    models = [ModelSettings.model_validate(m)
              for m in yaml.safe_load(DEFAULT_MODELS_FILE.read_text())]
    for m in models:
        m.options = get_task(m.task_name).options(m.options)
    return models


def default_model_names() -> tuple[str, ...]:
    """The names of the default models, in order."""
    return tuple(m.name for m in default_models())


def load_serve_config(path: str | Path) -> tuple[dict[str, Any], AppArgs]:
    """Read a Serve config file; return it and the first application's parsed args
    (its gateway routing is checked too)."""
    config = yaml.safe_load(Path(path).read_text())
    apps = config.get("applications") or []
    if not apps:
        raise ValueError(f"{path}: no applications")
    args = AppArgs.model_validate(apps[0].get("args") or {})
    routing = routing_of(apps[0])
    unknown = set(routing.models) - {m.name for m in args.models}
    if unknown:
        raise ValueError(f"{path}: routing names models that are not served: {sorted(unknown)}")
    return config, args


def routing_of(app: dict[str, Any]) -> Routing:
    """The gateway's routing in an application config (its deployments' user_config)."""
    for deployment in app.get("deployments") or []:
        if deployment.get("name") == GATEWAY:
            return Routing.model_validate(deployment.get("user_config") or {})
    return Routing()
