"""The `jackpot` command end to end, in subprocesses, on a temporary database."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import click
import pytest

import jackpot as jackpot_module
from _helpers import skip_outside_ci
from jackpot import GroupConfig, JackpotEngine, cli
from jackpot.storage.schema import MIGRATIONS

from .conftest import write_lock_held

CLI = [sys.executable, "-m", "jackpot.cli"]


def jackpot(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd, check=False)


def ok_json(*args: str, **kw: Any) -> Any:
    done = jackpot(*args, "--json", **kw)
    assert (done.returncode, done.stderr) == (0, "")
    return json.loads(done.stdout)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A database with the default levels (made in-process: quicker than `jackpot init`)."""
    path = str(tmp_path / "cli.db")
    JackpotEngine.open(path).close()
    return path


def test_a_mistyped_setting_is_warned_of_on_stderr(db: str) -> None:
    # open() logs it, and the command shows no log: JACKPOT_LOCK_TIMEOUT=60000
    # (for JACKPOT_LOCK_TIMEOUT_MS) was ignored without a word.
    done = jackpot("verify", "--db", db, env={"JACKPOT_LOCK_TIMEOUT": "60000"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        "jackpot: warning: environment variable JACKPOT_LOCK_TIMEOUT is not a jackpot "
        "setting and is ignored: did you mean JACKPOT_LOCK_TIMEOUT_MS?\n")
    assert done.stdout.startswith("audit OK")
    assert jackpot("verify", "--db", db, env={"JACKPOT_LOCK_TIMEOUT_MS": "60000"}).stderr == ""


def test_init_creates_the_levels_and_keeps_existing_ones(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    done = jackpot("init", "--db", path)
    assert done.returncode == 0, done.stderr
    assert f"jackpot database {path}" in done.stdout
    levels = ok_json("init", "--level", "daily:50:0.01:200", "--db", path)["levels"]
    assert [(p["name"], p["seed"], p["contribution_rate"], p["cap"]) for p in levels] == [
        ("daily", "50.000000", "0.01", "200.000000"), ("major", "1000.000000", "0.003", None),
        ("mega", "10000.000000", "0.001", None), ("minor", "100.000000", "0.005", None)]


def test_init_says_which_levels_it_kept_rather_than_changed(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    first = ok_json("init", "--level", "minor:100:0.005", "--db", path)
    assert (first["created"], first["kept"]) == (["minor"], [])
    again = ok_json("init", "--level", "minor:50:0.01", "--level", "daily:5:0.01", "--db", path)
    assert (again["created"], again["kept"]) == (["daily"], ["minor"])
    minor = next(p for p in again["levels"] if p["name"] == "minor")
    assert (minor["seed"], minor["contribution_rate"]) == ("100.000000", "0.005")
    done = jackpot("init", "--level", "minor:50:0.01", "--db", path)
    assert done.returncode == 0
    assert ("kept minor as it was, not changed: it already exists and --level does not change "
            "a level (use `jackpot config minor KEY=VALUE...`)") in " ".join(done.stdout.split())


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("jackpot")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0
    for command in ("init", "status", "history", "ledger", "verify", "config", "contribute",
                    "win", "suspend", "resume", "adjust", "retire", "health", "metrics",
                    "simulate"):
        assert f"  {command} " in done.stdout


def test_the_command_list_does_not_cut_a_summary_mid_sentence() -> None:
    done = jackpot("--help")
    assert done.returncode == 0
    config = next(line for line in done.stdout.splitlines() if line.strip().startswith("config "))
    assert "e.g." not in config
    assert "Change a level's settings (KEY=VALUE...), audited." in config


def test_the_command_alone_prints_its_help_as_written_and_version_says_which() -> None:
    done = jackpot()
    assert (done.returncode, done.stderr) == (2, "")  # was one line on stderr: the help, flattened
    assert done.stdout.startswith("Usage: jackpot [OPTIONS] COMMAND [ARGS]...\n")
    assert "\n  status " in done.stdout
    done = jackpot("--version")
    assert (done.returncode, done.stdout) == (0, f"jackpot {jackpot_module.__version__}\n")
    assert jackpot_module.__version__ == importlib.metadata.version("jackpot")


def test_shell_completion_after_version_completes_and_prints_no_version() -> None:
    """Before: completing `jackpot --version --d` printed the version among the completions.

    The eager --version ran as the shell asked for completions (click parses
    the line then, and an option's callback is to do nothing).
    """
    done = jackpot(env={"_JACKPOT_COMPLETE": "bash_complete",
                        "COMP_WORDS": "jackpot --version --d", "COMP_CWORD": "2"})
    assert (done.returncode, done.stdout, done.stderr) == (0, "plain,--db\n", "")


def test_a_config_change_sent_again_says_replayed(db: str) -> None:
    args = ("config", "minor", "cap=500", "--op-id", "c1", "--who", "ops", "--db", db)
    first = jackpot(*args, env={"COLUMNS": "200"})
    again = jackpot(*args, env={"COLUMNS": "200"})
    assert (first.returncode, again.returncode) == (0, 0)
    assert "config of minor by ops, now version 2" in first.stdout
    assert "replayed" not in first.stdout
    assert ("config of minor by ops, now version 2 (op c1, replayed)"
            in " ".join(again.stdout.split()))


def test_a_config_change_by_hand_names_the_op_id_it_can_be_sent_again_with(db: str) -> None:
    # The title named the op_id only on a replay: a change by hand whose
    # outcome was in doubt had no op_id to resend (every other write names its own).
    env = {"COLUMNS": "200", "LOGNAME": "ops"}
    done = jackpot("config", "minor", "cap=500", "--db", db, env=env)
    assert (done.returncode, done.stderr) == (0, "")
    heading = done.stdout.splitlines()[0]
    assert heading.startswith("config of minor by ops, now version 2 (op cli-"), heading
    op_id = heading.removeprefix("config of minor by ops, now version 2 (op ").removesuffix(")")
    again = jackpot("config", "minor", "cap=500", "--op-id", op_id, "--db", db,
                    env={**env, "COLUMNS": "40"})  # narrower than the heading: not cut
    assert again.stdout.splitlines()[0] == (
        f"config of minor by ops, now version 2 (op {op_id}, replayed)")


def test_a_config_change_that_changes_nothing_says_so(db: str) -> None:
    jackpot("config", "minor", "cap=500", "--db", db)
    done = jackpot("config", "minor", "cap=500", "--op-id", "c2", "--db", db,
                   env={"COLUMNS": "200", "LOGNAME": "ops"})
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == ("config of minor by ops, now version 3 (op c2): no field changed "
                           "(cap=500.000000 already)\n")  # was: an empty table
    done = jackpot("config", "minor", "cap=none", "--db", db, env={"COLUMNS": "200"})
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in done.stdout.splitlines() if line.count("│") == 4}
    assert rows["cap"] == ["500.000000", "-"]  # was: None


def test_a_change_from_the_next_reset_shows_the_value_it_replaces(db: str) -> None:
    done = jackpot("config", "minor", "seed=120", "cap=500", "--db", db, env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
            for line in done.stdout.splitlines() if line.count("│") == 4}
    assert rows["cap"] == ["-", "500.000000"]
    assert rows["seed"] == ["100.000000", "120.000000 (from the next reset)"]  # was: before blank


def test_a_bet_by_hand_names_its_player_as_a_mystery_hits_winner(tmp_path: Path) -> None:
    path = str(tmp_path / "mystery.db")
    levels = [GroupConfig("mystery", Decimal(10), Decimal("0.1"),
                          must_hit_by=Decimal("10.000001"))]  # the first unit hits
    JackpotEngine.open(path, levels).close()
    player = "p-[bold]7[/bold]"  # shown as typed, never as rich markup
    done = jackpot("contribute", "0.00001", "--player", player, "--op-id", "b1", "--db", path)
    assert done.returncode == 0, done.stderr
    assert f"mystery jackpot hit on mystery: paid 10.000001 to {player}\n" in done.stdout
    (hit,) = ok_json("history", "mystery", "--db", path)
    assert (hit["winner"], hit["hit"], hit["op_id"]) == (player, True, "b1")
    for command in ("history", "ledger"):
        table = jackpot(command, *(["mystery"] if command == "history" else []), "--db", path,
                        env={"COLUMNS": "250"}).stdout
        assert player in table, table


def _columns(table: str) -> list[str]:
    """Return each column of a rich table's body, its cells joined (a folded cell included)."""
    body = table.split("┩", 1)[1].splitlines()
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in body if line.count("│") > 1]
    return ["".join(column) for column in zip(*cells, strict=True)]


def test_a_bet_by_hand_on_a_narrow_terminal_cuts_no_name_or_figure(tmp_path: Path) -> None:
    path = str(tmp_path / "narrow.db")
    long_name = "floor-wide-progressive-jackpot-of-the-whole-casino-floor"
    levels = [GroupConfig("b", Decimal("1000000.5"), Decimal("0.999999")),
              GroupConfig(long_name, Decimal("99999999999.123456"), Decimal("0.5"))]
    JackpotEngine.open(path, levels).close()
    done = jackpot("contribute", "1234567.123457", "--op-id", "b1", "--db", path,
                   env={"COLUMNS": "60"})
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout  # was: "level-with-a…", "1,234,565.888…", "100,000,000,…"
    assert _columns(done.stdout) == [
        f"b{long_name}", "1,234,565.8888890.876544", "2,234,566.388889100,000,000,000.00", "22"]


def test_a_session_of_manual_operations(db: str) -> None:
    levels = ok_json("status", "--db", db)
    assert [(p["name"], p["amount"], p["version"]) for p in levels] == [
        ("major", "1000.000000", 1), ("mega", "10000.000000", 1), ("minor", "100.000000", 1)]

    bet = ok_json("contribute", "10", "--level", "minor", "--op-id", "b1", "--db", db)
    assert (bet["contributions"], bet["versions"], bet["replayed"]) == (
        {"minor": "0.050000"}, {"minor": 2}, False)
    assert ok_json("contribute", "10", "--level", "minor", "--op-id", "b1", "--db", db)[
        "replayed"] is True

    won = ok_json("win", "minor", "--winner", "p1", "--op-id", "w1", "--db", db)
    assert (won["amount"], won["balance"], won["version"]) == ("100.050000", "100.000000", 3)

    history = ok_json("history", "minor", "--db", db)
    assert [(h["amount"], h["winner"], h["op_id"]) for h in history] == [
        ("100.050000", "p1", "w1")]

    changed = ok_json("config", "minor", "cap=500", "contribution_rate=0.004", "--who", "ops",
                      "--reason", "promo", "--db", db)
    assert (changed["version"], changed["after"]["cap"], changed["after"]["contribution_rate"]) \
        == (4, "500.000000", "0.004")

    rows = ok_json("ledger", "--tail", "3", "--db", db)
    assert [(r["kind"], r["level"], r["version_after"], r["op_id"]) for r in rows] == [
        ("contribute", "minor", 2, "b1"), ("win", "minor", 3, "w1"),
        ("config", "minor", 4, rows[2]["op_id"])]
    assert rows[1]["delta"] == "-0.050000"

    assert ok_json("verify", "--db", db) == {"ok": True, "problems": [], "levels": 3,
                                               "ledger_rows": 6}
    health = ok_json("health", "--db", db)
    assert health["status"] == "ok"
    assert list(health["checks"]) == ["database", "disk"]  # the others are a running engine's


def test_operator_actions_suspend_resume_adjust_retire(db: str) -> None:
    who = ("--who", "ops:alice")
    done = ok_json("suspend", "major", "--reason", "meter inspection", *who, "--op-id", "o1",
                   "--db", db)
    assert (done["action"], done["balances"], done["versions"]) == (
        "suspend", {"major": "1000.000000"}, {"major": 2})
    refused = jackpot("contribute", "5", "--level", "major", "--db", db)
    assert (refused.returncode, refused.stderr) == (2, (
        "jackpot: error: level 'major' is suspended: it refuses contributions until resumed\n"))
    assert ok_json("resume", "major", *who, "--db", db)["versions"] == {"major": 3}

    up = ok_json("adjust", "major", "+25.00", "--reason", "top-up", *who, "--op-id", "o2",
                 "--db", db)
    assert (up["balances"], up["replayed"], up["who"]) == (
        {"major": "1025.000000"}, False, "ops:alice")
    assert ok_json("adjust", "major", "+25.00", "--reason", "top-up", *who, "--op-id", "o2",
                   "--db", db)["replayed"] is True
    # without --who, the login name of whoever runs it (getpass reads LOGNAME first)
    down = ok_json("adjust", "major", "-5", "--reason", "typo fixed", "--db", db,
                   env={"LOGNAME": "ops-bob"})
    assert (down["balances"], down["who"]) == ({"major": "1020.000000"}, "ops-bob")
    nothing = jackpot("adjust", "major", "0", "--reason", "typo", "--db", db)
    assert (nothing.returncode, nothing.stderr) == (
        2, "jackpot: error: delta must not be zero, got 0\n")
    too_much = jackpot("adjust", "major", "-5000", "--reason", "typo", "--db", db)
    assert (too_much.returncode, too_much.stderr) == (2, (
        "jackpot: error: adjusting level 'major' by -5000.000000 would take its pool "
        "1020.000000 below zero\n"))

    moved = ok_json("retire", "mega", "--transfer-to", "major", "--reason", "ended", *who,
                    "--db", db)
    assert moved["balances"] == {"mega": "0.000000", "major": "11020.000000"}
    text = jackpot("suspend", "major", "--reason", "again", "--op-id", "o3", "--db", db,
                   env={"LOGNAME": "ops-bob"})
    assert text.stdout == "suspend major by ops-bob: major 11,020.00 at version 7 (op o3)\n"

    rows = ok_json("ledger", "--tail", "7", "--db", db)
    assert [(r["kind"], r["level"], r["who"]) for r in rows] == [
        ("suspend", "major", "ops:alice"), ("resume", "major", "ops:alice"),
        ("adjust", "major", "ops:alice"), ("adjust", "major", "ops-bob"),
        ("retire", "mega", "ops:alice"), ("transfer_in", "major", "ops:alice"),
        ("suspend", "major", "ops-bob")]
    assert ok_json("verify", "--db", db)["ok"] is True


def test_config_suspend_and_resume_record_the_login_name_without_who(db: str) -> None:
    # They recorded who only when given --who: a change of a level's rates, or a
    # level stopped, by an operator the audit could not name.
    env = {"LOGNAME": "ops-erin", "COLUMNS": "200"}
    changed = jackpot("config", "minor", "cap=500", "--reason", "promo", "--op-id", "c1",
                      "--db", db, env=env)
    assert (changed.returncode, changed.stderr) == (0, "")
    assert changed.stdout.startswith("config of minor by ops-erin, now version 2 (op c1)\n")
    stopped = jackpot("suspend", "major", "--reason", "inspection", "--op-id", "s1",
                      "--db", db, env=env)
    assert (stopped.returncode, stopped.stderr, stopped.stdout) == (
        0, "", "suspend major by ops-erin: major 1,000.00 at version 2 (op s1)\n")
    again = ok_json("resume", "major", "--op-id", "r1", "--db", db, env=env)
    assert (again["versions"], again["who"]) == ({"major": 3}, "ops-erin")
    # the same command again, by the same operator: a replay, not a conflict
    replay = ok_json("config", "minor", "cap=500", "--reason", "promo", "--op-id", "c1",
                     "--db", db, env=env)
    assert (replay["replayed"], replay["version"], replay["who"]) == (True, 2, "ops-erin")
    rows = ok_json("ledger", "--tail", "3", "--db", db)
    assert [(r["kind"], r["level"], r["who"]) for r in rows] == [
        ("config", "minor", "ops-erin"), ("suspend", "major", "ops-erin"),
        ("resume", "major", "ops-erin")]


def test_adjust_and_retire_record_the_login_name_without_who(db: str) -> None:
    env = {"LOGNAME": "ops-carol"}
    text = jackpot("adjust", "major", "+2", "--reason", "goodwill", "--op-id", "a1",
                   "--db", db, env=env)
    assert (text.returncode, text.stderr, text.stdout) == (
        0, "", "adjust major by ops-carol: major 1,002.00 at version 2 (op a1)\n")
    moved = jackpot("retire", "mega", "--transfer-to", "major", "--reason", "ended",
                    "--op-id", "r1", "--db", db, env=env)
    assert (moved.returncode, moved.stderr, moved.stdout) == (0, "", (
        "retire mega by ops-carol: mega 0.00 at version 2, major 11,002.00 at version 3 "
        "(op r1)\n"))
    # a --who given is recorded instead; an empty one is refused, not replaced
    given = ok_json("adjust", "major", "-1", "--reason", "fix", "--who", "ops:dan",
                    "--db", db, env=env)
    assert given["who"] == "ops:dan"
    empty = jackpot("adjust", "major", "-1", "--reason", "fix", "--who", "", "--db", db,
                    env=env)
    assert (empty.returncode, empty.stderr) == (2, (
        "jackpot: error: who must be 1-256 printable characters, not blank, got '' "
        "(0 chars)\n"))
    rows = ok_json("ledger", "--tail", "4", "--db", db)
    assert [(r["kind"], r["level"], r["who"]) for r in rows] == [
        ("adjust", "major", "ops-carol"), ("retire", "mega", "ops-carol"),
        ("transfer_in", "major", "ops-carol"), ("adjust", "major", "ops:dan")]
    assert ok_json("verify", "--db", db)["ok"] is True


def test_a_login_name_the_ledger_cannot_hold_is_refused_naming_where_it_came_from(
        db: str) -> None:
    # Before: "jackpot: error: who must be 1-256 printable characters, not blank, got
    # ' ' (1 chars)", of a --who the operator never gave (and "1 chars": now "1 char").
    for name, size in ((" ", "1 char"), ("ops\tcarol", "9 chars")):
        done = jackpot("adjust", "major", "-1", "--reason", "fix", "--db", db,
                       env={"LOGNAME": name})
        assert (done.returncode, done.stdout, done.stderr) == (2, "", (
            "jackpot: error: your login name (LOGNAME, USER, LNAME or USERNAME, else the "
            "password database) cannot be recorded as who: who must be 1-256 printable "
            f"characters, not blank, got {name!r} ({size}); pass --who\n"))
    rows = ok_json("ledger", "--tail", "5", "--db", db)
    assert [r for r in rows if r["kind"] == "adjust"] == []  # nothing written


def test_without_a_login_name_the_uid_is_recorded(
        db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import getpass  # noqa: PLC0415 - only here

    from jackpot import _cli  # noqa: PLC0415 - the command, in-process

    def nobody() -> str:  # as getpass.getuser() in a container whose uid has no name
        msg = "No username set in the environment"
        raise OSError(msg)

    monkeypatch.setattr(getpass, "getuser", nobody)
    status = _cli.run(["adjust", "minor", "+1", "--reason", "fix", "--op-id", "a1",
                       "--json", "--db", db])
    out = capsys.readouterr().out
    assert (status, json.loads(out)["who"]) == (0, str(os.getuid()))
    with JackpotEngine.open(db) as engine:
        assert engine.adjust("minor", "+1", reason="fix", op_id="a1",
                             who=str(os.getuid())).replayed is True


@pytest.mark.parametrize(("args", "message"), [
    (("suspend", "major"), "Missing option '--reason'."),
    (("adjust", "major", "5"), "Missing option '--reason'."),
    (("retire", "mega", "--reason", "x"), "Missing option '--transfer-to'."),
    (("adjust", "major", "ten", "--reason", "x"),
     ("delta must be a plain decimal string such as '2.50' (ASCII digits, no spaces or "
      "exponent), got 'ten'")),
])
def test_operator_actions_refuse_what_is_missing(db: str, args: tuple[str, ...],
                                                 message: str) -> None:
    done = jackpot(*args, "--db", db)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"jackpot: error: {message}\n")


def test_every_ledger_amount_is_a_decimal_string(db: str) -> None:
    ok_json("win", "minor", "--db", db)
    ok_json("contribute", "10", "--level", "minor", "--db", db)
    win, bet = ok_json("ledger", "--tail", "2", "--db", db)
    assert (win["kind"], win["paid"], win["delta"], win["house_funded"]) == (
        "win", "100.000000", "0.000000", "100.000000")  # paid 100, the seed funded again
    assert (bet["kind"], bet["contributed"], bet["delta"], bet["balance_after"]) == (
        "contribute", "0.050000", "0.050000", "100.050000")
    for row in (win, bet):
        assert all(isinstance(row[k], str) for k in (
            "delta", "balance_after", "reserve_delta", "reserve_after", "contributed",
            "overflow", "reserve_in", "house_funded", "reserve_funded", "paid", "adjusted",
            "transferred", "reserve_transferred"))
        assert all(isinstance(row[k], int) for k in ("seq", "version_after", "at_ms"))


def test_the_amounts_in_ledger_details_are_decimal_strings(db: str) -> None:
    with JackpotEngine.open(db) as engine:
        engine.contribute("2.50", groups="minor", op_id="b1")
        engine.contribute("0.000003", groups="mega", op_id="b2")  # x 0.001: 3e-9 carried
        engine.retire("mega", transfer_to="major", who="ops", reason="ended", op_id="r1")
    rows = ok_json("ledger", "--tail", "4", "--db", db)
    retirement = {"reason": "ended", "from": "mega", "to": "major",
                  "carried": {"carry": "0.000000003000000",
                              "reserve_carry": "0.000000000000000",
                              "units": "0.000000", "reserve_units": "0.000000"}}
    assert [r["detail"] for r in rows] == [{"bet": "2.500000"}, {"bet": "0.000003"},
                                           retirement, retirement]


def test_a_small_rate_is_shown_as_a_plain_decimal_that_config_takes_back(
        tmp_path: Path) -> None:
    path = str(tmp_path / "rates.db")
    ok_json("init", "--level", "tiny:1:0.0000001", "--db", path)
    done = ok_json("config", "tiny", "reserve_rate=0.00000002", "--db", path)
    assert done["after"]["reserve_rate"] == "0.00000002"
    (tiny,) = ok_json("status", "--db", path)
    assert (tiny["contribution_rate"], tiny["reserve_rate"]) == ("0.0000001", "0.00000002")
    again = jackpot("config", "tiny", f"contribution_rate={tiny['contribution_rate']}",
                    "--db", path)
    assert (again.returncode, again.stderr) == (0, "")
    table = jackpot("status", "--db", path, env={"COLUMNS": "200"}).stdout
    assert "│ 0.0000001 │" in table
    assert "E-" not in table


def test_tables_for_people(db: str) -> None:
    done = jackpot("--db", db, "status")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert any("minor" in line and "100.00" in line and "0.005" in line for line in lines)
    done = jackpot("--db", db, "verify")
    assert (done.returncode, done.stdout) == (
        0, "audit OK: 3 levels, 3 ledger rows reconciled to the smallest unit\n")


def test_jackpot_db_from_the_environment(db: str) -> None:
    levels = ok_json("status", env={"JACKPOT_DB": db})
    assert len(levels) == 3
    done = jackpot("--json", "verify", env={"JACKPOT_DB": db})  # options before the command
    assert (done.returncode, json.loads(done.stdout)["ok"]) == (0, True)


def test_verify_fails_with_status_1_when_the_books_do_not_balance(db: str) -> None:
    conn = apsw.Connection(db)
    conn.execute("UPDATE levels SET amount = amount + 1 WHERE name = 'mega'")
    conn.close()
    done = jackpot("verify", "--db", db)
    assert done.returncode == 1
    assert done.stdout.startswith("audit FAILED: ")
    assert "mega" in done.stdout


def _to_a_reader_gone(args: list[str], *, buffered: bool) -> subprocess.CompletedProcess[str]:
    """Run `jackpot ARGS` with stdout a pipe whose reader has already left."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*CLI, *args], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=env, check=False)
    finally:
        os.close(write)


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("args", [("verify",), ("status",), ("ledger", "--tail", "5"),
                                  ("contribute", "2.50", "--level", "minor", "--op-id", "piped")],
                         ids=["verify", "status", "ledger", "contribute"])
def test_a_reader_that_left_early_ends_the_command_quietly_with_141(
        db: str, args: tuple[str, ...], buffered: bool) -> None:
    """`jackpot verify | head`: status 141 (as SIGPIPE's), nothing on stderr; a change stands.

    Before: "jackpot: error: Broken pipe" and status 1 (the audit's "failed"),
    or with stdout buffered "Exception ignored ... BrokenPipeError" at exit
    (status 120). The pipe's reader is closed before the command starts: its
    first write finds it gone (no timing involved).
    """
    done = _to_a_reader_gone(["--db", db, *args], buffered=buffered)
    assert (done.returncode, done.stderr) == (141, "")
    if args[0] == "contribute":  # committed before its output: it stands
        minor = next(row for row in ok_json("status", "--db", db) if row["name"] == "minor")
        assert minor["version"] == 2


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("args", [("verify",), ("--json", "verify"), ("health",)],
                         ids=["verify", "verify-json", "health"])
def test_a_failed_verdict_keeps_status_1_when_its_reader_left(
        db: str, args: tuple[str, ...], buffered: bool, tmp_path: Path) -> None:
    """`jackpot verify | head -1` on books that do not balance: status 1, not 141.

    141 (the reader left) hid the failure from a script that reads a line
    and checks the status (with `set -o pipefail`, say).
    """
    if args[-1] == "health":
        db = str(tmp_path / "missing.db")  # a failing check, not an error
    else:
        conn = apsw.Connection(db)
        conn.execute("UPDATE levels SET amount = amount + 1 WHERE name = 'mega'")
        conn.close()
    done = _to_a_reader_gone(["--db", db, *args], buffered=buffered)
    assert (done.returncode, done.stderr) == (1, "")


def test_a_reader_that_left_in_the_middle_of_a_write_ends_it_with_141_unbuffered_too(
        db: str) -> None:
    """PYTHONUNBUFFERED=1 (as many containers set it): `| head` in mid-table is 141, not 0.

    Python's unbuffered stdout ignores how much of a write the pipe took:
    the rest of the output was dropped unsaid, and the status was 0. Its one
    write here (the JSON at once, several times what the pipe holds) is
    still going on when the reader leaves: the reader has its first byte,
    and the pipe cannot take the rest before it is read.
    """
    with JackpotEngine.open(db) as engine:
        for _ in range(150):  # 450 ledger rows: about 300 KB of JSON
            engine.contribute("1.00", groups=["minor", "major", "mega"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([*CLI, "--db", db, "--json", "ledger", "--tail", "1000"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.read(1) == b"["
        proc.stdout.close()
        assert (proc.stderr.read(), proc.wait(timeout=60)) == (b"", 141)


def test_ctrl_c_on_a_paused_reader_ends_with_130_once_the_reader_leaves(db: str) -> None:
    """`jackpot ledger | less`, Ctrl-C, then q: status 130, not 141.

    Ctrl-C interrupts the write the paused reader holds up; what is still
    buffered then finds the reader gone (141), which hid the interruption.
    """
    with JackpotEngine.open(db) as engine:
        for _ in range(150):  # 450 ledger rows: about 300 KB of JSON, more than a pipe holds
            engine.contribute("1.00", groups=["minor", "major", "mega"])
    with subprocess.Popen([*CLI, "--db", db, "--json", "ledger", "--tail", "1000"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.read(1) == b"["  # its one write is under way, the pipe full
        proc.send_signal(signal.SIGINT)
        proc.stdout.close()  # the reader leaves
        assert (proc.stderr.read(), proc.wait(timeout=60)) == (
            b"\njackpot: error: interrupted\n", 130)


@pytest.mark.parametrize("args", [("--help",), ("--version",), ()],
                         ids=["help", "version", "nothing"])
def test_a_reader_that_left_before_the_help_or_the_version_ends_it_with_141(
        args: tuple[str, ...]) -> None:
    """`jackpot --help | true`: 141, quietly, as for a command's output.

    Was 1 for `--help` and `--version` (printed as the line is parsed, before
    the command runs, where click's own handling took them), and for
    `jackpot` alone (its help) a traceback and status 120.
    """
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([*CLI, *args], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


@pytest.mark.parametrize("args", [["--help"], ["--version"], []], ids=["help", "version",
                                                                      "nothing"])
def test_in_process_a_reader_that_left_before_the_help_leaves_the_streams_as_they_were(
        args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`run(["--help"])` into a pipe whose reader left returns 141 and replaces nothing.

    It raised SystemExit(1) out of `run` and left click's wrappers on
    sys.stdout and sys.stderr for the rest of the process (`jackpot` alone:
    the BrokenPipeError itself).
    """
    from jackpot import _cli  # noqa: PLC0415 - needs the cli extra, as this module does

    read, write = os.pipe()
    os.close(read)
    out = os.fdopen(write, "w")
    monkeypatch.setattr(sys, "stdout", out)
    err = sys.stderr
    try:
        assert _cli.run(args) == 141
        assert (sys.stdout, sys.stderr) == (out, err)
    finally:
        monkeypatch.undo()  # (the streams restored, whatever the assertions found)
        with contextlib.suppress(BrokenPipeError):  # (closed all the same: what it held, lost)
            out.close()


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("error", [True, False], ids=["error", "warning"])
def test_a_stderr_whose_reader_left_ends_the_command_quietly(
        db: str, error: bool, buffered: bool) -> None:
    """`jackpot ... 2>&1 | true`: an error keeps its status (2), a warning ends it (141).

    Both were a traceback to the broken pipe and status 1, or 120 with stderr
    buffered (the line that could not be written failed again as the
    interpreter flushed stderr at exit). Nothing is written to stdout.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    if error:
        db = str(Path(db).with_name("missing.db"))
    else:
        env["JACKPOT_LOCK_TIMEOUT"] = "60000"  # (for JACKPOT_LOCK_TIMEOUT_MS: a warning)
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([*CLI, "--db", db, "status"], stdout=subprocess.PIPE,
                              stderr=write, text=True, timeout=60, env=env, check=False)
    finally:
        os.close(write)
    assert (done.returncode, done.stdout) == (2 if error else 141, "")


def test_only_a_pipe_whose_reader_left_counts_as_the_reader_leaving(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken pipe elsewhere (a socket) stays an error: only stdout's own pipe is asked."""
    from jackpot import _cli  # noqa: PLC0415 - needs the cli extra, as this module does

    read, write = os.pipe()
    with os.fdopen(write, "w") as out:
        monkeypatch.setattr(sys, "stdout", out)
        assert not _cli.reader_left()  # its reader is there
        os.close(read)
        assert _cli.reader_left()
        monkeypatch.setattr(sys, "stdout", None)
        assert not _cli.reader_left()
        monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))  # noqa: SIM115, PTH123
        try:
            assert not _cli.reader_left()
        finally:
            sys.stdout.close()


def test_a_pipe_whose_reader_left_is_known_by_pollhup_too(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The BSDs and macOS answer POLLHUP, not Linux's POLLERR, for a pipe whose reader left.

    Asking for POLLERR alone, `jackpot ledger | head` there said "jackpot:
    error: Broken pipe" and exited 1. (Their answer, given by a stand-in poll.)
    """
    from jackpot import _cli  # noqa: PLC0415 - needs the cli extra, as this module does

    class _AsBSDAnswers:
        def __init__(self) -> None:
            self.fds: list[int] = []

        def register(self, fd: int, _events: int) -> None:
            self.fds.append(fd)

        def poll(self, _timeout: int) -> list[tuple[int, int]]:
            return [(fd, select.POLLOUT | select.POLLHUP) for fd in self.fds]

    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as out:
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(_cli.select, "poll", _AsBSDAnswers)
        assert _cli.reader_left()


def test_a_broken_pipe_other_than_stdout_is_an_error_and_click_wraps_nothing(
        db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A socket's broken pipe (stdout's reader is there) is one error line and status 1.

    click's own handling of a broken pipe, which the command's goes past,
    said nothing, exited 1 and put wrappers around sys.stdout and sys.stderr.
    """
    from jackpot import _cli  # noqa: PLC0415 - needs the cli extra, as this module does

    def broken(*_: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(_cli.reads, "pools", broken)
    out, err = sys.stdout, sys.stderr
    assert _cli.run(["--db", db, "status"]) == 1
    assert (sys.stdout, sys.stderr) == (out, err)
    assert capsys.readouterr().err == "jackpot: error: Broken pipe\n"


def test_metrics_once(db: str) -> None:
    done = jackpot("metrics", "--db", db)
    assert done.returncode == 0
    assert 'jackpot_level_amount{level="minor"} 100.0\n' in done.stdout
    done = jackpot("metrics", "--db", db, env={"JACKPOT_ENABLE_METRICS": "false"})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "jackpot: error: metrics are disabled (JACKPOT_ENABLE_METRICS=false)\n"


def test_metrics_with_a_port_but_not_serve_is_refused(db: str) -> None:
    """It printed the gauges once and exited 0: the operator meant to serve them."""
    done = jackpot("metrics", "--port", "9100", "--db", db)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("jackpot: error: --port is where --serve serves the gauges: "
                           "add --serve (or leave --port out)\n")


def test_metrics_are_only_what_the_database_holds(db: str) -> None:
    """No per-process counter of the command's own idle engine: they would always be 0."""
    with JackpotEngine.open(db) as engine:
        engine.contribute("10", op_id="b1")
    families = [line.split()[2] for line in jackpot("metrics", "--db", db).stdout.splitlines()
                if line.startswith("# TYPE ")]
    assert families == ["jackpot_level_amount", "jackpot_level_reserve", "jackpot_level_version"]
    assert 'jackpot_level_version{level="minor"} 2.0' in jackpot("metrics", "--db", db).stdout


def test_metrics_once_on_a_database_it_cannot_read_is_an_error(db: str) -> None:
    """Printing the gauges once: an unreadable level row is named (exit 2), not an empty 0."""
    conn = apsw.Connection(db)
    conn.execute("UPDATE levels SET pending = 'not json' WHERE name = 'minor'")
    conn.close()
    done = jackpot("metrics", "--db", db)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("jackpot: error: level 'minor': its pending changes ")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_metrics_serve_on_a_local_port(db: str, stop: signal.Signals) -> None:
    """Served until stopped: Ctrl-C, as SIGTERM, ends it with status 0 (README), not 130."""
    proc = subprocess.Popen([*CLI, "metrics", "--serve", "--port", "0", "--db", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:")
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert 'jackpot_level_version{level="mega"} 1.0' in body
    finally:
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, "")


def test_metrics_serve_survives_the_file_going_away(db: str) -> None:
    """A scrape after the file was moved or emptied has no level samples, and no traceback."""
    proc = subprocess.Popen([*CLI, "metrics", "--serve", "--port", "0", "--db", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[1]
        Path(db).rename(f"{db}.moved")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            assert "jackpot_level_amount{" not in response.read().decode()
        Path(db).write_bytes(b"")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, "")


def test_a_port_in_use_is_named(db: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = jackpot("metrics", "--serve", "--port", str(port), "--db", db)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"jackpot: error: cannot serve metrics on 127.0.0.1:{port}: "
                           "Address already in use\n")


def test_python_dash_m_jackpot_runs_the_command(db: str) -> None:
    done = subprocess.run([sys.executable, "-m", "jackpot", "verify", "--db", db],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("audit OK")


def test_simulate(db: str) -> None:
    summary = ok_json("simulate", "--bets", "40", "--win-every", "10", "--threads", "2",
                      "--seed", "7", "--db", db)
    assert summary["bets"] == 40
    assert sum(w["count"] for w in summary["wins"].values()) == 4
    assert summary["refused"] == {}
    assert summary["audit"]["ok"] is True
    assert sum(p["meters"]["bets"] for p in summary["pools"]) == 120  # 40 bets x 3 levels
    done = jackpot("simulate", "--bets", "20", "--win-every", "5", "--db", db)
    assert (done.returncode, done.stderr) == (0, "")  # (was a blank line: rich's bar, not shown)
    assert "played 20 bets and 4 wins with 4 threads" in done.stdout
    assert "audit OK" in done.stdout


@pytest.mark.parametrize("seed", ["+18446744073709551615", "-18446744073709551615"])
def test_simulate_takes_any_whole_seed(db: str, tmp_path: Path, seed: str) -> None:
    """A seed counts nothing: a 64-bit one (20 digits) or a signed one is as exact as 42.

    Both were refused as not 'a whole number of at most 18 ASCII digits'.
    """
    other = str(tmp_path / "other.db")
    JackpotEngine.open(other).close()
    first = ok_json("simulate", "--bets", "30", "--win-every", "0", "--seed", seed, "--db", db)
    again = ok_json("simulate", "--bets", "30", "--win-every", "0", "--seed", seed.lstrip("+"),
                    "--db", other)
    assert first["bets"] == again["bets"] == 30
    assert first["wagered"] == again["wagered"]  # the same seed, the same stakes
    assert first["audit"]["ok"] is True


@pytest.mark.parametrize(("seed", "said"), [
    *[(seed, repr(seed)) for seed in ["4_2", " 42", "\u0664\u0662", "4.2", "++42"]],
    # was shown as the 40 nines it was cut to, a seed it would have taken
    ("9" * 65, f"{'9' * 40!r}... (65 characters)")])
def test_simulate_refuses_a_seed_that_is_not_plain_digits(db: str, seed: str, said: str) -> None:
    done = jackpot("simulate", "--seed", seed, "--db", db)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"jackpot: error: Invalid value for '--seed': {said} is not "
                           "a whole number of at most 64 ASCII digits (with an optional sign).\n")


def test_simulate_sends_no_win_to_a_retired_level(db: str) -> None:
    ok_json("retire", "mega", "--transfer-to", "major", "--reason", "ended", "--db", db)
    summary = ok_json("simulate", "--bets", "40", "--win-every", "2", "--seed", "7",
                      "--db", db)
    assert summary["refused"] == {}  # was: wins on mega refused with GroupRetiredError
    assert summary["wins"].get("mega", {"count": 0})["count"] == 0
    assert sum(w["count"] for w in summary["wins"].values()) == 20
    assert summary["audit"]["ok"] is True


def ledger_count(path: str, kind: str) -> int:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    conn.set_busy_timeout(10_000)  # a wait, bounded, should anyone hold a lock on it
    try:
        return int(conn.execute("SELECT COUNT(*) FROM ledger WHERE kind = ?",
                                (kind,)).fetchall()[0][0])
    finally:
        conn.close()


_SIMULATE_TELLING = """
import os, sys, threading
from jackpot import JackpotEngine, cli
told, lock, done = int(sys.argv[1]), threading.Lock(), [0]
contribute = JackpotEngine.contribute
def counted(self, *args, **kwargs):  # says, once, that 100 bets have committed
    result = contribute(self, *args, **kwargs)
    with lock:
        done[0] += 1
        if done[0] == 100:
            os.write(told, b"x")
    return result
JackpotEngine.contribute = counted
cli.main(sys.argv[2:])
"""


def test_simulate_stops_at_ctrl_c_and_says_how_much_it_played(db: str) -> None:
    told, tell = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _SIMULATE_TELLING, str(tell), "simulate",
                             "--bets", "100000", "--win-every", "0", "--threads", "2",
                             "--json", "--db", db],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            pass_fds=(tell,))
    os.close(tell)  # the child's copy only: it ending (a crash) ends the wait below
    try:
        assert select.select([told], [], [], 60)[0], "100 bets not played in 60 s"
        assert os.read(told, 1) == b"x"  # 100 bets committed (not the child ending early)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)  # not the whole plan: it stops
    finally:
        proc.kill()
        os.close(told)
    assert (proc.returncode, err) == (130, "")
    summary = json.loads(out)
    assert summary["interrupted"] is True
    assert summary["planned_bets"] == 100_000
    assert 100 <= summary["bets"] < 100_000
    assert ledger_count(db, "contribute") == 3 * summary["bets"]  # each counted one committed
    assert ok_json("verify", "--db", db)["ok"] is True


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_an_interrupted_simulation_ends_with_130_when_its_reader_left(
        db: str, *, as_json: bool) -> None:
    """Ctrl-C on `jackpot simulate | jq`: the terminal stops jq too; status 130, not 141.

    What it played is said on stdout (--json) or stderr: with that reader
    gone, the write's broken pipe ended it with 141, as a simulation that
    ran to its end and was cut by `| head` does.
    """
    told, tell = os.pipe()
    read, write = os.pipe()
    os.close(read)  # the reader has left
    said_on = ({"stdout": write, "stderr": subprocess.PIPE} if as_json
               else {"stdout": subprocess.PIPE, "stderr": write})
    proc = subprocess.Popen([sys.executable, "-c", _SIMULATE_TELLING, str(tell), "simulate",
                             "--bets", "100000", "--win-every", "0", "--threads", "2",
                             *(["--json"] if as_json else []), "--db", db],
                            text=True, pass_fds=(tell,), **said_on)
    os.close(tell)  # the child's copy only: it ending (a crash) ends the wait below
    os.close(write)
    try:
        assert select.select([told], [], [], 60)[0], "100 bets not played in 60 s"
        assert os.read(told, 1) == b"x"  # 100 bets committed (not the child ending early)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        os.close(told)
    assert (proc.returncode, out or "", err or "") == (130, "", "")


def tamper(path: str, *statements: str) -> None:
    """Change the file behind the engine's back (the append-only triggers dropped first)."""
    conn = apsw.Connection(path)
    try:
        for trigger in ("ledger_no_update", "operations_no_update"):
            conn.execute(f"DROP TRIGGER {trigger}")
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


@pytest.mark.parametrize("pending", ["garbage", "[]", '{"seed": "5"}'])
def test_unreadable_pending_changes_are_one_line_and_a_failed_audit(db: str,
                                                                   pending: str) -> None:
    tamper(db, f"UPDATE levels SET pending = '{pending}' WHERE name = 'minor'")
    message = (f"level 'minor': its pending changes {pending!r} are not what the engine writes "
               "(a damaged or tampered database)")
    for args in (("status",), ("history", "major")):
        done = jackpot(*args, "--db", db)
        assert (done.returncode, done.stdout, done.stderr) == (
            2, "", f"jackpot: error: {message}\n")
    assert jackpot("verify", "--json", "--db", db).returncode == 1
    report = json.loads(jackpot("verify", "--json", "--db", db).stdout)
    assert report == {"ok": False, "levels": 0, "ledger_rows": 0, "problems": [
        f"levels cannot be read as the engine writes them (UnreadableRowError: {message})",
        ("integrity_check: trigger ledger_no_update is missing: history is not append-only; "
         "trigger operations_no_update is missing: history is not append-only")]}


def test_pending_changes_forged_as_null_are_one_line_naming_the_level(db: str) -> None:
    # The column is NOT NULL in a STRICT table: a NULL needs the schema rewritten by hand.
    # json.loads(None) raised TypeError, a traceback rather than a one-line error.
    conn = apsw.Connection(db)
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_schema SET sql = replace(replace(sql, ') STRICT', ')'), "
                     "' NOT NULL', '') WHERE name = 'levels'")
        conn.execute("PRAGMA writable_schema = OFF")
    finally:
        conn.close()
    tamper(db, "UPDATE levels SET pending = NULL WHERE name = 'minor'")
    message = ("level 'minor': its pending changes None are not what the engine writes "
               "(a damaged or tampered database)")
    for args in (("status",), ("status", "--json"), ("history", "major")):
        done = jackpot(*args, "--db", db)
        assert (done.returncode, done.stdout, done.stderr) == (
            2, "", f"jackpot: error: {message}\n")
    done = jackpot("verify", "--json", "--db", db)
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"ok": False, "levels": 0, "ledger_rows": 0, "problems": [
        f"levels cannot be read as the engine writes them (UnreadableRowError: {message})",
        ("integrity_check: trigger ledger_no_update is missing: history is not append-only; "
         "trigger operations_no_update is missing: history is not append-only; table levels is "
         "not STRICT: it takes values of any type, not only those of its columns; table levels "
         "takes a NULL in columns status, amount, reserve and 22 more (their NOT NULL is "
         "gone)")]}


def test_an_unreadable_ledger_detail_is_one_line_and_a_failed_audit(db: str) -> None:
    ok_json("contribute", "5", "--level", "minor", "--db", db)
    tamper(db, "UPDATE ledger SET detail = 'not json' WHERE kind = 'contribute'")
    done = jackpot("ledger", "--db", db)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", (
        "jackpot: error: ledger row 4: its detail 'not json' is not what the engine writes "
        "(a damaged or tampered database)\n"))
    assert jackpot("verify", "--db", db).returncode == 1


def test_the_ledger_table_shows_what_a_win_paid(db: str) -> None:
    """A whole-pool win's delta is the net change (paid, then the seed funded): not the payout."""
    ok_json("contribute", "5", "--level", "minor", "--db", db)  # minor: 100.025
    ok_json("win", "minor", "--op-id", "w1", "--winner", "p-9", "--db", db)
    done = jackpot("ledger", "--tail", "1", "--db", db, env={"COLUMNS": "300"})
    assert (done.returncode, done.stderr) == (0, "")
    row = next(line for line in done.stdout.splitlines() if "w1" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    assert cells[2:7] == ["win", "minor", "-0.025", "100.025", "100.00"], row


@pytest.mark.parametrize("at_ms", [99_999_999_999_999_999, -99_999_999_999_999_999])
def test_a_time_beyond_any_date_is_shown_raw(db: str, at_ms: int) -> None:
    ok_json("win", "minor", "--op-id", "w1", "--db", db)
    tamper(db, f"UPDATE ledger SET at_ms = {at_ms} WHERE op_id = 'w1'")
    for args in (("ledger", "--tail", "1"), ("history", "minor")):
        done = jackpot(*args, "--db", db, env={"COLUMNS": "300"})
        assert (done.returncode, done.stderr) == (0, ""), args
        assert f"│ at_ms {at_ms} " in done.stdout, done.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("status",), "no database given: pass --db PATH or set JACKPOT_DB"),
    (("status", "--db", "{tmp}/none.db"),
     "database '{tmp}/none.db' does not exist: create it with `jackpot init --db {tmp}/none.db`"),
    # the hint printed the name raw: an escape sequence reached the terminal
    (("status", "--db", "{tmp}/n\x1b[2J.db"),
     ("database '{tmp}/n\\x1b[2J.db' does not exist: create it with "
      "`jackpot init --db PATH`")),
    (("status", "--db", "{tmp}/my pools.db"),
     ("database '{tmp}/my pools.db' does not exist: create it with "
      "`jackpot init --db '{tmp}/my pools.db'`")),
    # two spaces in a name were shown as one (the message's whitespace collapsed)
    (("status", "--db", "{tmp}/my  pools.db"),
     ("database '{tmp}/my  pools.db' does not exist: create it with "
      "`jackpot init --db '{tmp}/my  pools.db'`")),
    (("frobnicate", "--db", "{db}"), "No such command 'frobnicate'."),
    # (click's own words, which changed in 8.4: "No such option: --colour" before)
    (("status", "--db", "{db}", "--colour"),
     click.exceptions.NoSuchOption("--colour").format_message()),
    (("history", "--db", "{db}"), "Missing argument 'LEVEL'."),
    (("history", "jumbo", "--db", "{db}"),
     "unknown level 'jumbo': this database has major, mega, minor"),
    (("ledger", "--level", "nosuch", "--db", "{db}"),
     "unknown level 'nosuch': this database has major, mega, minor"),
    (("history", "minr", "--db", "{db}"),  # a likely typo: the name it likely mistypes
     "unknown level 'minr' (did you mean 'minor'?): this database has major, mega, minor"),
    (("win", "MAJOR", "--db", "{db}"),  # names are case-sensitive: the likeliest slip
     "unknown level 'MAJOR' (did you mean 'major'?): this database has major, mega, minor"),
    (("ledger", "--tail", "0", "--db", "{db}"),
     "Invalid value for '--tail': 0 is not in the range 1<=x<=100000."),
    (("contribute", "1.5.5", "--db", "{db}"),
     ("bet must be a plain decimal string such as '2.50' (ASCII digits, no spaces or exponent), "
     "got '1.5.5'")),
    (("contribute", "--db", "{db}", "--", "-0"), "bet must be positive, got -0"),  # "not negative"
    (("adjust", "minor", "-0.0000001", "--reason", "r", "--who", "ops", "--db", "{db}"),
     # was "delta 1E-7", then "delta -1E-7 ... unit 1E-6": amounts as people write them
     "delta -0.0000001 is finer than the smallest unit 0.000001"),
    (("win", "minor", "--amount", "0.0000001", "--db", "{db}"),
     "amount 0.0000001 is finer than the smallest unit 0.000001"),  # was "amount 1E-7"
    (("config", "minor", "contribution_rate=0.0000000001", "--db", "{db}"),
     "contribution_rate 0.0000000001 is finer than the smallest rate step 0.000000001"),
    (("win", "minor", "--amount", "5000", "--db", "{db}"),
     "amount 5000.000000 exceeds the pool of level 'minor' (100.000000)"),
    (("config", "minor", "cap", "--db", "{db}"), "'cap' is not KEY=VALUE"),
    (("config", "minor", "cap=600", "cap=700", "--db", "{db}"),
     "cap is given twice: give each key once"),
    (("config", "minor", "colour=red", "--db", "{db}"),
     ("unknown config field(s) 'colour': allowed are seed, contribution_rate, cap, reserve_rate, "
     "min_bet, max_contribution, must_hit_by, overflow_to")),
    *[(("config", "minor", f"{key}=x", "--db", "{db}"),  # was a TypeError's traceback
       (f"unknown config field(s) '{key}': allowed are seed, contribution_rate, cap, "
        "reserve_rate, min_bet, max_contribution, must_hit_by, overflow_to"))
      for key in ("who", "reason", "op_id", "expected_version", "group")],
    (("init", "--level", "a:b", "--db", "{tmp}/new.db"),
     "--level 'a:b': expected NAME:SEED:RATE or NAME:SEED:RATE:CAP"),
    (("init", "--level", "bad name:1:0.1", "--db", "{tmp}/new.db"),
     ("--level 'bad name:1:0.1': name 'bad name' is not a valid level name: use 1-64 ASCII "
      "letters, digits, '_', '.' or '-', starting with a letter or digit")),
    (("init", "--level", "a:1:0.1", "--level", "a:2:0.1", "--db", "{tmp}/new.db"),
     "groups name a level twice: 'a' (each level once)"),
    (("config", "minor", "contribution_rate=none", "--db", "{db}"),
     ("contribution_rate cannot be cleared (None): only cap, min_bet, max_contribution, "
      "must_hit_by can; give a value instead")),
    (("init", "--db", "{tmp}/no/such/dir.db"),  # was SQLite's "unable to open database file"
     "cannot create database '{tmp}/no/such/dir.db': no directory '{tmp}/no/such'"),
    (("status", "--db", "{tmp}"),
     "'{tmp}' is a directory: --db (or JACKPOT_DB) names the database file"),
    # was a traceback (UnicodeEncodeError) and exit status 1
    (("init", "--db", "{tmp}/q\udc80.db"),
     ("path '{tmp}/q\\udc80.db' cannot be written in UTF-8, as SQLite takes file names (a "
      "lone surrogate, or a name in another encoding): rename the file or its folder")),
    (("metrics", "--port", "70000", "--db", "{db}"),
     "Invalid value for '--port': 70000 is not in the range 0<=x<=65535."),
    # were read by int() as 12, 10, 5 and 9464 (as JACKPOT_* variables they are refused)
    *[(args, (f"Invalid value for '{args[-4]}': {args[-3]!r} is not a whole number of at most "
              "19 ASCII digits."))
      for args in [("config", "minor", "cap=600", "--expected-version", "\u0661\u0662", "--db",
                    "{db}"),
                   ("ledger", "--tail", "1_0", "--db", "{db}"),
                   ("history", "minor", "--limit", " 5", "--db", "{db}"),
                   ("metrics", "--port", "\u0669\u0664\u0666\u0664", "--db", "{db}"),
                   ("ledger", "--tail", "9" * 20, "--db", "{db}")]],
    (("ledger", "--tail", "1" * 41, "--db", "{db}"),  # cut, and said to be
     (f"Invalid value for '--tail': {'1' * 40!r}... (41 characters) is not a whole number of "
      "at most 19 ASCII digits.")),
    (("ledger", "--tail", "9" * 19, "--db", "{db}"),
     f"Invalid value for '--tail': {'9' * 19} is not in the range 1<=x<=100000."),
    # a version past 18 digits was refused as not a number; the library names its limit
    (("config", "minor", "cap=600", "--expected-version", str(2**63), "--db", "{db}"),
     f"expected_version {2**63} is beyond any level's version (at most {2**63 - 1})"),
])
def test_bad_arguments_get_one_line_and_status_2(db: str, tmp_path: Path, args: tuple[str, ...],
                                                 message: str) -> None:
    fill = {"db": db, "tmp": str(tmp_path)}
    done = jackpot(*(a.format(**fill) for a in args))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"jackpot: error: {message.format(**fill)}\n"


@pytest.mark.parametrize("args", [("status",), ("verify",), ("win", "minor"), ("metrics",),
                                  ("init",), ("health", "--json")])
def test_a_database_name_longer_than_its_directory_takes_is_a_file_that_does_not_exist(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    """--db with a name of 300 bytes (the directory takes 255): Path.is_dir raised
    ENAMETOOLONG, and every command ended with "File name too long" and status 1 (the
    system refused), where the README has a missing file refused with 2 (health: a
    report, failing, 1)."""
    assert os.pathconf(tmp_path, "PC_NAME_MAX") == 255  # (as the messages say)
    path = str(tmp_path / ("n" * 297 + ".db"))
    done = jackpot(*args, "--db", path)
    assert "File name too long" not in done.stderr
    if args[0] == "health":
        assert (done.returncode, done.stderr) == (1, "")
        assert json.loads(done.stdout)["checks"]["database"] == {
            "status": "failing", "detail": f"database file {path!r} does not exist"}
        return
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("jackpot: error: " + (
        f"cannot open database {path!r}: its name is too long (SQLite makes its -journal "
        "file beside it): 255 bytes is the longest name there; give the database a shorter "
        "name" if args == ("init",)
        else f"database {path!r} does not exist: create it with `jackpot init --db {path}`")
        + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ("win", "nope"), ("contribute", "5", "--level", "minor", "--level", "nope"),
    ("config", "nope", "cap=500"), ("suspend", "nope", "--reason", "r"),
    ("resume", "nope"), ("adjust", "nope", "5", "--reason", "r", "--who", "ops"),
    ("retire", "nope", "--transfer-to", "minor", "--reason", "r", "--who", "ops"),
    ("retire", "minor", "--transfer-to", "nope", "--reason", "r", "--who", "ops"),
])
def test_a_write_command_names_an_unknown_level_as_the_read_commands_do(
        db: str, args: tuple[str, ...]) -> None:
    """It added "(a level added to the database after this engine opened needs it opened
    again)", the engine's hint for a long-lived game server: noise from a command whose
    engine opened a moment before."""
    done = jackpot(*args, "--db", db)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("jackpot: error: unknown level 'nope': this database has major, "
                           "mega, minor\n")


def test_a_must_hit_by_cleared_from_the_next_reset_is_shown_as_a_dash(tmp_path: Path) -> None:
    """Pending, it was "None (from the next reset)" and "must_hit_by=None" in status,
    where every other empty value is "-"."""
    path = str(tmp_path / "mystery.db")
    JackpotEngine.open(path, [GroupConfig("mystery", Decimal(100), Decimal("0.01"),
                                          must_hit_by=Decimal(500))]).close()
    done = jackpot("config", "mystery", "must_hit_by=none", "--db", path,
                   env={"COLUMNS": "200"})
    assert (done.returncode, done.stderr) == (0, "")
    row = next(line for line in done.stdout.splitlines() if "must_hit_by" in line)
    assert row.split("\u2502")[1:4] == [" must_hit_by ", " 500.000000 ",
                                        " - (from the next reset) "]
    status = jackpot("status", "--db", path, env={"COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    assert " must_hit_by=- " in status.stdout
    assert "None" not in done.stdout + status.stdout


def test_one_of_a_thing_is_not_said_in_the_plural(tmp_path: Path) -> None:
    """'ledger (last 1 rows)', 'played 1 bets ... with 1 threads', 'audit OK: 1 levels'."""
    path = str(tmp_path / "one.db")
    JackpotEngine.open(path, [GroupConfig("solo", Decimal(10), Decimal("0.01"))]).close()
    ledger = jackpot("ledger", "--tail", "1", "--db", path)
    assert ledger.returncode == 0, ledger.stderr
    assert ledger.stdout.split("\n", 1)[0].strip() == "ledger (last 1 row)"
    audit = jackpot("verify", "--db", path)
    assert audit.stdout == "audit OK: 1 level, 1 ledger row reconciled to the smallest unit\n"
    played = jackpot("simulate", "--bets", "1", "--win-every", "0", "--threads", "1",
                     "--db", path)
    assert played.returncode == 0, played.stderr
    assert played.stdout.startswith("played 1 bet and 0 wins with 1 thread in ")


def test_leading_zeros_do_not_count_towards_an_integer_options_digits(db: str) -> None:
    """As in the JACKPOT_* variables: '0...02' is 2, however many zeros (they were counted)."""
    rows = ok_json("ledger", "--tail", "0" * 5000 + "2", "--db", db)
    assert len(rows) == 2
    done = ok_json("config", "minor", "cap=600", "--expected-version", "0" * 20 + "1",
                   "--db", db)
    assert done["after"]["cap"] == "600.000000"


@pytest.mark.parametrize("command", ["status", "init", "health"])
def test_a_directory_in_jackpot_db_is_named_as_such(tmp_path: Path, command: str) -> None:
    """Click's check said "Invalid value for '--db'" to one who had set JACKPOT_DB."""
    done = jackpot(command, env={"JACKPOT_DB": str(tmp_path)})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"jackpot: error: {str(tmp_path)!r} is a directory: --db (or "
                           "JACKPOT_DB) names the database file\n")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_setting_is_one_line_and_status_2(db: str) -> None:
    done = jackpot("status", "--db", db, env={"JACKPOT_LOCK_TIMEOUT_MS": "soon"})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("jackpot: error: environment variable JACKPOT_LOCK_TIMEOUT_MS='soon' "
                           "is invalid: expected an integer in [1, 3600000] (ASCII digits "
                           "only)\n")


def test_without_the_cli_extra_the_command_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "find_spec", lambda name: None if name == "rich" else object())
    with pytest.raises(SystemExit) as info:
        cli.main(["status"])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "jackpot: error: the command needs rich: pip install 'jackpot[cli]'\n")


# -- the commands that look run no engine: they never write, create or wait ------------

READ_ONLY_COMMANDS = [("status",), ("verify",), ("history", "minor"), ("ledger",)]
NEWER = len(MIGRATIONS) + 1  # a schema version from a later jackpot


def file_state(path: str) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime and the files beside it: equal means untouched."""
    p = Path(path)
    return p.read_bytes(), p.stat().st_mtime_ns, sorted(x.name for x in p.parent.iterdir())


def sql(path: str, statements: str) -> None:
    conn = apsw.Connection(path)
    try:
        conn.execute(statements)
    finally:
        conn.close()


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: sql(p, "CREATE TABLE t (x)"),
     ("'{db}' is not a jackpot database (user_version 0, tables: t): refusing to use it; "
     "nothing was changed")),
    (lambda p: sql(p, "CREATE TABLE t (x); PRAGMA user_version = 7"),
     ("'{db}' is not a jackpot database (user_version 7, tables: t): refusing to use it; "
     "nothing was changed")),
    (lambda p: (JackpotEngine.open(p).close(), sql(p, f"PRAGMA user_version = {NEWER}")),
     (f"database '{{db}}' has schema version {NEWER}, newer than this library's "
      f"{len(MIGRATIONS)}: upgrade jackpot (nothing was changed)")),
    (lambda p: Path(p).touch(),
     "database '{db}' holds no jackpot database: create one with `jackpot init --db {db}`"),
], ids=["foreign", "foreign-user-version-7", "newer-schema", "empty"])
@pytest.mark.parametrize("command", [*READ_ONLY_COMMANDS, ("metrics",),
                                     ("contribute", "1")])
def test_a_file_that_is_not_a_jackpot_database_is_refused_untouched(
        tmp_path: Path, make: Any, message: str, command: tuple[str, ...]) -> None:
    path = str(tmp_path / "other.db")
    make(path)
    before = file_state(path)
    done = jackpot(*command, "--db", path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"jackpot: error: {message.format(db=path)}\n"
    assert file_state(path) == before


@pytest.mark.parametrize("path", [":memory:", "file:pools.db", "dbname=pools user=app"])
@pytest.mark.parametrize("command", [("status",), ("init",), ("contribute", "1")])
def test_a_path_the_engine_refuses_is_refused_by_every_command(
        tmp_path: Path, path: str, command: tuple[str, ...]) -> None:
    # `status --db :memory:` said to create it with `jackpot init --db :memory:`,
    # which then refused it.
    done = jackpot(*command, "--db", path, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"jackpot: error: path {path!r} ")
    assert "jackpot init" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_looking_leaves_a_closed_database_untouched(db: str) -> None:
    before = file_state(db)
    for command in READ_ONLY_COMMANDS:
        done = jackpot(*command, "--db", db)
        assert done.returncode == 0, done.stderr
    assert file_state(db) == before  # no migration, no -wal or -shm left beside it


def test_looking_does_not_wait_for_the_game_servers_write_lock(db: str) -> None:
    with write_lock_held(db):
        for command in READ_ONLY_COMMANDS:
            done = jackpot(*command, "--json", "--db", db, env={"JACKPOT_LOCK_TIMEOUT_MS": "60000"},
                           timeout=30)
            assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS)
def test_looking_beside_a_directory_named_as_the_wal_says_so(
        db: str, command: tuple[str, ...]) -> None:
    """Was "unable to open database file (... needs its -shm file, which is missing ...)"."""
    Path(f"{db}-wal").mkdir()
    done = jackpot(*command, "--db", db)
    wal = os.path.realpath(db) + "-wal"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", (
        f"jackpot: error: cannot open database {db!r}: its -wal {wal!r} is a directory, not a "
        "file; SQLite needs that name for a file of its own, and this holds nothing of "
        "SQLite's: move it out of the way\n"))


def test_looking_by_a_link_at_a_wal_without_its_shm_in_a_closed_directory_says_why(
        db: str, tmp_path: Path) -> None:
    """The hint looked for the -wal beside the link, not beside the file SQLite opens."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        skip_outside_ci("needs setpriv to run as another user")
    shared = Path(tempfile.mkdtemp(prefix="jackpot-ro-"))  # reachable by another user
    link = Path(f"{shared}-link.db")  # elsewhere: SQLite opens (and names) the file it names
    try:
        path = shared / "pools.db"
        shutil.copy(db, path)
        Path(f"{path}-wal").touch()  # a server has it open, and its -shm is gone
        shared.chmod(0o555)  # (the reader cannot make one)
        link.symlink_to(path)
        as_reader = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                     if os.geteuid() == 0 else [])
        src = str(Path(jackpot_module.__file__).parents[1])  # (this jackpot, from any directory)
        done = subprocess.run([*as_reader, *CLI, "status", "--db", str(link)],
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd="/", env={**os.environ, "PYTHONPATH": src})
        assert (done.returncode, done.stderr) == (2, (
            f"jackpot: error: cannot open database {str(link)!r}: unable to open database "
            "file (reading a WAL database needs its -shm file, which is missing and cannot "
            "be created here: read it as the user that writes it)\n"))
    finally:
        shared.chmod(0o755)
        shutil.rmtree(shared)
        link.unlink(missing_ok=True)


def test_looking_needs_no_write_access(db: str) -> None:
    """A reader who may not write the file nor its directory still sees the pools."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        skip_outside_ci("needs setpriv to run as another user")
    shared = Path(tempfile.mkdtemp(prefix="jackpot-ro-"))  # reachable by another user
    try:
        path = shared / "pools.db"
        shutil.copy(db, path)
        path.chmod(0o444)
        shared.chmod(0o555)
        before = file_state(str(path))
        as_reader = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                     if os.geteuid() == 0 else [])
        for command in READ_ONLY_COMMANDS:
            done = subprocess.run([*as_reader, *CLI, *command, "--db", str(path)],
                                  capture_output=True, text=True, timeout=60, check=False,
                                  cwd="/")
            assert done.returncode == 0, (command, done.stderr)
        assert file_state(str(path)) == before
    finally:
        shared.chmod(0o755)
        shutil.rmtree(shared)


# -- health: the probe alone, as the README says: degraded is reported, failing is 1 --------


def test_health_of_a_locked_database_is_degraded_within_the_probe_timeout(db: str) -> None:
    with write_lock_held(db):
        done = jackpot("health", "--json", "--db", db, env={"JACKPOT_LOCK_TIMEOUT_MS": "60000"},
                       timeout=30)
    assert (done.returncode, done.stderr) == (0, "")
    report = json.loads(done.stdout)
    assert report["status"] == "degraded"
    assert report["checks"]["database"]["detail"] == (
        "write lock not had within 250 ms: another connection holds it, writes are waiting")


@pytest.mark.parametrize(("make", "detail"), [
    (lambda p: None, "database file '{db}' does not exist"),
    (lambda p: Path(p).touch(),
     "cannot open the database: cannot open database '{db}': it holds no jackpot database"),
    (lambda p: sql(p, "CREATE TABLE t (x)"),
     ("cannot open the database: '{db}' is not a jackpot database (user_version 0, tables: "
      "t): refusing to use it; nothing was changed")),
], ids=["missing", "empty", "foreign"])
def test_health_of_a_database_that_cannot_serve_is_failing_with_status_1(
        tmp_path: Path, make: Any, detail: str) -> None:
    path = str(tmp_path / "pools.db")
    make(path)
    before = sorted(tmp_path.iterdir()), Path(path).exists() and Path(path).read_bytes()
    done = jackpot("health", "--json", "--db", path)
    assert (done.returncode, done.stderr) == (1, "")
    report = json.loads(done.stdout)
    assert re.fullmatch(r"[\d,]+ MiB free", report["checks"]["disk"]["detail"])
    assert report == {
        "status": "failing", "reasons": [f"database: {detail.format(db=path)}"],
        "checks": {"database": {"status": "failing", "detail": detail.format(db=path)},
                   "disk": {"status": "ok", "detail": report["checks"]["disk"]["detail"]}}}
    assert (sorted(tmp_path.iterdir()), Path(path).exists() and Path(path).read_bytes()) == before


@pytest.mark.parametrize("command", [("health",), *READ_ONLY_COMMANDS, ("metrics",)])
def test_looking_at_a_database_no_writer_has_opened_leaves_no_file_beside_it(
        db: str, command: tuple[str, ...]) -> None:
    """A restored backup, say: no writers' lock file yet.

    Before: `health` left `<database>-lock` beside it (its probe takes the
    write lock as a writer does, and the writers' turn file was made for it).
    """
    Path(f"{db}-lock").unlink()
    before = file_state(db)
    done = jackpot(*command, "--db", db)
    assert (done.returncode, done.stderr) == (0, "")
    assert file_state(db) == before


def test_health_of_a_file_this_user_may_not_write_is_failing(db: str) -> None:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        skip_outside_ci("needs setpriv to run as another user")
    shared = Path(tempfile.mkdtemp(prefix="jackpot-ro-"))
    try:
        path = shared / "pools.db"
        shutil.copy(db, path)
        path.chmod(0o444)
        shared.chmod(0o777)  # the directory is writable: nothing may be left in it
        as_reader = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                     if os.geteuid() == 0 else [])
        done = subprocess.run([*as_reader, *CLI, "health", "--json", "--db", str(path)],
                              capture_output=True, text=True, timeout=60, check=False, cwd="/")
        assert (done.returncode, done.stderr) == (1, "")
        assert json.loads(done.stdout)["checks"]["database"]["detail"] == (
            f"not writable: this user may not write {str(path)!r} (permissions)")
        assert sorted(p.name for p in shared.iterdir()) == ["pools.db"]
    finally:
        shared.chmod(0o755)
        shutil.rmtree(shared)


def test_brackets_in_an_op_id_or_a_path_are_printed_as_given(tmp_path: Path) -> None:
    # They were read as rich markup: "[/b]" crashed the command with a traceback
    # after the bet had committed, and "[bold]" vanished from the op_id shown,
    # so the op_id to resend was not the one printed.
    folder = tmp_path / "x[" / "y]"  # the path holds "[/y]"
    folder.mkdir(parents=True)
    path = str(folder / "pools.db")
    wide = {"COLUMNS": "250"}
    for args in (("init",), ("health",), ("contribute", "1", "--level", "minor",
                                          "--op-id", "round[/b]7"),
                 ("contribute", "1", "--level", "minor", "--op-id", "r[bold]8[/bold]"),
                 ("config", "minor", "cap=500", "--op-id", "c[/b]9")):
        done = jackpot(*args, "--db", path, env=wide)
        assert (done.returncode, done.stderr) == (0, ""), args
        shown = {"init": path, "health": path, "contribute": args[-1],
                 "config": args[-1]}[args[0]]
        assert shown in done.stdout, (args, done.stdout)


def test_a_negative_bet_is_refused_as_negative_not_as_an_unknown_option(db: str) -> None:
    done = jackpot("contribute", "-1", "--level", "minor", "--db", db)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "jackpot: error: bet must not be negative, got -1\n")
    assert {p["name"]: p["version"] for p in ok_json("status", "--db", db)}["minor"] == 1


def test_a_write_by_hand_gets_an_op_id_it_can_be_sent_again_with(db: str) -> None:
    # Was an engine-generated auto-... op_id, which a caller may not send: a manual
    # payout whose outcome was unknown could not be resolved, and a retry paid again.
    paid = ok_json("win", "minor", "--amount", "1", "--db", db)
    assert paid["op_id"].startswith("cli-")
    again = ok_json("win", "minor", "--amount", "1", "--op-id", paid["op_id"], "--db", db)
    assert again["replayed"] is True
    assert again["balance"] == paid["balance"]  # paid once


def test_an_unknown_outcome_names_the_op_id_to_send_again(
        db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from jackpot import StorageError, _cli  # noqa: PLC0415 - the command, in-process

    def unknown(*_args: Any, **_kwargs: Any) -> Any:
        msg = "the commit's answer was lost; resend with the same op_id to learn it"
        raise StorageError(msg, outcome_unknown=True)

    monkeypatch.setattr(JackpotEngine, "adjust", unknown)
    status = _cli.run(["adjust", "minor", "5", "--reason", "fix", "--db", db])
    err = capsys.readouterr().err
    assert status == 2
    op_id = err.split("this command's op_id: ")[1].split(";")[0]
    assert op_id.startswith("cli-")
    assert err.rstrip().endswith(f"to learn the outcome, run it again with --op-id {op_id})")


def test_the_command_run_in_process_leaves_the_root_loggers_handlers_as_they_were(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    from jackpot import _cli  # noqa: PLC0415 - the command, in-process

    root = logging.getLogger()
    before = list(root.handlers)
    statuses = [_cli.run(argv) for argv in (["status", "--db", db], ["contribute", "1", "--db", db],
                                            ["status", "--db", f"{db}-missing"])]
    statuses += [_cli.run(["verify", "--db", db]) for _ in range(3)]
    capsys.readouterr()
    assert statuses == [0, 0, 2, 0, 0, 0]
    assert root.handlers == before


def test_verify_counts_the_problems_past_those_it_lists(db: str) -> None:
    # The audit lists 20 of a sort and counts the rest ("... and 3 more");
    # the header counted that line as one problem, and not the 3: an
    # operator with 5,000 bad rows read "audit FAILED: 21 problems".
    conn = apsw.Connection(db)
    (version,) = conn.execute("SELECT version FROM levels WHERE name = 'mega'").fetchone()
    for v in range(version + 1, version + 24):
        conn.execute("INSERT INTO ledger (op_id, kind, level, delta, balance_after, "
                     "reserve_delta, reserve_after, version_after, at_ms) "
                     "VALUES ('forged', 'adjust', 'mega', 5, 999, 0, 0, ?, 0)", (v,))
    conn.close()
    problems = ok_json_failed("verify", "--db", db)
    assert problems[-1] == "... and 3 more ledger rows that do not add up"
    done = jackpot("verify", "--db", db)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == f"audit FAILED: {len(problems) - 1 + 3} problems"


def ok_json_failed(*args: str) -> list[str]:
    """The problems of a `verify --json` that failed (status 1)."""
    done = jackpot(*args, "--json")
    assert (done.returncode, done.stderr) == (1, "")
    report = json.loads(done.stdout)
    assert report["ok"] is False
    return list(report["problems"])


@pytest.mark.parametrize("name", ["-pools.db", "pools of 'the' \"floor\".db"])
def test_a_reloaded_dump_is_refused_with_commands_that_work_as_given(tmp_path: Path,
                                                                    name: str) -> None:
    # The refusal of the engine's tables at user_version 0 (a reloaded .dump) gives
    # the commands to run: as a shell splits them, each does what it says. A name
    # that starts with '-' was given as is, and sqlite3 took it for an option
    # ("sqlite3: Error: unknown option: -pools.db"), the version never set.
    reloaded = apsw.Connection(str(tmp_path / name))  # the engine's tables, user_version 0
    try:
        reloaded.execute("".join(MIGRATIONS))
    finally:
        reloaded.close()
    done = jackpot("--db", name, "verify", cwd=tmp_path)
    assert done.returncode == 2
    commands = re.search(r"set it \((sqlite3 .*)\) and check it \((jackpot .*verify)\)\.",
                         done.stderr)
    assert commands is not None, done.stderr
    _sqlite3, path, pragma = shlex.split(commands[1])
    assert not path.startswith("-"), f"sqlite3 takes {path} for an option"
    conn = apsw.Connection(str(tmp_path / path))
    try:
        conn.execute(pragma)
    finally:
        conn.close()
    program, *args = shlex.split(commands[2])
    assert program == "jackpot"
    done = jackpot(*args, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
