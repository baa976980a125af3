"""The database schema and its migrations, applied under `PRAGMA user_version`.

Ledger and operations tables are append-only: triggers refuse UPDATE and
DELETE, so not even a bug in this package can rewrite history.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

_V1 = """
CREATE TABLE levels (
    name TEXT PRIMARY KEY,
    seed INTEGER NOT NULL CHECK (seed >= 0),
    rate INTEGER NOT NULL CHECK (rate > 0 AND rate < 1000000000),
    cap INTEGER CHECK (cap IS NULL OR cap >= seed),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    carry INTEGER NOT NULL CHECK (carry >= 0 AND carry < 1000000000),
    version INTEGER NOT NULL CHECK (version >= 1),
    lock_holder TEXT,
    last_modified_at INTEGER NOT NULL,
    m_bets INTEGER NOT NULL DEFAULT 0,
    m_wagered INTEGER NOT NULL DEFAULT 0,
    m_contributed INTEGER NOT NULL DEFAULT 0,
    m_overflow INTEGER NOT NULL DEFAULT 0,
    m_seeded INTEGER NOT NULL DEFAULT 0,
    m_won INTEGER NOT NULL DEFAULT 0,
    m_wins INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL REFERENCES levels (name),
    delta INTEGER NOT NULL,
    balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
    version_after INTEGER NOT NULL,
    paid INTEGER NOT NULL DEFAULT 0,
    funded INTEGER NOT NULL DEFAULT 0,
    overflow INTEGER NOT NULL DEFAULT 0,
    at_ms INTEGER NOT NULL,
    who TEXT,
    detail TEXT
) STRICT;
-- One row per committed version of a level; also serves history and verify.
CREATE UNIQUE INDEX ledger_level_version ON ledger (level, version_after);
CREATE INDEX ledger_op_id ON ledger (op_id);

-- Idempotency: one row per caller-supplied op_id, with the first result.
CREATE TABLE operations (
    op_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER operations_no_update BEFORE UPDATE ON operations
BEGIN SELECT RAISE(ABORT, 'operations are append-only'); END;
CREATE TRIGGER operations_no_delete BEFORE DELETE ON operations
BEGIN SELECT RAISE(ABORT, 'operations are append-only'); END;
"""

MIGRATIONS: tuple[str, ...] = (_V1,)
"""MIGRATIONS[i] takes the schema from user_version i to i + 1."""
