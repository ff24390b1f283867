"""Regenerate every file that takes what it needs from the one list of default models
(serving/default_models.yaml) and from the tasks themselves, and the chart's schema.

- deployments/serve.yaml: the app's ``models`` and the gateway's routing (every model at
  ``latest``), between ``# >>> default models`` and ``# <<< default models``;
- charts/finserve/values.yaml: ``serve.app.models``, between the same markers;
- charts/finserve/files/sample_requests.json: a V2 request per task (its request example,
  tests/testdata/<task>_task_request.json), which the helm test and NOTES send;
- README.md: the use-case table, between ``<!-- >>> default models -->`` markers; every
  default model must have its section in docs/models.md (``## <name>: ...``);
- charts/finserve/values.schema.json (tools/gen_chart_schema.py).

Never edit those parts by hand: ``make generate`` after changing the list or a task;
``--check`` exits 1 when a file is stale (a unit test runs it).

    .venv/bin/python tools/generate.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.config import ModelSettings, default_models  # noqa: E402
from serving.protocol.examples import EXAMPLES, protocol_bodies  # noqa: E402
from serving.tasks import TASKS, get_task  # noqa: E402
from tools import gen_chart_schema  # noqa: E402

SERVE_YAML = ROOT / "deployments" / "serve.yaml"
VALUES = ROOT / "charts" / "finserve" / "values.yaml"
SAMPLES = ROOT / "charts" / "finserve" / "files" / "sample_requests.json"
README = ROOT / "README.md"
MODELS_DOC = ROOT / "docs" / "models.md"
YAML_BLOCK = re.compile(r"^( *)# >>> default models\n.*?^ *# <<< default models\n",
                        re.M | re.S)
MD_BLOCK = re.compile(r"<!-- >>> default models -->\n.*?<!-- <<< default models -->\n", re.S)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=200).strip()


def model_entry(model: ModelSettings, extra: dict[str, Any] | None = None) -> list[str]:
    """One model as a YAML list item: its name, then every field set apart from defaults."""
    fields = model.model_dump(exclude_defaults=True)
    fields.pop("name")
    fields = {**(extra or {}), **fields, "options": model.options}
    lines = [f"- name: {model.name}"]
    lines += [f"  {key}: {_flow(value)}" for key, value in fields.items() if value]
    return lines


def replace_yaml_blocks(text: str, blocks: list[list[str]]) -> str:
    """``text`` with its marked blocks, in order, replaced by ``blocks`` (lines, indented
    like the block's first marker)."""
    found = list(YAML_BLOCK.finditer(text))
    if len(found) != len(blocks):
        raise SystemExit(f"expected {len(blocks)} marked blocks, found {len(found)}")
    for match, lines in reversed(list(zip(found, blocks, strict=True))):
        pad = match.group(1)
        body = [f"{pad}# >>> default models", *(pad + line for line in lines),
                f"{pad}# <<< default models"]
        text = text[:match.start()] + "\n".join(body) + "\n" + text[match.end():]
    return text


def serve_yaml(text: str) -> str:
    models = default_models()
    app = [line for m in models for line in model_entry(m)]
    routing = [f"{m.name}: {_flow({'versions': ['latest']})}" for m in models]
    return replace_yaml_blocks(text, [app, routing])


def values_yaml(text: str) -> str:
    lines = [line for m in default_models() for line in model_entry(m, {"versions": ["latest"]})]
    return replace_yaml_blocks(text, [lines])


def sample_requests(_: str) -> str:
    """A compact V2 request body per task that has a request example."""
    samples = {name: json.dumps(protocol_bodies(name)["v2"], separators=(",", ":"))
               for name in sorted(TASKS) if (EXAMPLES / f"{name}_task_request.json").exists()}
    return json.dumps(samples, indent=2) + "\n"


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


def readme_table(text: str) -> str:
    headings = re.findall(r"^## (.+)$", MODELS_DOC.read_text(), re.M)
    rows = ["| use case | task route | answers | data, metric, columns |",
            "| --- | --- | --- | --- |"]
    for m in default_models():
        task = get_task(m.task_name)
        heading = next((h for h in headings if h.startswith(f"{m.name}:")), None)
        if heading is None:
            raise SystemExit(f"docs/models.md has no section '## {m.name}: ...'")
        rows.append(f"| {m.name} | `POST /v1/{m.name}/{task.route}` | {task.description} "
                    f"| [docs/models.md](docs/models.md#{_anchor(heading)}) |")
    table = "<!-- >>> default models -->\n" + "\n".join(rows) + "\n<!-- <<< default models -->\n"
    if not MD_BLOCK.search(text):
        raise SystemExit("README.md has no '<!-- >>> default models -->' block")
    return MD_BLOCK.sub(lambda _: table, text)


GENERATED: dict[Path, Callable[[str], str]] = {
    SERVE_YAML: serve_yaml, VALUES: values_yaml, SAMPLES: sample_requests, README: readme_table,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, render in GENERATED.items():
        text = path.read_text() if path.exists() else ""
        new = render(text)
        if new == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(new)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print(f"stale: {', '.join(map(str, stale))}: run make generate")
        return 1
    return gen_chart_schema.main(["--check"] if args.check else [])


if __name__ == "__main__":
    sys.exit(main())
