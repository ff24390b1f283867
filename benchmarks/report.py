"""docs/benchmarks.md and the throughput-vs-p99 plots from one run's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
#: hand-written: each serving-path change's prediction and measured outcome
LEVERS = Path(__file__).resolve().parent / "levers.md"


def _levers() -> list[str]:
    """benchmarks/levers.md, carried into every generated page."""
    return [*LEVERS.read_text().rstrip().splitlines(), ""] if LEVERS.exists() else []
SYSTEMS = {
    "a-keras-predict": "(a) seed: keras predict",
    "b-fastapi-signature": "(b) FastAPI + signature",
    "finserve-v2": "FinServe V2",
    "finserve-task": "FinServe task route",
    "finserve-v2bin": "FinServe V2, binary tensors",
    "finserve-grpc": "FinServe gRPC (ModelInfer, raw contents)",
    "finserve-default-v2": "FinServe V2, Ray's Python proxy",
    "finserve-default-task": "FinServe task, Ray's Python proxy",
    "finserve-haproxy-v2": "FinServe V2, HAProxy (beside the Python proxy run)",
    "finserve-haproxy-task": "FinServe task, HAProxy (beside the Python proxy run)",
    "floor-v2": "Ray Serve floor (no-op app), V2 path",
    "floor-task": "Ray Serve floor (no-op app), task path",
    "kserve": "KServe ModelServer, V2",
    "mlserver": "MLServer, V2",
}
C32, C1 = "single c=32", "single c=1"
#: the load generators' own ceilings (wrk's, and the gRPC one's: part grpc)
CEILINGS = ("wrk-ceiling", "grpc-ceiling")
#: issue 17's peers (their part and system name in a run) and the points it compares at:
#: models, instances per request, connections
PEERS = {"kserve": "KServe", "mlserver": "MLServer"}
PEER_MODELS, PEER_ROWS, PEER_CONNECTIONS = ("fraud", "credit", "sentiment"), (1, 64), (1, 8, 32)
#: issue 17's target (iii) is twice these: FinServe V2's instances/s, 64 instances per
#: request at c=32, in the full run at commit 57afd96 (benchmarks/results/2026-12-02-57afd96.json)
BATCHED_BEFORE = {"fraud": 67_921, "credit": 56_574}
BATCHED_BEFORE_COMMIT = "57afd96"
#: issue 17's target (i): FinServe's p99 at most this times the best peer's
P99_SLACK = 1.10
PEER_REQUIREMENTS = ROOT / "benchmarks" / "peers"


def _f(x: float | None, digits: int = 1) -> str:
    """A figure with thousands separators, or "-" when missing."""
    return "-" if x is None else f"{x:,.{digits}f}"


def _ok(ok: bool | None) -> str:
    """A target's verdict: PASS, FAIL or n/a (not measured)."""
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


class Points:
    """A run's points, looked up by system, model and scenario."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        self.index = {(p["system"], p["model"], p["scenario"]): p for p in points}

    def get(self, system: str, model: str, scenario: str) -> dict[str, Any] | None:
        return self.index.get((system, model, scenario))


def targets(r: dict[str, Any], pts: Points, models: list[str]) -> list[str]:
    """The issue's targets as pass/fail lines."""
    return [*_single_request_targets(pts), *_batched_targets(r, pts, models),
            *_added_latency_targets(r, pts, models), _cold_start_target(r),
            _autoscaling_target(r)]


def _single_request_targets(pts: Points) -> list[str]:
    """Sentiment, 1 instance, c=32: FinServe against (a) and (b), and its p99."""
    out = []
    a = pts.get("a-keras-predict", "sentiment", C32)
    b = pts.get("b-fastapi-signature", "sentiment", C32)
    for route in ("v2", "task"):
        fs = pts.get(f"finserve-{route}", "sentiment", C32)
        if not fs:
            continue
        name = SYSTEMS[f"finserve-{route}"]
        if a and a["rps"] > 0:
            ratio = fs["rps"] / a["rps"]
            out.append(f"- {_ok(ratio >= 10)} sentiment, 1 instance, c=32, {name}: "
                       f"{_f(fs['rps'])} req/s = {ratio:.1f}x the seed design's "
                       f"{_f(a['rps'])} (target ≥ 10x)")
        elif a:
            out.append(f"- {_ok(fs['rps'] > 0)} sentiment, 1 instance, c=32, {name}: "
                       f"{_f(fs['rps'])} req/s; the seed design answered nothing within the "
                       "run (target ≥ 10x)")
        if b:
            out.append(f"- {_ok(fs['rps'] >= b['rps'])} sentiment, 1 instance, c=32, {name}: "
                       f"{_f(fs['rps'])} req/s vs the single-process app's {_f(b['rps'])} "
                       f"({fs['rps'] / b['rps']:.2f}x; target ≥ 1x)")
        out.append(f"- {_ok(fs['p99_ms'] < 100 and fs['errors'] == 0)} sentiment, 1 instance, "
                   f"c=32, {name}: p99 {_f(fs['p99_ms'])} ms, {fs['errors']} errors "
                   "(target < 100 ms)")
    return out


def _batched_targets(r: dict[str, Any], pts: Points, models: list[str]) -> list[str]:
    """Per model and route, the best batched point as a share of the in-process limit."""
    out = []
    batched = [s for s in r["scenarios"] if s["instances"] > 1]
    for m in models:
        limit = r["inprocess"].get(m, {}).get("best_instances_per_s")
        for route in ("v2", "task", "v2bin"):
            found = [p for p in (pts.get(f"finserve-{route}", m, s["name"]) for s in batched)
                     if p]
            if not found or not limit:
                continue
            best = max(found, key=lambda p: p["instances_per_s"])
            share = best["instances_per_s"] / limit
            others = "; ".join(f"c={p['connections']}: {p['instances_per_s'] / limit:.0%}"
                               for p in found if p is not best)
            floor = pts.get(f"floor-{route}", m, best["scenario"])
            # issue 17 retired this target for the models its target (iii) covers
            verdict = ("retired (issue 17: the peers are the bar)" if m in BATCHED_BEFORE
                       else _ok(share >= 0.5 and best["errors"] == 0))
            out.append(f"- {verdict} {m}, "
                       f"{best['instances']} instances per request, "
                       f"{SYSTEMS['finserve-' + route]}, best at c={best['connections']}: "
                       f"{_f(best['instances_per_s'], 0)} instances/s = {share:.0%} of the "
                       f"in-process limit {_f(limit, 0)}, p99 {_f(best['p99_ms'])} ms "
                       f"(target ≥ 50%)" + (f" ({others})" if others else "")
                       + (f"; Ray Serve's floor for the same requests: "
                          f"{floor['instances_per_s'] / limit:.0%} of the limit"
                          if floor and floor["requests"] else ""))
    return out


def _added_latency_targets(r: dict[str, Any], pts: Points, models: list[str]) -> list[str]:
    """Per model and route, the p50 FinServe adds at c=1 to in-process preprocess + call."""
    out = []
    for m in models:
        base = r["inprocess"].get(m, {}).get("batch1_pre_call_p50_ms")
        for route in ("v2", "task"):
            fs = pts.get(f"finserve-{route}", m, C1)
            if fs and base is not None:
                added = fs["p50_ms"] - base
                out.append(f"- {_ok(added <= 3)} {m}, c=1, {SYSTEMS['finserve-' + route]}: "
                           f"p50 {_f(fs['p50_ms'], 2)} ms - in-process preprocess+call "
                           f"{_f(base, 2)} ms = {_f(added, 2)} ms added (target ≤ 3 ms)")
    return out


def _cold_start_target(r: dict[str, Any]) -> str:
    """FinServe's start to its first answer, with the first failed start if any."""
    info = r["systems"].get("finserve", {})
    cold = info.get("first_answer_s")
    failed = len(info.get("failed_attempts", []))
    return (f"- {_ok(None if cold is None else cold < 30 and not failed)} cold start, "
            "`finserve serve --no-train` (deps installed, models trained) to the first "
            f"answer on the sentiment task route: {_f(cold)} s (target < 30 s)"
            + (f", after {failed} failed start(s): "
               f"{_one_line(info['failed_attempts'][0]['error'])}" if failed else ""))


def _autoscaling_target(r: dict[str, Any]) -> str:
    """The autoscaling load step: when the second replica was added and serving."""
    step = r.get("autoscale") or {}
    serving, load = step.get("serving_s"), step.get("load") or {}
    return (f"- {_ok(None if serving is None else serving <= 10 and not load.get('errors'))}"
            f" autoscaling, sentiment's Model stage from 1 replica "
            f"(`{json.dumps(step.get('autoscaling'))}`), load step after "
            f"{step.get('idle_before_s', '-')} s idle to "
            f"{step.get('connections', '-')} connections of 64 instances: the second "
            f"replica added after {_f(step.get('added_s'))} s and serving after "
            f"{_f(serving)} s, {load.get('errors', '-')} errors (target ≤ 10 s)"
            + (f": {_one_line(step['error'])}" if step.get("error") else ""))


class PeerRow(NamedTuple):
    """One of issue 17's points: FinServe V2's figures and each peer's that answered."""

    model: str
    rows: int
    connections: int
    finserve: dict[str, Any] | None
    peers: dict[str, dict[str, Any]]

    @property
    def where(self) -> str:
        return f"{self.model} rows={self.rows} c={self.connections}"

    def best(self) -> dict[str, Any]:
        """The peer with the most requests/s here."""
        return max(self.peers.values(), key=lambda p: p["rps"])


def peer_rows(r: dict[str, Any], pts: Points) -> list[PeerRow]:
    """Issue 17's points that this run has scenarios for, in the table's order."""
    out = []
    for m in (x for x in PEER_MODELS if x in r["models"]):
        for rows in PEER_ROWS:
            for c in PEER_CONNECTIONS:
                sc = next((s["name"] for s in r["scenarios"]
                           if s["instances"] == rows and s["connections"] == c), None)
                if sc is None:
                    continue
                peers = {p: pt for p in PEERS if (pt := pts.get(p, m, sc)) and pt["requests"]}
                out.append(PeerRow(m, rows, c, pts.get("finserve-v2", m, sc), peers))
    return out


def peer_targets(r: dict[str, Any], pts: Points) -> list[str]:
    """Issue 17's targets as pass/fail lines: (i) throughput and p99 at every point,
    (ii) p50 at c=1, (iii) batched fraud and credit against the run at 57afd96."""
    compared = [x for x in peer_rows(r, pts) if x.finserve and x.peers]
    return [_peer_throughput_target(compared),
            _peer_latency_target([x for x in compared if x.connections == 1]),
            *(_batched_growth_target(pts, m) for m in BATCHED_BEFORE if m in r["models"])]


def _peer_throughput_target(rows: list[PeerRow]) -> str:
    """(i): FinServe's requests/s at least the best peer's, its p99 within P99_SLACK."""
    misses = []
    for x in rows:
        fs, best = x.finserve or {}, x.best()
        rps, p99 = fs["rps"] / best["rps"], fs["p99_ms"] / best["p99_ms"]
        if rps < 1 or p99 > P99_SLACK:
            misses.append(f"{x.where}: {rps:.2f}x req/s, {p99:.2f}x p99")
    head = (f"FinServe V2 against the best peer at each point: requests/s ≥ the peer's and "
            f"p99 ≤ {P99_SLACK:.2f}x its p99")
    if not rows:
        return f"- {_ok(None)} {head}: no point with both measured in this run"
    return (f"- {_ok(not misses)} {head}: {len(rows) - len(misses)} of {len(rows)} points "
            "meet it" + (f"; not at {'; '.join(misses)}" if misses else ""))


def _peer_latency_target(rows: list[PeerRow]) -> str:
    """(ii): FinServe's p50 at c=1 at most the lowest peer p50."""
    cells, ok = [], True
    for x in rows:
        fs, low = (x.finserve or {})["p50_ms"], min(p["p50_ms"] for p in x.peers.values())
        ok &= fs <= low
        cells.append(f"{x.model} {x.rows}: {_f(fs, 2)} vs {_f(low, 2)} ms")
    head = "c=1, FinServe V2's p50 ≤ the best peer's (the lowest)"
    if not rows:
        return f"- {_ok(None)} {head}: not measured in this run"
    return f"- {_ok(ok)} {head}: " + "; ".join(cells)


def _batched_growth_target(pts: Points, model: str) -> str:
    """(iii): 64-instance requests at c=32, twice FinServe's instances/s at 57afd96."""
    fs = pts.get("finserve-v2", model, "batch64 c=32")
    before, got = BATCHED_BEFORE[model], fs["instances_per_s"] if fs else None
    times = "-" if got is None else f"{got / before:.2f}x"
    return (f"- {_ok(None if got is None else got >= 2 * before)} {model}, 64 instances per "
            f"request, c=32, FinServe V2: {_f(got, 0)} instances/s = {times} the "
            f"{_f(before, 0)} of the run at {BATCHED_BEFORE_COMMIT} (target ≥ 2x)")


def _peer_cell(p: dict[str, Any] | None) -> str:
    """Requests/s with the p99 in ms in parentheses, or "-"."""
    return "-" if not p else f"{_f(p['rps'])} ({_f(p['p99_ms'])})"


def _peer_table(r: dict[str, Any], pts: Points) -> list[str]:
    """Issue 17's table: FinServe V2 and each peer at every point, then why any peer
    figure is missing, and the peers' settings and pinned versions."""
    lines = ["", "## Against KServe and MLServer (issue 17)", "", *PEERS_INTRO, ""]
    rows = peer_rows(r, pts)
    if not any(x.peers for x in rows):
        lines.append("No peer was measured in this run (parts `kserve`, `mlserver`).")
    else:
        lines += ["| model | rows | c | FinServe (V2) | KServe | MLServer | FinServe / best "
                  "peer |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for x in rows:
            ratio = (f"{x.finserve['rps'] / x.best()['rps']:.2f}x"
                     if x.finserve and x.peers and x.best()["rps"] else "-")
            lines.append(f"| {x.model} | {x.rows} | {x.connections} | "
                         f"{_peer_cell(x.finserve)} | "
                         + " | ".join(_peer_cell(x.peers.get(p)) for p in PEERS)
                         + f" | {ratio} |")
    return [*lines, "", *_peer_notes(r), *_peer_pins()]


def _peer_notes(r: dict[str, Any]) -> list[str]:
    """Per peer: its settings and versions in this run, or why it has no figures; each
    model it was not timed on, and why."""
    notes = []
    for p, label in PEERS.items():
        info = r["systems"].get(p)
        if p not in r.get("parts", []):
            notes.append(f"- {label}: not in this run (part `{p}`).")
        elif not info or info.get("error"):
            why = _one_line(info.get("error", "")) if info else "not started"
            notes.append(f"- {label}: not measured: {why}")
        else:
            versions = ", ".join(f"{k} {v}" for k, v in
                                 info.get("env", {}).get("versions", {}).items())
            notes.append(f"- {label} ({versions}): `{json.dumps(info.get('settings'))}`")
            notes += [f"- {label}, {m}: not timed: {_one_line(why)}"
                      for m, why in info.get("answers", {}).items() if why]
    return notes


def _peer_pins() -> list[str]:
    """How the peers' venvs are made, and their pinned requirements as the files say."""
    lines = ["", *PEERS_ENVS, ""]
    for path in sorted(PEER_REQUIREMENTS.glob("requirements-*.txt")):
        pins = [x.strip() for x in path.read_text().splitlines()
                if x.strip() and not x.lstrip().startswith("#")]
        lines.append(f"- `benchmarks/peers/{path.name}`: " + ", ".join(f"`{x}`" for x in pins))
    return lines


#: what the peers are and how they are compared; the first lines of the issue 17 section
PEERS_INTRO = [
    "KServe's ModelServer and MLServer serving the same SavedModels through FinServe's "
    "own pipeline (`benchmarks/pipeline.py`: the task's input check, preprocessing, the "
    "signature, postprocessing), each started beside FinServe and measured interleaved "
    "with it, V2 JSON route only. Before a peer is timed on a model, its V2 answers to the "
    "1- and 64-instance bodies must equal FinServe's (output names, datatypes and shapes; "
    "strings equal, numbers within 1e-5 relative); a peer whose answer differs is not timed "
    "on that model. Cells: requests/s (p99 ms). *rows*: instances per request; the best "
    "peer is the one with the most requests/s at the point.",
]
#: how the peers' environments are made; before the pinned requirements
PEERS_ENVS = [
    "Each peer runs from a virtual environment of its own, `benchmarks/.peers/<peer>/` "
    "(git-ignored), that the suite makes on first use (`python -m venv`, then `pip install "
    "-r` the peer's pinned requirements, logged to `benchmarks/.peers/<peer>-install.log`) "
    "and makes again when the requirements file changes (its sha256 is stamped in the "
    "venv); FinServe's own venv is never changed. The peer imports FinServe's `serving` "
    "package from the repository (`PYTHONPATH`), so each file pins the few libraries it "
    "needs at FinServe's versions. A peer whose venv cannot be made has no figures, the "
    "notes above say why, and the rest of the suite runs.",
]


def plots(r: dict[str, Any], pts: Points, models: list[str], stem: str) -> list[Path]:
    """One PNG per model: throughput against p99 latency per system, c = 1, 8, 32, 128."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    paths = []
    for m in models:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        for system, label in SYSTEMS.items():
            series = [p for c in (1, 8, 32, 128)
                      if (p := pts.get(system, m, f"single c={c}")) and p["rps"] > 0]
            if not series:
                continue
            ax.plot([p["rps"] for p in series], [p["p99_ms"] for p in series], marker="o",
                    label=label)
            for p in series:
                ax.annotate(f"c{p['connections']}", (p["rps"], p["p99_ms"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        limit = r["inprocess"].get(m, {})
        if limit:
            ax.axvline(1000 / limit["batch1_pre_call_p50_ms"], ls="--", c="grey",
                       label="in-process: 1 / (preprocess + call p50)")
        ax.set(xscale="log", yscale="log", xlabel="throughput (requests/s, 1 instance each)",
               ylabel="p99 latency (ms)", title=f"{m}: throughput vs p99 ({r['mode']} run)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        path = ROOT / "benchmarks" / "results" / f"{stem}-{m}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _ports(ports: dict[Any, bool] | None) -> str:
    """'8000 free' per port (keys are ints in a run, strings once read back from JSON)."""
    if not ports:
        return "-"
    return ", ".join(f"{port} {'free' if free else 'IN USE'}" for port, free in ports.items())


def _one_line(error: str) -> str:
    """First and last lines of an error, fit for a table cell."""
    lines = [x.strip(" │╭╰─") for x in error.splitlines() if x.strip(" │╭╰─")]
    if not lines:
        return ""
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return text.replace("|", "/")[:240]


def _load(p: dict[str, Any]) -> str:
    """The 1-minute load average before and after a point."""
    return f"{p.get('load1_before', 0):.0f}-{p.get('load1_after', 0):.0f}"


def _headroom(ceiling: dict[str, Any] | None, points: list[dict[str, Any]]) -> str:
    """How far wrk's ceiling is above the fastest system measured."""
    best = max((p["rps"] for p in points if p["system"] not in CEILINGS), default=0.0)
    if not ceiling or not best:
        return "."
    return (f"; {ceiling['rps'] / best:.0f}x the fastest system below ({_f(best, 0)} req/s), "
            "so no figure here is the generator's limit.")


GRPC_INTRO = [
    "", "## gRPC", "",
    "FinServe's Open Inference Protocol over gRPC (`inference.GRPCInferenceService/"
    "ModelInfer` on `--grpc-port`, through HAProxy's gRPC frontend to the gateway "
    "replicas' own gRPC servers), the request as tritonclient.grpc sends it (the tensor "
    "in `raw_input_contents`) and every output answered in `raw_output_contents`, beside "
    "the same server's HTTP V2 routes in the same run, interleaved point by point (part "
    "`grpc`). The load comes from `benchmarks/grpcload.py` (grpcio, asyncio, closed loop: "
    "c calls in flight, each on a connection of its own); its ceiling is measured alone "
    "against a trivial gRPC server answering a message the request's size at once.", ""]


def _grpc_table(r: dict[str, Any], pts: Points) -> list[str]:
    """gRPC beside HTTP V2 (JSON, and binary tensors for batches), and the gRPC load
    generator's own ceiling, per model and scenario."""
    rows = []
    for m in r["models"]:
        for sc in (s["name"] for s in r["scenarios"]):
            g = pts.get("finserve-grpc", m, sc)
            if not g:
                continue
            cells = []
            for system in ("finserve-v2", "finserve-v2bin", "grpc-ceiling"):
                p = pts.get(system, m, sc)
                cells += [_f(p["rps"]) if p else "-", _f(p["p99_ms"], 2) if p else "-"]
            err = f"{g['errors']} {g['errors_by_kind']}" if g["errors"] else "0"
            rows.append(f"| {m} | {sc} | {_f(g['rps'])} | {_f(g['instances_per_s'], 0)} | "
                        f"{_f(g['p50_ms'], 2)} | {_f(g['p99_ms'], 2)} | {err} | "
                        + " | ".join(cells) + " |")
    if not rows:
        return [*GRPC_INTRO, "Not measured in this run (part `grpc`)."]
    return [*GRPC_INTRO,
            "| model | scenario | gRPC req/s | instances/s | p50 ms | p99 ms | errors | "
            "V2 JSON req/s | p99 ms | V2 binary req/s | p99 ms | gRPC generator's ceiling "
            "req/s | p99 ms |",
            "| --- | --- |" + " ---: |" * 11, *rows]


def _floor_table(r: dict[str, Any], pts: Points, models: list[str]) -> list[str]:
    """Batched throughput of the no-op app on FinServe's Ray Serve set-up, against the
    model's limit and FinServe's."""
    lines = ["", "## Ray Serve's floor (batched requests)", "",
             "A no-op application served by `finserve serve` from the same Serve config "
             "(`benchmarks/floor.py`: HAProxy ingress and its tuning, the gateway's replicas, "
             "CPUs, `max_ongoing_requests` and logging) that reads each request and answers "
             "the bytes FinServe answered to it: what Ray Serve's HTTP path alone costs on "
             "this machine, so the share of the limit no application served this way can "
             "exceed. Run alone after FinServe stopped.", ""]
    rows = []
    for m in models:
        limit = r["inprocess"].get(m, {}).get("best_instances_per_s")
        for route in ("v2", "task"):
            for sc in (s["name"] for s in r["scenarios"] if s["instances"] > 1):
                floor, fs = pts.get(f"floor-{route}", m, sc), pts.get(f"finserve-{route}", m, sc)
                if not floor or not floor["requests"]:
                    continue
                share = f"{floor['instances_per_s'] / limit:.0%}" if limit else "-"
                ratio = (f"{fs['instances_per_s'] / floor['instances_per_s']:.0%}" if fs
                         else "-")
                rows.append(f"| {m} | {route} | {sc} | {_f(floor['rps'])} | "
                            f"{_f(floor['instances_per_s'], 0)} | {_f(floor['p99_ms'], 2)} | "
                            f"{share} | {_f(fs['instances_per_s'], 0) if fs else '-'} | "
                            f"{ratio} |")
    if not rows:
        return [*lines, "Not measured in this run (part `floor`)."]
    return [*lines, "| model | route | scenario | floor req/s | floor instances/s | floor p99 "
            "ms | floor ÷ in-process limit | FinServe instances/s | FinServe ÷ floor |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |", *rows]


def _cpu_table(r: dict[str, Any], pts: Points, models: list[str]) -> list[str]:
    """Where a batched request's CPU goes at c=32, from this run's figures."""
    cores = r["machine"]["cores"]
    batched = [s for s in r["scenarios"] if s["instances"] > 1 and s["connections"] == 32]
    if not batched:
        return []
    sc, n = batched[0]["name"], batched[0]["instances"]
    lines = ["", f"## Where a {n}-instance request's CPU goes (c=32)", "",
             f"Machine CPU per request is {cores} cores ÷ requests/s (every core is busy at "
             "c=32). *App alone* is the gateway app built as a replica builds it and driven "
             "through its ASGI interface in a process of its own, 32 requests at a time "
             "(`python -m benchmarks.appcpu`: no HTTP, no Serve replica; its process CPU "
             "time, the signature's included). The signature's share is "
             f"{cores} cores * {n} ÷ the in-process limit; the target allows twice that per "
             "request.", "",
             "| model | route | FinServe (ms) | app alone (ms) | Ray Serve floor (ms) | "
             "signature at its limit (ms) | the target's budget (ms) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    rows = []
    for m in models:
        limit = r["inprocess"].get(m, {}).get("best_instances_per_s")
        model_ms = 1000 * cores * n / limit if limit else None
        for route in ("v2", "task"):
            fs, floor = pts.get(f"finserve-{route}", m, sc), pts.get(f"floor-{route}", m, sc)
            alone = (r.get("app_alone") or {}).get(f"{m}/{route}", {})
            if not fs or not fs["rps"]:
                continue
            floor_ms = 1000 * cores / floor["rps"] if floor and floor["rps"] else None
            rows.append(f"| {m} | {route} | {_f(1000 * cores / fs['rps'], 2)} | "
                        f"{_f(alone.get('cpu_ms_per_request'), 2)} | {_f(floor_ms, 2)} | "
                        f"{_f(model_ms, 2)} | {_f(model_ms and 2 * model_ms, 2)} |")
    return lines + rows if rows else []


def write_report(r: dict[str, Any], json_path: Path, doc: Path) -> None:
    """Write ``doc`` (docs/benchmarks.md) and the run's plots from the results ``r`` that
    were stored in ``json_path``."""
    pts = Points(r["points"])
    models = r["models"]
    lines = [
        *_run_summary(r, json_path),
        "",
        "## Targets (issue 6)",
        "",
        *targets(r, pts, models),
        "",
        "## Targets (issue 17)",
        "",
        *peer_targets(r, pts),
        "",
        *_levers(),
        *SYSTEMS_SECTION,
        *_model_limit_table(r),
        *_ratio_table(r, pts, models),
        *_peer_table(r, pts),
        *_model_tables(r, pts, models),
        *_grpc_table(r, pts),
        *_floor_table(r, pts, models),
        *_cpu_table(r, pts, models),
        *_proxy_table(pts),
        *_cold_start_history(json_path.parent),
        *_lifecycle_table(r),
        *_plots_section(r, pts, models, json_path.stem),
        *METHOD_SECTION,
    ]
    doc.write_text("\n".join(lines))


def _run_summary(r: dict[str, Any], json_path: Path) -> list[str]:
    """The page's title, introduction and the run's circumstances: mode, machine, load and
    the load generator's ceiling."""
    mach = r["machine"]
    ceiling = max((p for p in r["points"] if p["system"] == "wrk-ceiling"),
                  key=lambda p: p["rps"], default=None)
    rel = json_path.relative_to(ROOT)
    return [
        "# Benchmarks",
        "",
        "FinServe against the ways a model could be served without it, side by side in one "
        "run on the same model files. `make bench` (`.venv/bin/python -m benchmarks.run`) "
        "runs the full suite; `--quick` runs it with 3 s points. This page is written by the "
        "run; the raw figures are in the JSON file named below.",
        "",
        f"- **run**: {r['mode']} mode, {r['date']}, commit `{r['commit']}`"
        f"{' (uncommitted changes)' if r['dirty'] else ''}, {r['total_s']:.0f} s in all; "
        f"{r['seconds_per_point']} s per point after a {r['warmup_s']} s warm-up at the same "
        f"concurrency; raw results `{rel}`",
        f"- **machine**: {mach['cores']} cores, {mach['memory_gib']} GiB, {mach['cpu']}, "
        f"Python {mach['python']}, Linux {mach['kernel']}",
        f"- **load average** (1, 5, 15 min) at the start {r['load_start']}, at the end "
        f"{r['load_end']} (the suite's own servers and wrk count in it); each point also "
        "records the 1-minute load before and after it (column 'load' below).",
        f"- **load generator**: {r['wrk']}, 1 thread, `benchmarks/post.lua`; its ceiling "
        "against a trivial raw-asyncio responder in the same run: "
        + (f"{_f(ceiling['rps'], 0)} req/s at c={ceiling['connections']} "
           f"(p99 {_f(ceiling['p99_ms'], 2)} ms)" if ceiling else "not measured")
        + _headroom(ceiling, r["points"]),
    ]


#: what each system is; follows the levers, which end with a blank line
SYSTEMS_SECTION = [
    "## Systems",
    "",
    "| system | what answers |",
    "| --- | --- |",
    "| FinServe V2 / task route | `finserve serve --no-train` in a subprocess with a "
    "generated Serve config (deployments/serve.yaml's settings for these models, the "
    "benchmark store `benchmarks/.store`, audit trail on), as shipped: HAProxy ingress → "
    "gateway replicas running each model's Preprocess → Model (`@serve.batch`) → "
    "Postprocess in-process (`placement: gateway`). `POST /v2/models/{m}/infer`"
    " and `POST /v1/{m}/{route}` (task-route bodies from `tests/testdata`). |",
    "| FinServe V2, binary tensors | the same server, `POST /v2/models/{m}/infer` with "
    "the binary tensor data extension both ways, the body as Triton's HTTP client builds "
    "it (JSON header, then the raw tensor; every output asked for as binary); batched "
    "requests only. |",
    "| FinServe gRPC | the same server's `--grpc-port`: `ModelInfer` of "
    "`inference.GRPCInferenceService` with the tensor in `raw_input_contents` (as "
    "tritonclient.grpc sends it), loaded by `benchmarks/grpcload.py`; fraud only (part "
    "`grpc`). |",
    "| FinServe …, Ray's Python proxy | the same with `--proxy python` (Ray Serve's "
    "default proxy actor); sentiment, 1 instance per request only. |",
    "| (a) seed: keras predict | one uvicorn process, sync FastAPI endpoint "
    "`POST /v2/models/{m}/infer` (V2 body), task preprocess, `keras.Model.predict` per "
    "request on a Keras model of `keras.layers.TFSMLayer` wrapping the stored "
    "SavedModel's `serving_default`, task postprocess (benchmarks/baselines.py). |",
    "| (b) FastAPI + signature | the same app calling the SavedModel signature "
    "(`serving.training.load_signature`) instead of `predict`: a hand-written "
    "single-process server. No audit, auth or limits. |",
    "| (c) in-process | the signature called in the bench process, no HTTP, TensorFlow "
    "default threads; batch sizes 1-8,192 (powers of two). |",
    "| Ray Serve floor | a no-op app on FinServe's Ray Serve set-up answering FinServe's "
    "own answers (`benchmarks/floor.py`); batched requests only. |",
    "| KServe ModelServer, V2 | `kserve.ModelServer` with 2 uvicorn worker processes "
    "(`--workers 2`, one per core; each loads the models), a `kserve.Model` per model "
    "running FinServe's pipeline (`benchmarks/peers/kserve_server.py`) in its own venv; "
    "TensorFlow's threads per process as FinServe's replicas set them; its per-request "
    "latency log off (`--enable_latency_logging false`), its access log and timing trace "
    "as shipped (FinServe writes an access log too). Only on the models whose answers "
    "equal FinServe's. |",
    "| MLServer, V2 | `mlserver start` with `parallel_workers: 2` (one inference process "
    "per core) and adaptive batching (`max_batch_size`: FinServe's own per model, "
    "`max_batch_time`: 1 ms), a custom runtime running FinServe's pipeline "
    "(`benchmarks/peers/mlserver_runtime.py`) in its own venv; TensorFlow's threads as "
    "above; access log on (its default). Only on the models whose answers equal "
    "FinServe's. |",
]


def _model_limit_table(r: dict[str, Any]) -> list[str]:
    """(c): each model's best in-process rate and its batch-1 latencies."""
    lines = ["",
             "## The model's own limit (c)",
             "",
             "| model | best instances/s | at batch | batch-1 call p50 (ms) | batch-1 preprocess "
             "+ call p50 (ms) | + postprocess (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m, lim in r["inprocess"].items():
        lines.append(f"| {m} | {_f(lim['best_instances_per_s'], 0)} | {lim['best_batch']} | "
                     f"{_f(lim['batch1_call_p50_ms'], 2)} | "
                     f"{_f(lim['batch1_pre_call_p50_ms'], 2)} | "
                     f"{_f(lim['batch1_pre_call_post_p50_ms'], 2)} |")
    return lines


def _ratio_table(r: dict[str, Any], pts: Points, models: list[str]) -> list[str]:
    """FinServe's requests/s per model and scenario, divided by (a)'s and (b)'s."""
    lines = ["", "## FinServe as a ratio to each baseline (requests/s)", "",
             "| model | scenario | FinServe V2 req/s | ÷ (a) | ÷ (b) | FinServe task req/s "
             "| ÷ (a) | ÷ (b) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m in models:
        for sc in (s["name"] for s in r["scenarios"]):
            a = pts.get("a-keras-predict", m, sc)
            b = pts.get("b-fastapi-signature", m, sc)
            cells = []
            for route in ("v2", "task"):
                fs = pts.get(f"finserve-{route}", m, sc)
                cells.append(_f(fs["rps"]) if fs else "-")
                for base in (a, b):
                    ok = fs and base and base["rps"] > 0
                    cells.append(f"{fs['rps'] / base['rps']:.2f}x" if ok else "-")
            lines.append(f"| {m} | {sc} | " + " | ".join(cells) + " |")
    return lines


def _model_tables(r: dict[str, Any], pts: Points, models: list[str]) -> list[str]:
    """One table per model: every system's point in every scenario."""
    lines = []
    for m in models:
        lines += ["", f"## {m}", "",
                  "| system | scenario | req/s | instances/s | p50 ms | p95 ms | p99 ms | "
                  "errors | load |", "| --- | --- |" + " ---: |" * 7]
        for system, label in SYSTEMS.items():
            for sc in (s["name"] for s in r["scenarios"]):
                p = pts.get(system, m, sc)
                if p:
                    lines.append(_point_row(label, sc, p))
    return lines


def _point_row(label: str, scenario: str, p: dict[str, Any]) -> str:
    """One point's row in its model's table; a point without answers says so."""
    if not p["requests"]:
        return (f"| {label} | {scenario} | 0 | 0 | - | - | - | no answer within "
                f"the run; {p['errors']} errors | {_load(p)} |")
    err = f"{p['errors']} {p['errors_by_kind']}" if p["errors"] else "0"
    return (f"| {label} | {scenario} | {_f(p['rps'])} | "
            f"{_f(p['instances_per_s'], 0)} | {_f(p['p50_ms'], 2)} | "
            f"{_f(p['p95_ms'], 2)} | {_f(p['p99_ms'], 2)} | {err} | "
            f"{_load(p)} |")


def _proxy_table(pts: Points) -> list[str]:
    """Ray's Python proxy against the HAProxy ingress, sentiment, 1 instance per request."""
    lines = ["",
             "## Ray's Python proxy against the HAProxy ingress (sentiment, 1 instance)",
             "", "Two FinServe instances side by side (the shipped HAProxy one kept from the "
             "main comparison and one started with `--proxy python`), measured interleaved "
             "point by point.", ""]
    if not pts.get("finserve-haproxy-v2", "sentiment", C1):
        return [*lines, "Not measured in this run (`--haproxy`, on by default in full mode)."]
    lines += ["| route | c | Python proxy req/s | p50 | p99 | HAProxy req/s | p50 | p99 |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for route in ("v2", "task"):
        for c in (1, 8, 32, 128):
            d = pts.get(f"finserve-default-{route}", "sentiment", f"single c={c}")
            h = pts.get(f"finserve-haproxy-{route}", "sentiment", f"single c={c}")
            if d and h:
                lines.append(f"| {route} | {c} | {_f(d['rps'])} | {_f(d['p50_ms'], 2)} | "
                             f"{_f(d['p99_ms'], 2)} | {_f(h['rps'])} | "
                             f"{_f(h['p50_ms'], 2)} | {_f(h['p99_ms'], 2)} |")
    return lines


def _cold_start_history(results: Path) -> list[str]:
    """FinServe's cold start in every run stored in ``results``."""
    lines = ["", "## Cold start in every stored run", "",
             "`finserve serve --no-train` to the first 200 on the sentiment task route; it "
             "depends on the machine's load as much as on FinServe.", "",
             "| results file | mode | load at run start (1 min) | first answer (s) |",
             "| --- | --- | ---: | ---: |"]
    for q in sorted(results.glob("*.json")):
        run = json.loads(q.read_text())
        fs = run.get("systems", {}).get("finserve", {})
        if fs:
            mode = run["mode"] + ("" if run.get("audit", True) else ", no audit")
            lines.append(f"| `{q.name}` | {mode} | {run['load_start'][0]:.0f} | "
                         f"{_f(fs.get('first_answer_s'))} |")
    return lines


def _lifecycle_table(r: dict[str, Any]) -> list[str]:
    """How each system started and stopped, and what it left behind."""
    lines = ["", "## Start, stop and clean-up", "",
             "| system | load when started | first answer (s) | ready (s) | exit code | "
             "processes left and killed | ports free after stop | error |",
             "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for name, info in r["systems"].items():
        stop = info.get("stop", {})
        lines.append(f"| {name} | {_f(info.get('load1_at_start'), 0)} | "
                     f"{_f(info.get('first_answer_s'))} | {_f(info.get('ready_s'))} "
                     f"| {stop.get('exit_code', '-')} | {len(stop.get('killed_leftovers', []))}"
                     f" {stop.get('killed_leftovers') or ''} | {_ports(stop.get('ports_free'))} "
                     f"| {_one_line(info.get('error', ''))} |")
    return lines


def _plots_section(r: dict[str, Any], pts: Points, models: list[str], stem: str) -> list[str]:
    """Draw the run's plots and link them from the page (relative to docs/)."""
    figures = plots(r, pts, models, stem)
    lines = ["", "## Throughput against p99 latency", ""]
    if not figures:
        return [*lines, "matplotlib is not installed: no plots."]
    return lines + [f"![{p.stem}](../{p.relative_to(ROOT)})" for p in figures]


#: how the suite measures; the page's last section
METHOD_SECTION = [
    "", "## Method", "",
    "- Order: wrk's ceiling (trivial server alone); (c) in-process, before any server "
    "runs; FinServe started alone (its cold start is timed; then its answers to every "
    "body are kept), then (a), (b) and the peers started beside it (a peer's venv is made "
    "first if need be, and its answers are checked against FinServe's); then every "
    "scenario is run on every system back to back (a, b, FinServe task, FinServe V2, "
    "KServe, MLServer for one scenario, then the next), so that all systems see the "
    "same machine load within a minute of each other on a shared machine. Idle systems "
    "stay up meanwhile (an idle Ray costs a little CPU, a cost the baselines bear). Before "
    "each point one request must answer 200; after it the system must drain its backlog "
    "(one fresh request answers) before the next point starts.",
    "- App alone (part `app`, after (c) and before any server starts): "
    "`benchmarks/appcpu.py` in a subprocess per model and route, with this run's Serve "
    "config and batched bodies, 3,200 requests (320 in quick mode) after 640 to warm up.",
    "- Ray Serve's floor (after FinServe and the proxy comparison, alone): the bench "
    "keeps FinServe's answer to each batched body and serves them back from "
    "`benchmarks/floor.py`, started by `finserve serve` with FinServe's Serve config "
    "and only the import path changed.",
    "- Autoscaling (last, FinServe alone): `benchmarks/autoscale.py`; a child process "
    "joins that server's Ray by its GCS address as a second driver and reads Serve's "
    "replica states every 0.2 s. "
    "*Added* is when Serve creates the second Model replica, *serving* when it is "
    "RUNNING, from the moment wrk starts.",
    "- FinServe runs with `RAY_worker_niceness=0`: Ray starts its workers at nice 15, "
    "below the baselines' nice 0, and on a machine busy with other work that alone "
    "starves a pipeline of a dozen processes; on a dedicated machine it makes no difference.",
    "- wrk is closed-loop: each connection sends its next request when the last answer "
    "arrives; c = connections. Requests/s counts 2xx answers; errors are connect, read, "
    "write, timeout (10 s) and non-2xx. Latency percentiles are wrk's own.",
    "- Single-instance scenarios send one example per request at c = 1, 8, 32, 128; the "
    "batched ones send 64 examples per request at c = 1, 8 and 32 (c = 1 since issue 17). "
    "The batched target takes the best of them (the server's capacity, as the in-process "
    "limit is the model's best batch size); all are in the tables. Bodies are built from "
    "`tests/testdata/<task>_task_request.json` records (cycled to 64), the V2 body from "
    "the same records through the task's `records_to_raw`.",
    "- Added latency at c=1 is FinServe's p50 minus the in-process p50 of one instance "
    "through preprocess + signature call.",
    "- FinServe is stopped with SIGINT (its Ctrl-C path: `serve.shutdown`, "
    "`ray.shutdown`); any process of its tree still alive 15 s later is killed by pid "
    "and listed above; then its ports are checked. `ray stop` is never used: it would "
    "stop other Ray instances on the machine.",
    "",
]
