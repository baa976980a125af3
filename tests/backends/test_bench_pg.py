"""The benchmark runner's PostgreSQL column, run tiny so that it cannot rot.

benchmarks/compare.py (`--pg URL`) runs every workload with the engine on
PostgreSQL as well. Here every section runs for the PostgreSQL column only,
with sizes far too small to measure anything: no timing is asserted, only
that each workload ran without a failed call, that every row of the table has
its PostgreSQL figure, that every schema was audited clean by verify() and
dropped afterwards, and that the big ledger was filled to the row.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from jackpot.storage.postgres import describe

from .pg import require_pg_url

PG_URL = require_pg_url()
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # compare.py imports baseline.py as a top-level module
import compare  # noqa: E402 - after the path it lives on

TINY = compare.Sizes(
    warmup_s=0.05, duration_s=0.2, rest_calls=10, open_loop_s=0.2, mix_ops=60,
    mp_duration_s=0.2, big_rows=500, rss_ops=200, rss_warmup=20, threads=(1, 4),
    open_loop_workers=4, mix_callers=4, mp_procs=2, mp_callers=4, big_callers=4,
    rss_callers=2, fsync_probe_s=0.05, latency_rounds=2)


def bench_schemas() -> set[str]:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        return {r[0] for r in conn.execute(
            "SELECT schema_name FROM information_schema.schemata "
            "WHERE schema_name LIKE 'bench\\_%'")}


def test_every_workload_fills_the_postgresql_column(tmp_path: Path) -> None:
    before = bench_schemas()
    bench = compare.Bench(TINY, tmp_path, quick=True, pg_url=PG_URL)
    bench.systems = (compare.PG,)
    try:
        for name in compare.SECTIONS:
            getattr(bench, name)()
    finally:
        bench.discard_all()
    assert bench_schemas() == before

    audits, failed_calls = compare.collect_audits(bench.results)
    assert failed_calls == {}
    assert len(audits) >= 10
    assert [a for a in audits if not a["ok"]] == []
    filled = bench.results["ledger"]["templates"][compare.PG]
    assert (filled["ledger_rows"], filled["verify"]["ok"]) == (TINY.big_rows, True)

    for key in ("1-level", "3-level"):  # in rounds, the figures from one of them
        latency = bench.results["latency"][f"{key}/{compare.PG}"]
        assert len(latency["rounds_p99_ms"]) == TINY.latency_rounds
        assert latency["p99_ms"] == latency["rounds_p99_ms"][latency["chosen_round"] - 1]

    rows = compare.build_rows(bench.results, TINY)
    assert {r.section for r in rows} == {
        "at rest", "throughput", "latency", "mix", "processes", "ledger", "rss"}
    assert [r.figure for r in rows if r.postgresql is None] == []
    assert [r.figure for r in rows if r.engine is not None or r.baseline is not None] == []

    report = {"started": "now", "quick": True, "elapsed_s": 0.0,
              "machine": compare.machine(tmp_path, TINY),
              "postgresql": compare.pg_info(PG_URL), "results": bench.results}
    text = compare.markdown(report, rows, compare.build_targets(bench.results, TINY))
    assert "| postgresql | postgresql/engine |" in text
    assert "500-row ledger filled server-side" in text


def test_a_role_that_may_not_create_schemas_is_refused_before_any_workload(
        tmp_path: Path) -> None:
    """It failed with a traceback once every SQLite workload had run, their results lost."""
    role = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")  # CONNECT, as PUBLIC; no CREATE
        database = admin.info.dbname
        try:
            parts = urlsplit(PG_URL)
            url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
            done = subprocess.run(
                [sys.executable, str(BENCHMARKS / "compare.py"), "--quick", "--only", "rest",
                 "--out", str(tmp_path / "out"), "--pg", url],
                capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
        finally:
            admin.execute(f"DROP ROLE {role}")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.splitlines()[-1] == (
        f"compare.py: error: --pg {describe(url)}: the role may not create schemas there "
        "(every workload runs in a fresh one; GRANT CREATE ON DATABASE to it): permission "
        f"denied for database {database}")
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "out").iterdir()) == []  # no workload ran
