"""The e2e tier: a real cluster (`make cluster`, or any kubeconfig with the KubeRay operator
and the FinServe image), one release installed as docs/kubernetes.md says, shared by the
tests in file order (install, ingress, security, autoscaling, rollout, failures).

`make e2e` runs it (FINSERVE_E2E_REQUIRED=1: no cluster is a failure). A plain `pytest` run
without a cluster skips it with the reason; `make test` leaves it out.
Settings: KUBECONFIG (default .cluster/kubeconfig), FINSERVE_E2E_IMAGE (default
finserve:<the chart's appVersion>, the image `make cluster` builds), FINSERVE_E2E_KEEP=1 keeps
the namespace afterwards for a look.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.e2e.kube import CHART, REPO, finserve, helm, kubectl, run, service_url, tool, wait_until

NAMESPACE = "finserve-e2e"
RELEASE = "finserve"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def cluster() -> str:
    """The kubeconfig of a reachable cluster with KubeRay's CRDs."""
    config = os.environ.get("KUBECONFIG") or str(REPO / ".cluster" / "kubeconfig")
    problem = None
    if not Path(config).is_file():
        problem = f"no kubeconfig at {config}: run `make cluster` first"
    else:
        os.environ["KUBECONFIG"] = config
        done = run(tool("kubectl"), "get", "crd", "rayservices.ray.io", check=False, timeout=20)
        if done.returncode != 0:
            problem = f"cluster at {config} not usable: {done.stderr.strip()[:300]}"
    if problem:
        if os.environ.get("FINSERVE_E2E_REQUIRED"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return config


def image() -> tuple[str, str]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    repo, _, tag = os.environ.get("FINSERVE_E2E_IMAGE", f"finserve:{chart['appVersion']}"
                                  ).rpartition(":")
    return repo, tag


@dataclass
class Release:
    """The installed release: where it is and a key that may call every model."""

    namespace: str
    name: str
    api_key: str
    image_repository: str
    image_tag: str

    @property
    def url(self) -> str:
        return service_url(self.namespace, f"{self.name}-serve-svc")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def image_sets(self) -> list[str]:
        return ["--set", f"image.repository={self.image_repository}",
                "--set", f"image.tag={self.image_tag}"]


def _caller_key(tmp: Path) -> tuple[str, Path]:
    """A key of our own that may call every model (the generated helm-test key is scoped and
    slow on purpose), given to the chart as docs/kubernetes.md section 3 says: its hash in
    `apiKeys.keys`. Returns the key and the values file."""
    from serving.security import new_key

    key, entry = new_key("e2e", models=["*"])
    values = tmp / "e2e-key.yaml"
    values.write_text(yaml.safe_dump({"apiKeys": {"keys": [entry.model_dump(exclude_none=True)]}}))
    return key, values


#: the host folder behind the decision trail's volume (this one-node cluster has no
#: storage provisioner, so the test makes the PersistentVolume the chart's claim binds to)
TRAIL_HOST_PATH = Path("/var/lib/finserve-e2e/audit")
TRAIL_PV = "finserve-e2e-audit"


def trail_volume() -> None:
    """A fresh hostPath PersistentVolume pre-bound to the chart's `finserve-audit` claim:
    what a cluster's storage would give it, on one node."""
    kubectl("delete", "pv", TRAIL_PV, "--ignore-not-found", "--wait=false")
    kubectl("patch", "pv", TRAIL_PV, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
            check=False)
    shutil.rmtree(TRAIL_HOST_PATH, ignore_errors=True)
    TRAIL_HOST_PATH.mkdir(parents=True)
    TRAIL_HOST_PATH.chmod(0o777)  # the Ray pods write as uid 1000
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": TRAIL_PV},
          "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteMany"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "hostPath": {"path": str(TRAIL_HOST_PATH), "type": "Directory"},
                   "claimRef": {"namespace": NAMESPACE, "name": "finserve-audit"}}}
    run(tool("kubectl"), "apply", "-f", "-", input=yaml.safe_dump(pv))


@pytest.fixture(scope="session")
def release(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart installed in a fresh namespace with its default values, the image and a
    caller's key hash (docs/kubernetes.md sections 3-4; the chart generates the helm-test key
    and the audit token key), waited on with `finserve rollout status`. Uninstalled, and the
    namespace deleted, at the end of the session."""
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait", timeout=600)
    kubectl("create", "namespace", NAMESPACE)
    trail_volume()
    repo, tag = image()
    key, key_values = _caller_key(tmp_path_factory.mktemp("keys"))
    rel = Release(NAMESPACE, RELEASE, key, repo, tag)
    started = time.monotonic()
    try:
        helm("install", RELEASE, str(CHART), "-n", NAMESPACE, *rel.image_sets(),
             "-f", str(key_values), timeout=600)
        wait_until("the release rolled out (finserve rollout status exit 0)",
                   lambda: run(finserve(), "rollout", "status", "-n", NAMESPACE, "--release",
                               RELEASE, check=False).returncode == 0, timeout=1500, interval=10)
        print(f"\n[e2e] installed and rolled out in {time.monotonic() - started:.0f}s")
        yield rel
    finally:
        if not os.environ.get("FINSERVE_E2E_KEEP"):
            run(tool("helm"), "uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False,
                timeout=600)
            kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false")
            kubectl("delete", "pv", TRAIL_PV, "--ignore-not-found", "--wait=false")
