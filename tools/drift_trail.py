"""Write a decision trail of fraud traffic that has drifted, to try ``finserve monitor`` on
(docs/monitoring.md's report was drawn from it).

The gateway is built in this process, outside Serve (no Ray), over a model store, and
answers V2 requests of 64 generator rows whose amount is multiplied by ``--amount`` and
merchant risk raised by ``--merchant-risk`` (clipped to 1); the other columns look as the
training data does. A store without fraud gets it trained first.

    python tools/drift_trail.py --store /tmp/drift-store --trail /tmp/drift-trail
    finserve monitor fraud --store /tmp/drift-store --trail /tmp/drift-trail --png drift.png
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

app = typer.Typer(add_completion=False)


def gateway(store: Path, trail: Path) -> Any:
    """The gateway's ASGI app serving fraud's latest version, built outside Serve."""
    from ray.serve import batching

    from deployments.gateway import Gateway

    # @serve.batch checks its replica's max_ongoing_requests, and there is no replica here
    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = (
        lambda self: None)
    cls = next(c for c in Gateway.func_or_class.__mro__
               if "__serve_build_asgi_app__" in c.__dict__)
    gw = cls.__new__(cls)
    cls.__init__(gw, {"store_uri": str(store), "models": [{"name": "fraud"}],
                      "audit": {"location": str(trail), "keys_dir": f"{trail}-keys"}},
                 {"fraud": {}})
    gw.reconfigure({})
    return gw.__serve_build_asgi_app__()


@app.command()
def main(
    store: Annotated[Path, typer.Option(help="Model store (fraud trained if absent).")],
    trail: Annotated[Path, typer.Option(help="Where the decision trail goes.")],
    requests: Annotated[int, typer.Option(help="Requests of 64 rows.")] = 32,
    amount: Annotated[float, typer.Option(help="Factor on the shifted rows' amount.")] = 3.0,
    merchant_risk: Annotated[float, typer.Option(help="Added to their merchant risk.")]
    = 0.05,
) -> None:
    """Answer shifted fraud traffic; every answer is recorded."""
    import httpx

    from serving.store import ModelStore
    from serving.tasks import get_task
    from serving.training import train

    if not ModelStore(store).versions("fraud"):
        train("fraud", ModelStore(store))
    raw = get_task("fraud").sample_data(seed=42, n=64 * requests).raw
    raw[:, 0] *= amount
    raw[:, 2] = (raw[:, 2] + merchant_risk).clip(0, 1)
    asgi = gateway(store, trail)

    async def send() -> None:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for i in range(0, len(raw), 64):
                rows = raw[i:i + 64]
                body = {"inputs": [{"name": "features", "datatype": "FP32",
                                    "shape": list(rows.shape),
                                    "data": rows.reshape(-1).tolist()}]}
                answer = await client.post("/v2/models/fraud/infer", json=body)
                answer.raise_for_status()

    asyncio.run(send())
    print(f"{requests} requests of 64 rows recorded in {trail}")


if __name__ == "__main__":
    app()
