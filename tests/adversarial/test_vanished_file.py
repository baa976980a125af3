"""A database file removed (or emptied) under a running engine is never silently recreated.

Only `open()` creates a database; the connections the engine opens later (a
restarted actor's, the health probe's) refuse a missing or empty file, so a
restart cannot start counting pools from a fresh, empty ledger.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from jackpot import AsyncJackpotEngine, JackpotEngine, Settings, StorageError, ValidationError
from jackpot.storage import open_store


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_a_restarted_actor_does_not_recreate_a_vanished_file(db_path: Path, how: str) -> None:
    engine = JackpotEngine.open(db_path)
    try:
        engine.contribute("10", groups="minor", op_id="before")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        if how == "emptied":
            db_path.write_bytes(b"")
        engine._pools["minor"].actor_ref.stop()  # the level's actor must be restarted
        with pytest.raises(StorageError):
            engine.contribute("10", groups="minor", op_id="after")
        report = engine.health()
        assert not report.ok
        if how == "removed":
            assert not db_path.exists()  # neither the restart nor the probe made a new one
        else:
            assert db_path.stat().st_size == 0
    finally:
        engine.close()


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_open_with_create_false_refuses_a_missing_or_empty_file(tmp_path: Path, how: str) -> None:
    path = tmp_path / "gone.db"
    if how == "empty":
        path.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(path, create=False)
    if how == "missing":
        assert str(info.value) == f"cannot open database {str(path)!r}: it does not exist"
        assert not path.exists()
    else:
        assert "holds no jackpot database" in str(info.value)
        assert path.stat().st_size == 0
    assert not Path(f"{path}-wal").exists()



def test_open_with_no_groups_refuses_an_empty_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(path, [])
    assert str(info.value) == f"cannot open database {str(path)!r}: it holds no jackpot database"
    assert path.stat().st_size == 0  # was: the schema written, in WAL mode, then refused
    assert not Path(f"{path}-wal").exists()
    # so a server's create=False still refuses it, instead of creating the default levels
    with pytest.raises(StorageError, match="holds no jackpot database"):
        JackpotEngine.open(path, create=False)
    assert path.stat().st_size == 0

def test_open_with_create_false_refuses_a_schema_without_levels(tmp_path: Path) -> None:
    # What a first open leaves when it stops between the schema and the levels.
    path = tmp_path / "half.db"
    store = open_store(str(path))
    store.migrate()
    store.close()
    with pytest.raises(StorageError) as info:
        JackpotEngine.open(path, create=False)
    assert str(info.value) == (f"cannot open database {str(path)!r}: it holds no levels "
                               "(with create=False none are created)")
    store = open_store(str(path), create=False)
    try:
        with store.read():
            assert store.load_levels() == {}  # was: minor, major and mega created
    finally:
        store.close()
    with JackpotEngine.open(path) as engine:  # create=True finishes what the first open began
        assert engine.groups == ("major", "mega", "minor")


def test_a_refused_open_leaves_the_jackpot_logger_level_alone(tmp_path: Path) -> None:
    log = logging.getLogger("jackpot")
    before = log.level
    quiet = Settings(log_level="critical", enable_metrics=False)
    with pytest.raises(ValidationError, match="groups must be"):
        JackpotEngine.open(tmp_path / "x.db", 5, settings=quiet)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="create must be"):
        JackpotEngine.open(tmp_path / "x.db", settings=quiet, create="no")  # type: ignore[arg-type]
    assert log.level == before
    assert not (tmp_path / "x.db").exists()


def test_an_open_refused_by_the_database_leaves_the_jackpot_logger_level_alone(
        tmp_path: Path) -> None:
    log = logging.getLogger("jackpot")
    before = log.level
    loud = Settings(log_level="debug", enable_metrics=False)
    half = tmp_path / "half.db"  # a schema without levels
    store = open_store(str(half))
    store.migrate()
    store.close()
    try:
        log.setLevel(logging.WARNING)
        with pytest.raises(StorageError, match="it does not exist"):
            JackpotEngine.open(tmp_path / "gone.db", settings=loud, create=False)
        assert log.level == logging.WARNING  # was DEBUG: set before the file was looked at
        with pytest.raises(StorageError, match="it holds no levels"):
            JackpotEngine.open(half, settings=loud, create=False)
        assert log.level == logging.WARNING
        with JackpotEngine.open(tmp_path / "new.db", settings=loud):
            assert log.level == logging.DEBUG  # an open that succeeds sets it, as before
    finally:
        log.setLevel(before)


def test_open_with_create_false_opens_an_existing_database(db_path: Path) -> None:
    JackpotEngine.open(db_path).close()
    with JackpotEngine.open(db_path, create=False) as engine:
        assert engine.groups == ("major", "mega", "minor")


def test_open_refuses_a_create_that_is_not_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="create must be True or False, not 'no'"):
        JackpotEngine.open(tmp_path / "x.db", create="no")  # type: ignore[arg-type]
    assert not (tmp_path / "x.db").exists()


def test_async_open_passes_create_through(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    with pytest.raises(StorageError, match="it does not exist"):
        asyncio.run(AsyncJackpotEngine.open(path, create=False))
    assert not path.exists()


def test_a_cli_write_command_does_not_recreate_a_file_that_vanished_after_its_check(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from jackpot import _cli  # noqa: PLC0415 - the command's internals, for the race

    JackpotEngine.open(db_path).close()
    checked = _cli._read

    def check_then_vanish(opts: Any, reading: Any) -> Any:
        done = checked(opts, reading)  # the file was there when the command looked
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        return done

    monkeypatch.setattr(_cli, "_read", check_then_vanish)
    status = _cli.run(["contribute", "10", "--level", "minor", "--db", str(db_path)])
    assert status == 2
    assert capsys.readouterr().err == (
        f"jackpot: error: cannot open database {str(db_path)!r}: it does not exist\n")
    assert not db_path.exists()
