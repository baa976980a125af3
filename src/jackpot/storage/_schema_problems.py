"""What the integrity check says of a schema that is not the engine's (both backends).

Pure functions over what each backend reads from its catalog: the ledger's
indexes and the tables' keys, STRICT and NOT NULL, CHECK constraints,
column types and collations. Each returns the problems as `verify()` prints
them, in the same words on SQLite and PostgreSQL.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from jackpot.storage.base import TABLE_COLUMNS
from jackpot.storage.schema import INDEXES, NULLABLE, POSTGRES_CHECKS

__all__ = [
    "LOST_FOREIGN_KEY",
    "IndexShape",
    "check_key",
    "check_problems",
    "collation_problems",
    "constraint_problems",
    "index_collation_problems",
    "index_problems",
    "insert_hook_problems",
    "key_problems",
    "lost_checks",
    "number_column",
    "refusing_index_problems",
    "type_problems",
]


class IndexShape(NamedTuple):
    """What an index is (the ledger's, or a table's key), as the integrity check compares it."""

    unique: bool
    columns: tuple[str | None, ...]
    """Its columns in order (None for an expression)."""
    partial: bool
    """It has a WHERE: it leaves rows out."""
    excludes: bool = False
    """It is an exclusion constraint's (PostgreSQL): not unique, it refuses rows as one does
    (those whose every key column its operator finds alike; a column of `=` as a unique
    index's, any other None)."""
    nulls_equal: bool = False
    """It takes NULLs for equal (PostgreSQL 15's NULLS NOT DISTINCT): a column NULL in every
    row the engine writes is then one value in all of them."""
    own_classes: tuple[tuple[str, str] | None, ...] = ()
    """Per key column (PostgreSQL; empty if none), (column, operator class) where a column is
    compared under an operator class of the operator's (None in `columns`: its equality is
    the class's, as an expression's is its own), else None."""


def index_problems(found: dict[str, IndexShape]) -> list[str]:
    """Name each index of `INDEXES` missing from `found`, or not the one the schema has."""
    problems = []
    for name, (unique, columns) in INDEXES.items():
        shape = found.get(name)
        if shape is None:
            problems.append(f"index {name} is missing")
        elif unique and not shape.unique:
            problems.append(f"index {name} is not unique: a level's versions may repeat")
        elif shape.columns != columns or shape.partial:
            problems.append(f"index {name} is not on ({', '.join(columns)}) for every row")
    return problems


_KEYS = {"levels": ("name", "two rows could hold one level"),
         "operations": ("op_id", "an op_id could be applied twice")}
"""The key of each table beside the ledger (whose are `INDEXES`), and what is lost without it."""


def key_problems(indexes: Callable[[str], Iterable[IndexShape]]) -> list[str]:
    """Name each of the levels' and operations' keys that no unique index keeps.

    `indexes(table)`: the shapes of the table's indexes (a primary key's
    included). A unique index on that one column, for every row, under any
    name: one on more columns (op_id, kind) or with a WHERE keeps no two
    rows of the column apart.
    """
    return [f"{table} has no unique index on ({column}): {lost}"
            for table, (column, lost) in _KEYS.items()
            if not any(s.unique and s.columns == (column,) and not s.partial
                       for s in indexes(table))]


_UNIQUE_KEYS = {**{table: ((column,),) for table, (column, _) in _KEYS.items()},
                "ledger": (("seq",), *(columns for unique, columns in INDEXES.values() if unique))}
"""The columns of each unique key of the engine's tables (`_KEYS`, the ledger's seq and unique
`INDEXES`): any two rows the engine writes differ in at least one column of each key, and it
promises no other column apart (a bet that hits writes two ledger rows of one op_id and
level)."""

_REFUSED = {"levels": "a new level", "operations": "a new op_id",
            "ledger": "a level's next version"}


def refusing_index_problems(indexes: dict[str, dict[str, IndexShape]],
                            defaults: Callable[[], Mapping[str, Mapping[str, str | None]]],
                            ) -> list[str]:
    """Name each unique index that refuses rows the engine's keys allow.

    `indexes`: per table of the three, its indexes' shapes by name. A unique
    index refuses only rows equal on all its columns (and its WHERE's): on
    every column of one of the table's keys (`_UNIQUE_KEYS`), and any more
    (`(op_id, kind)`), it refuses none the key lets in. On fewer, or on an
    expression of them (`lower(op_id)`: op_id B1 after b1), it refuses rows
    the engine writes, as a duplicate (an error the caller gets, not a
    replay or a conflict). A WHERE only narrows which. So does an exclusion
    constraint (PostgreSQL), whose columns compared otherwise than by `=`
    are as an expression (`EXCLUDE (lower(op_id) WITH =)`, `op_id WITH <>`),
    and a unique index's column under an operator class of the operator's
    (`own_classes`: its equality is the class's, named with its column).
    (A unique index's key column given another collation is
    `index_collation_problems`'.)

    A column of the operator's (not in `TABLE_COLUMNS`) the engine never
    writes: each of its rows holds what the column's default gives.
    `defaults()` (read once, and only for such an index): per table, the
    operator's columns whose default gives every row one value (a literal,
    `now()`: the engine's rows then differ in its columns only), that
    default as the backend prints it, None where it has none (NULL). One
    absent gives each row another value (an identity, a `uuid DEFAULT
    gen_random_uuid()`): an index on it keeps apart what those values do,
    and is not told (an `ADD COLUMN ... UNIQUE` of a sound schema was); nor
    one on a column NULL in every row (NULLs are apart in a unique index,
    and never alike to an exclusion's operator), unless the index takes
    NULLs for equal (`nulls_equal`). One of a default that gives one value
    is as the engine's own columns: `ADD COLUMN tag text NOT NULL DEFAULT
    'x' UNIQUE` refused the second operation, verify() saying ok. Then its
    WHERE is not read (it may leave the default out, `WHERE tag <> 'x'`, or
    not): told, rather than a WHERE read wrong passing an index that
    refuses. A generated column is an expression of the engine's columns:
    each backend reads it as one.
    """
    problems = []
    read = functools.cache(defaults)
    for table, found in indexes.items():
        for name, shape in sorted(found.items()):
            if (table not in _UNIQUE_KEYS or not (shape.unique or shape.excludes)
                    or any(set(key) <= set(shape.columns) for key in _UNIQUE_KEYS[table])):
                continue
            notes = [_one_value(c, read().get(table, {}), shape)
                     for c in shape.columns if c is not None and c not in TABLE_COLUMNS[table]]
            if None in notes:
                continue
            kind = "exclusion constraint" if shape.excludes else "unique index"
            shown = ", ".join(_shown(shape, n) for n in range(len(shape.columns)))
            why = f" ({', and '.join(n for n in notes if n)})" if notes else ""
            problems.append(f"table {table}: {kind} {name} on ({shown}) refuses rows the engine "
                            f"writes: {_REFUSED[table]} refused as a duplicate{why}")
    return problems


def _one_value(column: str, defaults: Mapping[str, str | None], shape: IndexShape,
               ) -> str | None:
    """Say how the operator's `column` holds one value in every row the engine writes.

    None where it does not (the index keeps those rows apart): a default that gives each row
    another value (not in `defaults`), or NULL under an index that keeps NULLs apart.
    """
    if column not in defaults:
        return None
    default = defaults[column]
    if default is not None:
        return (f"{column} is {default}, its default, in every row the engine writes: with no "
                "default (NULL), or one that gives each row another value, they are apart")
    if shape.nulls_equal:
        return (f"{column} is NULL in every row the engine writes, and the index takes NULLs "
                "for equal (NULLS NOT DISTINCT): without it they are apart")
    return None


def _shown(shape: IndexShape, n: int) -> str:
    """Show `shape`'s `n`th key column as refusing_index_problems names it."""
    column = shape.columns[n]
    if column is not None:
        return column
    own = shape.own_classes[n] if n < len(shape.own_classes) else None
    if own is not None:
        return f"{own[0]} under operator class {own[1]}"
    return "something not compared by =" if shape.excludes else "an expression"


def constraint_problems(not_strict: Iterable[str], nullable: Iterable[tuple[str, str]],
                        ) -> list[str]:
    """Name each table rebuilt without STRICT, and its columns that lost their NOT NULL.

    `not_strict`: the tables of `STRICT_TABLES` that are not (SQLite; none on
    PostgreSQL, which has no such thing); `nullable`: (table, column) of
    every column of the three tables that may be NULL, primary keys aside.
    A tool that copies a table (or a hand-edited schema) can drop them: the
    engine still writes what it always did, but the table then takes a
    value of any type, or a NULL, that the engine never writes, and the
    other checks can only find such values where they change a figure.

    Only the engine's own columns (`TABLE_COLUMNS`) are named: a column an
    operator added (`ALTER TABLE ledger ADD COLUMN note TEXT`) takes a NULL
    because the engine's schema never had it, not because it lost a
    constraint; the engine neither reads nor writes it, so it is no problem
    of the books and is not told (telling it would fail a sound audit).
    """
    problems = [f"table {t} is not STRICT: it takes values of any type, not only those "
                "of its columns" for t in sorted(not_strict)]
    lost: dict[str, list[str]] = {}
    for table, column in nullable:
        if column in TABLE_COLUMNS[table] and column not in NULLABLE[table]:
            lost.setdefault(table, []).append(column)
    for table, columns in sorted(lost.items()):
        more = len(columns) - _COLUMNS_NAMED
        named = f"{', '.join(columns[:_COLUMNS_NAMED])}{f' and {more} more' if more > 0 else ''}"
        problems.append(f"table {table} takes a NULL in column {named} (its NOT NULL is gone)"
                        if len(columns) == 1 else
                        f"table {table} takes a NULL in columns {named} (their NOT NULL is gone)")
    return problems


LOST_FOREIGN_KEY = ("table ledger has lost its FOREIGN KEY (level) REFERENCES levels: it takes "
                    "rows of levels that do not exist")
"""What the integrity check says of a ledger whose foreign key on its level is gone (the
audit tells such rows; this, the table that takes them)."""

_COLUMNS_NAMED = 3


def lost_checks(table: str, checks: Iterable[str]) -> str:
    """Say that `table` has lost its CHECK `checks` (PostgreSQL's names, SQLite's expressions)."""
    return (f"table {table} has lost its CHECK {', '.join(checks)}: it takes values the engine "
            "never writes")


_PG_TOKENS = re.compile(r"""
    (?P<string>'(?:[^']|'')*')
  | (?P<column>\(?(?:[a-z_][\w$]*|"(?:[^"]|"")+")\)?)(?P<cast>::[a-z_ ]+(?:\[\])?)
  | (?P<dropped>::(?:bigint|integer|smallint|numeric|text|character\ varying|character)
                 (?:\[\])?(?![\w$])|[()\s]+)
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<word>[\w$]+)
  | (?P<operator>[-+*/<>=~!@\#%^&|`?]+)
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)
"""`pg_get_constraintdef`'s tokens: a literal, a column's cast (kept), a constant's cast to
one of PostgreSQL's number or text types, parentheses and spaces (dropped), a quoted name, a
word (keyword, name or number), an operator, anything else (a constant's other cast, kept)."""


def _token(m: re.Match[str]) -> str:
    """Return what `check_key` keeps of a `_PG_TOKENS` match ("" for what it drops)."""
    if m.lastgroup == "dropped":
        return ""
    if m.group("column") is not None:
        return m.group("column").strip("()") + "".join(m.group("cast").split())
    return m.group()


def check_key(definition: str) -> str:
    """Return a CHECK's definition (`pg_get_constraintdef`'s) as `check_problems` compares it.

    Its tokens, one space between each, without its NOT VALID (told apart:
    `convalidated`) and its NO INHERIT (the same on the table itself; a
    table that inherits from the engine's is told on its own), and without
    the casts of constants, parentheses and spaces that another PostgreSQL
    version may print otherwise (`(amount >= 0)` and `amount >= (0)::bigint`
    are one expression): a sound schema on a server that prints its CHECKs a
    little differently is no problem, while another bound (`-1000`), another
    list or another operator still is. String literals are kept as they
    are. A column's cast is kept: PostgreSQL prints none of a column of the
    engine's type, and one can change what passes (`(status)::bpchar` takes
    'active   ' for 'active'). So is a constant's cast to a type of the
    operator's: it picks the operator's own operator (`amount >= (0)::floor`,
    of a domain `floor` over bigint and a `>=` for it that is always true).

    What the dropped spaces and parentheses separated stays apart: glued,
    a function's name and its argument were one name, and `reserve_(carry)
    >= 0`, of a function `reserve_` that returns 0, passed for
    `reserve_carry >= 0`. Dropping parentheses loses the grouping of AND and
    OR (`(a OR b) AND c` is `a OR (b AND c)` here): safe only while each of
    the engine's CHECKs joins at most two terms, none boolean, with one AND
    or OR, as a test pins (another grouping of those tokens is no expression
    PostgreSQL takes).
    """
    text = definition.removesuffix(" NOT VALID").removesuffix(" NO INHERIT")
    return " ".join(t for m in _PG_TOKENS.finditer(text) if (t := _token(m)))


def check_problems(found: Iterable[tuple[str, str, bool, Iterable[str], str]]) -> list[str]:
    """Name each CHECK of `POSTGRES_CHECKS` that is gone, redefined, or not held for every row.

    `found`: (table, name, validated, columns, definition as `pg_get_constraintdef`
    prints it) of the CHECK constraints of the three tables (PostgreSQL). The
    table's owner can `ALTER TABLE ... DROP CONSTRAINT`, add one back `NOT
    VALID` (rows already there unchecked), or under the engine's name with
    another expression (`amount >= -1000`): the engine still writes what it
    always did, but the table then takes a value it never writes (a negative
    balance, a status of its own), as a SQLite table rebuilt without STRICT,
    NOT NULL or a CHECK does (`constraint_problems`,
    `SQLiteStore._lost_checks`). A CHECK is the engine's
    by its definition, under whatever name; one redefined is found by its
    name, or that name numbered on (PostgreSQL's, where the schema held the
    name already), and its columns: not by its name alone, which another of
    the schema may have pushed to the next number (`levels_check1`, the
    cap's, is then no must_hit_by's). A CHECK an operator added is none of
    the engine's, and not told.
    """
    checks = [(table, name, valid, frozenset(columns), definition, check_key(definition))
              for table, name, valid, columns, definition in found]
    engine_s = {(table, check_key(d)) for table, named in POSTGRES_CHECKS.items()
                for _, d in named.values()}
    problems = []
    for table, named in POSTGRES_CHECKS.items():
        gone, unchecked, redefined = [], [], []
        for name, (columns, definition) in named.items():
            key = check_key(definition)
            kept = [v for t, _, v, _, _, d in checks if t == table and d == key]
            if kept:
                if not any(kept):
                    unchecked.append(name)
                continue
            others = [f"CHECK {n} is not the engine's: {shown} (the engine's: {definition})"
                      for t, n, _, c, shown, d in checks
                      if t == table and n.rstrip("0123456789") == name.rstrip("0123456789")
                      and c == frozenset(columns) and (t, d) not in engine_s]
            redefined.extend(others)
            if not others:
                gone.append(name)
        if gone:
            problems.append(lost_checks(table, gone))
        if unchecked:
            problems.append(f"table {table}: CHECK {', '.join(unchecked)} is NOT VALID: rows "
                            "from before it were never checked")
        problems.extend(f"table {table}: {r}" for r in redefined)
    return problems

_TEXT_COLUMNS = {"levels": frozenset({"name", "status", "pending", "lock_holder", "overflow_to"}),
                 "ledger": frozenset({"op_id", "kind", "level", "who", "detail"}),
                 "operations": frozenset({"op_id", "kind", "fingerprint", "result"})}
"""The engine's text columns; its every other column holds an integer (PostgreSQL: `bigint`)."""


def number_column(table: str, column: str) -> bool:
    """Say whether the engine's `column` of `table` holds a number (else text)."""
    return column in TABLE_COLUMNS.get(table, ()) and column not in _TEXT_COLUMNS[table]


def type_problems(columns: Iterable[tuple[str, str, str]], *, text: str = "text",
                  integer: str = "bigint") -> list[str]:
    """Name each of the engine's columns whose type was changed.

    `columns`: (table, column, type) of the three tables, the type as the
    backend names it (PostgreSQL: as `format_type` gives it; SQLite: as a
    STRICT table declares it, upper-cased). The engine made each `text`, or
    `integer` (PostgreSQL `bigint`, SQLite `INTEGER`). An `ALTER COLUMN ...
    TYPE numeric` (or text) keeps every value the engine wrote, but then
    takes fractions (or words) it never writes, which the audit's sums read
    as they are, or cut short; a SQLite table rebuilt STRICT with a column of
    `ANY` takes text, and text passes `amount >= 0`. A column an operator
    added is not the engine's (see `constraint_problems`).
    """
    return [f"table {table}: column {column} is {kind}, not {want} as the engine made it"
            for table, column, kind in columns
            if column in TABLE_COLUMNS.get(table, ())
            and kind != (want := text if column in _TEXT_COLUMNS[table] else integer)]


def collation_problems(columns: Iterable[tuple[str, str, str]], engine_s: str) -> list[str]:
    """Name each of the engine's columns that compares text otherwise than byte for byte.

    `columns`: (table, column, collation) of the three tables' columns whose
    collation can take two texts the engine tells apart for equal (SQLite:
    any but BINARY; PostgreSQL: a nondeterministic one), `engine_s` what the
    engine gave them. The column keeps its CHECK and unique index, which
    then take 'ACTIVE' or 'active   ' for 'active', op_id B1 for b1 (the
    next operation refused). A column an operator added is not the engine's.
    """
    return [f"table {table}: column {column} has COLLATE {collation}, not {engine_s} as the "
            "engine made it: it takes for equal text the engine tells apart"
            for table, column, collation in columns if column in TABLE_COLUMNS.get(table, ())]


def index_collation_problems(keys: Iterable[tuple[str, str, str, str]], engine_s: str,
                             ) -> list[str]:
    """Name each unique index that compares one of the engine's columns otherwise than its column.

    `keys`: (table, index, column, collation) of the key columns of the three
    tables' unique indexes, primary keys' included, whose collation can take
    two texts the engine tells apart for equal (as `collation_problems`'),
    where it is not the column's own (that one told as the column's).
    `CREATE UNIQUE INDEX ... (op_id COLLATE NOCASE)` in place of the
    engine's (or beside it) leaves the column BINARY, and refuses op_id B1
    after b1 as a duplicate; on a level's (level, version) a version of
    Minor after minor's. An index that is not unique refuses nothing, and
    neither backend reads through one for a comparison of another
    collation than its own (the engine's are all the column's): not told.
    """
    return [f"table {table}: index {index} has COLLATE {collation} on column {column}, not "
            f"{engine_s} as the engine made it: it takes for equal text the engine tells apart"
            for table, index, column, collation in keys
            if column in TABLE_COLUMNS.get(table, ())]


def insert_hook_problems(hooks: Iterable[tuple[str, str, str]]) -> list[str]:
    """Name each trigger that runs before a row is inserted in one of the engine's tables.

    `hooks`: (table, "trigger" or "rule", name); a rule is one that runs
    instead of a write (PostgreSQL's `DO INSTEAD`). The engine makes none of
    either (its triggers run before an UPDATE or DELETE only), and each can
    drop the row unseen: SQLite's `RAISE(IGNORE)`, a PostgreSQL row trigger
    that returns NULL, `DO INSTEAD NOTHING`. The INSERT reports no error, so
    an operation whose record was dropped applies again under its op_id,
    and a dropped ledger row leaves a change without its history. (A
    trigger that runs after the INSERT cannot take the row back: not told.)
    """
    return [f"table {table}: {kind} {name} runs "
            f"{'before each row' if kind == 'trigger' else 'instead of what'} the engine "
            "inserts: it can drop the row unseen (an operation's record dropped, its op_id "
            "applies again)" for table, kind, name in hooks]
