"""Application builder: ``build_app(args)`` binds every model's stages and the gateway.

Used by ``finserve serve`` locally and by the Serve config (``import_path:
deployments.app:build_app``) that KubeRay's ``serveConfigV2`` carries.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.gateway import Gateway
from deployments.stages import Model, Postprocess, Preprocess
from serving.config import GATEWAY, AppArgs, Routing
from serving.settings import Environment
from serving.store import ModelStore


def served_args(args: dict[str, Any] | AppArgs) -> AppArgs:
    """The validated args as served: the environment applied (``serving.settings``)."""
    args = AppArgs.model_validate(args) if isinstance(args, dict) else args
    return Environment.read().apply(args)


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    """Bind the Serve application. A model missing from the store fails the deploy with a
    message now instead of failing requests later."""
    args = served_args(args)
    store = ModelStore(args.store_uri)
    handles: dict[str, dict[str, Any]] = {}
    for m in args.models:
        if not store.versions(m.name):
            raise ValueError(
                f"model '{m.name}' has no version in {args.store_uri}. "
                f"Train it first: finserve train {m.task_name} --store {args.store_uri}"
            )
        init = {"store_uri": args.store_uri, "model": m.name, "task": m.task_name}
        handles[m.name] = {}
        if m.placement != "gateway":  # otherwise the gateway replica runs the Model stage
            handles[m.name]["model"] = Model.options(
                **m.model.deployment_options(f"{m.name}-model")
            ).bind(**init, settings=m.model)
        if m.placement == "stage-replicas":  # otherwise the gateway runs the steps
            handles[m.name]["preprocess"] = Preprocess.options(
                **m.preprocess.deployment_options(f"{m.name}-preprocess")
            ).bind(**init)
            handles[m.name]["postprocess"] = Postprocess.options(
                **m.postprocess.deployment_options(f"{m.name}-postprocess")
            ).bind(**init, options=m.options)
    # routing (versions, canary, shadow) is the gateway's user_config: the Serve config's
    # `deployments: [{name: gateway, user_config: ...}]` overrides this default in place
    gateway = Gateway.options(
        **args.gateway.deployment_options(GATEWAY), user_config=Routing().model_dump()
    )
    return gateway.bind(args.model_dump(), handles)
