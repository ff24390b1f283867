"""Production traffic on the real local Ray Serve: a version rollout under load, a sticky
canary split and a shadow version, all applied in place (user_config) to the running app."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
from typer.testing import CliRunner

from serving.audit import read_records
from serving.cli import app as cli
from tests.conftest import golden
from tests.integration.conftest import SESSION_ROUTING, wait_for
from tests.integration.load import Load

pytestmark = pytest.mark.integration


@pytest.fixture
def redeploy(base_url, serve_apps, session_args):
    """Apply changed routing of fraud in the session app; the original comes back after."""

    def deploy(change) -> dict:
        routing = copy.deepcopy(SESSION_ROUTING)
        change(routing["models"]["fraud"])
        serve_apps.put("finserve", session_args, routing=routing)
        return routing

    yield deploy
    serve_apps.put("finserve", session_args, routing=SESSION_ROUTING)


def test_a_version_rollout_under_load_loses_no_request(base_url, redeploy):
    body = golden("fraud_v2_request.json")
    with Load(f"{base_url}/v2/models/fraud/infer", body, threads=6, max_seconds=500) as load:
        wait_for(lambda: len(load.versions) > 50, timeout=180)
        redeploy(lambda fraud: fraud.update(versions=["3", "2", "1"]))
        wait_for(lambda: load.versions[-30:].count("3") == 30, timeout=180)
    assert load.failed == 0, load.errors[:5]
    assert load.statuses[200] >= 80
    first_new = load.versions.index("3")
    assert set(load.versions[:first_new]) == {"2"}  # the old version answered until the switch
    assert set(load.versions[-30:]) == {"3"}
    print(f"rollout under load: {load.statuses[200]} answered, {load.failed} failed, "
          f"switched after {first_new}")


def test_a_canary_split_is_weighted_and_sticky_per_customer(client, redeploy):
    redeploy(lambda fraud: fraud.update(traffic={"2": 70, "3": 30}))
    body = golden("fraud_v2_request.json")

    def version(customer: str) -> str:
        r = client.post("/v2/models/fraud/infer", json=body,
                        headers={"x-routing-key": customer})
        assert r.status_code == 200
        return r.json()["model_version"]

    seen = {f"customer-{i}": version(f"customer-{i}") for i in range(200)}
    share = Counter(seen.values())["3"] / len(seen)
    assert 0.18 < share < 0.42, share
    for customer in list(seen)[:20]:
        assert version(customer) == seen[customer]  # one customer, one version
    assert client.post("/v2/models/fraud/versions/1/infer", json=body).json()[
        "model_version"] == "1"  # a pin still wins


def test_a_shadow_version_sees_live_traffic_but_never_answers(client, redeploy, trail):
    redeploy(lambda fraud: fraud.update(shadow="3"))
    def shadow_lines() -> int:
        """Shadow answers are records of kind shadow in the trail itself (format 4)."""
        return sum(1 for _ in read_records(str(trail), kind="shadow"))

    before = shadow_lines()
    body = golden("fraud_task_request.json")
    for _ in range(25):
        r = client.post("/v1/fraud/score", json=body)
        assert r.status_code == 200 and r.json()["version"] == "2"

    wait_for(lambda: shadow_lines() - before >= 25, timeout=120)
    result = CliRunner().invoke(cli, ["compare", "fraud", "--trail", str(trail)])
    assert result.exit_code == 0, result.output
    assert '"agreement"' in result.output and '"mean_abs_diff"' in result.output
    assert '"3"' in result.output  # the challenger named in the report
