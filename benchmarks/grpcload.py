"""A gRPC load generator for the Open Inference Protocol, written with grpcio, and a trivial
gRPC server to measure its own ceiling.

``load``: closed-loop, like wrk: ``connections`` calls in flight, each on a channel (a TCP
connection) of its own, each sending its next ``ModelInfer`` when its answer arrives; the
request is one serialized ``ModelInferRequest`` (raw contents, as tritonclient.grpc sends
it), sent and answered as bytes (no decoding on either side of the measurement). Latency
is per call; a call that ends in any status but OK is an error, counted by its code.
``serve``: answers every ``ModelInfer`` at once with a fixed message the request's size.

    python -m benchmarks.grpcload load 127.0.0.1:9000 fraud-grpc-64.pb -c 32 --seconds 10
    python -m benchmarks.grpcload serve --port 9100 --body fraud-grpc-64.pb
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import grpc
import numpy as np
import typer

METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: every channel its own TCP connection (grpcio shares one per target otherwise)
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1),
                   ("grpc.max_receive_message_length", 64 << 20)]
app = typer.Typer(add_completion=False)


def request_body(model: str, name: str, raw: np.ndarray, datatype: str) -> bytes:
    """A serialized ``ModelInferRequest`` of one input, its tensor as raw contents."""
    from serving.protocol import binary
    from serving.protocol.grpc_v2 import pb

    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[binary.encode(raw)])
    request.inputs.add(name=name, datatype=datatype, shape=raw.shape)
    return request.SerializeToString()


async def _calls(target: str, body: bytes, connections: int, seconds: float,
                 metadata: tuple[tuple[str, str], ...]) -> tuple[list[float], Counter[str]]:
    """Run the closed loop for ``seconds``; latencies (s) of calls answered OK, and the
    codes of the others."""
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
                for _ in range(connections)]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def worker(channel: grpc.aio.Channel) -> None:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call(body, metadata=metadata, timeout=max(10.0, seconds))
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(worker(c) for c in channels))
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return latencies, errors


def measure(target: str, body: bytes, connections: int, seconds: float, warmup: float = 0.0,
            metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """An unmeasured warm-up, then the run: counts, errors and latency percentiles in ms,
    with the keys ``benchmarks.loadgen.wrk`` gives."""
    if warmup > 0:
        asyncio.run(_calls(target, body, connections, warmup, metadata))
    started = time.perf_counter()
    latencies, errors = asyncio.run(_calls(target, body, connections, seconds, metadata))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"requests": len(latencies) + sum(errors.values()),
            "rps": len(latencies) / elapsed, "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "errors": sum(errors.values()), "errors_by_kind": dict(errors),
            "load1_after": round(os.getloadavg()[0], 2)}


def run(target: str, body: Path, connections: int, seconds: float, warmup: float = 0.0,
        metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """``measure`` in a process of its own (as wrk runs), so that the generator's CPU is
    its own and not the bench's."""
    cmd = [sys.executable, "-m", "benchmarks.grpcload", "load", target, str(body),
           "--connections", str(connections), "--seconds", str(seconds),
           "--warmup", str(warmup),
           *(f"--metadata={k}={v}" for k, v in (metadata or {}).items())]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=seconds + warmup + 120, cwd=Path(__file__).parents[1])
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"grpcload gave no summary: {out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def check(target: str, body: Path, timeout: float = 60.0) -> str:
    """The status code name of one call (``OK`` when it answers)."""
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(METHOD)(body.read_bytes(), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name  # type: ignore[attr-defined, no-any-return]
    return "OK"


@app.command("load")
def load_cmd(
    target: Annotated[str, typer.Argument(help="host:port")],
    body: Annotated[Path, typer.Argument(help="A serialized ModelInferRequest.")],
    connections: Annotated[int, typer.Option("--connections", "-c", min=1)] = 1,
    seconds: Annotated[float, typer.Option(min=0.1)] = 10.0,
    warmup: Annotated[float, typer.Option(min=0.0)] = 0.0,
    metadata: Annotated[list[str] | None, typer.Option(help="key=value, repeatable.")] = None,
) -> None:
    """Load ``target`` and print one line: BENCH_JSON {...}."""
    pairs = tuple(tuple(m.split("=", 1)) for m in metadata or [])
    result = measure(target, body.read_bytes(), connections, seconds, warmup,
                     pairs)  # type: ignore[arg-type]
    print("BENCH_JSON " + json.dumps(result), flush=True)


@app.command("serve")
def serve_cmd(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")],
    body: Annotated[Path, typer.Option(help="The request; the answer is as large.")],
) -> None:
    """A trivial ``inference.GRPCInferenceService/ModelInfer``: a fixed answer at once."""
    answer = b"\x00" * len(body.read_bytes())

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    async def main() -> None:
        handler = grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)})
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


if __name__ == "__main__":
    app()
