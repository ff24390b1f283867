"""What the chart's Grafana dashboard and alert rules query, and what FinServe and Ray Serve
export: shared by the chart tier's name check (tests/chart/test_metric_names.py) and the
reliability tier's real Prometheus (tests/reliability/test_7_prometheus.py)."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "charts" / "finserve" / "dashboards" / "finserve.json"

#: Ray Serve's own metrics the dashboard may use (they are not FinServe's, so they cannot be
#: read from its code): the Prometheus name and its labels. ray_serve_deployment_replica_healthy
#: is the gauge Serve's controller sets per deployment (ray/serve/_private/deployment_state.py,
#: "serve_deployment_replica_healthy"); a chart test checks the installed Ray still defines it.
RAY_SERVE_METRICS: dict[str, frozenset[str]] = {
    "ray_serve_deployment_replica_healthy": frozenset({"deployment", "application", "replica"}),
}
#: labels Ray Serve adds to every metric made with ray.serve.metrics (ray/serve/metrics.py)
SERVE_DEFAULT_LABELS = frozenset({"deployment", "replica", "application"})
#: labels Prometheus and the Prometheus Operator give every target of a PodMonitor
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "endpoint"})


@dataclass(frozen=True)
class PanelQuery:
    """One target of one dashboard panel."""

    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.panel!r} [{self.ref}]"


def panel_queries(board: dict[str, Any]) -> list[PanelQuery]:
    """Every Prometheus target of every panel, rows' nested panels included."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[PanelQuery]:
        for panel in panels:
            yield from walk(panel.get("panels") or [])
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    yield PanelQuery(panel.get("title", ""), target.get("refId", ""),
                                     target["expr"])

    return list(walk(board.get("panels") or []))


VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr: str, board: dict[str, Any], scrape_s: float, interval_s: float) -> str:
    """``expr`` with Grafana's variables replaced as Grafana would: ``$__interval`` by
    ``interval_s`` (the time range over the panel's data points), ``$__rate_interval`` by
    max($__interval + scrape interval, 4 x scrape interval), ``$__range`` by the dashboard's
    time range, and the dashboard's own variables by their current value (``.*`` for All).
    An unknown variable raises KeyError."""
    own: dict[str, str] = {}
    for var in (board.get("templating") or {}).get("list", []):
        current = (var.get("current") or {}).get("value")
        if current in (None, "$__all", ["$__all"]) and var.get("includeAll"):
            current = ".*"
        if current is not None:
            own[var["name"]] = "|".join(current) if isinstance(current, list) else str(current)
    hours = _range_hours(board)
    builtins = {
        "__interval": f"{int(interval_s)}s", "__interval_ms": str(int(interval_s * 1000)),
        "__rate_interval": f"{int(max(interval_s + scrape_s, 4 * scrape_s))}s",
        "__range": f"{hours}h", "__range_s": str(hours * 3600),
    }

    def value(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return {**own, **builtins}[name]

    return VARIABLE.sub(value, expr)


def _range_hours(board: dict[str, Any]) -> int:
    """The dashboard's default time range in hours (``now-6h`` to ``now``: 6)."""
    match = re.fullmatch(r"now-(\d+)h", (board.get("time") or {}).get("from", "now-1h"))
    return int(match.group(1)) if match else 1


KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                      "and", "or", "unless", "offset", "inf", "nan", "atan2"})
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?")
SELECTOR = re.compile(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    aggregations, keywords, label names or inside strings, label matchers and ranges."""
    bare = STRING.sub('""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = GROUPING.sub(" ", bare)
    return {name for name, call in IDENTIFIER.findall(bare)
            if not call and name.lower() not in KEYWORDS}


def selector_labels(expr: str) -> dict[str, set[str]]:
    """The label names each ``metric{...}`` selector of ``expr`` matches on."""
    found: dict[str, set[str]] = {}
    for name, matchers in SELECTOR.findall(STRING.sub('""', expr)):
        found.setdefault(name, set()).update(MATCHER.findall(matchers))
    return found


# --- what FinServe exports ----------------------------------------------------------------
#: the modules that define FinServe's metrics, and how to make every metric they define
METRIC_MODULES = ("deployments.metrics", "deployments.drift_metrics")


def _make_every_metric(modules: dict[str, ModuleType]) -> None:
    """Instantiate each class that makes metrics (a new one belongs here: the name check
    below fails until it is)."""
    gateway, drift = modules["deployments.metrics"], modules["deployments.drift_metrics"]
    gateway.GatewayMetrics()
    gateway.StageMetrics("model", "stage")
    drift.DriftMetrics(store=None, models=[])  # type: ignore[arg-type]


def finserve_metrics() -> dict[str, frozenset[str]]:
    """Every Prometheus series name FinServe exports through Ray (``ray_`` prefix; counters
    ``_total``, histograms ``_bucket``/``_sum``/``_count``) and its labels, read from the
    code: the metric classes are made with ``ray.serve.metrics`` recorded."""
    import importlib

    made: list[tuple[str, str, tuple[str, ...]]] = []

    def recorder(kind: str) -> Any:
        def make(name: str, description: str = "", boundaries: Any = None,
                 tag_keys: tuple[str, ...] = ()) -> Any:
            made.append((kind, name, tuple(tag_keys)))
            return mock.MagicMock()
        return make

    fake = SimpleNamespace(Counter=recorder("counter"), Histogram=recorder("histogram"),
                           Gauge=recorder("gauge"))
    modules = {name: importlib.import_module(name) for name in METRIC_MODULES}
    with mock.patch.multiple(modules["deployments.metrics"], metrics=fake), \
            mock.patch.multiple(modules["deployments.drift_metrics"], metrics=fake):
        _make_every_metric(modules)
    named = {name for module in modules.values() for name in _finserve_literals(module)}
    missed = named - {name for _, name, _ in made}
    assert not missed, f"metrics not made by _make_every_metric (add their class): {missed}"
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    exported: dict[str, frozenset[str]] = {}
    for kind, name, tags in made:
        for suffix in suffixes[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            exported[f"ray_{name}{suffix}"] = frozenset({*tags, *extra})
    return exported


def _finserve_literals(module: ModuleType) -> set[str]:
    """String constants in ``module`` that look like a FinServe metric name."""
    tree = ast.parse(inspect.getsource(module))
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"finserve_[a-z_]+", node.value)}


def exported_metrics() -> dict[str, frozenset[str]]:
    """FinServe's series and the Ray Serve allowlist, each with the labels it may carry
    (its own, Ray Serve's defaults and the target's)."""
    finserve = {name: labels | SERVE_DEFAULT_LABELS | TARGET_LABELS
                for name, labels in finserve_metrics().items()}
    ray = {name: labels | TARGET_LABELS for name, labels in RAY_SERVE_METRICS.items()}
    return {**finserve, **ray}
