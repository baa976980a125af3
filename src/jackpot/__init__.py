"""jackpot: progressive jackpots for game servers, exact and safe under concurrency.

Only the names in `__all__` are public; every other module may change.
"""

import logging

from jackpot.domain import GroupConfig
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
from jackpot.results import (
    AdminResult,
    ConfigResult,
    Contribution,
    HistoryEntry,
    PoolSnapshot,
    VerifyReport,
    Win,
)
from jackpot.settings import Settings

__all__ = [
    "AdminResult",
    "ConcurrencyViolationError",
    "ConfigResult",
    "Contribution",
    "EngineClosedError",
    "GroupConfig",
    "GroupRetiredError",
    "GroupSuspendedError",
    "HistoryEntry",
    "IdempotencyConflictError",
    "InsufficientFundsError",
    "JackpotEngine",
    "JackpotError",
    "LockTimeoutError",
    "PoolSnapshot",
    "Settings",
    "StorageError",
    "UnknownGroupError",
    "ValidationError",
    "VerifyReport",
    "Win",
]

logging.getLogger("jackpot").addHandler(logging.NullHandler())
