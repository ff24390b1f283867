"""The environment is parsed once (serving.settings) and means the same to the CLI and to
the Serve application."""

import pytest
import yaml

from deployments.app import served_args
from serving import cli
from serving.settings import Environment

ARGS = {"models": [{"name": "fraud"}], "store_uri": "store",
        "security": {"api_keys_file": "keys.yaml"}}


def _config(tmp_path, require_auth: bool) -> str:
    args = {**ARGS, "security": {**ARGS["security"], "require_auth": require_auth}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "finserve", "args": args}]}))
    return str(path)


@pytest.mark.parametrize("value, on", [("false", False), ("0", False), ("true", True),
                                       ("1", True), (" FALSE ", False), ("on", True)])
@pytest.mark.parametrize("configured", [False, True])
def test_require_auth_means_the_same_to_the_cli_and_the_app(
        tmp_path, monkeypatch, capsys, value, on, configured):
    monkeypatch.setenv("FINSERVE_REQUIRE_AUTH", value)
    config = _config(tmp_path, configured)
    _, cli_args = cli.served_config(config)
    app_args = served_args({**ARGS, "security": {**ARGS["security"],
                                                 "require_auth": configured}})
    assert cli_args.security.require_auth is on
    assert app_args.security.require_auth is on
    cli._print_ready("127.0.0.1", 8000, 1.0, cli_args.security.require_auth)
    assert ("open mode" in capsys.readouterr().out) is not on


@pytest.mark.parametrize("configured", [False, True])
def test_an_unset_or_empty_flag_leaves_the_config_in_force(monkeypatch, configured):
    monkeypatch.setenv("FINSERVE_REQUIRE_AUTH", "")
    args = served_args({**ARGS, "security": {"require_auth": configured,
                                             "api_keys_file": "k.yaml"}})
    assert args.security.require_auth is configured


def test_a_bad_flag_is_refused_with_its_variable():
    with pytest.raises(ValueError, match=r"FINSERVE_REQUIRE_AUTH='maybe'"):
        Environment.read({"FINSERVE_REQUIRE_AUTH": "maybe"})


def test_paths_start_at_home_and_the_keys_file_is_overridden(tmp_path):
    env = Environment.read({"FINSERVE_HOME": str(tmp_path),
                            "FINSERVE_API_KEYS_FILE": "/etc/keys.yaml",
                            "FINSERVE_STORE": "s3://bank/models"})
    from serving.config import AppArgs

    args = env.apply(AppArgs.model_validate(ARGS))
    assert args.store_uri == str(tmp_path / "store")
    assert args.audit.location == str(tmp_path / "audit")
    assert args.audit.keys_dir == str(tmp_path / "keys")
    assert args.security.api_keys_file == "/etc/keys.yaml"
    assert env.default_store == "s3://bank/models"
    assert env.resolve_path("s3://x/y") == "s3://x/y"
    assert Environment.read({}).default_store == "model_store"
