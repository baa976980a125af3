"""PostgreSQL storage through psycopg 3: the only module that speaks SQL to PostgreSQL.

`PostgresStore` implements the `Store` contract for engines on several hosts
sharing one database. Like `SQLiteStore`, one store is used by one thread at a
time (each actor owns one); its connection comes from a `psycopg_pool` pool
shared by every store of the process for that URL, checked out for one
transaction (or one statement) at a time.

Isolation: write transactions run at READ COMMITTED with explicit row locks
and version checks, not at SERIALIZABLE. Every decision a write makes rests
on two kinds of reads, and each is protected without predicate locks:

- Level rows. Inside `write()`, the service first locks every level of the
  transaction (`lock_levels`: one `SELECT ... WHERE name = ANY(...) ORDER BY
  name FOR UPDATE`) and reads it as committed, before it decides anything;
  wins and config changes need it, and for contributions it means a cache
  another host made stale is re-read there (counted as a reload) instead
  of applied for nothing and found out at the UPDATE. No row it returns can
  change until the transaction ends. Writes are still version-checked
  (`UPDATE ... WHERE name = %s AND version = %s`, which waits for any
  concurrent writer of the row and then re-evaluates the version against
  the newest committed row: READ COMMITTED re-check), so a row changed
  without the lock would leave 0 rows updated, which the service treats as
  a version conflict. Every committed change bumps the version, so an equal
  version proves an unchanged row.
- The op_id's idempotency record. The service looks op_ids up once the
  levels are locked, so a twin request (same levels) that another process
  committed while this one waited for them is found and replayed. One that
  commits after the lookup (a request on other levels) is caught by the
  operations table's primary key when this transaction inserts its own
  record (or by a unique index of the operator's on op_id and more, which
  PostgreSQL may name instead: `_lost_race`); that error is translated into
  `SerializationFailureError`, and the service's retry then finds the
  stored record.

Nothing depends on the absence of rows in a range, which is what SERIALIZABLE
adds over this; at SERIALIZABLE, PostgreSQL's page-granular predicate locks on
the ledger and operations indexes would abort unrelated contributions with
false-positive serialization failures. Reads (`read()`: pools, verify) use one
REPEATABLE READ READ ONLY snapshot, the equivalent of SQLite's read
transaction.

Lock order and waits: the service reads and writes a transaction's levels in
sorted name order, so multi-level transactions lock rows in canonical order
and cannot deadlock each other. Ledger rows and idempotency records are
buffered and inserted at the end of the transaction, after every level row is
locked and version-checked: the only writer that can insert version N+1 of a
level is the one holding that row, so the inserts never wait on another
transaction's index entries. Every lock wait is bounded by `SET LOCAL
lock_timeout` (JACKPOT_LOCK_TIMEOUT_MS), then `LockTimeoutError`; so is the
wait for a pooled connection. Deadlocks (40P01) and serialization failures
(40001), should PostgreSQL report any, roll back and raise
`SerializationFailureError`, which the service retries with backoff and
counts (busy_incidents); when retries run out it raises
`ConcurrencyViolationError`.

Durability: `synchronous="FULL"` (the default) commits with
`synchronous_commit = on`, so a result is returned only after its commit is
flushed; "NORMAL" uses `synchronous_commit = off` (like SQLite's NORMAL: a
crash may lose the last commits, never half of one).

Lost connections: a pooled connection the server closed while it sat idle
(a restart, a terminated session) fails its BEGIN, before anything ran, and
is replaced unseen. A transaction whose connection dies before its COMMIT is
rolled back by the server: `StorageError` saying nothing was changed. One
whose connection dies at COMMIT may have committed (a terminated backend
sends its FATAL after finishing a COMMIT): its transaction id, read with the
BEGIN, is looked up with `txid_status` on a new connection, so a committed
transaction is reported applied and an aborted one as nothing changed; when
the server cannot tell, the error says the outcome is unknown. ("committed"
counts only with a row the transaction inserted there under that id: after a
crash the server gives the ids it lost to new transactions.) After an
outage the pool (`_pg_pool.JackpotPool`) tries the server about once a
second while calls wait for a connection, so they are served again about a
second after it is back, however long it was away.

Schema: `schema.POSTGRES_MIGRATIONS` under the one-row table `jackpot_schema`,
applied under a transaction-scoped advisory lock so that engines opening one
database at once migrate it once. Reading all levels inside a write (what
`JackpotEngine.open` does before creating missing levels) takes the same
advisory lock, so two engines never create the same level twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolTimeout

from jackpot.domain import Entry, LevelState
from jackpot.errors import LockTimeoutError, StorageError
from jackpot.storage._pg_pool import JackpotPool, install_log_filter
from jackpot.storage._pg_service import Service, read_service
from jackpot.storage._schema_problems import (
    LOST_FOREIGN_KEY,
    IndexShape,
    check_problems,
    collation_problems,
    constraint_problems,
    index_collation_problems,
    index_problems,
    insert_hook_problems,
    key_problems,
    number_column,
    refusing_index_problems,
    type_problems,
)
from jackpot.storage.base import (
    ENTRY_COLUMNS,
    LEDGER_INTEGERS,
    LEVEL_COLUMNS,
    ROW_TOLD_NULLS,
    TABLE_COLUMNS,
    ConnectionUnavailableError,
    LedgerRow,
    SerializationFailureError,
    Store,
    StoredOperation,
    entry_values,
    ledger_row,
    level_from_row,
    level_values,
    row_limit,
    stored_result,
)
from jackpot.storage.schema import (
    NULLABLE,
    POSTGRES_CHECKS,
    POSTGRES_MIGRATIONS,
    POSTGRES_TRIGGERS,
)

__all__ = ["PostgresStore"]

Connection = psycopg.Connection[tuple[Any, ...]]
logger = logging.getLogger("jackpot")

_PROBE_EVERY = 5.0
"""Seconds: with every pooled connection in use, how often a timeout tries the server directly."""
_STREAM_CHUNK = 2000  # rows per FETCH of a server-side cursor (the audit's big queries)
_ADVISORY_KEY = 0x6A61636B706F74  # "jackpot": serializes migrations and level creation
_SELECT_LEVEL = f"SELECT {', '.join(LEVEL_COLUMNS)} FROM levels"
_LOAD_LEVEL = f"{_SELECT_LEVEL} WHERE name = %s"
_LOCK_LEVEL = f"{_LOAD_LEVEL} FOR UPDATE"
_LOAD_LEVELS = f'{_SELECT_LEVEL} ORDER BY name COLLATE "C"'  # byte order, as SQLite and sorted()
_LOCK_LEVELS = f'{_SELECT_LEVEL} WHERE name = ANY(%s) ORDER BY name COLLATE "C" FOR UPDATE'
# (PostgreSQL locks the rows as the sorted ones come up: in name order, like every write.)
_INSERT_LEVEL = (f"INSERT INTO levels ({', '.join(LEVEL_COLUMNS)}) "
                 f"VALUES ({', '.join(['%s'] * len(LEVEL_COLUMNS))})")
_UPDATE_LEVEL = (f"UPDATE levels SET {', '.join(f'{c} = %s' for c in LEVEL_COLUMNS[1:])} "
                 "WHERE name = %s AND version = %s")
_INSERT_ENTRY = (f"INSERT INTO ledger (op_id, {', '.join(ENTRY_COLUMNS)}) "
                 f"VALUES ({', '.join(['%s'] * (len(ENTRY_COLUMNS) + 1))})")
_INSERT_OPERATION = ("INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                     "VALUES (%s, %s, %s, %s, %s)")
_FIND_OPERATIONS = ("SELECT op_id, kind, fingerprint, result FROM operations "
                    "WHERE op_id = ANY(%s)")
_LEDGER_SELECT = f"SELECT {', '.join(LedgerRow.__dataclass_fields__)} FROM ledger"
# The oid of the schema the tables are in. Not `current_schema()::regnamespace`:
# that cast parses the name as SQL, so a schema whose name needs quoting
# ("Jackpot", "two words") would be read as another name, or not at all.
_CURRENT_SCHEMA = "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
# A table's indexes: name, unique, key columns in order (NULL for an
# expression; a covering index's INCLUDE columns are not keys), partial (has a
# WHERE), an exclusion constraint's (whose key column is NULL too where it is
# compared otherwise than by PostgreSQL's own `=` under a deterministic
# collation: `lower(op_id)`, `op_id WITH <>`, a `=` of the operator's), and a
# generated column's (an expression of others, stored or not), and a unique
# index's under an operator class of the operator's (whose equality it is, not
# the type's `=`: one that takes B1 and b1 for equal; PostgreSQL's own, such as
# text_pattern_ops, compare by `=`; that class is named, with its column). An index not
# ready (a CREATE INDEX CONCURRENTLY that failed before its first pass ended) is not kept
# up to date, and refuses nothing: neither unique nor an exclusion's. Whether it takes
# NULLs for equal (NULLS NOT DISTINCT) is read by name: 15 added the column.
_KEY_COLUMNS = ("FROM unnest((i.indkey::int2[])[0:i.indnkeyatts - 1]) "
                "WITH ORDINALITY AS k(attnum, n) LEFT JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n")
_INDEXES = (
    "SELECT c.relname, i.indisunique AND i.indisready, ARRAY(SELECT CASE WHEN (NOT "
    "i.indisexclusion AND (SELECT p.opcnamespace = 'pg_catalog'::regnamespace "
    "FROM pg_opclass p WHERE p.oid = (i.indclass::oid[])[k.n - 1]) OR ("
    "(SELECT o.oprname = '=' AND o.oprnamespace = 'pg_catalog'::regnamespace "
    "FROM pg_operator o WHERE o.oid = x.conexclop[k.n]) AND coalesce((SELECT "
    "l.collisdeterministic FROM pg_collation l WHERE l.oid = (i.indcollation::oid[])[k.n - 1]), "
    f"true))) AND a.attgenerated = '' THEN a.attname END {_KEY_COLUMNS}), "
    "i.indpred IS NOT NULL, i.indisexclusion AND i.indisready, "
    "coalesce((to_jsonb(i) -> 'indnullsnotdistinct')::bool, false), "
    "ARRAY(SELECT CASE WHEN NOT i.indisexclusion AND a.attgenerated = '' THEN a.attname END "
    f"{_KEY_COLUMNS}), ARRAY(SELECT CASE WHEN NOT i.indisexclusion THEN (SELECT p.opcname "
    "FROM pg_opclass p WHERE p.oid = (i.indclass::oid[])[k.n - 1] "
    f"AND p.opcnamespace <> 'pg_catalog'::regnamespace) END {_KEY_COLUMNS}) "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "LEFT JOIN pg_constraint x ON x.conindid = i.indexrelid AND x.contype = 'x' "
    f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND i.indrelid = (SELECT oid FROM "
    f"pg_class WHERE relname = %s AND relnamespace = {_CURRENT_SCHEMA})")
# The operator's columns of the three tables (the engine's, `table.column`, left out: the
# engine writes them) whose default (or their domain's) gives every row one value: table,
# column, default as PostgreSQL prints it (NULL where none). A generated column is an
# expression of others (see _INDEXES), an identity's values differ.
_DEFAULTS = (
    "SELECT c.relname, a.attname, pg_get_expr(e.bin, c.oid) FROM pg_attribute a "
    "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "CROSS JOIN LATERAL (SELECT coalesce(d.adbin, t.typdefaultbin) AS bin) AS e "
    f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = ANY(%s) "
    "AND NOT (c.relname || '.' || a.attname) = ANY(%s) "
    "AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = '' AND a.attgenerated = '' "
    "AND NOT EXISTS (SELECT FROM regexp_matches(e.bin::text, ':(?:op)?funcid (\\d+)', 'g') "
    "AS f(m) JOIN pg_proc p ON p.oid = f.m[1]::oid WHERE p.provolatile = 'v')")
# The key columns of the three tables' unique indexes (primary keys' included)
# whose collation is nondeterministic and not their column's: table, index,
# column, collation (`index_collation_problems`). indcollation has one per key
# column (0 where none applies: not text), in indkey's order.
_UNIQUE_KEY_COLLATIONS = (
    "SELECT t.relname, c.relname, a.attname, k.collname FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
    "CROSS JOIN LATERAL unnest((i.indkey::int2[])[0:i.indnkeyatts - 1], "
    "i.indcollation::oid[]) WITH ORDINALITY AS x(attnum, coll, n) "
    "JOIN pg_collation k ON k.oid = x.coll "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = x.attnum "
    f"WHERE t.relnamespace = {_CURRENT_SCHEMA} AND t.relname = ANY(%s) AND i.indisunique "
    "AND NOT k.collisdeterministic AND x.coll <> a.attcollation "
    "ORDER BY t.relname, c.relname, x.n")
# The body of the engine's append-only function, its runs of white space made one space.
_APPEND_ONLY_SOURCE = " ".join(re.split(r"\$\$", POSTGRES_MIGRATIONS[0])[1].split())
_HAS_SCHEMA_TABLE = ("SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = current_schema() "
                     "AND tablename = 'jackpot_schema')")
# A row a write transaction inserted, by its key, with the id of the transaction
# that inserted it (xmin: 32 bits, as text). History is append-only, so the row
# of a transaction that committed stays there with its xmin. A ledger row is
# matched by its op_id as well: the transaction that reused a lost id may be
# another host's write of the same level, which wrote that very version.
_WROTE_ENTRY = ("SELECT xmin::text FROM ledger "
                "WHERE level = %s AND version_after = %s AND op_id = %s")
_WROTE_RECORD = "SELECT xmin::text FROM operations WHERE op_id = %s"
_ENTRY_LEVEL = 1 + ENTRY_COLUMNS.index("level")  # (entry_values: op_id first)
_ENTRY_VERSION = 1 + ENTRY_COLUMNS.index("version_after")
# What a unique violation on these means: another transaction won the race.
_RACES = {"operations_pkey": "op_id", "ledger_level_version": "level version"}
# The same, told by columns: a unique index on the whole key (and maybe more) that
# an operator added may be the one PostgreSQL names in the violation (it checks a
# table's unique indexes in oid order: after REINDEX CONCURRENTLY of the engine's,
# the operator's comes first). Per table: the key's columns, what they are called.
_RACE_KEYS = {"operations": (frozenset({"op_id"}), "op_id"),
              "ledger": (frozenset({"level", "version_after"}), "level version")}
# The plain key columns of one unique index, by its name, its table's and their
# schema's: those compared by their type's own `=` (an operator class of
# pg_catalog's, a deterministic collation or none), not an expression, a generated
# column or an INCLUDE column. A clash on another (lower(op_id), op_id under a
# case-blind class or collation: B1 after b1) is not the same key committed first.
_PLAIN_UNIQUE_KEY = (  # (by oid, not a join on names: a join of 7 catalogs took ~5 ms to plan)
    "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest("
    "(i.indkey::int2[])[0:i.indnkeyatts - 1], i.indclass::oid[], i.indcollation::oid[]) "
    "AS k(attnum, opclass, coll) "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
    "WHERE i.indexrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) "
    "AND i.indrelid = to_regclass(format('%%I.%%I', %s::text, %s::text)) "
    "AND i.indisunique AND a.attgenerated = '' "
    "AND (SELECT p.opcnamespace = 'pg_catalog'::regnamespace FROM pg_opclass p "
    "WHERE p.oid = k.opclass) AND coalesce((SELECT l.collisdeterministic "
    "FROM pg_collation l WHERE l.oid = k.coll), true)")


def _misread(url: str) -> bool:
    """Say if libpq cannot parse `url`, or parses a password into the host or port.

    An unencoded "@" in a password ends the user information early (the rest
    becomes part of the host), an unencoded "/" ends the host (the password's
    start becomes the port): the connection error would then show it.
    """
    try:
        params = conninfo_to_dict(url)
    except (psycopg.Error, UnicodeError):  # e.g. "%90": not UTF-8 once decoded
        return True
    host, port = str(params.get("host") or ""), str(params.get("port") or "")
    if "@" in host or not _PORTS.fullmatch(port):
        return True
    # "user:2024/pa@ss@host/db": no "@" before the first "/", so libpq reads
    # "user" as the host, "2024" as the port and the rest as the database.
    rest = url.split("://", 1)[-1].split("?", 1)[0]  # not the query: "?user=me@srv"
    authority, slash, path = rest.partition("/")
    return bool(slash) and ":" in authority and "@" not in authority and "@" in path


_PORTS = re.compile(r"[0-9,]*")
_SECONDS = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*")
"""A connect_timeout libpq reads (psycopg too): spaces as C's isspace, which libpq
skips around it. (Python's \\s takes \\x1c to \\x1f too, which psycopg refuses with
its own message, quoting the value.)"""


def _malformed(url: str) -> str:
    """Say where a URL that `_misread` refuses went wrong, quoting none of it.

    Past the "?" when the URL without its query reads well: a misspelt
    keyword (`?connect_timeot=5`) was told to percent-encode the password,
    which the operator had not touched.
    """
    base, query, _ = url.partition("?")
    if query and not _misread(base):
        return ("cannot open database: the PostgreSQL URL is malformed after its '?': "
                "its parameters must be libpq connection keywords, as keyword=value "
                "joined by & (check each keyword's spelling; percent-encode %, & or = "
                "in a value such as a password)")
    return ("cannot open database: the PostgreSQL URL is malformed (percent-encode "
            "characters such as %, &, @ or / in the password)")


def describe(url: str) -> str:
    """Return `url` without its password, for messages and logs."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable PostgreSQL URL>"
    # (Only the parts the URL gives: one without a user was `postgresql://@host:5432/db`.)
    user, host, port = (str(d.get(part) or "") for part in ("user", "host", "port"))
    # (And its libpq service, which may give the rest: one alone was `postgresql:///`.)
    service = f"?service={d['service']}" if d.get("service") else ""
    return (f"postgresql://{user + '@' if user else ''}{host}{':' + port if port else ''}"
            f"/{d.get('dbname') or ''}{service}")


NETWORK_DEFAULTS = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
                    "keepalives_count": "3", "tcp_user_timeout": "60000",
                    "connect_timeout": "10"}
"""libpq settings that bound a wait on a server that vanished without closing.

A server host that crashes or drops off the network sends no FIN: without
them a pooled connection waits for its answer until the kernel gives up on
TCP (many minutes), holding its level's actor meanwhile. With them an idle
wait ends after about a minute of unanswered keepalives, and data the server
does not acknowledge after 60 s. A new connection gives up after 10 s
(the kernel's SYN retries take about two minutes), so that the pool's
reconnection after an outage is not stuck in an attempt made during it.
The URL's own values win, and so do those of its libpq service
(pg_service.conf) and libpq's `PGCONNECT_TIMEOUT` (`network_defaults`).
"""


_KEYWORDS = frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults())
"""Every connection keyword libpq knows."""

_ENV_VARS = {o.keyword.decode(): o.envvar.decode()
             for o in psycopg.pq.Conninfo.get_defaults() if o.envvar}
"""libpq's environment variable of each connection keyword that has one."""


def network_defaults(url: str) -> dict[str, str]:
    """Return the keywords every connection to `url` is made with (`NETWORK_DEFAULTS`).

    Each of `NETWORK_DEFAULTS` that nobody else sets: a keyword passed to
    `psycopg.connect` wins over the URL's libpq service (pg_service.conf)
    and over its environment variable (`PGCONNECT_TIMEOUT`), so a default
    given for one they set would silently undo the operator's choice. A
    service's own connect_timeout is passed on instead: psycopg, which
    bounds a connection's wait itself, reads it from the URL and the
    environment only (and waits 130 s otherwise).
    """
    defaults, service = _network_keywords(url)
    return {**defaults, **service}


def _network_keywords(url: str) -> tuple[dict[str, str], dict[str, str]]:
    """Return `network_defaults(url)` in two: the defaults, and the service's connect_timeout."""
    given = conninfo_to_dict(url)
    service = _service(given)
    own = {} if service is None else service.settings
    defaults = {k: v for k, v in NETWORK_DEFAULTS.items()
                if k not in given and k not in own and not os.environ.get(_ENV_VARS.get(k, ""))}
    passed_on = {k: own[k] for k in ("connect_timeout",) if k in own and k not in given}
    return defaults, passed_on


def _service(given: dict[str, Any]) -> Service | None:
    """Return the libpq service that the connection keywords `given` use, if it can be read."""
    return read_service(given, _KEYWORDS)


SESSION_DEFAULTS = {"idle_in_transaction_session_timeout": "60000", "tcp_keepalives_idle": "30",
                    "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}
"""Server settings of every pooled session, where nobody set them (still at their default).

The client's keepalives (`NETWORK_DEFAULTS`) end the client's wait; the
server's session lives on. A host whose network dies in the middle of a
transaction leaves that transaction open on the server, holding its row
locks (a level's `FOR UPDATE`): every other host's writes of that level
would time out until the server's TCP gives up, two hours by default. So
the server ends a session idle in a transaction for a minute (the engine's
transactions never wait between statements) and probes its idle clients
as the client probes the server. A value the URL's `options`, the role,
the database or the server's configuration sets is kept (so `ALTER ROLE ...
SET idle_in_transaction_session_timeout = 0` turns it off). Behind a
transaction-pooling PgBouncer they land on PgBouncer's server connections,
which clients of the same database and role share.
"""

_SET_SESSION_DEFAULTS = (
    "SELECT set_config(d.name, d.value, false) FROM (VALUES "
    + ", ".join(f"('{k}', '{v}')" for k, v in SESSION_DEFAULTS.items())
    + ") AS d(name, value) JOIN pg_settings USING (name) WHERE source = 'default'")


_configure_failed = threading.Event()  # warned once per process


def _configure_session(conn: Connection) -> None:
    """Apply `SESSION_DEFAULTS` to a new pooled connection (the pool's configure callback).

    Best effort: a server that refuses (`pg_settings` not readable by the
    role, say) keeps its own settings, with one warning per process. Raising
    here would make the pool discard every connection it makes.
    """
    try:
        conn.execute(_SET_SESSION_DEFAULTS)
    except psycopg.Error as e:  # autocommit: the connection is idle and usable
        if not _configure_failed.is_set():
            _configure_failed.set()
            with contextlib.suppress(Exception):  # nor may a raising log filter
                logger.warning("could not set the server-side session defaults (%s): "
                               "sessions keep the server's own settings",
                               " ".join(str(e).split()))


class _Opening:
    """A URL whose pool is being made: the lock its first connection is made under."""

    __slots__ = ("bound", "failed", "failures", "lock", "stores")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        """Held over the first connection, over the network."""
        self.stores = 0
        """How many stores hold the lock or wait for it."""
        self.failures = 0
        """How many first connections failed."""
        self.failed: str | None = None
        """What the last first connection said if it failed; None if it succeeded."""
        self.bound: int | None = None
        """How long that one waited for the server at most (`_first_bound`)."""


class _Pools:
    """One connection pool per (process, URL), shared by every store that uses it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        """Guards the dicts, never held over the network."""
        self._pools: dict[tuple[int, str], tuple[JackpotPool, int]] = {}
        self._opening: dict[tuple[int, str], _Opening] = {}
        """Per URL whose pool is being made; forgotten once no store holds or waits for it."""

    def acquire(self, url: str, *, max_size: int, timeout: float) -> JackpotPool:
        """Return the pool for `url`, creating it (after one test connection) if needed.

        The pool holds up to the largest `max_size` a store of the process asked
        for: an engine opened with a bigger `pg_pool_size` than another one's on
        the same URL grows the pool they share (it never shrinks while open).
        Only stores of the same URL wait for its first connection: one to a
        server that does not answer held up, for as long as its connect_timeout,
        every store of the process opened meanwhile (another database's, a
        health probe's, an actor's restarting). A store that waited for a
        first connection that failed fails with it, without trying again: the
        k-th store opened at once on a server that does not answer waited k
        times its connect_timeout. Unless its own would have waited longer
        for the server (a longer lock timeout, `_first_bound`).
        """
        key = (os.getpid(), url)  # a forked child never uses its parent's pool
        bound = _first_bound(url, timeout)  # (before `stores` counts this one: it parses the URL)
        with self._lock:
            if key in self._pools:
                return self._use(key, max_size)
            # Kept while a store holds or waits for it, then forgotten: also when
            # the first connection fails (a wrong password kept its URL listed,
            # password and all, for the life of the process). So no two stores
            # ever make a pool of one URL at once.
            opening = self._opening.setdefault(key, _Opening())
            opening.stores += 1
            failures = opening.failures
        try:
            with opening.lock:
                with self._lock:
                    if key in self._pools:  # made by the store this one waited for
                        return self._use(key, max_size)
                    # The last attempt failed while this one waited, as patiently as it
                    # would. (Not one that failed before another made a pool, since
                    # closed: the server answered meanwhile.)
                    if opening.failures != failures and opening.failed is not None and (
                            bound is None or opening.bound is None or bound <= opening.bound):
                        raise psycopg.OperationalError(opening.failed)
                try:
                    pool = self._make(url, max_size=max_size, timeout=timeout, bound=bound)
                except (psycopg.Error, PoolTimeout) as e:
                    with self._lock:
                        opening.failures += 1
                        opening.failed = str(e)
                        opening.bound = bound
                    raise
                with self._lock:
                    self._pools[key] = (pool, 1)
                    opening.failed = None
                return pool
        finally:
            with self._lock:
                opening.stores -= 1
                if not opening.stores:
                    del self._opening[key]

    @staticmethod
    def _make(url: str, *, max_size: int, timeout: float, bound: int | None) -> JackpotPool:
        """Return a new open pool for `url`, after one direct connection (`_first_bound`)."""
        # Connect once directly: a bad URL, password or server fails here,
        # at once and with the server's own words, not as a pool timeout.
        # As the pool's connections will: the URL's own connect_timeout
        # (or its service's, or PGCONNECT_TIMEOUT), if it sets one, is kept
        # (given here in its place, a misspelt value passed this check and
        # then failed every connection the pool made: a "no connection"
        # after the lock timeout that never said why, while a direct one
        # "just worked"). A service's is passed on (`network_defaults`).
        psycopg.connect(make_conninfo(url, **(
            _network_keywords(url)[1] if bound is None else {"connect_timeout": bound}))
                        ).close()
        install_log_filter()
        pool = JackpotPool(
            url, where=describe(url), min_size=1, max_size=max_size,
            kwargs={"autocommit": True, **network_defaults(url)},
            configure=_configure_session, open=False, timeout=timeout)
        pool.open()
        return pool

    def _use(self, key: tuple[int, str], max_size: int) -> JackpotPool:
        """Count one more user of an open pool, growing it to `max_size` (under the lock)."""
        pool, users = self._pools[key]
        if pool.max_size < max_size:
            pool.resize(pool.min_size, max_size)
        self._pools[key] = (pool, users + 1)
        return pool

    def release(self, url: str, pid: int) -> None:
        """Drop one user of the pool for `url` that process `pid` opened; close it after its last.

        Nothing in a forked child releasing a store its parent opened: the
        pool is the parent's (and its connections too).
        """
        if pid != os.getpid():
            return
        key = (pid, url)
        with self._lock:
            pool, users = self._pools[key]
            if users > 1:
                self._pools[key] = (pool, users - 1)
                return
            del self._pools[key]
        pool.close()


def _first_bound(url: str, timeout: float) -> int | None:
    """Return the connect_timeout of a store's first connection to `url` (`_Pools._make`).

    The store's lock timeout `timeout`, unless the URL, its service or
    PGCONNECT_TIMEOUT sets one (None: theirs, the same for every store of
    the URL). A store that waited for a first connection that failed fails
    with it only if it would not have waited longer (`_Pools.acquire`): one
    that gave up after 2 s (a lock timeout of 1 s) failed a store of 30 s
    with "connection timeout expired", on a server that answers in 5 s.
    """
    return max(2, round(timeout)) if "connect_timeout" in _network_keywords(url)[0] else None


_POOLS = _Pools()


def _after_fork_in_child() -> None:
    """Renew the pools' locks: another thread of the parent may have held one at the fork.

    A URL's is held while its pool opens, through a first connection over the
    network. The parent's pools stay listed: keyed by process, none is used here.
    """
    _POOLS._lock = threading.Lock()  # noqa: SLF001
    _POOLS._opening = {}  # noqa: SLF001


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork_in_child)


class PostgresStore(Store):
    """A jackpot database on a PostgreSQL server, with the engine's queries."""

    _PARAM = "%s"
    _AMOUNT_CAST = "::numeric"  # a forged amount near 2**63 must not overflow the audit
    # A level's rows in the order of its versions, not of seq: an identity sequence
    # that caches values per session (ALTER TABLE ledger ALTER COLUMN seq SET CACHE
    # 50, a common tuning for tables many sessions insert into) hands each session
    # a block of its own, so a later version of a level, written through another
    # host's connection, can get the smaller seq. Read by seq, the audit replayed a
    # level's settings rows out of order and told a correct database as wrong
    # ("setting seed is 102, the ledger says 105"). (seq breaks ties: a forged
    # ledger's rows of one version stay in the order they were written.)
    _LEVEL_ORDER = "version_after, seq"

    def __init__(
        self,
        url: str,
        *,
        lock_timeout_ms: int = 5000,
        synchronous: str = "FULL",
        pool_max_size: int = 16,
        read_only: bool = False,
        existing: bool = False,
    ) -> None:
        """Connect to the database at `url` (postgresql://user@host:port/dbname).

        `pool_max_size` bounds the connections this process opens to that
        database (`Settings.pg_pool_size`; the pool of a URL is shared by the
        process's stores and holds the largest size one asked for). With
        `read_only`, `write()` is refused. With `read_only` or `existing`
        (every connection an engine opens after `open()`: its actors, the
        health probe), a newer schema is refused at once; otherwise
        `migrate()` refuses it. With `existing` (and not `read_only`), a
        database without a jackpot schema is refused too.

        Raises:
            StorageError: the database cannot be reached, or (read-only or
                existing) has a newer schema, or (existing) none at all.

        """
        if _misread(url):  # libpq's message would quote a fragment of it: maybe the password
            raise StorageError(_malformed(url)) from None
        given = conninfo_to_dict(url)
        if not _SECONDS.fullmatch(str(given.get("connect_timeout", "0"))):
            # psycopg's and libpq's messages quote the value (a password pasted in the wrong
            # place, say): told here without it, before anything connects.
            msg = (f"cannot open database {describe(url)}: its connect_timeout is not a whole "
                   "number of seconds (?connect_timeout=10, say); nothing was changed")
            raise StorageError(msg)
        service = None if "connect_timeout" in given else _service(given)
        if service is not None and not _SECONDS.fullmatch(
                service.settings.get("connect_timeout", "0")):
            # Told as the URL's is. Passed on (`network_defaults`), it would fail with
            # psycopg's message, which quotes it and names neither service nor file.
            msg = (f"cannot open database {describe(url)}: the connect_timeout of "
                   f"{service.where} is not a whole number of seconds (connect_timeout=10, "
                   "say); nothing was changed")
            raise StorageError(msg)
        if ("connect_timeout" not in given
                and (service is None or "connect_timeout" not in service.settings)
                and not _SECONDS.fullmatch(os.environ.get("PGCONNECT_TIMEOUT") or "0")):
            # (Empty: unset, as `network_defaults` takes it; a service's wins over it.)
            # Read in the URL's place (`network_defaults`): psycopg's message named
            # connect_timeout, which the URL does not set, and not the variable.
            msg = (f"cannot open database {describe(url)}: PGCONNECT_TIMEOUT in the "
                   "environment is not a whole number of seconds (PGCONNECT_TIMEOUT=10, "
                   "say, or unset it); nothing was changed")
            raise StorageError(msg)
        self._url = url
        self._where = describe(url)
        self._timeout_ms = lock_timeout_ms
        self._probed: tuple[float, ConnectionUnavailableError | None] | None = None
        """When the server was last tried directly, and what that said (`_no_connection`)."""
        self._begin = ("BEGIN ISOLATION LEVEL READ COMMITTED; "
                       f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}; "
                       "SET LOCAL synchronous_commit = "
                       f"{'off' if synchronous == 'NORMAL' else 'on'}")
        self._conn: Connection | None = None
        self._xid = 0  # of the write transaction in progress
        self._wrote: tuple[str, tuple[Any, ...]] | None = None
        """A row the write transaction in progress wrote and no later one changes: the
        query of its xmin, by key (`_flush`: the first ledger row or record; `migrate`)."""
        self._spoiled = False  # its connection is not to be used again (see _flush)
        self._writing = False
        self._entries: list[tuple[Any, ...]] = []
        self._records: dict[str, StoredOperation] = {}
        self._at_ms: dict[str, int] = {}
        self._rowcount = 0
        self._closed = False
        self._read_only = read_only
        try:
            self._pid = os.getpid()  # whose pool it is (see `_Pools.release`)
            self._pool = _POOLS.acquire(url, max_size=pool_max_size,
                                        timeout=lock_timeout_ms / 1000)
        except (psycopg.Error, PoolTimeout) as e:
            msg = f"cannot open database {self._where}: {e}"
            raise StorageError(msg) from e
        if read_only or existing:
            try:
                self._check_schema(existing=existing and not read_only)
            except BaseException:
                self.close()
                raise

    def _check_schema(self, *, existing: bool) -> None:
        """Refuse a newer schema; with `existing`, also none at all.

        `open(create=False)`: an empty database is refused, never given a
        schema by the `migrate()` that follows.
        """
        if self.schema_version() == 0 and existing:
            msg = f"database {self._where} holds no jackpot schema; nothing was created"
            raise StorageError(msg)

    def backup_to(self, target: str) -> None:
        """Refuse: a PostgreSQL database is copied by the server's tools (see `Store`)."""
        msg = (f"a PostgreSQL database is not copied to {target!r} by jackpot: back it up "
               "with pg_dump (or the server's own backups)")
        raise StorageError(msg)

    def close(self) -> None:
        """Give this store's share of the connection pool back (idempotent)."""
        if not self._closed:
            self._closed = True
            _POOLS.release(self._url, self._pid)

    # -- low level -------------------------------------------------------

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; every statement of the engine passes here.

        Inside a transaction, driver errors propagate to the transaction
        boundary (`write`/`read`), which translates them once; outside (a
        level's actor loading its level as it starts), the statement runs in
        a `read()` of its own. Not alone on a pooled connection, as it did: a
        connection the server had closed (a restart, a terminated session)
        failed it ("the connection ... was lost"), where `_checkout` replaces
        one unseen, and nothing bounded its wait for a table lock (VACUUM
        FULL, ALTER TABLE), for which every other read has the lock timeout.
        (A read-only transaction: a statement that writes runs in `write()`.)
        """
        if self._conn is not None:
            return self._run(self._conn, sql, params)
        with self.read():
            assert self._conn is not None  # (set by read())
            return self._run(self._conn, sql, params)

    def _stream(self, sql: str, params: tuple[Any, ...] = ()) -> Iterable[tuple[Any, ...]]:
        """Yield the rows of one query; inside a transaction, through a server-side cursor.

        The audit streams one row per recorded operation and level: fetched
        all at once, a ledger of millions of operations would be held in
        memory whole.
        """
        if self._conn is None:
            return self._exec(sql, params)
        return self._fetch_in_chunks(self._conn, sql, params)

    @staticmethod
    def _fetch_in_chunks(conn: Connection, sql: str, params: tuple[Any, ...]
                         ) -> Iterator[tuple[Any, ...]]:
        with conn.cursor(name="jackpot_stream") as cur:
            cur.itersize = _STREAM_CHUNK
            cur.execute(sql, params or None)
            yield from cur

    def _exec_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement for many rows (pipelined); the bulk twin of `_exec`."""
        assert self._conn is not None, "bulk writes run inside write()"
        with self._conn.cursor() as cur:
            cur.executemany(sql, rows)

    def _run(self, conn: Connection, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        cur = conn.execute(sql, params or None)
        self._rowcount = cur.rowcount
        return cur.fetchall() if cur.description is not None else []

    def _translate(self, e: BaseException, conn: Connection | None = None) -> Exception:
        """Return the JackpotError for driver error `e`.

        `conn`: the connection `e` came from, its transaction rolled back
        (`write`), on which a unique violation's index may be looked up.
        """
        ms = self._timeout_ms
        if isinstance(e, PoolTimeout):  # (`_checkout` tells its own, with its wait's mark)
            return self._no_connection(self._pool.busy_since(self._pool.handled()))
        if isinstance(e, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
            return _timed_out(e, ms, writing=self._writing)
        if isinstance(e, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)):
            return SerializationFailureError(
                f"PostgreSQL aborted the transaction ({e.sqlstate}: {_first_line(e)}); "
                "nothing was changed: retry")
        if isinstance(e, pg_errors.UniqueViolation) and (what := self._lost_race(e, conn)):
            return SerializationFailureError(
                f"a concurrent transaction committed the same {what} first "
                f"({_first_line(e)}); nothing was changed: retry")
        # (Ended before COMMIT.) With a libpq older than 17 the server's FATAL comes as
        # "consuming input failed: terminating connection due to idle-in-transaction
        # timeout", an OperationalError with no SQLSTATE: told by its words (in English).
        idle = (isinstance(e, pg_errors.IdleInTransactionSessionTimeout)
                or (isinstance(e, psycopg.OperationalError)
                    and "due to idle-in-transaction timeout" in str(e)))
        if idle or (isinstance(e, psycopg.OperationalError) and _connection_lost(e)):
            # Lost at COMMIT is settled in _flush: this is before any COMMIT.
            why = (": the transaction sat idle longer than idle_in_transaction_session_timeout "
                   "allows (raise it if this recurs)") if idle else ""
            return StorageError(
                f"the connection to {self._where} was lost before the transaction committed "
                f"({_first_line(e)}{why}); nothing was changed: retry")
        return self._other_error(e, conn)

    def _other_error(self, e: BaseException, conn: Connection | None) -> StorageError:
        """Return the StorageError for a driver error `_translate` has no case of its own for.

        One has a message of its own: a search_path that names no schema that
        exists (InvalidSchemaName). The first open() of a database creates the
        tables in the first schema of the search_path that exists: a name
        misspelt in the URL's options (the README's
        ?options=-csearch_path%3Djackpot), or a schema not made yet, leaves
        none, which PostgreSQL words as "no schema has been selected to create
        in", naming neither. So does a schema that exists but that the role
        has no USAGE on (PostgreSQL leaves such a schema out of the path): the
        message names both causes, as "create the schema" alone sent an
        operator to make one that was already there.
        """
        if not isinstance(e, pg_errors.InvalidSchemaName):
            return StorageError(f"database error: {type(e).__name__}: {_first_line(e)}")
        return StorageError(
            f"database {self._where} has no schema to create the tables in "
            f"({_first_line(e)}): none of its search_path ({_search_path(conn)}) "
            "exists, or none that exists may be used by this role; create the schema "
            "or grant the role USAGE on it, or correct its name (the URL's "
            "options=-csearch_path=..., or the role's or database's search_path); "
            "nothing was changed")

    def _lost_race(self, e: pg_errors.UniqueViolation, conn: Connection | None) -> str | None:
        """Return the key another transaction committed first that `e` clashed with, if any.

        The engine's own indexes are known by name; another (an operator's
        unique index on the key and more) by its plain key columns, read on
        `conn` (None: not read, not a race). Read at each such violation, not
        remembered by name: an index dropped and made again under its name on
        other columns would be misread. It only happens when a race is lost,
        before the retry's backoff (JACKPOT_RETRY_DELAY_MS, 100 ms), and
        costs three round trips (SET, the query, ROLLBACK). A connection
        that fails the read leaves `e` what it is: a StorageError.
        """
        name, table = e.diag.constraint_name, e.diag.table_name
        if name in _RACES:
            return _RACES[name]
        if conn is None or name is None or table not in _RACE_KEYS:
            return None
        key, what = _RACE_KEYS[table]
        try:  # (a new transaction: `e`'s is rolled back)
            conn.execute(f"SET LOCAL lock_timeout = {int(self._timeout_ms)}", prepare=False)
            schema = e.diag.schema_name
            rows = conn.execute(_PLAIN_UNIQUE_KEY, (schema, name, schema, table),
                                prepare=False).fetchall()
        except psycopg.Error:
            return None
        finally:
            self._rollback(conn)
        return what if key <= {r[0] for r in rows} else None

    def _no_connection(self, busy_out: tuple[bool, int]) -> StorageError | LockTimeoutError:
        """Return the error for a pool that gave no connection in time.

        The pool times out alike whether its connections are all in use or
        it cannot make new ones (the server is down, refuses this role, is
        out of connection slots): one direct attempt tells which, so that an
        unreachable server is not reported as a busy pool. (libpq's message
        never holds the password; the pool logs the same one.) While every
        pooled connection is in use, that attempt is made at most every
        `_PROBE_EVERY` seconds and its verdict reused meanwhile: a busy
        server is offered no extra connection per timed-out call, and one
        that stopped answering (all connections stuck on it) is still told.

        `busy_out`: `JackpotPool.busy_since` as the wait ended (not after the
        direct attempt, whose milliseconds change it): whether the pool was
        busy, and how many connections were out. (Told by `out` alone, read
        after the attempt, a busy pool of one was said to be one that "could
        not make another ... after an outage", a ConnectionUnavailableError,
        in about 1 % of its timeouts under load.)
        """
        busy, out = busy_out
        size = self._pool.max_size
        probed = self._probed
        if (busy and probed is not None
                and time.monotonic() - probed[0] < _PROBE_EVERY):
            unreachable = probed[1]
        else:
            unreachable = self._probe()
            self._probed = (time.monotonic(), unreachable)
        if unreachable is not None:
            return unreachable
        if not busy:  # not all in use, none given to another: some could not be made
            return ConnectionUnavailableError(
                f"no connection to {self._where} within {self._timeout_ms} ms: the pool "
                f"has {out} of its {size} in use and could not "
                "make another in time, though a direct connection just worked (after "
                "an outage it tries about once a second; the psycopg.pool log has its "
                "failed attempts); nothing was changed")
        # Said with the pool's size and its setting: a pool sized too small for
        # the process's load (pg_pool_size=1 with several levels) waits here.
        return LockTimeoutError(
            f"no connection to {self._where} became free within {self._timeout_ms} ms "
            f"(every pooled connection is busy: the process keeps {size} to it, "
            "JACKPOT_PG_POOL_SIZE; raise it, within the server's max_connections, if "
            "this recurs); nothing was changed")

    def _probe(self) -> ConnectionUnavailableError | None:
        """Connect once directly: the error if the server cannot be reached, else None."""
        try:
            psycopg.connect(self._url, connect_timeout=max(2, round(self._timeout_ms / 1000))
                            ).close()
        except psycopg.Error as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            return ConnectionUnavailableError(f"cannot connect to {self._where} ({reason}); "
                                              "nothing was changed")
        return None

    def _checkout(self, begin: str) -> tuple[Connection, list[tuple[Any, ...]]]:
        """Return a pooled connection with `begin` run on it, and its last result's rows.

        A pooled connection the server closed since it was last used (a
        restart, a terminated session) fails its first statement, before
        anything ran: it is dropped and the next one tried.
        """
        lost: psycopg.Error | None = None
        for _ in range(self._pool.max_size + 1):  # each stale one is dropped
            handled = self._pool.handled()
            try:
                conn = self._pool.getconn(timeout=self._timeout_ms / 1000)
            except PoolTimeout as e:
                raise self._no_connection(self._pool.busy_since(handled)) from e
            except psycopg.Error as e:
                raise self._translate(e) from e
            try:
                cur = conn.execute(begin)
                while cur.nextset():  # to the last statement's result
                    pass
                rows = cur.fetchall() if cur.description is not None else []
            except psycopg.Error as e:
                gone = isinstance(e, psycopg.OperationalError) and _connection_lost(e, conn)
                if gone:
                    conn.close()
                self._pool.putconn(conn)  # the pool discards a closed connection
                if not gone:
                    raise self._translate(e) from e
                lost = e
                continue
            except BaseException:
                # A signal's exception (Ctrl-C, a request deadline's TimeoutError)
                # raised within the BEGIN, or as it returned: the connection
                # was kept out of the pool for good, in its transaction (an
                # "idle in transaction" session holding its snapshot), and
                # each such read took one of the pool's connections until
                # none was left. Where the statement stands is unknown: closed
                # (the server rolls back), then given back (the pool replaces it).
                conn.close()
                self._pool.putconn(conn)
                raise
            return conn, rows
        assert lost is not None
        raise self._translate(lost) from lost

    @staticmethod
    def _rollback(conn: Connection) -> None:
        # A failed ROLLBACK means the connection is gone (the server rolled
        # back); the pool discards it, and the original error is what matters.
        with contextlib.suppress(psycopg.Error):
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[None]:
        """Run the block in one READ COMMITTED transaction; roll back on any error."""
        if self._read_only:
            msg = f"database {self._where} was opened read-only: nothing was changed"
            raise StorageError(msg)
        started = time.monotonic()
        # The transaction id, taken with the BEGIN (no extra round trip),
        # settles a commit whose answer the connection lost (_flush).
        conn, ((self._xid,),) = self._checkout(f"{self._begin}; SELECT txid_current()")
        self._conn, self._writing = conn, True
        self.lock_wait_seconds = time.monotonic() - started
        try:
            try:
                yield
                self._flush(commit=True)
            except BaseException as exc:
                self._rollback(conn)
                if isinstance(exc, psycopg.Error):
                    raise self._translate(exc, conn) from exc
                raise
        finally:
            self._conn, self._writing = None, False
            self._entries, self._records, self._at_ms = [], {}, {}
            self._wrote = None
            if self._spoiled:
                self._spoiled = False
                self._pool.discard(conn)  # (the pool replaces it)
            else:
                self._pool.putconn(conn)

    def _flush(self, *, commit: bool = False) -> None:
        """Insert the buffered ledger rows and idempotency records (and commit)."""
        assert self._conn is not None
        records = [(r.op_id, r.kind, r.fingerprint, json.dumps(r.result, sort_keys=True),
                    self._at_ms[r.op_id])
                   for _, r in sorted(self._records.items())]  # sorted: no lock cycles
        entries, self._entries, self._records, self._at_ms = self._entries, [], {}, {}
        if not (entries or records or commit):
            return
        if self._wrote is None and (entries or records):
            self._wrote = ((_WROTE_ENTRY, (entries[0][_ENTRY_LEVEL], entries[0][_ENTRY_VERSION],
                                           entries[0][0]))
                           if entries else (_WROTE_RECORD, (records[0][0],)))
        e = self._pipeline(entries, records, commit=commit)
        if e is not None:
            # After an error the server skips the rest of the pipeline, a statement
            # psycopg was preparing on its fifth use included, which psycopg then
            # takes for prepared: the connection's next use of it would fail with
            # "prepared statement ... does not exist". Not returned to the pool.
            self._spoiled = True
            if not isinstance(e, psycopg.OperationalError):
                raise e
            if not commit or not _connection_lost(e, self._conn):
                raise e
            # The connection died at COMMIT: the transaction may have committed
            # all the same (a terminated backend reports FATAL after a COMMIT
            # it finished). Say so only if it did; else raise. Closing our end
            # first makes the server roll back at once what it did not commit.
            self._conn.close()
            self._settle_lost_commit(self._xid, e)

    def _pipeline(self, entries: list[tuple[Any, ...]], records: list[tuple[Any, ...]], *,
                  commit: bool) -> psycopg.Error | None:
        """Run the inserts (and the COMMIT) in one pipeline; return its first error, if any.

        The error is caught inside the pipeline block, not let out of it: a
        block left with an error makes psycopg log "error ignored terminating
        Pipeline ... pipeline aborted" (a WARNING of the `psycopg` logger) for
        the statements the server then skipped, on every twin op_id. The
        skipped ones are reported as the block ends (`PipelineAborted`), and
        only the first error matters.
        """
        assert self._conn is not None
        first: psycopg.Error | None = None
        try:
            with self._conn.pipeline():  # one round trip for the inserts and the COMMIT
                try:
                    if entries:
                        self._exec_many(_INSERT_ENTRY, entries)
                    if records:
                        self._exec_many(_INSERT_OPERATION, records)
                    if commit:
                        self._conn.execute("COMMIT")
                except psycopg.Error as e:
                    first = e
        except psycopg.Error as e:  # the results that came back only as the pipeline ended
            first = first or e
        return first

    def _settle_lost_commit(self, xid: int, e: Exception) -> None:
        """Return if the transaction `xid` names committed; else raise `StorageError`.

        Asked on a new connection after the transaction's own connection was
        lost at COMMIT (PostgreSQL's `txid_status`, made for this question).
        "committed" alone is no proof: a server that crashed before the COMMIT
        reached its WAL forgets the id and gives it to the next transaction
        once it is back (seen with `pg_ctl stop -m immediate`), and a client
        may learn of the crash only then (a host's keepalives: 30 s or more).
        So a row the transaction inserted must be there, inserted by that id
        (a ledger row: its own op_id's, at its level and version).
        """
        lost = f"the connection to {self._where} was lost at COMMIT ({_first_line(e)})"
        status = "unknown"
        try:
            deadline = time.monotonic() + self._timeout_ms / 1000
            # Bounded as pooled connections are (NETWORK_DEFAULTS): the server
            # that just lost a connection is the likeliest to go silent next.
            bounded = make_conninfo(self._url, **{
                **network_defaults(self._url),
                "connect_timeout": str(max(2, round(self._timeout_ms / 1000)))})
            with psycopg.connect(bounded, autocommit=True) as conn:
                while True:  # "in progress": the dying backend is still rolling back
                    (status,) = conn.execute("SELECT txid_status(%s)", (xid,)).fetchall()[0]
                    if status != "in progress" or time.monotonic() > deadline:
                        break
                    time.sleep(0.005)
                if status == "committed" and self._wrote is not None:
                    sql, key = self._wrote
                    if conn.execute(sql, key).fetchall() != [(str(xid % 2**32),)]:
                        status = "reused"
        except psycopg.Error as check:
            msg = (f"{lost}, and whether it committed is unknown ({_first_line(check)}): "
                   "send the operation again with the same op_id to find out")
            raise StorageError(msg, outcome_unknown=True) from e
        if status == "committed":
            return
        if status == "aborted":
            msg = f"{lost}; the transaction was rolled back and nothing was changed: retry"
            raise StorageError(msg) from e
        why = (f"transaction status {status!r}" if status != "reused" else
               "its transaction id committed without the rows it wrote: the server "
               "restarted and gave the id to another transaction")
        msg = (f"{lost}, and whether it committed is unknown ({why}): "
               "send the operation again with the same op_id to find out")
        raise StorageError(msg, outcome_unknown=True) from e

    @contextmanager
    def read(self) -> Iterator[None]:
        """Run the block in one REPEATABLE READ, read-only snapshot."""
        # Bounded like a write's: a table lock (VACUUM FULL, ALTER TABLE, REINDEX)
        # would otherwise hold a read, and a close() waiting for it, for as long.
        conn, _ = self._checkout("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                                 f"SET LOCAL lock_timeout = {int(self._timeout_ms)}")
        self._conn = conn
        try:
            try:
                yield
            finally:
                self._rollback(conn)
        except psycopg.Error as e:
            raise self._translate(e) from e
        finally:
            self._conn = None
            self._pool.putconn(conn)

    # -- schema ------------------------------------------------------------

    def schema_version(self) -> int:
        """Return the schema version in `jackpot_schema` (0: none yet); refuse a newer one."""
        with self.read():
            assert self._conn is not None  # (set by read())
            _refuse_old_server(self._conn, self._where)
            # In the schema the tables are created in (the first existing one of
            # the search_path), not anywhere on the path: a jackpot schema
            # further down it is another database, and taking its version for
            # this one's would let open(create=False) create a new one here.
            if self._exec(_HAS_SCHEMA_TABLE) == [(False,)]:
                return 0
            rows = self._exec("SELECT version FROM jackpot_schema")
        current = int(rows[0][0]) if rows else 0
        _refuse_newer(current, self._where)
        return current

    def migrate(self) -> int:
        """Bring the schema to the latest version; return that version.

        A schema already at the latest version is only read: a role without
        the CREATE privilege on it (one that may only use the tables) opens it.
        """
        latest = len(POSTGRES_MIGRATIONS)
        if self.schema_version() == latest:
            return latest
        with self.write():
            self._exec("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
            self._exec("CREATE TABLE IF NOT EXISTS jackpot_schema (version INTEGER NOT NULL)")
            rows = self._exec("SELECT version FROM jackpot_schema")
            current = rows[0][0] if rows else 0
            _refuse_newer(current, self._where)
            for number in range(current, latest):
                self._exec(POSTGRES_MIGRATIONS[number])
            if rows:
                self._exec("UPDATE jackpot_schema SET version = %s", (latest,))
            else:
                self._exec("INSERT INTO jackpot_schema (version) VALUES (%s)", (latest,))
            self._wrote = ("SELECT xmin::text FROM jackpot_schema", ())  # (_settle_lost_commit)
        return latest

    # -- levels --------------------------------------------------------------

    def load_level(self, name: str) -> LevelState | None:
        """Return one level's committed state, or None; inside `write()`, lock its row."""
        rows = self._exec(_LOCK_LEVEL if self._writing else _LOAD_LEVEL, (name,))
        return level_from_row(rows[0]) if rows else None

    def probe_writable(self) -> None:
        """Raise if this transaction may not write (a read-only server or role, no UPDATE right).

        Neither BEGIN nor a read says so: an UPDATE of no row does, and locks no row.
        """
        self._exec("UPDATE levels SET version = version WHERE false")

    def lock_levels(self, names: list[str]) -> dict[str, LevelState]:
        """Lock those levels' rows in name order and return them as committed (in `write()`).

        Each write does this as it begins, so that what it decides rests on
        rows nobody else can change before it commits: another host's write
        since this engine cached a level is a reload, not a conflict found at
        the UPDATE after the batch was applied for nothing. (Rows another
        transaction holds are waited for, up to the lock timeout; at READ
        COMMITTED the row returned is the one that transaction committed.)
        """
        return {row[0]: level_from_row(row) for row in self._exec(_LOCK_LEVELS, (names,))}

    def level_version(self, name: str) -> int | None:
        """Return the committed version of one level (None: no such level), locking nothing.

        Inside `write()` a plain read is enough: it checks that a decision
        taken on a cached row (a refusal, a skip) rests on the row as committed
        now; a writer that commits after it is ordered after this operation.
        """
        rows = self._exec("SELECT version FROM levels WHERE name = %s", (name,))
        return int(rows[0][0]) if rows else None

    def load_levels(self) -> dict[str, LevelState]:
        """Return every level, by name (inside `write()`: after the creation lock)."""
        if self._writing:
            self._exec("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_KEY,))
        return {row[0]: level_from_row(row) for row in self._exec(_LOAD_LEVELS)}

    def insert_level(self, state: LevelState) -> None:
        """Insert a new level row."""
        self._exec(_INSERT_LEVEL, level_values(state))

    def update_level(self, state: LevelState, *, expected_version: int) -> bool:
        """Write `state` if the row is still at `expected_version`; say if it was."""
        values = level_values(state)
        self._exec(_UPDATE_LEVEL, (*values[1:], state.name, expected_version))
        return self._rowcount == 1

    def claim_lock(self, name: str, holder: str | None) -> None:
        """Record `holder` (None: release) as the level's lock holder in this transaction."""
        self._exec("UPDATE levels SET lock_holder = %s WHERE name = %s", (holder, name))

    # -- ledger and operations ----------------------------------------------

    def append_entries(self, entries: list[tuple[str, Entry]]) -> None:
        """Append one ledger row per (op_id, entry), in order (inserted at commit)."""
        if not self._writing:
            with self.write():
                self.append_entries(entries)
            return
        self._entries.extend(entry_values(op_id, e) for op_id, e in entries)

    def find_operations(self, op_ids: list[str]) -> dict[str, StoredOperation]:
        """Return the stored first results of those `op_ids` that have one."""
        found = {r[0]: StoredOperation(r[0], r[1], r[2], stored_result(r[3]))
                 for r in self._exec(_FIND_OPERATIONS, (list(op_ids),))}
        found.update((i, self._records[i]) for i in op_ids if i in self._records)
        return found

    def record_operations(self, records: list[StoredOperation], at_ms: int) -> None:
        """Store the first results of op_ids (inserted when the transaction commits)."""
        if not self._writing:
            with self.write():
                self.record_operations(records, at_ms)
            return
        for r in records:
            if r.op_id in self._records:
                msg = f"op_id {r.op_id!r} recorded twice in one transaction"
                raise StorageError(msg)
            self._records[r.op_id] = r
            self._at_ms[r.op_id] = at_ms

    def ledger(self, *, level: str | None = None, limit: int | None = None,
               kinds: tuple[str, ...] | None = None, newest_first: bool = False
               ) -> list[LedgerRow]:
        """Return ledger rows, optionally of one level and kinds, oldest first."""
        if self._writing:
            self._flush()  # let the transaction see its own rows
        where: list[str] = []
        params: list[Any] = []
        if level is not None:
            where.append("level = %s")
            params.append(level)
        if kinds:
            where.append("kind = ANY(%s)")
            params.append(list(kinds))
        sql = _LEDGER_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One level's rows in the order of its versions (see `_LEVEL_ORDER`): with
        # seqs cached per session, "the last `limit`" by seq left out a level's
        # newest win (history()) when another host's session had drawn higher
        # seqs for older ones. Rows of every level: by seq, the only order they share.
        order = self._LEVEL_ORDER.split(", ") if level is not None else ["seq"]
        sql += " ORDER BY " + ", ".join(f"{c} DESC" if newest_first else c for c in order)
        if limit is not None:
            sql += f" LIMIT {row_limit(limit)}"
        return [ledger_row(row) for row in self._exec(sql, tuple(params))]

    def _unkept_integers(self) -> tuple[str, ...]:
        """Return the ledger's integer columns whose NOT NULL is gone (see `Store`).

        (Each is a BIGINT: only a NULL there is no integer.)
        """
        nullable = self._nullable_ledger_columns()
        return tuple(c for c in LEDGER_INTEGERS if c in nullable)

    def _unkept_not_nulls(self) -> tuple[str, ...]:
        """Return the columns of `ROW_TOLD_NULLS` whose NOT NULL is gone (see `Store`)."""
        nullable = self._nullable_ledger_columns()
        return tuple(c for c in ROW_TOLD_NULLS if c in nullable)

    def _nullable_ledger_columns(self) -> set[str]:
        return {r[0] for r in self._exec(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = 'ledger' "
            "AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attnotnull")}

    def integrity_check(self) -> str:
        """Return 'ok' when the schema is one this library reads, history append-only, indexes ok.

        An older schema version is no problem: a read-only store reads it as
        it is (the commands that only look never migrate), as SQLite's does.
        """
        problems = []
        version = self._exec("SELECT version FROM jackpot_schema")
        latest = len(POSTGRES_MIGRATIONS)
        if len(version) != 1 or not 1 <= version[0][0] <= latest:
            problems.append(f"schema version {version}, expected one of 1..{latest}")
        # Each trigger of the engine's name: whether it is the engine's (on its table, before
        # each UPDATE, DELETE or TRUNCATE of any column, without a WHEN, running the
        # engine's function as the engine wrote it); an UPDATE OF who, a WHEN (false) or a
        # function made to return refuses nothing. ENABLE REPLICA: fires in no session of
        # the engine's.
        found: dict[str, bool] = {}
        for name, engine_s in self._exec(
            "SELECT t.tgname, c.relname || '_append_only' = t.tgname AND t.tgtype = 58 "
            "AND t.tgqual IS NULL AND cardinality(t.tgattr::int2[]) = 0 "
            "AND p.proname = 'jackpot_append_only' "
            "AND btrim(regexp_replace(p.prosrc, '\\s+', ' ', 'g')) = %s "
            "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} "
            "AND t.tgenabled IN ('O', 'A') AND t.tgname = ANY(%s)",
            (_APPEND_ONLY_SOURCE, list(POSTGRES_TRIGGERS))):
            found[name] = found.get(name, False) or bool(engine_s)
        problems.extend(f"trigger {t} is missing or disabled: history is not append-only"
                        for t in POSTGRES_TRIGGERS if t not in found)
        problems.extend(f"trigger {t} is not the engine's: history is not append-only"
                        for t in POSTGRES_TRIGGERS if found.get(t) is False)
        # tgtype's bits 1, 2, 4: FOR EACH ROW, BEFORE, INSERT (a foreign key's are internal);
        # a rule's ev_type '3': INSERT.
        problems.extend(insert_hook_problems((r[0], r[1], r[2]) for r in self._exec(
            "SELECT c.relname, 'trigger', t.tgname FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = ANY(%s) "
            "AND NOT t.tgisinternal AND t.tgenabled <> 'D' AND t.tgtype::int & 7 = 7 "
            "UNION ALL SELECT c.relname, 'rule', r.rulename FROM pg_rewrite r "
            "JOIN pg_class c ON c.oid = r.ev_class "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = ANY(%s) "
            "AND r.is_instead AND r.ev_type = '3' AND r.ev_enabled <> 'D' ORDER BY 1, 2, 3",
            (list(NULLABLE), list(NULLABLE)))))
        indexes = {table: self._indexes(table) for table in NULLABLE}
        problems.extend(index_problems(indexes["ledger"]))
        problems.extend(key_problems(lambda table: indexes[table].values()))
        problems.extend(refusing_index_problems(indexes, self._defaults))
        # Of the engine's tables only: one of a table of the operator's (a CREATE INDEX
        # CONCURRENTLY that failed on an archive copy) holds nothing of the engine's.
        problems.extend(f"index {r[0]} is invalid" for r in self._exec(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_class t ON t.oid = i.indrelid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND t.relname = ANY(%s) "
            "AND NOT (i.indisvalid AND i.indisready) ORDER BY c.relname", (list(NULLABLE),)))
        problems.extend(constraint_problems((), ((r[0], r[1]) for r in self._exec(
            "SELECT c.relname, a.attname FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = ANY(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped AND NOT a.attnotnull "
            "ORDER BY c.relname, a.attnum", (list(NULLABLE),)))))
        problems.extend(type_problems(self._column_types()))
        # (One of a nondeterministic collation only: another compares text byte for byte.)
        problems.extend(collation_problems(((r[0], r[1], r[2]) for r in self._exec(
            "SELECT c.relname, a.attname, k.collname FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_collation k ON k.oid = a.attcollation "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = ANY(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped AND NOT k.collisdeterministic "
            "ORDER BY c.relname, a.attnum", (list(NULLABLE),))), "a deterministic one"))
        problems.extend(index_collation_problems(((r[0], r[1], r[2], r[3]) for r in self._exec(
            _UNIQUE_KEY_COLLATIONS, (list(NULLABLE),))), "a deterministic one"))
        problems.extend(check_problems((r[0], r[1], r[2], r[3], r[4]) for r in self._exec(
            "SELECT c.relname, k.conname, k.convalidated, ARRAY(SELECT a.attname::text "
            "FROM pg_attribute a WHERE a.attrelid = k.conrelid AND a.attnum = ANY(k.conkey)), "
            "pg_get_constraintdef(k.oid) "
            "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = ANY(%s) "
            "AND k.contype = 'c'", (list(POSTGRES_CHECKS),))))
        # A table that inherits from one of the engine's: its rows are read (and updated)
        # as the engine's, held to none of its keys, unique indexes, foreign key, triggers
        # or NO INHERIT CHECKs (none of which PostgreSQL passes on to a child). A partition
        # is held to them, but for the statement triggers that keep history append-only.
        problems.extend(
            f"table {r[0]} inherits from {r[1]}: its rows are read as rows of {r[1]}, held to "
            f"none of the keys, unique indexes or triggers of {r[1]}" for r in self._exec(
                "SELECT i.inhrelid::regclass::text, p.relname FROM pg_inherits i "
                "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_class c ON c.oid = i.inhrelid "
                f"WHERE p.relnamespace = {_CURRENT_SCHEMA} AND p.relname = ANY(%s) "
                "AND NOT c.relispartition ORDER BY p.relname, 1", (list(NULLABLE),)))
        problems.extend(
            f"table {r[0]} is a partition of {r[1]}: the rows of {r[1]} it holds can be "
            f"updated, deleted or truncated through it, or taken out with it (DETACH "
            f"PARTITION, DROP TABLE), past the append-only trigger of {r[1]}"
            for r in self._exec(
                "SELECT c.oid::regclass::text, r.relname FROM pg_class c "
                "JOIN pg_class r ON r.oid = pg_partition_root(c.oid) "
                f"WHERE c.relispartition AND r.relnamespace = {_CURRENT_SCHEMA} "
                "AND r.relname = ANY(%s) ORDER BY r.relname, 1", (["ledger", "operations"],)))
        # The ledger's level REFERENCES levels (name): dropped, the ledger takes rows of a
        # level that does not exist (the audit tells such rows; this, the table that takes them).
        keys = [bool(r[0]) for r in self._exec(
            "SELECT k.convalidated FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = 'ledger' "
            "AND k.contype = 'f' AND k.confrelid = (SELECT oid FROM pg_class WHERE relname = "
            f"'levels' AND relnamespace = {_CURRENT_SCHEMA}) AND k.conkey = ARRAY(SELECT "
            "attnum FROM pg_attribute WHERE attrelid = k.conrelid AND attname = 'level')")]
        if not keys:
            problems.append(LOST_FOREIGN_KEY)
        elif not any(keys):
            problems.append("table ledger: its FOREIGN KEY (level) REFERENCES levels is NOT "
                            "VALID: rows from before it were never checked")
        return "; ".join(problems) or "ok"

    def unsummable_columns(self) -> list[str]:
        """Return the engine's columns whose type the audit's SQL cannot read (see `Store`).

        A number column whose type is no number (no SUM takes it), and a text
        column whose type is no text (bytea, a number: the audit cuts and
        CASTs a bet's detail, compares kinds and joins on op_id and level as
        text, and each of those fails as the sums do).
        """
        return [f"{table}.{column} is {kind}" for table, column, kind in self._column_types()
                if column in TABLE_COLUMNS.get(table, ()) and not kind.startswith(
                    _NUMBER_TYPES if number_column(table, column) else _TEXT_TYPES)]

    def _indexes(self, table: str) -> dict[str, IndexShape]:
        return {r[0]: IndexShape(bool(r[1]), tuple(r[2]), bool(r[3]), excludes=bool(r[4]),
                                 nulls_equal=bool(r[5]), own_classes=tuple(
                                     (column, own) if column is not None and own is not None
                                     else None for column, own in zip(r[6], r[7], strict=True)))
                for r in self._exec(_INDEXES, (table,))}

    def _defaults(self) -> dict[str, dict[str, str | None]]:
        """Return, per table, the default of each column that gives every row one value.

        (`refusing_index_problems`: None where it has none, or NULL; a
        domain's own where the column has none.) Not an identity's, nor a
        default that calls a volatile function (`nextval`, `gen_random_uuid()`,
        `random()`), which gives each row another value: its calls are read
        from the stored expression, where each names its function's oid
        (`:funcid`, an operator's `:opfuncid`). A stable one, `now()`, gives
        the rows of one transaction one value.
        """
        found: dict[str, dict[str, str | None]] = {table: {} for table in NULLABLE}
        engine_s = [f"{t}.{c}" for t in NULLABLE for c in TABLE_COLUMNS[t]]
        for table, column, default in self._exec(_DEFAULTS, (list(NULLABLE), engine_s)):
            found[table][column] = (None if default is None or default == "NULL"
                                    or default.startswith("NULL::") else default)
        return found

    def _column_types(self) -> list[tuple[str, str, str]]:
        """Return (table, column, type) of the engine's tables' columns, in table order."""
        return [(r[0], r[1], r[2]) for r in self._exec(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            f"WHERE c.relnamespace = {_CURRENT_SCHEMA} AND c.relname = ANY(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
            (list(NULLABLE),))]


_NUMBER_TYPES = ("bigint", "integer", "smallint", "numeric", "real", "double precision")
"""What `format_type` names the types SUM takes (a column changed from bigint to one of them
is told by `type_problems`, its figures still summed)."""

_TEXT_TYPES = ("text", "character")
"""What `format_type` names the types the audit reads as text (`character varying(n)` too: a
column changed from text to one of them is told by `type_problems`, and still read)."""


OLDEST_SERVER = 120000
"""The oldest PostgreSQL server the engine works with (`server_version_num`): verify() reads
catalog columns that 12 added (`pg_collation.collisdeterministic`, `pg_partition_root`)."""


def _refuse_old_server(conn: Connection, where: str) -> None:
    """Refuse a server older than `OLDEST_SERVER`, before anything is created or read on it."""
    if conn.info.server_version < OLDEST_SERVER:
        shown = conn.info.parameter_status("server_version") or conn.info.server_version
        msg = (f"database {where} is on PostgreSQL {shown}; jackpot needs PostgreSQL "
               f"{OLDEST_SERVER // 10000} or later (nothing was changed)")
        raise StorageError(msg)


def _refuse_newer(version: int, where: str) -> None:
    latest = len(POSTGRES_MIGRATIONS)
    if version > latest:
        msg = (f"database {where} has schema version {version}, newer than this library's "
               f"{latest}: upgrade jackpot (nothing was changed)")
        raise StorageError(msg)


def _connection_lost(e: psycopg.Error, conn: Connection | None = None) -> bool:
    """Say whether `e` means the connection is gone (not an error inside a live session).

    No SQLSTATE: the client library failed (the socket closed, or psycopg
    could not leave pipeline mode after the server's FATAL); class 08: a
    connection exception; 57P01-57P03: the server terminated the session.
    """
    cause = e.__context__
    states = [e.sqlstate, cause.sqlstate if isinstance(cause, psycopg.Error) else None]
    return (conn is not None and conn.broken) or e.sqlstate is None or any(
        s.startswith(("08", "57P0")) for s in states if s is not None)


def _search_path(conn: Connection | None) -> str:
    """Return the session's search_path as the server shows it, for a message ("unknown": unread).

    Read on `conn`, its failed transaction rolled back (`write`); None (a read's
    error, translated after its connection went back to the pool): not read.
    """
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            if conn.info.transaction_status == TransactionStatus.IDLE:
                for (path,) in conn.execute("SHOW search_path"):
                    return f"search_path = {path}"
    return "search_path unknown"


def _timed_out(e: BaseException, ms: int, *, writing: bool) -> LockTimeoutError:
    """Return the error for a statement PostgreSQL gave up on; nothing was changed.

    Raised before COMMIT (a COMMIT is not cancelled once its record is
    written), so the transaction is void: the engine's own `lock_timeout`
    (LockNotAvailable), or a `statement_timeout` of the server, database or
    role, or a `pg_cancel_backend` (QueryCanceled).
    """
    void = "nothing was changed" if writing else "nothing was read"
    if isinstance(e, pg_errors.LockNotAvailable):
        return LockTimeoutError(f"lock not acquired within {ms} ms (another transaction holds "
                                f"a row or the table: {_first_line(e)}); {void}")
    return LockTimeoutError(
        f"PostgreSQL canceled a statement ({_first_line(e)}: a statement_timeout set on the "
        f"server, database or role, or pg_cancel_backend); {void}")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
