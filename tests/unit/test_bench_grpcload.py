"""The gRPC load generator: its bodies are what the gateway decodes, it measures against its
trivial server, and a call that fails is counted by its code, not timed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks import grpcload
from deployments.deploy import free_port
from serving.protocol import grpc_v2
from serving.protocol.grpc_v2 import pb

ROOT = Path(__file__).resolve().parents[2]


def test_a_body_is_the_request_tritonclient_would_send():
    raw = np.arange(18, dtype=np.float32).reshape(2, 9)
    message = pb.ModelInferRequest.FromString(grpcload.request_body("fraud", "features", raw,
                                                                    "FP32"))
    assert message.model_name == "fraud" and list(message.inputs[0].shape) == [2, 9]
    _, arrays = grpc_v2.infer_request(message)
    np.testing.assert_array_equal(arrays[0], raw)
    text = np.array(["a", "€"], dtype=object)
    _, arrays = grpc_v2.infer_request(pb.ModelInferRequest.FromString(
        grpcload.request_body("sentiment", "text", text, "BYTES")))
    assert arrays[0].tolist() == ["a", "€"]


@pytest.fixture
def trivial(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    body = tmp_path / "body.pb"
    body.write_bytes(grpcload.request_body("fraud", "features", np.ones((1, 9), np.float32),
                                           "FP32"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.grpcload", "serve", "--port",
                             str(port), "--body", str(body)], cwd=ROOT)
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while grpcload.check(target, body, timeout=1) != "OK":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        yield target, body
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_it_measures_against_its_trivial_server(trivial):
    target, body = trivial
    result = grpcload.measure(target, body.read_bytes(), connections=2, seconds=0.5)
    assert result["errors"] == 0 and result["requests"] > 10 and result["rps"] > 10
    assert 0 < result["p50_ms"] <= result["p99_ms"]


def test_failed_calls_are_counted_by_code_not_timed(tmp_path: Path):
    result = grpcload.measure(f"127.0.0.1:{free_port()}", b"", connections=1, seconds=0.3)
    assert result["rps"] == 0 and result["errors"] > 0
    assert set(result["errors_by_kind"]) == {"UNAVAILABLE"}
