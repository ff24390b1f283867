"""The chart's Grafana dashboard and alert rules against a real Prometheus (Debian's package;
not in `make test`, `make reliability` installs it).

Prometheus scrapes the tier's Ray Serve (Ray's metrics port, every second) while every default
model is under load, with 64-row requests that fill each model's drift window (fraud's amount
tripled, as tools/drift_trail.py does), a shadow version on fraud and a refused request every
poll. Then every panel query of charts/finserve/dashboards/finserve.json must parse and return
data, every metric the PrometheusRule names must exist, its rules must evaluate (and go pending
on fraud's drift). The load produces every panel's series, so no query is excepted. promtool
checks the rendered rules and unit-tests them with synthetic ``finserve_psi`` series at the
thresholds and waits of charts/finserve/values.yaml.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.dataplane import jsonable
from serving.protocol.examples import task_example
from serving.tasks import get_task
from tests.chart.chartlib import CHART, MONITORING_API, RAY_API, one, render
from tests.integration.conftest import ALL_MODELS, SESSION_ROUTING, wait_for
from tests.observability import DASHBOARD, PanelQuery, metric_names, panel_queries, substitute
from tests.reliability.load import Load, valid_calls
from tests.reliability.prometheus import Prometheus, prometheus, promtool

pytestmark = pytest.mark.reliability

#: the release namespace the rules are rendered for (their ``namespace="..."`` matcher)
NAMESPACE = "banking"
#: labels the Prometheus Operator gives a PodMonitor's target in that namespace (namespace,
#: pod, container, endpoint; job is "<namespace>/<PodMonitor>") and the chart's PodMonitor
#: relabels from the pod (ray_node_type, ray_cluster): static labels of the local target
TARGET_LABELS = {"namespace": NAMESPACE, "pod": "finserve-raycluster-head",
                 "container": "ray-head", "endpoint": "metrics",
                 "ray_node_type": "head", "ray_cluster": "finserve-raycluster"}
JOB = f"{NAMESPACE}/finserve"
SCRAPE_S = 1.0
#: Grafana's $__interval for the dashboard's hour on a panel about 1,000 points wide
INTERVAL_S = 5.0
ALERTS = {"FinServeDriftWatch": "watch", "FinServeDriftAct": "act"}
#: fraud's live and pinned versions of the session (SESSION_ROUTING), v3 in shadow
SHADOW_ROUTING = {"models": {"fraud": {**SESSION_ROUTING["models"]["fraud"], "shadow": "3"}}}


def rendered_rule_groups() -> list[dict[str, Any]]:
    """The PrometheusRule's groups as the chart renders them in ``NAMESPACE``."""
    rule = one(render(api_versions=(RAY_API, MONITORING_API), flags=("--namespace", NAMESPACE)),
               "PrometheusRule")
    return rule["spec"]["groups"]


def rule_values() -> dict[str, dict[str, Any]]:
    """``metrics.prometheusRule`` of the chart's values: watch and act levels."""
    return yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]


def duration_s(text: str) -> int:
    """A Prometheus duration ("30m", "1h30m", "90s") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return int(sum(int(n) * units[u] for n, u in parts))


# --- promtool ---------------------------------------------------------------------------
TEMPLATE = re.compile(r'\{\{\s*(?:\$labels\.(\w+)|\$value\s*\|\s*printf\s+"([^"]*)")\s*\}\}')


def expand(text: str, labels: dict[str, str], value: float) -> str:
    """An annotation as Prometheus expands it for an alert with ``labels`` and ``value``."""
    out = TEMPLATE.sub(lambda m: labels[m[1]] if m[1] else m[2] % value, text)
    assert "{{" not in out, f"a template this test cannot expand: {text}"
    return out


def alert_case(rules: dict[str, dict[str, Any]], level: float, times: list[int]
               ) -> dict[str, Any]:
    """A promtool test: two replicas' PSI of fraud's amount, the highest at ``level``, and
    at each time in ``times`` the alerts that must fire (above the threshold for ``for``)."""
    values = rule_values()
    labels = {"namespace": NAMESPACE, "model": "fraud", "version": "2", "feature": "amount"}
    minutes = max(times) // 60 + 2

    def series(pod: str, value: float) -> dict[str, str]:
        selector = ",".join(f'{k}="{v}"' for k, v in {**labels, "pod": pod}.items())
        return {"series": f"ray_finserve_psi{{{selector}}}", "values": f"{value:g}x{minutes}"}

    checks = []
    for at in times:
        for name, rule in rules.items():
            band = values[ALERTS[name]]
            fires = level > band["threshold"] and at >= duration_s(band["for"])
            expected = [{"exp_labels": {**labels, "severity": band["severity"]},
                         "exp_annotations": {k: expand(v, labels, level)
                                             for k, v in rule["annotations"].items()}}]
            checks.append({"eval_time": f"{at}s", "alertname": name,
                           "exp_alerts": expected if fires else []})
    return {"interval": "1m", "name": f"PSI {level:g}",
            "input_series": [series("replica-a", level), series("replica-b", level / 5)],
            "alert_rule_test": checks}


def alert_unit_tests(rules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """promtool's unit tests from the values: half the watch threshold fires nothing; 1.5x
    it (between the bands) fires Watch after its wait, not Act; 1.2x the act threshold
    fires Act after its wait. Each is checked a minute before its wait and a minute after
    (defaults: 0.05 at 31m; 0.15 at 29m and 31m; 0.3 at 14m and 16m)."""
    values = rule_values()
    watch, act = values["watch"], values["act"]
    assert watch["threshold"] * 1.5 < act["threshold"], "the bands leave no room between them"
    waits = {level: duration_s(values[level]["for"]) for level in ("watch", "act")}

    def around(wait: int) -> list[int]:
        return [t for t in (wait - 60, wait + 60) if t >= 0]

    cases = [(round(watch["threshold"] / 2, 6), [max(waits.values()) + 60]),
             (round(watch["threshold"] * 1.5, 6), around(waits["watch"])),
             (round(act["threshold"] * 1.2, 6), around(waits["act"]))]
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
            "tests": [alert_case(rules, level, times) for level, times in cases]}


def test_promtool_checks_the_rendered_rules_and_their_thresholds_and_waits(tmp_path: Path):
    groups = rendered_rule_groups()
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rules) == set(ALERTS)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    checked = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tests = alert_unit_tests(rules)
    watch_case, act_case = tests["tests"][1], tests["tests"][2]
    assert [c["alertname"] for c in watch_case["alert_rule_test"][-2:] if c["exp_alerts"]] \
        == ["FinServeDriftWatch"]
    assert "FinServeDriftAct" in [c["alertname"] for c in act_case["alert_rule_test"][-2:]
                                  if c["exp_alerts"]]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    def last_line(done: Any) -> str:
        return done.stdout.strip().splitlines()[-1].strip()

    cases = ", ".join(f"{c['name']} at "
                      + "/".join(sorted({a["eval_time"] for a in c["alert_rule_test"]}))
                      for c in tests["tests"])
    print(f"\n[reliability] promtool: check rules: {last_line(checked)}; test rules: "
          f"{len(tests['tests'])} cases ({cases}): {last_line(tested)}")


# --- a real Prometheus under load -------------------------------------------------------
def drift_calls(per_model: int = 4) -> list[tuple[str, bytes]]:
    """V2 requests of 64 rows of every default model from its task's generator, enough for
    each model's PSI gauges (``min_rows``); fraud's amount tripled, past the act threshold
    (docs/monitoring.md), and varied enough for its shadow to disagree now and then."""
    calls = []
    for model in ALL_MODELS:
        task = get_task(model)
        raw = task.sample_data(seed=11, n=64 * per_model).raw
        if model == "fraud":
            raw[:, 0] *= 3  # amount
        for i in range(per_model):
            rows = task.check_raw(raw[i * 64:(i + 1) * 64])
            body: dict[str, Any] = {"inputs": [{
                "name": task.input_spec.name, "shape": list(rows.shape),
                "datatype": task.input_spec.datatype, "data": jsonable(rows.reshape(-1))}]}
            if "parameters" in (example := task_example(model)):
                body["parameters"] = example["parameters"]
            calls.append((f"/v2/models/{model}/infer", json.dumps(body).encode()))
    return calls


def refuse_one(base_url: str) -> int:
    """A request the gateway refuses (422: no records), for the error-ratio panel."""
    return httpx.post(f"{base_url}/v1/fraud/score", json={"records": []}, timeout=30).status_code


class Checks:
    """Each dashboard query and rule against Prometheus: what is wrong, and what was seen."""

    def __init__(self, prom: Prometheus, queries: list[tuple[PanelQuery, str]],
                 rules: list[dict[str, Any]]) -> None:
        self.prom, self.queries, self.rules = prom, queries, rules
        self.seen: list[str] = []

    def problems(self) -> list[str]:
        self.seen = []
        wrong = self._target() + self._panels() + self._rules()
        return wrong + self._rule_health() + self._alerts()

    def _target(self) -> list[str]:
        targets = self.prom.get("/api/v1/targets")["data"]["activeTargets"]
        return [f"target {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}"
                for t in targets if t["health"] != "up"]

    def _panels(self) -> list[str]:
        wrong = []
        for query, expr in self.queries:
            try:
                series, finite = self.prom.series(expr)
            except AssertionError as exc:
                wrong.append(f"panel {query}: does not parse: {exc}\n    {expr}")
                continue
            if not finite:
                wrong.append(f"panel {query}: no data ({series} series, none finite)\n    {expr}")
            self.seen.append(f"panel {query}: {finite}/{series} series with a value")
        return wrong

    def _rules(self) -> list[str]:
        wrong = []
        for rule in self.rules:
            try:
                firing, _ = self.prom.series(rule["expr"])
            except AssertionError as exc:
                wrong.append(f"rule {rule['alert']}: does not evaluate: {exc}")
                continue
            for name in sorted(metric_names(rule["expr"])):
                present, _ = self.prom.series(name)
                if not present:
                    wrong.append(f"rule {rule['alert']}: no series of {name}")
                self.seen.append(f"rule {rule['alert']}: {name} has {present} series, "
                                 f"{firing} above the threshold")
        return wrong

    def _rule_health(self) -> list[str]:
        loaded = [r for g in self.prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        wrong = [f"rule {r['name']} in Prometheus: health {r['health']} {r.get('lastError', '')}"
                 for r in loaded if r["health"] != "ok"]
        missing = {r["alert"] for r in self.rules} - {r["name"] for r in loaded}
        return wrong + [f"rule {name} not loaded by Prometheus" for name in sorted(missing)]

    def _alerts(self) -> list[str]:
        """Fraud's tripled amount must make both alerts pending (firing after their wait)."""
        active = {(a["labels"]["alertname"], a["labels"].get("model"), a["state"])
                  for a in self.prom.get("/api/v1/alerts")["data"]["alerts"]}
        self.seen.append(f"alerts: {sorted(active)}")
        return [f"alert {name} not pending for fraud's drifted amount (active: {sorted(active)})"
                for name in ALERTS
                if not {(name, "fraud", "pending"), (name, "fraud", "firing")} & active]


def test_every_panel_query_and_alert_rule_answers_from_a_real_prometheus_under_load(
        base_url: str, ledger: Any, seconds: float, serve_apps: Any, session_args: Any,
        tmp_path: Path) -> None:
    import ray

    groups = rendered_rule_groups()
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": groups}))
    board = json.loads(DASHBOARD.read_text())
    queries = [(q, substitute(q.expr, board, SCRAPE_S, INTERVAL_S)) for q in panel_queries(board)]
    rules = [r for g in groups for r in g["rules"]]
    metrics_port = ray._private.worker.global_worker.node.metrics_export_port
    refused: list[int] = []
    serve_apps.put("finserve", session_args, routing=SHADOW_ROUTING)
    try:
        with prometheus(tmp_path / "prometheus", [f"127.0.0.1:{metrics_port}"], TARGET_LABELS,
                        JOB, [rules_file], SCRAPE_S) as prom, \
                Load(base_url, valid_calls() + drift_calls(), ledger, clients=8) as load:
            checks, started = Checks(prom, queries, rules), time.monotonic()

            def settled() -> bool:  # under load for `seconds`, then until all is there
                refused.append(refuse_one(base_url))
                return time.monotonic() - started >= seconds and not checks.problems()

            with contextlib.suppress(AssertionError):  # the checks below say what is missing
                wait_for(settled, timeout=max(300.0, seconds * 2), interval=2)
            problems, waited = checks.problems(), time.monotonic() - started
            tally = load.stop()
    finally:
        serve_apps.put("finserve", session_args, routing=SESSION_ROUTING)
    print("\n" + tally.summary("prometheus load, 8 clients, every model, drift, shadow",
                               refused_422=len(refused), waited_s=f"{waited:.0f}"))
    print(f"[reliability] prometheus: {len(queries)} panel queries of "
          f"{len({q.panel for q, _ in queries})} panels, {len(rules)} alert rules checked; "
          f"{len(problems)} problems")
    print("\n".join(f"    {line}" for line in checks.seen))
    assert tally.failed == 0, tally.summary("prometheus load")
    assert set(refused) == {422}, refused
    assert not problems, "\n".join(problems)
