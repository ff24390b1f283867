"""The whole trail on PostgreSQL (a real server, ``tests.postgres``): records and signed
checkpoints in their tables, ``verify`` reading them back, loss named, a stopped server a
503 that leaves the chain whole."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import psycopg
import pytest

from serving import audit
from serving.audit.sinks import CHECKPOINTS

if TYPE_CHECKING:
    from tests.postgres import LocalPostgres

pytest_plugins = ["tests.postgres"]
KEYS = audit.TrailKeys.from_secret(b"a-test-trail-key-of-32-characters!")
PUBLIC = KEYS.signing_key.public_key()


@pytest.fixture
def database(postgres_server: LocalPostgres) -> str:
    """A database of its own per test (the trail's tables have fixed names)."""
    name = f"trail_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.url_for("postgres", postgres_server.password, name)


def _record(i: int) -> dict:
    return audit.decision_record(
        request_id=f"r{i}", key_id=None, model="fraud", version="1", artifact_sha256="ab",
        route="v2", inputs={"data": [[i]]}, outputs={"decision": ["block"]}, latency_ms=1.0)


def _trail(url: str, chain: str = "pg1") -> audit.Trail:
    return audit.Trail(audit.make_sink(url, chain), KEYS, chain,
                       checkpoints=audit.make_sink(url, chain, prefix=CHECKPOINTS))


def test_a_postgres_trail_verifies_and_names_records_deleted_behind_its_back(database):
    async def go():
        trail = _trail(database)
        await asyncio.gather(*(trail.append(_record(i)) for i in range(30)))
        await trail.write_checkpoint()
    asyncio.run(go())
    report = audit.verify(database, database, PUBLIC)
    assert report.ok and report.records == 30 and report.checkpoints == 2, report.problems
    assert audit.find(database, "r7")["seq"] == 7
    with psycopg.connect(database, autocommit=True) as conn:  # a DBA who drops the guard
        conn.execute("ALTER TABLE finserve_decisions DISABLE TRIGGER ALL")
        conn.execute("DELETE FROM finserve_decisions WHERE seq >= 25")
    assert audit.verify(database, database, PUBLIC).problems == [
        "chain pg1: records 25-29 missing (truncated; a checkpoint names record 29)"]


def test_a_stopped_database_is_a_503_and_the_chain_stays_whole(database, postgres_server):
    async def go():
        trail = _trail(database)
        await trail.append(_record(0))
        postgres_server.stop()
        try:
            with pytest.raises(audit.TrailUnavailable) as info:
                await trail.append(_record(1))
        finally:
            postgres_server.start()
        after = await trail.append(_record(2))
        await trail.write_checkpoint()
        return info.value, after

    error, after = asyncio.run(go())
    assert error.status_code == 503 and after["seq"] == 1
    report = audit.verify(database, database, PUBLIC)
    assert report.ok and report.records == 2, report.problems
