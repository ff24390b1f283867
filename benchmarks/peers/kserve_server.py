"""KServe's ModelServer serving FinServe's models through FinServe's pipeline.

Runs in the kserve venv (``benchmarks/peers/launch.py``): ``python -m
benchmarks.peers.kserve_server --finserve_config CONFIG --http_port N --grpc_port M --workers 2``;
every other flag is KServe's own (``kserve.model_server.parser``). With ``workers`` > 1,
KServe 0.21 binds the HTTP socket in the parent and spawns that many uvicorn processes
(``RESTServerMultiProcess``), each getting the registered models *pickled*: a model here
pickles as its name and config and loads its SavedModel again in the worker.
"""

from __future__ import annotations

import argparse
from typing import Any

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.utils.utils import generate_uuid

from benchmarks.pipeline import Served, load_served, v2_outputs


class FinServeModel(Model):
    """One FinServe model: the request's first input tensor through FinServe's pipeline."""

    def __init__(self, name: str, config: str) -> None:
        super().__init__(name)
        self.config = config
        self.served: Served | None = None

    def load(self) -> bool:
        self.served = load_served(self.config, only=[self.name], tf_threads=True)[self.name]
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "served": None, "ready": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()  # in a spawned worker: its own TensorFlow and SavedModel

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                ) -> InferResponse:
        """Synchronous, as KServe's own predictors are: the model call is CPU-bound."""
        assert self.served is not None
        answers = self.served.answer(payload.inputs[0].as_numpy())
        outputs = [InferOutput(o["name"], o["shape"], o["datatype"], o["data"])
                   for o in v2_outputs(answers)]
        # as KServe's own predictors answer (kserve.utils.utils.get_predict_response)
        return InferResponse(payload.id or generate_uuid(), self.name, outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    # not --config: KServe's parser, run at import, takes it for --configure_logging
    parser.add_argument("--finserve_config", required=True, help="the bench's Serve config")
    parser.add_argument("--models", required=True, help="comma-separated model names")
    args, _ = parser.parse_known_args()
    models = [FinServeModel(name, args.finserve_config) for name in args.models.split(",")]
    for model in models:
        model.load()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port,
                workers=args.workers).start(models)


if __name__ == "__main__":
    main()
