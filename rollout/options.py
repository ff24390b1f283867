"""The options of ``finserve rollout``, declared once: :class:`RolloutOptions`. Each typer
command takes its parameters from these fields (:func:`takes_options`) and hands its code one
RolloutOptions object."""

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Annotated, Any, get_type_hints

import typer

from rollout.kuberay import (
    DASHBOARD_TIMEOUT_S,
    KUBERAY_REQUEUE_S,
    MIN_SETTLE_S,
    PROXY_CHECK_TIMEOUT_S,
)
from rollout.pods import UNSCHEDULABLE_GRACE_S

Repeatable = list[str] | None


@dataclass(frozen=True)
class RolloutOptions:
    """What ``finserve rollout`` (and its ``status`` and ``undo``) is asked to do: one field an
    option, each with its typer declaration and default."""

    release: Annotated[str, typer.Option("--release", "-r", help="Helm release name.")] = (
        "finserve")
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Namespace (default: kubeconfig's).")] = None
    kube_context: Annotated[str | None, typer.Option(
        "--kube-context", help="kubeconfig context.")] = None
    chart: Annotated[str, typer.Option("--chart", help="Chart path or reference.")] = (
        "charts/finserve")
    values: Annotated[Repeatable, typer.Option(
        "--values", "-f", help="Values file (repeatable).")] = None
    set_values: Annotated[Repeatable, typer.Option(
        "--set", help="helm --set KEY=VALUE (repeatable).")] = None
    model_version: Annotated[Repeatable, typer.Option(
        "--model-version", help="MODEL=VERSION[,VERSION...]: serve these versions, the first "
        "by default; ends the model's traffic split unless --traffic sets one (the gateway's "
        "routing: applied in place, no restart). Repeatable.")] = None
    image_tag: Annotated[str | None, typer.Option(
        "--image-tag", help="New image tag (KubeRay brings up a new cluster, then switches)."
    )] = None
    rayservice: Annotated[str | None, typer.Option(
        "--rayservice", help="RayService name (default: read from the release manifest).")] = None
    timeout: Annotated[float, typer.Option(
        "--timeout", min=1, help="Seconds to wait for the rollout before rolling back.")] = 1200.0
    poll: Annotated[float, typer.Option(
        "--poll", min=0.1, help="Seconds between checks.")] = 5.0
    settle: Annotated[float, typer.Option(
        "--settle", min=MIN_SETTLE_S,
        help=f"Seconds the rolled-out state must hold before it counts; at least "
             f"{MIN_SETTLE_S:g}: KubeRay writes the new generation with the application "
             "statuses it read before submitting the new Serve config, and only its next "
             f"reconcile ({KUBERAY_REQUEUE_S:g} s later, then up to {PROXY_CHECK_TIMEOUT_S:g} s "
             f"of proxy check and {DASHBOARD_TIMEOUT_S:g} s of status read) reports what Serve "
             "did with it.")] = 10.0
    unschedulable_grace: Annotated[float, typer.Option(
        "--unschedulable-grace", min=0,
        help="Seconds the new cluster's head pod may stay unschedulable (a node autoscaler may "
             "be adding a node) before the rollout fails.")] = UNSCHEDULABLE_GRACE_S
    helm: Annotated[str | None, typer.Option(
        "--helm", help="helm binary (default: PATH).")] = None
    traffic: Annotated[Repeatable, typer.Option(
        "--traffic", help="MODEL=VERSION:WEIGHT,...: split unpinned requests (a canary, e.g. "
        "fraud=1:90,2:10; weights add up to 100); MODEL= ends the split. Applied in place. "
        "Repeatable.")] = None
    shadow: Annotated[Repeatable, typer.Option(
        "--shadow", help="MODEL=VERSION: copy live traffic to VERSION and record its answers "
        "(never returned); MODEL= stops it. Applied in place. Repeatable.")] = None

    @property
    def changes_routing(self) -> bool:
        """Whether --model-version, --traffic or --shadow was given."""
        return bool(self.model_version or self.traffic or self.shadow)


def _parameters(names: tuple[str, ...]) -> list[inspect.Parameter]:
    """The typer parameters of the named fields (all without names), in declaration order."""
    known = {f.name: f for f in fields(RolloutOptions)}
    if unknown := set(names) - set(known):
        raise ValueError(f"RolloutOptions has no field {sorted(unknown)}")
    hints = get_type_hints(RolloutOptions, include_extras=True)
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                              annotation=hints[name])
            for name, field in known.items() if not names or name in names]


def takes_options(*names: str, context: bool = False
                  ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Make ``handler(options)`` (``handler(ctx, options)`` with ``context``) a typer command
    whose parameters are the named :class:`RolloutOptions` fields (all without names); the
    command builds one RolloutOptions of what it was given and calls the handler with it."""
    params = _parameters(names)
    if context:
        params.insert(0, inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                           annotation=typer.Context))

    def wrap(handler: Callable[..., None]) -> Callable[..., None]:
        def command(**given: Any) -> None:
            ctx = given.pop("ctx", None)
            options = RolloutOptions(**given)
            return handler(ctx, options) if context else handler(options)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__qualname__ = handler.__name__, handler.__qualname__
        command.__doc__, command.__module__ = handler.__doc__, handler.__module__
        return command

    return wrap
