"""``finserve rollout``: helm upgrade a release, then wait on its RayService until KubeRay
has really rolled it out; roll back to the previous helm revision on failure or timeout.

"Rolled out" follows KubeRay v1.7.0 (../shared/third_party/kuberay/NOTES.md): the status
observed the current generation, ``Ready`` is True, ``UpgradeInProgress`` is False, no
pending cluster is named, and every active application is RUNNING. ``Ready`` alone stays
True during a blue/green switch, and a stuck pending cluster never fails by itself, so the
rollout keeps its own deadline.

The decision is the pure function :func:`rollout_state`; helm goes through :class:`Helm`
(a subprocess wrapper) and the Kubernetes API through a :class:`RayServiceWatcher`, so tests
give scripted stand-ins. No Ray imports; the kubernetes client is imported lazily.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

FAILED_APP_STATUSES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
# KubeRay v1.7.0 records InvalidRayServiceSpec/InvalidRayServiceMetadata events and sets
# Ready=False with reason ValidationFailed (without observing the generation) for a bad spec.
FAILED_EVENT_REASONS = frozenset({"ValidationFailed", "InvalidRayServiceSpec",
                                  "InvalidRayServiceMetadata"})
VALIDATION_FAILED = "ValidationFailed"
EXIT_ROLLED_BACK = 1
EXIT_NOT_ROLLED_BACK = 2


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class Done:
    """Rolled out: the new spec serves every application."""

    detail: str


@dataclass(frozen=True)
class Progress:
    """Still rolling out; ``detail`` says what is being waited for."""

    detail: str


@dataclass(frozen=True)
class Failed:
    """The rollout cannot succeed without a change; ``reason`` says why."""

    reason: str

    @property
    def detail(self) -> str:
        return self.reason


RolloutState = Done | Progress | Failed


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in status.get("conditions") or []}


def _app_statuses(service_status: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return dict((service_status or {}).get("applicationStatuses") or {})


def _apps_summary(apps: Mapping[str, Mapping[str, Any]]) -> str:
    return ", ".join(f"{n} {a.get('status', '?')}" for n, a in sorted(apps.items())) or "no apps"


def rollout_state(
    rayservice: Mapping[str, Any] | None, events: Sequence[Mapping[str, Any]] = ()
) -> RolloutState:
    """Where a RayService rollout stands, from the object and the events of this rollout."""
    for event in events:
        if event.get("reason") in FAILED_EVENT_REASONS:
            return Failed(f"{event['reason']}: {event.get('message', '')}".strip())
    if rayservice is None:
        return Progress("RayService not created yet")
    generation = (rayservice.get("metadata") or {}).get("generation")
    status = rayservice.get("status") or {}
    ready = _conditions(status).get("Ready", {})
    if (ready.get("status") == "False" and ready.get("reason") == VALIDATION_FAILED
            and ready.get("observedGeneration", generation) == generation):
        return Failed(f"KubeRay rejected the spec: {ready.get('message', '')}".strip())
    observed = status.get("observedGeneration")
    if observed != generation:
        return Progress(f"KubeRay has not observed generation {generation} yet (at {observed})")
    active = status.get("activeServiceStatus") or {}
    pending = status.get("pendingServiceStatus") or {}
    active_apps, pending_apps = _app_statuses(active), _app_statuses(pending)
    for where, cluster, apps in (("active", active, active_apps),
                                 ("pending", pending, pending_apps)):
        for name, app in sorted(apps.items()):
            if app.get("status") in FAILED_APP_STATUSES:
                message = app.get("message") or "no message"
                return Failed(
                    f"application {name} is {app['status']} on the {where} cluster "
                    f"{cluster.get('rayClusterName', '?')}: {message}"
                )
    conditions = _conditions(status)
    if pending.get("rayClusterName"):
        return Progress(
            f"new cluster {pending['rayClusterName']} coming up ({_apps_summary(pending_apps)}); "
            f"{active.get('rayClusterName') or 'no cluster'} still serving"
        )
    upgrading = conditions.get("UpgradeInProgress", {})
    if upgrading.get("status") == "True":
        why = upgrading.get("message") or upgrading.get("reason")
        return Progress(f"upgrade in progress: {why}")
    if ready.get("status") != "True":
        why = ready.get("message") or ready.get("reason") or "no Ready condition yet"
        return Progress(f"not ready: {why}")
    if not active_apps:
        return Progress("no application status reported yet")
    waiting = {n: a for n, a in active_apps.items() if a.get("status") != "RUNNING"}
    if waiting:
        return Progress(f"cluster {active.get('rayClusterName')}: {_apps_summary(waiting)}")
    return Done(f"cluster {active.get('rayClusterName')}: {_apps_summary(active_apps)}")


# --------------------------------------------------------------------------- interfaces


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its output."""


class Helm:
    """The helm commands a rollout needs, run as subprocesses."""

    def __init__(
        self,
        binary: str | None = None,
        namespace: str | None = None,
        kube_context: str | None = None,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        self.binary = binary or default_helm()
        self.scope = [*(["--namespace", namespace] if namespace else []),
                      *(["--kube-context", kube_context] if kube_context else [])]
        self._run_process = run

    def run(self, *args: str) -> str:
        proc = self._run_process([self.binary, *args, *self.scope], capture_output=True,
                                 text=True)
        if proc.returncode:
            raise HelmError((proc.stderr or proc.stdout or "").strip() or f"helm {args[0]} failed")
        return proc.stdout

    def upgrade(self, release: str, chart: str, values_files: Sequence[str] = (),
                set_values: Sequence[str] = ()) -> None:
        """Install or upgrade, keeping the release's values under the new overrides."""
        args = ["upgrade", "--install", release, chart, "--reset-then-reuse-values"]
        for file in values_files:
            args += ["--values", file]
        for item in set_values:
            args += ["--set", item]
        self.run(*args)

    def history(self, release: str) -> list[dict[str, Any]]:
        """Revisions, oldest first; empty when the release does not exist."""
        try:
            return json.loads(self.run("history", release, "--output", "json") or "[]")
        except HelmError as exc:
            if "not found" in str(exc):
                return []
            raise

    def rollback(self, release: str, revision: int) -> None:
        self.run("rollback", release, str(revision))

    def values(self, release: str) -> dict[str, Any]:
        """The release's computed values (chart defaults included)."""
        return json.loads(self.run("get", "values", release, "--all", "--output", "json"))

    def rayservice_name(self, release: str) -> str:
        """Name of the RayService in the release's manifest."""
        for doc in yaml.safe_load_all(self.run("get", "manifest", release)):
            if doc and doc.get("kind") == "RayService":
                return doc["metadata"]["name"]
        raise HelmError(f"release {release} has no RayService")


class KubeAccessError(RuntimeError):
    """No kubeconfig or in-cluster credentials."""


class RayServiceWatcher(Protocol):
    """Reads one RayService and the events about it."""

    def get(self) -> dict[str, Any] | None:
        """The RayService object, or None if it does not exist."""
        ...

    def events(self) -> list[dict[str, Any]]:
        """Events whose involvedObject is the RayService: uid, count, type, reason, message."""
        ...


class KubeRayServiceWatcher:
    """RayServiceWatcher over the kubernetes Python client (kubeconfig or in-cluster)."""

    def __init__(self, name: str, namespace: str | None = None,
                 kube_context: str | None = None) -> None:
        from kubernetes import client, config

        try:
            config.load_kube_config(context=kube_context)
            contexts, current = config.list_kube_config_contexts()
            if kube_context:
                current = next(c for c in contexts if c["name"] == kube_context)
            namespace = namespace or current["context"].get("namespace", "default")
        except config.ConfigException as exc:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise KubeAccessError(
                    f"cannot reach Kubernetes: {exc}. Set KUBECONFIG or --kube-context") from exc
            namespace = namespace or Path(
                "/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
        self.name, self.namespace = name, namespace
        self._custom = client.CustomObjectsApi()
        self._core = client.CoreV1Api()
        self._api_error = client.ApiException

    def get(self) -> dict[str, Any] | None:
        try:
            return self._custom.get_namespaced_custom_object(
                "ray.io", "v1", self.namespace, "rayservices", self.name)
        except self._api_error as exc:
            if exc.status == 404:
                return None
            raise

    def events(self) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind=RayService,involvedObject.name={self.name}"
        items = self._core.list_namespaced_event(self.namespace, field_selector=selector).items
        return [
            {"uid": e.metadata.uid, "count": e.count or 1, "type": e.type, "reason": e.reason,
             "message": e.message or ""}
            for e in items
        ]


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Monotonic time and real sleeps."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# --------------------------------------------------------------------------- the rollout


def _event_key(event: Mapping[str, Any]) -> tuple[Any, Any]:
    return event.get("uid"), event.get("count")


@dataclass
class Waiter:
    """Polls a RayService until :func:`rollout_state` is Done (for ``settle`` seconds),
    Failed, or the deadline passes."""

    watcher: RayServiceWatcher
    console: Console
    clock: Clock
    poll_s: float = 5.0
    settle_s: float = 10.0

    def wait(self, timeout_s: float) -> RolloutState:
        seen = {_event_key(e) for e in self.watcher.events()}  # events before this rollout
        start = self.clock.now()
        deadline, done_since, last = start + timeout_s, None, ""
        while True:
            now = self.clock.now()
            obj = self.watcher.get()
            new = [e for e in self.watcher.events() if _event_key(e) not in seen]
            for event in new:
                seen.add(_event_key(event))
                style = "red" if event.get("type") == "Warning" else "dim"
                self.console.print(f"[{style}]  event {escape(str(event.get('reason')))}: "
                                   f"{escape(str(event.get('message')))}[/]", soft_wrap=True)
            state = rollout_state(obj, new)
            if state.detail != last:
                color = {Done: "green", Progress: "yellow", Failed: "red"}[type(state)]
                self.console.print(f"[{color}]{now - start:6.0f}s  {escape(state.detail)}[/]",
                                   soft_wrap=True)
                last = state.detail
            if isinstance(state, Failed):
                return state
            if isinstance(state, Done):
                done_since = now if done_since is None else done_since
                if now - done_since >= self.settle_s:
                    return state
            else:
                done_since = None
            if now >= deadline:
                return Failed(f"not rolled out after {timeout_s:.0f}s: {state.detail}")
            self.clock.sleep(max(0.0, min(self.poll_s, deadline - now)))


def deployed_revision(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The revision helm currently deploys."""
    deployed = [int(h["revision"]) for h in history if h.get("status") == "deployed"]
    return max(deployed) if deployed else None


def previous_good_revision(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The newest revision before the deployed one that was deployed successfully."""
    current = deployed_revision(history)
    older = [int(h["revision"]) for h in history if h.get("status") == "superseded"
             and (current is None or int(h["revision"]) < current)]
    return max(older) if older else None


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
    if weights and sum(weights.values()) != 100:
        raise typer.BadParameter(f"{spec!r}: the weights add up to {sum(weights.values())}, "
                                 "not 100")
    return weights


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


@dataclass
class Rollout:
    """One release's rollout: upgrade, wait, and roll back when it does not complete."""

    helm: Helm
    make_watcher: Callable[[str], RayServiceWatcher]
    console: Console
    clock: Clock
    release: str = "finserve"
    rayservice: str | None = None
    poll_s: float = 5.0
    settle_s: float = 10.0

    def _waiter(self, name: str) -> Waiter:
        return Waiter(self.make_watcher(name), self.console, self.clock, self.poll_s,
                      self.settle_s)

    def start(self, chart: str, values_files: Sequence[str] = (), set_values: Sequence[str] = (),
              model_versions: Sequence[str] = (), image_tag: str | None = None,
              timeout_s: float = 1200.0, traffic: Sequence[str] = (),
              shadow: Sequence[str] = ()) -> int:
        """Upgrade and wait; roll back to the previous revision on failure. Exit code."""
        history = self.helm.history(self.release)
        previous = deployed_revision(history)
        latest = max((int(h["revision"]) for h in history), default=0)
        files, sets = list(values_files), list(set_values)
        if image_tag:
            sets.append(f"image.tag={image_tag}")
        with tempfile.TemporaryDirectory(prefix="finserve-rollout-") as tmp:
            if model_versions or traffic or shadow:
                if previous is None:
                    raise typer.BadParameter(
                        "--model-version, --traffic and --shadow need an installed release")
                base = self.helm.values(self.release)
                for file in files:  # a models list in a -f file is the newer base
                    serve = (yaml.safe_load(Path(file).read_text()) or {}).get("serve") or {}
                    if (serve.get("app") or {}).get("models"):
                        base = {"serve": serve}
                path = Path(tmp, "model-versions.yaml")
                path.write_text(yaml.safe_dump(
                    model_version_values(base, model_versions, traffic, shadow)))
                files.append(str(path))
            self.console.print(f"[bold]helm upgrade {self.release}[/] {chart} "
                               f"(from revision {previous or 'none'})")
            try:
                self.helm.upgrade(self.release, chart, files, sets)
            except HelmError as exc:
                self.console.print(f"[red]helm upgrade failed:[/] {escape(str(exc))}",
                                   soft_wrap=True)
                applied = max((int(h["revision"]) for h in self.helm.history(self.release)),
                              default=0) > latest
                if applied:
                    return self._roll_back(previous, "helm upgrade failed", timeout_s)
                return EXIT_NOT_ROLLED_BACK
        name = self.rayservice or self.helm.rayservice_name(self.release)
        self.console.print(f"waiting for RayService {name} (deadline {timeout_s:.0f}s)")
        state = self._waiter(name).wait(timeout_s)
        if isinstance(state, Done):
            self.console.print(f"[bold green]rolled out[/] {self.release}: {escape(state.detail)}")
            return 0
        return self._roll_back(previous, state.detail, timeout_s, name)

    def _roll_back(self, revision: int | None, reason: str, timeout_s: float,
                   name: str | None = None) -> int:
        self.console.print(f"[bold red]rollout failed:[/] {escape(reason)}", soft_wrap=True)
        if revision is None:
            self.console.print("[red]no earlier revision to roll back to[/]")
            return EXIT_NOT_ROLLED_BACK
        self.console.print(f"[bold]helm rollback {self.release} {revision}[/]")
        try:
            self.helm.rollback(self.release, revision)
        except HelmError as exc:
            self.console.print(f"[red]helm rollback failed:[/] {escape(str(exc))}", soft_wrap=True)
            return EXIT_NOT_ROLLED_BACK
        name = name or self.rayservice or self.helm.rayservice_name(self.release)
        state = self._waiter(name).wait(timeout_s)
        if isinstance(state, Done):
            self.console.print(f"[yellow]rolled back to revision {revision}[/]: "
                               f"{escape(state.detail)}")
            return EXIT_ROLLED_BACK
        self.console.print(f"[red]rollback to revision {revision} did not settle:[/] "
                           f"{escape(state.detail)}", soft_wrap=True)
        return EXIT_NOT_ROLLED_BACK

    def undo(self, timeout_s: float = 1200.0) -> int:
        """Roll back to the previous good revision and wait. Exit code 0 when it settles."""
        target = previous_good_revision(self.helm.history(self.release))
        if target is None:
            self.console.print(f"[red]{self.release} has no earlier revision to go back to[/]")
            return EXIT_NOT_ROLLED_BACK
        self.console.print(f"[bold]helm rollback {self.release} {target}[/]")
        self.helm.rollback(self.release, target)
        name = self.rayservice or self.helm.rayservice_name(self.release)
        state = self._waiter(name).wait(timeout_s)
        if isinstance(state, Done):
            self.console.print(f"[bold green]rolled back[/] to revision {target}: "
                               f"{escape(state.detail)}")
            return 0
        self.console.print(f"[red]undo did not settle:[/] {escape(state.detail)}", soft_wrap=True)
        return EXIT_NOT_ROLLED_BACK


def describe(rayservice: Mapping[str, Any]) -> Table:
    """A table of what matters in a RayService's status."""
    status = rayservice.get("status") or {}
    table = Table("field", "value", title=f"RayService {rayservice['metadata']['name']}",
                  show_header=False)
    table.add_row("generation / observed", f"{rayservice['metadata'].get('generation')} / "
                  f"{status.get('observedGeneration')}")
    for ctype, cond in _conditions(status).items():
        text = f"{cond.get('status')} {cond.get('reason', '')} {cond.get('message', '')}"
        table.add_row(f"condition {ctype}", escape(text.strip()))
    for which in ("activeServiceStatus", "pendingServiceStatus"):
        svc = status.get(which) or {}
        text = f"{svc.get('rayClusterName') or '-'}: {_apps_summary(_app_statuses(svc))}"
        table.add_row(which.removesuffix("ServiceStatus"), escape(text))
    return table


# --------------------------------------------------------------------------- CLI


def default_helm() -> str:
    """helm on PATH, else the one ``make tools`` put beside this interpreter."""
    found = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
    return found or "helm"


def make_helm(namespace: str | None, kube_context: str | None, binary: str | None) -> Helm:
    return Helm(binary, namespace, kube_context)


def make_watcher(name: str, namespace: str | None,
                 kube_context: str | None) -> RayServiceWatcher:
    return KubeRayServiceWatcher(name, namespace, kube_context)


console = Console()
rollout_app = typer.Typer(
    help="Roll out a FinServe Helm release and wait until KubeRay has really switched; "
         "without a command, `start`.",
    no_args_is_help=False,
)

ReleaseOpt = Annotated[str, typer.Option("--release", "-r", help="Helm release name.")]
NamespaceOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: kubeconfig's).")
]
ContextOpt = Annotated[str | None, typer.Option("--kube-context", help="kubeconfig context.")]
NameOpt = Annotated[str | None, typer.Option(
    "--rayservice", help="RayService name (default: read from the release manifest).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", min=1, help="Seconds to wait for the rollout before rolling back.")]
PollOpt = Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between checks.")]
SettleOpt = Annotated[float, typer.Option(
    "--settle", min=0, help="Seconds the rolled-out state must hold before it counts.")]
HelmOpt = Annotated[str | None, typer.Option("--helm", help="helm binary (default: PATH).")]
ChartOpt = Annotated[str, typer.Option("--chart", help="Chart path or reference.")]
ValuesOpt = Annotated[list[str] | None, typer.Option(
    "--values", "-f", help="Values file (repeatable).")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="helm --set KEY=VALUE (repeatable).")]
ModelVersionOpt = Annotated[list[str] | None, typer.Option(
    "--model-version", help="MODEL=VERSION[,VERSION...]: serve these versions, the first by "
                            "default; ends the model's traffic split unless --traffic sets one "
                            "(the gateway's routing: applied in place, no restart). "
                            "Repeatable.")]
TrafficOpt = Annotated[list[str] | None, typer.Option(
    "--traffic", help="MODEL=VERSION:WEIGHT,...: split unpinned requests (a canary, e.g. "
                      "fraud=1:90,2:10; weights add up to 100); MODEL= ends the split. "
                      "Applied in place. Repeatable.")]
ShadowOpt = Annotated[list[str] | None, typer.Option(
    "--shadow", help="MODEL=VERSION: copy live traffic to VERSION and record its answers "
                     "(never returned); MODEL= stops it. Applied in place. Repeatable.")]
ImageTagOpt = Annotated[str | None, typer.Option(
    "--image-tag", help="New image tag (KubeRay brings up a new cluster, then switches).")]


@contextmanager
def _cli_errors() -> Iterator[None]:
    """helm and Kubernetes access errors end the command with their message (exit 2)."""
    try:
        yield
    except (HelmError, KubeAccessError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(EXIT_NOT_ROLLED_BACK) from None


def _rollout(release: str, namespace: str | None, kube_context: str | None,
             rayservice: str | None, poll: float, settle: float, helm: str | None) -> Rollout:
    return Rollout(
        helm=make_helm(namespace, kube_context, helm),
        make_watcher=lambda name: make_watcher(name, namespace, kube_context),
        console=console, clock=SystemClock(), release=release, rayservice=rayservice,
        poll_s=poll, settle_s=settle,
    )


@rollout_app.callback(invoke_without_command=True)
def rollout_main(
    ctx: typer.Context,
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    chart: ChartOpt = "charts/finserve",
    values: ValuesOpt = None,
    set_values: SetOpt = None,
    model_version: ModelVersionOpt = None,
    image_tag: ImageTagOpt = None,
    rayservice: NameOpt = None,
    timeout: TimeoutOpt = 1200.0,
    poll: PollOpt = 5.0,
    settle: SettleOpt = 10.0,
    helm: HelmOpt = None,
    traffic: TrafficOpt = None,
    shadow: ShadowOpt = None,
) -> None:
    """Without a command: `start` with these options."""
    if ctx.invoked_subcommand is None:
        start(release, namespace, kube_context, chart, values, set_values, model_version,
              image_tag, rayservice, timeout, poll, settle, helm, traffic, shadow)


@rollout_app.command("start")
def start(
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    chart: ChartOpt = "charts/finserve",
    values: ValuesOpt = None,
    set_values: SetOpt = None,
    model_version: ModelVersionOpt = None,
    image_tag: ImageTagOpt = None,
    rayservice: NameOpt = None,
    timeout: TimeoutOpt = 1200.0,
    poll: PollOpt = 5.0,
    settle: SettleOpt = 10.0,
    helm: HelmOpt = None,
    traffic: TrafficOpt = None,
    shadow: ShadowOpt = None,
) -> None:
    """helm upgrade with new values, wait until rolled out; on failure or timeout roll back
    to the previous revision and exit non-zero (1 rolled back, 2 could not roll back)."""
    rollout = _rollout(release, namespace, kube_context, rayservice, poll, settle, helm)
    with _cli_errors():
        code = rollout.start(chart, values or [], set_values or [], model_version or [],
                             image_tag, timeout, traffic or [], shadow or [])
    raise typer.Exit(code)


@rollout_app.command("status")
def status(
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    rayservice: NameOpt = None,
    helm: HelmOpt = None,
) -> None:
    """Print the RayService's state and whether it is rolled out (exit 0 only if it is)."""
    with _cli_errors():
        name = rayservice or make_helm(namespace, kube_context, helm).rayservice_name(release)
        obj = make_watcher(name, namespace, kube_context).get()
    if obj is None:
        console.print(f"[red]RayService {name} not found[/]")
        raise typer.Exit(1)
    console.print(describe(obj))
    state = rollout_state(obj)
    color = {Done: "green", Progress: "yellow", Failed: "red"}[type(state)]
    verdict = {Done: "rolled out", Progress: "rolling out", Failed: "failed"}[type(state)]
    console.print(f"[bold {color}]{verdict}[/]: {escape(state.detail)}", soft_wrap=True)
    raise typer.Exit(0 if isinstance(state, Done) else 1)


@rollout_app.command("undo")
def undo(
    release: ReleaseOpt = "finserve",
    namespace: NamespaceOpt = None,
    kube_context: ContextOpt = None,
    rayservice: NameOpt = None,
    timeout: TimeoutOpt = 1200.0,
    poll: PollOpt = 5.0,
    settle: SettleOpt = 10.0,
    helm: HelmOpt = None,
) -> None:
    """helm rollback to the previous good revision and wait until it is rolled out."""
    rollout = _rollout(release, namespace, kube_context, rayservice, poll, settle, helm)
    with _cli_errors():
        code = rollout.undo(timeout)
    raise typer.Exit(code)


__all__ = [
    "Done", "Failed", "Helm", "HelmError", "KubeAccessError", "KubeRayServiceWatcher", "Progress",
    "RayServiceWatcher",
    "Rollout", "RolloutState", "Waiter", "rollout_app", "rollout_state",
]
