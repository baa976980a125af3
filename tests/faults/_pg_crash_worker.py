"""A worker the PostgreSQL crash tests kill or cut off: one engine, a fixed plan, acks logged.

Run as a script (not collected by pytest):

    python _pg_crash_worker.py URL LOG WORKER START STOP

Worker WORKER runs operations START, START + 1, ... (below STOP; -1: forever)
of its deterministic plan (`request`) on its own engine at URL. Only after a
call has returned does it append one JSON line to LOG (flush + fsync: the
acknowledgement survives a SIGKILL) and then print the op_id, so the parent
can count acknowledgements as they happen. A call that raises a JackpotError
(a lost server connection, say) is logged as such and sent again with the
same op_id, as a game server would: the retry either applies it or replays
the first result. Anything else is a bug: the worker dies with a traceback.

A restart begins with the operation that was in flight at the kill: it was
either applied before the kill (and is now a replay) or not at all.
"""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from jackpot import JackpotEngine, JackpotError, StorageError

LEVELS = ("major", "mega", "minor")
GROUPS: tuple[tuple[str, ...], ...] = (("minor",), ("major", "minor"), LEVELS, ("mega",))
MAX_ATTEMPTS = 50  # per operation: far more failures in a row than the tests provoke


def op_id(worker: int, i: int) -> str:
    return f"w{worker}-{i:05d}"


def request(worker: int, i: int) -> dict[str, Any]:
    """Operation i of a worker: mostly bets on one to three levels, every 7th a whole-pool win.

    A whole-pool win never fails for want of money (a pool never falls below
    its seed), so every request succeeds whatever the other workers did.
    """
    if i % 7 == 6:
        return {"kind": "win", "group": LEVELS[(i // 7 + worker) % 3],
                "winner": f"player-{worker}"}
    bet = Decimal(1 + (i * 7919 + worker * 104_729) % 50_000).scaleb(-2)
    return {"kind": "contribute", "bet": str(bet), "groups": list(GROUPS[(i + worker) % 4])}


def send(engine: JackpotEngine, oid: str, req: dict[str, Any]) -> Any:
    if req["kind"] == "win":
        return engine.process_win(req["group"], op_id=oid, winner=req["winner"])
    return engine.contribute(Decimal(req["bet"]), groups=tuple(req["groups"]), op_id=oid)


def open_engine(url: str) -> JackpotEngine:
    """Open the engine; again if the server ended the session meanwhile, as a client would.

    A session terminated while `open()` runs fails it with StorageError
    ("nothing was changed: retry"); the parent may strike before every
    worker has finished opening.
    """
    for attempt in range(MAX_ATTEMPTS):
        try:
            return JackpotEngine.open(url)
        except StorageError:
            if attempt == MAX_ATTEMPTS - 1:
                raise
    raise AssertionError  # pragma: no cover - the loop returns or raises


def main(url: str, log: str, worker: int, start: int, stop: int) -> None:
    with open_engine(url) as engine, Path(log).open("ab") as acks:
        def write(line: dict[str, Any]) -> None:
            acks.write(json.dumps(line, sort_keys=True).encode() + b"\n")
            acks.flush()
            os.fsync(acks.fileno())

        i = start
        while i != stop:
            oid = op_id(worker, i)
            for attempt in range(MAX_ATTEMPTS):
                try:
                    result = send(engine, oid, request(worker, i))
                except JackpotError as e:
                    write({"op_id": oid, "attempt": attempt, "error": type(e).__name__,
                           "message": str(e)})
                    continue
                write({"op_id": oid, "attempt": attempt, "result": result.to_record(),
                       "replayed": result.replayed})
                break
            else:
                msg = f"{oid}: {MAX_ATTEMPTS} attempts failed"
                raise RuntimeError(msg)
            sys.stdout.write(f"{oid}\n")
            sys.stdout.flush()
            i += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
