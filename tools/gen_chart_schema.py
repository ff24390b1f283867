"""Regenerate the chart's values.schema.json definitions that mirror Python models.

- ``app_*``: ``serving.config.AppArgs`` (less ``store_uri``, which the chart sets from
  ``modelStore``): exactly the Serve application's ``args`` the chart renders.
- ``routing_*``: ``serving.config.Routing``, the gateway deployment's ``user_config``
  the chart renders, and ``ModelRouting``, one model's entry of it.
- ``values_*``: what ``serve.app`` holds: ``app_AppArgs`` whose models are
  ``values_Model``, i.e. ``app_ModelSettings`` plus the ``routing_ModelRouting`` fields. The
  chart moves those fields out of ``args`` into the gateway's ``user_config`` (applied in
  place), so ``versions``, ``traffic`` and ``shadow`` are accepted on a model in the values
  and nowhere in ``app_*``.
- ``key_ApiKey``: ``apiKeys.keys`` entries, ``serving.security.ApiKey``.

They are generated, never hand-written. Run after changing those models; ``--check`` exits
1 when the file is stale.

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


def _values_defs(defs: dict[str, Any]) -> dict[str, Any]:
    """``values_App`` and ``values_Model``: ``app_AppArgs`` whose models also take the
    ``routing_ModelRouting`` fields (by reference, so they are that model's schema)."""
    settings, routing = defs["app_ModelSettings"], defs["routing_ModelRouting"]
    clash = set(settings["properties"]) & set(routing["properties"])
    if clash:
        raise SystemExit(f"ModelSettings and ModelRouting both define {sorted(clash)}: the "
                         "chart could not tell args from routing")
    model = {
        "additionalProperties": False,
        "description": "A served model: serving.config.ModelSettings, rendered into the "
        "Serve application's args, plus its routing (serving.config.ModelRouting: "
        f"{', '.join(routing['properties'])}), rendered into the gateway deployment's "
        "user_config and applied in place, without restarting replicas.",
        "properties": {
            **settings["properties"],
            **{name: {"$ref": f"#/$defs/routing_ModelRouting/properties/{name}"}
               for name in routing["properties"]},
        },
        "required": [*settings.get("required", []), *routing.get("required", [])],
        "type": "object",
    }
    app = json.loads(json.dumps(defs["app_AppArgs"]))
    app["properties"]["models"]["items"] = {"$ref": "#/$defs/values_Model"}
    app["description"] = ("serve.app: serving.config.AppArgs (less store_uri, set from "
                          "modelStore), each model with its routing fields.")
    return {"values_App": app, "values_Model": model}


def generated_defs() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from serving.config import AppArgs, Routing
    from serving.security import ApiKey

    defs = {
        **_defs(AppArgs, "app_", CHART_OWNED, "(store_uri is set by the chart from modelStore.)"),
        **_defs(Routing, "routing_"),
        **_defs(ApiKey, "key_"),
    }
    return defs | _values_defs(defs)


PREFIXES = ("app_", "routing_", "values_", "key_")
SERVE_APP_REF = {"$ref": "#/$defs/values_App"}


def render(current: dict[str, Any]) -> str:
    """values.schema.json text with fresh generated definitions; ``serve.app`` refers to
    ``values_App``."""
    kept = {k: v for k, v in current.get("$defs", {}).items() if not k.startswith(PREFIXES)}
    schema = {**current, "$defs": kept | generated_defs()}
    schema["properties"]["serve"]["properties"]["app"] = SERVE_APP_REF
    return json.dumps(schema, indent=2) + "\n"


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
