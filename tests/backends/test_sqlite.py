"""The backend contract on SQLite: a fresh database file per test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
import pytest

from .contract import BackendContract


class TestSQLiteBackend(BackendContract):
    @pytest.fixture
    def target(self, tmp_path: Path) -> str:
        return str(tmp_path / "pools.db")

    @contextmanager
    def hold_level_lock(self, target: str, level: str) -> Iterator[None]:
        # SQLite has one write lock for the whole file.
        conn = apsw.Connection(target)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
