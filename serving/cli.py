"""The ``finserve`` command: train, list and serve models.

Ray is imported lazily, only by the commands that start it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow start-up chatter out
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rollout.cli import rollout_app
from serving.config import AppArgs
from serving.drift import DEFAULT_MIN_ROWS
from serving.settings import Environment
from serving.store import ModelStore
from serving.tasks import TASKS

app = typer.Typer(help="FinServe: train, version and serve finance models.", no_args_is_help=True)
console = Console()
DEFAULT_STORE = Environment.read().default_store
DEFAULT_CONFIG = "deployments/serve.yaml"

StoreOpt = Annotated[str, typer.Option("--store", help="Model store root (path or fsspec URI).")]


def train_with_progress(task: str, store: ModelStore, **kwargs: object) -> None:
    """Train one task with a progress bar and print its held-out metric."""
    from serving.training import train

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console,
    ) as bar:
        job = bar.add_task(f"train {task}", total=None, info="loading data")

        def progress(epoch: int, epochs: int, logs: dict[str, float]) -> None:
            bar.update(job, total=epochs, completed=epoch,
                       info=f"epoch {epoch}/{epochs} loss {logs.get('loss', float('nan')):.4f}")

        manifest = train(task, store, progress=progress, **kwargs)  # type: ignore[arg-type]
        bar.update(job, info="exported")
    m = manifest.metrics
    console.print(
        f"[green]{manifest.model} v{manifest.version}[/]: held-out {m['metric']} "
        f"{m['value']:.4f} (baseline {m['baseline_name']}: {m['baseline']:.4f}) "
        f"→ {store.root}/{manifest.model}/{manifest.version}"
    )


@app.command("train")
def train_cmd(
    task: Annotated[str, typer.Argument(help=f"One of: {', '.join(TASKS)}.")],
    data: Annotated[str | None, typer.Option(help="CSV or Parquet file (docs/models.md).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs.")] = None,
    samples: Annotated[int | None, typer.Option(min=100, help="Built-in data rows.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the task).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Train a model and publish it as a new immutable version."""
    if task not in TASKS:
        raise typer.BadParameter(f"unknown task '{task}'; known: {', '.join(TASKS)}")
    train_with_progress(task, ModelStore(store), data_path=data, epochs=epochs,
                        samples=samples, model_name=name, seed=seed)


@app.command("train-missing")
def train_missing_cmd(
    config: Annotated[str, typer.Option(help="Serve config whose models to train.")] = (
        DEFAULT_CONFIG),
) -> None:
    """Train every model the Serve config lists that has no version in its store yet
    (what `finserve serve` does first; the image build runs it to bake the defaults)."""
    train_missing(config)


@app.command("models")
def models_cmd(store: StoreOpt = DEFAULT_STORE) -> None:
    """List every stored version with its held-out metric and baseline."""
    model_store = ModelStore(store)
    table = Table("model", "version", "task", "created", "metric", "value", "baseline",
                  title=f"model store {model_store.root}")
    for name in model_store.models():
        for version in model_store.versions(name):
            man = model_store.manifest(name, version)
            m = man.metrics
            table.add_row(name, version, man.task, man.created_at, m["metric"],
                          f"{m['value']:.4f}", f"{m['baseline']:.4f} ({m['baseline_name']})")
    console.print(table)


keys_app = typer.Typer(help="API keys (stored hashed).", no_args_is_help=True)
audit_app = typer.Typer(help="The decision trail.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(rollout_app, name="rollout")
app.add_typer(audit_app, name="audit")
TrailOpt = Annotated[str, typer.Option("--trail", help="Trail folder or fsspec URI.")]


@keys_app.command("create")
def keys_create(
    key_id: Annotated[str, typer.Argument(help="Caller id, e.g. teller-app.")],
    file: Annotated[Path, typer.Option(help="Key file to add the hashed key to.")] = Path(
        "api-keys.yaml"),
    models: Annotated[str, typer.Option(help="Comma-separated models, or '*'.")] = "*",
    rate: Annotated[float | None, typer.Option(help="Requests per second.")] = None,
) -> None:
    """Create a key: its hash goes to the file, the key itself is shown once."""
    from serving.security import KeyRing, new_key, write_keys

    ring = KeyRing.from_file(file) if file.exists() else KeyRing([])
    if key_id in ring.keys:
        raise typer.BadParameter(f"key id '{key_id}' already exists in {file}")
    plaintext, entry = new_key(key_id, [m.strip() for m in models.split(",")], rate)
    write_keys(file, [*ring.keys.values(), entry])
    console.print(f"added '{key_id}' to {file}; the key (shown only now):")
    print(plaintext)


PublicKeyOpt = Annotated[str | None, typer.Option(
    "--public-key", help="The trail's Ed25519 public key (hex, or a file holding it); "
    "default: keys/trail.pub when it exists.")]


@audit_app.command("verify")
def audit_verify(
    trail: TrailOpt = "audit",
    checkpoints: Annotated[str | None, typer.Option(
        help="Where the signed checkpoints are (default: as the server puts them).")] = None,
    public_key: PublicKeyOpt = None,
    trail_key_file: Annotated[Path | None, typer.Option(
        help="The trail key itself, to check every record's mac too (the replicas' secret; "
        "an auditor usually holds only the public key).")] = None,
) -> None:
    """Check every chain for altered, removed, reordered, cut-off, deleted and foreign
    records, against the signed checkpoints."""
    from serving.audit import verify
    from serving.audit.keys import parse_key

    key = _public_key(public_key)
    secret = parse_key(trail_key_file.read_text(), str(trail_key_file)) if trail_key_file \
        else None
    report = verify(trail, checkpoints or _checkpoints_of(trail), key, secret)
    for problem in report.problems:
        console.print(f"[red]✗[/] {problem}")
    for note in report.notes:
        console.print(f"[dim]·[/] {note}")
    status = "[green]intact[/]" if report.ok else "[red]TAMPERED[/]"
    console.print(f"{report.records} records in {report.chains} chains, "
                  f"{report.checkpoints} signed checkpoints: {status}")
    raise typer.Exit(0 if report.ok and report.records else 1)


def _public_key(given: str | None) -> Any:
    from serving.audit import load_public_key
    from serving.audit.keys import PUBLIC_KEY_FILE

    default = Path("keys") / PUBLIC_KEY_FILE
    if given is None and not default.exists():
        return None
    return load_public_key(given or str(default))


def _checkpoints_of(trail: str) -> str:
    from serving.audit import checkpoint_location
    from serving.config import Audit

    return checkpoint_location(Audit(location=trail))


@audit_app.command("public-key")
def audit_public_key(
    trail_key_file: Annotated[Path | None, typer.Argument(
        help="File holding the trail key (default: $FINSERVE_TRAIL_KEY, else keys/trail.key;"
        " '-' reads it from stdin, e.g. from `kubectl get secret`).")] = None,
) -> None:
    """Print the public key that verifies the trail's checkpoints (give it to auditors)."""
    from serving.audit.keys import TRAIL_KEY_FILE, TrailKeys, parse_key

    if trail_key_file is not None and str(trail_key_file) == "-":
        text, where = sys.stdin.read(), "stdin"
    elif trail_key_file is not None or not os.environ.get("FINSERVE_TRAIL_KEY"):
        path = trail_key_file or Path("keys") / TRAIL_KEY_FILE
        text, where = path.read_text(), str(path)
    else:
        text, where = os.environ["FINSERVE_TRAIL_KEY"], "$FINSERVE_TRAIL_KEY"
    print(TrailKeys.from_secret(parse_key(text, where)).public_hex)


@audit_app.command("replay")
def audit_replay(
    request_id: Annotated[str, typer.Argument(
        help="The decision id (chain:seq, in the x-decision-id header) or request id.")],
    trail: TrailOpt = "audit",
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Re-run a recorded request on the exact version it names; show whether it matches."""
    from serving.replay import replay

    try:
        result = replay(trail, request_id, ModelStore(store))
    except (KeyError, LookupError) as exc:
        console.print(f"[red]{exc.args[0]}[/]")
        raise typer.Exit(2) from None
    console.print_json(data=result)
    raise typer.Exit(0 if result["matches"] else 1)


@app.command("compare")
def compare_cmd(model: Annotated[str, typer.Argument(help="Model name.")],
                trail: TrailOpt = "audit") -> None:
    """How the shadow (challenger) answered live (champion) traffic."""
    from serving.traffic import compare, read_shadow

    report = compare(read_shadow(trail, model))
    if not report["requests"]:
        console.print(f"no shadow answers for '{model}' in {trail}")
        raise typer.Exit(1)
    console.print_json(data=report)


BAND_STYLE = {"stable": "green", "watch": "yellow", "act": "bold red", "few rows": "dim"}


@app.command("monitor")
def monitor_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    last: Annotated[str | None, typer.Option(
        help="The window ending now (or at --until): 30m, 24h, 7d ... Default 24h unless "
        "--since is given.")] = None,
    since: Annotated[str | None, typer.Option(help="Start, ISO 8601 (UTC unless zoned).")]
    = None,
    until: Annotated[str | None, typer.Option(help="End, ISO 8601; default now.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
    png: Annotated[Path | None, typer.Option(help="Also draw the report into this PNG.")]
    = None,
    min_rows: Annotated[int, typer.Option(min=1, help="Rows a column needs to be judged.")]
    = DEFAULT_MIN_ROWS,
    trail: TrailOpt = "audit",
    store: StoreOpt = DEFAULT_STORE,
) -> None:
    """Drift of a model's recorded traffic from its training data: PSI per input column
    and score (stable <= 0.1 < watch <= 0.25 < act). Exits 1 when a column is in act, 2
    when there is nothing to judge."""
    from serving.monitor import drift_report, duration, moment, plot

    if last and since:
        raise typer.BadParameter("give --since or --last, not both")
    try:
        end = moment(until) if until else datetime.now(UTC)
        start = moment(since) if since else None
        if last or start is None:
            start = end - duration(last or "24h")
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    report = drift_report(trail, ModelStore(store), model, start, end, version, min_rows)
    table = Table("version", "feature", "kind", "rows", "PSI", "band",
                  title=f"{model}: PSI against the training data, {start:%Y-%m-%d %H:%M} to "
                  f"{end:%Y-%m-%d %H:%M} UTC")
    for f in report.features:
        table.add_row(f.version, f.feature, f.kind, str(f.rows), f"{f.psi:.4f}",
                      f"[{BAND_STYLE[f.band]}]{f.band}[/]")
    console.print(table)
    for note in report.notes:
        console.print(f"[dim]·[/] {note}")
    if png is not None and report.features:
        try:
            console.print(f"wrote {plot(report, png)}")
        except ImportError:
            console.print("[yellow]no PNG: matplotlib is not installed[/] (pip install "
                          "matplotlib; `make serve` installs it)")
    if not report.features:
        console.print(f"no decisions of '{model}' to compare in {trail} over that window")
        raise typer.Exit(2)
    raise typer.Exit(1 if report.act else 0)


def served_config(config_path: str) -> tuple[dict[str, Any], AppArgs]:
    """A Serve config file and its first application's args as served: the environment
    applied as ``deployments.app`` applies it (``serving.settings``)."""
    from serving.config import load_serve_config

    raw_config, args = load_serve_config(config_path)
    return raw_config, Environment.read().apply(args)


def train_missing(config_path: str) -> None:
    """Train every configured model that has no version in the store yet."""
    _, args = served_config(config_path)
    store = ModelStore(args.store_uri)
    for m in args.models:
        if not store.versions(m.name):
            console.print(f"[yellow]{m.name}[/]: no version in {store.root}; training one")
            train_with_progress(m.task_name, store, model_name=m.name)


class Proxy(StrEnum):
    haproxy = "haproxy"
    python = "python"


@app.command("serve")
def serve_cmd(
    config: Annotated[str, typer.Option(help="Serve config file.")] = DEFAULT_CONFIG,
    host: Annotated[str | None, typer.Option(help="Override http_options.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override http_options.port.")] = None,
    grpc_port: Annotated[int | None, typer.Option(
        min=0, max=65535, help="Port of the Open Inference Protocol over gRPC, on the HTTP "
        "host with HAProxy (default: the config's grpc_options.port, else 9000); 0 turns "
        "gRPC off.")] = None,
    train: Annotated[bool, typer.Option(help="Train missing default models first.")] = True,
    num_cpus: Annotated[int | None, typer.Option(help="Logical CPUs of the local Ray.")] = None,
    proxy: Annotated[Proxy, typer.Option(
        help="HTTP ingress: Ray Serve's HAProxy (measured faster, docs/benchmarks.md) or "
        "its Python proxy actor.")] = Proxy.haproxy,
    metrics_host: Annotated[str, typer.Option(
        envvar="FINSERVE_METRICS_HOST",
        help="Interface of Ray's metrics exports and HAProxy's stats page and Prometheus "
        "exporter; on loopback Ray's own ports stay there too. 0.0.0.0 lets another "
        "machine scrape them.")] = "127.0.0.1",
) -> None:
    """Start an embedded local Ray and serve every model in the Serve config."""
    started = time.perf_counter()
    # before anything imports Ray: its processes inherit the environment, and Ray reads the
    # node's address setting when it is imported
    haproxy_dir = _serve_environment(proxy, metrics_host)
    if train:
        train_missing(config)
    raw_config, args = served_config(config)
    serve_config = _serve_config(raw_config, host, port, proxy, grpc_port)
    os.environ.setdefault("FINSERVE_HOME", str(Path.cwd()))
    http = serve_config["http_options"]
    try:
        _serve_until_stopped(serve_config, num_cpus, lambda: _print_ready(
            http["host"], http["port"], time.perf_counter() - started,
            args.security.require_auth, serve_config["grpc_options"]["port"]))
    finally:
        _stop_haproxy(haproxy_dir)
        console.print("stopped; port released")


def _serve_config(raw_config: dict[str, Any], host: str | None, port: int | None,
                  proxy: Proxy, grpc_port: int | None = None) -> dict[str, Any]:
    """The Serve config to apply: its address overridden by ``host`` and ``port``, gRPC on
    ``grpc_port`` (None: the config's, else 9000; 0: none), and with the Python proxy
    uvicorn's idle keep-alive in Ray's proxy actor."""
    from deployments.deploy import DEFAULT_GRPC_PORT, IngressTimeouts, grpc_options

    http = raw_config.get("http_options") or {}
    http = {**http, "host": host or http.get("host", "127.0.0.1"),
            "port": port or int(http.get("port", 8000))}
    if proxy is Proxy.python:
        http.setdefault("keep_alive_timeout_s", IngressTimeouts.from_env().keep_alive_s)
    grpc = raw_config.get("grpc_options") or {}
    if grpc_port is None:
        grpc_port = int(grpc.get("port", DEFAULT_GRPC_PORT))
    return {**raw_config, "http_options": http,
            "grpc_options": {**grpc, **grpc_options(grpc_port)}}


def _serve_until_stopped(config: dict[str, Any], num_cpus: int | None,
                         on_ready: Callable[[], None]) -> None:
    """Start Ray, apply ``config``, wait for its applications, then serve until Ctrl-C or
    SIGTERM; Serve and Ray are shut down either way."""
    import ray
    from ray import serve

    from deployments.deploy import GRPC_HOST_ENV, GRPC_HOST_HOOK, apply_config, wait_running

    names = [a.get("name", "default") for a in config["applications"]]
    # Ray's gRPC servers on the HTTP host, not every interface (deployments/deploy.py)
    os.environ.setdefault(GRPC_HOST_ENV, config["http_options"]["host"])
    ray.init(num_cpus=num_cpus or max(os.cpu_count() or 1, 8), include_dashboard=False,
             logging_level="WARNING",
             runtime_env={"worker_process_setup_hook": GRPC_HOST_HOOK})
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # Ctrl-C stops the server even when started from a shell that ignores SIGINT (`cmd &`)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        apply_config(config)
        wait_running(names)
        on_ready()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("\nstopping FinServe …")
    finally:
        serve.shutdown()
        ray.shutdown()


def _stop_haproxy(haproxy_dir: str | None) -> None:
    """HAProxy can outlive Ray and keep holding the port: stop it, remove its folder."""
    from deployments.deploy import stop_leftover_haproxy

    if haproxy_dir is not None:
        if stop_leftover_haproxy(haproxy_dir):
            console.print("stopped a leftover HAProxy")
        shutil.rmtree(haproxy_dir, ignore_errors=True)


def _serve_environment(proxy: Proxy, metrics_host: str) -> str | None:
    """Set the environment Ray's processes inherit (so before ``ray.init``); the
    environment may override each value. With HAProxy, its folder (config, sockets and the
    launcher that adds the slow-client limits)."""
    from deployments.deploy import (
        IngressTimeouts,
        haproxy_env,
        haproxy_tuning,
        local_only_env,
    )

    # user code and the router on each replica's main loop: 1.2-1.3x the throughput here
    # (docs/benchmarks.md)
    defaults = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                # but request logs written at once, not 1,000 at a time (which holds them
                # for hours when traffic is light); buffering is worth another 25-40 %
                "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
                # slow clients: headers and bodies in 10 s, idle ones closed (deploy.py)
                **IngressTimeouts().env(),
                # Ray's own ports, its metrics exports and HAProxy's admin ports
                **local_only_env(metrics_host)}
    haproxy_dir = None
    if proxy is Proxy.haproxy:
        # short: Ray adds a 40-character folder, and HAProxy's socket paths stop at 97
        haproxy_dir = tempfile.mkdtemp(prefix="fsh-", dir="/tmp" if os.path.isdir("/tmp")
                                       else None)
        os.environ.update(haproxy_env(haproxy_dir))
        # one machine, no load balancer in front to tell: don't hold Ctrl-C for Ray's 30 s
        # ingress drain (the chart keeps it)
        defaults |= {**haproxy_tuning(), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
    return haproxy_dir


def _print_ready(host: str, port: int, seconds: float, require_auth: bool,
                 grpc_port: int = 0) -> None:
    base = f"http://{host}:{port}"
    console.print(f"\n[bold green]FinServe is serving on {base}[/] (ready in {seconds:.1f}s)")
    if grpc_port:
        console.print(f"  gRPC:       {host}:{grpc_port} (inference.GRPCInferenceService, "
                      "e.g. tritonclient.grpc)")
    if not require_auth:
        console.print("  [yellow]open mode: no API key is required[/] (security.require_auth "
                      "in the Serve config, or FINSERVE_REQUIRE_AUTH=true, turns keys on)")
    console.print(f"  API docs:   {base}/docs")
    console.print(f"  readiness:  {base}/v2/health/ready")
    console.print("  try:")
    console.print(
        f"    curl -s {base}/v1/sentiment/analyze -H 'content-type: application/json' "
        "-d '{\"records\": [{\"text\": \"Acme Bank beats estimates as profit surges\"}]}'",
        soft_wrap=True,
    )
    console.print("  Ctrl-C stops the server.", style="dim")


if __name__ == "__main__":  # pragma: no cover
    app()
