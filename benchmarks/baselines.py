"""Baselines (a) and (b): one uvicorn process, a sync FastAPI endpoint per request, no Ray.

Both expose ``POST /v2/models/{model}/infer`` with the V2 request body and answer a V2-shaped
body with the task's postprocessed outputs (the same answers as FinServe's V2 route; no
audit record, no auth, no limits). They differ only in how the model is called:

- ``keras`` (a, the seed design's way): ``keras.Model.predict`` per request on a Keras model
  made of ``keras.layers.TFSMLayer`` wrapping the stored SavedModel's ``serving_default``
  endpoint (the store holds SavedModels, not ``.keras`` files; the layer runs the same graph).
- ``signature`` (b, hand-written single process): the SavedModel signature called directly
  (``serving.training.load_signature``), as FinServe's Model stage does.

``python -m benchmarks.baselines {keras|signature} --config CONFIG --port N``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import Body, FastAPI, HTTPException, Response

from benchmarks.pipeline import Predict, load_served, raw_of, signature, v2_outputs
from serving.tasks import Task


def keras_predict(path: Path, task: Task, params: dict[str, Any]) -> Predict:
    """A Keras model around the SavedModel endpoint, called with ``Model.predict``."""
    import keras

    spec = task.model_input_spec(params)
    inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name, name="inputs")
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    model = keras.Model(inputs, layer(inputs))

    def predict(x: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in model.predict(x, verbose=0).items()}

    return predict


def create_app(kind: str, config: str) -> FastAPI:
    served = load_served(config, keras_predict if kind == "keras" else signature)
    app = FastAPI(title=f"baseline-{kind}")

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{model}/infer")
    def infer(model: str, body: dict[str, Any] = Body()) -> Response:
        if model not in served:
            raise HTTPException(404, f"unknown model '{model}'")
        outputs = v2_outputs(served[model].answer(raw_of(body["inputs"][0])))
        return Response(orjson.dumps({"model_name": model, "outputs": outputs}),
                        media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["keras", "signature"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    opts = parser.parse_args()
    uvicorn.run(create_app(opts.kind, opts.config), host="127.0.0.1", port=opts.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
