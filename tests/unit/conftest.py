"""Unit tests never start Ray: ``ray.init`` raises here."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*_: object, **__: object) -> None:
        raise RuntimeError("unit tests must not start Ray; put this test in tests/integration")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def make_gateway(tiny_store, tmp_path, monkeypatch):
    """Build the gateway's class outside Serve, fraud and forecast placed in it
    (``InGateway``); keyword arguments are added to its app arguments."""
    from ray.serve import batching

    from deployments.gateway import Gateway

    # @serve.batch checks its replica's max_ongoing_requests, and there is no replica here
    monkeypatch.setattr(batching._BatchQueue,
                        "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                        lambda self: None)
    cls = next(c for c in Gateway.func_or_class.__mro__
               if "__serve_build_asgi_app__" in c.__dict__)

    def make(**extra: Any) -> Any:
        args = {"store_uri": str(tiny_store.root),
                "audit": {"location": str(tmp_path / "trail"), "keys_dir": str(tmp_path / "k")},
                "models": [{"name": "fraud"}, {"name": "forecast"}], **extra}
        gateway = cls.__new__(cls)
        cls.__init__(gateway, args, {"fraud": {}, "forecast": {}})
        return gateway

    return make
