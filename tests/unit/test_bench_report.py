"""docs/benchmarks.md from a run's results: issue 17's peer table and target lines from a
synthetic run, and every stored run (most without peers) still renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SCENARIOS = [{"name": f"single c={c}", "instances": 1, "connections": c} for c in (1, 8, 32)] + [
    {"name": f"batch64 c={c}", "instances": 64, "connections": c} for c in (1, 8, 32)]


def point(system: str, model: str, scenario: dict[str, Any], rps: float, p50: float = 2.0,
          p99: float = 5.0) -> dict[str, Any]:
    return {"system": system, "route": "v2", "model": model, "scenario": scenario["name"],
            "instances": scenario["instances"], "connections": scenario["connections"],
            "requests": int(rps * 3), "rps": rps, "instances_per_s": rps * scenario["instances"],
            "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "errors": 0, "errors_by_kind": {}}


def run(points: list[dict[str, Any]], **systems: dict[str, Any]) -> dict[str, Any]:
    """A run's results with ``points``: FinServe, and both peers unless ``systems`` say."""
    return {
        "date": "2026-12-03T00:00:00+00:00", "mode": "quick", "commit": "abc1234", "dirty": False,
        "machine": {"cores": 2, "memory_gib": 23.5, "cpu": "x", "python": "3.11.7",
                    "kernel": "6"},
        "wrk": "wrk 4.1.0", "seconds_per_point": 3, "warmup_s": 1, "load_start": [0, 0, 0],
        "load_end": [1, 1, 1], "total_s": 60, "models": ["fraud", "credit", "sentiment"],
        "parts": ["finserve", "kserve", "mlserver"], "scenarios": SCENARIOS, "inprocess": {},
        "points": points, "systems": {"finserve": {"name": "finserve", "first_answer_s": 9.0},
                                      **{p: {"name": p, "settings": {"workers": 2},
                                             "env": {"versions": {p: "1"}}, "answers": {}}
                                         for p in ("kserve", "mlserver")}, **systems}}


def every_point(finserve_rps: float = 1000.0) -> list[dict[str, Any]]:
    """FinServe V2 ahead of both peers at every point, its p50 lower, its p99 equal."""
    out = []
    for m in ("fraud", "credit", "sentiment"):
        for sc in SCENARIOS:
            out += [point("finserve-v2", m, sc, finserve_rps, p50=1.0),
                    point("kserve", m, sc, 800.0), point("mlserver", m, sc, 900.0)]
    return out


def render(r: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(report, "plots", lambda *a, **k: [])  # no PNGs in the repository
    out = tmp_path / "results" / "run.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(r))
    monkeypatch.setattr(report, "ROOT", tmp_path)
    report.write_report(r, out, tmp_path / "benchmarks.md")
    return (tmp_path / "benchmarks.md").read_text()


def section(text: str, title: str) -> list[str]:
    """The lines of the page's section ``title`` (up to the next heading)."""
    body = text.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0].splitlines()


def targets(text: str) -> list[str]:
    return [x for x in section(text, "Targets (issue 17)") if x.startswith("- ")]


def test_the_peer_table_has_every_point_with_requests_and_p99(tmp_path, monkeypatch):
    text = render(run(every_point()), tmp_path, monkeypatch)
    rows = [x for x in section(text, "Against KServe and MLServer (issue 17)")
            if x.startswith("| fraud") or x.startswith("| sentiment") or x.startswith("| credit")]
    assert len(rows) == 3 * 2 * 3  # models, rows, c
    assert rows[0] == ("| fraud | 1 | 1 | 1,000.0 (5.0) | 800.0 (5.0) | 900.0 (5.0) | 1.11x |")
    assert "| sentiment | 64 | 32 |" in rows[-1]


def test_targets_pass_when_finserve_leads_everywhere(tmp_path, monkeypatch):
    points = every_point()
    for p in points:
        if p["system"] == "finserve-v2" and p["scenario"] == "batch64 c=32":
            p["instances_per_s"] = 2.1 * report.BATCHED_BEFORE.get(p["model"], 1)
    lines = targets(render(run(points), tmp_path, monkeypatch))
    assert len(lines) == 4 and all(x.startswith("- **PASS**") for x in lines), lines
    assert "18 of 18 points" in lines[0]


def test_a_faster_peer_or_a_worse_p99_fails_target_i_and_names_the_point(tmp_path,
                                                                          monkeypatch):
    points = every_point()
    for p in points:
        if (p["model"], p["scenario"]) == ("credit", "single c=8") and p["system"] == "kserve":
            p["rps"] = 1500.0
        if (p["model"], p["scenario"]) == ("fraud", "batch64 c=32") and \
                p["system"] == "finserve-v2":
            p["p99_ms"] = 5.0 * 1.2  # more requests/s, but its p99 1.2x the best peer's
    first = targets(render(run(points), tmp_path, monkeypatch))[0]
    assert first.startswith("- **FAIL**") and "16 of 18 points" in first
    assert "credit rows=1 c=8: 0.67x req/s" in first and "fraud rows=64 c=32" in first


def test_a_slower_p50_at_c1_fails_target_ii(tmp_path, monkeypatch):
    points = every_point()
    for p in points:
        if p["system"] == "finserve-v2" and p["scenario"] == "batch64 c=1" \
                and p["model"] == "sentiment":
            p["p50_ms"] = 2.5
    second = targets(render(run(points), tmp_path, monkeypatch))[1]
    assert second.startswith("- **FAIL**") and "sentiment 64: 2.50 vs 2.00 ms" in second


def test_target_iii_is_twice_the_figures_at_57afd96(tmp_path, monkeypatch):
    points = every_point()
    for p in points:
        if p["system"] == "finserve-v2" and p["scenario"] == "batch64 c=32":
            p["instances_per_s"] = {"fraud": 135_842, "credit": 113_147}.get(p["model"], 0)
    fraud, credit = targets(render(run(points), tmp_path, monkeypatch))[2:]
    assert fraud.startswith("- **PASS** fraud") and "2.00x the 67,921" in fraud
    assert credit.startswith("- **FAIL** credit") and "the 56,574 of the run at 57afd96" in credit


def test_missing_peer_figures_say_why(tmp_path, monkeypatch):
    points = [p for p in every_point()
              if p["system"] != "kserve"
              and not (p["system"] == "mlserver" and p["model"] == "sentiment")]
    r = run(points, kserve={"name": "kserve", "error": "kserve: `install -r x` failed; log"})
    r["systems"]["mlserver"]["answers"] = {
        "fraud": None,
        "sentiment": "its answer to the 1-instance body is not FinServe's: output 'label': "
                     "strings differ"}
    text = render(r, tmp_path, monkeypatch)
    body = section(text, "Against KServe and MLServer (issue 17)")
    assert "| sentiment | 1 | 1 | 1,000.0 (5.0) | - | - | - |" in body
    assert "- KServe: not measured: kserve: `install -r x` failed; log" in body
    assert any(x.startswith("- MLServer, sentiment: not timed") and "strings differ" in x
               for x in body)
    assert any("`benchmarks/peers/requirements-kserve.txt`: `kserve==0.21.0`" in x
               for x in body)  # the pins, read from the files the suite installs


def test_a_run_without_peers_renders_their_section_as_not_measured(tmp_path, monkeypatch):
    r = run([p for p in every_point() if p["system"] == "finserve-v2"])
    r["parts"], r["systems"] = ["finserve"], {"finserve": r["systems"]["finserve"]}
    text = render(r, tmp_path, monkeypatch)
    assert "No peer was measured in this run" in text
    assert "- KServe: not in this run (part `kserve`)." in text
    assert targets(text)[0].startswith("- n/a")


@pytest.mark.parametrize("stored", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_stored_run_still_renders(stored, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "plots", lambda *a, **k: [])
    doc = tmp_path / "benchmarks.md"
    report.write_report(json.loads(stored.read_text()), stored, doc)
    text = doc.read_text()
    assert "## Targets (issue 17)" in text and "## Against KServe and MLServer" in text


def test_the_grpc_table_puts_grpc_beside_http_and_its_generators_ceiling(tmp_path,
                                                                        monkeypatch):
    points = [p for p in every_point() if p["system"] == "finserve-v2"]
    for sc in SCENARIOS:
        points += [point("finserve-grpc", "fraud", sc, 700.0, p50=1.5, p99=4.0),
                   point("grpc-ceiling", "fraud", sc, 2400.0, p99=1.0)]
        if sc["instances"] > 1:
            points.append(point("finserve-v2bin", "fraud", sc, 650.0, p99=6.0))
    points.append({**point("wrk-ceiling", "-", SCENARIOS[2], 30000.0), "route": "-"})
    text = render(run(points), tmp_path, monkeypatch)
    rows = [x for x in section(text, "gRPC") if x.startswith("| fraud")]
    assert len(rows) == len(SCENARIOS)
    assert rows[-1] == ("| fraud | batch64 c=32 | 700.0 | 44,800 | 1.50 | 4.00 | 0 | 1,000.0 | "
                        "5.00 | 650.0 | 6.00 | 2,400.0 | 1.00 |")
    # the gRPC generator's ceiling is no system: wrk's headroom is over FinServe's best
    assert "30x the fastest system below (1,000 req/s)" in text
    no_grpc = render(run(every_point()), tmp_path, monkeypatch)
    assert "Not measured in this run (part `grpc`)." in section(no_grpc, "gRPC")



def test_the_in_process_share_target_is_retired_for_fraud_and_credit_only(tmp_path, monkeypatch):
    """Issue 17 retired "half the in-process limit" for the models its target (iii) covers;
    sentiment keeps it, judged."""
    r = run(every_point())
    r["inprocess"] = {m: {"best_instances_per_s": 100_000.0, "best_batch": 64,
                          "batch1_call_p50_ms": 0.3, "batch1_pre_call_p50_ms": 0.4,
                          "batch1_pre_call_post_p50_ms": 0.5} for m in r["models"]}
    lines = [x for x in section(render(r, tmp_path, monkeypatch), "Targets (issue 6)")
             if "of the in-process limit" in x]
    verdict = {x.split(", ")[0].split()[-1]: x.split(" ")[1] for x in lines}
    assert verdict == {"fraud": "retired", "credit": "retired", "sentiment": "**PASS**"}, lines
