"""The benchmark runner's own arithmetic and the baseline's fairness (no timing asserted)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # compare.py imports baseline.py as a top-level module
import compare  # noqa: E402 - after the path it lives on


def test_closed_loop_counts_only_calls_that_end_in_the_window() -> None:
    # Each caller's last call ends after the window; it must not be counted.
    gate = threading.Event()
    calls = []

    def op(_k: int) -> None:
        calls.append(1)
        gate.wait(0.05)

    r = compare.closed_loop(op, threads=4, warmup=0.0, duration=0.12)
    # every caller's last call ended at or after the window's end
    assert r["ops"] == len(calls) - 4


def test_baseline_pays_no_index_the_engine_dropped(tmp_path: Path) -> None:
    # The engine's schema v2 has no index on the ledger's op_id; the baseline
    # must not pay a random B-tree insert per ledger row that the engine does not.
    import apsw  # noqa: PLC0415 - only here

    names = {}
    for kind in compare.SYSTEMS:
        path = tmp_path / f"{kind}.db"
        compare.open_system(kind, path).close()
        conn = apsw.Connection(str(path))
        names[kind] = {r[0] for r in conn.execute(
            "SELECT il.name FROM sqlite_master m, pragma_index_list(m.name) il "
            "WHERE m.name = 'ledger' AND EXISTS (SELECT 1 FROM pragma_index_info(il.name) ii "
            "WHERE ii.name = 'op_id')")}
        conn.close()
    assert names == {"engine": set(), "baseline": set()}


def test_baseline_verify_still_finds_an_orphan_operation(tmp_path: Path) -> None:
    path = tmp_path / "baseline.db"
    system = compare.open_system("baseline", path)
    try:
        system.contribute(compare.BET, groups=compare.LEVELS3, op_id="a")
        assert system.verify() == []
        system.conn.execute("INSERT INTO operations VALUES ('orphan', 'contribute', '', '{}', 0)")
        assert system.verify() == ["1 operations without ledger rows"]
    finally:
        system.close()


def test_baseline_gets_the_engines_page_cache(tmp_path: Path) -> None:
    # The engine's writers run with Settings.page_cache_mb (32 MiB); the
    # baseline must not be left at SQLite's 2 MiB on the 5-million-row file.
    system = compare.open_system("baseline", tmp_path / "baseline.db")
    try:
        (cache,) = system.conn.execute("PRAGMA cache_size").fetchone()
    finally:
        system.close()
    assert cache == -compare.SETTINGS.page_cache_mb * 1024


def test_fairness_reports_every_process(tmp_path: Path) -> None:
    """benchmarks/fairness.py runs and prints one row per process, none with errors."""
    import subprocess  # noqa: PLC0415 - only here

    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fairness.py"), "--procs", "2", "--callers", "4",
         "--seconds", "0.3"], capture_output=True, text=True, timeout=300, check=True,
        cwd=tmp_path).stdout
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and
            line.split("|")[1].strip().isdigit()]
    assert [r[1].strip() for r in rows] == ["1", "2"], out
    assert all(r[7].strip() == "0" for r in rows), out  # no failed calls
    assert out.startswith("engine: 2 processes x 2 callers, 3-level"), out


def test_fairness_refuses_a_process_without_callers(tmp_path: Path) -> None:
    """--callers below --procs left a process with none: it failed after a 5-minute wait."""
    import subprocess  # noqa: PLC0415 - only here

    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fairness.py"), "--procs", "2", "--callers", "1",
         "--seconds", "0.3"], capture_output=True, text=True, timeout=60, check=False,
        cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith("error: --callers must be at least --procs (2): every process "
                                "needs a caller, got 1\n")
    assert done.stdout == ""


@pytest.mark.parametrize("seconds", ["inf", "nan", "0"])
def test_fairness_refuses_a_run_that_would_never_end_or_never_start(tmp_path: Path,
                                                                    seconds: str) -> None:
    """--seconds inf was taken, and the run lasted for ever."""
    import subprocess  # noqa: PLC0415 - only here

    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fairness.py"), "--procs", "1", "--callers", "1",
         "--seconds", seconds], capture_output=True, text=True, timeout=60, check=False,
        cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith("error: --seconds must be above 0 and at most 3600, got "
                                f"{float(seconds)}\n")


def test_verify_speed_keeps_its_cache_under_benchmarks_out() -> None:
    """Run from the repository's root as documented, it wrote out/ there, which git tracks."""
    import verify_speed  # noqa: PLC0415 - only here

    assert verify_speed.make_parser().parse_args([]).cache == BENCHMARKS / "out" / "verify-cache"


def test_verify_speed_refuses_a_tree_that_is_not_a_clone(tmp_path: Path) -> None:
    """A mistyped SRC timed the installed jackpot under that name."""
    import subprocess  # noqa: PLC0415 - only here

    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "verify_speed.py"), "--rows", "100", "--runs", "1",
         "--cache", str(cache), str(tmp_path / "no-such-clone")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.endswith(f"error: {tmp_path / 'no-such-clone'}: not a clone of jackpot "
                                "(no src/jackpot/__init__.py)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing built


def test_verify_speed_fills_the_rows_asked_not_what_5_s_more_make(tmp_path: Path) -> None:
    """The fill looked at its count every 5 s: 20,000 rows asked gave 54,553.

    It stops once the rows are there; each caller's call under way still ends,
    a call writing at most 5 rows (a bet on all four levels and a hit).
    """
    import apsw  # noqa: PLC0415 - only here
    import verify_speed  # noqa: PLC0415 - only here

    built = verify_speed.build_real(1000, tmp_path)
    conn = apsw.Connection(str(built), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        (rows,) = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()
    finally:
        conn.close()
    assert 1000 <= rows < 1000 + verify_speed.CALLERS * 5


def test_aio_lag_refuses_no_players_before_it_starts_a_workload(tmp_path: Path) -> None:
    """--players 0 was a workload process failing, then the runner's traceback."""
    import subprocess  # noqa: PLC0415 - only here

    done = subprocess.run([sys.executable, str(BENCHMARKS / "aio_lag.py"), "--players", "0"],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.endswith("error: argument --players: must be at least 1, got 0\n")
    assert list(tmp_path.iterdir()) == []


def _round(ops: float, errors: dict[str, int] | None = None,
           conflicts: int = 0) -> dict[str, Any]:
    by_type = errors or {}
    return {"ops_per_s": ops,
            "errors": {"total": sum(by_type.values()), "by_type": by_type,
                       "first": {name: f"{name} here" for name in by_type}},
            "counters": {**dict.fromkeys(compare.COUNTERS, 0), "conflicts": conflicts},
            "verify": {"ok": not by_type, "problems": []}}


def test_the_median_round_keeps_every_round_s_failures_counters_and_audits() -> None:
    # A round full of failed calls is the slowest: it must not vanish with it.
    kept = compare.median_round([_round(3000, {"StorageError": 412}, conflicts=5),
                                 _round(4000), _round(4100, {"LockTimeoutError": 1})])
    assert kept["ops_per_s"] == 4000
    assert kept["rounds_ops_per_s"] == [3000, 4000, 4100]
    assert kept["errors"]["total"] == 413
    assert kept["errors"]["by_type"] == {"StorageError": 412, "LockTimeoutError": 1}
    assert kept["counters"]["conflicts"] == 5
    audits, errors = compare.collect_audits({"ledger": {"empty/engine": kept}})
    assert [a["ok"] for a in audits] == [False, True, False]
    assert sorted(errors) == ["ledger/empty/engine LockTimeoutError (x1)",
                              "ledger/empty/engine StorageError (x412)"]


def test_the_big_ledger_ratio_is_the_median_of_the_rounds_ratios() -> None:
    # Rounds alternate the files: each ratio pairs two windows of one round.
    big, empty = [3445, 4001, 4172], [4512, 5287, 4100]
    # ratios 0.764, 0.757, 1.018: the median 0.764; the medians 4001 / 4512 = 0.887
    assert compare.paired_ratio(big, empty) == 3445 / 4512
    results = {"ledger": {
        "big/engine": compare.median_round([_round(x) for x in big]),
        "empty/engine": compare.median_round([_round(x) for x in empty]),
        "big/baseline": compare.median_round([_round(2000)]),
        "empty/baseline": compare.median_round([_round(2500)]),
        "ratio/engine": {"rounds": [b / e for b, e in zip(big, empty, strict=True)],
                         "median": compare.paired_ratio(big, empty)}}}
    sizes = compare.FULL
    (target,) = [t for t in compare.build_targets(results, sizes) if "ledger" in t.name]
    assert target.value == 3445 / 4512
    assert "0.76, 0.76, 1.02" in target.detail
    (row,) = [r for r in compare.build_rows(results, sizes)
              if r.figure == "big / empty, random op_ids"]
    assert (row.engine, row.baseline) == (3445 / 4512, 2000 / 2500)


@pytest.mark.parametrize("releases", [0, 12])
def test_the_handoff_model_answers_every_request_and_stops(releases: int) -> None:
    """benchmarks/handoff_model.py: every caller's request is answered; all threads end."""
    import handoff_model  # noqa: PLC0415 - only here

    before = threading.active_count()
    f = handoff_model.run(8, caller_us=5, server_us=5, commit_us=100, seconds=0.2, warmup=0.05,
                          releases=releases)
    assert f.ops_per_s > 0
    assert f.per_batch >= 1
    assert threading.active_count() == before  # none left waiting on an answer


@pytest.mark.parametrize(("threads", "levels"), [(1, 1), (4, 3)])
def test_the_instruction_counts_load_applies_every_contribution(threads: int, levels: int) -> None:
    """benchmarks/instructions.py's measured part (run under valgrind by the script)."""
    import instructions  # noqa: PLC0415 - only here

    assert instructions.load(22, threads, levels) == 22 // threads * threads


def test_the_instruction_counts_name_the_jackpot_they_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without SRC the count was of "installed jackpot", even with PYTHONPATH at a clone's src.

    valgrind is played by a script that runs the child as it is and says
    1,000 instructions per contribution.
    """
    import instructions  # noqa: PLC0415 - only here

    fake = tmp_path / "valgrind"
    fake.write_text('#!/bin/sh\nshift 2\n"$@" || exit\necho "==1== Collected : $(($4 * 1000))" >&2\n')
    fake.chmod(0o755)
    src = BENCHMARKS.parent / "src"
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(src))
    monkeypatch.setattr(sys, "argv", ["instructions.py", "--ops", "4"])
    instructions.main()
    assert capsys.readouterr().out == (f"jackpot from {src / 'jackpot'}: 1 level(s), 1 caller(s): "
                                       "1,000 instructions per contribution\n")


# -- the latency section's rounds ----------------------------------------------------


def test_the_median_index_is_the_middle_value_s_and_the_worse_of_two_middles() -> None:
    # One stall of the machine (196 ms) must not be the figure: the median is 8.1.
    assert compare.median_index([7.7, 196.0, 8.1], lower_is_better=True) == 2
    assert compare.median_index([196.0, 7.7, 8.1], lower_is_better=True) == 2
    assert compare.median_index([7.7], lower_is_better=True) == 0
    # Of an even number, the worse middle one: the higher latency, the lower throughput.
    assert compare.median_index([8.1, 196.0], lower_is_better=True) == 1
    assert compare.median_index([3000.0, 4000.0]) == 0
    assert compare.median_index([4100.0, 3000.0, 4000.0]) == 2
    # A round without a successful call has no p99 (NaN): the worst, never the median's
    # neighbour by accident of NaN comparisons.
    assert compare.median_index([float("nan"), 5.0, 6.0], lower_is_better=True) == 2
    assert compare.median_index([5.0, float("nan"), 6.0, 7.0], lower_is_better=True) == 3


def _latency_round(p99: float, lag: float, errors: dict[str, int] | None = None,
                   ) -> dict[str, Any]:
    by_type = errors or {}
    return {"offered_per_s": 1000.0, "achieved_per_s": 999.0, "max_dispatch_lag_ms": lag,
            "workers": 64, "other_cores_busy": 0.1, "steal_cores": 0.0,
            "p50_ms": p99 / 4, "p99_ms": p99, "p999_ms": p99 * 2, "max_ms": p99 * 3,
            "samples": 15_000,
            "errors": {"total": sum(by_type.values()), "by_type": by_type,
                       "first": {name: f"{name} here" for name in by_type}},
            "counters": dict.fromkeys(compare.COUNTERS, 1),
            "verify": {"ok": True, "problems": []}}


def _latency_results() -> dict[str, Any]:
    stalled = [_latency_round(7.7, 1.0), _latency_round(196.0, 44.9, {"StorageError": 2}),
               _latency_round(8.1, 0.9)]
    base = [_latency_round(12.0, 2.0), _latency_round(11.0, 1.5), _latency_round(13.0, 3.0)]
    return {
        "rest": {f"{lv}-level/engine": {"p50_ms": 1.0, "p99_ms": 2.0,
                                        "errors": {"total": 0, "by_type": {}, "first": {}}}
                 for lv in (1, 3)},
        "latency": {
            "3-level/engine": compare.median_round(stalled, "p99_ms", lower_is_better=True,
                                                   detail=compare.LATENCY_DETAIL),
            "3-level/baseline": compare.median_round(base, "p99_ms", lower_is_better=True,
                                                     detail=compare.LATENCY_DETAIL),
            "1-level/engine": compare.median_round([_latency_round(5.0, 0.5)], "p99_ms",
                                                   lower_is_better=True,
                                                   detail=compare.LATENCY_DETAIL)}}


def test_the_latency_figures_are_one_round_s_the_round_of_median_p99() -> None:
    kept = _latency_results()["latency"]["3-level/engine"]
    # p50, p99 and p999 all from round 3, not quantiles picked from several rounds
    assert (kept["p50_ms"], kept["p99_ms"], kept["p999_ms"]) == (8.1 / 4, 8.1, 8.1 * 2)
    assert kept["chosen_round"] == 3
    assert kept["max_dispatch_lag_ms"] == 0.9
    assert kept["rounds_p99_ms"] == [7.7, 196.0, 8.1]
    # what every round looked like, to tell a stall
    assert [r["max_dispatch_lag_ms"] for r in kept["rounds"].values()] == [1.0, 44.9, 0.9]
    # the stalled round's failed calls and counters are not dropped with it, and
    # counted once (not again from the rounds' details)
    assert kept["errors"]["by_type"] == {"StorageError": 2}
    assert kept["counters"]["conflicts"] == 3
    audits, errors = compare.collect_audits({"latency": {"3-level/engine": kept}})
    assert [a["where"] for a in audits] == [f"latency/3-level/engine/rounds/round {i}"
                                            for i in (1, 2, 3)]
    assert list(errors) == ["latency/3-level/engine StorageError (x2)"]


def test_the_p99_target_and_the_table_use_the_median_round_and_show_every_round() -> None:
    results = _latency_results()
    (target,) = [t for t in compare.build_targets(results, compare.FULL)
                 if t.name.startswith("3-level p99")]
    assert target.value == 8.1
    assert target.detail == ("p99 8.10 ms (round 3, the median of the rounds' 7.70, 196.00, "
                             "8.10) vs 1.000 ms at rest")
    (one,) = [t for t in compare.build_targets(results, compare.FULL)
              if t.name.startswith("1-level p99")]
    assert one.detail == "p99 5.00 ms vs 1.000 ms at rest"
    (row,) = [r for r in compare.build_rows(results, compare.FULL)
              if r.figure == "3-level at half capacity: p99"]
    assert (row.engine, row.baseline) == (8.1, 12.0)
    note = compare.latency_rounds_note(results["latency"]).splitlines()
    assert note[1:] == [
        ("- 3-level/engine: p99 8.100 ms, round 3 of 3 (rounds: 7.700, 196.00, 8.100 ms; "
         "dispatch lag 1.0, 44.9, 0.9 ms)"),
        ("- 3-level/baseline: p99 12.00 ms, round 1 of 3 (rounds: 12.00, 11.00, 13.00 ms; "
         "dispatch lag 2.0, 1.5, 3.0 ms)"),
        "- 1-level/engine: p99 5.000 ms, one round (dispatch lag 0.5 ms)"]


def test_latency_rounds_default_to_three_one_with_quick_and_follow_the_option(
        tmp_path: Path) -> None:
    out = ["--out", str(tmp_path)]
    assert compare.options(out).sizes.latency_rounds == 3
    assert compare.options([*out, "--quick"]).sizes.latency_rounds == 1
    opts = compare.options([*out, "--quick", "--latency-rounds", "5", "--only", "latency"])
    assert opts.sizes == compare.replace(compare.QUICK, latency_rounds=5)
    assert opts.sections == ["latency"]


def _run_compare(args: list[str], cwd: Path,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCHMARKS / "compare.py"), *args],
                          capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
                          env={**os.environ, "JACKPOT_BENCH_PG_URL": "", **(env or {})})


REFUSED = ('connection failed: connection to server at "127.0.0.1", port {port} failed: '
           "Connection refused Is the server running on that host and accepting TCP/IP "
           "connections?")


def _closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (the OS's pick, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(("args", "env", "error"), [
    (["--latency-rounds", "0"], {}, "argument --latency-rounds: must be at least 1, got 0"),
    (["--latency-rounds", "two"], {},
     "argument --latency-rounds: must be a whole number, got 'two'"),
    (["--latency-rounds", "3", "--only", "rest"], {},
     "--latency-rounds is for the latency section, which --only leaves out"),
    (["--only", "rest,bogus"], {},
     f"unknown sections ['bogus']; choose from {compare.SECTIONS}"),
    (["--only", ","], {}, f"--only names no section; choose from {compare.SECTIONS}"),
    (["--out", "{tmp}/a-file"], {}, "--out {tmp}/a-file: cannot write there: not a directory"),
    (["--out", "{tmp}/a-file/sub"], {},
     "--out {tmp}/a-file/sub: cannot write there: Not a directory"),
    (["--pg", "notaurl"], {},
     '--pg <unparsable PostgreSQL URL>: missing "=" after "notaurl" in connection info string'),
    (["--pg", "postgresql://bench:secret@127.0.0.1:{port}/nodb"], {},
     "--pg postgresql://bench@127.0.0.1:{port}/nodb: " + REFUSED),
    ([], {"JACKPOT_BENCH_PG_URL": "postgresql://bench@127.0.0.1:{port}/nodb"},
     "JACKPOT_BENCH_PG_URL postgresql://bench@127.0.0.1:{port}/nodb: " + REFUSED),
])
def test_a_bad_argument_is_one_line_and_exit_2_before_any_workload(
        tmp_path: Path, args: list[str], env: dict[str, str], error: str) -> None:
    """--only "" ran nothing and wrote an empty table; a bad --out or --pg was a traceback.

    (A role that may not create schemas is refused before any workload too:
    tests/backends/test_bench_pg.py, which has a server.)
    """
    (tmp_path / "a-file").write_text("")
    fill = {"tmp": str(tmp_path), "port": str(_closed_port())}
    args = [a.format(**fill) for a in args]
    env = {k: v.format(**fill) for k, v in env.items()}
    out = tmp_path / "out"
    done = _run_compare([*(["--out", str(out)] if "--out" not in args else []), *args],
                        tmp_path, env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("usage: compare.py "), done.stderr
    assert done.stderr.splitlines()[-1] == f"compare.py: error: {error.format(**fill)}"
    assert "Traceback" not in done.stderr
    assert "secret" not in done.stderr
    assert done.stdout == ""
    assert not out.exists() or list(out.iterdir()) == []  # nothing measured, nothing written


def test_a_postgresql_pass_that_fails_leaves_the_sqlite_results_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The PostgreSQL pass runs after every SQLite workload and nothing was written
    # until the end: a server that went away mid-pass (27 minutes into a full
    # run) lost the SQLite results with it.
    real_rest = compare.Bench.rest

    def rest(bench: Any) -> None:
        if bench.systems == (compare.PG,):
            raise RuntimeError("the server\nwent away")
        real_rest(bench)

    monkeypatch.setattr(compare.Bench, "rest", rest)
    monkeypatch.setattr(compare, "options", lambda argv=None: compare.Options(
        quick=True, sections=["rest"], sizes=compare.QUICK, out=tmp_path,
        pg_url="postgresql://bench@127.0.0.1:1/none", pg={"where": "127.0.0.1:1"}))
    with pytest.raises(RuntimeError, match="went away"):
        compare.main([])
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["postgresql_failed"] == "the server went away"
    assert report["postgresql"] is None
    assert sorted(report["results"]["rest"]) == [
        "1-level/baseline", "1-level/engine", "3-level/baseline", "3-level/engine"]
    assert (tmp_path / "results.md").read_text().endswith(
        "The PostgreSQL pass failed (the server went away): these are the SQLite "
        "workloads' results alone.\n")


def test_a_postgresql_server_that_never_answers_is_refused_not_waited_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The runner's own connections had no connect_timeout: a server that
    # accepts and then says nothing (hung, a stalled proxy) held --pg's first
    # check for psycopg's own default bound (130 s with psycopg 3.3). They are
    # bounded as the engine's are (NETWORK_DEFAULTS, 10 s; 2 here to keep the test short).
    from jackpot.storage import postgres  # noqa: PLC0415 - needs psycopg

    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setitem(postgres.NETWORK_DEFAULTS, "connect_timeout", "2")
    said: list[BaseException] = []

    def check(url: str) -> None:
        try:
            compare.options(["--only", "rest", "--out", str(tmp_path), "--pg", url])
        except BaseException as e:  # the SystemExit that argparse raises
            said.append(e)

    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql://bench@127.0.0.1:{silent.getsockname()[1]}/nodb"
        checking = threading.Thread(target=check, args=(url,), daemon=True)
        checking.start()
        conn, _ = silent.accept()  # the runner's connection, never answered
        with conn:
            checking.join(60)  # 2 s; the old code waited 130 s
            assert not checking.is_alive()
    assert len(said) == 1
    assert isinstance(said[0], SystemExit)
    assert said[0].code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f" error: --pg {url}: connection timeout expired")


def _refuse_to_measure(*_args: object, **_kwargs: object) -> None:
    msg = "measured despite a bad argument"
    raise AssertionError(msg)


# (script, its arguments, what it measures (replaced: a test that reached it fails
# at once), the error's line)
SCRIPT_REFUSALS = [
    ("instructions", ["--ops", "5", "{tmp}/no-such-clone"], "count",
     "{tmp}/no-such-clone: not a clone of jackpot (no src/jackpot/__init__.py)"),
    ("instructions", ["--ops", "3", "--threads", "4"], "count",
     "--ops must be at least --threads (4): every caller needs a contribution, got 3"),
    ("instructions", ["--ops", "0"], "count", "argument --ops: must be at least 1, got 0"),
    ("profile_engine", ["--seconds", "0"], "closed_loop",
     "--seconds must be above 0 and at most 3600, got 0.0"),
    ("profile_engine", ["--callers", "0"], "closed_loop",
     "argument --callers: must be at least 1, got 0"),
    ("handoff_model", ["--commit-us", "-1"], "run",
     "--commit-us must be 0 or more and at most 1000000 (a second), got -1.0"),
    ("handoff_model", ["--caller-us", "nan", "--server-us", "1"], "run",
     "--caller-us must be 0 or more and at most 1000000 (a second), got nan"),
    ("handoff_model", ["--callers", "0"], "run", "--callers must be at least 1, got 0"),
    ("handoff_model", ["--seconds", "inf"], "run",
     "--seconds must be above 0 and at most 3600, got inf"),
    ("aio_lag", ["--quick", "--json", "{tmp}/a-file/rows.json"], "in_subprocess",
     "--json {tmp}/a-file/rows.json: cannot write there: not a directory"),
    ("verify_speed", ["--rows", "100", "--cache", "{tmp}/a-file"], "build_real",
     "--cache {tmp}/a-file: cannot write there: not a directory"),
    # (a file of 4 rows was built and timed as the 1 or 3 asked for)
    ("verify_speed", ["--cache", "{tmp}/cache", "--rows", "3"], "build_real",
     "--rows must be at least 4: creating the file's 4 levels writes a row each, got 3"),
    ("verify_speed", ["--cache", "{tmp}/cache", "--rows", "0"], "build_real",
     "--rows must be at least 4: creating the file's 4 levels writes a row each, got 0"),
    ("verify_speed", ["--cache", "{tmp}/cache", "--rows", "5", "--extrapolated"],
     "big_template", ("--rows must be at least 6 with --extrapolated: creating its levels "
                      "and its two real contributions write a row each, got 5")),
]


@pytest.mark.parametrize("case", SCRIPT_REFUSALS, ids=lambda case: f"{case[0]} {case[1][-2:]}")
def test_a_bad_argument_to_a_script_is_one_line_and_exit_2_before_it_measures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        case: tuple[str, list[str], str, str]) -> None:
    """Each was a traceback, a run that never ended, or a figure under the wrong name.

    instructions.py counted the installed jackpot under a mistyped SRC and
    divided by zero with --ops 0; profile_engine.py divided by zero at the end
    of --seconds 0; handoff_model.py with --commit-us -1 lost its server
    thread and waited for ever; aio_lag.py's and verify_speed.py's unwritable
    --json and --cache were tracebacks (aio_lag's after every workload had run).
    """
    import importlib  # noqa: PLC0415 - only here

    script, args, measures, error = case
    module = importlib.import_module(script)
    monkeypatch.setattr(module, measures, _refuse_to_measure)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *(a.format(tmp=tmp_path) for a in args)])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"{script}.py: error: {error.format(tmp=tmp_path)}"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing built


_RAW = "not a py-spy raw profile (py-spy record --format raw)"
_BAD_LINE = "is not a stack and its sample count: " + _RAW
_NO_SAMPLES = f"no samples in it (an empty profile, or {_RAW})"
NOT_PROFILES = [
    (b"hello world\n", f"line 1 {_BAD_LINE}"),
    (b"run (compare.py:1);worker (compare.py:2) 3\n<svg>\n", f"line 2 {_BAD_LINE}"),
    (b"\x89PNG\r\n\x1a\n\xff\x00", f"not text: {_RAW}"),
    (b"", _NO_SAMPLES),
    (b"\n\nrun (compare.py:1) 0\n", _NO_SAMPLES),
]


@pytest.mark.parametrize(("content", "error"), NOT_PROFILES, ids=["text", "a bad line",
                                                                 "binary", "empty", "0 samples"])
def test_profile_engine_refuses_to_summarize_what_is_not_a_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        content: bytes, error: str) -> None:
    """It printed "0 samples" and exit status 0 (a binary file: a traceback; 0 samples: 1/0)."""
    import profile_engine  # noqa: PLC0415 - only here

    profile = tmp_path / "profile.svg"
    profile.write_bytes(content)
    monkeypatch.setattr(sys, "argv", ["profile_engine.py", "--summarize", str(profile)])
    assert profile_engine.main() == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"profile_engine.py: error: --summarize {profile}: {error}\n")


@pytest.mark.parametrize(("name", "error"), [
    ("no-profile.txt", "no such file (py-spy's -o file)"),
    ("a-directory", "cannot read it: Is a directory"),
])
def test_profile_engine_says_in_one_line_that_the_file_to_summarize_cannot_be_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str, error: str) -> None:
    """Was argparse's usage line too, for a file as for a bad argument (a directory: "no such file")."""
    import profile_engine  # noqa: PLC0415 - only here

    (tmp_path / "a-directory").mkdir()
    profile = tmp_path / name
    monkeypatch.setattr(sys, "argv", ["profile_engine.py", "--summarize", str(profile)])
    assert profile_engine.main() == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"profile_engine.py: error: --summarize {profile}: {error}\n")


def test_profile_engine_summarizes_a_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import profile_engine  # noqa: PLC0415 - only here

    profile = tmp_path / "profile.txt"
    profile.write_text('process 7:"python x";thread (0x1);run (compare.py:1);'
                       "worker (compare.py:2);contribute (engine.py:3) 3\n\n"
                       "thread (0x2);run (pool.py:9) 1\n")
    monkeypatch.setattr(sys, "argv", ["profile_engine.py", "--summarize", str(profile)])
    assert profile_engine.main() == 0
    out = capsys.readouterr().out
    assert out.startswith("4 samples\n\n== callers: 3 samples (75.0%)\n")
    assert "== pool actors: 1 samples (25.0%)" in out
    assert "    100.0%  contribute (engine.py)\n" in out


# -- Ctrl-C ----------------------------------------------------------------------------


def _ctrl_c_once_running(script: str, *args: str, cwd: Path) -> str:
    """Run a benchmark script, Ctrl-C it once its first line is out; return that line.

    It must end with status 130 and one line on stderr.
    """
    import signal  # noqa: PLC0415 - only here

    process = subprocess.Popen(  # its own group: the signal goes where a terminal's would
        [sys.executable, str(BENCHMARKS / script), *args], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=cwd, start_new_session=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert err == "interrupted (Ctrl-C): the run was cut short\n"
    return first


def test_ctrl_c_ends_a_script_with_one_line_and_status_130(tmp_path: Path) -> None:
    """Ctrl-C was a traceback (one per process, interleaved, with child processes)."""
    first = _ctrl_c_once_running("handoff_model.py", "--caller-us", "1", "--server-us", "1",
                                 "--seconds", "600", cwd=tmp_path)
    assert first.startswith("64 callers")  # it was running: its header was out


def test_child_processes_leave_ctrl_c_to_the_script_that_started_them() -> None:
    """Each spawned child took the terminal's Ctrl-C and printed a traceback of its own."""
    import signal  # noqa: PLC0415 - only here

    from _script import deaf_to_ctrl_c  # noqa: PLC0415 - only here

    ask = [sys.executable, "-c",
           "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"]
    with deaf_to_ctrl_c():
        inside = subprocess.run(ask, capture_output=True, text=True, check=True).stdout
    outside = subprocess.run(ask, capture_output=True, text=True, check=True).stdout
    assert inside == "True\n"  # started inside: deaf to it for life
    assert outside == "False\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the parent's is back


def test_children_may_be_started_from_another_thread_than_the_main_one() -> None:
    """signal.signal raises ValueError outside the main thread: starting them there must not."""
    from _script import deaf_to_ctrl_c  # noqa: PLC0415 - only here

    failed: list[BaseException] = []

    def start() -> None:
        try:
            with deaf_to_ctrl_c():
                pass
        except BaseException as e:  # (collected: a thread's exception would not fail the test)
            failed.append(e)

    starter = threading.Thread(target=start)
    starter.start()
    starter.join()
    assert failed == []


def test_an_interrupted_run_removes_its_scratch_files(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut short in the ledger section, a full run left a copy of the big file in out/work."""

    def rest(bench: compare.Bench) -> None:
        bench.fresh_path("big-copy").write_bytes(b"\0" * 4096)
        raise KeyboardInterrupt

    monkeypatch.setattr(compare.Bench, "rest", rest)
    monkeypatch.setattr(compare, "machine", lambda *_: {})
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        compare.main(["--quick", "--only", "rest", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == []  # no work/, and no results written


class _CutShortError(Exception):
    pass


def _cut_short(*_args: object, **_kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("ends", ["completed", "interrupted"])
def test_a_big_ledger_built_leaves_only_itself_in_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ends: str) -> None:
    """Ctrl-C while compare.py built its big file (verifying it: minutes) left the .building file.

    And every build left the engine's lock files (`*.building-lock`,
    `schema-engine.db-lock`) beside it.
    """
    if ends == "interrupted":
        monkeypatch.setattr(compare, "verified_meta", _cut_short)
        with pytest.raises(KeyboardInterrupt):
            compare.big_template("engine", 50, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    else:
        final, meta = compare.big_template("engine", 50, tmp_path)
        assert meta["ledger_rows"] == 50
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            final.name, final.with_suffix(".json").name]


def test_verify_speed_removes_a_fill_whose_call_failed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A fill that failed left its half-built file (and its lock file) in the cache."""
    import verify_speed  # noqa: PLC0415 - only here

    def new_op_id() -> str:
        raise _CutShortError

    monkeypatch.setattr(verify_speed, "new_op_id", new_op_id)
    with pytest.raises(_CutShortError):
        verify_speed.build_real(1000, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_ctrl_c_while_verify_speed_fills_its_file_removes_it(tmp_path: Path) -> None:
    """Ctrl-C while the big file filled (an hour for 5M rows) left the .building file."""
    cache = tmp_path / "cache"
    first = _ctrl_c_once_running("verify_speed.py", "--rows", "100000000", "--cache", str(cache),
                                 cwd=tmp_path)
    assert first.startswith("filling ")  # its callers had started
    assert sorted(p.name for p in cache.iterdir()) == []


@pytest.mark.parametrize(("args", "played"), [
    (["--quick", "--players", "7"], (7, 2)), (["--quick", "--bets", "5"], (200, 5)),
    (["--quick"], (200, 2)), ([], (1000, 3)), (["--bets", "1"], (1000, 1))])
def test_aio_lag_plays_a_count_given_with_quick_as_given(
        monkeypatch: pytest.MonkeyPatch, args: list[str], played: tuple[int, int]) -> None:
    """`--quick --players 7` played 200 players: --quick replaced both counts."""
    import aio_lag  # noqa: PLC0415 - only here

    asked: list[tuple[int, int]] = []

    class StopError(Exception):
        pass

    def in_subprocess(_mode: str, _workload: str, players: int, bets: int) -> None:
        asked.append((players, bets))
        raise StopError

    monkeypatch.setattr(aio_lag, "in_subprocess", in_subprocess)
    monkeypatch.setattr(sys, "argv", ["aio_lag.py", *args])
    with pytest.raises(StopError):
        aio_lag.main()
    assert asked == [played]


def test_a_reader_that_leaves_early_ends_a_script_quietly_with_status_141(
        tmp_path: Path) -> None:
    """`fairness.py | head -1` ended in a BrokenPipeError traceback."""
    profile = tmp_path / "profile.txt"
    profile.write_text("thread (0x1);run (compare.py:1);worker (compare.py:2) 7\n")
    script = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "profile_engine.py"), "--summarize", str(profile)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert script.stdout is not None
    script.stdout.close()  # the reader has gone before the first line is written
    assert script.stderr is not None
    err = script.stderr.read()
    assert script.wait(timeout=60) == 141, err
    assert err == ""
