"""The database schema and its migrations, one list per backend.

SQLite's (`MIGRATIONS`) are applied under `PRAGMA user_version`, PostgreSQL's
(`POSTGRES_MIGRATIONS`) under the one-row table `jackpot_schema`; both
describe the same tables, columns and constraints. Amounts are integer units
of 1e-6 (SQLite INTEGER, PostgreSQL BIGINT: both 64-bit), rates integer parts
of 1e-9. Ledger and operations tables are append-only: triggers refuse UPDATE
and DELETE (and, on PostgreSQL, TRUNCATE), so not even a bug in this package
can rewrite history. Each ledger row carries its breakdown per meter so the
audit can rebuild every level from the ledger alone.
"""

from __future__ import annotations

__all__ = ["INDEXES", "LEDGER_PARTS", "METERS", "MIGRATIONS", "NULLABLE", "POSTGRES_CHECKS",
           "POSTGRES_MIGRATIONS", "POSTGRES_TRIGGERS", "SQLITE_TRIGGERS", "STRICT_TABLES"]

METERS = ("bets", "wagered", "contributed", "overflow", "reserve_in", "house_funded",
          "reserve_funded", "won", "wins", "hits", "adjusted", "transferred",
          "reserve_transferred")
LEDGER_PARTS = ("contributed", "overflow", "reserve_in", "house_funded", "reserve_funded",
                "paid", "adjusted", "transferred", "reserve_transferred")

_METER_COLUMNS = ",\n    ".join(f"m_{m} INTEGER NOT NULL DEFAULT 0" for m in METERS)
_PART_COLUMNS = ",\n    ".join(f"{p} INTEGER NOT NULL DEFAULT 0" for p in LEDGER_PARTS)

_V1 = f"""
CREATE TABLE levels (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'retired')),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    reserve INTEGER NOT NULL CHECK (reserve >= 0),
    carry INTEGER NOT NULL CHECK (carry >= 0 AND carry < 1000000000),
    reserve_carry INTEGER NOT NULL CHECK (reserve_carry >= 0 AND reserve_carry < 1000000000),
    trigger INTEGER,
    pending TEXT NOT NULL DEFAULT '{{}}',
    version INTEGER NOT NULL CHECK (version >= 1),
    lock_holder TEXT,
    last_modified_at INTEGER NOT NULL,
    seed INTEGER NOT NULL CHECK (seed >= 0),
    rate INTEGER NOT NULL CHECK (rate > 0 AND rate < 1000000000),
    cap INTEGER CHECK (cap IS NULL OR cap >= seed),
    reserve_rate INTEGER NOT NULL CHECK (reserve_rate >= 0 AND reserve_rate < 1000000000),
    min_bet INTEGER,
    max_contribution INTEGER,
    must_hit_by INTEGER CHECK (must_hit_by IS NULL OR must_hit_by > seed),
    overflow_to TEXT NOT NULL CHECK (overflow_to IN ('meter', 'reserve')),
    {_METER_COLUMNS}
) STRICT;

CREATE TABLE ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL REFERENCES levels (name),
    delta INTEGER NOT NULL,
    balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
    reserve_delta INTEGER NOT NULL,
    reserve_after INTEGER NOT NULL CHECK (reserve_after >= 0),
    version_after INTEGER NOT NULL,
    {_PART_COLUMNS},
    at_ms INTEGER NOT NULL,
    who TEXT,
    detail TEXT
) STRICT;
-- One row per committed version of a level; serves history and verify too.
CREATE UNIQUE INDEX ledger_level_version ON ledger (level, version_after);
CREATE INDEX ledger_op_id ON ledger (op_id);
CREATE INDEX ledger_level_kind ON ledger (level, kind, seq);

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

# V2: the ledger's op_id index goes. It cost one random B-tree insert per
# ledger row (op_ids are often random, e.g. uuid4 round ids), and only the
# audit's orphan check used it, which a set difference serves as well.
_V2 = "DROP INDEX IF EXISTS ledger_op_id;"

# V3 (SQLite): the operations table keeps its rows in rowid order, with a unique
# index on op_id. WITHOUT ROWID kept each whole row (~290 bytes, the stored
# result) in the op_id B-tree: every new random op_id (a uuid4 round id)
# dirtied a random page of a tree as big as all the results (1.6 GB at 5
# million), which the page cache missed, the WAL wrote and the checkpoint
# wrote again. Now the random insert lands in an index of op_ids alone (~210
# MB at 5 million) and the row is appended. The copy keeps op_id order, the
# order the audit's joins read it in. (PostgreSQL's table already has this
# shape: a heap and its primary-key index.)
_V3 = """
CREATE TABLE operations_v3 (
    op_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) STRICT;
INSERT INTO operations_v3 (op_id, kind, fingerprint, result, at_ms)
    SELECT op_id, kind, fingerprint, result, at_ms FROM operations ORDER BY op_id;
DROP TABLE operations;
ALTER TABLE operations_v3 RENAME TO operations;
CREATE UNIQUE INDEX operations_op_id ON operations (op_id);
CREATE TRIGGER operations_no_update BEFORE UPDATE ON operations
BEGIN SELECT RAISE(ABORT, 'operations are append-only'); END;
CREATE TRIGGER operations_no_delete BEFORE DELETE ON operations
BEGIN SELECT RAISE(ABORT, 'operations are append-only'); END;
"""

MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
"""MIGRATIONS[i] takes the schema from user_version i to i + 1."""


_PG_METER_COLUMNS = ",\n    ".join(f"m_{m} BIGINT NOT NULL DEFAULT 0" for m in METERS)
_PG_PART_COLUMNS = ",\n    ".join(f"{p} BIGINT NOT NULL DEFAULT 0" for p in LEDGER_PARTS)

# The same tables as _V1. Differences, each for a reason: BIGINT for every
# amount (INTEGER is 32-bit here); an identity column for the ledger's seq; one
# statement-level trigger per append-only table that also refuses TRUNCATE.
_PG_V1 = f"""
CREATE TABLE levels (
    name TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'retired')),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    reserve BIGINT NOT NULL CHECK (reserve >= 0),
    carry BIGINT NOT NULL CHECK (carry >= 0 AND carry < 1000000000),
    reserve_carry BIGINT NOT NULL CHECK (reserve_carry >= 0 AND reserve_carry < 1000000000),
    trigger BIGINT,
    pending TEXT NOT NULL DEFAULT '{{}}',
    version BIGINT NOT NULL CHECK (version >= 1),
    lock_holder TEXT,
    last_modified_at BIGINT NOT NULL,
    seed BIGINT NOT NULL CHECK (seed >= 0),
    rate BIGINT NOT NULL CHECK (rate > 0 AND rate < 1000000000),
    cap BIGINT CHECK (cap IS NULL OR cap >= seed),
    reserve_rate BIGINT NOT NULL CHECK (reserve_rate >= 0 AND reserve_rate < 1000000000),
    min_bet BIGINT,
    max_contribution BIGINT,
    must_hit_by BIGINT CHECK (must_hit_by IS NULL OR must_hit_by > seed),
    overflow_to TEXT NOT NULL CHECK (overflow_to IN ('meter', 'reserve')),
    {_PG_METER_COLUMNS}
);

CREATE TABLE ledger (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    level TEXT NOT NULL REFERENCES levels (name),
    delta BIGINT NOT NULL,
    balance_after BIGINT NOT NULL CHECK (balance_after >= 0),
    reserve_delta BIGINT NOT NULL,
    reserve_after BIGINT NOT NULL CHECK (reserve_after >= 0),
    version_after BIGINT NOT NULL,
    {_PG_PART_COLUMNS},
    at_ms BIGINT NOT NULL,
    who TEXT,
    detail TEXT
);
CREATE UNIQUE INDEX ledger_level_version ON ledger (level, version_after);
CREATE INDEX ledger_op_id ON ledger (op_id);
CREATE INDEX ledger_level_kind ON ledger (level, kind, seq);

CREATE TABLE operations (
    op_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);

CREATE FUNCTION jackpot_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION jackpot_append_only();
CREATE TRIGGER operations_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON operations
    FOR EACH STATEMENT EXECUTE FUNCTION jackpot_append_only();
"""

# (SQLite's V3 has no PostgreSQL step: the table already had that shape, and a
# version bump alone would make every host of a deployment upgrade in step,
# and its first open after the upgrade need the CREATE privilege, for nothing.
# Each backend numbers its own schema.)
POSTGRES_MIGRATIONS: tuple[str, ...] = (_PG_V1, _V2)
"""POSTGRES_MIGRATIONS[i] takes the schema from jackpot_schema.version i to i + 1."""

POSTGRES_TRIGGERS = ("ledger_append_only", "operations_append_only")
"""The triggers that make history append-only (checked by the integrity check)."""

_BOUND = "1000000000"  # (a rate's and a carry's, in billionths)
_IN_STATUSES = "ARRAY['active'::text, 'suspended'::text, 'retired'::text]"
_IN_OVERFLOWS = "ARRAY['meter'::text, 'reserve'::text]"

POSTGRES_CHECKS: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {
    "levels": {
        "levels_status_check": (("status",), f"CHECK ((status = ANY ({_IN_STATUSES})))"),
        "levels_amount_check": (("amount",), "CHECK ((amount >= 0))"),
        "levels_reserve_check": (("reserve",), "CHECK ((reserve >= 0))"),
        "levels_carry_check": (("carry",), f"CHECK (((carry >= 0) AND (carry < {_BOUND})))"),
        "levels_reserve_carry_check": (
            ("reserve_carry",), f"CHECK (((reserve_carry >= 0) AND (reserve_carry < {_BOUND})))"),
        "levels_version_check": (("version",), "CHECK ((version >= 1))"),
        "levels_seed_check": (("seed",), "CHECK ((seed >= 0))"),
        "levels_rate_check": (("rate",), f"CHECK (((rate > 0) AND (rate < {_BOUND})))"),
        "levels_check": (("cap", "seed"), "CHECK (((cap IS NULL) OR (cap >= seed)))"),
        "levels_reserve_rate_check": (
            ("reserve_rate",), f"CHECK (((reserve_rate >= 0) AND (reserve_rate < {_BOUND})))"),
        "levels_check1": (("must_hit_by", "seed"),
                          "CHECK (((must_hit_by IS NULL) OR (must_hit_by > seed)))"),
        "levels_overflow_to_check": (
            ("overflow_to",), f"CHECK ((overflow_to = ANY ({_IN_OVERFLOWS})))"),
    },
    "ledger": {
        "ledger_balance_after_check": (("balance_after",), "CHECK ((balance_after >= 0))"),
        "ledger_reserve_after_check": (("reserve_after",), "CHECK ((reserve_after >= 0))"),
    },
}
"""The CHECK constraints of `_PG_V1`, per table: the name PostgreSQL gives each in a schema of
its own, the columns it reads, and its definition as `pg_get_constraintdef` prints it
(PostgreSQL's own form of `_PG_V1`'s expression; a test compares it with a fresh schema's).

A CHECK is the engine's by its definition, under any name. Its name serves to tell one
redefined (`... DROP CONSTRAINT levels_amount_check, ADD CONSTRAINT levels_amount_check CHECK
(amount >= -1000)`): `<table>_<column>_check`, and `<table>_check`, `<table>_check1` for the two
on two columns (cap, must_hit_by against seed). Where the schema holds a constraint of that
name already (on any table), PostgreSQL numbers it on (`levels_amount_check1`,
`levels_check2`): a redefined CHECK is found by that name, or one numbered past it, on its
columns."""

SQLITE_TRIGGERS = ("ledger_no_update", "ledger_no_delete", "operations_no_update",
                   "operations_no_delete")
"""The SQLite triggers that make history append-only (checked by the integrity check)."""

INDEXES = {"ledger_level_version": (True, ("level", "version_after")),
           "ledger_level_kind": (False, ("level", "kind", "seq"))}
"""The indexes of the current schema on both backends: whether each is unique, its columns.

The unique one makes a level's versions unique in its ledger; the other
serves history and the audit. The integrity check reports one missing, or
one of that name that is not what it should be (its columns, a WHERE).
"""

STRICT_TABLES = ("levels", "ledger", "operations")
"""The tables every schema version creates STRICT on SQLite (checked by the integrity check)."""

NULLABLE = {"levels": frozenset({"trigger", "lock_holder", "cap", "min_bet", "max_contribution",
                                 "must_hit_by"}),
            "ledger": frozenset({"who", "detail"}),
            "operations": frozenset[str]()}
"""Per table, the only columns (beside a primary key) that the schema lets be NULL, on both
backends and in every version; every other is NOT NULL (checked by the integrity check)."""
