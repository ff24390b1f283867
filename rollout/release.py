"""One release's rollout: helm upgrade, wait until KubeRay has rolled it out, and roll back
to the previous revision when it does not; ``undo`` goes back on request."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from rollout.helm import Helm, HelmError
from rollout.history import current_revision, undo_target
from rollout.kube import RayServiceWatcher
from rollout.options import RolloutOptions
from rollout.states import (
    EXIT_NOT_APPLIED,
    EXIT_NOT_ROLLED_BACK,
    EXIT_ROLLED_BACK,
    EXIT_UNOBSERVABLE,
    Done,
    NotApplied,
    RolloutState,
    Unobservable,
)
from rollout.values import model_version_values
from rollout.wait import MAX_BACKOFF_S, Baseline, Clock, Waiter

HELM_RETRY_S = 120.0


@dataclass
class Rollout:
    """One release's rollout as ``options`` ask for it: upgrade, wait, and roll back when it
    does not complete."""

    helm: Helm
    make_watcher: Callable[[str], RayServiceWatcher]
    console: Console
    clock: Clock
    options: RolloutOptions = field(default_factory=RolloutOptions)

    @property
    def release(self) -> str:
        return self.options.release

    def _waiter(self, name: str) -> Waiter:
        return Waiter(self.make_watcher(name), self.console, self.clock, self.options.poll,
                      self.options.settle, self.options.unschedulable_grace)

    def _helm(self, what: str, call: Callable[[], Any], budget_s: float = HELM_RETRY_S) -> Any:
        """A helm call, retried with backoff while the API server does not answer."""
        deadline, delay, told = self.clock.now() + budget_s, 1.0, False
        while True:
            try:
                return call()
            except HelmError as exc:
                now = self.clock.now()
                if not exc.transient or now >= deadline:
                    raise
                if not told:
                    self.console.print(f"[yellow]{what}: Kubernetes API unreachable "
                                       f"({escape(str(exc).splitlines()[0])}); retrying[/]",
                                       soft_wrap=True)
                    told = True
                self.clock.sleep(min(delay, deadline - now))
                delay = min(delay * 2, MAX_BACKOFF_S)

    def _name(self) -> str:
        return self.options.rayservice or self._helm(
            "helm get manifest", lambda: self.helm.rayservice_name(self.release))

    def _model_values(self, tmp: str, files: list[str]) -> None:
        """Add a values file with the routing changes, based on the release's models."""
        base = self._helm("helm get values", lambda: self.helm.values(self.release))
        for file in files:  # a models list in a -f file is the newer base
            serve = (yaml.safe_load(Path(file).read_text()) or {}).get("serve") or {}
            if (serve.get("app") or {}).get("models"):
                base = {"serve": serve}
        path = Path(tmp, "model-versions.yaml")
        opts = self.options
        path.write_text(yaml.safe_dump(model_version_values(
            base, opts.model_version or [], opts.traffic or [], opts.shadow or [])))
        files.append(str(path))

    def _upgrade(self, files: list[str], sets: list[str], previous: int | None,
                 latest: int) -> int | None:
        """helm upgrade; an exit code when it failed (rolled back if helm recorded it)."""
        chart = self.options.chart
        self.console.print(f"[bold]helm upgrade {self.release}[/] {chart} "
                           f"(from revision {previous or 'none'})")
        try:
            self.helm.upgrade(self.release, chart, files, sets)
            return None
        except HelmError as exc:
            self.console.print(f"[red]helm upgrade failed:[/] {escape(str(exc))}", soft_wrap=True)
            history = self._helm("helm history", lambda: self.helm.history(self.release))
            if max((int(h["revision"]) for h in history), default=0) > latest:
                return self._roll_back(previous, "helm upgrade failed")
            return EXIT_NOT_ROLLED_BACK

    def start(self) -> int:
        """Upgrade and wait; roll back to the previous revision on failure. Exit code."""
        opts = self.options
        history = self._helm("helm history", lambda: self.helm.history(self.release))
        previous = current_revision(history)
        latest = max((int(h["revision"]) for h in history), default=0)
        files, sets = list(opts.values or []), list(opts.set_values or []) + (
            [f"image.tag={opts.image_tag}"] if opts.image_tag else [])
        if opts.changes_routing and previous is None:
            raise typer.BadParameter(
                "--model-version, --traffic and --shadow need an installed release")
        before = self._name() if previous is not None else None
        waiter = self._waiter(before) if before else None
        baseline = waiter.baseline(min(opts.timeout, HELM_RETRY_S)) if waiter else Baseline()
        if isinstance(baseline, Unobservable):
            self.console.print(f"[red]cannot watch the rollout, nothing changed:[/] "
                               f"{escape(baseline.reason)}", soft_wrap=True)
            return EXIT_UNOBSERVABLE
        with tempfile.TemporaryDirectory(prefix="finserve-rollout-") as tmp:
            if opts.changes_routing:
                self._model_values(tmp, files)
            if (code := self._upgrade(files, sets, previous, latest)) is not None:
                return code
        name = self._name()
        if name != before or waiter is None:
            waiter, baseline = self._waiter(name), Baseline()
        self.console.print(f"waiting for RayService {name} (deadline {opts.timeout:.0f}s)")
        return self._conclude(waiter.wait(opts.timeout, baseline), previous, name)

    def _conclude(self, state: RolloutState, previous: int | None, name: str) -> int:
        if isinstance(state, Done):
            self.console.print(f"[bold green]rolled out[/] {self.release}: {escape(state.detail)}")
            return 0
        if isinstance(state, NotApplied):
            self.console.print(f"[bold yellow]rolled out only in part[/] {self.release}: "
                               f"{escape(state.detail)}", soft_wrap=True)
            return EXIT_NOT_APPLIED
        if isinstance(state, Unobservable):
            self.console.print(
                f"[bold red]cannot tell whether {self.release} rolled out:[/] "
                f"{escape(state.detail)}. Nothing was rolled back; when the API answers, "
                f"`finserve rollout status -r {self.release}` tells, and `finserve rollout undo "
                f"-r {self.release}` goes back", soft_wrap=True)
            return EXIT_UNOBSERVABLE
        return self._roll_back(previous, state.detail, name)

    def _rollback_and_wait(self, revision: int, name: str | None = None) -> RolloutState:
        """helm rollback to ``revision`` and wait for it (HelmError when helm refuses)."""
        timeout_s = self.options.timeout
        waiter = self._waiter(name or self._name())
        baseline = waiter.baseline(min(timeout_s, HELM_RETRY_S))
        if isinstance(baseline, Unobservable):
            return baseline
        self.console.print(f"[bold]helm rollback {self.release} {revision}[/]")
        self._helm("helm rollback", lambda: self.helm.rollback(self.release, revision))
        return waiter.wait(timeout_s, baseline)

    def _roll_back(self, revision: int | None, reason: str, name: str | None = None) -> int:
        self.console.print(f"[bold red]rollout failed:[/] {escape(reason)}", soft_wrap=True)
        if revision is None:
            self.console.print("[red]no earlier revision to roll back to[/]")
            return EXIT_NOT_ROLLED_BACK
        try:
            state = self._rollback_and_wait(revision, name)
        except HelmError as exc:
            self.console.print(f"[red]helm rollback failed:[/] {escape(str(exc))}", soft_wrap=True)
            return EXIT_NOT_ROLLED_BACK
        if isinstance(state, Done | NotApplied):
            self.console.print(f"[yellow]rolled back to revision {revision}[/]: "
                               f"{escape(state.detail)}", soft_wrap=True)
            return EXIT_ROLLED_BACK
        self.console.print(f"[red]rollback to revision {revision} did not settle:[/] "
                           f"{escape(state.detail)}", soft_wrap=True)
        return EXIT_NOT_ROLLED_BACK

    def undo(self) -> int:
        """Roll back to the revision that ran before the running content was deployed, and
        wait. Exit code: 0 settled, 2 nothing to go back to or it failed, 3 not applied to
        the live cluster, 4 the API could not be watched."""
        history = self._helm("helm history", lambda: self.helm.history(self.release))
        target, why = undo_target(history)
        if target is None:
            self.console.print(f"[red]{self.release} has no earlier revision to go back to:[/] "
                               f"{escape(why)}", soft_wrap=True)
            return EXIT_NOT_ROLLED_BACK
        self.console.print(f"{escape(why)}")
        try:
            state = self._rollback_and_wait(target)
        except HelmError as exc:
            self.console.print(f"[red]helm rollback failed:[/] {escape(str(exc))}", soft_wrap=True)
            return EXIT_NOT_ROLLED_BACK
        if isinstance(state, Done):
            self.console.print(f"[bold green]rolled back[/] to revision {target}: "
                               f"{escape(state.detail)}")
            return 0
        codes = {NotApplied: EXIT_NOT_APPLIED, Unobservable: EXIT_UNOBSERVABLE}
        self.console.print(f"[red]undo did not settle:[/] {escape(state.detail)}", soft_wrap=True)
        return codes.get(type(state), EXIT_NOT_ROLLED_BACK)
