"""Every metric the shipped Grafana dashboard and the PrometheusRule name is one FinServe or
Ray Serve exports, with labels it has: FinServe's names are read from its code
(tests/observability.py), Ray Serve's from a small allowlist. No Prometheus needed; the
reliability tier asks a real one (tests/reliability/test_7_prometheus.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartlib import MONITORING_API, RAY_API, one, render
from tests.observability import (
    RAY_SERVE_METRICS,
    exported_metrics,
    metric_names,
    panel_queries,
    selector_labels,
)

pytestmark = pytest.mark.chart


def shipped() -> tuple[list[tuple[str, str]], list[str]]:
    """(where, expression) of every dashboard target and alert rule as the chart renders
    them, and the relabelled target labels of its PodMonitor."""
    objects = render(sets=["metrics.podMonitor.enabled=true", "networkPolicy.enabled=false"],
                     api_versions=(RAY_API, MONITORING_API))
    (dashboard,) = [o for o in objects if o["kind"] == "ConfigMap"
                    and "finserve.json" in o.get("data", {})]
    board = json.loads(dashboard["data"]["finserve.json"])
    exprs = [(f"panel {q}", q.expr) for q in panel_queries(board)]
    rule = one(objects, "PrometheusRule")
    exprs += [(f"rule {r['alert']}", r["expr"])
              for group in rule["spec"]["groups"] for r in group["rules"]]
    monitor = one(objects, "PodMonitor")
    relabelled = [r["targetLabel"] for e in monitor["spec"]["podMetricsEndpoints"]
                  for r in e.get("relabelings", [])]
    return exprs, relabelled


def test_every_dashboard_and_alert_metric_is_one_finserve_or_ray_serve_exports() -> None:
    exprs, _ = shipped()
    exported = exported_metrics()
    unknown = [f"{where}: {name}" for where, expr in exprs
               for name in sorted(metric_names(expr)) if name not in exported]
    assert not unknown, "metrics nobody exports:\n" + "\n".join(unknown)
    assert sum(1 for where, _ in exprs if where.startswith("rule")) == 2
    assert len(exprs) >= 10  # a parse that found nothing would pass vacuously


def test_every_label_a_selector_matches_on_is_one_its_metric_has() -> None:
    exprs, relabelled = shipped()
    exported = exported_metrics()
    wrong = [f"{where}: {name}{{{label}}}" for where, expr in exprs
             for name, labels in selector_labels(expr).items() for label in sorted(labels)
             if name in exported and label not in exported[name] | set(relabelled)]
    assert not wrong, "labels these metrics lack:\n" + "\n".join(wrong)


def test_finserve_names_come_from_its_code_with_prometheus_suffixes() -> None:
    exported = exported_metrics()
    for name in ("ray_finserve_requests_total", "ray_finserve_request_latency_ms_bucket",
                 "ray_finserve_request_latency_ms_count", "ray_finserve_psi",
                 "ray_finserve_shadow_answers_total"):
        assert name in exported
    assert "ray_finserve_requests" not in exported  # a counter is only exported as _total
    assert "ray_finserve_psi_total" not in exported
    assert {"model", "version", "feature"} <= exported["ray_finserve_psi"]
    assert "le" in exported["ray_finserve_batch_size_bucket"]


def test_the_ray_serve_allowlist_is_defined_by_the_installed_ray() -> None:
    import ray.serve

    source = "\n".join(path.read_text(errors="replace")
                       for path in Path(ray.serve.__file__).parent.rglob("*.py"))
    for name in RAY_SERVE_METRICS:
        assert f'"{name.removeprefix("ray_")}"' in source, f"{name} is not Ray Serve's"


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{x="y"}[5m])))', {"a_bucket"}),
    ("sum(rate(b_total[$__rate_interval])) without (pod) / on(model) group_left(v) c",
     {"b_total", "c"}),
    ('max by (ns) (d{ns="banking", s=~"4..|5.."}) > bool 0.1 and e offset 5m', {"d", "e"}),
    ('label_replace(f, "dst", "$1", "src", "(.*)")', {"f"}),
])
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_selector_labels_are_read_from_promql() -> None:
    found: dict[str, Any] = selector_labels('rate(a{x="1", y!~"2,3"}[1m]) / b{z="}"}')
    assert found == {"a": {"x", "y"}, "b": {"z"}}
