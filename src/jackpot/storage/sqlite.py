"""SQLite storage through APSW: the only module that speaks SQL to SQLite.

One `SQLiteStore` wraps one connection and is used by one thread at a time
(each actor owns its own). Every write runs inside `BEGIN IMMEDIATE`, so the
database write lock is taken up front and a transaction never has to upgrade
a read lock (which could fail with SQLITE_BUSY without the busy handler being
called). Before it, the writer takes its turn among the file's writers
(`jackpot.storage._turns`: an `flock` the kernel hands on, so writers of
several processes do not starve one another). The busy handler polls finely
(0.1 ms doubling up to the configured interval) instead of SQLite's coarse
default sleeps; the turn and the busy wait together give up at the lock
timeout with `LockTimeoutError`.

Before it changes anything (the switch to WAL, a migration), a store checks
that the file is ours: empty (a new database), or holding the jackpot tables with their
columns under a `user_version` this library knows. Another application's file, or a
jackpot database of a newer schema, is refused with `StorageError` and left
exactly as it was.

A read-only store (`read_only=True`, for inspecting a database) never writes:
no WAL switch, no migration, no lock taken. SQLite needs the `-shm` file to
read a WAL database; while one exists (the game server has the database
open) it is used, read-only if need be. When neither `-wal`, `-shm` nor
`-journal` exists (nobody has the file open), the file is read as immutable,
which creates no file beside it; should the file change during such a read
(a writer started), the read raises `StaleReadError`: read again. What cannot
be read: a `-wal` without its `-shm` in a directory the reader may not write
(SQLite would have to create the `-shm`); the error says so, as it names a
directory (or anything but a file) by the name of the `-wal` or `-journal`.
Nor, with none of them beside the name given, a file of more than one name
(hard links): a server may have it open by another name, its `-wal` beside
that one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import shlex
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

try:
    import resource as _resource
except ImportError:  # pragma: no cover - Windows: no limit to name
    _resource = None  # type: ignore[assignment]

import apsw
import apsw.bestpractice

from jackpot.domain import Entry, LevelState
from jackpot.errors import LockTimeoutError, StorageError
from jackpot.storage._files import FileGuard, ReaderMark, refuse_inherited
from jackpot.storage._schema_problems import (
    LOST_FOREIGN_KEY,
    IndexShape,
    collation_problems,
    constraint_problems,
    index_collation_problems,
    index_problems,
    insert_hook_problems,
    key_problems,
    lost_checks,
    refusing_index_problems,
    type_problems,
)
from jackpot.storage._sql_checks import (
    ENGINE_CHECKS,
    ENGINE_TRIGGERS,
    check_keys,
    runs_before_insert,
    trigger_key,
)
from jackpot.storage._turns import LOCK_SUFFIX, WriterTurns
from jackpot.storage.base import (
    ENTRY_COLUMNS,
    LEDGER_INTEGERS,
    LEDGER_TEXTS,
    LEVEL_COLUMNS,
    ROW_TOLD_NULLS,
    TABLE_COLUMNS,
    BusyIncidentError,
    LedgerPass,
    LedgerRow,
    LedgerTotals,
    RecordedResult,
    RecordedSQL,
    Store,
    StoredOperation,
    entry_values,
    ledger_row,
    level_from_row,
    level_values,
    row_limit,
    stored_result,
    to_json,
)
from jackpot.storage.schema import MIGRATIONS, SQLITE_TRIGGERS, STRICT_TABLES

__all__ = ["CATCH_UP_PAGES", "BusyIncidentError", "LedgerRow", "SQLiteStore", "StaleReadError",
           "StoredOperation"]

# apsw's best practices, applied to our own connections only: a library must
# not change how the host application's other APSW connections behave (as
# `apsw.bestpractice.apply` would, process-wide). Left out: the 100 ms busy
# timeout (we install our own busy handler), `connection_optimize` (its PRAGMA
# optimize may need the write lock before our handler is in place, so opening
# failed while other processes wrote) and `library_logging` (it configures
# process-wide SQLite logging through the root logger); `connection_wal` is
# done at open through `_retry_busy`, which retries a busy switch.
_BEST_PRACTICE = (
    apsw.bestpractice.connection_enable_foreign_keys,
    apsw.bestpractice.connection_dqs,
    apsw.bestpractice.connection_recursive_triggers,
)

CATCH_UP_PAGES = 8_000
"""WAL size (pages, ~32 MB) past which a writer with `on_wal` checkpoints itself.

The WAL starts over from its beginning only when a writer begins while every
page in it has been copied. Under steady load a background checkpoint never
quite gets there (the next batch has begun before it ends), so a writer does,
every `CATCH_UP_PAGES`: a short checkpoint of what the background one has
not copied yet, in the writer's thread, after its commit."""

logger = logging.getLogger("jackpot")

_TABLES = frozenset({"levels", "ledger", "operations"})
"""The tables that, with a known `user_version`, make a file a jackpot database."""
# Those tables must have their columns (`TABLE_COLUMNS`) too. Table names and
# a small `user_version` alone are not enough: another application's file may
# have a `levels` table at user_version 1 (as may a file of the engine's
# first, unreleased commit, whose tables had other columns). Migrating such a
# file would change it, then fail on a missing column, leaving it marked as
# the latest schema.
_COLUMNS_NAMED = 3  # of the missing columns, the refusal names the first few
_REBUILT_OPERATIONS = 3  # the schema whose migration copies the operations table

_LOST_WRITES = frozenset({apsw.SQLITE_IOERR_WRITE, apsw.SQLITE_IOERR_FSYNC,
                          apsw.SQLITE_IOERR_DIR_FSYNC, apsw.SQLITE_IOERR_TRUNCATE})
"""Extended I/O error codes of a write the storage may have lost (see `_files`); any I/O
error of a COMMIT or a checkpoint counts too."""
_SIDE_FILES = ("-wal", "-shm", "-journal")
_COPY_STEP_BYTES = 2 * 2**20
"""A backup copies (and syncs) this much at a time: see `SQLiteStore._copy_into`."""
# Measured (18 runs each, alternating, a fresh copy of one 67 MB database each run, on a
# machine shared with other work): a game server betting on the same disk, its worst bet
# during the copy 34-69 ms copied in one step, 6-29 ms in 2 MB steps (1 MB: 4-26 ms, 10
# runs), against 1-27 ms in as long a time before the copy; on a database the bets grew
# from 66 to ~245 MB over 26 runs, 61-204 ms in one step, 3-38 ms in steps. The copy
# takes up to ~1.5x as long (67 MB: 0.11-0.31 s in one step, 0.16-0.41 s in steps), a
# small part of the command (the audit after it).
_SET_BY_A_BACKUP = ((24, 28), (40, 44), (92, 100))
"""The database header's bytes a backup sets in its copy: the file change counter, the schema
cookie, the version-valid-for number and the version of the SQLite that wrote it (SQLite's file
format, 1.3: a file last written by another SQLite, or before apsw was upgraded, has another)."""
_COMPARED_BYTES = 2**20
PARTIAL_SUFFIX = ".partial"
"""A backup is made under its name and this, beside it, until it is whole: see `backup_to`."""
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
"""How a backup's file is made: by this backup alone, never over another (see `_create`)."""
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
"""What `link` fails with on a file system without hard links (FAT, exFAT: EPERM)."""
_T = TypeVar("_T")


class StaleReadError(StorageError):
    """A read-only store read a file that changed meanwhile (a writer started): read again."""


_SELECT_LEVEL = f"SELECT {', '.join(LEVEL_COLUMNS)} FROM levels"
_INSERT_LEVEL = (f"INSERT INTO levels ({', '.join(LEVEL_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(LEVEL_COLUMNS))})")
_UPDATE_LEVEL = (f"UPDATE levels SET {', '.join(f'{c} = ?' for c in LEVEL_COLUMNS[1:])} "
                 "WHERE name = ? AND version = ?")
_INSERT_ENTRY = (f"INSERT INTO ledger (op_id, {', '.join(ENTRY_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * (len(ENTRY_COLUMNS) + 1))})")


class SQLiteStore(Store):
    """One APSW connection to a jackpot database, with the engine's queries."""

    # SQLite joins by looking each row up: grouping the whole ledger first,
    # in op_id order, then looks the groups up in the operations table's key
    # in that order, not at random; and the balance after an operation's last
    # row on a level comes from that row itself: with MAX() the only min/max
    # aggregate of a query, SQLite takes a bare column from the row that has
    # the maximum (documented behaviour). On run 8's file (5 million recorded
    # bets): 31 s, the portable form 122 s. (SQLite's string_agg takes no
    # DISTINCT.)
    # SQLite turns an integer sum that overflows 64 bits into a REAL, silently:
    # such a row's sums are checked again exactly (`Store.broken_ledger_rows`).
    # A REAL amount (a table rebuilt without STRICT) makes one too.
    _INEXACT = "typeof({}) = 'real'"
    # A table rebuilt without STRICT takes any type in any column.
    _NOT_INTEGER = "typeof({}) != 'integer'"
    _NOT_TEXT = "typeof({}) NOT IN ('text', 'null')"
    _RECORDED = RecordedSQL("g.balance", " l.balance_after AS balance,",
                            "group_concat(DISTINCT replace(l.kind, ',', ';'))", "", "")

    def __init__(
        self,
        path: str,
        *,
        lock_timeout_ms: int = 5000,
        poll_interval_ms: int = 50,
        synchronous: str = "FULL",
        on_wal: Callable[[int], None] | None = None,
        cache_mb: int | None = None,
        create: bool = True,
        read_only: bool = False,
        make_lock_file: bool = True,
    ) -> None:
        """Open (creating if needed) the database file at `path`.

        `cache_mb` sizes this connection's page cache (None: SQLite's default).

        With `on_wal`, SQLite's automatic checkpoint is off for this
        connection: after each commit `on_wal` gets the WAL's size in pages
        and is expected to have `checkpoint()` run on another connection
        (see `jackpot.actors.Checkpointer`). Should that fall far behind, the
        connection still catches up itself after a commit (`CATCH_UP_PAGES`).

        With `create=False` the file must exist and already be a jackpot
        database. With `read_only=True` the file must exist and is never
        written (see the module's docstring); an empty one opens, with
        `schema_version() == 0`. With `make_lock_file=False` (a health
        probe) its writes take turns only if the writers' lock file exists:
        it is never made (see `WriterTurns`).

        Raises:
            StorageError: the file cannot be opened, is not a jackpot
                database, or has a newer schema (nothing is changed then).

        """
        self._path = path
        self._sides = _named_by_sqlite(path)
        self._timeout = lock_timeout_ms / 1000
        self._poll = poll_interval_ms / 1000
        self._busy_since = 0.0
        self._deadline: float | None = None  # of the write() waiting, for the busy handler
        self._gave_up = False
        self._turns: WriterTurns | None = None  # opened by the first write()
        self._make_lock_file = make_lock_file
        self._data_version: int | None = None
        self.seen_versions: dict[str, int] | None = {}
        self.busy_wait_seconds = 0.0
        self._on_wal = on_wal
        self._wal_pages = 0
        self._read_only = read_only
        self._stamp: tuple[int, int, int] | None = None  # the file as an immutable read found it
        self._guard: FileGuard | None = None  # a writing connection's files (see _files)
        self._mark: ReaderMark | None = None  # a reader's, through the -shm (see _files)
        # A new file is made in a transaction with a -journal beside it (an existing
        # one is in WAL mode: its -wal and -shm are shorter names). os.path.exists:
        # Path's raises on a name too long (Python < 3.13).
        if (not read_only and not os.path.exists(self._sides)  # noqa: PTH110 - see above
                and (too_long := _name_too_long(path, "-journal", sides=self._sides))):
            raise StorageError(too_long)  # (before SQLite makes the file)
        try:
            self.conn = self._connect(path, create=create and not read_only)
            self.conn.set_busy_handler(self._on_busy)
            for practice in _BEST_PRACTICE:
                practice(self.conn)
            # First of all: refuse a file that is not ours.
            self._retry_busy(lambda: self._recognise(allow_empty=create or read_only))
            if not read_only:
                self._retry_busy(lambda: self._exec("PRAGMA journal_mode = WAL"))
                self._exec(f"PRAGMA synchronous = {synchronous}")
            if cache_mb is not None:
                self._exec(f"PRAGMA cache_size = {-int(cache_mb) * 1024}")  # negative: KiB
            if on_wal is not None and not read_only:
                self.conn.set_wal_hook(self._wal_hook)  # replaces the automatic checkpoint
            if self._guard is not None:
                # A file just switched to WAL (new, or a restored backup) was read
                # before: the connection holds its -wal once it reads in WAL mode.
                self._retry_busy(lambda: self._exec("PRAGMA schema_version"))
                self._guard.holding()  # (it has read: it holds the -wal and -shm now)
            elif self._mark is not None:
                self._mark.holding()  # (read through the -shm: it holds them as a writer does)
        except BaseException as e:
            # Asked before the connection closes: closing frees its own
            # descriptor (and other threads' closes free theirs), so a
            # look afterwards found one free and gave no hint. Closed
            # whatever the look raises (Ctrl-C landing there left it open).
            try:
                out = (isinstance(e, (apsw.CantOpenError, apsw.IOError))
                       and self._out_of_descriptors())
            finally:
                self._abandon()
            if not isinstance(e, apsw.Error):
                raise
            msg = _why_not_opened(path, e, sides=self._sides, create=create,
                                  read_only=read_only, out_of_descriptors=out)
            raise StorageError(msg) from e

    def _out_of_descriptors(self) -> bool:
        """Say whether a failed open ran out of file descriptors (see `_why_not_opened`).

        SQLite keeps the errno of the open that failed once the connection
        exists (its -wal or -shm could not be opened); a connection that
        could not be made at all leaves only a look at this process now.
        """
        conn: apsw.Connection | None = getattr(self, "conn", None)
        if conn is not None:
            with contextlib.suppress(apsw.Error):
                return conn.system_errno in (errno.EMFILE, errno.ENFILE)
        return _out_of_descriptors()

    def _abandon(self) -> None:
        """Undo a connection that opened, then failed to set up: leave nothing behind.

        As in `close()`: it may have read (an interrupt just after `holding()`),
        so it lets go before its close may delete the `-wal` and `-shm`.
        """
        if hasattr(self, "conn"):
            self._close_connection()
            return
        for held in (self._guard, self._mark):  # (interrupted in `_connect`: it has not read)
            if held is not None:
                held.close()

    def _connect(self, path: str, *, create: bool) -> apsw.Connection:
        """Open the connection (`__init__` sets it up).

        What fails once it is open (an interrupt too: Ctrl-C) closes it: it
        was left to the garbage collector, held meanwhile by the error's
        traceback, which a caller may keep.
        """
        if not self._read_only:
            refuse_inherited(path)  # before SQLite opens it: see there
            _refuse_other_names_to_write(path)
            flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
            conn = apsw.Connection(path, flags=flags)
            try:
                self._guard = FileGuard(path)  # the files every write checks it still has
            except BaseException:  # (StorageError: a forked child's, not its own to open)
                conn.close()
                raise
            return conn
        if any(Path(self._sides + suffix).exists() for suffix in _SIDE_FILES):
            # Someone has (or had) it open: read through its -shm, as a reader.
            conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            try:
                self._mark = ReaderMark(self._sides)
            except BaseException:
                conn.close()
                raise
            return conn
        # Nobody has it open: read the file as it stands, creating nothing
        # beside it (a read-only -shm cannot be created in a directory we may
        # not write); `read()` then checks that it did not change meanwhile.
        self._refuse_other_names()
        self._stamp = self._file_stamp()
        uri = f"file:{quote(str(Path(path).absolute()))}?mode=ro&immutable=1"
        return apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)

    def _refuse_other_names(self) -> None:
        """Refuse to read as closed a file that has other names (hard links).

        SQLite names a database's -wal and -shm after the name it was opened
        by (a symbolic link resolved: `_named_by_sqlite`). A game server serving
        the file by another name has them beside that name, none beside this
        one: the file read as it stands lacked every commit in that -wal, and
        the file does not change until a checkpoint, so nothing told it stale.
        Which name the server uses, the file does not say; those beside it are
        named. (SQLite itself opened by this name would read the file without
        that -wal too, through -wal and -shm files of its own.)
        """
        links = _names_of(self._path)
        if links <= 1:
            return
        msg = (f"{self._path!r} is one of {links} names (hard links) of one file"
               f"{_names_beside(self._sides)}: SQLite names a database's -wal after the name "
               "it was opened by, and the latest commits of a game server serving it by "
               "another name are not found from this one; read it by the name the server "
               "opens it by, and give the file one name to read it while nobody has it open")
        raise StorageError(msg)

    def write_refusal(self) -> str | None:
        """Say why this connection's writes are refused (a moved file, a failed disk), or None."""
        return None if self._guard is None else self._guard.refusal()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = Path(self._path).stat()
        return st.st_ino, st.st_size, st.st_mtime_ns

    def schema_version(self) -> int:
        """Return the schema version of the file: 0 when empty (new), else 1..latest.

        Raises:
            StorageError: the file is not a jackpot database (another
                application's), or a jackpot database of a newer schema.

        """
        try:
            return self._recognise(allow_empty=True)
        except apsw.Error as e:
            raise self._translate(e) from e

    def _recognise(self, *, allow_empty: bool) -> int:
        """`schema_version`, letting SQLite's own errors through (for `__init__`)."""
        try:  # (BEGIN inside: see `read`)
            self._exec("BEGIN")  # one snapshot of both
            (version,) = self._exec("PRAGMA user_version")[0]
            objects = self._exec("SELECT type, name FROM sqlite_master")
            columns = {table: {r[0] for r in self._exec(
                "SELECT name FROM pragma_table_info(?)", (table,))} for table in TABLE_COLUMNS}
            without_rowid = version == 0 and bool(self._exec(
                "SELECT 1 FROM pragma_table_list WHERE schema = 'main' "
                "AND name = 'operations' AND wr"))
        finally:
            self._rollback()
        tables = {name for kind, name in objects if kind == "table"}
        latest = len(MIGRATIONS)
        if version == 0 and not objects:
            if not allow_empty:
                msg = f"cannot open database {self._path!r}: it holds no jackpot database"
                raise StorageError(msg)
            return 0
        missing = [f"{table}.{c}" for table, wanted in TABLE_COLUMNS.items()
                   for c in wanted if c not in columns[table]]
        if tables >= _TABLES and 1 <= version <= latest and not missing:
            return int(version)
        if tables >= _TABLES and version > latest:
            msg = (f"database {self._path!r} has schema version {version}, newer than this "
                   f"library's {latest}: upgrade jackpot (nothing was changed)")
            raise StorageError(msg)
        if tables >= _TABLES and version == 0 and not missing:
            raise StorageError(self._reloaded(_dumped_version(
                without_rowid=without_rowid,
                indexes={name for kind, name in objects if kind == "index"})))
        lacking = ""
        if tables >= _TABLES and 1 <= version <= latest:
            more = len(missing) - _COLUMNS_NAMED
            lacking = (f"; without the columns {', '.join(missing[:_COLUMNS_NAMED])}"
                       f"{f' and {more} more' if more > 0 else ''}")
        msg = (f"{self._path!r} is not a jackpot database (user_version {version}, tables: "
               f"{', '.join(sorted(tables)) or 'none'}{lacking}): refusing to use it; nothing "
               "was changed")
        raise StorageError(msg)

    def _reloaded(self, version: int) -> str:
        """Say what to do with the engine's tables found at user_version 0 (a reloaded dump).

        The engine sets the user_version in the transaction that creates its
        tables: never are they at 0. A file reloaded from a SQL dump is (the
        sqlite3 shell's `.dump` leaves the user_version out), and so is
        another application's file that copied the engine's tables: which
        one it is only its operator knows. The file is not touched: the
        operator sets the version the tables' shape says, and verify() then
        checks all of it.
        """
        path = _for_a_shell(self._path)
        return (f"{self._path!r} holds the jackpot tables with their columns at user_version 0, "
                "where the engine never leaves them: a file reloaded from a SQL dump looks so "
                "(the sqlite3 shell's .dump leaves the user_version out). If it is a jackpot "
                f"database, its tables are schema {version}'s: set it (sqlite3 {path} "
                f"'PRAGMA user_version = {version}') and check it (jackpot --db {path} verify). "
                "Refusing to use it until then; nothing was changed")

    def _retry_busy(self, step: Callable[[], _T]) -> _T:
        """Run a step of opening, retrying while other connections hold the file.

        On a brand-new file that several engines open at once, switching the
        journal mode (or reading while another opener switches it) can fail
        with SQLITE_BUSY without SQLite ever calling the busy handler (the
        switch needs an exclusive lock another opener holds for its own
        switch), so it is retried here, within the lock timeout.
        """
        deadline = time.monotonic() + self._timeout
        delay = 0.0001
        while True:
            try:
                return step()
            except apsw.BusyError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, self._poll)

    def backup_to(self, target: str) -> None:
        """Copy the database, one consistent snapshot of it, into the new file `target`.

        SQLite's online backup, in steps that all read under one read
        transaction, so writers go on (WAL) and it holds one moment of the
        database. Each step is synced before the next, the last with
        synchronous=FULL. It is made as `target` + `PARTIAL_SUFFIX` beside
        `target` and named `target` only once whole and synced (its directory
        synced after): a copy stopped at any point (a crash, Ctrl-C during
        its cleanup too) is never at `target`, and `target` is never
        overwritten (a file made there meanwhile is refused). Who may read it
        is who may read the database (its permission bits, less the umask;
        its owner may read and write it; its group the database's, or one
        that may do no more than anyone: see `_readers_of_the_group`). A copy
        that fails leaves nothing at `target` nor at its partial name.

        Raises:
            StaleReadError: (read-only store reading an immutable file) a
                writer opened the file during the copy: copy it again.
            StorageError: `target` names no file ('' or a path ending in
                '/'), or exists (a symbolic link too), or its
                partial name does (another backup to it, or one stopped), or
                a `-wal`, `-shm` or `-journal` beside either does, or it is
                one of the database's own files (`-wal`, `-shm`, ...), or its
                name is not UTF-8 (SQLite's names are) or too long for the
                partial name's `-journal`, or it cannot be created, or the
                copy failed, or (a closed file) the file has bytes past the
                last page its header counts (see `_copied_as_it_is`).

        """
        partial = target + PARTIAL_SUFFIX
        self._refuse_target(target, partial)
        try:
            database = Path(self._path).stat()
        except OSError as e:
            msg = f"cannot read who may read {self._path!r}: {e.strerror}"
            raise StorageError(msg) from e
        # Who may read it: as the database; its owner (who makes it) writes it and reads it
        # (the audit), should the database be read-only (0444: SQLite opened the copy
        # read-only, and the copy failed), or the umask take those bits (see below).
        mode = (database.st_mode & 0o666) | 0o600
        made: list[int] = []  # (its descriptor, put there as it is made: see _create)
        mine: os.stat_result | None = None
        try:
            _create(partial, mode, made, target=target)
            mine = self.backup_made = os.fstat(made[0])
            try:
                _owner_reads_and_writes(made[0])
                _readers_of_the_group(made[0], database.st_gid)
            except _PermissionsRefusedError as e:  # (FAT, some mounts: no owners, no modes)
                msg = (f"cannot give {target!r} who may read the database: {e}; back up to "
                       "a file system that keeps owners and permissions")
                raise StorageError(msg) from e
            finally:
                os.close(made.pop())  # (Ctrl-C between pop and close: left open, not closed twice)
            self._copy_into(partial)
            _name_it(partial, target)
        except BaseException as e:
            if made:  # (stopped as it was made, or as it was looked at: looked at here, closed)
                try:
                    if mine is None:
                        with contextlib.suppress(OSError):
                            mine = os.fstat(made[0])
                finally:
                    os.close(made.pop())
            if mine is not None:  # (None: nothing made; the partial name may be another's)
                _remove_the_copy(target, partial, mine)
            if isinstance(e, (apsw.Error, OSError)):
                if self._changed():  # ("malformed": torn pages of a file a writer opened)
                    raise self._stale() from e
                msg = f"the copy to {target!r} failed: {e}"
                raise StorageError(msg) from e
            raise

    def _refuse_target(self, target: str, partial: str) -> None:
        """Refuse a `target` the copy would not be the only file of (see `backup_to`).

        `partial` is the name it is made under, beside `target`.
        """
        try:
            target.encode()  # (a name of bytes that are not UTF-8, as the shell gives it)
        except UnicodeEncodeError:
            msg = (f"{target!r} is not a file name SQLite can open (it is not UTF-8): "
                   "back up to another name")
            raise StorageError(msg) from None
        if Path(target).name in ("", ".", "..") or target.endswith(("/", os.sep)):
            # A directory's name, not a file's: '' was copied whole into '.partial' in
            # the working directory, then failed to be named ''; 'new/' was "cannot
            # create 'new/' in the directory '.'" (the copy goes inside it: 'new/.partial').
            msg = (f"{target!r} names no file: give the path of the new file the backup "
                   "goes to")
            raise StorageError(msg)
        mine = Path(target).resolve()
        for suffix in (*_SIDE_FILES, LOCK_SUFFIX):  # (absent while nobody has it open)
            if mine == Path(self._sides + suffix).resolve():
                msg = (f"{target!r} is the database's own {suffix} file: SQLite resets or "
                       "deletes it as the database opens; a backup goes to a file of its own")
                raise StorageError(msg)
        # (O_EXCL refuses a link too: told what it is.) Not Path.is_symlink: it raises
        # ENAMETOOLONG on a name longer than the directory takes, which the command then
        # reported as the system's refusal (status 1); _refuse_partial says it is too long.
        if os.path.islink(target):  # noqa: PTH114 - False, not an error, for such a name
            link = Path(target)
            to = str(link.readlink())
            gone = "" if link.exists() else ", which does not exist"
            msg = (f"{target!r} is a symbolic link (to {to!r}{gone}): a backup goes to a "
                   "new file, never through a link")
            raise StorageError(msg)
        if os.path.lexists(target):
            msg = f"{target!r} exists: a backup goes to a new file"
            raise StorageError(msg)
        self._refuse_partial(target, partial)

    def _refuse_partial(self, target: str, partial: str) -> None:
        """Refuse the name `partial` a copy to `target` is made under (see `_refuse_target`)."""
        if Path(partial).resolve() == Path(self._path).resolve():
            msg = (f"{partial!r}, the name a copy to {target!r} is made under, is the "
                   "database itself: back up to another name")
            raise StorageError(msg)
        if os.path.lexists(partial):  # (O_EXCL refuses it too, should it be made meanwhile)
            raise StorageError(_partial_exists(target, partial))
        # (SQLite copies under a -journal beside the copy, its name 8 bytes longer.)
        longest = _longest_name(Path(target).parent)  # (None: its creation says why not)
        if longest is not None and len(os.fsencode(f"{Path(partial).name}-journal")) > longest:
            msg = (f"{target!r} is too long a name for a backup: the copy is made under it "
                   f"and '{PARTIAL_SUFFIX}', with a '{PARTIAL_SUFFIX}-journal' beside it "
                   f"(SQLite's), and {longest} bytes is the longest name there")
            raise StorageError(msg)
        for name in (target, partial):
            for suffix in _SIDE_FILES:
                # Another database's (one once at that name, or one deleted while still
                # open): SQLite deletes a -wal or -journal beside an empty file as it opens
                # it and rewrites a -shm, an engine opening the copy would do so beside
                # `target`, and a failed copy's cleanup would delete it. Refused, not
                # worked around: only the operator knows whose it is.
                if os.path.lexists(side := name + suffix):
                    msg = (f"{side!r} exists beside {name!r}: SQLite would take it for the "
                           f"copy's own {suffix} file and delete or rewrite it; move it away "
                           "(it may belong to a database still open) or back up to another "
                           "name")
                    raise StorageError(msg)

    def _copy_into(self, target: str) -> None:
        """Copy the database into the empty file `target`, synced (see `backup_to`).

        In steps of `_COPY_STEP_BYTES`, each synced before the next: copied in
        one step, the whole copy was synced at its end, and the writers'
        commits on the same disk waited behind it (a bet's worst 34-69 ms
        while a 67 MB copy was made, up to 0.2 s on larger ones, against
        6-29 ms in steps: see `_COPY_STEP_BYTES`). The steps read one
        snapshot (`_one_snapshot`).
        """
        [[page_size]] = self.conn.execute("PRAGMA page_size")
        pages = max(1, _COPY_STEP_BYTES // page_size)
        dest = apsw.Connection(target)
        try:
            dest.execute("PRAGMA synchronous = FULL")
            synced = os.open(target, os.O_RDONLY)
            try:
                with self._one_snapshot(), dest.backup("main", self.conn, "main") as copy:
                    try:
                        while not copy.step(pages):
                            os.fsync(synced)  # the pages so far, on disk before the next's
                    except apsw.Error:
                        # A failed step's error has no text ("not an error": a full disk
                        # told so); SQLite gives it to the copy's connection as the copy
                        # finishes, and finish() raises it, with its text.
                        copy.finish()
                        raise
            finally:
                os.close(synced)
        finally:
            dest.close()  # (its -wal folded into the file, synced)
        if self._changed() or not self._copied_as_it_is(target):  # (immutable: maybe torn)
            raise self._stale()

    def _copied_as_it_is(self, copy: str) -> bool:
        """Whether the `copy` an immutable read made is, page for page, the file as it is now.

        The file's size and mtime (`_changed`) miss a change within one tick
        of the file system's clock (1 s on ext4 of 128-byte inodes, 2 s on
        FAT; a jiffy where the kernel's timestamps are coarse) into free pages:
        a writer that opened, bet and closed between two steps of the copy
        went unseen, and the copy was torn. SQLite writes the main file of a
        WAL database only while a connection has its -wal (a checkpoint; the
        last close checkpoints before it deletes the -wal): with no `-wal`,
        `-shm` or `-journal` beside it now, the file is one whole moment, and a
        copy equal to it holds that moment (each page the same as it was read
        and now, so at this check too: the ledger and operations only grow,
        versions only rise, so no page comes back to what it was). Left out:
        the header fields the backup sets in its copy. A read through the
        -shm is under SQLite's locks: nothing to check. (Both files read
        again, from the page cache: 0.12-0.18 s of a 0.65-0.97 s copy of
        200 MB, 5 runs; nobody is serving on the file meanwhile.)

        Raises:
            StorageError: the copy is the file's beginning, and the file goes
                on past the last page its header counts (equal in both): bytes
                SQLite leaves in no file (its last checkpoint or commit
                truncates the file to its pages) and never reads, so the copy
                leaves them out; another tool added them, and no copy could be
                compared equal (told so, not taken for a writer's change).

        """
        if self._stamp is None:
            return True
        if any(os.path.lexists(self._sides + suffix) for suffix in _SIDE_FILES):
            return False  # a writer has it open: it may be writing it
        with Path(self._path).open("rb") as now, Path(copy).open("rb") as made:
            first = bytearray(now.read(_COMPARED_BYTES))
            was: bytes | bytearray = first
            is_ = made.read(_COMPARED_BYTES)
            for start, end in _SET_BY_A_BACKUP:
                first[start:end] = is_[start:end]
            while was == is_:
                if not is_:
                    return True
                was, is_ = now.read(_COMPARED_BYTES), made.read(_COMPARED_BYTES)
            if len(is_) < len(was) and was.startswith(is_):  # (the copy ends, the file not)
                page_size = int.from_bytes(first[16:18], "big")
                raise StorageError(self._past_the_last_page(
                    made.tell(), os.fstat(now.fileno()).st_size,
                    65536 if page_size == 1 else page_size))  # (1: 65536, SQLite's format)
        return False

    def _past_the_last_page(self, ends: int, size: int, page_size: int) -> str:
        """Say that the file goes on past byte `ends`, its pages' end (see `_copied_as_it_is`)."""
        return (f"database {self._path!r} has {size - ends:,} bytes past its last page (the "
                f"{ends // page_size:,} pages of {page_size:,} bytes its header counts end at "
                f"byte {ends:,}): SQLite leaves none and never reads them, so its copy leaves "
                "them out and cannot be checked against the file; something else wrote them. "
                "Once you know they are nothing of yours, remove them (truncate -s "
                f"{ends} {_for_a_shell(self._path)}) and back up again")

    @contextmanager
    def _one_snapshot(self) -> Iterator[None]:
        """Hold one read transaction over the block: the backup's steps read one moment.

        A step opens a read transaction only if none is open, and ends the one
        it opened; a writer's commit between two steps then restarts the copy
        from its first page (the copy of a later moment, or never done while
        writers commit faster). Held open here, each step reads the snapshot
        of the first; writers go on (WAL), as under the one step's read lock.
        """
        try:  # (BEGIN inside: see `read`)
            self.conn.execute("BEGIN")
            self.conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()  # (begins it)
            yield
        finally:
            self._rollback()

    def close(self) -> None:
        """Close the connection (idempotent).

        After an I/O error of the storage, the last connection does not fold
        the `-wal` into the database file as it closes: it stays for recovery.
        """
        try:
            if self._turns is not None:
                self._turns.close()
        finally:
            if self._guard is not None and self._guard.has_failed():
                with contextlib.suppress(apsw.Error):
                    self.conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            self._close_connection()

    def _close_connection(self) -> None:
        """Close the connection, letting go of its files first (see `_files`)."""
        held = self._guard or self._mark
        if held is not None:
            held.letting_go()  # before it: its close may delete the -wal (see there)
        try:
            self.conn.close()
        finally:
            if _closed(self.conn):  # after it: a fork until then copies it open (see _files)
                if held is not None:
                    held.close()  # (its count would keep the file's registry alive)
            elif held is not None:  # its close failed: it still holds its files,
                held.still_holding()  # and a close() again may release them

    # -- low level -------------------------------------------------------

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; every statement of the engine passes here."""
        return list(self.conn.execute(sql, params))

    def _stream(self, sql: str, params: tuple[Any, ...] = ()) -> Iterable[tuple[Any, ...]]:
        """Run one statement and yield its rows as SQLite produces them (for the audit)."""
        return self.conn.execute(sql, params)

    def _exec_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement for many rows; the bulk twin of `_exec`."""
        self.conn.executemany(sql, rows)

    def _wal_hook(self, _conn: apsw.Connection, _db: str, pages: int) -> int:
        self._wal_pages = pages
        assert self._on_wal is not None
        try:
            self._on_wal(pages)
        except Exception:  # the commit is durable already: it must not be reported as failed
            # SQLite calls this hook after the commit; an exception here would
            # make APSW's COMMIT raise for a transaction that did commit (its
            # callers told "failed" or "outcome unknown"). A checkpoint request
            # that could not be made is retried at the next commit, and the
            # writer's own catch-up (`CATCH_UP_PAGES`) bounds the WAL meanwhile.
            with contextlib.suppress(Exception):
                logger.exception("asking for a WAL checkpoint after a commit failed",
                                 extra={"outcome": "checkpoint_failed"})
        return apsw.SQLITE_OK

    def checkpoint(self) -> tuple[int, int]:
        """Copy committed WAL pages into the database file without blocking anyone.

        A PASSIVE checkpoint: it copies what no reader still needs and never
        waits for a lock. Returns (pages in the WAL, pages copied); (0, 0)
        when another connection is checkpointing at that moment.
        """
        if self._guard is not None and self._guard.has_failed():
            raise StorageError(str(self._guard.refusal()))  # (fsync can no longer be trusted)
        try:
            return self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        except apsw.BusyError:
            return 0, 0  # another connection (or process) is checkpointing right now
        except apsw.Error as e:
            self._storage_failed(e, writing=True)  # it writes and syncs the database file
            raise self._translate(e) from e

    def _on_busy(self, prior_calls: int) -> bool:
        now = time.monotonic()
        if prior_calls == 0:
            self._busy_since = now
        deadline = self._busy_since + self._timeout if self._deadline is None else self._deadline
        if now >= deadline:
            self._gave_up = True
            self.busy_wait_seconds += now - self._busy_since
            return False
        delay = min(self._poll, 0.0001 * 2 ** min(prior_calls, 20), deadline - now)
        time.sleep(delay)
        return True

    def _storage_failed(self, e: apsw.Error, *, writing: bool) -> None:
        """Latch the database (see `_files`) on an I/O error that may have lost a write.

        `writing`: the error came from a COMMIT or a checkpoint, where any I/O
        error counts; elsewhere only the codes of a failed write (`_LOST_WRITES`).
        """
        lost = isinstance(e, apsw.IOError) if writing else (
            getattr(e, "extendedresult", None) in _LOST_WRITES)
        if lost and self._guard is not None:
            self._guard.failed(e)

    def _translate(self, e: apsw.Error) -> Exception:
        self._storage_failed(e, writing=False)
        if isinstance(e, apsw.BusyError):
            if self._gave_up:
                return self._lock_timeout()
            return BusyIncidentError(f"database busy without waiting (would-be deadlock): {e}")
        return StorageError(f"database error: {type(e).__name__}: {e}")

    def _lock_timeout(self) -> LockTimeoutError:
        msg = (f"database write lock not acquired within {self._timeout * 1000:.0f} ms "
               "(another connection holds it); nothing was changed")
        return LockTimeoutError(msg)

    @contextmanager
    def write(self) -> Iterator[None]:
        """Run the block in one `BEGIN IMMEDIATE` transaction; roll back on any error.

        The writer first takes its turn among the file's writers (see
        `jackpot.storage._turns`), then SQLite's write lock; the two waits
        together are bounded by the lock timeout. Keeps `seen_versions`.
        """
        if self._read_only:
            msg = f"database {self._path!r} was opened read-only: nothing was changed"
            raise StorageError(msg)
        self._gave_up = False
        started = time.monotonic()
        if self._turns is None:
            self._turns = WriterTurns(self._path, create=self._make_lock_file)
        try:  # (acquire inside: a Ctrl-C as it returns still gives the turn back)
            if not self._turns.acquire(self._timeout):
                self._gave_up = True
                raise self._lock_timeout()
            try:  # (BEGIN inside: see `read`; a failed one has rolled back, nothing to end)
                self._begin(started)
                yield
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, apsw.Error):
                    raise self._translate(exc) from exc
                raise
            try:
                self._exec("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, apsw.Error):
                    raise self._commit_failed(exc) from exc
                raise
        finally:
            self._turns.release()
        if self._wal_pages >= CATCH_UP_PAGES:
            # The background checkpoint fell far behind (or cannot run): do
            # what SQLite's automatic checkpoint would, after the commit.
            self._wal_pages = 0
            try:
                self.checkpoint()
            except StorageError as e:  # the commit stands; the next one tries again
                with contextlib.suppress(Exception):  # (so it does, whatever a log filter does)
                    logger.warning("a catch-up checkpoint of %s failed: %s", self._path, e,
                                   extra={"outcome": "checkpoint_failed"})

    def _begin(self, started: float) -> None:
        """BEGIN IMMEDIATE by the lock timeout counted from `started`; note others' commits."""
        self._deadline = started + self._timeout
        try:
            self._exec("BEGIN IMMEDIATE")
            # Changes whenever another connection commits (not for our own commits).
            ((version,),) = self._exec("PRAGMA data_version")
            if self._guard is not None:
                self._guard.check()
        except apsw.Error as e:
            self._rollback()
            raise self._translate(e) from e
        except StorageError:
            self._rollback()
            raise
        finally:
            self._deadline = None
        if version != self._data_version or self.seen_versions is None:
            self.seen_versions = {}  # another committed: what this one saw may have moved
        self._data_version = version
        self.lock_wait_seconds = time.monotonic() - started

    def _commit_failed(self, e: apsw.Error) -> Exception:
        """Translate an error of COMMIT: past its first WAL write, the outcome is unknown.

        SQLite writes the transaction's frames, the last one marked as the
        commit, then syncs the WAL. If that sync (or a write SQLite cannot
        tell went through) fails, COMMIT reports the error and this process
        no longer sees the transaction, but the frames may be in the file:
        should the process die before the next write reuses that space, the
        recovery of the next opener replays them and the transaction is
        there. So the caller may not be told "nothing changed". A busy
        database or a full disk stops before the commit frame is written.
        """
        if isinstance(e, (apsw.BusyError, apsw.FullError)):
            return self._translate(e)
        self._storage_failed(e, writing=True)
        msg = (f"database error while committing: {type(e).__name__}: {e}; the "
               "transaction may have reached the file all the same (its outcome is "
               "unknown): resend the operation with the same op_id to learn it")
        return StorageError(msg, outcome_unknown=True)

    def _rollback(self) -> None:
        # A closed connection has no transaction to end (a copy's snapshot left to the
        # garbage collector by a second Ctrl-C ends after the store closed).
        if not _closed(self.conn) and self.conn.in_transaction:
            # A failed ROLLBACK means SQLite already rolled back (e.g. after an
            # I/O error); the original error is what the caller needs.
            with contextlib.suppress(apsw.Error):
                self.conn.execute("ROLLBACK")

    @contextmanager
    def read(self) -> Iterator[None]:
        """Run the block in one read transaction (a consistent snapshot).

        Raises:
            StaleReadError: (read-only store reading an immutable file) the
                file changed during the read: what was read may be torn.

        """
        try:
            # BEGIN inside the `try` that ends it: a signal's exception (Ctrl-C, a
            # request deadline's TimeoutError) is raised as the call returns, and
            # raised before the `try` it left the transaction open for good: the
            # engine's reader then refused every read ("cannot start a transaction
            # within a transaction") and pinned the WAL (no checkpoint past it).
            try:
                self._exec("BEGIN")
                yield
            finally:
                self._rollback()
        except Exception as e:
            # An immutable read of a file a writer changed meanwhile may see
            # torn pages: SQLite then says "malformed". Stale, not corrupt.
            if self._changed():
                raise self._stale() from e
            if isinstance(e, apsw.Error):
                raise self._translate(e) from e
            raise
        if self._changed():
            raise self._stale()

    def _changed(self) -> bool:
        """Whether the file an immutable read began on has changed since."""
        if self._stamp is None:
            return False
        try:
            return self._file_stamp() != self._stamp
        except OSError:  # gone or replaced meanwhile
            return True

    def _stale(self) -> StaleReadError:
        msg = (f"database {self._path!r} changed while it was read (a writer opened "
               "it): read it again")
        return StaleReadError(msg)

    # -- schema ------------------------------------------------------------

    def migrate(self) -> int:
        """Bring the schema to the latest version; return that version.

        Raises:
            StorageError: the file has a newer schema (nothing is changed), or
                the migration failed (rolled back; or, failing at COMMIT, the
                file is at the old schema or the new one, whole).
            LockTimeoutError: another connection held the write lock (of an
                older schema, the message says another process may be
                migrating it).

        """
        try:
            return self._migrate()
        except LockTimeoutError as e:
            raise self._migration_awaited(e) from e
        except StorageError as e:
            if not e.outcome_unknown:
                raise
            cause = e.__cause__ or e
            msg = (f"migrating database {self._path!r} to schema {len(MIGRATIONS)} failed "
                   f"while committing ({type(cause).__name__}: {cause}); the file holds the "
                   "old schema or the new one, whole: open it again (an open migrates it if "
                   "it was not)")
            raise StorageError(msg) from e

    def _migration_awaited(self, e: LockTimeoutError) -> LockTimeoutError:
        """Say why an open of an older schema waited: likely another process migrating it.

        The bare lock timeout leaves an operator who has just upgraded
        guessing; the migration of a large file holds the lock for minutes.
        """
        try:
            current = self._recognise(allow_empty=True)
        except (apsw.Error, StorageError):
            return e
        if not 0 < current < len(MIGRATIONS):
            return e  # (migrated meanwhile: the wait was another writer's)
        msg = (f"{e}: the database is at schema {current} and this library needs "
               f"{len(MIGRATIONS)}; another process may be migrating it (the log of the "
               "one that does says when it started and when it ends): open it again once it "
               "has, or set JACKPOT_LOCK_TIMEOUT_MS to wait longer")
        return LockTimeoutError(msg)

    def _migration_failed(self, e: apsw.Error, current: int) -> StorageError:
        """Say that a migration failed before its COMMIT, and so was rolled back whole.

        The bare "database or disk is full" at an open after an upgrade named
        neither the migration nor the schema the file is still at.
        """
        msg = (f"migrating database {self._path!r} from schema {current} to "
               f"{len(MIGRATIONS)} failed ({self._translate(e)}); it was rolled back: the "
               f"database is at schema {current}, whole. A migration needs free disk (see "
               "Upgrading in jackpot's README): free some and open it again")
        return StorageError(msg)

    def _migrate(self) -> int:
        with self.write():
            (current,) = self._exec("PRAGMA user_version")[0]
            if current > len(MIGRATIONS):  # a newer library migrated it since we opened
                msg = (f"database {self._path!r} has schema version {current}, newer than "
                       f"this library's {len(MIGRATIONS)}: upgrade jackpot (nothing was "
                       "changed)")
                raise StorageError(msg)
            started = time.perf_counter()
            if 0 < current < len(MIGRATIONS):  # (a new file's steps take no time)
                # Reports, this one and the one after the COMMIT: a raising log
                # filter must neither roll the migration back nor fail an open
                # whose migration committed.
                with contextlib.suppress(Exception):
                    logger.info("migrating %s from schema %d to %d under the write lock%s",
                                self._path, current, len(MIGRATIONS),
                                " (schema 3 rebuilds the operations table: about a minute "
                                "per 5 million stored results)"
                                if current < _REBUILT_OPERATIONS else "",
                                extra={"outcome": "migrating"})
            try:
                for number in range(current, len(MIGRATIONS)):
                    self.conn.execute(MIGRATIONS[number])
                self._exec(f"PRAGMA user_version = {len(MIGRATIONS)}")
            except apsw.Error as e:
                raise self._migration_failed(e, current) from e
        if 0 < current < len(MIGRATIONS):
            with contextlib.suppress(Exception):
                logger.info("migrated %s to schema %d in %.1f s", self._path, len(MIGRATIONS),
                            time.perf_counter() - started, extra={"outcome": "migrated"})
        return len(MIGRATIONS)

    # -- levels --------------------------------------------------------------

    def load_level(self, name: str) -> LevelState | None:
        """Return the committed state of one level, or None."""
        rows = self._exec(f"{_SELECT_LEVEL} WHERE name = ?", (name,))
        return level_from_row(rows[0]) if rows else None

    def load_levels(self) -> dict[str, LevelState]:
        """Return every level, by name."""
        rows = self._exec(f"{_SELECT_LEVEL} ORDER BY name")
        return {row[0]: level_from_row(row) for row in rows}

    def level_version(self, name: str) -> int | None:
        """Return the committed version of one level (None: no such level)."""
        rows = self._exec("SELECT version FROM levels WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    def insert_level(self, state: LevelState) -> None:
        """Insert a new level row."""
        self._exec(_INSERT_LEVEL, level_values(state))

    def update_level(self, state: LevelState, *, expected_version: int) -> bool:
        """Write `state` if the row is still at `expected_version`; say if it was."""
        values = level_values(state)
        self._exec(_UPDATE_LEVEL, (*values[1:], state.name, expected_version))
        return self.conn.changes() == 1

    def claim_lock(self, name: str, holder: str | None) -> None:
        """Record `holder` (None: release) as the level's lock holder in this transaction."""
        self._exec("UPDATE levels SET lock_holder = ? WHERE name = ?", (holder, name))

    # -- ledger and operations ----------------------------------------------

    def append(self, op_id: str, entries: list[Entry]) -> None:
        """Append ledger rows for `entries` under `op_id`."""
        self.append_entries([(op_id, e) for e in entries])

    def append_entries(self, entries: list[tuple[str, Entry]]) -> None:
        """Append one ledger row per (op_id, entry), in order."""
        self._exec_many(_INSERT_ENTRY, [entry_values(op_id, e) for op_id, e in entries])

    def find_operation(self, op_id: str) -> StoredOperation | None:
        """Return the stored first result of `op_id`, or None."""
        return self.find_operations([op_id]).get(op_id)

    def find_operations(self, op_ids: list[str]) -> dict[str, StoredOperation]:
        """Return the stored first results of those `op_ids` that have one."""
        found: dict[str, StoredOperation] = {}
        for i in range(0, len(op_ids), 500):  # stay far below SQLite's bound-parameter limit
            chunk = op_ids[i:i + 500]
            rows = self._exec(
                "SELECT op_id, kind, fingerprint, result FROM operations "
                f"WHERE op_id IN ({', '.join('?' * len(chunk))})", tuple(chunk))
            for op_id, kind, fingerprint, result in rows:
                found[op_id] = StoredOperation(op_id, kind, fingerprint, stored_result(result))
        return found

    def record_operations(self, records: list[StoredOperation], at_ms: int) -> None:
        """Store the first results of op_ids (inside the operations' transaction)."""
        self._exec_many(
            "INSERT INTO operations (op_id, kind, fingerprint, result, at_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            [(r.op_id, r.kind, r.fingerprint, to_json(r.result), at_ms)
             for r in records])

    def ledger(self, *, level: str | None = None, limit: int | None = None,
               kinds: tuple[str, ...] | None = None, newest_first: bool = False
               ) -> list[LedgerRow]:
        """Return ledger rows, optionally of one level and kinds, oldest first."""
        where, params = [], []
        if level is not None:
            where.append("level = ?")
            params.append(level)
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(kinds)
        sql = f"SELECT {', '.join(LedgerRow.__dataclass_fields__)} FROM ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {row_limit(limit)}"
        return [ledger_row(row) for row in self._exec(sql, tuple(params))]

    def ledger_totals(self) -> dict[str, LedgerTotals]:
        """Return, per level, what its ledger rows add up to (see `Store.ledger_totals`).

        SQLite's SUM of integers raises on overflow; only a forged amount near
        2**63 can make it, and the audit must then report the rows, not stop:
        the sums are then made exactly in Python instead.
        """
        try:
            return super().ledger_totals()
        except (apsw.SQLError, StorageError) as e:
            if not _sum_overflowed(e):
                raise
        return self._ledger_totals_exactly()

    def ledger_pass(self, limit: int = 20) -> LedgerPass:
        """Return what `Store.ledger_pass` does, in one walk of the ledger where it can.

        As `ledger_totals`: should a forged amount make SQLite's SUM overflow,
        the three queries run apart, each summing exactly in Python then.
        """
        try:
            return super().ledger_pass(limit)
        except (apsw.SQLError, StorageError) as e:
            if not _sum_overflowed(e):
                raise
        return self._ledger_apart(limit)

    def contributions_by_period(self) -> dict[str, dict[int, tuple[int, int]]]:
        """Return, per level and rate period, (sum of bets, sum of overflow) of its bets.

        As `ledger_totals`: should a forged amount make SQLite's SUM overflow,
        the sums are made exactly in Python instead.
        """
        try:
            return super().contributions_by_period()
        except (apsw.SQLError, StorageError) as e:
            if not _sum_overflowed(e):
                raise
        self.conn.create_aggregate_function("jackpot_exact_sum", _ExactSum, 1)
        return self._contributions_by_period("jackpot_exact_sum")

    def recorded_results(self) -> Iterator[RecordedResult]:
        """Yield each recorded operation that has ledger rows, with what they say.

        As `ledger_totals`: should a forged amount make SQLite's SUM overflow,
        the operations not yielded yet are summed again, exactly, in Python.
        """
        last: str | None = None
        try:
            for result in super().recorded_results():
                last = result.op_id
                yield result
        except (apsw.SQLError, StorageError) as e:
            if not _sum_overflowed(e):
                raise
        else:
            return
        self.conn.create_aggregate_function("jackpot_exact_sum", _ExactSum, 1)
        for result in self._recorded_results("jackpot_exact_sum"):
            if last is None or result.op_id > last:  # (in op_id order, as the first pass)
                yield result

    def _ledger_totals_exactly(self) -> dict[str, LedgerTotals]:
        # The same query with exact sums: its counts, minima and maxima are
        # SQL's own, whatever a table rebuilt without STRICT and NOT NULL holds
        # (a NULL, text), as the query that overflowed would have had them.
        self.conn.create_aggregate_function("jackpot_exact_sum", _ExactSum, 1)
        return self._ledger_totals("jackpot_exact_sum")

    def integrity_check(self) -> str:
        """Return 'ok' when SQLite's integrity_check passes and nothing of the schema is missing.

        Not a trigger, an index, a table's STRICT or NOT NULL (`constraint_problems`), one
        of its CHECKs (`_lost_checks`), a column's type (`_retyped`), nor its BINARY
        collation (`_collations`).
        """
        problems = [str(r[0]) for r in self._exec("PRAGMA integrity_check")]
        if problems == ["ok"]:
            problems = []
        triggers = dict(self._exec("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
        problems.extend(f"trigger {t} is missing: history is not append-only"
                        for t in SQLITE_TRIGGERS if t not in triggers)
        problems.extend(f"trigger {t} is not the engine's: history is not append-only"
                        for t in SQLITE_TRIGGERS
                        if t in triggers and trigger_key(triggers[t]) not in ENGINE_TRIGGERS[t])
        tables = ", ".join("?" * len(STRICT_TABLES))
        problems.extend(insert_hook_problems(
            (table.lower(), "trigger", name) for name, table, sql in self._exec(
                "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
                f"AND lower(tbl_name) IN ({tables}) ORDER BY lower(tbl_name), name",
                STRICT_TABLES) if runs_before_insert(sql)))
        indexes = {table: self._indexes(table) for table in STRICT_TABLES}
        problems.extend(index_problems(indexes["ledger"]))
        problems.extend(key_problems(lambda table: indexes[table].values()))
        problems.extend(refusing_index_problems(
            indexes, lambda: {t: self._defaults(t) for t in indexes}))
        strict = dict(self._exec("SELECT name, strict FROM pragma_table_list "
                                 f"WHERE schema = 'main' AND name IN ({tables})", STRICT_TABLES))
        problems.extend(constraint_problems(
            (t for t, kept in strict.items() if not kept),
            ((t, r[0]) for t in STRICT_TABLES for r in self._exec(
                'SELECT name FROM pragma_table_info(?) WHERE NOT "notnull" AND pk = 0',
                (t,)))))
        problems.extend(self._lost_checks())
        problems.extend(self._collations())
        problems.extend(self._retyped([t for t, kept in strict.items() if kept]))
        # The ledger's level REFERENCES levels (name) (its primary key: `to` may be NULL).
        if not any(r[0] == "levels" and r[1] == "level" and r[2] in (None, "name")
                   for r in self._exec('SELECT "table", "from", "to" FROM '
                                       "pragma_foreign_key_list('ledger')")):
            problems.append(LOST_FOREIGN_KEY)
        return "; ".join(problems) or "ok"

    def _retyped(self, strict: list[str]) -> list[str]:
        """Name each of the engine's columns that a `strict` table declares of another type.

        (`type_problems`.) The engine declares each INTEGER or TEXT (INT is
        INTEGER to SQLite). A table that lost its STRICT is told as such: its
        types hold nothing.
        """
        return type_problems(((t, c, kind) for t in strict for c, kind in self._exec(
            "SELECT name, CASE upper(type) WHEN 'INT' THEN 'INTEGER' ELSE upper(type) END "
            "FROM pragma_table_info(?) ORDER BY cid", (t,))), text="TEXT", integer="INTEGER")

    def _collations(self) -> list[str]:
        """Name each of the engine's columns, and unique index keys, not compared BINARY.

        (`collation_problems`: a table rebuilt with `status TEXT COLLATE RTRIM`
        keeps its CHECK, which then takes 'active   ' for 'active';
        `index_collation_problems`: a unique index on `op_id COLLATE NOCASE`
        refuses op_id B1 after b1.)
        """
        columns = {(t, c): collation for t in STRICT_TABLES for (c,) in self._exec(
            "SELECT name FROM pragma_table_info(?) ORDER BY cid", (t,))
            if (collation := self.conn.column_metadata("main", t, c)[1]).upper() != "BINARY"}
        tables = ", ".join("?" * len(STRICT_TABLES))
        # Each unique index's key columns (an expression's aside: no column's) of another.
        keys = self._exec(
            "SELECT m.name, l.name, x.name, x.coll FROM sqlite_master AS m, "
            "pragma_index_list(m.name) AS l, pragma_index_xinfo(l.name) AS x "
            f"WHERE m.type = 'table' AND m.name IN ({tables}) AND l.\"unique\" AND x.key "
            "AND x.name IS NOT NULL AND upper(x.coll) != 'BINARY' ORDER BY m.name, l.name, x.seqno",
            STRICT_TABLES)
        return [*collation_problems(((t, c, k) for (t, c), k in columns.items()), "BINARY"),
                *index_collation_problems(((t, i, c, k) for t, i, c, k in keys
                                           if str(k).upper() != columns.get((t, c), "").upper()),
                                          "BINARY")]

    def _lost_checks(self) -> list[str]:
        """Name, per table, each CHECK of the engine's schema that the table's SQL no longer has.

        A table rebuilt without them (created anew, filled, renamed: how SQLite
        changes a constraint) takes values the engine never writes, as one
        rebuilt without STRICT or NOT NULL does; it is told by the expression,
        SQLite's CHECKs having no name.
        """
        tables = ", ".join("?" * len(ENGINE_CHECKS))
        declared = {r[0]: str(r[1]) for r in self._exec(
            f"SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name IN ({tables})",
            tuple(ENGINE_CHECKS))}
        problems = []
        for table, engine_s in ENGINE_CHECKS.items():
            kept = check_keys(declared.get(table, ""))
            gone = [c.shown for c in engine_s if c.key not in kept]
            if gone:
                problems.append(lost_checks(table, gone))
        return problems

    def _unkept_integers(self) -> tuple[str, ...]:
        """Return the ledger's integer columns SQLite no longer holds to integers (see `Store`).

        All of them once the table is not STRICT; else those whose NOT NULL is
        gone, or that are declared another type than an integer: STRICT keeps
        a cell of its column's declared type, and ANY or TEXT takes text.
        """
        if not self._ledger_strict():
            return LEDGER_INTEGERS
        unkept = {r[0] for r in self._exec(
            "SELECT name FROM pragma_table_info(?) "
            """WHERE NOT "notnull" OR upper(type) NOT IN ('INTEGER', 'INT')""", ("ledger",))}
        return tuple(c for c in LEDGER_INTEGERS if c in unkept)

    def _unkept_not_nulls(self) -> tuple[str, ...]:
        """Return the columns of `ROW_TOLD_NULLS` whose NOT NULL is gone (see `Store`)."""
        nullable = {r[0] for r in self._exec(
            'SELECT name FROM pragma_table_info(?) WHERE NOT "notnull"', ("ledger",))}
        return tuple(c for c in ROW_TOLD_NULLS if c in nullable)

    def _unkept_texts(self) -> tuple[str, ...]:
        """Return the ledger's text columns SQLite no longer holds to text (see `Store`).

        All of them once the table is not STRICT; else those declared another
        type than TEXT (ANY keeps a BLOB or an integer as it is). A lost NOT
        NULL lets in only a NULL, told by the checks that read the column.
        """
        if not self._ledger_strict():
            return LEDGER_TEXTS
        unkept = {r[0] for r in self._exec(
            "SELECT name FROM pragma_table_info(?) WHERE upper(type) != 'TEXT'", ("ledger",))}
        return tuple(c for c in LEDGER_TEXTS if c in unkept)

    def _ledger_strict(self) -> bool:
        strict = self._exec("SELECT strict FROM pragma_table_list "
                            "WHERE schema = 'main' AND name = 'ledger'")
        return bool(strict and strict[0][0])

    def _defaults(self, table: str) -> dict[str, str | None]:
        """Return the default of each of `table`'s columns that gives every row one value.

        (`refusing_index_problems`: None where it has none, or NULL.) A literal
        (`''`, `0`, `CURRENT_TIMESTAMP`, of one second) gives one, and so does an
        expression, unless it calls random() or randomblob(), which give each
        row another value (`(lower(hex(randomblob(16))))`, a rebuilt table's:
        ADD COLUMN takes no expression).
        """
        return {name: None if default is None or default.upper() == "NULL" else default
                for name, default in self._exec(
                    "SELECT name, dflt_value FROM pragma_table_info(?)", (table,))
                if default is None or not _RANDOM.search(_LITERALS.sub("''", default))}

    def _indexes(self, table: str) -> dict[str, IndexShape]:
        # A generated column (hidden 2, 3) is an expression of others: None, as one.
        generated = {r[0] for r in self._exec(
            "SELECT name FROM pragma_table_xinfo(?) WHERE hidden IN (2, 3)", (table,))}
        return {name: IndexShape(bool(unique), tuple(
            None if c[0] in generated else c[0] for c in self._exec(
                "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,))), bool(partial))
            for name, unique, partial in self._exec(
                'SELECT name, "unique", partial FROM pragma_index_list(?)', (table,))}


_LITERALS = re.compile(r"'(?:[^']|'')*'")
"""A string literal of SQL (its quote doubled within)."""
_RANDOM = re.compile(r"\brandom(?:blob)?\s*\(", re.IGNORECASE)
"""A call of SQLite's functions that give each call another value."""


class _ExactSum:
    """SUM without SQLite's 64-bit limit, for the audit of a ledger with a forged amount.

    As SUM, it leaves out a NULL, and is NULL when every value was (a table
    rebuilt without NOT NULL holds them); what is no number (text or a BLOB
    in a table rebuilt without STRICT) is left out too.
    """

    def __init__(self) -> None:
        self.total: int | float | None = None

    def step(self, *values: apsw.SQLiteValue) -> None:
        """Add one row's value (a REAL where SQLite's own arithmetic overflowed)."""
        (value,) = values
        if isinstance(value, (int, float)):
            self.total = value if self.total is None else self.total + value

    def final(self) -> str | float | None:
        """Return the sum; an int as text (past 2**63 it is no SQLite integer; int() reads it)."""
        return str(self.total) if isinstance(self.total, int) else self.total


def _odd_side_file(sides: str) -> str | None:
    """Name the first of a database's -wal, -shm, -journal that is there but no file, or None.

    SQLite cannot use a directory (or a FIFO, a socket, a device) by such a
    name, and says only that the database could not be opened, or that a
    disk failed. (`sides`: see `_named_by_sqlite`.)
    """
    for suffix in _SIDE_FILES:
        side = sides + suffix
        try:
            mode = Path(side).stat().st_mode
        except OSError:  # (none, or none to be seen: nothing to say of it)
            continue
        if not stat.S_ISREG(mode):
            what = "a directory, not a file" if stat.S_ISDIR(mode) else "not a regular file"
            return f"its {suffix} {side!r} is {what}"
    return None


def _named_by_sqlite(path: str) -> str:
    """Return the name SQLite gives the file `path`: its -wal, -shm and -journal are beside it.

    SQLite resolves symbolic links as it opens a file, and names its side files
    after the file a link points to: beside a link to a database that is
    served there is no -wal, and a reader that looked there read the file as
    if nobody had it open (immutable), without the commits in its -wal.
    """
    try:
        return os.path.realpath(path)
    except OSError:  # (a working directory deleted: SQLite cannot open it either)
        return path


def _names_of(path: str) -> int:
    """Return how many names (hard links) the file at `path` has; 1 for a non-file.

    A directory's link count is its entries', not names of one file.
    """
    found = Path(path).stat()
    return found.st_nlink if stat.S_ISREG(found.st_mode) else 1


def _refuse_other_names_to_write(path: str) -> None:
    """Refuse to write a database file that has other names (hard links).

    A write through one name is the file of every name: a hard-linked
    "copy" (a snapshot tree made with `cp -al`, rsnapshot) is no copy, and
    an engine on it changed the others too. And SQLite keeps a database's
    -wal beside the name it was opened by: engines on two names of one
    file wrote to one file through two -wal files, neither seeing the
    other's commits (the second's writes failed, told as a -wal "removed
    or replaced").
    """
    try:
        links = _names_of(path)
    except OSError:  # (not there yet: created, with one name; or SQLite says why not)
        return
    if links > 1:
        msg = (f"{path!r} is one of {links} names (hard links) of one file"
               f"{_names_beside(_named_by_sqlite(path))}: what an engine writes through one "
               "name, every name shows (a hard-linked copy is no copy), and SQLite keeps the "
               "-wal beside the name it opens, so engines on two names would not see each "
               "other's commits; give the file one name before an engine writes it (copy "
               "it with `jackpot backup`, then remove the other names)")
        raise StorageError(msg)


def _for_a_shell(path: str) -> str:
    """Quote `path` for a shell command; a name that starts with - as ./-name (not an option)."""
    return shlex.quote(f"./{path}" if path.startswith("-") else path)


def _names_beside(path: str) -> str:
    """Say which other names the file `path` has in its directory (hard links): ' (...)'."""
    file = Path(path)
    try:
        mine = file.stat()
        with os.scandir(file.parent) as entries:  # (inode(): no stat of each entry)
            names = sorted(repr(entry.name) for entry in entries
                           if entry.inode() == mine.st_ino and entry.name != file.name
                           and os.path.samestat(entry.stat(follow_symlinks=False), mine))
    except OSError:  # (a directory we may not list: the names go untold)
        return ""
    return f" ({', '.join(names)} beside it)" if names else ""


def _closed(conn: apsw.Connection) -> bool:
    """Whether `conn` is closed (its `close()` may have raised before or after closing it)."""
    try:
        _ = conn.filename
    except apsw.ConnectionClosedError:
        return True
    return False


def _sum_overflowed(e: BaseException) -> bool:
    """Whether `e` (or the error it translates) is SQLite's SUM overflowing past 2**63."""
    cause = e if isinstance(e, apsw.SQLError) else e.__cause__
    return isinstance(cause, apsw.SQLError) and "integer overflow" in str(cause)


class _PermissionsRefusedError(Exception):
    """A backup's file may not be given who may read the database (chown, chmod refused)."""


def _partial_exists(target: str, partial: str) -> str:
    return (f"{partial!r} exists: a backup to {target!r} is being made, or one that was "
            "stopped (Ctrl-C, a crash) left it unfinished; remove it (and any -journal "
            f"beside it) once no backup to {target!r} is running")


def _remove_the_copy(target: str, partial: str, mine: os.stat_result) -> None:
    """Remove the copy a failed backup made at `partial` (`mine`: it, made), or at `target`.

    Named `target` (a Ctrl-C as it was named): whole, but not returned. A second
    Ctrl-C here leaves the partial name (told as such by the next backup), or
    the whole copy at `target`. Each is removed only if it is the file made
    (`mine`): once it was named `target`, its partial name is free, and another
    backup to `target` may have made its own copy there since.
    """
    with contextlib.suppress(OSError):
        if os.path.samestat(os.lstat(target), mine):
            Path(target).unlink()
    with contextlib.suppress(OSError):
        if os.path.samestat(os.lstat(partial), mine):
            for suffix in ("", *_SIDE_FILES):
                with contextlib.suppress(OSError):
                    Path(partial + suffix).unlink()


def _create(partial: str, mode: int, made: list[int], *, target: str) -> None:
    """Create the file `partial` (for a backup to `target`), its descriptor put in `made`.

    Created exclusively: another file at that path is never overwritten. The
    descriptor is put in `made` by C code as the file is made: bound by
    `made = os.open(...)`, it was lost to a Ctrl-C handled as os.open returned,
    before the name was bound (Python runs a signal's handler between
    bytecodes, first as a call returns), and the partial name was left behind,
    an empty file the backup did not know it had made. A list's extend() takes
    it from os.open with no bytecode between them.
    """
    try:
        made.extend(itertools.starmap(os.open, [(partial, _CREATE, mode)]))
    except FileExistsError:
        raise StorageError(_partial_exists(target, partial)) from None
    except OSError as e:  # (mostly the directory's: missing, not ours to write, read-only)
        msg = (f"cannot create {target!r} in the directory "
               f"{str(Path(target).absolute().parent)!r}: {e.strerror}")
        raise StorageError(msg) from e


def _name_it(partial: str, target: str) -> None:
    """Give the whole, synced copy at `partial` the name `target`, never over another file.

    A hard link refuses a `target` made meanwhile, where a rename would replace
    it. A file system without hard links has it renamed, `target` found absent
    just before (a file made there in between is lost: on such a file system
    only). The directory is synced after it: `target` durable, as the copy is.
    """
    try:
        os.link(partial, target, follow_symlinks=False)
    except FileExistsError:
        msg = f"{target!r} exists (it was made during the copy): a backup goes to a new file"
        raise StorageError(msg) from None
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(target):
            msg = (f"{target!r} exists (it was made during the copy): a backup goes to a "
                   "new file")
            raise StorageError(msg) from None
        Path(partial).rename(target)
    else:
        Path(partial).unlink()
    directory = os.open(Path(target).resolve().parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # its name, durable too
    finally:
        os.close(directory)


def _owner_reads_and_writes(made: int) -> None:
    """Let the owner of the new file `made` read and write it, whatever the umask took.

    Under a umask without the owner's write bit (0277) the file was made 0400:
    SQLite opened the copy read-only and the copy failed ("attempt to write a
    readonly database"). Its owner makes it, then audits it.
    """
    mode = stat.S_IMODE(os.fstat(made).st_mode)
    if ~mode & 0o600:  # (only then: a file system may refuse chmod)
        try:
            os.fchmod(made, mode | 0o600)
        except OSError as e:
            msg = (f"the umask left it {mode:04o} and its owner may not be let read and "
                   f"write it (chmod: {e.strerror})")
            raise _PermissionsRefusedError(msg) from e


def _readers_of_the_group(made: int, group: int) -> None:
    """Give the file `made` the database's `group`, or group bits no wider than its others'.

    A new file takes its maker's group (or its directory's): a database only
    its group may read (0640) was copied into a 0640 file of another group,
    whose members may not read the database. Its maker may give it a group
    of its own only: else its group may read it only as anyone may.
    """
    st = os.fstat(made)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_gid == group or not (mode >> 3) & 0o7 & ~mode:  # (nothing more than others)
        return
    try:
        os.fchown(made, -1, group)
    except PermissionError as e:  # (its maker is not of the database's group)
        try:
            os.fchmod(made, (mode & ~0o070) | (mode & 0o007) << 3)
        except OSError as again:
            msg = (f"it may be given neither the database's group {group} (chown: "
                   f"{e.strerror}) nor a group that may do no more than anyone (chmod: "
                   f"{again.strerror})")
            raise _PermissionsRefusedError(msg) from again


def _dumped_version(*, without_rowid: bool, indexes: set[str]) -> int:
    """Return the schema version whose shape the engine's tables have (found at user_version 0).

    Schema 1 made the operations table WITHOUT ROWID and the ledger an index
    on op_id, 2 dropped that index, 3 rebuilt operations with a rowid. (A
    schema 2 given that index back reads as 1, a schema 1 without it as 2:
    either migrates from there as it would have. A schema 4 must be told
    here.)
    """
    if without_rowid:
        return 1 if "ledger_op_id" in indexes else 2
    return len(MIGRATIONS)


def _out_of_descriptors() -> bool:
    """Say whether this process may open no more files (EMFILE, or the system's ENFILE)."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as e:
        return e.errno in (errno.EMFILE, errno.ENFILE)
    return False


def _descriptor_limit() -> str:
    """Name this process's limit on open files, as `ulimit -n` shows it.

    (`resource` is imported with the module: out of descriptors, an import
    of a module not yet loaded fails, as it must open its file.)
    """
    if _resource is None:  # pragma: no cover - Windows
        return "no more"
    try:
        soft = _resource.getrlimit(_resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return "no more"
    return "no more" if soft == _resource.RLIM_INFINITY else f"{soft:,} (`ulimit -n`)"


def _longest_name(directory: Path) -> int | None:
    """Return the longest name (in bytes) a file in `directory` may have; None if unknown.

    None too where the system sets no limit: `os.pathconf` then says -1 (and
    a file system may say 0), which taken as the limit refused every name.
    """
    try:
        longest = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):  # (no such directory: said otherwise; no such limit)
        return None
    return longest if longest > 0 else None


def _name_too_long(path: str, suffix: str, *, sides: str | None = None) -> str | None:
    """Say why `path` (with `suffix`, SQLite's file beside it) is too long a name, if it is.

    SQLite says only "unable to open database file"; and a writer's name
    within 8 bytes of the limit opened (the file made, empty) and then
    failed at its `-journal`. `sides`: the name SQLite gives the file
    (`_named_by_sqlite`: a link's target), whose side files are measured;
    `path` by default.
    """
    named = path if sides is None else sides
    if (longest := _longest_name(Path(named).parent)) is None:
        return None
    if len(os.fsencode(Path(named).name + suffix)) <= longest:
        return None
    beside = f" (SQLite makes its {suffix} file beside it)" if suffix else ""
    return (f"cannot open database {path!r}: its name is too long{beside}: {longest} bytes "
            "is the longest name there; give the database a shorter name")


def _why_not_opened(path: str, e: apsw.Error, *, sides: str, create: bool, read_only: bool,
                    out_of_descriptors: bool) -> str:
    """Say why SQLite could not open `path`, where its own message does not.

    `sides`: the name SQLite gives the file (`_named_by_sqlite`), its -wal,
    -shm and -journal beside it. Looking may fail as the open did (a name too
    long, a folder this user may not search: an OSError from `stat`);
    SQLite's message then stands alone.
    """
    msg = f"cannot open database {path!r}: {e}"
    try:
        if (too_long := _name_too_long(path, "")) is not None:  # (cannot be looked up)
            return too_long
        odd = _odd_side_file(sides)
        if not create and not Path(path).exists():
            msg = f"cannot open database {path!r}: it does not exist"
        elif Path(path).is_dir():  # SQLite says only "unable to open database file"
            msg = f"cannot open database {path!r}: it is a directory, not a file"
        elif not Path(path).parent.is_dir():
            msg = (f"cannot open database {path!r}: there is no directory "
                   f"{str(Path(path).parent)!r} to create it in")
        elif odd is not None:  # SQLite says "unable to open database file" or "disk I/O error"
            msg = (f"cannot open database {path!r}: {odd}; SQLite needs that name for a "
                   "file of its own, and this holds nothing of SQLite's: move it out of the way")
        elif out_of_descriptors:  # SQLite says only "unable to open database file"
            msg += (f" (too many files open: this process may have {_descriptor_limit()}; "
                    "an engine holds about two per level: raise the limit or serve fewer levels)")
        if (read_only and odd is None and Path(sides + "-wal").is_file()
                and not Path(sides + "-shm").exists()):
            msg += (" (reading a WAL database needs its -shm file, which is missing and "
                    "cannot be created here: read it as the user that writes it)")
    except OSError:
        pass  # (the message so far is all that is known)
    return msg
