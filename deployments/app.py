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
    """Absolute store root: relative paths are taken from ``FINSERVE_HOME`` or the cwd."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str(Path(os.environ.get("FINSERVE_HOME", os.getcwd()), uri).resolve())


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """Bind the Serve application; versions are resolved in the store now, so a missing
    model or version fails the deploy with a message instead of failing requests later."""
    args = AppArgs.model_validate(args) if isinstance(args, dict) else args
    args = args.model_copy(update={"store_uri": resolve_store_uri(args.store_uri)})
    store = ModelStore(args.store_uri)
    versions: dict[str, list[str]] = {}
    handles: dict[str, dict[str, Any]] = {}
    for m in args.models:
        try:
            resolved = [store.resolve(m.name, v) for v in m.versions]
        except Exception as exc:
            raise ValueError(
                f"model '{m.name}' cannot be served from {args.store_uri}: {exc}. "
                f"Train it first: finserve train {m.task_name} --store {args.store_uri}"
            ) from exc
        versions[m.name] = list(dict.fromkeys(resolved))
        init = {"store_uri": args.store_uri, "model": m.name, "task": m.task_name}
        steps_config = {"versions": versions[m.name], "options": m.options}
        model_config = {"versions": versions[m.name], **m.model.model_dump(
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
        **args.gateway.deployment_options("gateway"), user_config={"versions": versions}
    )
    static = args.model_dump()
    for model in static["models"]:  # versions live in user_config: changed in place
        model.pop("versions")
    return gateway.bind(static, handles)
