"""The `jackpot` command (console script): checks its extra, then runs the commands.

The commands live in `jackpot._cli` and need click and rich, which the `cli`
extra installs (`pip install 'jackpot[cli]'`): a game server that only embeds
the library does not carry them. Without them, `jackpot` says so in one line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the `jackpot` command line; exits with its status."""
    missing = [name for name in ("click", "rich") if find_spec(name) is None]
    if missing:
        sys.stderr.write(f"jackpot: error: the command needs {' and '.join(missing)}: "
                         "pip install 'jackpot[cli]'\n")
        sys.exit(1)
    from jackpot._cli import run  # noqa: PLC0415 - only once its dependencies are known present

    sys.exit(run(argv))


if __name__ == "__main__":
    main()
