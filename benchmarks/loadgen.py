"""wrk as the load generator: one JSON body POSTed over keep-alive connections."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

LUA = Path(__file__).with_name("post.lua")
INSTALL_HINT = "wrk is missing: install it with `apt-get update && apt-get install -y wrk`"


def require_wrk() -> str:
    """wrk's version line; exits with how to install it when it is missing."""
    if shutil.which("wrk") is None:
        sys.exit(INSTALL_HINT)
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def request_headers(body: Path) -> dict[str, str]:
    """The headers a body needs besides its JSON content type: kept beside it, in
    ``<body>.headers.json``, by whoever wrote a body that is not plain JSON."""
    sidecar = body.with_name(body.name + ".headers.json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def wrk(url: str, body: Path, connections: int, seconds: float, warmup: float = 0.0,
        threads: int = 1) -> dict[str, float | int]:
    """Run wrk (after an unmeasured warm-up at the same concurrency); counts, errors and
    latency percentiles in ms. Latencies of requests slower than the run are not seen."""
    assert url.startswith("http://127.0.0.1:"), "only 127.0.0.1 is a target"
    if warmup > 0:
        _run(url, body, connections, warmup, threads)
    raw = _run(url, body, connections, seconds, threads)
    load_after = os.getloadavg()[0]
    seconds_run = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = raw["requests"] - raw["status"]
    return {
        "requests": raw["requests"],
        "rps": ok / seconds_run,
        "p50_ms": raw["p50_us"] / 1e3,
        "p95_ms": raw["p95_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "mean_ms": raw["mean_us"] / 1e3,
        "errors": errors,
        "errors_by_kind": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")
                           if raw[k]},
        "load1_after": round(load_after, 2),
    }


def _run(url: str, body: Path, connections: int, seconds: float,
         threads: int) -> dict[str, float]:
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{int(seconds)}s",
           "--timeout", f"{max(10, int(seconds))}s", "-s", str(LUA), url, "--", str(body),
           *(f"{k}: {v}" for k, v in request_headers(body).items())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"wrk gave no summary: {out.stdout}\n{out.stderr}")
