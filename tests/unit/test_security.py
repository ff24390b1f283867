import pytest

from serving.security import (
    Forbidden,
    KeyRing,
    RateLimited,
    Unauthenticated,
    hash_secret,
    new_key,
    write_keys,
)


def test_keys_are_stored_only_as_hashes(tmp_path):
    plaintext, entry = new_key("teller-app", ["fraud"])
    secret = plaintext.split("_", 2)[2]
    write_keys(tmp_path / "keys.yaml", [entry])
    text = (tmp_path / "keys.yaml").read_text()
    assert secret not in text and hash_secret(secret) in text
    ring = KeyRing.from_file(tmp_path / "keys.yaml")
    assert ring.authenticate(f"Bearer {plaintext}").id == "teller-app"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer fsk_teller-app_x",
                                    "Bearer fsk_nobody_x", "Bearer nonsense"])
def test_missing_or_wrong_keys_are_unauthenticated(header):
    _, entry = new_key("teller-app")
    with pytest.raises(Unauthenticated) as info:
        KeyRing([entry]).authenticate(header)
    assert info.value.status_code == 401
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


def test_keys_are_scoped_to_models():
    _, entry = new_key("fraud-only", ["fraud"])
    KeyRing.authorize(entry, "fraud")
    with pytest.raises(Forbidden) as info:
        KeyRing.authorize(entry, "credit")
    assert info.value.status_code == 403


def test_rate_limit_refills_over_time_and_says_when_to_retry():
    from serving.security import RateLimiter

    now = [0.0]
    _, entry = new_key("bursty", rate_per_s=2)
    limiter = RateLimiter(clock=lambda: now[0])
    limiter.check(entry)
    limiter.check(entry)  # burst of 2
    with pytest.raises(RateLimited) as info:
        limiter.check(entry)
    assert info.value.status_code == 429 and int(info.value.headers["Retry-After"]) >= 1
    now[0] += 0.5  # one token back at 2/s
    limiter.check(entry)
    _, unlimited = new_key("batch-job")
    for _ in range(100):
        limiter.check(unlimited)


def test_secrets_may_contain_underscores():
    from serving.security import ApiKey

    entry = ApiKey(id="app", sha256=hash_secret("ab_cd_ef"))
    assert KeyRing([entry]).authenticate("Bearer fsk_app_ab_cd_ef").id == "app"


# --- the key file, re-read when it changes ------------------------------------------------
def _ring_file(tmp_path, *ids: str):
    """A key file of ``ids`` (each may call every model); the plaintexts by id."""
    plain, entries = {}, []
    for key_id in ids:
        plain[key_id], entry = new_key(key_id)
        entries.append(entry)
    path = tmp_path / "keys.yaml"
    write_keys(path, entries)
    return path, plain, {e.id: e for e in entries}


def test_a_removed_key_is_refused_once_the_next_check_is_due(tmp_path):
    from serving.security import KeyFile

    path, plain, entries = _ring_file(tmp_path, "teller-app", "batch-job")
    now = [0.0]
    keys = KeyFile(path, check_every_s=1.0, clock=lambda: now[0])
    assert keys.authenticate(f"Bearer {plain['batch-job']}").id == "batch-job"
    write_keys(path, [entries["teller-app"]])
    now[0] = 0.5  # no check yet: at most one stat per interval on the request path
    assert keys.authenticate(f"Bearer {plain['batch-job']}").id == "batch-job"
    now[0] = 1.0
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {plain['batch-job']}")
    assert keys.authenticate(f"Bearer {plain['teller-app']}").id == "teller-app"
    added, plain["auditor"] = new_key("auditor")[::-1]
    write_keys(path, [entries["teller-app"], added])
    now[0] = 2.0
    assert keys.authenticate(f"Bearer {plain['auditor']}").id == "auditor"


@pytest.mark.parametrize("broken", ["", "keys: [{id: teller-app", "keys: [{id: x}]",
                                    "keys:\n", "- just a list\n", "keys: [{id: 'Bad Id'}]"])
def test_a_key_file_that_does_not_parse_keeps_the_keys_in_force_and_logs_once(
        tmp_path, caplog, broken):
    from serving.security import KeyFile

    path, plain, entries = _ring_file(tmp_path, "teller-app", "batch-job")
    keys = KeyFile(path, check_every_s=0)
    path.write_text(broken)
    for _ in range(3):
        assert keys.authenticate(f"Bearer {plain['batch-job']}").id == "batch-job"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "keeping its 2 keys" in errors[0].getMessage()
    write_keys(path, [entries["teller-app"]])  # fixed: read at the next check
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {plain['batch-job']}")


def test_a_vanished_key_file_keeps_the_keys_until_it_is_back(tmp_path):
    from serving.security import KeyFile

    path, plain, entries = _ring_file(tmp_path, "teller-app", "batch-job")
    keys = KeyFile(path, check_every_s=0)
    path.unlink()
    assert keys.authenticate(f"Bearer {plain['batch-job']}").id == "batch-job"
    write_keys(path, [entries["teller-app"]])
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {plain['batch-job']}")


def test_a_kubernetes_secret_volume_update_is_seen_by_its_new_inode(tmp_path):
    """kubelet writes a new timestamped folder and renames a ``..data`` link over the old
    one; the key file is a link through ``..data``. Same size and mtime: only the file
    behind the links is new."""
    import os

    from serving.security import KeyFile

    volume = tmp_path / "api-keys"
    volume.mkdir()
    source, plain, entries = _ring_file(tmp_path, "teller-app", "batch-jo")
    (volume / "..2026_01_01").mkdir()
    os.replace(source, volume / "..2026_01_01" / "keys.yaml")
    (volume / "..data").symlink_to("..2026_01_01")
    (volume / "keys.yaml").symlink_to("..data/keys.yaml")
    keys = KeyFile(volume / "keys.yaml", check_every_s=0)
    assert keys.authenticate(f"Bearer {plain['batch-jo']}").id == "batch-jo"
    old = volume / "..2026_01_01" / "keys.yaml"
    new_entry = new_key("auditor2")[1]  # an id as long as "batch-jo": the same file size
    new_entry.sha256 = entries["batch-jo"].sha256
    (volume / "..2026_01_02").mkdir()
    write_keys(volume / "..2026_01_02" / "keys.yaml", [entries["teller-app"], new_entry])
    new = volume / "..2026_01_02" / "keys.yaml"
    assert new.stat().st_size == old.stat().st_size
    os.utime(new, ns=(old.stat().st_atime_ns, old.stat().st_mtime_ns))
    (volume / "..data_tmp").symlink_to("..2026_01_02")
    os.replace(volume / "..data_tmp", volume / "..data")
    with pytest.raises(Unauthenticated):
        keys.authenticate(f"Bearer {plain['batch-jo']}")


def test_write_keys_replaces_the_file_in_one_step_and_keeps_its_mode(tmp_path):
    path, _, entries = _ring_file(tmp_path, "teller-app", "batch-job")
    path.chmod(0o640)
    inode = path.stat().st_ino
    write_keys(path, [entries["teller-app"]])
    assert path.stat().st_ino != inode  # renamed over, never truncated in place
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]
    assert set(KeyRing.parse(path.read_text()).keys) == {"teller-app"}


# --- admission before the body is read ---------------------------------------------------
@pytest.mark.parametrize(("path", "model"), [
    ("/v2/models/fraud", "fraud"), ("/v2/models/fraud/ready", "fraud"),
    ("/v2/models/fraud/infer", "fraud"), ("/v2/models/fraud/versions/2/infer", "fraud"),
    ("/v1/models/fraud", "fraud"), ("/v1/models/fraud:predict", "fraud"),
    ("/v1/models/fraud/versions/1:predict", "fraud"), ("/v1/fraud/score", "fraud"),
    ("/v2/health/ready", None), ("/v2", None), ("/docs", None), ("/v1/fraud", None),
    ("/v2/models/", None), ("/v1/fraud/score/extra", None),
])
def test_the_model_a_route_names_is_read_from_its_path(path, model):
    from deployments.http import model_in_path

    assert model_in_path(path) == model


def _gateway_like_app(keys, limiter, body_timeout_s=None):
    """A FastAPI app with the gateway's middlewares and a route that validates its body."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    from deployments.http import (
        AuthMiddleware,
        BodyLimitMiddleware,
        GatewayRoute,
        JsonBodyMiddleware,
        install_error_handlers,
    )
    from serving.errors import ModelNotFound

    class Body(BaseModel):
        records: list[dict]

    app = FastAPI()
    app.router.route_class = GatewayRoute
    install_error_handlers(app)

    @app.post("/v1/models/{model}:predict")
    async def predict(model: str, body: Body) -> dict:
        if model not in ("fraud", "credit"):
            raise ModelNotFound(model)
        return {"model": model, "n": len(body.records)}

    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=65536, timeout_s=body_timeout_s)
    app.add_middleware(AuthMiddleware, keys=keys, required=True, limiter=limiter,
                       models={"fraud", "credit"})
    return app


def _post(app, path, content, key, chunks=None):
    import asyncio

    import httpx

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post(path, content=chunks or content,
                                     headers={"authorization": f"Bearer {key}"})

    return asyncio.run(send())


def test_403_and_429_are_answered_before_the_body_is_parsed():
    from serving.security import RateLimiter

    credit_only, credit_entry = new_key("credit-desk", ["credit"])
    limited, limited_entry = new_key("slow", rate_per_s=1)
    app = _gateway_like_app(KeyRing([credit_entry, limited_entry]),
                            RateLimiter(clock=lambda: 0.0))
    for bad in (b"{not json", b"[" * 5000, b'{"records": "' + b"x" * 60000 + b'"}'):
        r = _post(app, "/v1/models/fraud:predict", bad, credit_only)
        assert r.status_code == 403 and "may not call model 'fraud'" in r.json()["error"]
    assert _post(app, "/v1/models/credit:predict", b"{not json", credit_only).status_code == 400
    # the one token of the limited key goes to a request whose body is then refused ...
    assert _post(app, "/v1/models/fraud:predict", b"{not json", limited).status_code == 400
    # ... and the next ones are refused for the rate, whatever their body
    r = _post(app, "/v1/models/fraud:predict", b"{not json", limited)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # a model that is not served goes on to its 404
    r = _post(app, "/v1/models/nope:predict", b'{"records": [{}]}', credit_only)
    assert r.status_code == 404 and "not served" in r.json()["error"]


def test_a_body_that_trickles_in_past_the_deadline_gets_408_and_the_connection_closes():
    import asyncio
    import time

    from serving.security import RateLimiter

    key, entry = new_key("ops")
    app = _gateway_like_app(KeyRing([entry]), RateLimiter(), body_timeout_s=0.5)

    async def trickle():
        yield b'{"records": ['
        for _ in range(20):
            await asyncio.sleep(0.1)
            yield b"{},"
        yield b"{}]}"

    started = time.monotonic()
    r = _post(app, "/v1/models/fraud:predict", None, key, chunks=trickle())
    assert r.status_code == 408 and "not received within 0.5s" in r.json()["error"]
    assert r.headers["connection"] == "close" and time.monotonic() - started < 1.5
    ok = _post(app, "/v1/models/fraud:predict", b'{"records": [{}, {}]}', key)
    assert ok.status_code == 200 and ok.json()["n"] == 2


# --- the ingress's slow-client limits ----------------------------------------------------
def _rays_haproxy_config(folder):
    """The config Ray's own template renders (no Ray started), with an HTTP frontend on
    every interface as a user may ask for."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(socket_path=f"{folder}/admin.sock", server_state_base=str(folder),
                        server_state_file=f"{folder}/state",
                        metrics_socket_path=f"{folder}/metrics.sock",
                        http_options=HTTPOptions(host="0.0.0.0", port=18123),
                        stats_port=18124, metrics_port=18125)
    api = HAProxyApi(cfg=cfg, config_file_path=f"{folder}/haproxy.cfg")
    api._generate_config_file_internal()
    return folder / "haproxy.cfg"


def test_the_launcher_adds_the_limits_to_rays_haproxy_config_and_haproxy_accepts_it(
        tmp_path):
    import os
    import re
    import subprocess
    import sys

    from deployments.deploy import PATCH_MARK, IngressTimeouts, patch_haproxy_config

    config = _rays_haproxy_config(tmp_path)
    env = {**os.environ, "FINSERVE_INGRESS_REQUEST_TIMEOUT_S": "7",
           "FINSERVE_INGRESS_KEEP_ALIVE_TIMEOUT_S": "9",
           "FINSERVE_HAPROXY_ADMIN_HOST": "127.0.0.1"}
    # as Ray runs it: `<launcher> -c -f <config>`; -c: HAProxy checks the config and exits
    done = subprocess.run([sys.executable, "-m", "deployments.deploy", "-c", "-f",
                           str(config)], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "Configuration file is valid" in done.stdout, done.stderr
    text = config.read_text()
    defaults = text.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert PATCH_MARK in defaults and "option http-buffer-request" in defaults
    assert "timeout http-request 7s" in defaults
    assert re.findall(r"timeout http-keep-alive (\d+)s", defaults)[-1] == "9"
    binds = re.findall(r"^\s*bind (\S+)", text, re.M)
    assert binds == ["127.0.0.1:18125", "*:18123", "127.0.0.1:18124"]  # exporter, app, stats
    assert patch_haproxy_config(text, IngressTimeouts()) == text  # a reload patches once


def test_ingress_limits_travel_in_the_environment():
    from deployments.deploy import IngressTimeouts, local_only_env

    limits = IngressTimeouts()
    assert (limits.request_s, limits.client_s, limits.keep_alive_s) == (10, 30, 15)
    assert IngressTimeouts.from_env(limits.env()) == limits
    assert limits.env()["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "30"  # Ray's own knob
    assert IngressTimeouts.from_env({"FINSERVE_INGRESS_REQUEST_TIMEOUT_S": "4"}).request_s == 4
    assert local_only_env()["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in local_only_env("0.0.0.0")
