"""A real Prometheus for the reliability tier (Debian's package: /usr/bin/prometheus and
promtool): a process of its own with its own data folder and loopback port, scraping its
targets every second and evaluating its rule files; never the package's service."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deployments.deploy import free_port
from tests.integration.conftest import wait_for

INSTALL_HINT = ("install Debian's package: `apt-get install -y prometheus` "
                "(`make reliability` does: tools/install_prometheus.sh)")


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fails (never skips) without it."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run promtool in ``cwd``; stdout and stderr are kept."""
    return subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


class Prometheus:
    """A running Prometheus's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """The JSON answer of ``path`` (errors are answers too: status "error")."""
        return httpx.get(f"{self.url}{path}", params=params, timeout=30).json()

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query now: the API's answer (status, data or errorType and error)."""
        return self.get("/api/v1/query", query=expr)

    def series(self, expr: str) -> tuple[int, int]:
        """(series returned, of them with a finite value) by an instant query that must
        succeed (AssertionError with Prometheus's error otherwise)."""
        answer = self.query(expr)
        assert answer["status"] == "success", f"{answer.get('errorType')}: {answer.get('error')}"
        data = answer["data"]
        if data["resultType"] in ("scalar", "string"):
            samples = [data["result"]]
        elif data["resultType"] == "vector":
            samples = [s["value"] for s in data["result"]]
        else:  # matrix
            samples = [v for s in data["result"] for v in s["values"][-1:]]
        finite = sum(1 for _, v in samples if _finite(v))
        return len(samples), finite


def _finite(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def config(targets: list[str], labels: dict[str, str], job: str, rule_files: list[Path],
           scrape_s: float) -> dict[str, Any]:
    """A Prometheus configuration scraping ``targets`` (Ray's /metrics) as ``job``, each
    sample given the static target ``labels``."""
    every = f"{scrape_s:g}s"
    return {
        "global": {"scrape_interval": every, "scrape_timeout": every,
                   "evaluation_interval": every},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                            "static_configs": [{"targets": targets, "labels": labels}]}],
    }


@contextmanager
def prometheus(folder: Path, targets: list[str], labels: dict[str, str], job: str,
               rule_files: list[Path], scrape_s: float = 1.0) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port with its data in ``folder``; stopped after."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config(targets, labels, job, rule_files, scrape_s)))
    port = free_port()
    log_file = folder / "prometheus.log"
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config_file}",
             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited ({process.returncode}): "
                        f"{log_file.read_text()[-2000:]}", pytrace=False)
        try:
            return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=60)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
