"""A Model replica killed under load: the gateway retries on another replica, no request fails,
and Serve brings a replacement up."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.integration.conftest import wait_for
from tests.reliability.load import Load, gateway_failures, gateway_retries, valid_calls

pytestmark = pytest.mark.reliability

APP, DEPLOYMENT = "finserve", "fraud-model"


def replicas() -> set[str]:
    """Actor names of the live replicas of the fraud Model stage."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)}


def running() -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments[DEPLOYMENT]
    return int(status.replica_states.get("RUNNING", 0)) if status.status == "HEALTHY" else 0


def test_a_killed_model_replica_costs_no_request(base_url, ledger, seconds):
    """One kill per 30 s of the run (at least one); the fraud Model stage runs two replicas
    here (conftest), so the gateway can retry on the other."""
    import ray

    n = len(replicas())
    assert n >= 2 and running() == n, (replicas(), running())
    kills = max(1, round(seconds / 30))
    pause = max(seconds / (kills + 1), 3)
    calls = valid_calls()
    fraud = [c for c in calls if "fraud" in c[0]] * 3  # most requests in flight are fraud's
    recovery = []
    with Load(base_url, calls + fraud, ledger, clients=16) as load:
        for _ in range(kills):
            time.sleep(pause)
            before = replicas()
            victim = ray.get_actor(sorted(before)[0], namespace="serve")
            ray.kill(victim, no_restart=True)  # replicas have max_restarts=0: Serve replaces it
            killed = time.monotonic()
            wait_for(lambda before=before: replicas() - before and running() == n, timeout=180)
            recovery.append(round(time.monotonic() - killed, 1))
        time.sleep(pause)
    tally = load.stop()
    failures = gateway_failures()
    errors = Counter(failures[rid] for rid in tally.failed_ids if rid in failures)
    summary = tally.summary(f"replica loss ({DEPLOYMENT})", kills=kills, replaced_in_s=recovery,
                            gateway_retries=gateway_retries(), gateway_errors=dict(errors))
    print("\n" + summary)
    assert len(replicas()) == n
    assert tally.failed == 0, summary
