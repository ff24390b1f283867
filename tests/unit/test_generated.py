"""The files that take what they need from the one list of default models
(serving/default_models.yaml) are generated from it, never edited by hand."""

import subprocess
import sys
from pathlib import Path

import yaml

from serving.config import DEFAULT_MODELS_FILE, load_serve_config

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))

from tools import generate  # noqa: E402


def test_every_generated_file_is_current():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "generate.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_serve_yaml_and_the_chart_serve_the_default_models_in_order():
    names = [m["name"] for m in yaml.safe_load(DEFAULT_MODELS_FILE.read_text())]
    _, args = load_serve_config(generate.SERVE_YAML)
    assert [m.name for m in args.models] == names
    values = yaml.safe_load(generate.VALUES.read_text())
    assert [m["name"] for m in values["serve"]["app"]["models"]] == names


def test_a_hand_edited_block_is_rewritten_and_the_rest_of_the_file_kept():
    text = generate.SERVE_YAML.read_text()
    edited = text.replace("max_batch_size: 64", "max_batch_size: 8", 1)
    assert edited != text
    assert generate.serve_yaml(edited) == text
    assert generate.serve_yaml(text + "# a comment of mine\n").endswith("# a comment of mine\n")
