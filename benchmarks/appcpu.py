"""CPU per request of FinServe's gateway app alone, without HTTP or a Serve replica.

The gateway class is built in this process from the bench's Serve config (as a replica
would build it, one TensorFlow thread and all) and its ASGI app is called directly with
the bench's request bodies, ``--concurrency`` requests in flight. Set against the
in-process limit (the model) and the Ray Serve floor (the serving path), it says how much
of a served request is FinServe's own work (docs/benchmarks.md, levers row 33).

    python -m benchmarks.appcpu fraud --route v2 --concurrency 32 --requests 3200

Run alone it writes the bench's generated config and bodies for ``model``
(``benchmarks/.work``), so not while ``make bench`` runs; the bench runs it with its own
(``--config``, ``--body``).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False)


def gateway_app(config: Path, audit_dir: Path) -> tuple[Any, bool]:
    """The gateway's ASGI app, built outside Serve, every model at its latest version, and
    whether it writes the decision trail."""
    import yaml
    from ray.serve import batching

    from deployments.gateway import Gateway
    from serving.config import AppArgs

    # @serve.batch checks its replica's max_ongoing_requests, and there is no replica here
    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = (
        lambda self: None)
    args = yaml.safe_load(config.read_text())["applications"][0]["args"]
    args["audit"]["location"] = str(audit_dir)
    args["audit"]["keys_dir"] = f"{audit_dir}-keys"
    # the class Serve wraps (@serve.deployment, then @serve.ingress)
    cls = next(c for c in Gateway.func_or_class.__mro__
               if "__serve_build_asgi_app__" in c.__dict__)
    gateway = cls.__new__(cls)
    cls.__init__(gateway, AppArgs.model_validate(args).model_dump(),
                 {m["name"]: {} for m in args["models"]})
    gateway.reconfigure({"models": {m["name"]: {"versions": ["latest"]}
                                    for m in args["models"]}})
    return gateway.__serve_build_asgi_app__(), gateway.recorder is not None


async def drive(asgi: Any, path: str, body: bytes, headers: dict[str, str],
                concurrency: int, requests: int) -> None:
    """``requests`` POSTs of ``body`` to ``path``, ``concurrency`` at a time; each must
    answer 200."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in
                   {"content-type": "application/json", **headers,
                    "content-length": str(len(body))}.items()]

    async def one() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path,
                 "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": raw_headers, "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80), "state": {}}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # a disconnect never comes
            return {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await asgi(scope, receive, send)
        if status != [200]:
            raise RuntimeError(f"{path} answered {status}")

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))


@app.command()
def main(
    model: str,
    route: Annotated[str, typer.Option(help="v2, task or v2bin.")] = "v2",
    instances: Annotated[int, typer.Option(help="Instances per request (1 or 64).")] = 64,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 32,
    requests: Annotated[int, typer.Option(help="Measured requests.")] = 3200,
    audit: Annotated[bool, typer.Option(help="Decision trail as configured (standalone; "
                                             "with --config, as that config says).")]
    = True,
    profile: Annotated[int, typer.Option(help="Print the top N functions by own time.")]
    = 0,
    config: Annotated[Path | None, typer.Option(help="A Serve config (with --body), as the "
                                                     "bench passes its own.")] = None,
    body: Annotated[Path | None, typer.Option(help="The request body (with --config).")]
    = None,
) -> None:
    """Print the gateway app's CPU and wall time per request as JSON."""
    import ray

    from benchmarks.run import WORK, ensure_models, request_headers, task_path, write_inputs

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")  # Ray's metrics
    try:
        if config is None or body is None:  # standalone: the bench's inputs for this model
            ensure_models([model])
            config, bodies = write_inputs([model], audit)
            body = bodies[(model, route, instances)]
        path = task_path(model) if route == "task" else f"/v2/models/{model}/infer"
        shutil.rmtree(WORK / "appcpu-audit", ignore_errors=True)
        asgi, audit = gateway_app(config, WORK / "appcpu-audit")
        content, headers = body.read_bytes(), request_headers(body)
        profiler = cProfile.Profile() if profile else None

        async def measure() -> tuple[float, float]:
            """Warm up, then time; one event loop (the app's batch queues live on it)."""
            await drive(asgi, path, content, headers, concurrency, 20 * concurrency)
            cpu, wall = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            await drive(asgi, path, content, headers, concurrency, requests)
            if profiler:
                profiler.disable()
            return time.process_time() - cpu, time.perf_counter() - wall

        cpu, wall = asyncio.run(measure())
    finally:
        ray.shutdown()
    done = requests // concurrency * concurrency
    print(json.dumps({"model": model, "route": route, "instances": instances,
                      "concurrency": concurrency, "requests": done, "audit": audit,
                      "cpu_ms_per_request": round(1000 * cpu / done, 3),
                      "wall_ms_per_request": round(1000 * wall / done, 3)}))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)


if __name__ == "__main__":
    app()
