"""The peers' own virtual environments, and their servers as the bench's ``System``s.

Each peer runs from a venv of its own, ``benchmarks/.peers/<name>/`` (git-ignored), made on
first use from ``benchmarks/peers/requirements-<name>.txt`` with ``python -m venv`` and pip,
and made again when that file changes (its sha256 is stamped in the venv). FinServe's venv
is never touched; the peer imports FinServe's ``serving`` package from the repository
(``PYTHONPATH``), with the few core dependencies the requirements file pins.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from benchmarks.systems import ROOT, System

HERE = Path(__file__).resolve().parent
ENVS = HERE.parent / ".peers"
#: the peers in the order the bench starts them; each one's part name in ``run.PARTS``
PEERS = ("kserve", "mlserver")
#: the distributions whose installed versions a run records
REPORTED = ("kserve", "mlserver", "tensorflow", "numpy", "fastapi", "uvicorn", "protobuf")
STAMP = ".finserve-requirements.sha256"


class PeerSetupError(RuntimeError):
    """A peer's venv could not be made; the message ends with its install log's tail."""


@dataclass(frozen=True)
class PeerEnv:
    """One peer's pinned requirements and the venv made from them."""

    name: str
    envs: Path = ENVS
    #: the interpreter the venv is made with (FinServe's, whose base Python it takes)
    base_python: str = field(default_factory=lambda: sys.executable)

    @property
    def requirements(self) -> Path:
        return HERE / f"requirements-{self.name}.txt"

    @property
    def root(self) -> Path:
        return self.envs / self.name

    @property
    def log(self) -> Path:
        return self.envs / f"{self.name}-install.log"

    def bin(self, program: str) -> Path:
        return self.root / "bin" / program

    def digest(self) -> str:
        return hashlib.sha256(self.requirements.read_bytes()).hexdigest()

    def current(self) -> bool:
        """Whether the venv was made, completely, from this requirements file."""
        stamp = self.root / STAMP
        return stamp.exists() and stamp.read_text().strip() == self.digest()

    def ensure(self) -> dict[str, Any]:
        """Make the venv unless it is current; its install seconds (None when reused) and
        the installed versions of ``REPORTED``. Raises ``PeerSetupError``."""
        install_s = None
        if not self.current():
            install_s = self._install()
        return {"install_s": install_s, "requirements": self.requirements.name,
                "versions": self.versions()}

    def _install(self) -> float:
        started = time.perf_counter()
        shutil.rmtree(self.root, ignore_errors=True)
        self.envs.mkdir(parents=True, exist_ok=True)
        steps = [[self.base_python, "-m", "venv", str(self.root)],
                 [str(self.bin("python")), "-m", "pip", "install", "--upgrade", "pip"],
                 [str(self.bin("python")), "-m", "pip", "install", "-r", str(self.requirements)]]
        with self.log.open("w") as out:
            for cmd in steps:
                out.write(f"$ {' '.join(cmd)}\n")
                out.flush()
                if not _run(cmd, out):
                    self._fail(f"`{' '.join(cmd[-3:])}` failed")
        (self.root / STAMP).write_text(self.digest())
        return round(time.perf_counter() - started, 1)

    def versions(self) -> dict[str, str]:
        """Installed versions of the ``REPORTED`` distributions present in the venv."""
        code = ("import json, importlib.metadata as m\n"
                f"names = {list(REPORTED)!r}\n"
                "found = {}\n"
                "for n in names:\n"
                "    try: found[n] = m.version(n)\n"
                "    except m.PackageNotFoundError: pass\n"
                "print(json.dumps(found))")
        try:
            out = subprocess.run([str(self.bin("python")), "-c", code], capture_output=True,
                                 text=True, check=True)
            return json.loads(out.stdout)
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            raise PeerSetupError(f"{self.name}: its venv {self.root} does not run: {exc}") from exc

    def _fail(self, what: str) -> NoReturn:
        """Raise ``PeerSetupError``: ``what``, and the install log's last lines."""
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        where = self.log.relative_to(ROOT) if self.log.is_relative_to(ROOT) else self.log
        raise PeerSetupError(f"{self.name}: {what}; {where} ends:\n{tail}")


def _run(cmd: list[str], out: Any) -> bool:
    """Run one install step with its output in ``out``; whether it succeeded."""
    try:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode == 0
    except OSError as exc:
        out.write(f"{exc}\n")
        return False


#: KServe's ModelServer: one uvicorn worker process per core (``--workers``, KServe's way to
#: use more than one core: a single process runs predict on its event loop, one request at a
#: time); its per-request latency log off (a debugging aid; its access log and timing
#: middleware's trace stay, as shipped: FinServe writes an access log too); gRPC on, as
#: shipped, on a port of its own. Each worker process, like each of MLServer's, sets
#: TensorFlow's thread pools as FinServe's replicas do (``load_served(tf_threads=True)``):
#: two processes share two cores.
KSERVE_WORKERS = 2
#: MLServer: one inference worker per core (``parallel_workers``: "in line with the number of
#: CPU cores", its docs), adaptive batching on (off unless both settings are set, the docs
#: leave the values to experiment). ``max_batch_size`` is FinServe's own per model (its
#: Model stage's ``max_batch_size``: 32, fraud 64), so both servers merge at most as many
#: requests. ``max_batch_time`` must be > 0 for batching to act, and a lone request waits it
#: in full (``mlserver.batching.adaptive``), so it is about one batch-1 model call here
#: (0.35-1.2 ms, docs/benchmarks.md); under load the queue fills while the event loop parses
#: requests, and a batch takes what is queued without waiting.
MLSERVER_WORKERS = 2
MLSERVER_BATCH_TIME_S = 0.001


def peer_system(name: str, config: Path, models: list[str], work: Path) -> System:
    """The peer ``name`` serving ``models`` of the bench's Serve config, from its venv
    (``PeerEnv(name).ensure()`` first); free ports, its log in ``work``."""
    from deployments.deploy import free_port

    env = PeerEnv(name)
    port, grpc = free_port(), free_port()
    common = {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if name == "kserve":
        cmd = [str(env.bin("python")), "-m", "benchmarks.peers.kserve_server",
               "--finserve_config", str(config), "--models", ",".join(models),
               "--http_port", str(port), "--grpc_port", str(grpc),
               "--workers", str(KSERVE_WORKERS), "--enable_latency_logging", "false"]
        return System(name, cmd, port, work / f"{name}.log", common, [grpc])
    if name == "mlserver":
        metrics = free_port()
        folder = mlserver_folder(config, models, work / "mlserver",
                                 {"http_port": port, "grpc_port": grpc, "metrics_port": metrics})
        cmd = [str(env.bin("mlserver")), "start", str(folder)]
        return System(name, cmd, port, work / f"{name}.log", common, [grpc, metrics])
    raise ValueError(f"unknown peer '{name}'; known: {', '.join(PEERS)}")


def peer_settings(name: str, config: Path, models: list[str]) -> dict[str, Any]:
    """The settings a peer serves with, beyond its defaults (kept with a run's results)."""
    if name == "kserve":
        return {"workers": KSERVE_WORKERS, "enable_latency_logging": False}
    from serving.config import load_serve_config

    args = load_serve_config(config)[1]
    return {"parallel_workers": MLSERVER_WORKERS, "max_batch_time": MLSERVER_BATCH_TIME_S,
            "max_batch_size": {m: args.model(m).model.max_batch_size for m in models}}


def mlserver_folder(config: Path, models: list[str], folder: Path,
                    ports: dict[str, int]) -> Path:
    """MLServer's model repository: ``settings.json`` and a ``model-settings.json`` per
    model (``peer_settings``, the runtime ``benchmarks.peers.mlserver_runtime``)."""
    chosen = peer_settings("mlserver", config, models)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = {"host": "127.0.0.1", **ports, "parallel_workers": chosen["parallel_workers"],
                "model_repository_root": str(folder), "metrics_dir": str(folder / ".metrics"),
                "environments_dir": str(folder / ".envs")}
    (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    for m in models:
        (folder / m).mkdir()
        (folder / m / "model-settings.json").write_text(json.dumps({
            "name": m, "implementation": "benchmarks.peers.mlserver_runtime.FinServeRuntime",
            "max_batch_size": chosen["max_batch_size"][m],
            "max_batch_time": chosen["max_batch_time"],
            "parameters": {"extra": {"config": str(config)}}}, indent=1))
    return folder
