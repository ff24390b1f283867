"""tools/install_k8s_tools.py puts working helm and kubectl binaries into a bin dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.chartlib import REPO

pytestmark = pytest.mark.chart

SCRIPT = REPO / "tools" / "install_k8s_tools.py"


def install(*args: str, path: str | None = None) -> str:
    env = {**os.environ, "PATH": path if path is not None else os.environ.get("PATH", "")}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_installs_helm_and_kubectl_once_and_they_run(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    first = install("--bin-dir", str(bin_dir))
    assert f"helm: installed {bin_dir / 'helm'}" in first
    assert f"kubectl: installed {bin_dir / 'kubectl'}" in first
    for tool in ("helm", "kubectl"):
        assert os.access(bin_dir / tool, os.X_OK)
    version = subprocess.run([str(bin_dir / "helm"), "version", "--short"], capture_output=True,
                             text=True, check=True).stdout
    assert version.startswith("v4.")
    kubectl = subprocess.run([str(bin_dir / "kubectl"), "version", "--client"],
                             capture_output=True, text=True, check=True).stdout
    assert "v1.35" in kubectl
    again = install("--bin-dir", str(bin_dir))
    assert f"helm: {bin_dir / 'helm'} is up to date" in again
    assert "helm: installed" not in again and "kubectl: installed" not in again


def test_if_missing_skips_a_tool_already_on_path(tmp_path: Path) -> None:
    on_path = tmp_path / "path"
    on_path.mkdir()
    fake = on_path / "kubectl"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    out = install("--bin-dir", str(tmp_path / "bin"), "--if-missing", path=str(on_path))
    assert f"kubectl: found on PATH at {fake}; skipped (--if-missing)" in out
    assert "helm: installed" in out
    assert not (tmp_path / "bin" / "kubectl").exists()


def test_an_unknown_tool_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "terraform"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "unknown tool(s) ['terraform']" in proc.stderr
