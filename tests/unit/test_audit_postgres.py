"""The PostgreSQL decision trail against a real server (``tests.postgres``, one per session)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
import threading
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import pytest
from psycopg import errors

from serving.audit_postgres import (
    PostgresSink,
    PostgresTrailError,
    find_postgres,
    read_postgres,
    redact,
    schema_sql,
)

if TYPE_CHECKING:  # imported by pytest as a plugin, not here (its import would come first)
    from tests.postgres import LocalPostgres

pytest_plugins = ["tests.postgres"]


def line(chain: str, seq: int, **fields: Any) -> bytes:
    """A record's line as the trail writes it: sorted-key JSON ending with its hash."""
    record = {"kind": "decision", "request_id": f"req-{chain}-{seq}", "model": "fraud",
              "time": "2026-12-03T10:00:00+00:00", "chain": chain, "seq": seq,
              "outputs": {"p": [0.25, 1e-05]}, "note": "Zürich ✓ \u0000 \"quoted\"", **fields}
    body = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    return body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}'


@pytest.fixture
def table() -> str:
    return f"trail_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sink(postgres_url: str, table: str) -> Iterator[PostgresSink]:
    sink = PostgresSink(postgres_url, table)
    yield sink
    sink.close()


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def test_records_come_back_byte_identical_in_chain_and_seq_order(sink, postgres_url, table):
    a = [line("a", seq) for seq in range(5)]
    b = [line("b", seq) for seq in range(3)]
    shadow = line("a", 5, kind="shadow", request_id="req-a-0")
    sink.write([b[0], a[0], a[1]])
    sink.write([a[2], b[1]])
    sink.write([a[3], a[4], b[2], shadow])
    assert list(read_postgres(postgres_url, table)) == [*a, shadow, *b]
    assert list(read_postgres(postgres_url, table, kind="shadow")) == [shadow]
    assert list(read_postgres(postgres_url, table, kind="decision")) == [*a, *b]
    assert find_postgres(postgres_url, "req-a-0", table) == [a[0], shadow]
    assert find_postgres(postgres_url, "nobody", table) == []
    with admin(postgres_url) as conn:  # the columns a query uses
        row = conn.execute(f"SELECT chain, seq, kind, model, time FROM {table} "
                           "WHERE request_id = 'req-b-2'").fetchone()
    assert row == ("b", 2, "decision", "fraud", datetime(2026, 12, 3, 10, tzinfo=UTC))


def test_reading_streams_through_a_server_side_cursor(sink, postgres_url, table):
    sink.write([line("c", seq) for seq in range(2500)])
    reader = read_postgres(postgres_url, table)
    assert next(reader) == line("c", 0)
    with admin(postgres_url) as conn:  # the reader's session is paused between fetches
        queries = [q for (q,) in conn.execute(
            "SELECT query FROM pg_stat_activity WHERE application_name = 'finserve-trail'")]
    assert 'FETCH FORWARD 1000 FROM "finserve_trail"' in queries, queries
    assert sum(1 for _ in reader) == 2499


def test_a_failing_batch_leaves_nothing_of_itself(sink, postgres_url, table):
    sink.write([line("a", 0), line("a", 1)])
    with pytest.raises(errors.UniqueViolation):  # a replayed record in the middle
        sink.write([line("a", 2), line("a", 1), line("a", 3)])
    with pytest.raises(errors.UniqueViolation):  # the same record twice in one batch
        sink.write([line("a", 2), line("a", 2)])
    with pytest.raises(ValueError, match="integer 'seq'"):  # refused before it is sent
        sink.write([line("a", 2), orjson.dumps({"chain": "a", "seq": "3"})])
    with pytest.raises(ValueError, match="not a trail record"):
        sink.write([line("a", 2), b"{torn"])
    assert list(read_postgres(postgres_url, table)) == [line("a", 0), line("a", 1)]
    sink.write([line("a", 2)])  # the sink is still usable
    assert len(list(read_postgres(postgres_url, table))) == 3


@pytest.mark.parametrize("statement", [
    "UPDATE {t} SET record = 'x'", "DELETE FROM {t}", "DELETE FROM {t} WHERE false",
    "TRUNCATE {t}",
])
def test_the_table_refuses_update_delete_and_truncate(sink, postgres_url, table, statement):
    sink.write([line("a", 0)])
    with admin(postgres_url) as conn:  # even the superuser, even in replication mode
        with pytest.raises(errors.RaiseException, match="append-only"):
            conn.execute(statement.format(t=table))
        conn.execute("SET session_replication_role = replica")
        with pytest.raises(errors.RaiseException, match="append-only"):
            conn.execute(statement.format(t=table))
    assert list(read_postgres(postgres_url, table)) == [line("a", 0)]


def test_a_role_with_only_insert_and_select_writes_to_an_existing_table(
        postgres_server: LocalPostgres, table):
    role, password = f"writer_{table}", uuid.uuid4().hex
    with admin(postgres_server.url) as conn:
        conn.execute(schema_sql(table).encode())
        conn.execute(schema_sql(table).encode())  # safe to run again
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT SELECT, INSERT ON {table} TO {role}")
    url = postgres_server.url_for(role, password)
    with admin(url) as conn:  # the role can neither create tables nor lift the guard
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE elsewhere (x int)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER ALL")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {table}")
    sink = PostgresSink(url, table)
    sink.write([line("w", 0), line("w", 1)])
    sink.close()
    assert list(read_postgres(url, table)) == [line("w", 0), line("w", 1)]
    assert find_postgres(url, "req-w-1", table) == [line("w", 1)]
    with pytest.raises(errors.InsufficientPrivilege):  # and a missing table is an error
        PostgresSink(url, table + "_new").write([line("w", 0)])


def test_a_table_without_its_guard_is_used_with_a_warning(postgres_url, table, caplog):
    with admin(postgres_url) as conn:
        conn.execute(schema_sql(table).encode())
        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
    sink = PostgresSink(postgres_url, table)
    with caplog.at_level(logging.WARNING, logger="serving.audit_postgres"):
        sink.write([line("g", 0)])
    sink.close()
    assert f"{table} has no enabled append-only trigger" in caplog.text


def test_the_sink_reconnects_once_after_the_server_restarts(
        postgres_server: LocalPostgres, table, caplog):
    sink = PostgresSink(postgres_server.url, table)
    sink.write([line("r", 0)])
    postgres_server.restart()
    with caplog.at_level(logging.WARNING, logger="serving.audit_postgres"):
        sink.write([line("r", 1)])
    assert "reconnecting" in caplog.text and postgres_server.password not in caplog.text
    assert "postgres:***@127.0.0.1" in caplog.text
    postgres_server.stop()
    try:  # no server at all: the error says so, and the next write after it is back works
        with pytest.raises(PostgresTrailError, match="cannot connect"):
            sink.write([line("r", 2)])
    finally:
        postgres_server.start()
    sink.write([line("r", 2)])
    sink.close()
    assert list(read_postgres(postgres_server.url, table)) == [line("r", s) for s in range(3)]


#: the server's CommandComplete message for a COPY (sent once the COPY has committed)
COPY_DONE = re.compile(rb"C\x00\x00\x00.COPY \d+\x00", re.DOTALL)


class CuttingProxy:
    """A TCP relay to the server that, once armed, swallows the server's answer to a COPY
    and closes both sides: the COPY committed, but its client never hears so."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for src, dst, replies in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, replies),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while data := src.recv(65536):
                if replies and self.armed.is_set() and COPY_DONE.search(data):
                    self.armed.clear()
                    self.cut.set()
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def test_a_batch_committed_before_the_connection_broke_is_not_an_error(
        postgres_server: LocalPostgres, table, caplog):
    proxy = CuttingProxy(postgres_server.port)
    url = postgres_server.url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    sink = PostgresSink(url, table)
    try:
        sink.write([line("p", 0)])
        proxy.armed.set()
        with caplog.at_level(logging.WARNING, logger="serving.audit_postgres"):
            sink.write([line("p", 1), line("p", 2)])
        assert proxy.cut.is_set() and "committed before the connection was lost" in caplog.text
        sink.write([line("p", 3)])
        with admin(postgres_server.url) as conn:  # the session dies before the next write
            conn.execute("SELECT pg_terminate_backend(%s)", [sink._conn.info.backend_pid])
        with caplog.at_level(logging.WARNING, logger="serving.audit_postgres"), \
                pytest.raises(errors.UniqueViolation):  # the retry finds other bytes: an error
            sink.write([line("p", 4), line("p", 3, note="other")])
        assert caplog.text.count("reconnecting") == 2
    finally:
        sink.close()
        proxy.listener.close()
    assert list(read_postgres(postgres_server.url, table)) == [line("p", s) for s in range(4)]


def test_a_wrong_password_is_a_clear_error_that_does_not_show_it(
        postgres_server: LocalPostgres, table):
    wrong = "W0ng-" + uuid.uuid4().hex
    sink = PostgresSink(postgres_server.url_for("postgres", wrong), table)
    with pytest.raises(PostgresTrailError) as caught:
        sink.write([line("x", 0)])
    message = str(caught.value)
    assert 'password authentication failed for user "postgres"' in message
    assert f"postgresql://postgres:***@127.0.0.1:{postgres_server.port}/postgres" in message
    shown = "".join(traceback.format_exception(caught.value)) + repr(sink)
    assert wrong not in shown and caught.value.__context__ is None
    with pytest.raises(PostgresTrailError) as caught:
        list(read_postgres(postgres_server.url_for("postgres", wrong), table))
    assert wrong not in str(caught.value)


def test_a_missing_database_is_a_clear_error(postgres_server: LocalPostgres, table):
    url = postgres_server.url_for("postgres", postgres_server.password, "no_such_db")
    with pytest.raises(PostgresTrailError, match='database "no_such_db" does not exist') as c:
        PostgresSink(url, table).write([line("x", 0)])
    assert postgres_server.password not in str(c.value)


def test_passwords_are_redacted_from_urls_and_from_libpq_messages():
    assert redact("postgresql://u:s3cret@db:5432/trail") == "postgresql://u:***@db:5432/trail"
    assert redact("postgres://u:p%40ss@h1:1,h2:2/t?sslmode=require&password=x&sslpassword=y") \
        == "postgres://u:***@h1:1,h2:2/t?sslmode=require&password=***&sslpassword=***"
    assert redact("postgresql://u@db/trail") == "postgresql://u@db/trail"
    assert redact("postgresql://u:a@b/c@[::1/t") == "postgresql://u:***@[::1/t"
    assert redact("postgresql:///trail?host=/run/pg") == "postgresql:///trail?host=/run/pg"
    # libpq quotes a badly percent-encoded password in its message
    with pytest.raises(PostgresTrailError) as caught:
        list(read_postgres("postgresql://u:s3cr%zzet@127.0.0.1:1/db"))
    assert "s3cr%zzet" not in str(caught.value) and "invalid percent-encoded" in str(caught.value)
    with pytest.raises(ValueError, match="not a PostgreSQL URL") as caught:
        PostgresSink("mysql://u:s3cret@db/trail")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match="table name"):
        PostgresSink("postgresql://db/trail", 'x"; DROP TABLE y; --')
