"""Storage: the only package that speaks SQL.

The engine and actors use the narrow interface of `SQLiteStore` (write/read
transactions, load/insert/update a level, append ledger rows, idempotency
records); a second backend implements the same methods.
"""

from jackpot.storage.sqlite import BusyIncidentError, LedgerRow, SQLiteStore, StoredOperation

__all__ = ["BusyIncidentError", "LedgerRow", "SQLiteStore", "StoredOperation"]
