"""Helpers for the operations tests: read one sample out of an engine's exposition text."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import apsw
from prometheus_client.parser import text_string_to_metric_families

from jackpot import JackpotEngine


def samples(engine: JackpotEngine) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample of the engine's metrics text by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(engine.metrics_text()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(engine: JackpotEngine, name: str, **labels: str) -> float:
    """Return one sample's value; KeyError if the engine does not expose it."""
    return samples(engine)[(name, frozenset(labels.items()))]


@contextmanager
def write_lock_held(path: Path | str) -> Iterator[apsw.Connection]:
    """Hold the database write lock (BEGIN IMMEDIATE) on another connection meanwhile."""
    conn = apsw.Connection(str(path))
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("ROLLBACK")
    finally:
        conn.close()
