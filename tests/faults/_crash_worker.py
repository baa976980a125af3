"""A worker the crash test kills with SIGKILL: it runs operations and logs each one acknowledged.

Run as a script (not imported by pytest):

    python _crash_worker.py DB LOG START

It runs operation START, START + 1, ... of a fixed, deterministic plan (see
`operation`), forever. Only after a call has returned does it append the
op_id to LOG (flush + fsync: the acknowledgement survives the kill), then
print it, so the parent can count acknowledgements as they happen. A restart
begins with the operation that was in flight at the last kill: it was either
applied before the kill (and is now a replay) or not at all.
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from jackpot import JackpotEngine

LEVELS = ("major", "mega", "minor")
GROUPS: tuple[tuple[str, ...] | None, ...] = (("minor",), ("major", "minor"), None, ("mega",))


def op_id(i: int) -> str:
    return f"{'w' if i % 9 == 8 else 'c'}{i:06d}"


def levels_of(i: int) -> tuple[str, ...]:
    """The levels operation i touches (one ledger row each)."""
    if i % 9 == 8:
        return (LEVELS[(i // 9) % 3],)
    return GROUPS[i % 4] or LEVELS


def operation(engine: JackpotEngine, i: int) -> Any:
    if i % 9 == 8:  # a whole-pool win: a pool never falls below its seed, so it can pay
        return engine.process_win(levels_of(i)[0], op_id=op_id(i), winner=f"player-{i % 5}")
    bet = Decimal(1 + (i * 7919) % 50_000).scaleb(-2)
    return engine.contribute(bet, groups=GROUPS[i % 4], op_id=op_id(i))


def main(db: str, log: str, start: int) -> None:
    with JackpotEngine.open(db) as engine, Path(log).open("ab") as acks:
        i = start
        while True:
            operation(engine, i)
            acks.write(f"{op_id(i)}\n".encode())
            acks.flush()
            os.fsync(acks.fileno())
            sys.stdout.write(f"{op_id(i)}\n")
            sys.stdout.flush()
            i += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
