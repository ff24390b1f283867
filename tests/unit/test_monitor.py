"""``finserve monitor``: PSI from the decision trail a gateway wrote, as a table and a PNG."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from serving.cli import app as cli
from serving.monitor import duration, moment
from serving.tasks import get_task


def _v2(raw: np.ndarray) -> dict:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(raw.shape),
                        "data": raw.reshape(-1).tolist()}]}


@pytest.fixture
def trail(make_gateway, tmp_path):
    """fraud's decisions in the trail: v1 answered rows from the training distribution,
    v2 the same rows with the amount times 3 (10 requests of 64 rows each)."""
    gw = make_gateway()
    gw.reconfigure({"models": {"fraud": {"versions": ["1", "2"]}}})
    app = gw.__serve_build_asgi_app__()
    raw = get_task("fraud").sample_data(seed=21, n=640).raw
    shifted = raw.copy()
    shifted[:, 0] *= 3

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return [(await client.post(f"/v2/models/fraud/versions/{v}/infer",
                                       json=_v2(rows[i:i + 64]))).status_code
                    for v, rows in (("1", raw), ("2", shifted)) for i in range(0, 640, 64)]
    assert asyncio.run(go()) == [200] * 20
    return tmp_path / "trail"


def _rows(out: str) -> list[list[str]]:
    """The cells of the table's rows."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip().isdigit()]


def _monitor(*args: str, store, trail) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["monitor", "fraud", "--trail", str(trail),
                                      "--store", str(store.root), *args],
                                env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_monitor_reports_psi_per_version_and_feature_and_draws_a_png(tiny_store, trail,
                                                                     tmp_path):
    png = tmp_path / "drift.png"
    code, out = _monitor("--last", "1h", "--png", str(png), store=tiny_store, trail=trail)
    assert code == 1, out  # a column in act
    rows = {(r[0], r[1]): r for r in _rows(out)}
    features = [*get_task("fraud").raw_fields, "fraud_probability"]
    assert list(rows) == [(v, f) for v in "12" for f in features], out
    assert rows[("2", "amount")][2:] == ["input", "640", rows[("2", "amount")][4], "act"]
    assert float(rows[("2", "amount")][4]) > 0.25
    assert rows[("2", "fraud_probability")][2] == "score"
    assert [f for (v, f), r in rows.items() if r[5] != "stable"] == ["amount"], out
    assert {r[3] for r in rows.values()} == {"640"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_monitor_exits_0_when_stable_and_2_with_nothing_to_judge(tiny_store, trail):
    code, out = _monitor("--version", "1", store=tiny_store, trail=trail)
    assert code == 0 and {r[5] for r in _rows(out)} == {"stable"}, out
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    code, out = _monitor("--since", future, store=tiny_store, trail=trail)
    assert code == 2 and "no decisions of 'fraud'" in out, out
    code, out = _monitor("--since", future, "--last", "1h", store=tiny_store, trail=trail)
    assert code == 2 and "not both" in out


def test_few_rows_are_reported_but_not_judged(tiny_store, trail):
    code, out = _monitor("--min-rows", "1000", store=tiny_store, trail=trail)
    assert code == 0, out
    assert {r[5] for r in _rows(out)} == {"few rows"}


def test_durations_and_times():
    assert duration("24h") == timedelta(hours=24) and duration("30m") == timedelta(minutes=30)
    assert duration("7d") == timedelta(days=7)
    with pytest.raises(ValueError, match="30m, 24h or 7d"):
        duration("yesterday")
    assert moment("2026-12-01T10:00:00") == datetime(2026, 12, 1, 10, tzinfo=UTC)
