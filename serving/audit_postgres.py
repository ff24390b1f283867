"""The decision trail in PostgreSQL: one row per record, in an append-only table.

A row keeps the record's exact line (the canonical JSON that was hashed, hash included) in
``record`` (bytea: byte-identical whatever the database's encoding), beside the columns a
query needs: ``chain``, ``seq``, ``kind`` (the record's ``kind``, else ``decision``),
``request_id``, ``model`` and ``time``. The primary key (chain, seq, kind) makes a replayed
or duplicated record fail its whole batch.

Append-only: a statement-level trigger refuses UPDATE, DELETE and TRUNCATE for every role,
superusers included, and is enabled ALWAYS so that ``session_replication_role = replica``
does not silence it. The table's owner or a superuser can still disable or drop the trigger
(or drop the table): it stops mistakes and the service's own credentials, not a DBA, which
is why the trail also has signed checkpoints. Let an admin role create the table
(``schema_sql``) and grant the service's role only INSERT and SELECT on it.

URLs are ``postgresql://`` or ``postgres://`` (libpq's); their password never appears in a
log line or an exception message raised here.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import orjson
import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

log = logging.getLogger(__name__)

DEFAULT_TABLE = "finserve_decisions"
SCHEMES = ("postgresql://", "postgres://")
#: plain lower-case names only, short enough for "<table>_request_id" (63 bytes at most)
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_SECRET_PARAMETERS = ("password", "sslpassword")
_COLUMNS = ("chain", "seq", "kind", "request_id", "model", "time", "record")
_COPY_TYPES = ("text", "int8", "text", "text", "text", "timestamptz", "bytea")


class PostgresTrailError(Exception):
    """The trail's database cannot be reached or refused us (any password redacted)."""


# --- URLs and their passwords ---------------------------------------------------------------
def _split(url: str) -> tuple[str, str | None, str, list[str]]:
    """``scheme``, user info (None without '@'), hosts and path, query pairs of a URL, cut
    by hand (up to the last '@') so that no URL is too odd to redact."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    userinfo, at, hosts = rest.rpartition("@")
    return scheme, userinfo if at else None, hosts, query.split("&") if query else []


def _secret_pair(pair: str) -> bool:
    return unquote(pair.partition("=")[0]) in _SECRET_PARAMETERS


def _passwords(url: str) -> list[str]:
    """Every form of the secrets in ``url``: the user info's password, ``password=`` and
    ``sslpassword=`` parameters, each as written and percent-decoded."""
    _, userinfo, _, pairs = _split(url)
    found = [userinfo.partition(":")[2]] if userinfo else []
    found += [pair.partition("=")[2] for pair in pairs if _secret_pair(pair)]
    forms = {form for raw in found for form in (raw, unquote(raw)) if form}
    return sorted(forms, key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    for secret in _passwords(url):
        text = text.replace(secret, "***")
    return text


def redact(url: str) -> str:
    """``url`` with its passwords shown as ``***`` (fit for logs and messages)."""
    scheme, userinfo, hosts, pairs = _split(url)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        hosts = f"{user}:***@{hosts}" if colon else f"{userinfo}@{hosts}"
    query = "&".join(f"{p.partition('=')[0]}=***" if _secret_pair(p) else p for p in pairs)
    return f"{scheme}://{hosts}" + (f"?{query}" if query else "")


def _check_url(url: str) -> None:
    if not url.startswith(SCHEMES):
        raise ValueError(f"not a PostgreSQL URL (postgresql://…): {redact(url)}")


def _connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit) with ``synchronous_commit`` on;
    ``PostgresTrailError`` with the password redacted if there is none."""
    _check_url(url)
    error: PostgresTrailError | None = None
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "finserve-trail")
        conn = psycopg.connect(**params, autocommit=True)
    except psycopg.Error as exc:
        message = _scrub(str(exc).strip(), url)
        error = PostgresTrailError(f"cannot connect to the decision trail at {redact(url)}: "
                                   f"{message}")
    if error is not None:  # raised out of the except block: no __context__ with the secret
        raise error
    conn.execute("SET synchronous_commit TO on")
    return conn


# --- the table ------------------------------------------------------------------------------
def _table(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"table name must match {_TABLE_NAME.pattern}: {table!r}")
    return table


def schema_sql(table: str = DEFAULT_TABLE) -> str:
    """The DDL of the trail table, its request-id index and its append-only trigger; safe to
    run again. Run it as the table's owner, then grant the service's role INSERT, SELECT."""
    t = _table(table)
    return f"""\
CREATE TABLE IF NOT EXISTS "{t}" (
    chain      text        NOT NULL,
    seq        bigint      NOT NULL,
    kind       text        NOT NULL DEFAULT 'decision',
    request_id text,
    model      text,
    time       timestamptz,
    record     bytea       NOT NULL,  -- the record's exact JSON line (UTF-8)
    PRIMARY KEY (chain, seq, kind)
);
CREATE INDEX IF NOT EXISTS "{t}_request_id" ON "{t}" (request_id);
CREATE OR REPLACE FUNCTION "{t}_append_only"() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'the decision trail % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING HINT = 'records are never changed or removed';
END
$fn$;
CREATE OR REPLACE TRIGGER "{t}_append_only"
    BEFORE UPDATE OR DELETE OR TRUNCATE ON "{t}"
    FOR EACH STATEMENT EXECUTE FUNCTION "{t}_append_only"();
ALTER TABLE "{t}" ENABLE ALWAYS TRIGGER "{t}_append_only";
-- then, for the service's role: GRANT SELECT, INSERT ON "{t}" TO <role>;
"""


def _ensure_table(conn: psycopg.Connection[Any], table: str) -> None:
    """Create the table unless it exists (then no DDL runs: the role may lack CREATE)."""
    exists, guarded = conn.execute(
        "SELECT to_regclass(%(t)s) IS NOT NULL, EXISTS (SELECT FROM pg_trigger WHERE"
        " tgrelid = to_regclass(%(t)s) AND tgname = %(t)s || '_append_only'"
        " AND tgenabled = 'A')", {"t": table}).fetchone() or (False, False)
    if not exists:
        with conn.transaction():  # replicas starting together: one creates, the rest wait
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [table])
            conn.execute(schema_sql(table).encode())
    elif not guarded:
        log.warning("decision trail table %s has no enabled append-only trigger "
                    "(run serving.audit_postgres.schema_sql as its owner)", table)


# --- writing --------------------------------------------------------------------------------
def _text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, not {type(value).__name__}")
    return value


def _row(line: bytes) -> tuple[Any, ...]:
    """The columns of one record's line (the line itself is stored as it is)."""
    record = orjson.loads(line)
    if not isinstance(record, dict):
        raise ValueError("a trail record must be a JSON object")
    chain, seq = _text(record, "chain"), record.get("seq")
    if chain is None or type(seq) is not int:
        raise ValueError("a trail record needs a string 'chain' and an integer 'seq'")
    time = _text(record, "time")
    when = datetime.fromisoformat(time) if time else None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # records are written in UTC
    return (chain, seq, _text(record, "kind") or "decision", _text(record, "request_id"),
            _text(record, "model"), when, bytes(line))


class PostgresSink:
    """Appends each batch of trail lines in one transaction, durable when ``write`` returns.

    One connection, made on first use and reused; if the server dropped it (a restart), the
    batch is retried once on a new one, and a retry that finds the batch already stored
    byte for byte (the lost attempt committed) succeeds. Any error leaves nothing of the
    batch and is raised.
    """

    def __init__(self, url: str, table: str = DEFAULT_TABLE) -> None:
        _check_url(url)
        self._url = url
        self.table = _table(table)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(self.table), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)))

    def __repr__(self) -> str:
        return f"PostgresSink({redact(self._url)!r}, {self.table!r})"

    def write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            rows = [_row(line) for line in lines]
        except ValueError as exc:  # orjson.JSONDecodeError is one
            raise ValueError(f"not a trail record: {exc}") from None
        with self._lock:
            conn = self._connection()
            try:
                self._insert(conn, rows)
                return
            except psycopg.OperationalError:
                if not conn.closed:  # an error of this batch, not a lost connection
                    raise
            log.warning("decision trail connection to %s lost; reconnecting", redact(self._url))
            conn = self._connection()
            try:
                self._insert(conn, rows)
            except errors.UniqueViolation:
                if not self._stored(conn, rows):  # the lost attempt may have committed
                    raise
                log.warning("the batch was committed before the connection was lost")

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = None
            conn = _connect(self._url)
            try:
                _ensure_table(conn, self.table)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _insert(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        """One binary COPY in autocommit: a single statement, so a single transaction,
        committed before the server answers (no BEGIN and COMMIT round trips). Faster than
        ``executemany`` (pipelined INSERTs): p50 0.9 against 1.2 ms for one ~630-byte line,
        3.4 against 7.4 ms for 64 (fsync on, 2 cores)."""
        with conn.cursor() as cur, cur.copy(self._copy) as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)

    def _stored(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> bool:
        """Whether every row of the batch is already in the table, byte for byte."""
        keys = list(zip(*((r[0], r[1], r[2], r[6]) for r in rows), strict=True))
        query = sql.SQL(
            "SELECT count(*) FROM {} AS t JOIN unnest(%s::text[], %s::int8[], %s::text[],"
            " %s::bytea[]) AS b(chain, seq, kind, record) USING (chain, seq, kind)"
            " WHERE t.record = b.record").format(sql.Identifier(self.table))
        found = conn.execute(query, [list(column) for column in keys]).fetchone()
        return found is not None and found[0] == len(rows)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# --- reading --------------------------------------------------------------------------------
def read_postgres(url: str, table: str = DEFAULT_TABLE,
                  kind: str | None = None) -> Iterator[bytes]:
    """Every stored line (of ``kind``, if given) in (chain, seq) order, streamed through a
    server-side cursor; consume or close the iterator to release its connection."""
    where = sql.SQL("WHERE kind = %s") if kind is not None else sql.SQL("")
    query = sql.SQL("SELECT record FROM {} {} ORDER BY chain, seq, kind").format(
        sql.Identifier(_table(table)), where)
    with _connect(url) as conn:
        conn.read_only = True
        with conn.transaction(), conn.cursor("finserve_trail", binary=True) as cur:
            cur.itersize = 1000
            cur.execute(query, [kind] if kind is not None else None)
            for (record,) in cur:
                yield record


def find_postgres(url: str, request_id: str, table: str = DEFAULT_TABLE) -> list[bytes]:
    """The lines with ``request_id`` (by its index), in (chain, seq) order."""
    query = sql.SQL("SELECT record FROM {} WHERE request_id = %s ORDER BY chain, seq, kind")
    with _connect(url) as conn, conn.cursor(binary=True) as cur:
        cur.execute(query.format(sql.Identifier(_table(table))), [request_id])
        return [record for (record,) in cur]
