"""Storage: the only package that speaks SQL.

The engine and actors use the narrow interface of `Store` (write/read
transactions, load/insert/update a level, append ledger rows, idempotency
records, the audit's queries). Two backends implement it, one module each:
`SQLiteStore` (a file path; the embedded default) and `PostgresStore` (a
postgresql:// URL; needs the `postgres` extra, imported only when used).
`open_store` picks the backend from the target.

Every store checks what it opened before changing anything: a database that
is not a jackpot database, or has a newer schema, is refused with
`StorageError` and left as it was. `open_store(read_only=True)` gives a store
that never writes (no migration, no WAL switch, no write lock), for the
commands that only look.
"""

from collections.abc import Callable

from jackpot.errors import StorageError
from jackpot.storage.base import (
    BusyIncidentError,
    ConnectionUnavailableError,
    LedgerFigures,
    LedgerRow,
    LedgerTotals,
    RecordedDetail,
    RecordedResult,
    SerializationFailureError,
    Shown,
    Store,
    StoredOperation,
    UnreadDetail,
)
from jackpot.storage.sqlite import SQLiteStore, StaleReadError

__all__ = [
    "BusyIncidentError",
    "ConnectionUnavailableError",
    "LedgerFigures",
    "LedgerRow",
    "LedgerTotals",
    "RecordedDetail",
    "RecordedResult",
    "SQLiteStore",
    "SerializationFailureError",
    "Shown",
    "StaleReadError",
    "Store",
    "StoredOperation",
    "UnreadDetail",
    "is_database_url",
    "open_store",
]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(target: str) -> bool:
    """Say whether `target` names a PostgreSQL database (else it is a SQLite file path)."""
    return target.startswith(_URL_SCHEMES)


def open_store(
    target: str,
    *,
    lock_timeout_ms: int = 5000,
    poll_interval_ms: int = 50,
    synchronous: str = "FULL",
    on_wal: Callable[[int], None] | None = None,
    cache_mb: int | None = None,
    create: bool = True,
    read_only: bool = False,
    make_lock_file: bool = True,
    pool_size: int = 16,
) -> Store:
    """Open the store for `target`: a postgresql:// URL, or a SQLite file path.

    `on_wal` and `cache_mb` (SQLite only, ignored for PostgreSQL): see
    `SQLiteStore`. `create=False`: the database must already be a jackpot
    database of a schema this library knows (SQLite: the file must exist).
    `read_only`: a store that never writes (for inspecting a database); see
    `SQLiteStore` and `PostgresStore`. `make_lock_file=False` (SQLite only):
    never create the writers' lock file (see `SQLiteStore`). `pool_size`
    (PostgreSQL only): most connections the process keeps to `target` (see
    `PostgresStore`).

    Raises:
        StorageError: the database cannot be opened, is not a jackpot
            database, has a newer schema, or the URL needs the `postgres`
            extra that is not installed.

    """
    if not is_database_url(target):
        return SQLiteStore(target, lock_timeout_ms=lock_timeout_ms,
                           poll_interval_ms=poll_interval_ms, synchronous=synchronous,
                           on_wal=on_wal, cache_mb=cache_mb, create=create,
                           read_only=read_only, make_lock_file=make_lock_file)
    try:
        # Imported here: psycopg is an optional extra, needed only for URLs.
        from jackpot.storage.postgres import PostgresStore  # noqa: PLC0415
    except ImportError as e:
        msg = (f"a PostgreSQL URL needs psycopg and psycopg_pool ({e}): "
               "pip install 'jackpot[postgres]'")
        raise StorageError(msg) from e
    return PostgresStore(target, lock_timeout_ms=lock_timeout_ms, synchronous=synchronous,
                         pool_max_size=pool_size, read_only=read_only, existing=not create)
