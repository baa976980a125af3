"""A replay whose stored first result cannot be read fails alone, with a StorageError.

Group commit puts it in one transaction with other requests; a KeyError from
rebuilding the record used to abandon the whole batch, failing every
operation in it (each of which would have succeeded alone) with a raw KeyError.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import TYPE_CHECKING

import apsw

from jackpot import JackpotEngine, StorageError, money
from jackpot.results import Contribution
from jackpot.service import fingerprint

if TYPE_CHECKING:
    from pathlib import Path


def test_an_unreadable_stored_result_fails_its_replay_alone(tmp_path: Path) -> None:
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    request = {"kind": "contribute", "bet": money.parse_amount("10", name="bet"),
               "groups": ["minor"]}
    conn = apsw.Connection(str(db))
    conn.execute("INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                 "VALUES ('forged', 'contribute', ?, '{}', 0)", (fingerprint(request),))
    conn.close()
    with JackpotEngine.open(db) as engine:
        guard, box = engine._guards["minor"], engine._mailboxes["minor"]
        taken = threading.Event()
        real_take = box.take

        def take() -> object:
            got = real_take()
            taken.set()
            return got

        box.take = take  # type: ignore[method-assign]
        results: dict[str, Contribution | BaseException] = {}

        def call(op_id: str) -> None:
            try:
                results[op_id] = engine.contribute(Decimal(10), groups="minor", op_id=op_id)
            except Exception as e:  # recorded for the assertions
                results[op_id] = e

        guard.lock.acquire()  # as a multi-level batch would: the actor waits for it
        blocker = threading.Thread(target=call, args=("blocker",))
        blocker.start()
        assert taken.wait(30)  # the actor holds "blocker" and waits for the guard
        pair = [threading.Thread(target=call, args=(op_id,)) for op_id in ("forged", "fine")]
        for t in pair:
            t.start()
        while len(box._items) < 2:  # both queued behind "blocker": one batch
            threading.Event().wait(0.001)
        guard.lock.release()
        for t in (blocker, *pair):
            t.join(30)
        forged, fine = results["forged"], results["fine"]
        assert isinstance(forged, StorageError)
        assert "'forged'" in str(forged)
        assert isinstance(fine, Contribution)
        assert (fine.replayed, fine.versions) == (False, {"minor": 3})
        assert engine.pool("minor").version == 3
