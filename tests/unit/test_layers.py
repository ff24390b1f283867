"""The platform core never imports Ray; the config schema catches mistakes early."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments.config import AppArgs, load_serve_config

ROOT = Path(__file__).parents[2]


def test_serving_package_imports_without_ray():
    code = (
        "import sys, serving.cli, serving.runtime, serving.dataplane, serving.training;"
        "assert 'ray' not in sys.modules, 'serving imported ray'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_local_serve_config_is_valid():
    config, args = load_serve_config(ROOT / "deployments" / "serve.yaml")
    assert config["applications"][0]["import_path"] == "deployments.app:build_app"
    assert {m.name for m in args.models} >= {"fraud", "sentiment"}


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"name": "fraud"}, {"name": "fraud"}], "unique"),
        ([{"name": "Fraud!"}], "lower-case"),
        ([{"name": "models", "task": "fraud"}], "lower-case"),
        ([{"name": "x", "task": "nope"}], "unknown task"),
        ([{"name": "fraud", "versions": []}], "non-empty"),
        ([{"name": "fraud", "model": {"autoscaling": {"min_replicas": 5, "max_replicas": 2}}}],
         "min_replicas"),
        ([{"name": "fraud", "model": {"max_batch_sise": 5}}], "Extra inputs"),
    ],
)
def test_config_mistakes_fail_with_a_message(models, message):
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate({"models": models})


def test_stage_settings_become_deployment_options():
    args = AppArgs.model_validate(
        {"models": [{"name": "fraud", "model": {"num_gpus": 0.25, "autoscaling": {
            "min_replicas": 1, "max_replicas": 3}}}]}
    )
    options = args.model("fraud").model.deployment_options("fraud-model")
    assert options["ray_actor_options"]["num_gpus"] == 0.25
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert "num_replicas" not in options
