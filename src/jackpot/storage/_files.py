"""Guards on a SQLite database's files: a moved file, a failed disk.

Two ways a commit can be acknowledged and still be lost, which SQLite does not
stop by itself:

- The files were removed, renamed or replaced under running connections. A
  connection keeps the files it opened: its commits land in a file, or a
  write-ahead log, that nobody will find again (the next `open()` of the path
  starts from another ledger or an empty one; a removed `-wal` goes with the
  process). So a writer checks, as it takes the write lock, that the path and
  its `-wal` and `-shm` still name the files it has open. SQLite itself
  deletes the `-wal` and `-shm` as the last connection holding them closes,
  and the next one's first read makes them anew: what this process noted of
  them is forgotten as its last connection holding them lets go (a
  connection opened that has not read yet holds nothing, so keeps nothing).
- The storage reported an I/O error (a failed write or fsync). Linux reports
  a failed writeback once per open file and then forgets it: a later fsync
  of the same file succeeds although the earlier pages never reached the
  disk ("fsyncgate"), and SQLite's checkpoints trust it. So after the first
  I/O error on a database, no connection of this process writes to it or
  checkpoints it again until every one of them is closed (and the last close
  leaves the `-wal` in place rather than fold it into the file), as
  PostgreSQL stops on a failed fsync. The operator checks the storage and
  opens the database again.

And one way a connection never gets the locks it believes it holds: SQLite
keeps the books of its locks per process, and a child forked while the
parent had the database open copies them, so the child's own connections
count the parent's locks as theirs, locks the kernel never gave the child.
Its writes then wait forever on a write lock the parent held at the fork, or,
its locks unseen by the other processes, an engine closing elsewhere folds
and deletes the `-wal` under it, acknowledged commits included. So such a
child (and its own children) may not open a writing connection to that
database (its read-only ones are not refused here). A read-only
connection reading through the `-shm` (`ReaderMark`) counts as having it
open: SQLite's books hold it as they hold a writer.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import Counter

from jackpot.errors import StorageError

__all__ = ["FileGuard", "ReaderMark", "refuse_inherited"]

Identity = tuple[int, int]
"""A file's (device, inode)."""

_SIDE = ("-wal", "-shm")
_lock = threading.RLock()
"""Guards the record below. Reentrant: a store never closed is released by its finalizer
(`_release`, `_forget_reader`), which the garbage collector runs at any allocation, also
inside a section under this lock in the same thread: a plain lock hung that thread, and
every later open and write of the process, for ever. A finalizer run at any allocation
of a section finds the record consistent: what a section allocates, it allocates before
it reads what it changes, or once its change is whole (a holder is counted first, then
what it holds is noted; `_let_go` makes what it returns first). Under a Python tracer (a
debugger, a profiler) every line allocates: a finalizer may run between any two lines of a
section, and `_let_go` pops what such a finalizer may have taken out already.

Always taken with `with _lock:`: the C lock's own `__exit__` releases it, with no point
between the block's end and the release where CPython runs a signal's handler (Ctrl-C).
A timed `acquire()` has one, just after it returns: its KeyboardInterrupt would leave the
lock held (measured on CPython 3.11: 75 of 2,137 interrupts, none of 1,890 with `with`)."""
_failed: dict[Identity, str] = {}
"""Databases (by file) whose storage reported an I/O error to this process, and the error."""
_sides: dict[Identity, dict[str, Identity]] = {}
"""The `-wal` and `-shm` files of each database, as this process's connections first saw them."""
_holding: dict[Identity, set[object]] = {}
"""Connections of this process that have read the database (`_sides` forgotten when none is)."""
_open: Counter[Identity] = Counter()
"""Writing connections of this process per database file (`_failed` forgotten at 0)."""
_reading: Counter[Identity] = Counter()
"""Read-only connections of this process, reading through the -shm, per database file."""
_inherited: set[Identity] = set()
"""Databases a parent (or an earlier ancestor) of this process had open when it forked."""


def _after_fork_in_child() -> None:
    """Start a forked child with no connections of its own (the parent's stay the parent's)."""
    global _lock  # noqa: PLW0603 - a lock the parent may have held at the fork
    _lock = threading.RLock()
    _inherited.update(_open)
    _inherited.update(_reading)
    _reading.clear()
    _holding.clear()
    _failed.clear()
    _sides.clear()
    _open.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _identity(path: str) -> Identity | None:
    try:
        st = os.stat(path)  # noqa: PTH116 - a third of Path.stat's cost; three run per write
    except OSError:
        return None
    return st.st_dev, st.st_ino


def refuse_inherited(path: str) -> None:
    """Refuse, before SQLite opens it, a database this process inherited open across fork.

    Refused only after the open, the connection's close leaves a descriptor
    open: SQLite's copied books say the parent's connections hold locks on
    the file, and SQLite defers closing a file that its process has locks
    on (closing any descriptor of it would drop them all), keeping the
    descriptor for its next connection to that file. That descriptor is
    SQLite's: never ours to close. `FileGuard` checks again on the file
    then opened (the path may name another one by then).

    Raises:
        StorageError: `path` names such a database.

    """
    _refuse_inherited(path, _identity(path))


def _refuse_inherited(path: str, file: Identity | None) -> None:
    if file in _inherited:
        msg = (f"this process was forked while its parent had database {path!r} open: "
               "SQLite's locks do not survive fork (this process would count the "
               "parent's as its own), so it may not open that database; open it in a "
               "process that had no connection to it when it forked (open the engine "
               "after the fork, or start the workers with the 'spawn' method); nothing "
               "was changed")
        raise StorageError(msg)


class _Holder:
    """A connection of this process, and whether it holds the database's `-wal` and `-shm`."""

    def __init__(self, path: str, file: Identity | None) -> None:
        self.path = path
        self.file = file
        self._token = object()  # its place among `_holding`'s, from `holding()` to `letting_go()`
        self._pid = os.getpid()
        self._gave_up: dict[str, Identity] | None = None  # what `letting_go()` let go of

    def holding(self) -> None:
        """Note that the connection has read: it holds the `-wal` and `-shm` until it closes.

        From its first read to its close, a connection in WAL mode keeps a
        shared lock on the database file, so no connection's close (of any
        process) can fold the `-wal` and delete it and the `-shm` meanwhile:
        only someone else can remove or replace them then. Before its first
        read it holds nothing: the last closing connection deletes them, and
        this one's first read makes them anew, legitimately.

        So the files it holds are noted now, not at the first write: a `-wal`
        removed before the process's first write was otherwise never noted,
        and the writes went on into the removed one (lost with the process).
        A read-only connection reading through the `-shm` holds them too:
        were they forgotten as the last writer let go, a writer opening later
        in the process would note whatever then stood at the path, though
        SQLite gives it the `-shm` the reader still has open (it shares one
        per database file in a process).

        An interrupt anywhere in here leaves nothing wrong: `letting_go()`
        takes the connection out of `_holding` whether it got in or not.
        """
        if self.file is not None and self._pid == os.getpid():
            ours = _identity(self.path) == self.file  # (not another file's, renamed in)
            sides = {suffix: now for suffix in _SIDE
                     if ours and (now := _identity(self.path + suffix)) is not None}
            with _lock:
                _holding.setdefault(self.file, set()).add(self._token)
                noted = _sides.setdefault(self.file, {})
                for suffix, now in sides.items():
                    noted.setdefault(suffix, now)

    def holds(self) -> bool:
        """Whether the connection holds the `-wal` and `-shm` (under `_lock`)."""
        return self._token in _holding.get(self.file, ()) if self.file is not None else False

    def letting_go(self) -> None:
        """Note, just before the connection closes, that it may delete the `-wal` and `-shm`.

        SQLite's close deletes them when no connection holds them any more
        (after folding the `-wal` into the file: nothing is lost), and the
        next connection's first read makes them anew, with other inodes. So
        the last of this process's connections holding them forgets them as
        it lets go, before SQLite may delete them: were they forgotten after,
        a connection that read in between (they were made anew) would keep
        the old ones noted, its writes refused as if someone else had
        replaced them. Forgotten before, a connection reading in between
        holds them first (the close then deletes nothing) and notes them again.
        """
        with _lock:
            self._gave_up = _let_go(self.file, self._token, self._pid)

    def still_holding(self) -> None:
        """Note that the close after `letting_go()` failed: the connection still holds them.

        Its lock kept anyone's close from deleting them meanwhile, so what it
        let go of is noted again, over what a connection that read in
        between noted (the same files, unless someone replaced them since).
        """
        if (gave_up := self._gave_up) is not None and self.file is not None:
            self._gave_up = None
            with _lock:
                _holding.setdefault(self.file, set()).add(self._token)
                _sides.setdefault(self.file, {}).update(gave_up)


class FileGuard(_Holder):
    """The files one writing connection has open, and what it may still do with them."""

    def __init__(self, path: str) -> None:
        """Note the file `path` names now (just opened by the connection)."""
        super().__init__(path, _identity(path))
        # Not found, the file was removed or renamed as the connection opened
        # it: the connection has a file nobody may find again, and nothing to
        # tell it by should the path name a file again (another one, maybe).
        self.unidentified = self.file is None
        _refuse_inherited(path, self.file)  # (the file opened, if replaced since the check)
        # Released by close(), or when the guard is collected (a store never closed).
        # Made before the connection is counted (told by `counted`): made after, an
        # interrupt (Ctrl-C) in between left it counted for good.
        self._counted = counted = [False]
        self._release = weakref.finalize(self, _release, self.file, self._token, self._pid,
                                         counted)
        if self.file is not None:
            with _lock:
                _open[self.file] += 1
                counted[0] = True

    def refusal(self) -> str | None:
        """Say why this connection may not write now (None: it may)."""
        if self.unidentified:
            return (f"database {self.path!r} was not there as this engine opened it "
                    "(removed or renamed meanwhile), so its writes could land in a file "
                    "nobody finds again: close the engine and open the database again")
        if self.file is None:
            return None
        with _lock:
            failed = _failed.get(self.file)
        if failed is not None:
            return (f"the storage of {self.path!r} reported an I/O error ({failed}); since then "
                    "no write of this process can be trusted to reach the disk (a failed write "
                    "is reported once, then forgotten): writes are refused until every "
                    "engine on it is closed; check the storage, open the database again and "
                    "run verify()")
        if _identity(self.path) != self.file:
            return (f"database {self.path!r} is no longer the file this engine opened "
                    "(removed, renamed or replaced since)")
        for suffix in _SIDE:
            now = _identity(self.path + suffix)
            with _lock:  # (noted when first seen by a connection holding them; one
                # that let go, closing, may see files its close is about to delete)
                known = _sides.setdefault(self.file, {}).setdefault(suffix, now) \
                    if now is not None and self.holds() else _sides.get(self.file, {}).get(suffix)
            if known is not None and now != known:
                # The likeliest cause in a game server is no person at all: a
                # connection of another copy of SQLite in this process (Python's
                # sqlite3 module; apsw brings its own) does not see the engine's
                # POSIX locks, takes itself for the last one and, closing, folds and
                # deletes the -wal. Named, so that the operator looks for it.
                return (f"the {suffix} file of {self.path!r} was removed or replaced since "
                        "this engine opened it (what was committed to it is still in the "
                        "engine's hands: close the engine to keep it; a connection of another "
                        "SQLite library in this process, such as Python's sqlite3 module, "
                        "deletes it as it closes: read the database through the engine)")
        return None

    def check(self) -> None:
        """Raise `StorageError` (nothing was changed) if this connection may not write now."""
        if (why := self.refusal()) is not None:
            msg = f"{why}: nothing was changed"
            raise StorageError(msg)

    def failed(self, error: BaseException) -> None:
        """Note an I/O error of the storage: no connection of this process writes there again."""
        if self.file is not None:
            with _lock:
                _failed.setdefault(self.file, f"{type(error).__name__}: {error}")

    def has_failed(self) -> bool:
        """Whether the storage of this database reported an I/O error to this process."""
        with _lock:
            return self.file is not None and self.file in _failed

    def close(self) -> None:
        """Forget this connection (closed); the last one of a database forgets its failure too.

        Released again if an interrupt cut the finalizer short (it runs once
        only): what it did is not done twice (`counted`, `_let_go`).
        """
        try:
            self._release()
        finally:
            _release(self.file, self._token, self._pid, self._counted)
        self.file = None


class ReaderMark(_Holder):
    """A read-only connection that reads a database through its `-shm` (a fork copies it open).

    It holds the `-wal` and `-shm` from its first read as a writer does (see
    `holding()`), so it keeps the record of them after the last writer of
    the process closes.
    """

    def __init__(self, path: str) -> None:
        """Count the file `path` names now (just opened by the connection) until `close()`."""
        super().__init__(path, _identity(path))
        self._counted = counted = [False]  # (the finalizer first: see `FileGuard`)
        self._release = weakref.finalize(self, _forget_reader, self.file, self._token, self._pid,
                                         counted)
        if self.file is not None:
            with _lock:
                _reading[self.file] += 1
                counted[0] = True

    def close(self) -> None:
        """Forget this connection (idempotent; again if interrupted: see `FileGuard`)."""
        try:
            self._release()
        finally:
            _forget_reader(self.file, self._token, self._pid, self._counted)


def _count_down(counts: Counter[Identity], file: Identity | None, pid: int,
                counted: list[bool]) -> bool:
    """Count a connection of `file` out, unless `counted` says it is (under `_lock`).

    True when it was the last. Its count and `counted` change with no call
    in between, where an interrupt could land: counted out once, whoever
    runs this again after an interrupt (`close()`).
    """
    if not counted[0] or file is None or pid != os.getpid():  # (a forked child's: not counted)
        return False
    counts[file] -= 1
    counted[0] = False
    if counts[file] > 0:
        return False
    counts.pop(file, None)
    return True


def _forget_reader(file: Identity | None, token: object, pid: int, counted: list[bool]) -> None:
    with _lock:
        try:  # (counted out even if an interrupt cuts the letting go short)
            _let_go(file, token, pid)
        finally:
            _count_down(_reading, file, pid, counted)


def _let_go(file: Identity | None, token: object, pid: int) -> dict[str, Identity] | None:
    """Take the connection `token` out of `_holding` (under `_lock`; idempotent).

    Returns what it let go of: the files noted, if it was the last holding
    them ({} if not); None if it held nothing.
    """
    if file is None or pid != os.getpid():  # (a forked child's registry never counted it)
        return None
    nothing: dict[str, Identity] = {}  # made before the record is read (see `_lock`)
    holders = _holding.get(file)
    if holders is None:
        return None
    held = token in holders
    holders.discard(token)
    if holders:
        return nothing if held else None
    # Popped, not deleted: the finalizer of the last other holder, run between two lines
    # (under a tracer every line allocates), may have taken the entry and its files out.
    _holding.pop(file, None)  # (also an empty set an interrupted `holding()` left)
    gave_up = _sides.pop(file, None)
    return (gave_up or nothing) if held else None


def _release(file: Identity | None, token: object, pid: int, counted: list[bool]) -> None:
    with _lock:
        try:  # (counted out even if an interrupt cuts the letting go short)
            _let_go(file, token, pid)
        finally:
            if _count_down(_open, file, pid, counted):
                assert file is not None
                _failed.pop(file, None)
