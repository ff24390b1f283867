"""Application builder: ``build_app(args)`` binds every model's three stages and the gateway.

Used by ``finserve serve`` locally and by the Serve config (``import_path:
deployments.app:build_app``) that KubeRay's ``serveConfigV2`` carries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from deployments.config import AppArgs
from deployments.gateway import Gateway
from deployments.stages import Model, Postprocess, Preprocess
from serving.store import ModelStore


def resolve_store_uri(uri: str) -> str:
    """Absolute path or URI: relative paths are taken from ``FINSERVE_HOME`` or the cwd."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str(Path(os.environ.get("FINSERVE_HOME", os.getcwd()), uri).resolve())


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """Bind the Serve application; versions are resolved in the store now, so a missing
    model or version fails the deploy with a message instead of failing requests later."""
    args = AppArgs.model_validate(args) if isinstance(args, dict) else args
    args = args.model_copy(deep=True, update={"store_uri": resolve_store_uri(args.store_uri)})
    if args.audit.location != "stdout":
        args.audit.location = resolve_store_uri(args.audit.location)
    security = args.security
    security.require_auth = _env_flag("FINSERVE_REQUIRE_AUTH", security.require_auth)
    security.api_keys_file = os.environ.get("FINSERVE_API_KEYS_FILE", security.api_keys_file)
    store = ModelStore(args.store_uri)
    routing: dict[str, dict[str, Any]] = {"versions": {}, "traffic": {}, "shadow": {}}
    handles: dict[str, dict[str, Any]] = {}
    for m in args.models:
        try:
            resolve = {v: store.resolve(m.name, v) for v in m.all_versions}
        except Exception as exc:
            raise ValueError(
                f"model '{m.name}' cannot be served from {args.store_uri}: {exc}. "
                f"Train it first: finserve train {m.task_name} --store {args.store_uri}"
            ) from exc
        routing["versions"][m.name] = list(dict.fromkeys(resolve[v] for v in m.versions))
        if m.traffic:
            routing["traffic"][m.name] = {resolve[v]: w for v, w in m.traffic.items()}
        if m.shadow:
            routing["shadow"][m.name] = resolve[m.shadow]
        served = list(dict.fromkeys(resolve.values()))
        init = {"store_uri": args.store_uri, "model": m.name, "task": m.task_name}
        steps_config = {"versions": served, "options": m.options}
        model_config = {"versions": served, **m.model.model_dump(
            include={"max_batch_size", "batch_wait_timeout_s"})}
        threads = m.model.model_dump(include={"intra_op_threads", "inter_op_threads"})
        handles[m.name] = {
            "preprocess": Preprocess.options(
                **m.preprocess.deployment_options(f"{m.name}-preprocess"),
                user_config=steps_config,
            ).bind(**init),
            "model": Model.options(
                **m.model.deployment_options(f"{m.name}-model"), user_config=model_config
            ).bind(**init, threads=threads),
            "postprocess": Postprocess.options(
                **m.postprocess.deployment_options(f"{m.name}-postprocess"),
                user_config=steps_config,
            ).bind(**init),
        }
    gateway = Gateway.options(
        **args.gateway.deployment_options("gateway"), user_config=routing
    )
    static = args.model_dump()
    for model in static["models"]:  # versions live in user_config: changed in place
        for key in ("versions", "traffic", "shadow"):
            model.pop(key)
    return gateway.bind(static, handles)
