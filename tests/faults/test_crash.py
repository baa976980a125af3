"""Crash safety: SIGKILL a process that is running operations, at random moments.

A child process (tests/faults/_crash_worker.py) runs contributions (to one,
two and all three levels) and wins, and logs each op_id with fsync only after
the call returned. The parent waits for a random number of acknowledgements
(read from the child's pipe, never a fixed sleep), kills it with SIGKILL,
reopens the file and checks: every acknowledged op_id is in the ledger with
one row per level it touched; the one operation in flight is there entirely
or not at all; nothing else is; `verify()` is ok and `PRAGMA integrity_check`
says ok. The next child resends the operation that was in flight, so across
all kills each operation is applied exactly once.

JACKPOT_SLOW=1 kills 60 times; the default run kills a few times.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import apsw
import pytest

from _helpers import read_line
from jackpot import GroupConfig, JackpotEngine

SLOW = os.environ.get("JACKPOT_SLOW") == "1"
KILLS = 60 if SLOW else 6
WORKER = Path(__file__).with_name("_crash_worker.py")


def _load_worker() -> ModuleType:
    """Load the worker's plan by path (the parent must know what each op_id did)."""
    spec = importlib.util.spec_from_file_location("_crash_worker", WORKER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plan = _load_worker()

GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("mega", Decimal(10000), Decimal("0.0003217")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)


def acknowledged(log: Path) -> list[str]:
    """Return the complete lines of the log; cut a line the kill left half-written."""
    data = log.read_bytes() if log.exists() else b""
    complete = data[:data.rfind(b"\n") + 1]
    if complete != data:
        log.write_bytes(complete)
    return complete.decode().split()


def check_after_crash(db: Path, acked: list[str], where: str) -> None:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        rows = Counter(r[0] for r in conn.execute("SELECT op_id FROM ledger"))
    finally:
        conn.close()
    assert integrity == ["ok"], f"{where}: {integrity}"

    for i, op_id in enumerate(acked):
        assert op_id == plan.op_id(i), f"{where}: acknowledgement {i} is {op_id}"
        assert rows[op_id] == len(plan.levels_of(i)), f"{where}: {op_id} has {rows[op_id]} rows"
    in_flight = len(acked)
    rows_in_flight = rows[plan.op_id(in_flight)]
    assert rows_in_flight in {0, len(plan.levels_of(in_flight))}, (
        f"{where}: {plan.op_id(in_flight)} half applied ({rows_in_flight} rows)")
    expected = {*acked, plan.op_id(in_flight), *(f"create:{g.name}" for g in GROUPS)}
    assert set(rows) <= expected, f"{where}: unexpected rows of {set(rows) - expected}"

    with JackpotEngine.open(db) as engine:
        report = engine.verify()
        assert report.ok, (where, report.problems)
        assert report.ledger_rows == sum(rows.values())


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_operation(tmp_path: Path) -> None:
    db, log, err = tmp_path / "pools.db", tmp_path / "acks.log", tmp_path / "worker.stderr"
    with JackpotEngine.open(db, GROUPS):
        pass
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    acked: list[str] = []
    for kill in range(KILLS):
        wanted = rng.randint(0, 25)  # acknowledgements to wait for before this kill
        where = f"seed {seed}, kill {kill} after {wanted} more acknowledgements"
        with err.open("wb") as err_file:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(db), str(log), str(len(acked))],
                stdout=subprocess.PIPE, stderr=err_file, bufsize=0)
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            for _ in range(wanted):
                line = read_line(proc.stdout, deadline, "acknowledgement")
                assert line, f"{where}: the worker died: {err.read_text()[-3000:]}"
            # Let the child run on for a random part of an operation, so the
            # kill lands anywhere in it (any moment is a valid test; this only
            # spreads them out).
            time.sleep(rng.random() * 0.004)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL, f"{where}: {err.read_text()[-3000:]}"
        before = len(acked)
        acked = acknowledged(log)
        assert len(acked) >= before + wanted, where
        check_after_crash(db, acked, where)

    # After all that, the engine still serves: the operation in flight at the
    # last kill is sent once more and is applied (or replayed), exactly once.
    with JackpotEngine.open(db) as engine:
        result = plan.operation(engine, len(acked))
        assert result.op_id == plan.op_id(len(acked))
    check_after_crash(db, [*acked, plan.op_id(len(acked))], "after the last kill")
