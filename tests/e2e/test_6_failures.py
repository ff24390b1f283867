"""Failures `finserve rollout` must name, fast, on a real KubeRay: a spec KubeRay rejects, an
image that cannot be pulled, a change KubeRay does not apply to a running cluster, `undo`
after an automatic rollback, and the API server stopping mid-rollout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Release
from tests.e2e.kube import CHART, REPO, active_cluster, finserve, helm, kubectl_json, run

DEADLINE_S = 900  # the rollout's own deadline: every failure below must come well before it
FAST_S = 240      # "fast": KubeRay's reason within this, not a timeout


def rollout(release: Release, *args: str, timeout: float = DEADLINE_S
            ) -> tuple[int, str, float]:
    started = time.monotonic()
    done = run(finserve(), "rollout", "-n", release.namespace, "--release", release.name,
               "--chart", str(CHART), "--timeout", str(timeout), *args, check=False,
               timeout=timeout + 900)
    took = time.monotonic() - started
    out = done.stdout + done.stderr
    print(f"\n[e2e] finserve rollout {' '.join(args)}: exit {done.returncode} in {took:.0f}s"
          f"\n{out[-3000:]}")
    assert "Traceback" not in out, out
    return done.returncode, out, took


def history(release: Release) -> list[dict]:
    import json

    return json.loads(helm("history", release.name, "-n", release.namespace, "-o", "json"))


def deployed_values(release: Release) -> dict:
    import yaml

    return yaml.safe_load(helm("get", "values", release.name, "-n", release.namespace,
                               "-o", "yaml")) or {}


def test_a_spec_kuberay_rejects_is_reported_with_its_reason_and_rolled_back(
        release: Release) -> None:
    cluster = active_cluster(release.namespace)
    code, out, took = rollout(release, "--set", "head.rayStartParams.redis-username=alice")
    assert code == 1, out  # failed, rolled back
    assert "redis username" in out, "KubeRay's own reason must be in the report"
    assert took < FAST_S, f"took {took:.0f}s: reported by the deadline, not by KubeRay"
    assert "redis-username" not in str(deployed_values(release))
    assert active_cluster(release.namespace) == cluster


def test_an_image_that_cannot_be_pulled_is_reported_from_the_pod_and_rolled_back(
        release: Release) -> None:
    """The registry is this machine's loopback with nothing listening: a real pull that
    fails (ErrImagePull, then ImagePullBackOff), and no traffic off the machine. Rolling
    back while that cluster is pending, KubeRay (1.6.2) brings up a new cluster of the old
    spec rather than returning to the one that kept serving; the rollout waits for it."""
    code, out, took = rollout(release, "--set", "image.repository=127.0.0.1:5999/finserve")
    assert code == 1, out
    assert "ErrImagePull" in out or "ImagePullBackOff" in out, out
    seen = re.search(r"(\d+)s  the new cluster \S+ cannot start", out)
    assert seen, out
    assert int(seen.group(1)) < FAST_S, f"the pull failure named after {seen.group(1)}s"
    assert took < DEADLINE_S, f"took {took:.0f}s"  # the report, then the rollback settled
    assert "127.0.0.1:5999" not in str(deployed_values(release))
    images = {c["image"] for p in kubectl_json("-n", release.namespace, "get", "pods", "-l",
                                              f"ray.io/cluster={active_cluster(release.namespace)}"
                                              )["items"] for c in p["spec"]["containers"]}
    assert images == {f"{release.image_repository}:{release.image_tag}"}, images


def test_undo_after_an_automatic_rollback_goes_to_the_last_good_revision(
        release: Release) -> None:
    """The history now ends with a bad revision and its automatic rollback; undo steps over
    both and the revision they restored, to the one that ran before it."""
    rows = history(release)
    assert rows[-1]["description"].startswith("Rollback to"), rows[-1]
    restored = int(rows[-1]["description"].split()[-1])
    while True:  # the content now running was first deployed at `restored`
        row = next(r for r in rows if int(r["revision"]) == restored)
        if not row["description"].startswith("Rollback to"):
            break
        restored = int(row["description"].split()[-1])
    def values_at(revision: int) -> str:
        return helm("get", "values", release.name, "-n", release.namespace, "--revision",
                    str(revision), "-o", "yaml")

    running_values = values_at(restored)
    want = next(r for r in reversed(rows) if int(r["revision"]) < restored
                and r["status"] in ("superseded", "deployed")
                and values_at(int(r["revision"])) != running_values)
    want_values = values_at(int(want["revision"]))
    done = run(finserve(), "rollout", "undo", "-n", release.namespace, "--release",
               release.name, "--timeout", str(DEADLINE_S), check=False, timeout=DEADLINE_S + 300)
    print(f"\n[e2e] finserve rollout undo: exit {done.returncode}\n{done.stdout[-2000:]}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert history(release)[-1]["description"] == f"Rollback to {want['revision']}"
    assert helm("get", "values", release.name, "-n", release.namespace, "-o",
                "yaml") == want_values


def test_a_change_kuberay_does_not_apply_to_a_running_cluster_is_reported_as_such(
        release: Release) -> None:
    cluster = active_cluster(release.namespace)
    try:
        code, out, _ = rollout(release, "--set", "cpuWorker.maxReplicas=3")
        assert code == 3, out  # not applied to the live cluster
        assert "not applied" in out.lower() and "maxReplicas" in out, out
        assert f"rolled out {release.name}:" not in out, "reported as rolled out"
        assert active_cluster(release.namespace) == cluster
    finally:  # back to what runs, so that the next test starts from a rolled-out release
        helm("rollback", release.name, "-n", release.namespace, "--force-conflicts", "--wait")


def apiserver_pid() -> int:
    pid_file = Path(os.environ.get("CLUSTER_DIR", REPO / ".cluster")) / "run/kube-apiserver.pid"
    if not pid_file.is_file():
        pytest.skip("the API server is not one `make cluster` started: cannot stop it here")
    return int(pid_file.read_text())


def test_the_api_server_stopping_mid_rollout_ends_in_a_clear_message_not_a_traceback(
        release: Release) -> None:
    """The API server frozen (SIGSTOP) for 45 s, longer than the rollout's read timeout,
    while the rollout waits on KubeRay: the rollout says the API is unreachable, keeps its
    deadline, and finishes when it is back."""
    pid = apiserver_pid()
    args = [finserve(), "rollout", "-n", release.namespace, "--release", release.name,
            "--chart", str(CHART), "--timeout", str(DEADLINE_S), "--poll", "1",
            "--model-version", "sentiment=1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if "waiting for RayService" in line:
                break
        os.kill(pid, signal.SIGSTOP)
        time.sleep(45)
    finally:
        os.kill(pid, signal.SIGCONT)
    rest, _ = proc.communicate(timeout=DEADLINE_S + 300)
    out = "".join(lines) + rest
    print(f"\n[e2e] API server stopped 45 s: exit {proc.returncode}\n{out[-3000:]}")
    assert "Traceback" not in out, out
    assert "unreachable" in out.lower(), out
    assert proc.returncode == 0, out
