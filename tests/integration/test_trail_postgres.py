"""The Serve app writing its decision trail to a real PostgreSQL (``tests.postgres``): each
answer's record committed before it returns, the shadow answers beside them, and the trail
verified from the database with the public key."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest

from serving import audit
from tests.conftest import golden
from tests.integration.conftest import app_args

if TYPE_CHECKING:
    from tests.postgres import LocalPostgres

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.postgres"]


@pytest.fixture(scope="module")
def database(postgres_server: LocalPostgres) -> str:
    name = f"finserve_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url_for("postgres", postgres_server.password, name)


@pytest.fixture(scope="module")
def pg_url(ray_serve, serve_apps, base_url, tiny_store, database, tmp_path_factory):
    keys = tmp_path_factory.mktemp("pg-keys")
    args = app_args(tiny_store.root, database, keys_dir=str(keys))
    args["models"] = [{"name": "fraud"}]
    serve_apps.put("pg", args, route_prefix="/pg")
    yield f"http://127.0.0.1:{ray_serve}/pg", keys
    serve_apps.delete("pg")


def test_every_answer_is_committed_to_the_database_and_verifies(pg_url, database):
    url, keys = pg_url
    ids = []
    for _ in range(6):
        r = httpx.post(f"{url}/v1/fraud/score", json=golden("fraud_task_request.json"),
                       timeout=30)
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-decision-id"])
    # durable before the answer: the rows are there the moment the answers are
    recorded = {audit.decision_id(r) for r in audit.read_records(database)}
    assert set(ids) <= recorded
    refused = httpx.post(f"{url}/v1/fraud/score", json={"records": []}, timeout=30)
    assert refused.status_code == 422
    assert len(list(audit.read_records(database))) == len(recorded)
    key = audit.load_public_key(str(keys / "trail.pub"))
    report = audit.verify(database, database, key)
    assert report.ok and report.records >= 6 and report.checkpoints >= 1, report.problems
    with psycopg.connect(database) as conn, pytest.raises(psycopg.Error):
        conn.execute("DELETE FROM finserve_decisions")  # append-only
