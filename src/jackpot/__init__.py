"""jackpot: progressive jackpots for game servers, exact and safe under concurrency.

Only the names in `__all__` are public; every other module may change.
"""

import logging
from typing import TYPE_CHECKING, Any

from jackpot.domain import ConfigChanges, GroupConfig
from jackpot.engine import JackpotEngine
from jackpot.errors import (
    ConcurrencyViolationError,
    EngineClosedError,
    GroupRetiredError,
    GroupSuspendedError,
    IdempotencyConflictError,
    InsufficientFundsError,
    JackpotError,
    LockTimeoutError,
    StorageError,
    UnknownGroupError,
    ValidationError,
)
from jackpot.health import HealthCheck, HealthReport
from jackpot.logs import JSONFormatter, configure_logging
from jackpot.metrics import serve_metrics
from jackpot.results import (
    AdminResult,
    ConfigResult,
    Contribution,
    HistoryEntry,
    PoolMeters,
    PoolSnapshot,
    VerifyReport,
    Win,
)
from jackpot.settings import Settings
from jackpot.stats import Observer, Stats

__all__ = [
    "AdminResult",
    "AsyncJackpotEngine",
    "ConcurrencyViolationError",
    "ConfigChanges",
    "ConfigResult",
    "Contribution",
    "EngineClosedError",
    "GroupConfig",
    "GroupRetiredError",
    "GroupSuspendedError",
    "HealthCheck",
    "HealthReport",
    "HistoryEntry",
    "IdempotencyConflictError",
    "InsufficientFundsError",
    "JSONFormatter",
    "JackpotEngine",
    "JackpotError",
    "LockTimeoutError",
    "Observer",
    "PoolMeters",
    "PoolSnapshot",
    "Settings",
    "Stats",
    "StorageError",
    "UnknownGroupError",
    "ValidationError",
    "VerifyReport",
    "Win",
    "__version__",
    "configure_logging",
    "serve_metrics",
]

if TYPE_CHECKING:
    from jackpot.aio import AsyncJackpotEngine

    __version__: str


def _lazy(name: str) -> Any:
    """Import the asyncio engine and read the version only when asked for (PEP 562).

    They cost a third of `import jackpot` (asyncio, importlib.metadata),
    which every process pays: the `jackpot` command, a worker that never
    awaits. Each is then kept as a plain attribute. The module's
    `__getattr__` at run time only: a type checker that saw it would take
    any name imported from jackpot (a typo) as Any; it sees the two
    declared above instead.
    """
    if name == "AsyncJackpotEngine":
        from jackpot.aio import AsyncJackpotEngine  # noqa: PLC0415 - the point

        value: Any = AsyncJackpotEngine
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

        try:
            value = version("jackpot")
        except PackageNotFoundError:  # pragma: no cover - a source tree not installed
            value = "0+unknown"
    else:
        msg = f"module 'jackpot' has no attribute {name!r}"
        raise AttributeError(msg)
    globals()[name] = value
    return value


if not TYPE_CHECKING:
    __getattr__ = _lazy


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

logging.getLogger("jackpot").addHandler(logging.NullHandler())
