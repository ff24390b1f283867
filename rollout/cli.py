"""The typer commands: ``finserve rollout`` (``start``), ``status`` and ``undo``. Their
parameters come from :class:`rollout.options.RolloutOptions`; each hands on one object."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from rollout.helm import Helm, HelmError
from rollout.kube import KubeAccessError, KubeApiError, KubeRayServiceWatcher, RayServiceWatcher
from rollout.options import RolloutOptions, takes_options
from rollout.release import Rollout
from rollout.states import EXIT_NOT_ROLLED_BACK, EXIT_UNOBSERVABLE
from rollout.status import show_status
from rollout.wait import SystemClock, Waiter

EXIT_CODES_HELP = (
    "Exit codes: 0 rolled out; 1 failed and rolled back; 2 failed and not rolled back; "
    "3 not applied to the live cluster (KubeRay leaves part of the cluster spec as it runs; "
    "the message says what to do); 4 Kubernetes API unreachable or access refused, outcome "
    "unknown.")
console = Console()
rollout_app = typer.Typer(
    help="Roll out a FinServe Helm release and wait until KubeRay has really switched; "
         "without a command, `start`. " + EXIT_CODES_HELP,
    no_args_is_help=False,
)


def make_helm(options: RolloutOptions) -> Helm:
    """helm for the options' binary, namespace and kubeconfig context."""
    return Helm(options.helm, options.namespace, options.kube_context)


def make_watcher(name: str, options: RolloutOptions) -> RayServiceWatcher:
    """The Kubernetes API reader of RayService ``name`` in the options' namespace."""
    return KubeRayServiceWatcher(name, options.namespace, options.kube_context)


@contextmanager
def _cli_errors() -> Iterator[None]:
    """helm errors end the command with their message (exit 2; 4 when the API server did
    not answer); Kubernetes access and API errors with theirs (exit 4)."""
    try:
        yield
    except HelmError as exc:
        console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_UNOBSERVABLE if exc.transient else EXIT_NOT_ROLLED_BACK) from None
    except (KubeAccessError, KubeApiError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_UNOBSERVABLE) from None


def _rollout(options: RolloutOptions) -> Rollout:
    return Rollout(helm=make_helm(options),
                   make_watcher=lambda name: make_watcher(name, options),
                   console=console, clock=SystemClock(), options=options)


def _start(options: RolloutOptions) -> None:
    with _cli_errors():
        code = _rollout(options).start()
    raise typer.Exit(code)


@rollout_app.callback(invoke_without_command=True)
@takes_options(context=True)
def rollout_main(ctx: typer.Context, options: RolloutOptions) -> None:
    """Without a command: `start` with these options."""
    if ctx.invoked_subcommand is None:
        _start(options)


start = rollout_app.command(
    "start", help="helm upgrade with new values, wait until rolled out; on failure or timeout "
    "roll back to the previous revision. " + EXIT_CODES_HELP)(takes_options()(_start))


@rollout_app.command("status")
@takes_options("release", "namespace", "kube_context", "rayservice", "helm")
def status(options: RolloutOptions) -> None:
    """Print the RayService's state and whether it is rolled out: exit 0 rolled out,
    1 rolling out or failed, 3 not applied to the live cluster, 4 API problem."""
    with _cli_errors():
        name = options.rayservice or make_helm(options).rayservice_name(options.release)
        watcher = make_watcher(name, options)
        code = show_status(Waiter(watcher, console, SystemClock()), console)
    raise typer.Exit(code)


@rollout_app.command("undo", help="helm rollback to the revision that ran before the running "
                     "one was first deployed (stepping over an automatic rollback and the "
                     "release it undid), and wait until it is rolled out. Exit codes: 0 rolled "
                     "back; 2 nothing to go back to, or it failed; 3 not applied to the live "
                     "cluster; 4 Kubernetes API unreachable.")
@takes_options("release", "namespace", "kube_context", "rayservice", "timeout", "poll", "settle",
               "helm")
def undo(options: RolloutOptions) -> None:
    with _cli_errors():
        code = _rollout(options).undo()
    raise typer.Exit(code)
