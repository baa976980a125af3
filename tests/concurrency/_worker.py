"""A worker process for the multi-process tests: one engine, one plan of operations.

Run as a script (not imported by pytest):

    python _worker.py PLAN.json RESULT.json

PLAN.json holds {"db": path, "settings": {...}, "ops": [...]}. The worker opens
its own engine on the shared file, replays the parent's WARM_UP contribution
(so every actor has started), prints "ready", waits for one line on stdin
(the parent releases every worker at once), runs the ops in order and writes
one outcome per op plus its engine's counters (those of the plan only) to
RESULT.json. A JackpotError is an outcome (the parent decides whether it was
allowed); anything else crashes the worker with a traceback and a non-zero exit.

Op forms (amounts are decimal strings, never floats):
    {"kind": "contribute", "bet": "2.50", "groups": ["minor"] | null, "op_id": str | null}
    {"kind": "win", "group": "minor", "amount": "5" | null, "op_id": str | null}
    {"kind": "config", "group": "minor", "changes": {...}, "op_id": str | null,
     "expected_version": int | "current" | null}   ("current": read it just before)
"""

from __future__ import annotations

import json
import logging
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from jackpot import JackpotEngine, JackpotError, Settings

WARM_UP = "warm-up"
"""op_id of a 1-unit bet on every level that the parent applies before starting workers."""


def run_op(engine: JackpotEngine, op: dict[str, Any]) -> dict[str, Any]:
    """Run one op; return its result record plus the replayed flag."""
    kind = op["kind"]
    if kind == "contribute":
        result: Any = engine.contribute(Decimal(op["bet"]), groups=op["groups"],
                                        op_id=op.get("op_id"))
    elif kind == "win":
        amount = op.get("amount")
        result = engine.process_win(op["group"], op_id=op.get("op_id"),
                                    amount=None if amount is None else Decimal(amount),
                                    winner=op.get("winner"))
    elif kind == "config":
        expected = op.get("expected_version")
        if expected == "current":
            # Read, then decide: another process may move the level in between,
            # which is exactly the stale expected_version this op must refuse.
            expected = engine.pool(op["group"]).version
        result = engine.update_config(op["group"], op_id=op.get("op_id"),
                                      expected_version=expected, **op["changes"])
    else:
        msg = f"unknown op kind {kind!r}"
        raise ValueError(msg)
    record: dict[str, Any] = result.to_record()
    record["replayed"] = result.replayed
    return record


def main(plan_path: str, result_path: str) -> None:
    # The parent keeps stderr: an actor that dies (pykka logs why) shows up there.
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    outcomes: list[dict[str, Any]] = []
    with JackpotEngine.open(plan["db"], settings=Settings(**plan["settings"])) as engine:
        # Replay a contribution the parent made to every level: it passes the
        # coordinator and every level's actor, so all of them have started
        # (opened their connections, loaded their levels) before the race.
        warm = engine.contribute(Decimal(1), groups=None, op_id=WARM_UP)
        if not warm.replayed:
            sys.exit(4)
        before = engine.stats.snapshot()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "go":
            sys.exit(3)
        for i, op in enumerate(plan["ops"]):
            try:
                outcomes.append({"i": i, "op": op, "result": run_op(engine, op)})
            except JackpotError as e:
                outcomes.append({"i": i, "op": op, "error": type(e).__name__,
                                 "message": str(e), "cause": repr(e.__cause__)})
        stats = {k: v - before.get(k, 0) for k, v in engine.stats.snapshot().items()}
    Path(result_path).write_text(json.dumps({"outcomes": outcomes, "stats": stats}),
                                 encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
