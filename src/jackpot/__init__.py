"""jackpot: progressive jackpots for game servers, exact and safe under concurrency.

Only the names in `__all__` are public; every other module may change.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from jackpot.aio import AsyncJackpotEngine
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

try:
    __version__ = version("jackpot")
except PackageNotFoundError:  # pragma: no cover - run from a source tree without installing
    __version__ = "0+unknown"

logging.getLogger("jackpot").addHandler(logging.NullHandler())
