"""A libpq service's own connection settings are not undone by the engine's defaults.

The engine passes `NETWORK_DEFAULTS` (connect_timeout=10, keepalives, ...) as
keywords to every connection whose URL does not set them; a keyword beats
what the URL's pg_service.conf service gives, so an operator's
`connect_timeout=5` there was silently replaced by 10 s. No server needed:
the service files are written here, and libpq's own reading of them
(`PQconndefaults`, which follows PGSERVICE) is the reference.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from jackpot import StorageError
from jackpot.storage import _pg_service, postgres

URL = "postgresql://app@db.invalid/jackpots"

WriteService = Callable[[str], Path]


@pytest.fixture
def write_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WriteService:
    """Return a writer of the per-user service file, the only one libpq then reads."""
    for name in ("PGSERVICE", "PGSERVICEFILE", "PGCONNECT_TIMEOUT", "PGHOST", "PGPORT"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    (tmp_path / "sysconf").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.pg_service.conf
    monkeypatch.setenv("PGSYSCONFDIR", str(tmp_path / "sysconf"))  # an empty one
    path = tmp_path / "pg_service.conf"

    def write(text: str) -> Path:
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv("PGSERVICEFILE", str(path))
        return path

    return write


def test_a_service_s_connect_timeout_and_keepalives_are_not_overridden(
        write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both ways of naming the service: in the URL, and PGSERVICE.
    write_service("[jp]\nconnect_timeout=5\nkeepalives_idle=7\n")
    expected = {"keepalives": "1", "keepalives_interval": "10", "keepalives_count": "3",
                "tcp_user_timeout": "60000", "connect_timeout": "5"}
    assert postgres.network_defaults(f"{URL}?service=jp") == expected
    monkeypatch.setenv("PGSERVICE", "jp")
    assert postgres.network_defaults(URL) == expected
    # The first connection of a store is bounded by the service's, as by the URL's own.
    assert postgres._first_bound(URL, 30.0) is None


def test_the_url_wins_over_its_service_and_the_service_over_the_environment(
        write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # As libpq takes them: the connection string, the service, then PGCONNECT_TIMEOUT.
    write_service("[jp]\nconnect_timeout=5\n")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    assert "connect_timeout" not in postgres.network_defaults(
        f"{URL}?service=jp&connect_timeout=9")
    assert postgres.network_defaults(f"{URL}?service=jp")["connect_timeout"] == "5"
    assert "connect_timeout" not in postgres.network_defaults(f"{URL}?service=other")


def test_without_a_service_the_defaults_are_as_before(write_service: WriteService) -> None:
    write_service("[jp]\nconnect_timeout=5\n")  # not named by the URL nor by PGSERVICE
    assert postgres.network_defaults(URL) == postgres.NETWORK_DEFAULTS
    assert postgres._first_bound(URL, 30.0) == 30


def test_the_service_is_found_where_libpq_looks(
        tmp_path: Path, write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    write_service("[other]\nconnect_timeout=1\n")  # the per-user file, without it
    (tmp_path / "sysconf" / "pg_service.conf").write_text("[jp]\nconnect_timeout=4\n")
    assert postgres.network_defaults(f"{URL}?service=jp")["connect_timeout"] == "4"
    # ~/.pg_service.conf without PGSERVICEFILE, first; the system-wide file is not read then.
    monkeypatch.delenv("PGSERVICEFILE")
    (tmp_path / "home" / ".pg_service.conf").write_text("[jp]\nconnect_timeout=6\n")
    service = _pg_service.read_service({"service": "jp"}, postgres._KEYWORDS)
    assert service == _pg_service.Service(
        f'service "jp" (in {tmp_path}/home/.pg_service.conf)', {"connect_timeout": "6"})


def test_an_empty_home_is_passed_over_for_the_password_entry_as_libpq_does(
        tmp_path: Path, write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq (pqGetHomeDirectory) takes HOME only when it is not empty, else the
    # effective user's password entry; expanduser("~") took it as "/", and the
    # service in the user's own ~/.pg_service.conf was not found: 10 s, not 6.
    home = tmp_path / "from-passwd"
    home.mkdir()
    (home / ".pg_service.conf").write_text("[jp]\nconnect_timeout=6\n", encoding="utf-8")
    real = pwd.getpwuid

    def getpwuid(uid: int) -> object:
        return SimpleNamespace(pw_dir=str(home)) if uid == os.geteuid() else real(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.setenv("HOME", "")
    assert postgres.network_defaults(f"{URL}?service=jp")["connect_timeout"] == "6"


def test_no_home_nor_password_entry_reads_the_system_wide_file_only(
        tmp_path: Path, write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # (A bare container: libpq finds no home directory and goes on to the system's file.)
    (tmp_path / "sysconf" / "pg_service.conf").write_text(
        "[jp]\nconnect_timeout=4\n", encoding="utf-8")

    def getpwuid(uid: int) -> object:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    monkeypatch.delenv("HOME")
    assert _pg_service.read_service({"service": "jp"}, postgres._KEYWORDS) == (
        _pg_service.Service(f'service "jp" (in {tmp_path}/sysconf/pg_service.conf)',
                            {"connect_timeout": "4"}))


def test_a_per_user_file_that_cannot_be_looked_at_is_passed_over_as_libpq_does(
        tmp_path: Path, write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq's stat fails, and it reads the system-wide file; Path.exists raised
    # (a HOME this user may not search, as after `su` without `-`, or a name
    # too long, as here, which root cannot bypass): open() failed with OSError.
    (tmp_path / "sysconf" / "pg_service.conf").write_text(
        "[jp]\nconnect_timeout=4\n", encoding="utf-8")
    monkeypatch.setenv("HOME", str(tmp_path / ("x" * 300)))
    monkeypatch.setenv("PGSERVICE", "jp")
    libpq = {o.keyword.decode(): o.val for o in psycopg.pq.Conninfo.get_defaults()}
    assert libpq["connect_timeout"] == b"4"
    assert postgres.network_defaults(URL)["connect_timeout"] == "4"


SERVICE_FILES = {
    "plain": "[jp]\nconnect_timeout=5\nkeepalives_idle=7\n",
    "comments and blanks": "# about it\n\n  [jp]\n\t# none\n  connect_timeout=5  \n",
    "the first value wins": "[jp]\nconnect_timeout=5\nconnect_timeout=6\n",
    "the first group only": "[jp]\nkeepalives=0\n[jp]\nconnect_timeout=6\n",
    "after another group": "[jpx]\nconnect_timeout=1\n[jp] trailing\ntcp_user_timeout=5\n",
    "a value's own spaces": "[jp]\nconnect_timeout= 6\n",
    "an empty value": "[jp]\nconnect_timeout=\n",
    "a long line that fits": f"[jp]\nconnect_timeout=5\napplication_name={'x' * 1000}\n",
    # libpq's lines are C strings: a NUL ends one (it was read on: "5\0..." refused
    # as not a whole number, a line "\0..." as a syntax error, the service then undone).
    "a NUL ends a line": "[jp]\nconnect_timeout=5\0 is what it says\n",
    "a line that starts with a NUL is empty": "[jp]\n\0ignored\nconnect_timeout=5\n",
}
"""Service files libpq reads (`PQconndefaults` says what it takes of them)."""

REFUSED = {
    "spaces around =": ("[jp]\nconnect_timeout = 5\n", "syntax error"),
    "an unknown keyword": ("[jp]\nconnect_timeout=5\nconect_timeout=5\n", "syntax error"),
    "a line without =": ("[jp]\nconnect_timeout=5\nkeepalives\n", "syntax error"),
    "a nested service": ("[jp]\nconnect_timeout=5\nservice=jq\n", "nested service"),
    "a line too long": (f"[jp]\nconnect_timeout=5\napplication_name={'x' * 1100}\n",
                        "too long"),
    "not defined": ("[other]\nconnect_timeout=5\n", 'definition of service "jp" not found'),
}
"""Service files libpq refuses (`PQconndefaults` ignores that, keeping what it read before)."""


@pytest.mark.parametrize("text", SERVICE_FILES.values(), ids=SERVICE_FILES.keys())
def test_a_service_file_is_read_as_libpq_reads_it(
        text: str, write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    write_service(text)
    monkeypatch.setenv("PGSERVICE", "jp")
    libpq = {o.keyword.decode(): o.val.decode() for o in psycopg.pq.Conninfo.get_defaults()
             if o.val is not None and o.keyword.decode() in postgres.NETWORK_DEFAULTS}
    service = _pg_service.read_service({}, postgres._KEYWORDS)
    ours = {} if service is None else {
        k: v for k, v in service.settings.items() if k in postgres.NETWORK_DEFAULTS}
    assert ours == libpq


@pytest.mark.parametrize(("text", "error"), REFUSED.values(), ids=REFUSED.keys())
def test_a_service_file_libpq_refuses_is_left_to_libpq(
        text: str, error: str, write_service: WriteService) -> None:
    # libpq fails the connection and says why, naming the file and the line
    # (before any network: host=/nonexistent is never tried).
    write_service(text)
    assert _pg_service.read_service({"service": "jp"}, postgres._KEYWORDS) is None
    with pytest.raises(psycopg.OperationalError, match=error):
        psycopg.connect("service=jp host=/nonexistent")


# ("5\x1c": a space to Python's \s, not to libpq, nor to psycopg, whose message quoted it.)
@pytest.mark.parametrize("value", ["abc", "5s", "5.5", "", "5\x1c"])
def test_a_bad_connect_timeout_in_the_service_fails_at_open_naming_it(
        value: str, write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was overridden by the engine's 10 s; passed on, psycopg's message would
    # quote the value and name neither the service nor its file. Refused before
    # anything connects (db.invalid is never looked up).
    path = write_service(f"[jp]\nconnect_timeout={value}\n")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")  # not read by libpq: the service sets one
    with pytest.raises(StorageError) as info:
        postgres.PostgresStore(f"{URL}?service=jp")
    assert str(info.value) == (
        f'cannot open database postgresql://app@db.invalid/jackpots?service=jp: the '
        f'connect_timeout of '
        f'service "jp" (in {path}) is not a whole number of seconds (connect_timeout=10, '
        "say); nothing was changed")


def test_a_bad_pgconnect_timeout_is_not_refused_where_the_service_sets_one(
        write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq takes the service's and never reads the variable.
    write_service("[jp]\nconnect_timeout=5\n")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "abc")
    with pytest.raises(StorageError) as info:
        postgres.PostgresStore("postgresql://app@127.0.0.1:1/jackpots?service=jp")
    # (Port 1: refused at once. It was refused for PGCONNECT_TIMEOUT before connecting.)
    assert str(info.value).startswith(
        "cannot open database postgresql://app@127.0.0.1:1/jackpots?service=jp: connection "
        "failed: "
        'connection to server at "127.0.0.1", port 1 failed: Connection refused')


@pytest.mark.parametrize(("url", "said"), [
    ("postgresql://?service=jp", "postgresql:///?service=jp"),
    ("postgresql://app:s3cret@/pools?service=jp", "postgresql://app@/pools?service=jp"),
    ("service=jp password=s3cret", "postgresql:///?service=jp"),
])
def test_a_url_that_names_a_service_is_described_with_it(url: str, said: str) -> None:
    # A URL whose service gives the host and database was shown as postgresql:///.
    assert postgres.describe(url) == said


@pytest.mark.parametrize("where", ["PGSERVICEFILE", "~/.pg_service.conf"])
def test_a_per_user_file_that_is_a_directory_is_read_as_empty_as_libpq_does(
        where: str, tmp_path: Path, write_service: WriteService,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq's fopen of a directory succeeds and its first read ends it: no
    # service there, and it goes on to the system-wide file. It was taken as
    # refused, and the engine's 10 s undid the service's 4.
    (tmp_path / "sysconf" / "pg_service.conf").write_text(
        "[jp]\nconnect_timeout=4\n", encoding="utf-8")
    if where == "PGSERVICEFILE":
        monkeypatch.setenv("PGSERVICEFILE", str(tmp_path / "home"))
    else:
        (tmp_path / "home" / ".pg_service.conf").mkdir()
    monkeypatch.setenv("PGSERVICE", "jp")
    libpq = {o.keyword.decode(): o.val for o in psycopg.pq.Conninfo.get_defaults()}
    assert libpq["connect_timeout"] == b"4"
    assert postgres.network_defaults(URL)["connect_timeout"] == "4"


def test_a_line_is_read_in_libpq_s_pieces_not_whole(
        tmp_path: Path, write_service: WriteService, monkeypatch: pytest.MonkeyPatch) -> None:
    # libpq reads a line 1023 bytes at a time and refuses one that fills them;
    # it was read whole first (a PGSERVICEFILE naming a large file without
    # newlines was read into memory whole). A pipe whose writer holds it open,
    # after more than a line, shows that the reading stops where libpq's does.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("PGSERVICEFILE", str(fifo))
    read, gave_up = threading.Event(), threading.Event()

    def write() -> None:
        with fifo.open("wb") as f:
            f.write(b"[jp]\nconnect_timeout=5\napplication_name=" + b"x" * 4096)
            f.flush()
            if not read.wait(timeout=30):  # (the old reading waited for the end of the line)
                gave_up.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        service = _pg_service.read_service({"service": "jp"}, postgres._KEYWORDS)
    finally:
        read.set()
        unblock = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # (a writer still opening it)
        try:
            writer.join()
        finally:
            os.close(unblock)
    assert not gave_up.is_set()
    assert service is None  # (refused, as REFUSED's "a line too long")


def test_a_url_s_service_name_is_matched_as_libpq_gets_it_whatever_the_locale(
        tmp_path: Path) -> None:
    # psycopg passes the URL to libpq in UTF-8, and libpq matches [name] byte
    # for byte; the name was encoded as a file name: in a process whose file
    # names are ASCII (a C locale, UTF-8 mode off) "café" raised
    # UnicodeEncodeError out of open(), and a Latin-1 one matched no group.
    (tmp_path / "pg_service.conf").write_text(
        "[café]\nconnect_timeout=4\n", encoding="utf-8")
    script = (
        "import sys\n"
        "from jackpot.storage import postgres\n"
        "assert sys.getfilesystemencoding() == 'ascii', sys.getfilesystemencoding()\n"
        "print(postgres.network_defaults("
        "'postgresql://app@db.invalid/jackpots?service=caf%C3%A9')['connect_timeout'])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_", "LANG"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PGSERVICEFILE=str(tmp_path / "pg_service.conf"),
               PGSYSCONFDIR=str(tmp_path), PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "4\n", "")
