"""A worker whose write-ahead log fsync fails once, at a commit (for test_commit_fsync.py).

Run as a script: python _fsync_worker.py DB. SQLite's default VFS is wrapped
(APSW VFS shim) so that, once armed, the next sync of the `-wal` file raises
an I/O error after the commit's frames were written, as a failing disk would.
The worker applies one bet ("before"), arms the fault, sends another
("failing"), prints what it was told as one JSON line, and waits to be killed.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Any

import apsw

ARMED = [False]


class _File(apsw.VFSFile):
    def __init__(self, name: Any, flags: list[int]) -> None:
        self._wal = str(name.filename() if hasattr(name, "filename") else name).endswith("-wal")
        super().__init__("unix", name, flags)

    def xSync(self, flags: int) -> None:  # noqa: N802 - APSW's name
        if self._wal and ARMED[0]:
            ARMED[0] = False
            msg = "injected: fsync of the WAL failed"
            raise apsw.IOError(msg)
        super().xSync(flags)


class _VFS(apsw.VFS):
    def __init__(self) -> None:
        super().__init__("failing-fsync", base="unix", makedefault=True)

    def xOpen(self, name: Any, flags: list[int]) -> apsw.VFSFile:  # noqa: N802 - APSW's name
        return _File(name, flags)


def main() -> None:
    vfs = _VFS()
    from jackpot import JackpotEngine, JackpotError  # noqa: PLC0415 - after the VFS

    engine = JackpotEngine.open(sys.argv[1])
    engine.contribute(Decimal(10), groups="minor", op_id="before")
    ARMED[0] = True
    told: dict[str, Any]
    try:
        result = engine.contribute(Decimal(10), groups="minor", op_id="failing")
        told = {"applied": result.to_record()}
    except JackpotError as e:
        told = {"error": type(e).__name__, "message": str(e),
                "outcome_unknown": getattr(e, "outcome_unknown", None)}
    sys.stdout.write(json.dumps(told) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()  # killed here, before anything else writes the file
    del vfs


if __name__ == "__main__":
    main()
