"""The drift alerts ship as a PrometheusRule over the PSI the gateway replicas publish.

No PrometheusRule schema is at hand offline (the Prometheus Operator's CRDs are not in
shared/third_party), so the rendered structure is asserted against the fields of its
``Rule`` (monitoring.coreos.com/v1: alert or record, expr, for, keep_firing_for, labels,
annotations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.chart.chartlib import (
    MONITORING_API,
    RAY_API,
    one,
    render,
    render_error,
    write_values,
)

pytestmark = pytest.mark.chart

RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                      r"(([0-9]+)s)?(([0-9]+)ms)?)$")  # the CRD's Duration pattern


def rules(*sets: str, values: str | None = "production", extra: Path | None = None
          ) -> dict[str, dict]:
    rule = one(render(values, sets=sets, extra_files=[extra] if extra else [],
                      api_versions=(RAY_API, MONITORING_API)), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    (group,) = rule["spec"]["groups"]
    assert group["name"] == "finserve-drift"
    return {r["alert"]: r for r in group["rules"]}


def test_watch_above_0_1_for_30m_and_act_above_0_25_for_15m_per_feature() -> None:
    found = rules()
    assert list(found) == ["FinServeDriftWatch", "FinServeDriftAct"]
    expected = {"FinServeDriftWatch": ("0.1", "30m", "warning"),
                "FinServeDriftAct": ("0.25", "15m", "critical")}
    for name, rule in found.items():
        threshold, wait, severity = expected[name]
        assert set(rule) <= RULE_FIELDS and DURATION.match(rule["for"])
        assert rule["expr"] == ("max by (namespace, model, version, feature) "
                                f'(ray_finserve_psi{{namespace="finserve-test"}}) > {threshold}')
        assert (rule["for"], rule["labels"]) == (wait, {"severity": severity})
        # Prometheus's own templates pass through helm untouched
        assert "{{ $labels.feature }}" in rule["annotations"]["summary"]
        assert "finserve monitor {{ $labels.model }}" in rule["annotations"]["description"]


def test_the_rule_carries_the_labels_prometheus_selects_on() -> None:
    rule = one(render("production", api_versions=(RAY_API, MONITORING_API)), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["name"] == "finserve-drift"


def test_thresholds_waits_and_severities_come_from_the_values(tmp_path: Path) -> None:
    values = write_values(tmp_path, {"metrics": {"prometheusRule": {
        "act": {"threshold": 0.3, "for": "5m", "severity": "critical"}}}})
    found = rules("metrics.prometheusRule.watch.severity=info", extra=values)
    assert found["FinServeDriftAct"]["expr"].endswith("> 0.3")
    assert found["FinServeDriftAct"]["for"] == "5m"
    assert found["FinServeDriftWatch"]["labels"] == {"severity": "info"}


def test_a_malformed_wait_is_refused_by_the_values_schema() -> None:
    error = render_error(sets=["metrics.prometheusRule.watch.for=soon"])
    assert "prometheusRule" in error and "for" in error


def test_no_rule_without_the_monitoring_api_or_when_turned_off() -> None:
    assert "PrometheusRule" not in {o["kind"] for o in render("production")}
    off = render("production", sets=["metrics.prometheusRule.enabled=false"],
                 api_versions=(RAY_API, MONITORING_API))
    assert "PrometheusRule" not in {o["kind"] for o in off}
    # on by default wherever the Prometheus Operator's API exists
    assert rules(values=None)
