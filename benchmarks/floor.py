"""Ray Serve's own floor for FinServe's requests: an application that does no work.

The bench serves it with ``finserve serve`` from FinServe's own Serve config, with only the
import path swapped (``floor_config``): the same ingress (HAProxy, its tuning), the same
gateway replicas, CPUs, ``max_ongoing_requests`` and logging. Its one deployment is a raw
ASGI app that reads each request body and answers the bytes FinServe answered to that
path (saved in ``ANSWERS`` by the bench), so requests and answers are the same size as
FinServe's. No application served over Ray Serve's HTTP path on this machine can be
faster; FinServe's batched throughput is read against it as well as against the model's
in-process limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray import serve
from ray.serve import Application

from serving.config import GATEWAY, AppArgs

ANSWERS = Path(__file__).resolve().parent / ".work" / "answers"
IMPORT_PATH = "benchmarks.floor:build_app"


def answer_file(path: str) -> Path:
    """Where the bench keeps FinServe's answer to a POST on ``path``."""
    return ANSWERS / (path.strip("/").replace("/", "--") + ".json")


class Canned:
    """ASGI app: read the whole body, answer the saved bytes for the path (404 without)."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = scope["type"] == "http"
        while more:
            more = (await receive()).get("more_body", False)
        body = self.answers.get(scope["path"])
        status, body = (200, body) if body else (404, b'{"error":"no answer saved"}')
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _answers() -> dict[str, bytes]:
    saved = {"/" + f.stem.replace("--", "/"): f.read_bytes() for f in ANSWERS.glob("*.json")}
    return {"/v2/health/ready": b'{"ready":true}', **saved}


@serve.ingress(lambda: Canned(_answers()))
class Floor:
    """The deployment: all its work is Ray Serve's own."""


def build_app(args: dict[str, Any]) -> Application:
    """Bind ``Floor`` with the gateway's replicas and resources from FinServe's args."""
    gateway = AppArgs.model_validate(args).gateway
    return serve.deployment(Floor).options(**gateway.deployment_options(GATEWAY)).bind()


def floor_config(finserve_config: Path, out: Path) -> Path:
    """FinServe's Serve config serving the floor instead (routing dropped: no gateway)."""
    config = yaml.safe_load(finserve_config.read_text())
    application = config["applications"][0]
    application["import_path"] = IMPORT_PATH
    application.pop("deployments", None)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out
