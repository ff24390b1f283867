"""Regenerate the chart's values.schema.json definitions that mirror Python models.

``serve.app`` is ``deployments.config.AppArgs`` (less ``store_uri``, which the chart sets
from ``modelStore``): the ``app_*`` definitions. ``apiKeys.keys`` entries are
``serving.security.ApiKey``: ``key_ApiKey``. They are generated, never hand-written.
Run after changing those models; ``--check`` exits 1 when the file is stale.

    .venv/bin/python tools/gen_chart_schema.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "charts/finserve/values.schema.json"
CHART_OWNED = ("store_uri",)


def _rewrite(node: Any, prefix: str) -> Any:
    """Drop pydantic titles and move ``#/$defs/X`` refs to ``#/$defs/<prefix>X``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                value = "#/$defs/" + prefix + value.removeprefix("#/$defs/")
            out[key] = _rewrite(value, prefix)
        return out
    if isinstance(node, list):
        return [_rewrite(v, prefix) for v in node]
    return node


def _defs(model: type, prefix: str, drop: tuple[str, ...] = (), note: str = "") -> dict:
    """``<prefix>*`` definitions of a pydantic model and every model it uses; the top model
    refuses unknown fields even if pydantic would ignore them (a typo must fail)."""
    schema = model.model_json_schema()
    schema.setdefault("additionalProperties", False)
    defs = schema.pop("$defs", {})
    for field in drop:
        schema["properties"].pop(field, None)
        if field in schema.get("required", []):
            schema["required"].remove(field)
    if note:
        schema["description"] = f"{schema.get('description', '')} {note}".strip()
    return {prefix + k: v for k, v in _rewrite({model.__name__: schema, **defs}, prefix).items()}


def generated_defs() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from deployments.config import AppArgs
    from serving.security import ApiKey

    return {
        **_defs(AppArgs, "app_", CHART_OWNED, "(store_uri is set by the chart from modelStore.)"),
        **_defs(ApiKey, "key_"),
    }


PREFIXES = ("app_", "key_")


def render(current: dict[str, Any]) -> str:
    """values.schema.json text with fresh generated definitions."""
    kept = {k: v for k, v in current.get("$defs", {}).items() if not k.startswith(PREFIXES)}
    return json.dumps({**current, "$defs": kept | generated_defs()}, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = SCHEMA.read_text()
    new = render(json.loads(text))
    if new == text:
        print(f"{SCHEMA.relative_to(ROOT)} is up to date")
        return 0
    if args.check:
        print(f"{SCHEMA.relative_to(ROOT)} is stale: run python tools/gen_chart_schema.py")
        return 1
    SCHEMA.write_text(new)
    print(f"wrote {SCHEMA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
