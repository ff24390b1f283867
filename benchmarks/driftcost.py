"""CPU that drift monitoring adds to an answered request, in process (no Ray, no HTTP).

A model is trained small into a temporary store (its manifest gets a drift reference), its
answers to generator rows are computed once, then ``DriftMetrics.observe`` (what
``Gateway.answer`` calls) is timed on requests of 1 and 64 rows, its gauges set every
``publish_interval_s`` as in a replica (docs/monitoring.md, "What it costs").

    python -m benchmarks.driftcost fraud credit sentiment --seconds 3
"""

from __future__ import annotations

import json
import tempfile
import time
from typing import Annotated, Any

import numpy as np
import typer

app = typer.Typer(add_completion=False)


def served_answers(store: Any, model: str, raw: np.ndarray) -> dict[str, np.ndarray]:
    """What version 1 of ``model`` answers for ``raw``: its steps and signature, no Ray."""
    from serving.runtime import ModelRunner, TaskProcessing
    from serving.tasks import get_task

    steps = TaskProcessing(store, model, model, ["1"])
    runner = ModelRunner(store, model, model, ["1"], intra_op_threads=1)
    runner.load_all()
    batch = steps.preprocess("1", raw)
    batch.data = runner.predict_batch([("1", batch.data)])[0]
    return steps.postprocess("1", batch, get_task(model).request_params(None))


def prepare(model: str) -> tuple[Any, np.ndarray, dict[str, np.ndarray]]:
    """A store holding ``model`` trained small, generator rows and their answers."""
    from serving.store import ModelStore
    from serving.tasks import get_task
    from serving.training import train

    task = get_task(model)
    store = ModelStore(tempfile.mkdtemp(prefix="finserve-driftcost-"))
    train(model, store, samples=task.quick_training[0], epochs=1, seed=1)
    raw = task.check_raw(task.sample_data(seed=3, n=1024).raw)
    return store, raw, served_answers(store, model, raw)


def cpu_per_request(model: str, prepared: tuple[Any, np.ndarray, dict[str, np.ndarray]],
                    rows: int, seconds: float) -> dict[str, Any]:
    """Microseconds of CPU per ``observe`` of a ``rows``-row request, gauges included."""
    from deployments.drift_metrics import DriftMetrics
    from serving.config import ModelSettings

    store, raw, answers = prepared
    monitor = DriftMetrics(store, [ModelSettings(name=model)])
    monitor.gauge.set = lambda value, tags: None  # no Ray here: the gauge itself is Ray's cost
    batches = [(raw[i:i + rows], {k: v[i:i + rows] for k, v in answers.items()})
               for i in range(0, len(raw) - rows + 1, rows)]
    for part, out in batches:  # warm up: the reference read, a full window
        monitor.observe(model, "1", part, out)
    calls, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        for part, out in batches:
            monitor.observe(model, "1", part, out)
        calls += len(batches)
    cpu = time.process_time() - started
    columns = len(monitor.models[model].windows["1"].binning.columns)
    return {"model": model, "rows": rows, "columns": columns, "requests": calls,
            "cpu_us_per_request": round(1e6 * cpu / calls, 1)}


@app.command()
def main(models: Annotated[list[str] | None, typer.Argument(help="Models (tasks).")] = None,
         seconds: Annotated[float, typer.Option(help="CPU seconds per measurement.")] = 3.0
         ) -> None:
    """Print the CPU per request of drift monitoring as JSON lines."""
    for model in models or ["fraud"]:
        prepared = prepare(model)
        for rows in (1, 64):
            print(json.dumps(cpu_per_request(model, prepared, rows, seconds)), flush=True)


if __name__ == "__main__":
    app()
