"""The layers stay visible: which package may import which library (STYLE.md).

Only the storage package speaks SQL (apsw, psycopg), only the actors
package knows Pykka, and the domain imports no I/O and no other layer. Read
from the source (every import, also one inside a function), not by importing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import jackpot

SRC = Path(jackpot.__file__).parent

OWNERS = {"pykka": "actors", "apsw": "storage", "psycopg": "storage", "psycopg_pool": "storage"}
"""Each library, and the one package of jackpot that may import it."""

PURE = {"domain.py", "money.py", "errors.py", "_frozen.py"}
"""Modules of the domain: they import only the standard library and each other.
(`_frozen` builds the domain's frozen values cheaply: pure too.)"""


def _imports(path: Path) -> set[str]:
    """Return the top-level names of every module `path` imports (`jackpot.x` for ours)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "jackpot":  # from jackpot import x
            names.update(f"jackpot.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n if n.startswith("jackpot.") else n.split(".")[0] for n in names}


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_each_library_is_imported_by_its_own_layer_only() -> None:
    misplaced = sorted(
        f"{path.relative_to(SRC)} imports {name}" for path in _modules()
        for name in _imports(path) if name in OWNERS
        and path.relative_to(SRC).parts[0] != OWNERS[name])
    assert misplaced == []


def test_the_domain_imports_no_io_and_no_other_layer() -> None:
    allowed = {f"jackpot.{p.removesuffix('.py')}" for p in PURE}
    found = {name: sorted(n for n in _imports(SRC / name)
                          if (n.startswith("jackpot") and n not in allowed)
                          or n in OWNERS or n in {"threading", "sqlite3", "socket", "os"})
             for name in PURE}
    assert found == {name: [] for name in PURE}


def test_the_check_reads_the_imports_it_means() -> None:
    """The walker sees imports inside functions and `from x import y` (or it proves nothing)."""
    assert {"pykka", "jackpot.actors._start"} <= _imports(SRC / "actors" / "__init__.py")
    assert "apsw" in _imports(SRC / "storage" / "sqlite.py")
    assert "jackpot.money" in _imports(SRC / "domain.py")  # from jackpot import money
    assert "psycopg" in _imports(SRC / "storage" / "postgres.py")
