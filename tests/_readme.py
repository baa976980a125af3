"""The README read as data: its fenced code blocks and its tables, for the tests that run them.

A plain module (as `_helpers`): tests/test_readme.py runs the blocks and checks
the tables against the code; tests/backends/test_readme_pg.py runs the
PostgreSQL block; tests/ops/test_alerts.py compares the metrics table with what
an engine exports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE = re.compile(r"^```(\w*)\s*$")
_HEADING = re.compile(r"^#+\s+(.*?)\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced code block: its language, where it is and what it says.

    `key` names it as a reader finds it: the heading above it and its number
    under that heading (0 for the first), so that a block added elsewhere
    moves no other block's key.
    """

    lang: str
    heading: str
    number: int
    line: int  # 1-based line of its first line of code (after the fence)
    text: str

    @property
    def key(self) -> tuple[str, int]:
        return self.heading, self.number

    def code(self, text: str | None = None) -> CodeType:
        """Compile the block (Python; or `text`, made of it) with the README's line numbers."""
        return compile("\n" * (self.line - 1) + (self.text if text is None else text),
                       str(README), "exec")


def blocks(lang: str | None = None) -> list[Block]:
    """Return the README's fenced blocks (only those of `lang`, if given), in order."""
    found: list[Block] = []
    heading, number = "", 0
    lines = README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if (h := _HEADING.match(lines[i])) is not None:
            heading, number = h.group(1), 0
        elif (fence := _FENCE.match(lines[i])) is not None:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(fence.group(1), heading, number, i + 2,
                               "\n".join(lines[i + 1:end]) + "\n"))
            number += 1
            i = end
        i += 1
    return [b for b in found if lang is None or b.lang == lang]


def table(*header: str) -> list[list[str]]:
    """Return the rows (cells stripped) of the README table whose header row is `header`.

    Exactly one table must have that header, and every row its number of cells.
    """
    lines = README.read_text(encoding="utf-8").splitlines()
    want = "| " + " | ".join(header) + " |"
    starts = [i for i, line in enumerate(lines) if line.strip() == want]
    assert len(starts) == 1, f"{len(starts)} README tables headed {want!r}"
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == len(header), f"row of {want!r} with {len(cells)} cells: {line}"
        rows.append(cells)
    return rows


def names_in(cell: str) -> list[str]:
    """Return the names a table cell gives in backticks (`a`, `b` -> [a, b])."""
    return re.findall(r"`([^`]+)`", cell)
