"""The public API on a real file database: results, balances, versions, life cycle."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import apsw
import pykka
import pytest

import jackpot
from _helpers import in_thread
from jackpot import (
    ConfigResult,
    Contribution,
    EngineClosedError,
    GroupConfig,
    JackpotEngine,
    JackpotError,
    LockTimeoutError,
    PoolSnapshot,
    Settings,
    StorageError,
    UnknownGroupError,
    ValidationError,
    Win,
    domain,
)

ZERO_METERS = {"bets": 0, "wagered": 0, "contributed": 0, "overflow": 0, "won": 0, "wins": 0}
CORE_CONFIG = ("seed", "contribution_rate", "cap")


def meters(p: PoolSnapshot) -> dict[str, Decimal | int]:
    """The meters issue 2 relies on (a snapshot may carry more)."""
    return {k: p.meters[k] for k in ZERO_METERS}


def core(view: dict[str, Any]) -> dict[str, Any]:
    """The config fields of issue 2 in a before/after view (it may carry more)."""
    return {k: view[k] for k in CORE_CONFIG}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_public_names_are_exported() -> None:
    for name in ("JackpotEngine", "GroupConfig", "Settings", "JackpotError", "ValidationError",
                 "UnknownGroupError", "InsufficientFundsError", "ConcurrencyViolationError",
                 "LockTimeoutError", "IdempotencyConflictError", "EngineClosedError", "Stats",
                 "Observer"):
        assert name in jackpot.__all__
        assert getattr(jackpot, name) is not None
    for name in ("ValidationError", "UnknownGroupError", "InsufficientFundsError",
                 "ConcurrencyViolationError", "LockTimeoutError", "IdempotencyConflictError",
                 "EngineClosedError", "StorageError"):
        assert issubclass(getattr(jackpot, name), JackpotError)
    assert issubclass(ValidationError, ValueError)


def test_import_jackpot_leaves_asyncio_and_the_version_until_asked_for() -> None:
    """They were a third of `import jackpot`, paid by the `jackpot` command and every worker.

    What its runtime dependencies import is theirs (pykka before 4.4 reads its own
    version with importlib.metadata as it is imported): not counted.
    """
    code = ("import sys, apsw, prometheus_client, pykka; "
            "deps = set(sys.modules); "
            "import jackpot, jackpot.cli; "
            "print(sorted({'asyncio', 'importlib.metadata'} & (set(sys.modules) - deps))); "
            "import jackpot.aio, importlib.metadata; "
            "print(jackpot.AsyncJackpotEngine is jackpot.aio.AsyncJackpotEngine, "
            "jackpot.__version__ == importlib.metadata.version('jackpot'), "
            "sorted(set(jackpot.__all__) - set(dir(jackpot))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout == "[]\nTrue True []\n"
    for name in jackpot.__all__:  # every public name resolves (also the lazy ones)
        assert getattr(jackpot, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = jackpot.nope  # type: ignore[attr-defined]


def test_a_type_checker_refuses_a_name_jackpot_does_not_export(tmp_path: Path) -> None:
    """Before: mypy took any name from jackpot (a typo too) as Any, seeing its `__getattr__`.

    The lazy names (PEP 562) are declared to type checkers as what they are.
    """
    from mypy import api  # noqa: PLC0415 - a test dependency, only here

    code = ("import jackpot\n"
            "from jackpot import AsyncJackpotEngine, JackpotEngin\n"
            "version: int = jackpot.__version__\n"  # (str, and Any took it too)
            "engine: int = AsyncJackpotEngine\n"
            "jackpot.no_such_name\n")
    config = tmp_path / "mypy.ini"  # (not the project's, which names files to check)
    config.write_text(f"[mypy]\nmypy_path = {Path(jackpot.__file__).parents[1]}\n")
    out, err, status = api.run(["--config-file", str(config), "--strict", "--no-error-summary",
                                "--cache-dir", str(tmp_path / "cache"), "--python-version",
                                "3.11", "-c", code])
    # (line, error code): the wording is mypy's, and changes from one release to the next
    said = [(int(m[1]), m[2]) for m in re.finditer(r"^<string>:(\d+): error: .*\[([\w-]+)\]$",
                                                    out, re.MULTILINE)]
    assert (said, len(out.splitlines()), err, status) == (
        [(2, "attr-defined"), (3, "assignment"), (4, "assignment"), (5, "attr-defined")], 4, "",
        1), out


def test_pool_meters_type_names_every_meter_with_its_kind(
        open_engine: Callable[..., JackpotEngine]) -> None:
    from jackpot.domain import METER_FIELDS  # noqa: PLC0415 - the domain's own list

    assert tuple(jackpot.PoolMeters.__annotations__) == METER_FIELDS
    engine = open_engine()
    engine.contribute(Decimal(3), groups="minor", op_id="m-1")
    m = engine.pool("minor").meters
    assert list(m) == list(METER_FIELDS)
    hints = typing.get_type_hints(jackpot.PoolMeters)
    assert {hints[name] for name in hints} == {int, Decimal}
    for name, kind in hints.items():
        assert type(m[name]) is kind, name  # type: ignore[literal-required]
    assert PoolSnapshot("x", Decimal(1), Decimal(1), Decimal("0.1"), None, 1, None, 0).meters == (
        jackpot.results.zero_meters())


def test_new_file_gets_the_default_levels(open_engine: Callable[..., JackpotEngine],
                                          ledger: Callable[..., list[dict[str, Any]]]) -> None:
    before = now_ms()
    engine = open_engine()
    after = now_ms()
    assert engine.groups == ("major", "mega", "minor")
    pools = engine.pools()
    assert list(pools) == ["major", "mega", "minor"]
    for name, seed, rate in (("minor", 100, "0.005"), ("major", 1000, "0.003"),
                             ("mega", 10000, "0.001")):
        p = pools[name]
        assert isinstance(p, PoolSnapshot)
        assert (p.name, p.amount, p.seed, p.contribution_rate, p.cap, p.version,
                p.lock_holder) == (name, Decimal(seed), Decimal(seed), Decimal(rate), None, 1,
                                   None)
        assert before <= p.last_modified_at <= after
        assert meters(p) == ZERO_METERS
        assert engine.pool(name) == p
    rows = ledger()
    assert [(r["op_id"], r["kind"], r["level"], r["delta"], r["balance_after"],
             r["version_after"]) for r in sorted(rows, key=lambda r: r["level"])] == [
        ("create:major", "create", "major", 1000 * 10**6, 1000 * 10**6, 1),
        ("create:mega", "create", "mega", 10000 * 10**6, 10000 * 10**6, 1),
        ("create:minor", "create", "minor", 100 * 10**6, 100 * 10**6, 1),
    ]
    report = engine.verify()
    assert (report.ok, report.problems, report.levels, report.ledger_rows) == (True, [], 3, 3)


def test_contribute_to_two_levels(engine: JackpotEngine,
                                  ledger: Callable[..., list[dict[str, Any]]]) -> None:
    c = engine.contribute(Decimal("2.50"), groups=("minor", "major"), op_id="spin-42")
    assert c == Contribution(
        op_id="spin-42",
        contributions={"major": Decimal("0.0075"), "minor": Decimal("0.0125")},
        balances={"major": Decimal("1000.0075"), "minor": Decimal("100.0125")},
        versions={"major": 2, "minor": 2},
        replayed=False)
    pools = engine.pools()
    assert (pools["minor"].amount, pools["minor"].version) == (Decimal("100.0125"), 2)
    assert (pools["major"].amount, pools["major"].version) == (Decimal("1000.0075"), 2)
    assert (pools["mega"].amount, pools["mega"].version) == (Decimal(10000), 1)  # untouched
    assert meters(pools["minor"]) == {**ZERO_METERS, "bets": 1, "wagered": Decimal("2.5"),
                                      "contributed": Decimal("0.0125")}
    rows = [r for r in ledger() if r["op_id"] == "spin-42"]
    assert sorted((r["kind"], r["level"], r["delta"], r["balance_after"], r["version_after"])
                  for r in rows) == [
        ("contribute", "major", 7_500, 1_000_007_500, 2),
        ("contribute", "minor", 12_500, 100_012_500, 2),
    ]
    assert engine.verify().ok


def test_contribute_to_every_level_by_default(engine: JackpotEngine) -> None:
    c = engine.contribute("10")
    assert c.contributions == {"major": Decimal("0.03"), "mega": Decimal("0.01"),
                               "minor": Decimal("0.05")}
    assert c.versions == {"major": 2, "mega": 2, "minor": 2}
    # The shape verify() knows as the engine's own (never recorded): see jackpot.audit.
    assert re.fullmatch(r"auto-[0-9a-f]{16}-[0-9a-f]{12}", c.op_id), c.op_id
    assert c.replayed is False
    other = engine.contribute(10)  # int bets are exact too
    assert other.op_id != c.op_id  # a generated op_id is never reused
    assert other.balances == {"major": Decimal("1000.06"), "mega": Decimal("10000.02"),
                              "minor": Decimal("100.1")}
    assert other.versions == {"major": 3, "mega": 3, "minor": 3}


def test_single_level_by_name(engine: JackpotEngine) -> None:
    c = engine.contribute(Decimal(1), groups="mega")
    assert (c.contributions, c.balances, c.versions) == (
        {"mega": Decimal("0.001")}, {"mega": Decimal("10000.001")}, {"mega": 2})
    c = engine.contribute(Decimal(1), groups=["mega"])
    assert c.versions == {"mega": 3}


def test_fractions_finer_than_a_unit_are_carried(engine: JackpotEngine) -> None:
    # 0.000001 x 0.001 is a thousandth of a unit: a thousand of them make one unit
    for i in range(999):
        c = engine.contribute("0.000001", groups="mega")
        assert c.contributions == {"mega": Decimal(0)}
        assert c.versions == {"mega": 2 + i}  # every bet is still a committed change
    c = engine.contribute("0.000001", groups="mega")
    assert c.contributions == {"mega": Decimal("0.000001")}
    assert engine.pool("mega").amount == Decimal("10000.000001")
    assert engine.pool("mega").meters["bets"] == 1000
    assert engine.verify().ok


def test_win_of_the_whole_pool(engine: JackpotEngine) -> None:
    engine.contribute(Decimal(100), groups="minor")  # + 0.5
    w = engine.process_win("minor", op_id="win-7", winner="player-9")
    assert w == Win(op_id="win-7", group="minor", amount=Decimal("100.5"),
                    balance=Decimal(100), version=3, winner="player-9", reset=True,
                    replayed=False)
    p = engine.pool("minor")
    assert (p.amount, p.version, p.lock_holder) == (Decimal(100), 3, None)
    assert (p.meters["won"], p.meters["wins"]) == (Decimal("100.5"), 1)
    assert engine.verify().ok


def test_win_of_a_fixed_amount(engine: JackpotEngine) -> None:
    w = engine.process_win("major", amount=Decimal("250.25"))
    assert (w.group, w.amount, w.balance, w.version, w.reset, w.winner) == (
        "major", Decimal("250.25"), Decimal("749.75"), 2, False, None)
    w = engine.process_win("major", amount="749.75")  # the whole rest: pool left at zero
    assert (w.amount, w.balance, w.version) == (Decimal("749.75"), Decimal(0), 3)
    assert engine.pool("major").amount == 0
    c = engine.contribute(Decimal(1000), groups="major")
    assert c.balances == {"major": Decimal(3)}
    assert engine.verify().ok


def test_update_config(engine: JackpotEngine) -> None:
    engine.contribute(Decimal(1000), groups="minor")  # 105
    r = engine.update_config("minor", op_id="cfg-1", expected_version=2, who="ops",
                             reason="promo", contribution_rate=Decimal("0.02"),
                             cap=Decimal(110))
    assert isinstance(r, ConfigResult)
    assert (r.op_id, r.group, r.version, r.replayed) == ("cfg-1", "minor", 3, False)
    assert core(r.before) == {"seed": "100.000000", "contribution_rate": "0.005", "cap": None}
    assert core(r.after) == {"seed": "100.000000", "contribution_rate": "0.02",
                             "cap": "110.000000"}
    p = engine.pool("minor")
    assert (p.contribution_rate, p.cap, p.amount, p.version) == (
        Decimal("0.02"), Decimal(110), Decimal(105), 3)
    c = engine.contribute(Decimal(100), groups="minor")  # the new rate: + 2
    assert c.contributions == {"minor": Decimal(2)}
    c = engine.contribute(Decimal(1000), groups="minor")  # 20 more, only 3 fit
    assert (c.contributions, c.balances) == ({"minor": Decimal(3)}, {"minor": Decimal(110)})
    assert engine.pool("minor").meters["overflow"] == Decimal(17)
    r = engine.update_config("minor", seed="50", cap=None)
    assert (r.version, r.after["cap"]) == (6, None)
    w = engine.process_win("minor")
    assert (w.amount, w.balance) == (Decimal(110), Decimal(50))  # reset to the new seed
    assert (engine.pool("minor").seed, engine.pool("minor").cap) == (Decimal(50), None)
    assert engine.verify().ok


def test_unknown_level_in_reads(engine: JackpotEngine) -> None:
    with pytest.raises(UnknownGroupError, match=r"unknown level 'bonus'"):
        engine.pool("bonus")


def test_verify_reports_a_tampered_level(engine: JackpotEngine, db_path: Path) -> None:
    engine.contribute(Decimal(10))
    conn = apsw.Connection(str(db_path))
    conn.set_busy_timeout(5000)
    conn.execute("UPDATE levels SET amount = amount + 1 WHERE name = 'minor'")
    conn.close()
    report = engine.verify()
    assert report.ok is False
    assert report.problems == [
        "minor: ledger sums to 100.050000, level holds 100.050001",
        ("minor: opening + contributions + seed funding + adjustments - wins - overflow = "
         "100.050000, pool holds 100.050001")]


# -- restart and reopening -------------------------------------------------------------

def play(engine: JackpotEngine) -> None:
    """A mix of every operation, with and without op_ids."""
    for i in range(20):
        engine.contribute(Decimal("3.33"), op_id=f"spin-{i}")
        engine.contribute(Decimal("0.07"), groups=("minor", "mega"))
    engine.process_win("minor", op_id="win-1", winner="p1")
    engine.process_win("major", amount=Decimal("1.5"))
    engine.update_config("mega", op_id="cfg-1", contribution_rate=Decimal("0.0015"))
    engine.contribute(Decimal("1.01"), groups="mega", op_id="spin-last")


def test_restart_keeps_state_and_ledger_identical(
        open_engine: Callable[..., JackpotEngine], dump_db: Callable[..., Any]) -> None:
    engine = open_engine()
    play(engine)
    pools = engine.pools()
    report = engine.verify()
    engine.close()
    closed = dump_db()
    assert len(closed["ledger"]) == report.ledger_rows == 3 + 20 * 5 + 4

    reopened = open_engine()
    assert dump_db() == closed  # opening changed nothing
    assert reopened.pools() == pools
    assert reopened.verify() == report
    # and it carries on from where it was, with the same carried fractions
    c = reopened.contribute(Decimal("3.33"), op_id="spin-after")
    assert c.versions == {n: p.version + 1 for n, p in pools.items()}
    assert reopened.verify().ok


def test_restart_state_equals_a_run_without_restart(
        open_engine: Callable[..., JackpotEngine], tmp_path: Path) -> None:
    """Carried fractions survive a restart: the amounts match an uninterrupted run."""
    straight = open_engine(tmp_path / "straight.db")
    restarted = open_engine(tmp_path / "restarted.db")
    for i in range(30):
        straight.contribute("0.000007")
        restarted.contribute("0.000007")
        if i % 10 == 9:
            restarted.close()
            restarted = open_engine(tmp_path / "restarted.db")
    assert ({n: (p.amount, p.version) for n, p in straight.pools().items()}
            == {n: (p.amount, p.version) for n, p in restarted.pools().items()})


def test_reopen_keeps_existing_levels_and_creates_missing_ones(
        open_engine: Callable[..., JackpotEngine],
        ledger: Callable[..., list[dict[str, Any]]]) -> None:
    engine = open_engine()
    engine.contribute(Decimal(100), groups="minor")
    engine.close()
    engine = open_engine(groups=[
        GroupConfig("minor", Decimal(5), Decimal("0.5")),  # exists: kept as it is
        GroupConfig("bonus", Decimal(20), Decimal("0.01"), cap=Decimal(50)),  # created
    ])
    assert engine.groups == ("bonus", "major", "mega", "minor")
    minor = engine.pool("minor")
    assert (minor.seed, minor.contribution_rate, minor.amount, minor.version) == (
        Decimal(100), Decimal("0.005"), Decimal("100.5"), 2)
    bonus = engine.pool("bonus")
    assert (bonus.seed, bonus.contribution_rate, bonus.cap, bonus.amount, bonus.version) == (
        Decimal(20), Decimal("0.01"), Decimal(50), Decimal(20), 1)
    assert [(r["op_id"], r["kind"], r["version_after"]) for r in ledger("bonus")] == [
        ("create:bonus", "create", 1)]
    c = engine.contribute(Decimal(10))
    assert c.contributions["bonus"] == Decimal("0.1")
    assert engine.verify().ok
    engine.close()
    assert open_engine().groups == ("bonus", "major", "mega", "minor")  # no groups: all kept


def test_new_file_with_groups_gets_only_those(open_engine: Callable[..., JackpotEngine]) -> None:
    engine = open_engine(groups=[GroupConfig("gold", 0, "0.1")])
    assert engine.groups == ("gold",)
    assert engine.contribute(5).balances == {"gold": Decimal("0.5")}
    assert engine.process_win("gold").amount == Decimal("0.5")
    assert engine.pool("gold").amount == 0


def test_open_refuses_duplicated_level_names(open_engine: Callable[..., JackpotEngine],
                                             db_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^groups name a level twice: 'minor' \(each level once\)$"):
        open_engine(groups=[GroupConfig("minor", 1, "0.1"), GroupConfig("minor", 2, "0.2")])
    assert not db_path.exists()


def test_open_refuses_what_is_not_a_group_config(open_engine: Callable[..., JackpotEngine],
                                                db_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^groups must hold GroupConfig objects, not dict"):
        open_engine(groups=[{"name": "minor"}])
    assert not db_path.exists()


def test_open_refuses_a_mapping_of_group_configs_saying_to_pass_its_values(
        open_engine: Callable[..., JackpotEngine], db_path: Path) -> None:
    # Iterated, a dict gives its keys: the error was "must hold GroupConfig objects, not
    # str", which does not say that the argument itself was a mapping.
    configs = {"minor": GroupConfig("minor", 1, "0.1")}
    with pytest.raises(ValidationError, match=(
            r"^groups must be an iterable of GroupConfig objects, not a mapping \(dict\): "
            r"pass its \.values\(\) \(each GroupConfig carries its own name\)$")):
        open_engine(groups=configs)
    assert not db_path.exists()
    assert open_engine(groups=configs.values()).groups == ("minor",)


def test_open_refuses_a_name_or_a_lone_group_config_saying_what_to_pass(
        open_engine: Callable[..., JackpotEngine], db_path: Path) -> None:
    # Iterated, "minor" gave "groups must hold GroupConfig objects, not str", and one
    # GroupConfig "... not GroupConfig": neither said what the argument should be.
    with pytest.raises(ValidationError, match=(
            r"^groups must be an iterable of GroupConfig objects, not a str \('minor'\): "
            r"each level is a GroupConfig\(name, seed, contribution_rate\); "
            r"pass None for the default levels$")):
        open_engine(groups="minor")
    with pytest.raises(ValidationError, match=(
            r"^groups must be an iterable of GroupConfig objects, not one GroupConfig: "
            r"put it in a list \(\[GroupConfig\(\.\.\.\)\]\)$")):
        open_engine(groups=GroupConfig("minor", 1, "0.1"))
    assert not db_path.exists()


def test_open_names_a_bad_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                               db_path: Path) -> None:
    monkeypatch.setenv("JACKPOT_LOCK_TIMEOUT_MS", "soon")
    with pytest.raises(ValidationError, match=r"JACKPOT_LOCK_TIMEOUT_MS='soon' is invalid"):
        JackpotEngine.open(db_path)
    assert not db_path.exists()


def test_open_reads_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                  db_path: Path) -> None:
    monkeypatch.setenv("JACKPOT_MAX_RETRY_ATTEMPTS", "7")
    with JackpotEngine.open(db_path) as engine:
        assert engine.settings.max_retry_attempts == 7


def test_open_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pools you are looking for" * 100)
    with pytest.raises(StorageError):
        JackpotEngine.open(path, settings=Settings())
    assert path.read_bytes() == b"these are not the pools you are looking for" * 100


def test_open_of_a_relative_path_in_a_deleted_working_directory_is_a_storage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(StorageError, match=r"cannot open database 'pools.db': its path cannot "
                                           r"be resolved \(No such file or directory\)"):
        JackpotEngine.open("pools.db", settings=Settings())


@pytest.mark.parametrize("name", ["data/", "pools.db/"])
def test_open_refuses_a_path_ending_with_a_separator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # realpath dropped the separator: "data/" became a new file named "data"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=f"path '{name}' ends with a separator, so it "
                                              "names a directory: name the database file in it"):
        JackpotEngine.open(name, settings=Settings())
    assert list(tmp_path.iterdir()) == []


def test_open_names_a_directory_or_a_missing_one(tmp_path: Path) -> None:
    # SQLite says only "unable to open database file" for both
    with pytest.raises(StorageError, match="it is a directory, not a file"):
        JackpotEngine.open(tmp_path, settings=Settings())
    missing = tmp_path / "no" / "such"
    with pytest.raises(StorageError,
                       match=f"there is no directory '{missing}' to create it in"):
        JackpotEngine.open(missing / "pools.db", settings=Settings())
    assert not (tmp_path / "no").exists()



def test_open_of_a_name_the_file_system_cannot_look_up_is_a_storage_error(
        tmp_path: Path) -> None:
    """Asking the file system why SQLite failed may fail too (a name too long, a folder
    the user may not search): that was an OSError instead of the StorageError."""
    path = tmp_path / f"{'x' * 300}.db"  # past any file system's 255-byte name
    with pytest.raises(StorageError, match=r"^cannot open database '.+\.db': its name is too "
                                           r"long \(SQLite makes its -journal file beside "
                                           r"it\): \d+ bytes is the longest name there"):
        JackpotEngine.open(path, settings=Settings())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("over", [0, 7])  # (the name alone fits; its -journal is 8 bytes longer)
def test_open_of_a_name_too_long_for_its_journal_makes_nothing_and_says_so(
        tmp_path: Path, over: int) -> None:
    """A name of 248-255 bytes (of 255): SQLite made the file, empty, then failed at its
    -journal with only "unable to open database file", leaving the empty file behind."""
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("y" * (longest - len("-journal") + 1 + over - len(".db")) + ".db")
    with pytest.raises(StorageError, match=(
            f"its name is too long \\(SQLite makes its -journal file beside it\\): {longest} "
            "bytes is the longest name there; give the database a shorter name$")):
        JackpotEngine.open(path, settings=Settings())
    assert list(tmp_path.iterdir()) == []
    shorter = tmp_path / ("y" * (longest - len("-journal") - len(".db")) + ".db")
    JackpotEngine.open(shorter, settings=Settings()).close()  # (the longest that opens)

def test_an_existing_database_of_such_a_name_opens(tmp_path: Path) -> None:
    """Only a new file needs a -journal: an existing one is in WAL mode, whose -wal and
    -shm names fit; and a link is measured by its target's name, which SQLite uses."""
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    made = tmp_path / "made.db"
    with JackpotEngine.open(made, settings=Settings()) as engine:
        engine.contribute("10", groups="minor", op_id="bet-1")
    long_name = tmp_path / ("y" * (longest - len("-shm") - len(".db")) + ".db")
    made.rename(long_name)
    with JackpotEngine.open(long_name, settings=Settings()) as engine:
        assert engine.contribute("10", groups="minor", op_id="bet-2").versions == {"minor": 3}
    link = tmp_path / ("l" * (longest - len(".db")) + ".db")  # (no room for a -journal)
    short = tmp_path / "short.db"
    link.symlink_to(short)
    with JackpotEngine.open(link, settings=Settings()) as engine:  # (made as short.db)
        assert engine.contribute("10", groups="minor", op_id="bet-1").versions == {"minor": 2}
    assert short.is_file()


# -- closing ----------------------------------------------------------------------------

def test_calls_after_close_raise_engine_closed(engine: JackpotEngine) -> None:
    engine.contribute(Decimal(1))
    engine.close()
    calls = [
        lambda: engine.contribute(Decimal(1)),
        lambda: engine.contribute(Decimal(1), groups="minor", op_id="late"),
        lambda: engine.process_win("minor"),
        lambda: engine.update_config("minor", seed=Decimal(1)),
        lambda: engine.pool("minor"),
        engine.pools,
        engine.verify,
    ]
    for call in calls:
        with pytest.raises(EngineClosedError, match="closed"):
            call()
    engine.close()  # idempotent


def test_close_stops_every_actor(open_engine: Callable[..., JackpotEngine]) -> None:
    before = set(pykka.ActorRegistry.get_all())
    engine = open_engine()
    engine.contribute(Decimal(1))
    started = set(pykka.ActorRegistry.get_all()) - before
    assert len(started) == 5  # one per level, the coordinator and the WAL checkpointer
    engine.close()
    assert not any(ref.is_alive() for ref in started)
    assert set(pykka.ActorRegistry.get_all()) & started == set()


def test_engine_is_a_context_manager(db_path: Path, settings: Settings,
                                     dump_db: Callable[..., Any]) -> None:
    with JackpotEngine.open(db_path, settings=settings) as engine:
        c = engine.contribute(Decimal("2.50"), groups=("minor", "major"), op_id="spin-42")
    with pytest.raises(EngineClosedError):
        engine.contribute(Decimal(1))
    with JackpotEngine.open(db_path, settings=settings) as again:
        assert again.contribute(Decimal("2.50"), groups=("minor", "major"),
                                op_id="spin-42").balances == c.balances


def test_context_manager_closes_on_error(db_path: Path, settings: Settings) -> None:
    opened: list[JackpotEngine] = []

    def use_and_fail() -> None:
        with JackpotEngine.open(db_path, settings=settings) as engine:
            opened.append(engine)
            msg = "boom"
            raise RuntimeError(msg)

    with pytest.raises(RuntimeError, match="boom"):
        use_and_fail()
    with pytest.raises(EngineClosedError):
        opened[0].pools()


def test_close_waits_for_an_operation_in_flight(engine: JackpotEngine,
                                                monkeypatch: pytest.MonkeyPatch,
                                                ledger: Callable[..., list[dict[str, Any]]],
                                                ) -> None:
    """An operation already started when close() is called still gets its result."""
    entered, release = threading.Event(), threading.Event()
    real = domain.contribute

    def slow_contribute(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(domain, "contribute", slow_contribute)
    worker, results = in_thread(
        lambda: engine.contribute(Decimal(2), groups="minor", op_id="in-flight"))
    assert entered.wait(10)
    waiting = threading.Event()
    wait_for = engine._cond.wait_for

    def noting_wait(predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        if not predicate():
            waiting.set()  # close() waits for the call in flight
        return wait_for(predicate, timeout)

    monkeypatch.setattr(engine._cond, "wait_for", noting_wait)
    closer = threading.Thread(target=engine.close)
    closer.start()
    try:
        assert waiting.wait(10), "close() did not wait for the operation in flight"
        closed_early = not closer.is_alive()  # (it cannot end before `release`)
    finally:
        release.set()
    worker.join(10)
    closer.join(10)
    assert not closed_early
    assert [r.balances for r in results] == [{"minor": Decimal("100.01")}]
    assert [r["op_id"] for r in ledger("minor")] == ["create:minor", "in-flight"]
    with pytest.raises(EngineClosedError):
        engine.contribute(Decimal(1))


def test_verify_replays_settings_rows_without_holding_every_win_and_hit(tmp_path: Path) -> None:
    # The settings check read every win and hit row of every level into a list
    # before replaying them (~500 bytes a row): a mystery level that hits often
    # made verify() need gigabytes on a long-running database.
    import tracemalloc  # noqa: PLC0415

    from jackpot.audit import audit  # noqa: PLC0415
    from jackpot.storage import open_store  # noqa: PLC0415

    path = tmp_path / "hits.db"
    mini = GroupConfig("mini", Decimal(0), Decimal("0.00009"),
                        must_hit_by=Decimal("0.000002"))  # every bet: 45 to 90 hits
    with JackpotEngine.open(path, [mini]) as engine:
        for _ in range(300):
            engine.contribute(Decimal(1))
        hits = len(engine.history("mini", limit=10_000))
    assert hits == 10_000  # and many more
    store = open_store(str(path), create=False)
    try:
        tracemalloc.start()
        try:
            report = audit(store)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    assert report.ok, report.problems
    assert report.ledger_rows > 30_000
    assert peak < 2_000_000  # was ~18 MB: the rows of 36,000 hits


def test_a_level_another_engine_added_is_read_like_pools_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "two.db"
    with JackpotEngine.open(path, [GroupConfig("minor", Decimal(100), Decimal("0.01"))]) as one:
        with JackpotEngine.open(path, [GroupConfig("bonus", Decimal(1), Decimal("0.1"))]) as two:
            two.contribute(Decimal(10), groups="bonus", op_id="b-1")
            two.process_win("bonus", op_id="w-1", winner="p")
        assert list(one.pools()) == ["bonus", "minor"]
        assert one.pool("bonus") == one.pools()["bonus"]  # was: UnknownGroupError
        assert [e.op_id for e in one.history("bonus")] == ["w-1"]
        with pytest.raises(UnknownGroupError, match=r"^unknown level 'nope': this database "
                                                    r"has bonus, minor$"):
            one.pool("nope")
        with pytest.raises(ValidationError):
            one.pool("no pe")


def test_open_warns_when_it_keeps_a_level_whose_given_settings_differ(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "kept.db"
    JackpotEngine.open(path, [GroupConfig("minor", Decimal(100), Decimal("0.01"))]).close()
    with caplog.at_level("WARNING", logger="jackpot"):
        JackpotEngine.open(path, [GroupConfig("minor", Decimal(100), Decimal("0.01"))]).close()
        assert caplog.records == []  # the same settings: nothing to say
        with JackpotEngine.open(path, [GroupConfig("minor", Decimal(100), Decimal("0.5"),
                                                   cap=Decimal(600))]) as engine:
            assert engine.pool("minor").contribution_rate == Decimal("0.01")  # kept
    [record] = caplog.records
    assert record.getMessage() == (
        f"level minor already exists in {path} and is kept as it is there: contribution_rate "
        "0.01 (given 0.5), cap None (given 600.000000); open() creates missing levels only "
        "(change a level's settings with update_config)")


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


def test_open_keeps_a_level_and_creates_the_others_though_warning_of_it_raises(
        tmp_path: Path) -> None:
    # The warning comes after the new levels are committed: raising, it
    # failed an open that had done its work, with the filter's error.
    path = tmp_path / "kept.db"
    JackpotEngine.open(path, [GroupConfig("minor", Decimal(100), Decimal("0.01"))]).close()
    log, raising = logging.getLogger("jackpot"), _RaisingFilter()
    log.addFilter(raising)
    try:
        with JackpotEngine.open(path, [
                GroupConfig("minor", Decimal(100), Decimal("0.5")),
                GroupConfig("major", Decimal(1000), Decimal("0.01"))]) as engine:
            assert engine.pool("minor").contribution_rate == Decimal("0.01")  # kept
            assert engine.pool("major").amount == Decimal(1000)  # created
    finally:
        log.removeFilter(raising)


class _RaisingOnKept(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "outcome", None) == "kept":
            msg = "log filter failed"
            raise RuntimeError(msg)
        return True


def test_a_failed_report_that_involves_no_operation_is_not_told_as_an_operations(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Was "reporting an operation's outcome failed; the outcome stands": open()
    # keeping a level is no operation (nor is an actor's start, stop or restart).
    path = tmp_path / "kept.db"
    JackpotEngine.open(path, [GroupConfig("minor", Decimal(100), Decimal("0.01"))]).close()
    log, raising = logging.getLogger("jackpot"), _RaisingOnKept()
    log.addFilter(raising)
    try:
        with caplog.at_level("WARNING", logger="jackpot"):
            JackpotEngine.open(path, [GroupConfig("minor", Decimal(100), Decimal("0.5"))]).close()
    finally:
        log.removeFilter(raising)
    [record] = caplog.records
    assert (record.levelname, record.getMessage(), record.outcome) == (  # type: ignore[attr-defined]
        "ERROR", "a report failed (Logger.warning); what it was reporting stands all the same",
        "report_failed")
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "log filter failed"


class _RaisingOnPaid(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("win on "):
            msg = "log filter failed"
            raise RuntimeError(msg)
        return True


def test_a_failed_report_of_an_operation_names_the_operation_it_was_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Was op_id, operation and level null: a lost "paid" line could not be
    # told whose win it was from the line that said it was lost.
    with JackpotEngine.open(tmp_path / "paid.db") as engine:
        log, raising = logging.getLogger("jackpot"), _RaisingOnPaid()
        log.addFilter(raising)
        try:
            with caplog.at_level("INFO", logger="jackpot"):
                won = engine.process_win("minor", winner="p-1", op_id="win-1")
        finally:
            log.removeFilter(raising)
    assert won.group == "minor"  # committed, and answered as such
    [record] = [r for r in caplog.records if getattr(r, "outcome", None) == "report_failed"]
    assert record.getMessage() == ("a report failed (log_success); what it was reporting "
                                   "stands all the same")
    assert (record.op_id, record.operation, record.level) == (  # type: ignore[attr-defined]
        "win-1", "win", "minor")


def test_a_read_waits_for_the_one_before_it_at_most_the_lock_timeout(
        open_engine: Callable[..., JackpotEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads share one connection, one at a time: behind a read the storage
    # never answers (a frozen mount), every later read hung with it.
    engine = open_engine(settings=Settings(lock_timeout_ms=200))
    reading, release = threading.Event(), threading.Event()
    real = jackpot.reads.pools

    def stuck(reader: Any) -> Any:
        reading.set()
        assert release.wait(60)
        return real(reader)

    monkeypatch.setattr(jackpot.reads, "pools", stuck)
    t, first = in_thread(engine.pools)
    assert reading.wait(60)
    monkeypatch.setattr(jackpot.reads, "pools", real)
    with pytest.raises(LockTimeoutError, match=r"a read waited 200 ms .* nothing was read"):
        engine.pool("minor")
    with pytest.raises(LockTimeoutError):
        engine.history("minor")
    release.set()
    t.join()
    assert sorted(first[0]) == sorted(engine.pools())  # the slow read ended well, and so do later ones
