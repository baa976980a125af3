"""Reads of a jackpot database through any store, with no engine running.

What the read-only `jackpot` commands (status, history, ledger, verify,
metrics) need: every level's snapshot, a level's last wins and hits, the ledger, each
read in one consistent snapshot of the store. They take a store opened with
`open_store(..., read_only=True)`, so inspecting a database never migrates,
never writes and never waits for the game server's write lock.
"""

from __future__ import annotations

from collections.abc import Iterable

from jackpot import domain, money
from jackpot.errors import UnknownGroupError
from jackpot.results import HistoryEntry, PoolSnapshot
from jackpot.storage import LedgerRow, Store

__all__ = ["history", "ledger", "pool", "pools", "unknown_level"]


def pools(store: Store) -> dict[str, PoolSnapshot]:
    """Return every level's committed state, by name, read in one snapshot."""
    with store.read():
        states = store.load_levels()
    return {name: PoolSnapshot.of(s) for name, s in states.items()}


def pool(store: Store, level: str) -> PoolSnapshot:
    """Return one level's committed state (reading that level's row alone).

    Raises:
        UnknownGroupError: the database has no level `level`.

    """
    with store.read():
        state = store.load_level(level)
        if state is None:
            raise unknown_level(level, store.load_levels())
    return PoolSnapshot.of(state)


def history(store: Store, level: str, limit: int) -> list[HistoryEntry]:
    """Return the level's last `limit` wins and hits, newest first.

    Raises:
        UnknownGroupError: the database has no level `level`.

    """
    with store.read():
        _known(store, level)
        rows = store.ledger(level=level, kinds=("win", "hit"), limit=limit, newest_first=True)
    return [HistoryEntry(r.at_ms, money.from_units(r.paid), r.op_id, r.who, r.kind == "hit",
                         r.version_after) for r in rows]


def ledger(store: Store, *, level: str | None, limit: int) -> list[LedgerRow]:
    """Return the latest `limit` ledger rows (of `level` only, if given), oldest first.

    Raises:
        UnknownGroupError: the database has no level `level`.

    """
    with store.read():
        if level is not None:
            _known(store, level)
        rows = store.ledger(level=level, limit=limit, newest_first=True)
    rows.reverse()
    return rows


def _known(store: Store, level: str) -> None:
    names = store.load_levels()
    if level not in names:
        raise unknown_level(level, names)


def unknown_level(level: str, names: Iterable[str]) -> UnknownGroupError:
    """Return the refusal of a level the database does not have, naming those it has.

    Unlike the engine's own refusal, it says nothing of opening again: it is
    for a caller that has just read the database (or opened its engine).
    """
    names = list(names)
    return UnknownGroupError(f"unknown level {level!r}{domain.did_you_mean(level, names)}: "
                             f"this database has {', '.join(names)}")
