"""Peer serving systems in `make bench`: KServe's ModelServer and MLServer, each in a venv of
its own (``launch``), each serving FinServe's models through FinServe's own pipeline
(``benchmarks.pipeline``). The server modules here run in the peers' venvs, not FinServe's."""
