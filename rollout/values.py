"""The values ``--model-version``, ``--traffic`` and ``--shadow`` write: the release's models
list with one model's routing changed (the gateway's ``user_config``, applied in place)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import typer


def _model_spec(spec: str, usage: str, by_name: Mapping[Any, Any]) -> tuple[str, str]:
    name, sep, rest = spec.partition("=")
    if not sep:
        raise typer.BadParameter(f"{spec!r}: use {usage}")
    if name not in by_name:
        raise typer.BadParameter(f"no model {name!r} in the release; models: "
                                 f"{', '.join(sorted(map(str, by_name))) or 'none'}")
    return name, rest.strip()


def _weights(spec: str, text: str) -> dict[str, int]:
    weights: dict[str, int] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        version, _, weight = (part.strip() for part in item.partition(":"))
        if not version or not weight.isdigit():
            raise typer.BadParameter(f"{spec!r}: use MODEL=VERSION:WEIGHT,..., e.g. "
                                     "fraud=1:90,2:10 (weights are whole numbers >= 0)")
        weights[version] = int(weight)
    if weights:
        _check_split(spec, weights)
    return weights


def _check_split(spec: str, weights: dict[str, int]) -> None:
    """The core's traffic rule (:class:`serving.config.ModelRouting`, which the gateway
    applies) on a parsed split, as a ``BadParameter``."""
    from pydantic import ValidationError

    from serving.config import ModelRouting  # imported only when a split is given

    try:
        ModelRouting(traffic=weights)
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise typer.BadParameter(f"{spec!r}: {reason} (these add up to "
                                 f"{sum(weights.values())})") from None


def model_version_values(values: Mapping[str, Any], specs: Iterable[str],
                         traffic: Iterable[str] = (), shadow: Iterable[str] = ()
                         ) -> dict[str, Any]:
    """Values that change the routing of the named models: ``versions`` (``fraud=2`` or
    ``fraud=2,1``), ``traffic`` (``fraud=1:90,2:10``; ``fraud=`` ends the split) and
    ``shadow`` (``fraud=3``; ``fraud=`` stops it). New versions without a new split end the
    model's split, so the first version answers every unpinned request.

    The chart renders these into the gateway's ``user_config``, which Ray Serve applies in
    place. The whole models list is returned: helm replaces a list, never merges it."""
    models = copy.deepcopy(((values.get("serve") or {}).get("app") or {}).get("models") or [])
    by_name = {m.get("name"): m for m in models}
    for spec in specs:
        name, versions = _model_spec(spec, "MODEL=VERSION[,VERSION...], e.g. fraud=2", by_name)
        wanted = [v.strip() for v in versions.split(",") if v.strip()]
        if not wanted:
            raise typer.BadParameter(f"{spec!r}: use MODEL=VERSION[,VERSION...], e.g. fraud=2")
        by_name[name]["versions"] = wanted
        by_name[name].pop("traffic", None)
    for spec in traffic:
        name, weights = _model_spec(spec, "MODEL=VERSION:WEIGHT,..., e.g. fraud=1:90,2:10",
                                    by_name)
        by_name[name].pop("traffic", None)
        if split := _weights(spec, weights):
            by_name[name]["traffic"] = split
    for spec in shadow:
        name, version = _model_spec(spec, "MODEL=VERSION (MODEL= to stop), e.g. fraud=3",
                                    by_name)
        by_name[name].pop("shadow", None)
        if version:
            by_name[name]["shadow"] = version
    return {"serve": {"app": {"models": models}}}
