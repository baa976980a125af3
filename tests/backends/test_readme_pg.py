"""The README's PostgreSQL block runs against the test server (tests/test_readme.py runs the rest).

The block imports what it uses, as a reader who pastes it alone needs; its
server URL is replaced by the test server's, in a schema of its own picked the
way the README says (`?options=-csearch_path%3D...`).
"""

from __future__ import annotations

from decimal import Decimal

from _readme import blocks
from jackpot import JackpotEngine

from .pg import fresh_schema_named, require_pg_url, with_search_path

PG_URL = require_pg_url()
WRITTEN = "postgresql://jackpot@db.internal:5432/jackpots"


def test_the_postgresql_block_runs_on_a_server() -> None:
    (block,) = [b for b in blocks("python") if b.key == ("PostgreSQL", 0)]
    assert WRITTEN in block.text
    with fresh_schema_named(PG_URL) as schema:
        url = with_search_path(PG_URL, schema)  # ?options=-csearch_path%3D<schema>
        namespace: dict[str, object] = {}  # (nothing lent: the block imports its names)
        exec(block.code(block.text.replace(WRITTEN, url)), namespace)
        with JackpotEngine.open(url) as engine:
            report = engine.verify()
            pools = engine.pools()
    assert (report.ok, report.problems) == (True, [])
    assert {name: p.amount for name, p in pools.items()} == {
        "major": Decimal("1000.007500"), "mega": Decimal(10000), "minor": Decimal("100.012500")}
