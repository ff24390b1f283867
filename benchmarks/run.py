"""``make bench``: FinServe against baselines and peers, side by side, on the same model files.

Systems: FinServe (``finserve serve`` in a subprocess; V2 and task routes; the default
proxy and, in full mode, the HAProxy ingress), (a) the seed design's ``keras.Model.predict``
per request, (b) a hand-written single-process FastAPI app calling the signature, (c)
the signature in this process at its best batch size, and the peers KServe's ModelServer
and MLServer (``benchmarks/peers/``, each from a venv of its own) serving FinServe's
pipeline. Load comes from wrk, whose own ceiling against a trivial server is measured in
the same run; part ``grpc`` adds FinServe's Open Inference Protocol over gRPC beside its
HTTP routes (fraud), loaded by ``benchmarks/grpcload.py``, whose ceiling against a trivial
gRPC server is measured in the same run too. Raw results go to
``benchmarks/results/<date>-<commit>[-quick].json``, tables and pass/fail lines of the
issue's targets to ``docs/benchmarks.md``, plots to ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from benchmarks import floor, grpcload
from benchmarks.loadgen import request_headers, require_wrk, wrk
from benchmarks.peers import answers as peer_answers
from benchmarks.peers.launch import PEERS, PeerEnv, PeerSetupError, peer_settings, peer_system
from benchmarks.systems import ROOT, System, http, python_module
from deployments.deploy import free_port

HERE = Path(__file__).resolve().parent
STORE, WORK, RESULTS = HERE / ".store", HERE / ".work", HERE / "results"
DOC = ROOT / "docs" / "benchmarks.md"
MODELS = ("sentiment", "fraud", "credit")
CONCURRENCY = (1, 8, 32, 128)
#: batched requests one at a time (against the peers, issue 17), at a light and at a
#: saturating load: the in-process limit is the model's best, so the target compares it
#: with the server's best (its capacity), and all show
BATCH, BATCH_CONCURRENCY = 64, (1, 8, 32)
PARTS = ("ceiling", "inprocess", "app", "a", "b", "finserve", *PEERS, "haproxy", "floor",
         "autoscale", "grpc")
#: part ``grpc``: the models and connections its points are measured at (1 and BATCH
#: instances per request), and the route its bodies are kept under
GRPC_MODELS, GRPC_CONNECTIONS, GRPC = frozenset({"fraud"}), (1, 8, 32), "grpc"
#: FinServe's answers to the bodies of 1 and BATCH instances: (status, body) by
#: (model, route, instances), as ``Bench.bodies`` keys them
Answers = dict[tuple[str, str, int], tuple[int, bytes]]
app = typer.Typer(add_completion=False)


@dataclass(frozen=True)
class Scenario:
    name: str
    instances: int
    connections: int


SCENARIOS = [Scenario(f"single c={c}", 1, c) for c in CONCURRENCY] + [
    Scenario(f"batch{BATCH} c={c}", BATCH, c) for c in BATCH_CONCURRENCY]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1), "cpu": cpu,
            "python": platform.python_version(), "kernel": platform.release()}


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def ensure_models(models: list[str]) -> dict[str, str]:
    """Train every benchmark model missing from the benchmark store; their versions."""
    from serving.store import ModelStore
    from serving.training import train

    store = ModelStore(STORE)
    for model in models:
        if not store.versions(model):
            log(f"training {model} into {STORE} (once)")
            train(model, store)
    return {m: store.resolve(m, "latest") for m in models}


def write_inputs(models: list[str], audit: bool = True,
                 ) -> tuple[Path, dict[tuple[str, str, int], Path]]:
    """The Serve config (deployments/serve.yaml's settings for these models, pointed at the
    benchmark store) and the request bodies: V2 and task route, 1 and BATCH instances,
    made from the records in tests/testdata/<task>_task_request.json."""
    from serving.tasks import get_task

    config = yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())
    application = config["applications"][0]
    args = application["args"]
    args["models"] = [m for m in args["models"] if m["name"] in models]
    for deployment in application.get("deployments") or []:  # the gateway's routing
        routing = deployment.get("user_config") or {}
        if isinstance(routing.get("models"), dict):
            routing["models"] = {k: v for k, v in routing["models"].items() if k in models}
    args["store_uri"] = str(STORE)
    args["audit"] = {**args.get("audit", {}), "location": str(WORK / "audit"),
                     "keys_dir": str(WORK / "keys")}
    if not audit:
        args["audit"]["enabled"] = False
    shutil.rmtree(WORK / "audit", ignore_errors=True)  # each run's trail starts empty
    (WORK / "bodies").mkdir(parents=True, exist_ok=True)
    config_path = WORK / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    bodies: dict[tuple[str, str, int], Path] = {}
    for model in models:
        task = get_task(model)
        records = json.loads(
            (ROOT / "tests" / "testdata" / f"{model}_task_request.json").read_text())["records"]
        for n in (1, BATCH):
            rows = [records[i % len(records)] for i in range(n)]
            raw = task.records_to_raw([task.Record.model_validate(r) for r in rows])
            spec = task.input_spec
            v2 = {"inputs": [{"name": spec.name, "shape": list(raw.shape),
                              "datatype": spec.datatype, "data": raw.reshape(-1).tolist()}]}
            for route, body in (("v2", v2), ("task", {"records": rows})):
                path = WORK / "bodies" / f"{model}-{route}-{n}.json"
                path.write_text(json.dumps(body))
                bodies[(model, route, n)] = path
            if n == BATCH:
                bodies[(model, "v2bin", n)] = _binary_body(model, spec.name, raw, spec.datatype)
            path = WORK / "bodies" / f"{model}-{GRPC}-{n}.pb"
            path.write_bytes(grpcload.request_body(model, spec.name, raw, spec.datatype))
            bodies[(model, GRPC, n)] = path
    return config_path, bodies


def _binary_body(model: str, name: str, raw: Any, datatype: str) -> Path:
    """The V2 body with binary tensor data both ways, as Triton's client sends it by default
    (``tritonclient.http.InferenceServerClient.generate_request_body``)."""
    import tritonclient.http as triton

    tensor = triton.InferInput(name, list(raw.shape), datatype)
    tensor.set_data_from_numpy(raw, binary_data=True)
    content, length = triton.InferenceServerClient.generate_request_body([tensor])
    path = WORK / "bodies" / f"{model}-v2bin-{len(raw)}.bin"
    path.write_bytes(content)
    path.with_name(path.name + ".headers.json").write_text(json.dumps({
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(length)}))
    return path


def task_path(model: str) -> str:
    from serving.tasks import get_task

    return f"/v1/{model}/{get_task(model).route}"


def route_path(model: str, route: str) -> str:
    """The path a route's body is POSTed to: the task route's, or V2 (JSON or binary)."""
    return task_path(model) if route == "task" else f"/v2/models/{model}/infer"


@dataclass(frozen=True)
class Target:
    """One system's route: where a point's requests go; ``models``: those it is timed on
    (None: all; a peer only on those it answered as FinServe does); ``connections``: the
    concurrencies it is timed at (None: all). Route ``grpc``: ``base`` is host:port."""

    system: str
    base: str
    route: str
    models: frozenset[str] | None = None
    connections: frozenset[int] | None = None

    def measures(self, model: str, sc: Scenario) -> bool:
        return ((self.models is None or model in self.models)
                and (self.connections is None or sc.connections in self.connections))


@dataclass
class Bench:
    seconds: int
    warmup: int
    bodies: dict[tuple[str, str, int], Path]
    points: list[dict[str, Any]] = field(default_factory=list)

    def point(self, target: Target, model: str, sc: Scenario) -> None:
        """Check the body answers 200 (and any backlog is gone), run wrk, then wait for the
        system to drain its own backlog so that it does not load the next point."""
        body = self.bodies.get((model, target.route, sc.instances))
        if body is None:  # this route has no body of this size (binary: batches only)
            return
        if not target.measures(model, sc):
            return
        if target.route == GRPC:
            status, settle_s = settle_grpc(target.base, body)
            load_before = os.getloadavg()[0]
            r = grpcload.run(target.base, body, sc.connections, self.seconds, self.warmup)
            drain_s = settle_grpc(target.base, body)[1]
        else:
            url = target.base + route_path(model, target.route)
            status, settle_s = settle(url, body)
            load_before = os.getloadavg()[0]
            r = wrk(url, body, sc.connections, self.seconds, self.warmup)
            drain_s = settle(url, body)[1]
        self.points.append({
            "system": target.system, "route": target.route, "model": model,
            "scenario": sc.name, "instances": sc.instances, "connections": sc.connections,
            "check_status": status, "settle_s": round(settle_s, 2),
            "drain_s": round(drain_s, 2), "instances_per_s": r["rps"] * sc.instances,
            "load1_before": round(load_before, 2), **r})
        log(f"  {target.system:<22} {model:<9} {sc.name:<13} {r['rps']:8.1f} req/s  "
            f"p50 {r['p50_ms']:7.1f}  p99 {r['p99_ms']:7.1f} ms  err {r['errors']}  "
            f"load {load_before:.0f}")

    def interleaved(self, targets: list[Target], models: list[str],
                    scenarios: list[Scenario]) -> None:
        """Every scenario on every target back to back, so that all systems see the same
        machine load (the machine may be shared) within a few points of each other."""
        for model in models:
            for sc in scenarios:
                for target in targets:
                    self.point(target, model, sc)


def settle(url: str, body: Path, timeout: float = 180.0) -> tuple[int, float]:
    """Wait until one request answers 200 (the last point's backlog has drained, the body
    is right); its status and the seconds waited."""
    started = time.perf_counter()
    status, answer = 0, b""
    content, headers = body.read_bytes(), request_headers(body)
    while time.perf_counter() - started < timeout:
        status, answer = http(url, content, timeout=60, headers=headers)
        if status == 200:
            break
        time.sleep(1)
    else:
        log(f"  {url}: HTTP {status} {answer[:200]!r}")
    return status, time.perf_counter() - started


def settle_grpc(target: str, body: Path, timeout: float = 180.0) -> tuple[str, float]:
    """``settle`` for a gRPC target: one ``ModelInfer`` answered OK; its status code name
    and the seconds waited."""
    started = time.perf_counter()
    code = ""
    while time.perf_counter() - started < timeout:
        if (code := grpcload.check(target, body)) == "OK":
            break
        time.sleep(1)
    else:
        log(f"  grpc {target}: {code}")
    return code, time.perf_counter() - started


def start(system: System, first_path: str, body: bytes | None,
          infos: dict[str, dict[str, Any]], attempts: int = 2) -> bool:
    """Start a system; time its first answer and readiness; one more attempt if it does
    not come up (a local Ray can time out starting on an overloaded machine)."""
    info = infos[system.name] = {"name": system.name, "failed_attempts": []}
    for attempt in range(1, attempts + 1):
        log(f"starting {system.name} (attempt {attempt})")
        info["load1_at_start"] = round(os.getloadavg()[0], 2)
        system.start()
        try:
            info["first_answer_s"] = round(system.wait_until(first_path, body), 2)
            info["ready_s"] = round(system.wait_until("/v2/health/ready"), 2)
            log(f"{system.name}: first answer after {info['first_answer_s']} s")
            return True
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            info["failed_attempts"].append({"error": error, "stop": system.stop()})
            log(f"{system.name} failed: {error}")
    info["error"] = info["failed_attempts"][-1]["error"]
    info["stop"] = info["failed_attempts"][-1]["stop"]
    return False


def stop(system: System, infos: dict[str, dict[str, Any]]) -> None:
    """Stop once: FinServe gets 45 s for its Ctrl-C path, the other servers 10 s."""
    if system.proc is not None and "stop" not in infos[system.name]:
        grace = 45.0 if Path(system.cmd[0]).name == "finserve" else 10.0
        infos[system.name]["stop"] = system.stop(grace)
        log(f"stopped {system.name}: {infos[system.name]['stop']}")


def baseline(kind: str, name: str, config: Path) -> System:
    port = free_port()
    cmd = python_module("benchmarks.baselines", kind, "--config", str(config),
                        "--port", str(port))
    return System(name, cmd, port, WORK / f"{name}.log")


def finserve(name: str, config: Path, haproxy: bool, grpc: bool = False) -> System:
    """``finserve serve`` on free ports; gRPC (on ``extra_ports[0]``) only with ``grpc``."""
    port, grpc_port = free_port(), free_port() if grpc else 0
    # Ray starts its workers at nice 15; the baselines run at nice 0. On a shared machine that
    # alone decides who gets the CPU, so FinServe's workers get the baselines' priority here.
    env = {"FINSERVE_HOME": str(ROOT), "RAY_worker_niceness": "0"}
    cmd = [str(Path(sys.executable).with_name("finserve")), "serve", "--config", str(config),
           "--port", str(port), "--grpc-port", str(grpc_port), "--no-train",
           "--proxy", "haproxy" if haproxy else "python"]
    return System(name, cmd, port, WORK / f"{name}.log", env,
                  extra_ports=[grpc_port] if grpc else [])


@app.command()
def main(
    quick: Annotated[bool, typer.Option(help="3 s per point, 1 s warm-up, no HAProxy run.")]
    = False,
    seconds: Annotated[int | None, typer.Option(help="Seconds per point (full: 10).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Warm-up seconds per point.")] = None,
    haproxy: Annotated[bool | None, typer.Option(help="Also FinServe on Ray's Python proxy "
                                                      "beside the shipped HAProxy ingress "
                                                      "(default: full mode only).")] = None,
    models: Annotated[str, typer.Option(help="Comma-separated models.")] = ",".join(MODELS),
    only: Annotated[str, typer.Option(help="Comma-separated subset of: " + ",".join(PARTS))]
    = ",".join(PARTS),
    audit: Annotated[bool, typer.Option(help="FinServe writes its decision trail (as "
                                             "configured); --no-audit to isolate its cost.")]
    = True,
    docs: Annotated[bool, typer.Option(help="Write docs/benchmarks.md and plots.")] = True,
) -> None:
    """Measure FinServe and the baselines; write results, docs and plots."""
    started = time.perf_counter()
    wrk_version = require_wrk()
    names = [m.strip() for m in models.split(",") if m.strip()]
    mode = "quick" if quick else "full"
    seconds = seconds or (3 if quick else 10)
    warmup = warmup if warmup is not None else (1 if quick else 2)
    haproxy = (not quick) if haproxy is None else haproxy
    parts = {p.strip() for p in only.split(",")} - ({"haproxy"} if not haproxy else set())
    commit = git("rev-parse", "--short", "HEAD") or "nocommit"
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "mode": mode,
        "commit": commit, "dirty": bool(git("status", "--porcelain")),
        "machine": machine(), "wrk": wrk_version, "seconds_per_point": seconds,
        "warmup_s": warmup, "load_start": [round(x, 2) for x in os.getloadavg()],
        "models": names, "parts": sorted(parts), "audit": audit,
        "scenarios": [asdict(s) for s in SCENARIOS], "systems": {},
    }
    log(f"{mode} run, {seconds} s per point; load average {result['load_start']}")
    points: list[dict[str, Any]] = []
    signal.signal(signal.SIGTERM, _interrupt)  # stop the systems on SIGTERM too
    try:
        measure(result, names, parts, points)
    except KeyboardInterrupt:
        result["interrupted"] = True
        log("interrupted: systems stopped; writing the points measured so far")
    except Exception as exc:  # a failing part must not lose the points measured before it
        result["interrupted"], result["failed"] = True, f"{type(exc).__name__}: {exc}"
        log(f"failed: {result['failed']}; writing the points measured so far")
        traceback.print_exc()

    result["points"] = points
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_s"] = round(time.perf_counter() - started, 1)
    save_run(result, parts, haproxy, docs)
    if "failed" in result:
        raise typer.Exit(1)


def measure(result: dict[str, Any], names: list[str], parts: set[str],
            points: list[dict[str, Any]]) -> None:
    """Every part of the suite in ``parts``, in order; figures go into ``result``, points
    into ``points`` (kept if the run is interrupted)."""
    quick = result["mode"] == "quick"
    result["versions"] = ensure_models(names)
    config, bodies = write_inputs(names, result["audit"])
    bench = Bench(result["seconds_per_point"], result["warmup_s"], bodies, points)
    infos: dict[str, dict[str, Any]] = result["systems"]
    wrk_ceiling(bench, parts, infos)
    grpc_ceiling(bench, parts, names, infos)
    result["inprocess"] = inprocess_limits(
        config, bodies, names if "inprocess" in parts else [], bench.seconds)
    # FinServe's gateway app alone, in a process of its own, before any server runs
    if "app" in parts:
        result["app_alone"] = app_alone(config, bodies, names, 32 * (10 if quick else 100))
    answered = side_by_side(config, names, parts, bench, infos)
    if answered:
        ray_serve_floor(config, bench, answered, infos)
    if "autoscale" in parts and "sentiment" in names:
        result["autoscale"] = autoscale_step(config, bodies, infos)


def wrk_ceiling(bench: Bench, parts: set[str], infos: dict[str, dict[str, Any]]) -> None:
    """wrk's own ceiling: a trivial raw-asyncio responder, tiny JSON body, alone."""
    tiny = WORK / "bodies" / "tiny.json"
    tiny.write_text('{"inputs": []}')
    port = free_port()
    trivial = System("wrk-ceiling", python_module("benchmarks.trivial", "--port", str(port)),
                     port, WORK / "trivial.log", stop_signal=signal.SIGTERM)
    if "ceiling" in parts and start(trivial, "/", None, infos):
        try:
            for c in (1, 32, 128):
                r = wrk(trivial.base + "/", tiny, c, bench.seconds, bench.warmup)
                bench.points.append({"system": "wrk-ceiling", "route": "-", "model": "-",
                                     "scenario": f"single c={c}", "instances": 1,
                                     "connections": c, "instances_per_s": r["rps"], **r})
                log(f"  wrk ceiling c={c}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.2f} ms")
        finally:
            stop(trivial, infos)


def grpc_ceiling(bench: Bench, parts: set[str], models: list[str],
                 infos: dict[str, dict[str, Any]]) -> None:
    """The gRPC load generator's own ceiling (part ``grpc``): a trivial gRPC server that
    answers as many bytes as each request holds at once, alone, with the gRPC bodies."""
    grpc_models = [m for m in models if m in GRPC_MODELS]
    if GRPC not in parts or not grpc_models:
        return
    m, port = grpc_models[0], free_port()
    largest = bench.bodies[(m, GRPC, BATCH)]
    trivial = System("grpc-ceiling", python_module(
        "benchmarks.grpcload", "serve", "--port", str(port), "--body", str(largest)),
        port, WORK / "grpc-trivial.log", stop_signal=signal.SIGTERM)
    infos[trivial.name] = {"name": trivial.name}
    trivial.start()
    try:
        target = f"127.0.0.1:{port}"
        infos[trivial.name]["ready_s"] = round(settle_grpc(target, largest, 30)[1], 2)
        for sc in (s for s in SCENARIOS if s.connections in GRPC_CONNECTIONS):
            body = bench.bodies[(m, GRPC, sc.instances)]
            r = grpcload.run(target, body, sc.connections, bench.seconds, bench.warmup)
            bench.points.append({"system": "grpc-ceiling", "route": GRPC, "model": m,
                                 "scenario": sc.name, "instances": sc.instances,
                                 "connections": sc.connections,
                                 "instances_per_s": r["rps"] * sc.instances, **r})
            log(f"  grpc ceiling {sc.name}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.2f} ms")
    finally:
        stop(trivial, infos)


def inprocess_limits(config: Path, bodies: dict[tuple[str, str, int], Path],
                     models: list[str], seconds: int) -> dict[str, Any]:
    """(c) each model's own limit, in this process, before any server runs."""
    from benchmarks.inprocess import model_limit
    from serving.config import load_serve_config
    from serving.store import ModelStore

    args = load_serve_config(config)[1]
    limits = {}
    for m in models:
        limit = model_limit(ModelStore(STORE), m, args.model(m).task_name,
                            _raw(m, bodies), args.model(m).options, max(1, seconds // 4))
        limits[m] = limit
        log(f"  in-process {m}: best {limit['best_instances_per_s']:.0f} inst/s at batch "
            f"{limit['best_batch']}; batch 1 preprocess+call p50 "
            f"{limit['batch1_pre_call_p50_ms']:.2f} ms")
    return limits


def side_by_side(config: Path, names: list[str], parts: set[str], bench: Bench,
                 infos: dict[str, dict[str, Any]]) -> list[str]:
    """FinServe first and alone (its cold start; then its answers are kept), then (a), (b)
    and the peers beside it, interleaved (a peer only on the models it answers as FinServe
    does); then Ray's Python proxy beside FinServe. The models whose batched answers
    FinServe gave, for the floor to send back."""
    first = (task_path(names[0]), bench.bodies[(names[0], "task", 1)].read_bytes())
    default = finserve("finserve", config, haproxy=True, grpc=GRPC in parts)
    others = [baseline(kind, name, config)
              for part, kind, name in (("a", "keras", "a-keras-predict"),
                                       ("b", "signature", "b-fastapi-signature"))
              if part in parts]
    answers: Answers = {}
    try:
        targets: list[Target] = []
        if {"finserve", GRPC} & parts and start(default, *first, infos):
            if "finserve" in parts:
                targets += [Target("finserve-v2", default.base, "v2"),
                            Target("finserve-task", default.base, "task"),
                            Target("finserve-v2bin", default.base, "v2bin")]
            if default.extra_ports:  # gRPC beside HTTP, interleaved with it
                targets.append(Target("finserve-grpc", f"127.0.0.1:{default.extra_ports[0]}",
                                      GRPC, GRPC_MODELS, frozenset(GRPC_CONNECTIONS)))
            answers = fetch_answers(default.base, names, bench.bodies)
        for system in others:
            if start(system, "/v2/health/ready", None, infos):
                targets.append(Target(system.name, system.base, "v2"))
        targets += start_peers(config, names, parts, bench.bodies, answers, infos, others)
        targets.sort(key=lambda t: t.system)
        bench.interleaved(targets, names, SCENARIOS)
        for system in others:
            stop(system, infos)
        if "haproxy" in parts and "sentiment" in names:
            python_proxy_beside(config, default, first, bench, infos)
    finally:
        for system in [*others, default]:
            if system.name in infos:
                stop(system, infos)
    return save_answers(answers, names) if "floor" in parts else []


def start_peers(config: Path, names: list[str], parts: set[str],
                bodies: dict[tuple[str, str, int], Path], answers: Answers,
                infos: dict[str, dict[str, Any]], started: list[System]) -> list[Target]:
    """Each peer in ``parts``: its venv (made on first use), its server (added to
    ``started``), its answers checked against FinServe's; a V2 target for the models it
    answered as FinServe does. A peer whose venv cannot be made is left out, and says why."""
    targets = []
    for name in (p for p in PEERS if p in parts):
        try:
            env = PeerEnv(name).ensure()
        except PeerSetupError as exc:
            infos[name] = {"name": name, "error": str(exc)}
            log(f"{name}: not measured: {exc}")
            continue
        made = "reused" if env["install_s"] is None else f"made in {env['install_s']} s"
        log(f"{name}: venv {made}: {env['versions']}")
        system = peer_system(name, config, names, WORK)
        started.append(system)
        if not start(system, "/v2/health/ready", None, infos):
            continue
        checked = check_answers(system.base, names, bodies, answers)
        infos[name] |= {"env": env, "settings": peer_settings(name, config, names),
                        "answers": checked}
        for m, why in checked.items():
            log(f"  {name} {m}: {'answers as FinServe does' if why is None else why}")
        targets.append(Target(name, system.base, "v2",
                              frozenset(m for m, why in checked.items() if why is None)))
    return targets


def check_answers(base: str, models: list[str], bodies: dict[tuple[str, str, int], Path],
                  answers: Answers) -> dict[str, str | None]:
    """Per model, why the V2 answers at ``base`` to the bodies of 1 and BATCH instances
    differ from FinServe's (``answers``), or None when they are the same."""
    out: dict[str, str | None] = {}
    for m in models:
        out[m] = None
        for n in (1, BATCH):
            status, expected = answers.get((m, "v2", n), (0, b""))
            if status != 200:
                out[m] = f"no answer of FinServe's to check against ({n}-instance body)"
                break
            got = http(base + route_path(m, "v2"), bodies[(m, "v2", n)].read_bytes())
            if (why := peer_answers.check(*got, expected)) is not None:
                out[m] = f"its answer to the {n}-instance body is not FinServe's: {why}"
                break
    return out


def python_proxy_beside(config: Path, default: System, first: tuple[str, bytes],
                        bench: Bench, infos: dict[str, dict[str, Any]]) -> None:
    """Ray's Python proxy beside the shipped HAProxy ingress (``default``, if still up),
    interleaved, sentiment, single-instance scenarios."""
    py = finserve("finserve-pyproxy", config, haproxy=False)
    try:
        if start(py, *first, infos):
            pairs = [Target("finserve-default-v2", py.base, "v2"),
                     Target("finserve-default-task", py.base, "task")]
            if default.proc is not None and default.proc.poll() is None:
                pairs += [Target("finserve-haproxy-v2", default.base, "v2"),
                          Target("finserve-haproxy-task", default.base, "task")]
            pairs.sort(key=lambda t: (t.route, t.system))
            single = [s for s in SCENARIOS if s.instances == 1]
            bench.interleaved(pairs, ["sentiment"], single)
    finally:
        stop(py, infos)


def save_run(result: dict[str, Any], parts: set[str], haproxy: bool, docs: bool) -> None:
    """Store the results; after a complete run write the report (``docs``), and after a
    complete full run delete the stored results that are neither its own nor cited."""
    from benchmarks.report import write_report
    from benchmarks.retention import citing_pages, prune_results

    audit, quick = result["audit"], result["mode"] == "quick"
    RESULTS.mkdir(exist_ok=True)
    partial = set(PARTS) - parts - ({"haproxy"} if not haproxy else set()) or not audit
    stem = (f"{datetime.now(UTC):%Y-%m-%d}-{result['commit']}" + ("-quick" if quick else "")
            + ("-partial" if partial else "") + ("" if audit else "-noaudit")
            + ("-interrupted" if result.get("interrupted") else ""))
    out = RESULTS / f"{stem}.json"
    out.write_text(json.dumps(result, indent=1))
    log(f"results: {out} ({result['total_s']} s); load average {result['load_end']}")
    complete = not partial and not result.get("interrupted")
    if docs and complete:
        write_report(result, out, DOC)
        log(f"report: {DOC}")
    if complete and not quick:
        removed = prune_results(RESULTS, stem, citing_pages(ROOT))
        log(f"pruned {len(removed)} results files neither this run's nor cited by the docs")


def app_alone(config: Path, bodies: dict[tuple[str, str, int], Path], models: list[str],
              requests: int) -> dict[str, Any]:
    """CPU per batched request of the gateway app alone (``benchmarks.appcpu``), per model
    and route, at c=32; keyed ``model/route``."""
    out: dict[str, Any] = {}
    for m in models:
        for route in ("v2", "task"):
            cmd = python_module("benchmarks.appcpu", m, "--route", route, "--config",
                                str(config), "--body", str(bodies[(m, route, BATCH)]),
                                "--concurrency", "32", "--requests", str(requests))
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
            if done.returncode or not lines:
                out[f"{m}/{route}"] = {"error": _tail(done.stderr)}
                log(f"  app alone {m} {route}: failed ({done.returncode})")
                continue
            out[f"{m}/{route}"] = json.loads(lines[-1])
            log(f"  app alone {m} {route}: {out[f'{m}/{route}']['cpu_ms_per_request']} ms of "
                f"CPU per {BATCH}-instance request")
    return out


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def fetch_answers(base: str, models: list[str],
                  bodies: dict[tuple[str, str, int], Path]) -> Answers:
    """FinServe's answers to the V2 and task bodies of 1 and BATCH instances."""
    answers: Answers = {}
    for m in models:
        for route in ("v2", "task"):
            for n in (1, BATCH):
                body = bodies[(m, route, n)]
                answers[(m, route, n)] = http(base + route_path(m, route), body.read_bytes(),
                                              headers=request_headers(body))
    return answers


def save_answers(answers: Answers, models: list[str]) -> list[str]:
    """Keep FinServe's answers to the batched V2 and task bodies for the floor to send
    back; the models it answered both for."""
    shutil.rmtree(floor.ANSWERS, ignore_errors=True)
    floor.ANSWERS.mkdir(parents=True)
    answered = []
    for m in models:
        statuses = []
        for route in ("v2", "task"):
            status, answer = answers.get((m, route, BATCH), (0, b""))
            floor.answer_file(route_path(m, route)).write_bytes(answer)
            statuses.append(status)
        if statuses == [200, 200]:
            answered.append(m)
    return answered


def ray_serve_floor(config: Path, bench: Bench, models: list[str],
                    infos: dict[str, dict[str, Any]]) -> None:
    """The batched scenarios against a no-op app on FinServe's Ray Serve set-up, alone
    (``models``: those FinServe answered, whose answers the floor sends back)."""
    system = finserve("ray-serve-floor",
                      floor.floor_config(config, WORK / "serve-floor.yaml"), True)
    if not start(system, task_path(models[0]), b"{}", infos):
        return
    try:
        batched = [s for s in SCENARIOS if s.instances > 1]
        bench.interleaved([Target("floor-task", system.base, "task"),
                           Target("floor-v2", system.base, "v2")], models, batched)
    finally:
        stop(system, infos)


def autoscale_step(config: Path, bodies: dict[tuple[str, str, int], Path],
                   infos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """FinServe alone with sentiment's Model stage autoscaled; a load step; the timeline."""
    from benchmarks import autoscale

    system = finserve("finserve-autoscale",
                      autoscale.write_config(config, WORK / "serve-autoscale.yaml"), True)
    gcs_port = free_port()  # Ray's head takes it from the environment (ray/_private/node.py)
    system.env["RAY_GCS_SERVER_PORT"] = str(gcs_port)
    if not start(system, "/v2/health/ready", None, infos):
        return {"error": infos[system.name].get("error", "did not start")}
    try:
        log(f"autoscaling: load step to {autoscale.CONNECTIONS} connections")
        step = autoscale.run_step(system.base + task_path(autoscale.MODEL),
                                   bodies[(autoscale.MODEL, "task", BATCH)],
                                   f"127.0.0.1:{gcs_port}")
        log(f"  second replica added after {step.get('added_s')} s, serving after "
            f"{step.get('serving_s')} s; {step['load'].get('errors')} errors")
        return step
    finally:
        stop(system, infos)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _raw(model: str, bodies: dict[tuple[str, str, int], Path]) -> Any:
    """The raw batch of the BATCH-instance V2 body, for the in-process measurement."""
    import numpy as np

    tensor = json.loads(bodies[(model, "v2", BATCH)].read_text())["inputs"][0]
    dtype = object if tensor["datatype"] == "BYTES" else np.float32
    return np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])


if __name__ == "__main__":
    app()
