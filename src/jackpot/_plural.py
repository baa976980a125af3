"""Counts in messages: one of a thing in the singular ('1 row', not '1 rows').

Shared by every module that words a count for people (the audit, health, the
command line): each had its own copy, and the audit had none.
"""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """Return the count and its noun, plural unless one: '1 row', '2 rows', '0 rows'.

    `plural` is for a noun whose plural is not the noun plus 's', or a phrase
    whose noun is not its last word ('more row that does not add up').
    """
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural if plural is not None else noun + 's'}"
