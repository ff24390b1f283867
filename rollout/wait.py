"""Waiting on a RayService: poll until the decision holds Done (or NotApplied) for the settle
time, fails, or the deadline passes; retry an unreachable API with backoff meanwhile."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape

from rollout.decision import rollout_state
from rollout.events import event_fingerprint, event_text, new_events
from rollout.kube import KubeApiError, RayServiceWatcher
from rollout.kuberay import MIN_SETTLE_S, status_of
from rollout.pods import UNSCHEDULABLE_GRACE_S, starting_cluster
from rollout.states import Done, Failed, NotApplied, Progress, RolloutState, Unobservable, color

MAX_BACKOFF_S = 30.0


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Monotonic time and real sleeps."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class Baseline:
    """What was there before helm ran: the RayService (None: it did not exist) and the
    fingerprints of the events already recorded (None: judge no events)."""

    rayservice: dict[str, Any] | None = None
    seen: frozenset[tuple[Any, ...]] | None = frozenset()


@dataclass
class _Outage:
    """Backoff while the Kubernetes API does not answer: 1, 2, 4 ... 30 s."""

    console: Console
    since: float | None = None
    delay: float = 1.0

    def failed(self, now: float, error: KubeApiError) -> float:
        if self.since is None:
            self.since = now
            self.console.print(f"[yellow]Kubernetes API unreachable ({escape(str(error))}); "
                               "retrying until the deadline[/]", soft_wrap=True)
        delay, self.delay = self.delay, min(self.delay * 2, MAX_BACKOFF_S)
        return delay

    def answered(self, now: float) -> None:
        if self.since is not None:
            self.console.print(f"[green]Kubernetes API answers again "
                               f"(after {now - self.since:.0f}s)[/]")
        self.since, self.delay = None, 1.0


@dataclass
class Waiter:
    """Polls a RayService until :func:`rollout_state` is Done or NotApplied for ``settle``
    seconds (at least :data:`MIN_SETTLE_S`), Failed, or the deadline passes; retries an
    unreachable API with backoff inside the deadline."""

    watcher: RayServiceWatcher
    console: Console
    clock: Clock
    poll_s: float = 5.0
    settle_s: float = 10.0
    unschedulable_grace_s: float = UNSCHEDULABLE_GRACE_S
    _printed: set[tuple[Any, ...]] = field(default_factory=set, init=False, repr=False)

    def baseline(self, budget_s: float) -> Baseline | Unobservable:
        """The RayService and its events now, before helm changes anything."""
        outage, deadline = _Outage(self.console), self.clock.now() + budget_s
        while True:
            now = self.clock.now()
            try:
                found = Baseline(self.watcher.get(),
                                 frozenset(map(event_fingerprint, self.watcher.events())))
                outage.answered(now)
                return found
            except KubeApiError as exc:
                if not exc.transient or now >= deadline:
                    return Unobservable(str(exc))
                self.clock.sleep(min(outage.failed(now, exc), max(0.0, deadline - now)))

    def check(self, baseline: Baseline) -> RolloutState:
        """One look at the RayService, its new events, the starting cluster's pods and the
        active RayCluster, judged by :func:`rollout_state`."""
        obj = self.watcher.get()
        if obj is None:
            return Unobservable(f"RayService {self.watcher.name} not found: check --rayservice "
                                "and --namespace, or whether it was deleted")
        uid = (obj.get("metadata") or {}).get("uid")
        events = new_events(self.watcher.events(), baseline.seen, uid)
        self._print_events(events)
        status = status_of(obj)
        starting = starting_cluster(obj)
        pods = self.watcher.pods(starting) if starting else []
        active = (status.get("activeServiceStatus") or {}).get("rayClusterName")
        pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
        cluster = self.watcher.raycluster(active) if active and not pending else None
        return rollout_state(obj, events, pods, before=baseline.rayservice,
                             active_cluster=cluster,
                             now=self.watcher.server_now() or datetime.now(UTC),
                             unschedulable_grace_s=self.unschedulable_grace_s)

    def _print_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        for event in events:
            if (key := event_fingerprint(event)) not in self._printed:
                self._printed.add(key)
                style = "red" if event.get("type") == "Warning" else "dim"
                self.console.print(f"[{style}]  event {escape(event_text(event))}[/]",
                                   soft_wrap=True)

    def _report(self, state: RolloutState, elapsed: float, last: str) -> str:
        if state.detail != last:
            text = state.detail  # a verdict's whole text is the caller's to print
            if not isinstance(state, Done | Progress) and len(text) > 120:
                text = text[:119] + "…"
            self.console.print(f"[{color(state)}]{elapsed:6.0f}s  {escape(text)}[/]",
                               soft_wrap=True)
        return state.detail

    def wait(self, timeout_s: float, baseline: Baseline | None = None) -> RolloutState:
        """Poll until settled, failed or the deadline. Without ``baseline``, one is taken
        now (events already recorded then do not count)."""
        start = self.clock.now()
        deadline, settle = start + timeout_s, max(self.settle_s, MIN_SETTLE_S)
        if baseline is None:
            taken = self.baseline(timeout_s)
            if isinstance(taken, Unobservable):
                return taken
            baseline = taken
        outage, done_since, last = _Outage(self.console), None, ""
        while True:
            now = self.clock.now()
            try:
                state = self.check(baseline)
            except KubeApiError as exc:
                done_since = None
                if not exc.transient:
                    return Unobservable(str(exc))
                if now >= deadline:
                    return Unobservable(f"the Kubernetes API was still unreachable at the "
                                        f"deadline ({timeout_s:.0f}s): {exc}")
                self.clock.sleep(min(outage.failed(now, exc), max(0.0, deadline - now)))
                continue
            outage.answered(now)
            last = self._report(state, now - start, last)
            if isinstance(state, Failed | Unobservable):
                return state
            if isinstance(state, Done | NotApplied):
                done_since = now if done_since is None else done_since
                if now - done_since >= settle:
                    return state
            else:
                done_since = None
                if now >= deadline:
                    return Failed(f"not rolled out after {timeout_s:.0f}s: {state.detail}")
            self.clock.sleep(max(0.0, min(self.poll_s, deadline - now)) or self.poll_s)
