"""Fixtures of the concurrency tests."""

from __future__ import annotations

import pytest

from jackpot.storage import SQLiteStore


@pytest.fixture(params=["found-on-taking-the-lock", "found-by-the-version-checks"])
def stale_detection(request: pytest.FixtureRequest,
                    monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test both ways a stale cache is found.

    A SQLite writer knows when another connection has committed since its
    last write (`others_committed`) and compares its cache with the rows
    before applying anything. The version-checked UPDATE (and the version
    read of a level a batch consulted but left unchanged) must still catch
    what that misses: the second way blinds the first.
    """
    if request.param == "found-by-the-version-checks":
        begin = SQLiteStore._begin  # the step under test

        def blind_begin(self: SQLiteStore, started: float) -> None:
            begin(self, started)
            self.others_committed = False

        monkeypatch.setattr(SQLiteStore, "_begin", blind_begin)
    return request.param
