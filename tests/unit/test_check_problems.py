"""The PostgreSQL audit's comparison of CHECK definitions (`check_problems`), without a server.

A CHECK is the engine's by its definition as `pg_get_constraintdef` prints
it. Another PostgreSQL version may print the same expression with other
casts, parentheses or spaces: no problem then. Another bound, list or
operator is one, however it is spelled.
"""

from __future__ import annotations

import re

import pytest

from jackpot.storage._schema_problems import check_problems
from jackpot.storage._sql_checks import check_keys, runs_before_insert
from jackpot.storage.base import TABLE_COLUMNS
from jackpot.storage.schema import POSTGRES_CHECKS


def _found(respell: dict[str, str] | None = None) -> list[tuple[str, str, bool, tuple[str, ...],
                                                                 str]]:
    """The engine's CHECKs as a server reports them, `respell` giving some another definition."""
    respell = respell or {}
    return [(table, name, True, columns, respell.get(name, definition))
            for table, named in POSTGRES_CHECKS.items()
            for name, (columns, definition) in named.items()]


def test_the_engine_s_checks_as_stored_are_no_problem() -> None:
    assert check_problems(_found()) == []


@pytest.mark.parametrize(("name", "printed"), [
    ("levels_amount_check", "CHECK (amount >= 0)"),
    ("levels_amount_check", "CHECK ((amount >= (0)::bigint))"),
    ("levels_carry_check", "CHECK ((carry >= 0) AND (carry < 1000000000))"),
    ("levels_status_check",
     "CHECK ((status = ANY ((ARRAY['active', 'suspended', 'retired'])::text[])))"),
    ("levels_overflow_to_check",
     ("CHECK ((overflow_to = ANY (ARRAY['meter'::character varying, 'reserve'::character "
     "varying])))")),
    # NO INHERIT: the same on the table (a table inheriting from it is told on its own).
    ("levels_amount_check", "CHECK ((amount >= 0)) NO INHERIT"),
])
def test_the_same_check_printed_otherwise_is_no_problem(name: str, printed: str) -> None:
    assert check_problems(_found({name: printed})) == []


@pytest.mark.parametrize(("name", "printed"), [
    ("levels_amount_check", "CHECK ((amount >= '-1000'::integer))"),
    ("levels_amount_check", "CHECK ((amount > 0))"),
    ("levels_rate_check", "CHECK (((rate >= 0) AND (rate < 1000000000)))"),
    # Spaces inside a literal are part of it: ' active' is not 'active'.
    ("levels_status_check",
     "CHECK ((status = ANY (ARRAY[' active'::text, 'suspended'::text, 'retired'::text])))"),
    ("levels_status_check",
     ("CHECK ((status = ANY (ARRAY['active'::text, 'suspended'::text, 'retired'::text, "
     "'gone'::text])))")),
    # A cast of a column is part of the expression: as bpchar, 'active   ' is 'active'
    # (PostgreSQL 15 printed it so), as citext 'ACTIVE' is.
    ("levels_status_check",
     ("CHECK ((((status)::bpchar)::text = ANY (ARRAY['active'::text, 'suspended'::text, "
     "'retired'::text])))")),
    ("levels_overflow_to_check",
     "CHECK (((overflow_to)::citext = ANY (ARRAY['meter'::citext, 'reserve'::citext])))"),
    ("levels_amount_check", "CHECK ((amount >= '-1'::integer)) NO INHERIT"),
    # What a dropped space or parenthesis separated stays apart: a function reserve_ (that
    # returns 0) of the column carry is not the column reserve_carry (PostgreSQL 15 printed it so).
    ("levels_reserve_carry_check",
     "CHECK (((reserve_(carry) >= 0) AND (reserve_(carry) < 1000000000)))"),
    ("levels_reserve_rate_check",
     "CHECK (((reserve_ (rate) >= 0) AND (reserve_ (rate) < 1000000000)))"),
    ("levels_check1", "CHECK (((must_hit_by IS NULL) OR (must_(hit_by) > seed)))"),
    # A constant cast to a type of the operator's: its >= may be anything.
    ("levels_amount_check", "CHECK ((amount >= (0)::floor))"),
    ("levels_amount_check", "CHECK ((amount >= (0)::bigints))"),
    ("levels_status_check", ("CHECK ((status = ANY ((ARRAY['active'::text, 'suspended'::text, "
                             "'retired'::text])::texts[])))")),
])
def test_another_expression_under_the_engine_s_name_is_told(name: str, printed: str) -> None:
    table = next(t for t, named in POSTGRES_CHECKS.items() if name in named)
    engine_s = POSTGRES_CHECKS[table][name][1]
    assert check_problems(_found({name: printed})) == [
        f"table {table}: CHECK {name} is not the engine's: {printed} (the engine's: {engine_s})"]


@pytest.mark.parametrize("printed", ["CHECK (reserve_after >= 0) NOT VALID",
                                     "CHECK ((reserve_after >= 0)) NO INHERIT NOT VALID"])
def test_a_check_made_not_valid_is_told_however_it_is_printed(printed: str) -> None:
    found = [(t, n, n != "ledger_reserve_after_check", c, printed if n ==
              "ledger_reserve_after_check" else d) for t, n, _, c, d in _found()]
    assert check_problems(found) == [
        ("table ledger: CHECK ledger_reserve_after_check is NOT VALID: rows from before it "
        "were never checked")]


def test_no_check_of_the_engine_s_could_be_regrouped_and_keep_its_key() -> None:
    # check_key drops parentheses: `a OR b AND c` and `(a OR b) AND c` would
    # have one key, and the weaker would pass as the engine's. It is safe
    # while each CHECK joins at most two terms with one AND or OR (no NOT),
    # its terms reading the engine's columns (each bigint or text, none
    # boolean: `type_problems`): the same tokens grouped otherwise are then
    # no expression PostgreSQL takes (`(cap IS NULL OR cap) >= seed` is an
    # OR of a bigint). A CHECK that breaks this needs check_key to keep the
    # grouping of its AND and OR.
    for table, named in POSTGRES_CHECKS.items():
        for name, (columns, definition) in named.items():
            outside_literals = re.sub(r"'(?:[^']|'')*'", "''", definition)
            assert re.findall(r"\b(?:AND|OR|NOT)\b", outside_literals) in (
                [], ["AND"], ["OR"]), name
            assert all(column in TABLE_COLUMNS[table] for column in columns), name


@pytest.mark.parametrize(("engine_s", "other"), [
    ("(reserve_carry >= 0)", "(reserve_(carry) >= 0)"),
    ("(reserve_carry >= 0)", "(reserve_ carry >= 0)"),
    ("(amount >= 0)", "(amount > = 0)"),
    ("(status IN ('active', 'retired'))", "(status IN ('act ive', 'retired'))"),
    ("(status IN ('active', 'retired'))", "(status IN ('active,', 'retired'))"),
    ("(status IN ('active', 'retired'))", '(status IN ("active", "retired"))'),
])
def test_sqlite_s_check_key_keeps_apart_what_spaces_separate(engine_s: str, other: str) -> None:
    # SQLite's key joins the tokens with one space, and keeps the parentheses
    # inside the expression and each literal as it is: the spaces it drops
    # separated tokens, which stay apart; a literal or a quoted name holds its own.
    def key(check: str) -> frozenset[str]:
        return check_keys(f"CREATE TABLE t (x INTEGER CHECK {check}) STRICT")
    assert key(engine_s) != key(other)
    assert key(engine_s) == key(engine_s.replace(" ", "  ").replace("(", "( "))


@pytest.mark.parametrize(("sql", "before"), [
    ("CREATE TRIGGER t BEFORE INSERT ON ledger BEGIN SELECT 1; END", True),
    ("create trigger if not exists main.t insert on ledger begin select 1; end", True),
    ("CREATE TRIGGER t INSTEAD OF INSERT ON v BEGIN SELECT 1; END", True),
    ('CREATE TRIGGER "after" /* x */ BEFORE INSERT ON ledger BEGIN SELECT 1; END', True),
    # A name that spells a time or an event is a name.
    ("CREATE TRIGGER [before insert] AFTER INSERT ON ledger BEGIN SELECT 1; END", False),
    ('CREATE TRIGGER "insert" BEFORE UPDATE ON ledger BEGIN SELECT 1; END', False),
    ("CREATE TRIGGER t BEFORE DELETE ON ledger BEGIN INSERT INTO x VALUES (1); END", False),
    ("CREATE TRIGGER t BEFORE UPDATE OF op_id ON ledger BEGIN SELECT 1; END", False),
])
def test_runs_before_insert_reads_the_time_and_event_by_position(sql: str, before: bool) -> None:
    assert runs_before_insert(sql) is before
