"""Where gRPC is served: `finserve serve --grpc-port`, the Serve config's grpc_options and the
bind on the HTTP host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments import deploy
from serving.cli import Proxy, _serve_config
from serving.protocol.grpc_v2 import SERVICER_FUNCTION

SERVE_YAML = Path(__file__).parents[2] / "deployments" / "serve.yaml"


def test_the_local_serve_config_serves_grpc_on_9000_with_the_one_servicer():
    config = yaml.safe_load(SERVE_YAML.read_text())
    assert config["grpc_options"] == deploy.grpc_options(9000)
    assert deploy.grpc_options(9000)["grpc_servicer_functions"] == [SERVICER_FUNCTION]
    assert deploy.grpc_options(0)["grpc_servicer_functions"] == []  # Ray starts no server


@pytest.mark.parametrize(("given", "option", "port"), [
    ({}, None, 9000),  # no grpc_options: the default port
    ({"grpc_options": {"port": 9100}}, None, 9100),  # the config's
    ({"grpc_options": {"port": 9100}}, 9200, 9200),  # --grpc-port wins
    ({"grpc_options": {"port": 9100}}, 0, 0),  # --grpc-port 0: off
])
def test_grpc_port_comes_from_the_option_else_the_config(given: dict[str, Any],
                                                         option: int | None, port: int):
    config = _serve_config({"applications": [], **given}, None, None, Proxy.haproxy, option)
    assert config["grpc_options"] == deploy.grpc_options(port)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}


class _Server:
    def __init__(self) -> None:
        self.addresses: list[str] = []


@pytest.mark.parametrize(("host", "bound"), [
    ("127.0.0.1", "127.0.0.1:9000"), ("::1", "[::1]:9000"), ("0.0.0.0", "[::]:9000"),
    ("", "[::]:9000"),
])
def test_rays_grpc_servers_bind_on_the_http_host(monkeypatch, host: str, bound: str):
    from ray.serve._private import default_impl

    server = _Server()
    monkeypatch.setattr(default_impl, "add_grpc_address",
                        lambda s, address: s.addresses.append(address))
    monkeypatch.setenv(deploy.GRPC_HOST_ENV, host)
    deploy.bind_grpc_to_host()
    default_impl.add_grpc_address(server, "[::]:9000")
    default_impl.add_grpc_address(server, "10.0.0.1:9001")  # an explicit address stays
    assert server.addresses == [bound, "10.0.0.1:9001"]


def test_the_hook_is_importable_by_the_path_ray_is_given():
    from ray._common.utils import load_class

    assert load_class(deploy.GRPC_HOST_HOOK) is deploy.bind_grpc_to_host
