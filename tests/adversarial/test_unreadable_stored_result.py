"""A replay whose stored first result cannot be read fails alone, with a StorageError.

Group commit puts it in one transaction with other requests; a KeyError from
rebuilding the record used to abandon the whole batch, failing every
operation in it (each of which would have succeeded alone) with a raw KeyError.
A record that is not JSON at all (or nested deeper than the parser goes)
failed the lookup of every op_id of the batch, with a raw JSONDecodeError or
RecursionError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw
import pytest

from jackpot import JackpotEngine, StorageError, money
from jackpot.results import Contribution
from jackpot.service import fingerprint

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("stored", ["{}", "not json", "[]", "[" * 100_000 + "]" * 100_000])
def test_an_unreadable_stored_result_fails_its_replay_alone(
        tmp_path: Path, one_batch: Callable[..., dict[str, Any]], stored: str) -> None:
    db = tmp_path / "pools.db"
    JackpotEngine.open(db).close()
    request = {"kind": "contribute", "bet": money.parse_amount("10", name="bet"),
               "groups": ["minor"]}
    conn = apsw.Connection(str(db))
    conn.execute("INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
                 "VALUES ('forged', 'contribute', ?, ?, 0)", (fingerprint(request), stored))
    conn.close()
    with JackpotEngine.open(db) as engine:
        results = one_batch(engine, "minor", {"forged": "forged", "fine": "fine"})
        forged, fine = results["forged"], results["fine"]
        assert isinstance(forged, StorageError)
        assert "'forged'" in str(forged)
        assert "nothing was changed" in str(forged)
        assert isinstance(fine, Contribution)
        assert (fine.replayed, fine.versions) == (False, {"minor": 3})
        assert engine.pool("minor").version == 3
