"""A worker process for tests/backends: one engine on a shared database, one plan.

Run as a script (not collected by pytest):

    python _engine_worker.py PLAN.json RESULT.json

PLAN.json holds {"target": path or URL, "settings": {...}, "ops": [...]}. The
worker opens its own engine, prints "ready", waits for one line on stdin (the
parent releases every worker at once), runs its ops in order and writes one
outcome per op, plus its engine's counters, to RESULT.json. A JackpotError is
an outcome ({"error": ..., "message": ...}) for the parent to judge; anything
else crashes the worker with a traceback and a non-zero exit.

Ops (amounts as decimal strings):
    {"kind": "contribute", "bet": "2.50", "groups": [...], "op_id": str}
    {"kind": "win", "group": "minor", "op_id": str}
    {"kind": "config", "group": "minor", "changes": {...}, "op_id": str}
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from jackpot import JackpotEngine, JackpotError, Settings


def run_op(engine: JackpotEngine, op: dict[str, Any]) -> dict[str, Any]:
    kind = op["kind"]
    if kind == "contribute":
        result: Any = engine.contribute(Decimal(op["bet"]), groups=op["groups"],
                                        op_id=op["op_id"])
    elif kind == "win":
        result = engine.process_win(op["group"], op_id=op["op_id"])
    elif kind == "config":
        result = engine.update_config(op["group"], op_id=op["op_id"], **op["changes"])
    else:
        msg = f"unknown op kind {kind!r}"
        raise ValueError(msg)
    return {"result": result.to_record(), "replayed": result.replayed}


def main(plan_path: str, result_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    outcomes: list[dict[str, Any]] = []
    with JackpotEngine.open(plan["target"], settings=Settings(**plan["settings"])) as engine:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        for op in plan["ops"]:
            try:
                outcomes.append({"op": op, **run_op(engine, op)})
            except JackpotError as e:
                outcomes.append({"op": op, "error": type(e).__name__, "message": str(e)})
        stats = engine.stats.snapshot()
    Path(result_path).write_text(json.dumps({"outcomes": outcomes, "stats": stats}),
                                 encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
