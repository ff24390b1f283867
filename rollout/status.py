"""``finserve rollout status``: a RayService's state and the verdict on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rollout.kuberay import app_statuses, apps_summary, conditions
from rollout.states import (
    EXIT_NOT_APPLIED,
    EXIT_UNOBSERVABLE,
    Done,
    NotApplied,
    Progress,
    Unobservable,
    color,
)
from rollout.wait import Baseline, Waiter

VERDICTS = {Done: "rolled out", Progress: "rolling out", NotApplied: "not applied",
            Unobservable: "cannot tell"}


def describe(rayservice: Mapping[str, Any]) -> Table:
    """A table of what matters in a RayService's status."""
    status = rayservice.get("status") or {}
    table = Table("field", "value", title=f"RayService {rayservice['metadata']['name']}",
                  show_header=False)
    table.add_row("generation / observed", f"{rayservice['metadata'].get('generation')} / "
                  f"{status.get('observedGeneration')}")
    for ctype, cond in conditions(status).items():
        text = f"{cond.get('status')} {cond.get('reason', '')} {cond.get('message', '')}"
        table.add_row(f"condition {ctype}", escape(text.strip()))
    for which in ("activeServiceStatus", "pendingServiceStatus"):
        svc = status.get(which) or {}
        text = f"{svc.get('rayClusterName') or '-'}: {apps_summary(app_statuses(svc))}"
        table.add_row(which.removesuffix("ServiceStatus"), escape(text))
    return table


def show_status(waiter: Waiter, console: Console) -> int:
    """Print the RayService's state and verdict; the exit code: 0 rolled out, 1 rolling out
    or failed, 3 not applied to the live cluster, 4 missing or API problem (KubeApiError
    raises)."""
    obj = waiter.watcher.get()
    if obj is None:
        console.print(f"[red]RayService {waiter.watcher.name} not found[/] (check --rayservice "
                      "and --namespace)")
        return EXIT_UNOBSERVABLE
    console.print(describe(obj))
    state = waiter.check(Baseline(seen=None))
    verdict = VERDICTS.get(type(state), "failed")
    console.print(f"[bold {color(state)}]{verdict}[/]: {escape(state.detail)}", soft_wrap=True)
    return {Done: 0, NotApplied: EXIT_NOT_APPLIED, Unobservable: EXIT_UNOBSERVABLE}.get(
        type(state), 1)
