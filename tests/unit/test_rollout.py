"""``finserve rollout`` against scripted helm and Kubernetes stand-ins (no cluster, no Ray).

Each scenario plays a RayService through the status sequence KubeRay v1.7.0 reports
(../shared/third_party/kuberay/NOTES.md) on a fake clock.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from rich.console import Console
from typer.testing import CliRunner

from serving import rollout as ro
from serving.rollout import Done, Failed, Progress, rollout_state

CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "finserve" / "values.yaml"


def rayservice(
    generation: int = 2,
    observed: int | None = 2,
    ready: str = "True",
    upgrading: str = "False",
    active: str = "finserve-abcde",
    apps: dict[str, str] | None = None,
    pending: str = "",
    pending_apps: dict[str, str] | None = None,
    ready_reason: str = "RayServiceReady",
    message: str = "",
) -> dict[str, Any]:
    """A RayService as KubeRay reports it."""

    def statuses(values: dict[str, str] | None) -> dict[str, Any]:
        return {name: {"status": s, "message": message if s != "RUNNING" else ""}
                for name, s in (values or {}).items()}

    status: dict[str, Any] = {
        "conditions": [
            {"type": "Ready", "status": ready, "reason": ready_reason, "message": message,
             "observedGeneration": generation},
            {"type": "UpgradeInProgress", "status": upgrading,
             "reason": "PendingClusterExists" if upgrading == "True" else "NoPendingCluster"},
        ],
        "activeServiceStatus": {"rayClusterName": active,
                                "applicationStatuses": statuses(
                                    {"finserve": "RUNNING"} if apps is None else apps)},
        "pendingServiceStatus": {"rayClusterName": pending,
                                 "applicationStatuses": statuses(pending_apps)} if pending else {},
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "finserve", "generation": generation}, "status": status}


def event(reason: str, message: str = "", uid: str = "e1", kind: str = "Warning") -> dict:
    return {"uid": uid, "count": 1, "type": kind, "reason": reason, "message": message}


class FakeClock:
    """Time moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class ScriptedKube:
    """Plays a RayService through a script, one step per ``get``; the last step repeats.
    A step is a RayService dict or ``(rayservice, [events appearing now])``."""

    def __init__(self, script: Sequence[Any], events: Sequence[dict] = ()) -> None:
        self.events_now = list(events)
        self.seen: list[dict[str, Any] | None] = []
        self.play(script)

    def play(self, script: Sequence[Any]) -> None:
        self.script = list(script)

    def get(self) -> dict[str, Any] | None:
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        obj, new_events = step if isinstance(step, tuple) else (step, [])
        self.events_now += [e for e in new_events if e not in self.events_now]
        self.seen.append(obj)
        return obj

    def events(self) -> list[dict[str, Any]]:
        return list(self.events_now)


class FakeHelm:
    """Records helm calls and keeps a release history; ``rollback`` replays ``on_rollback``."""

    def __init__(self, revisions: int = 2, on_rollback: Callable[[], None] | None = None,
                 upgrade_error: str | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.history_rows = [{"revision": r, "status": "superseded"} for r in range(1, revisions)]
        if revisions:
            self.history_rows.append({"revision": revisions, "status": "deployed"})
        self.on_rollback = on_rollback
        self.upgrade_error = upgrade_error
        self.upgrade_files: list[dict[str, Any]] = []

    def _new_revision(self, status: str = "deployed") -> int:
        for row in self.history_rows:
            if row["status"] == "deployed":
                row["status"] = "superseded"
        revision = len(self.history_rows) + 1
        self.history_rows.append({"revision": revision, "status": status})
        return revision

    def history(self, release: str) -> list[dict[str, Any]]:
        self.calls.append(("history", release))
        return [dict(r) for r in self.history_rows]

    def upgrade(self, release: str, chart: str, values_files: Sequence[str] = (),
                set_values: Sequence[str] = ()) -> None:
        self.calls.append(("upgrade", release, chart, tuple(values_files), tuple(set_values)))
        self.upgrade_files = [yaml.safe_load(Path(f).read_text()) for f in values_files]
        if self.upgrade_error:
            raise ro.HelmError(self.upgrade_error)
        self._new_revision()

    def rollback(self, release: str, revision: int) -> None:
        self.calls.append(("rollback", release, revision))
        self._new_revision()
        if self.on_rollback:
            self.on_rollback()

    def values(self, release: str) -> dict[str, Any]:
        self.calls.append(("values", release))
        return yaml.safe_load(CHART_VALUES.read_text())

    def rayservice_name(self, release: str) -> str:
        return "finserve"

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]


def make_rollout(helm: FakeHelm, kube: ScriptedKube, clock: FakeClock,
                 **kwargs: Any) -> tuple[ro.Rollout, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    rollout = ro.Rollout(helm=helm, make_watcher=lambda name: kube, console=console,  # type: ignore[arg-type]
                         clock=clock, poll_s=5.0, settle_s=10.0, **kwargs)
    return rollout, out


# --------------------------------------------------------------------------- rollout_state


def test_a_settled_rayservice_is_done() -> None:
    state = rollout_state(rayservice())
    assert isinstance(state, Done) and "finserve-abcde" in state.detail


def test_status_of_an_older_generation_is_not_done_even_if_everything_runs() -> None:
    state = rollout_state(rayservice(generation=3, observed=2))
    assert isinstance(state, Progress) and "generation 3" in state.detail


def test_ready_during_a_blue_green_switch_is_not_done() -> None:
    obj = rayservice(upgrading="True", pending="finserve-new12", pending_apps={"finserve":
                                                                              "RUNNING"})
    state = rollout_state(obj)
    assert isinstance(state, Progress) and "finserve-new12" in state.detail


def test_upgrade_in_progress_without_a_pending_name_is_not_done() -> None:
    assert isinstance(rollout_state(rayservice(upgrading="True")), Progress)


def test_an_application_that_is_not_running_yet_is_not_done() -> None:
    assert isinstance(rollout_state(rayservice(apps={"finserve": "DEPLOYING"})), Progress)
    assert isinstance(rollout_state(rayservice(apps={})), Progress)
    assert isinstance(rollout_state(rayservice(ready="False", ready_reason="Initializing")),
                      Progress)
    assert isinstance(rollout_state(None), Progress)


@pytest.mark.parametrize("status", ["DEPLOY_FAILED", "UNHEALTHY"])
def test_a_failed_or_unhealthy_application_fails_the_rollout(status: str) -> None:
    state = rollout_state(rayservice(apps={"finserve": status}, message="ImportError: nope"))
    assert isinstance(state, Failed)
    assert status in state.reason and "ImportError: nope" in state.reason


def test_a_failed_application_on_the_pending_cluster_fails_the_rollout() -> None:
    obj = rayservice(upgrading="True", pending="finserve-new12",
                     pending_apps={"finserve": "DEPLOY_FAILED"}, message="no model v9")
    state = rollout_state(obj)
    assert isinstance(state, Failed) and "pending cluster finserve-new12" in state.reason


def test_a_stale_failure_of_an_older_generation_is_not_this_rollouts_failure() -> None:
    assert isinstance(rollout_state(rayservice(generation=3, observed=2,
                                               apps={"finserve": "DEPLOY_FAILED"})), Progress)


@pytest.mark.parametrize("reason", ["ValidationFailed", "InvalidRayServiceSpec"])
def test_a_validation_event_fails_the_rollout(reason: str) -> None:
    state = rollout_state(rayservice(generation=3, observed=2),
                          [event(reason, "RayService name should be no more than 47")])
    assert isinstance(state, Failed) and "no more than 47" in state.reason


def test_a_ready_false_validation_condition_fails_the_rollout() -> None:
    obj = rayservice(generation=3, observed=2, ready="False", ready_reason="ValidationFailed",
                     message="worker group gpu has minReplicas 3 greater than maxReplicas 1")
    state = rollout_state(obj)
    assert isinstance(state, Failed) and "minReplicas 3" in state.reason


# --------------------------------------------------------------------------- scenarios


def test_a_rollout_succeeds_when_kuberay_reports_it_done() -> None:
    kube = ScriptedKube([
        rayservice(generation=3, observed=2),
        rayservice(generation=3, observed=3, ready="True", apps={"finserve": "DEPLOYING"}),
        rayservice(generation=3, observed=3),
    ])
    helm, clock = FakeHelm(), FakeClock()
    rollout, out = make_rollout(helm, kube, clock)
    assert rollout.start("charts/finserve", set_values=["cpuWorker.maxReplicas=6"]) == 0
    (upgrade,) = helm.called("upgrade")
    assert upgrade[1:3] == ("finserve", "charts/finserve")
    assert upgrade[4] == ("cpuWorker.maxReplicas=6",)
    assert not helm.called("rollback")
    text = out.getvalue()
    assert "has not observed generation 3" in text and "finserve DEPLOYING" in text
    assert "rolled out finserve" in text
    assert clock.t >= 10  # held Done for the settle time


def test_an_in_place_serve_config_update_waits_out_a_stale_running_status() -> None:
    kube = ScriptedKube([
        rayservice(generation=4, observed=3),
        rayservice(generation=4, observed=4),  # stale RUNNING before Serve takes the config
        rayservice(generation=4, observed=4, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=4, observed=4, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=4, observed=4),
    ])
    helm, clock = FakeHelm(revisions=3), FakeClock()
    rollout, out = make_rollout(helm, kube, clock)
    assert rollout.start("charts/finserve", model_versions=["fraud=2,1"]) == 0
    (values,) = helm.upgrade_files
    models = {m["name"]: m for m in values["serve"]["app"]["models"]}
    assert models["fraud"]["versions"] == ["2", "1"]
    assert models["sentiment"]["versions"] == ["latest"]
    assert models["fraud"]["options"] == {"review_threshold": 0.2, "block_threshold": 0.6}
    assert all(not (o["status"].get("pendingServiceStatus") or {}) for o in kube.seen)
    assert "finserve DEPLOYING" in out.getvalue()
    assert clock.t >= 30  # the early RUNNING did not count: DEPLOYING reset the settle timer
    assert not helm.called("rollback")


def test_a_blue_green_switch_is_done_only_after_the_new_cluster_serves() -> None:
    kube = ScriptedKube([
        rayservice(generation=5, observed=4),
        rayservice(generation=5, observed=5, upgrading="True", pending="finserve-new12",
                   pending_apps={}),
        rayservice(generation=5, observed=5, upgrading="True", pending="finserve-new12",
                   pending_apps={"finserve": "DEPLOYING"}),
        rayservice(generation=5, observed=5, upgrading="True", pending="finserve-new12",
                   pending_apps={"finserve": "RUNNING"}),
        rayservice(generation=5, observed=5, active="finserve-new12"),
    ])
    helm, clock = FakeHelm(), FakeClock()
    rollout, out = make_rollout(helm, kube, clock)
    assert rollout.start("charts/finserve", image_tag="0.2.0") == 0
    assert helm.called("upgrade")[0][4] == ("image.tag=0.2.0",)
    text = out.getvalue()
    assert "new cluster finserve-new12 coming up (no apps); finserve-abcde still serving" in text
    assert "new cluster finserve-new12 coming up (finserve DEPLOYING)" in text
    assert "rolled out finserve: cluster finserve-new12: finserve RUNNING" in text
    assert all(o["status"]["conditions"][0]["status"] == "True" for o in kube.seen[1:])


def test_a_failed_upgrade_rolls_back_to_the_previous_revision_and_exits_non_zero() -> None:
    kube = ScriptedKube([
        rayservice(generation=3, observed=2),
        rayservice(generation=3, observed=3, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=3, observed=3, apps={"finserve": "DEPLOY_FAILED"},
                   message="model 'fraud' cannot be served: [Errno 2] version 9 not found [/]"),
    ])
    helm = FakeHelm(revisions=2, on_rollback=lambda: kube.play([
        rayservice(generation=4, observed=4, apps={"finserve": "DEPLOYING"}),
        rayservice(generation=4, observed=4),
    ]))
    rollout, out = make_rollout(helm, kube, FakeClock())
    code = rollout.start("charts/finserve", model_versions=["fraud=9"])
    assert code == ro.EXIT_ROLLED_BACK != 0
    assert helm.called("rollback") == [("rollback", "finserve", 2)]
    text = out.getvalue()
    assert "rollout failed: application finserve is DEPLOY_FAILED" in text
    assert "[Errno 2] version 9 not found [/]" in text  # printed as text, not rich markup
    assert "rolled back to revision 2" in text


def test_a_stuck_upgrade_hits_the_deadline_and_rolls_back() -> None:
    stuck = rayservice(generation=6, observed=6, upgrading="True", pending="finserve-stuck",
                       pending_apps={})
    kube = ScriptedKube([stuck])
    helm = FakeHelm(revisions=5, on_rollback=lambda: kube.play([
        rayservice(generation=7, observed=7, upgrading="True", pending="finserve-stuck"),
        rayservice(generation=7, observed=7),
    ]))
    clock = FakeClock()
    rollout, out = make_rollout(helm, kube, clock)
    code = rollout.start("charts/finserve", image_tag="broken", timeout_s=60)
    assert code == ro.EXIT_ROLLED_BACK
    assert helm.called("rollback") == [("rollback", "finserve", 5)]
    assert "not rolled out after 60s: new cluster finserve-stuck coming up" in out.getvalue()
    assert 60 <= clock.t <= 60 + 5 + 10 + 5  # the deadline, then the rollback settling
    assert max(clock.sleeps) <= 5


def test_a_validation_event_of_this_rollout_rolls_back_but_an_older_one_does_not() -> None:
    old = event("InvalidRayServiceSpec", "an earlier mistake", uid="old")
    kube = ScriptedKube([rayservice(generation=3, observed=2),
                         rayservice(generation=3, observed=3)], events=[old])
    helm = FakeHelm()
    rollout, _ = make_rollout(helm, kube, FakeClock())
    assert rollout.start("charts/finserve") == 0

    bad = rayservice(generation=4, observed=3)
    kube = ScriptedKube([(bad, [event("InvalidRayServiceSpec", "bad spec", uid="new")])],
                        events=[old])
    helm = FakeHelm(revisions=3, on_rollback=lambda: kube.play([rayservice(generation=5,
                                                                           observed=5)]))
    rollout, out = make_rollout(helm, kube, FakeClock())
    assert rollout.start("charts/finserve") == ro.EXIT_ROLLED_BACK
    assert "InvalidRayServiceSpec: bad spec" in out.getvalue()
    assert helm.called("rollback") == [("rollback", "finserve", 3)]


def test_a_rejected_helm_upgrade_changes_nothing_and_is_not_rolled_back() -> None:
    helm = FakeHelm(upgrade_error="values don't meet the specifications of the schema")
    rollout, out = make_rollout(helm, ScriptedKube([rayservice()]), FakeClock())
    assert rollout.start("charts/finserve") == ro.EXIT_NOT_ROLLED_BACK
    assert not helm.called("rollback")
    assert "helm upgrade failed: values don't meet" in out.getvalue()


def test_a_first_install_that_fails_has_nothing_to_roll_back_to() -> None:
    kube = ScriptedKube([rayservice(generation=1, observed=1, apps={"finserve":
                                                                    "DEPLOY_FAILED"})])
    helm = FakeHelm(revisions=0)
    rollout, out = make_rollout(helm, kube, FakeClock())
    assert rollout.start("charts/finserve") == ro.EXIT_NOT_ROLLED_BACK
    assert "no earlier revision to roll back to" in out.getvalue()
    assert not helm.called("rollback")


def test_undo_rolls_back_to_the_previous_good_revision_and_waits() -> None:
    kube = ScriptedKube([rayservice(generation=8, observed=7),
                         rayservice(generation=8, observed=8)])
    helm = FakeHelm(revisions=4)
    helm.history_rows[2]["status"] = "failed"  # revision 3 never deployed
    rollout, out = make_rollout(helm, kube, FakeClock())
    assert rollout.undo(timeout_s=120) == 0
    assert helm.called("rollback") == [("rollback", "finserve", 2)]
    assert "rolled back to revision 2" in out.getvalue()


def test_a_model_version_for_an_unknown_model_is_refused() -> None:
    values = yaml.safe_load(CHART_VALUES.read_text())
    with pytest.raises(typer.BadParameter) as refused:
        ro.model_version_values(values, ["loans=2"])
    assert "no model 'loans' in the release" in str(refused.value)
    assert "fraud" in str(refused.value)
    with pytest.raises(typer.BadParameter, match="MODEL=VERSION"):
        ro.model_version_values(values, ["fraud"])


# --------------------------------------------------------------------------- helm, CLI


def test_helm_runner_builds_the_commands_a_rollout_needs() -> None:
    argv: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        argv.append(cmd)
        if cmd[1] == "history" and cmd[2] == "missing":
            return subprocess.CompletedProcess(cmd, 1, "", "Error: release: not found")
        out = '[{"revision": 1, "status": "deployed"}]' if cmd[1] == "history" else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    helm = ro.Helm("helm", namespace="banking", kube_context="prod", run=run)
    helm.upgrade("finserve", "charts/finserve", ["a.yaml"], ["image.tag=2"])
    assert argv[-1] == ["helm", "upgrade", "--install", "finserve", "charts/finserve",
                        "--reset-then-reuse-values", "--values", "a.yaml", "--set", "image.tag=2",
                        "--namespace", "banking", "--kube-context", "prod"]
    assert helm.history("finserve") == [{"revision": 1, "status": "deployed"}]
    assert helm.history("missing") == []
    helm.rollback("finserve", 4)
    assert argv[-1][:4] == ["helm", "rollback", "finserve", "4"]


def test_status_command_exits_zero_only_when_rolled_out(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = {"finserve": rayservice()}
    monkeypatch.setattr(ro, "make_helm", lambda *a: FakeHelm())
    monkeypatch.setattr(ro, "make_watcher", lambda name, *a: ScriptedKube([objects[name]]))
    runner = CliRunner()
    done = runner.invoke(ro.rollout_app, ["status", "-n", "banking"])
    assert done.exit_code == 0 and "rolled out" in done.output
    objects["finserve"] = rayservice(upgrading="True", pending="finserve-new12")
    moving = runner.invoke(ro.rollout_app, ["status"])
    assert moving.exit_code == 1 and "rolling out" in moving.output
    assert "finserve-new12" in moving.output


def test_rollout_command_without_a_subcommand_starts_and_fails_non_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = ScriptedKube([rayservice(generation=3, observed=3, apps={"finserve": "UNHEALTHY"})])
    helm = FakeHelm(on_rollback=lambda: kube.play([rayservice(generation=4, observed=4)]))
    monkeypatch.setattr(ro, "make_helm", lambda *a: helm)
    monkeypatch.setattr(ro, "make_watcher", lambda *a: kube)
    result = CliRunner().invoke(ro.rollout_app, ["--image-tag", "0.3.0", "--poll", "0.1",
                                                 "--settle", "0", "--timeout", "5"])
    assert result.exit_code == ro.EXIT_ROLLED_BACK
    assert helm.called("upgrade")[0][4] == ("image.tag=0.3.0",)
    assert helm.called("rollback") == [("rollback", "finserve", 2)]


def test_a_missing_release_ends_the_command_with_helms_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoRelease(FakeHelm):
        def rayservice_name(self, release: str) -> str:
            raise ro.HelmError("Error: release: not found")

    monkeypatch.setattr(ro, "make_helm", lambda *a: NoRelease())
    result = CliRunner().invoke(ro.rollout_app, ["status", "--release", "nope"])
    assert result.exit_code == ro.EXIT_NOT_ROLLED_BACK
    assert "release: not found" in result.output
