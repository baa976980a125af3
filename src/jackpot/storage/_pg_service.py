"""The settings a connection's libpq service gives it, read as libpq reads them.

A PostgreSQL URL (or conninfo) may name a service (`service=name`, or
`PGSERVICE` in the environment) whose connection keywords live in a
pg_service.conf: the per-user file (`PGSERVICEFILE`, else
~/.pg_service.conf, ~ being HOME unless empty, else the password entry's),
then the system-wide one (`PGSYSCONFDIR`/pg_service.conf).
libpq takes a keyword from the service only where the connection string
does not give it, so a default the engine passes as a keyword
(`postgres.NETWORK_DEFAULTS`) would undo the service's own. The engine reads
the service here to leave those alone.

Read as libpq 18 reads it (`parseServiceInfo` in fe-connect.c): the first
file that defines the service is the only one read; within it, the first
`[name]` group (a line starting `[name]`) up to the next group; the first
value of a keyword wins; `key=value` exactly as written, but for the
whitespace around the line (so "connect_timeout = 5" is a syntax error,
which libpq refuses), and up to the line's first NUL (a C string); a
per-user file that is a directory reads as empty (libpq's fopen takes it).
A file libpq refuses (a syntax error, a nested service, an unknown keyword,
a line too long, a `PGSERVICEFILE` that does not exist) or a service no
file defines gives None: libpq then fails the connection and says why,
naming the file and line.

Where libpq's reading cannot be followed from here:
- The system-wide directory without `PGSYSCONFDIR` is compiled into libpq,
  and libpq does not tell it: /etc/postgresql-common is assumed (that of
  Debian's libpq and of psycopg's binary packages). Another libpq's
  (`pg_config --sysconfdir`) is read only through `PGSYSCONFDIR`.
- An `ldap` line of the group hands the rest of the lookup to an LDAP
  server: what it may add is not known here (the values before it are).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, NamedTuple

try:
    import pwd as _pwd
except ImportError:  # pragma: no cover - Windows
    _pwd = None  # type: ignore[assignment]

SYSCONFDIR = "/etc/postgresql-common"
"""The system-wide directory assumed without `PGSYSCONFDIR` (see the module's docstring)."""

_SPACE = b" \t\n\v\f\r"  # C's isspace, which libpq strips with
_LINE_MAX = 1023  # libpq reads a line into 1024 bytes: one that fills them is an error


class Service(NamedTuple):
    """A service's definition: where it is, and the keywords it sets."""

    where: str
    """The service and its file, for messages: 'service "name" (in /path)'."""
    settings: dict[str, str]
    """Each keyword the service sets, and its value as written."""


def read_service(given: Mapping[str, object], keywords: Collection[str]) -> Service | None:
    """Return the service the connection keywords `given` use, or None if none can be read.

    `given`: the keywords of the connection string (`conninfo_to_dict`);
    `keywords`: every keyword libpq knows (a line setting another one is a
    syntax error to libpq). None: no service is named, or libpq will
    refuse it (see the module's docstring).
    """
    name = str(given["service"]) if "service" in given else os.environ.get("PGSERVICE")
    if name is None:
        return None
    # Matched byte for byte as libpq gets it: the URL's in UTF-8 (psycopg passes it
    # so), PGSERVICE's as the environment holds it (whatever the locale's encoding).
    group = name.encode() if "service" in given else os.fsencode(name)
    # (Joined and tested as libpq does: "%s/%s", then stat. A PGSERVICEFILE that
    # does not exist is not passed over: libpq refuses it.)
    user_file = os.environ.get("PGSERVICEFILE")
    if user_file is None:
        home = _home()
        user_file = None if home is None else f"{home}/.pg_service.conf"
        if user_file is not None and not _stats(user_file):
            user_file = None
    sys_dir = os.environ.get("PGSYSCONFDIR", None if os.name == "nt" else SYSCONFDIR)
    sys_file = None if sys_dir is None else f"{sys_dir}/pg_service.conf"
    if sys_file is not None and not _stats(sys_file):
        sys_file = None
    try:
        for path in (user_file, sys_file):
            settings = None if path is None else _read_group(path, group, keywords)
            if settings is not None:
                return Service(f'service "{name}" (in {path})', settings)
    except _RefusedError:
        return None
    return None  # defined nowhere: libpq says so


def _home() -> str | None:
    """Return the directory libpq finds ~/.pg_service.conf in (`pqGetHomeDirectory`); None: none.

    HOME unless it is empty, else the password entry of the effective user.
    Not Python's `expanduser`: it takes an empty HOME as "/" (libpq read the
    user's own file, the engine /.pg_service.conf), and it asks for the real
    user's entry.
    """
    if os.name == "nt":
        return f"{os.environ.get('APPDATA', '')}/postgresql"
    home = os.environ.get("HOME")
    if home:
        return home
    if _pwd is None:  # pragma: no cover - every POSIX system has it
        return None
    try:
        return str(_pwd.getpwuid(os.geteuid()).pw_dir)
    except KeyError:  # no password entry either: libpq reads no per-user file
        return None


def _stats(path: str) -> bool:
    """Whether libpq's `stat` of `path` succeeds: a file it goes on to read.

    Any failure passes the file over, as libpq does: `Path.exists` raised
    all but a few (a HOME this user may not search, after `su` without
    `-`; a name too long), out of every open of a URL naming a service.
    """
    try:
        Path(path).stat()
    except (OSError, ValueError):
        return False
    return True


class _RefusedError(Exception):
    """A service file libpq refuses."""


def _read_group(path: str, group: bytes, keywords: Collection[str]) -> dict[str, str] | None:
    """Return the settings of `group` in the file `path`; None if the file has no such group.

    Raises:
        _RefusedError: libpq refuses the file.

    """
    settings: dict[str, str] | None = None  # (a dict once the group is found)
    try:
        with Path(path).open("rb") as f:
            for line in _lines(f):
                if not line or line.startswith(b"#"):
                    continue
                if line.startswith(b"["):
                    if settings is not None:
                        break  # the group's end
                    if line[1:].startswith(group + b"]"):
                        settings = {}
                    continue
                if settings is None:
                    continue
                if line.startswith(b"ldap"):
                    break  # libpq asks an LDAP server (see the module's docstring)
                keyword, value = _setting(line, keywords)
                settings.setdefault(keyword, value)  # (the first one wins)
    except IsADirectoryError:  # libpq opens it, and its first read ends it: read as empty
        return None
    except OSError:  # libpq: "service file not found"
        raise _RefusedError from None
    return settings


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """Yield the lines of `f` as libpq reads them (`fgets` into 1024 bytes), stripped.

    A line in pieces of at most 1023 bytes, each a C string (up to its first
    NUL): nothing longer is read (a file without newlines was read whole).

    Raises:
        _RefusedError: a piece fills the 1023 bytes: libpq says "line too long".

    """
    while piece := f.readline(_LINE_MAX):
        line = piece.partition(b"\0")[0]
        if len(line) >= _LINE_MAX:
            raise _RefusedError
        yield line.strip(_SPACE)


def _setting(line: bytes, keywords: Collection[str]) -> tuple[str, str]:
    """Return the keyword and value a line of a service's group sets (libpq's syntax).

    Raises:
        _RefusedError: libpq refuses the line.

    """
    key, equals, value = line.partition(b"=")
    keyword = key.decode("latin-1")
    if not equals or keyword == "service" or keyword not in keywords:
        raise _RefusedError  # a syntax error to libpq, or a nested service
    return keyword, value.decode("latin-1")
