"""The helm commands a rollout needs, run as subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

# How helm and client-go word an API server that is down or restarting.
_TRANSIENT_HELM = ("connection refused", "kubernetes cluster unreachable", "i/o timeout",
                   "tls handshake timeout", "connection reset by peer", "no route to host",
                   "the server is currently unable to handle the request", "unexpected eof",
                   "http2: client connection lost", "context deadline exceeded",
                   "etcdserver: request timed out", "too many requests")


# Helm 4 applies server-side. KubeRay updates the RayService once (adding its finalizer) and
# so co-owns fields Helm renders, the whole worker group list among them (an atomic list):
# any change to a worker group (a new image, resources) conflicts unless Helm takes the
# fields back. Helm is the spec's owner; KubeRay writes only defaults there.
FORCE_CONFLICTS = ("--force-conflicts",)


def default_helm() -> str:
    """helm on PATH, else the one ``make tools`` put beside this interpreter."""
    found = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
    return found or "helm"


class HelmError(RuntimeError):
    """helm exited non-zero; the message is its output."""

    @property
    def transient(self) -> bool:
        """Whether helm failed because the API server did not answer (worth retrying)."""
        text = str(self).lower()
        return any(marker in text for marker in _TRANSIENT_HELM)


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
        args = ["upgrade", "--install", release, chart, "--reset-then-reuse-values",
                *FORCE_CONFLICTS]
        for file in values_files:
            args += ["--values", file]
        for item in set_values:
            args += ["--set", item]
        self.run(*args)

    def history(self, release: str) -> list[dict[str, Any]]:
        """Revisions (revision, updated, status, chart, app_version, description); empty
        when the release does not exist."""
        try:
            return json.loads(self.run("history", release, "--output", "json") or "[]")
        except HelmError as exc:
            if "not found" in str(exc):
                return []
            raise

    def rollback(self, release: str, revision: int) -> None:
        self.run("rollback", release, str(revision), *FORCE_CONFLICTS)

    def values(self, release: str) -> dict[str, Any]:
        """The release's computed values (chart defaults included)."""
        return json.loads(self.run("get", "values", release, "--all", "--output", "json"))

    def rayservice_name(self, release: str) -> str:
        """Name of the RayService in the release's manifest."""
        for doc in yaml.safe_load_all(self.run("get", "manifest", release)):
            if doc and doc.get("kind") == "RayService":
                return doc["metadata"]["name"]
        raise HelmError(f"release {release} has no RayService")
