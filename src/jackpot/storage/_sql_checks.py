"""The CHECK constraints written in a SQLite table's SQL, as the integrity check compares them.

SQLite has no catalog of CHECK constraints: what a table enforces is the
SQL it was created with (its `sql` in `sqlite_schema`), and a table rebuilt
without them (created anew, filled, renamed: the only way SQLite changes a
constraint) shows it only there. So the expressions are read out of the
SQL, the engine's from the schema's own (`schema.MIGRATIONS`), the table's
from its `sql`, and compared in a form that a rebuild with other spacing,
letter case, quoted names or redundant parentheses does not change:
tokens lower-cased, names quoted alike (`_name`), string literals kept as
they are, comments dropped.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import apsw

from jackpot.storage.schema import MIGRATIONS, STRICT_TABLES

__all__ = ["ENGINE_CHECKS", "ENGINE_TRIGGERS", "Check", "check_keys", "runs_before_insert",
           "table_checks", "trigger_key"]

_TOKENS = re.compile(r"""
    (?P<space>\s+|--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<string>'(?:[^']|'')*'?)
  | (?P<quoted>"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?)
  | (?P<word>[\w$]+)
  | (?P<other>\|\||<<|>>|<=|>=|==|!=|<>|.)
""", re.VERBOSE | re.DOTALL)


class Check(NamedTuple):
    """One CHECK constraint's expression."""

    key: str
    """Its tokens, normalised (what is compared)."""
    shown: str
    """Its text as written, whitespace made single spaces, in its parentheses."""


def _tokens(sql: str) -> list[tuple[str, int, int]]:
    """Return (normalised token, start, end) of `sql`'s tokens, without spaces and comments."""
    found = []
    for m in _TOKENS.finditer(sql):
        kind, text = m.lastgroup, m.group()
        if kind == "space":
            continue
        if kind == "quoted":  # a name: "Amount", `amount` and [amount] are "amount"
            text = _name(text[1:-1].replace(text[0] * 2, text[0]) if text[0] != "[" else
                         text[1:-1])
        elif kind == "word" and not text[0].isdigit() and text.upper() not in apsw.keywords:
            text = _name(text)
        found.append((text if kind in ("string", "quoted") else text.lower(), m.start(),
                      m.end()))
    return found


def _name(name: str) -> str:
    """Return a name as `_tokens` has it: lower-cased, in double quotes.

    Quoted alike, bare or not: `"0"`, `"null"` and `"amount >= 0"` are
    columns to SQLite (where the table has them), and must not pass for the
    number, keyword or expression they spell.
    """
    return '"{}"'.format(name.lower().replace('"', '""'))


def _unquoted(token: str) -> str:
    """Return the name a `_name` token holds (a keyword or number as it is)."""
    return token[1:-1].replace('""', '"') if token.startswith('"') else token


def _closing(tokens: list[tuple[str, int, int]], at: int) -> int:
    """Return the index of the ")" that closes the "(" at `at` (the last token if none does)."""
    depth = 0
    for i in range(at, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[i][0], 0)
        if depth == 0:
            return i
    return len(tokens) - 1


def table_checks(sql: str) -> dict[str, list[Check]]:
    """Return, per table a CREATE TABLE of `sql` creates, the CHECK expressions it declares.

    `sql`: a script (the schema's) or one table's `sql` from `sqlite_schema`.
    Column and table constraints alike (SQLite enforces both the same way),
    named (`CONSTRAINT x CHECK (...)`) or not.
    """
    tokens = _tokens(sql)
    checks: dict[str, list[Check]] = {}
    table: str | None = None
    for i, (word, _, _) in enumerate(tokens):
        if word == ";":
            table = None
        elif word == "table" and i and tokens[i - 1][0] in ("create", "temp", "temporary"):
            names = [t for t, _, _ in tokens[i + 1:i + 8]]
            name_at = 3 if names[:3] == ["if", "not", "exists"] else 0
            name_at += 2 if names[name_at + 1:name_at + 2] == ["."] else 0  # main.levels
            table = _unquoted(names[name_at]) if name_at < len(names) else None
            if table is not None:
                checks[table] = []
        elif word == "check" and table is not None and tokens[i + 1:i + 2] \
                and tokens[i + 1][0] == "(":
            start, end = i + 1, _closing(tokens, i + 1)
            while start < end and tokens[start][0] == "(" and _closing(tokens, start) == end:
                start, end = start + 1, end - 1  # ((x)) is (x)
            if start > end:
                continue  # CHECK (): no expression (SQLite refuses it)
            key = " ".join(t for t, _, _ in tokens[start:end + 1])
            shown = " ".join(sql[tokens[start][1]:tokens[end][2]].split())
            checks[table].append(Check(key, f"({shown})"))
    return checks


@functools.lru_cache(maxsize=32)
def check_keys(sql: str) -> frozenset[str]:
    """Return the keys of every CHECK that `sql` declares, in any of its tables.

    Cached by the text: verify() asks for the same few tables' `sql` every
    time, and reading it out costs about a millisecond per audit.
    """
    return frozenset(c.key for checks in table_checks(sql).values() for c in checks)


@functools.lru_cache(maxsize=32)
def runs_before_insert(sql: str) -> bool:
    """Say if the trigger that `sql` creates runs before (or instead of) an INSERT.

    `sql`: a trigger's `sql` in `sqlite_schema`. `CREATE TRIGGER [IF NOT
    EXISTS] [schema.]name [BEFORE | AFTER | INSTEAD OF] event`, BEFORE when no
    time is given; read by position, so a name that spells a keyword is a name.
    Cached by the text, as `check_keys`: verify() asks of the same few triggers.
    """
    words = [t for t, _, _ in _tokens(sql)]
    at = words.index("trigger") + 1 if "trigger" in words else len(words)
    at += 3 if words[at:at + 3] == ["if", "not", "exists"] else 0
    at += 3 if words[at + 1:at + 2] == ["."] else 1  # main.name
    when = words[at:at + 1]
    if when in (["before"], ["after"]):
        at += 1
    elif words[at:at + 2] == ["instead", "of"]:
        at += 2
    return when != ["after"] and words[at:at + 1] == ["insert"]


def _engine_checks() -> dict[str, tuple[Check, ...]]:
    """Return the CHECKs of each table as the migrations leave it.

    A table rebuilt and renamed in one (as V3 rebuilt operations) has the rebuild's.
    """
    tables: dict[str, list[Check]] = {}
    for step in MIGRATIONS:
        tables.update(table_checks(step))
        for old, new in re.findall(r"ALTER TABLE (\w+) RENAME TO (\w+)", step):
            tables[new] = tables.pop(old)
    return {t: tuple(tables[t]) for t in STRICT_TABLES}


ENGINE_CHECKS = _engine_checks()
"""Per table, the CHECKs the engine's schema gives it (the same at every schema version: the
migrations since the first rebuilt only operations, which has none)."""


@functools.lru_cache(maxsize=32)
def trigger_key(sql: str) -> str:
    """Return a trigger's SQL as the integrity check compares it: its tokens, normalised.

    (Spacing, comments, letter case and the quoting of names aside; and the
    text of its string literals: the engine's hold only the message of their
    RAISE, which refuses the same in other words.) Cached by the text, as
    `check_keys`.
    """
    return " ".join("''" if t.startswith("'") else t for t, _, _ in _tokens(sql))


def _engine_triggers() -> dict[str, frozenset[str]]:
    """Return the keys of each trigger of the engine's, as any schema version made it."""
    found: dict[str, set[str]] = {}
    for step in MIGRATIONS:
        for m in re.finditer(r"CREATE TRIGGER (\w+)\b.*?\bEND\b", step, re.DOTALL):
            found.setdefault(m.group(1), set()).add(trigger_key(m.group()))
    return {name: frozenset(keys) for name, keys in found.items()}


ENGINE_TRIGGERS = _engine_triggers()
"""Per trigger of the engine's (`schema.SQLITE_TRIGGERS`), the keys of its SQL as the schema
versions made it: one of the same name that runs on another event, table or condition (`WHEN
0`), or does nothing, keeps no history append-only."""
