"""The commands of `jackpot` (click + rich); `jackpot.cli.main` is the entry point.

Every command takes `--db PATH` (or JACKPOT_DB) and `--json`, before or after
the command name. Settings come from the JACKPOT_* variables, as for
`JackpotEngine.open`. Exit status: 0 done, 1 the audit (or the health check)
failed or the system refused (port in use...), 2 a bad argument or an error
the engine raised, 130 Ctrl-C (`metrics --serve`, which serves until it is
stopped, ends with 0 at Ctrl-C or SIGTERM), 141 stdout's (or stderr's) reader
left early (`| head`) from a command that did not fail (a failure keeps its
own status); errors are one line on stderr, never a traceback.

The commands that only look (status, history, ledger, verify, metrics) run no
engine: they read through a read-only store (`open_store(read_only=True)`),
so they never migrate, write, create a file or wait for the game server's
write lock, and they refuse a file that is not a jackpot database. Only
`init` creates a database; the other commands that change something open an
engine on an existing jackpot database.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import getpass
import io
import json
import logging
import os
import random
import re
import select
import shlex
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Self, TypeVar

import click
from prometheus_client import generate_latest
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

import jackpot
from jackpot import money, reads
from jackpot._plural import counted
from jackpot.audit import audit
from jackpot.domain import CONFIG_FIELDS, GroupConfig, validate_name
from jackpot.engine import JackpotEngine, check_path
from jackpot.errors import JackpotError, StorageError, ValidationError
from jackpot.health import bounded_checks, redact, report_of
from jackpot.metrics import database_registry, serve_registry
from jackpot.requests import check_text
from jackpot.results import AdminResult, ConfigResult, PoolSnapshot, VerifyReport
from jackpot.settings import Settings, near_misses
from jackpot.storage import StaleReadError, Store, is_database_url, open_store
from jackpot.storage.schema import LEDGER_PARTS

__all__ = ["app", "run"]

_STAKES = (Decimal("0.20"), Decimal("1.00"), Decimal("2.50"), Decimal(10))
_LEDGER_AMOUNTS = ("delta", "balance_after", "reserve_delta", "reserve_after", *LEDGER_PARTS)
"""The amounts of a ledger row (integer units in the store, decimal strings in --json)."""
_WINDOW = 4  # simulate: operations submitted and not finished, per thread
_READ_ATTEMPTS = 3  # a read that saw the file change (a writer started) is read again
_T = TypeVar("_T")
_NOT_SETTINGS = frozenset({"group", "op_id", "expected_version", "who", "reason"})
"""Keywords of `update_config` that `config KEY=VALUE` must not pass as settings."""


class _Console(Console):
    """rich's Console, leaving a reader that left early to the command's end (`run`)."""

    def on_broken_pipe(self) -> None:
        """Raise BrokenPipeError: `run` tells a reader that left (141) from a failure.

        rich's own exits with status 1 (the audit's "failed") and puts
        /dev/null on stdout, for a console on stderr too.
        """
        del self._buffer[:]  # (not written again by the next print, in-process)
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


console = _Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    console = _Console(width=160)  # a pipe or a log file: do not squeeze tables to 80


class _Integer(click.IntRange):
    """An integer option in plain ASCII digits, as the JACKPOT_* variables take them.

    click's own `int()` also reads '١٢' (Arabic-Indic digits), '1_000' and
    ' 5 ': an `--expected-version` or a `--tail` typed so is refused, not
    read as some number the operator may not have meant.

    Leading zeros do not count (as in the variables): 19 digits past them
    reach every version a level can have (up to 2**63 - 1), so a version
    too high is refused by the library, naming the limit.
    """

    name = "integer"
    _PLAIN = re.compile(r"-?0*[0-9]{1,19}", re.ASCII)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """Refuse a string that is not plain digits, then check the range as IntRange does."""
        if isinstance(value, str):
            if not self._PLAIN.fullmatch(value):
                self.fail(f"{_quoted(value)} is not a whole number of at most 19 ASCII digits.",
                          param, ctx)
            digits = value.lstrip("-").lstrip("0") or "0"  # (int() counts zeros to its limit)
            value = -int(digits) if value.startswith("-") else int(digits)
        return super().convert(value, param, ctx)


class _Seed(click.types.IntParamType):
    """simulate's --seed: a whole number in ASCII digits, of any sign, as `random.Random` takes.

    A seed names a run; it counts nothing, so no range bounds it: a 64-bit
    one (20 digits) or '+7' is as exact as '7'. Not money either: no
    fraction. Plain ASCII digits, as the other integer options; at most 64,
    as many as a decimal amount's string may have (`int()` refuses past 4300).
    """

    name = "integer"
    _PLAIN = re.compile(r"[+-]?[0-9]{1,64}", re.ASCII)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        """Return the seed as an int; refuse anything but signed plain digits."""
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # the default
        if not isinstance(value, str) or not self._PLAIN.fullmatch(value):
            self.fail(f"{_quoted(str(value))} is not a whole number of at most 64 ASCII "
                      "digits (with an optional sign).", param, ctx)
        return int(value)


_QUOTED = 40
"""The longest option value a refusal shows whole."""


def _quoted(value: str) -> str:
    """Return an option's value for its refusal: quoted, and said to be cut when it is long.

    Cut to 40 characters unsaid, 65 digits given to --seed read "'99...9' (40
    nines) is not a whole number of at most 64 ASCII digits": the refusal
    showed a value it would have taken.
    """
    if len(value) <= _QUOTED:
        return repr(value)
    return f"{value[:_QUOTED]!r}... ({len(value)} characters)"


class CommandError(click.ClickException):
    """A refused command: one line on stderr, exit status 2."""

    exit_code = 2


@dataclass
class Options:
    """The options every command shares."""

    db: str | None = None
    json: bool = False


def _shared(f: Callable[..., Any]) -> Callable[..., Any]:
    """Accept --db and --json after the command name too."""
    f = click.option("--json", "as_json", is_flag=True, default=None,
                     help="Machine-readable output.")(f)
    return click.option("--db", type=click.Path(), default=None,  # checked by _path
                        help="Database file (default: $JACKPOT_DB).")(f)


_sent_op_id: list[str] = []
"""The op_id of the write this run sends (for the message of an unknown outcome)."""


def _new_op_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    """Return the op_id given, or a new one: a caller's (cli-...), so it can be sent again.

    The engine's own (auto-...) may not be sent by a caller: a write by hand
    whose outcome is unknown could then never be resolved.
    """
    op_id = value if value is not None else f"cli-{uuid.uuid4().hex}"
    _sent_op_id[:] = [op_id]
    return op_id


_op_id_option = click.option(
    "--op-id", default=None, callback=_new_op_id,
    help="Idempotency key (default: a new cli-... one, named in the output: give it again "
         "to retry the same request safely).")


def _options(db: str | None, as_json: bool | None) -> Options:
    ctx = click.get_current_context()
    top: Options = ctx.find_object(Options) or Options()
    return Options(db if db is not None else top.db,
                   as_json if as_json is not None else top.json)


def _path(opts: Options, *, must_exist: bool = True) -> str:
    if not opts.db:
        msg = "no database given: pass --db PATH or set JACKPOT_DB"
        raise CommandError(msg)
    check_path(opts.db)  # (":memory:" would otherwise be told to `jackpot init` itself)
    # os.path's isdir and isfile, not Path's: those raise on a name longer than the directory
    # takes (ENAMETOOLONG, Python < 3.13), which ended the command as "File name too long"
    # with status 1 (the system refused) for what is a bad argument: a file that does not
    # exist. (Not click's own check either: it named --db alone.)
    if "://" not in opts.db and os.path.isdir(opts.db):  # noqa: PTH112 - see above
        msg = f"{opts.db!r} is a directory: --db (or JACKPOT_DB) names the database file"
        raise CommandError(msg)
    if must_exist and "://" not in opts.db and not os.path.isfile(opts.db):  # noqa: PTH113
        # Quoted for a shell; a name with control characters is not printed raw.
        shown = shlex.quote(opts.db) if opts.db.isprintable() else "PATH"
        msg = f"database {opts.db!r} does not exist: create it with `jackpot init --db {shown}`"
        raise CommandError(msg)
    return opts.db


@contextmanager
def _engine(opts: Options, groups: list[GroupConfig] | None = None, *,
            must_exist: bool = True) -> Iterator[JackpotEngine]:
    path = _path(opts, must_exist=must_exist)
    if must_exist:
        _read(opts, lambda _: None)  # a jackpot database already: never create one here
    # create=False as well: a file that vanished since the check is refused, not remade empty
    with JackpotEngine.open(path, groups, settings=Settings.from_env(),
                            create=not must_exist) as engine:
        yield engine


def _served(engine: JackpotEngine, *levels: str) -> None:
    """Refuse a level the database does not have as the read commands do.

    The engine's own refusal adds that a level added to the database after
    it opened needs it opened again: advice for a game server's long-lived
    engine, noise from a command that opened its engine a moment ago. So a
    write command checks its levels first and says "this database has ...",
    as status, history and ledger do (exit 2 all the same). A name that is
    no level name at all is refused as the engine refuses it.
    """
    for level in levels:
        if validate_name(level) not in engine.groups:
            raise reads.unknown_level(level, engine.groups)


def _reader(path: str, settings: Settings) -> Store:
    return open_store(path, lock_timeout_ms=settings.lock_timeout_ms,
                      poll_interval_ms=settings.concurrency_check_interval_ms, read_only=True,
                      pool_size=settings.pg_pool_size)


def _read(opts: Options, reading: Callable[[Store], _T]) -> _T:
    """Run `reading` on a read-only store of the database: no engine, no write, no lock.

    Refuses (exit 2) a file that does not exist, is empty, or is not a
    jackpot database of a schema this library knows.
    """
    path = _path(opts)
    settings = Settings.from_env()
    for attempt in range(1, _READ_ATTEMPTS + 1):
        store = _reader(path, settings)
        try:
            if store.schema_version() == 0:
                shown = redact(path)
                msg = (f"database {shown!r} holds no jackpot database: create one with "
                       f"`jackpot init --db {shown}`")
                raise CommandError(msg)
            return reading(store)
        except StaleReadError:
            if attempt == _READ_ATTEMPTS:
                raise
        finally:
            store.close()
    raise AssertionError  # pragma: no cover - the loop returns or raises


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, sort_keys=True))


def _snapshot_dict(p: PoolSnapshot) -> dict[str, Any]:
    return {**dataclasses.asdict(p), "contribution_rate": _rate(p.contribution_rate),
            "reserve_rate": _rate(p.reserve_rate)}


def _rate(value: Decimal) -> str:
    """Format a rate as a plain decimal (1E-7 is 0.0000001), as `config` takes it back."""
    return f"{value:f}"


def _money(value: Decimal | None) -> str:
    """Format an amount with its significant decimals (at least 2), grouped."""
    if value is None:
        return "-"
    exponent = money.EXACT.normalize(value).as_tuple().exponent  # not the caller's context
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"{value:,.{places}f}"


def _pools_table(pools: dict[str, PoolSnapshot], title: str = "levels") -> Table:
    """Return the levels as a table; `title` is shown as given (brackets are not markup)."""
    table = Table(title=Text(title))
    for name in ("level", "status", "amount", "reserve", "seed", "rate", "cap", "version",
                 "bets", "wins", "won", "pending (next reset)"):
        table.add_column(name, justify="right" if name in _NUMBERS else "left",
                         overflow="fold")
    for p in pools.values():
        table.add_row(p.name, p.status, _money(p.amount), _money(p.reserve), _money(p.seed),
                      _rate(p.contribution_rate), _money(p.cap), str(p.version),
                      str(p.meters.get("bets", 0)), str(p.meters.get("wins", 0)),
                      _money(Decimal(p.meters.get("won", 0))),
                      Text(", ".join(f"{k}={_cell(v)}" for k, v in p.pending_changes.items())))
    return table


_NUMBERS = ("amount", "reserve", "seed", "rate", "cap", "version", "bets", "wins", "won")


def _time(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (ValueError, OverflowError, OSError):  # no date (a damaged file): the raw value
        return f"at_ms {ms}"


_MORE = re.compile(r"\.\.\. and (\d+) more [^:]*")
"""The audit's line for the problems of a sort past those it lists one by one."""


def _verify_out(report: VerifyReport) -> None:
    if report.ok:
        console.print(f"audit OK: {counted(report.levels, 'level')}, "
                      f"{counted(report.ledger_rows, 'ledger row')} reconciled to the smallest "
                      "unit")
    else:
        # ("... and 4980 more ..." is 4980 problems, not one: an operator with
        # 5,000 bad rows must not read "21 problems".)
        count = sum(int(more[1]) if (more := _MORE.fullmatch(p)) else 1
                    for p in report.problems)
        console.print(f"[bold red]audit FAILED[/]: {counted(count, 'problem')}")
        for problem in report.problems:
            console.print(f"  {problem}", markup=False)


@contextlib.contextmanager
def _failure_kept(status: int, *, stderr: bool = False) -> Iterator[None]:
    """Say a verdict (an audit's, a health check's, Ctrl-C's): a failing one keeps its status.

    A reader that left before the report was written (`jackpot verify |
    head -1`) ends a command quietly with 141; a failed audit ended so too,
    and a script that reads the first line and checks the status saw no
    failure said. Status 1 then, as the whole report would have ended.
    With `stderr`, the report is said there (an interrupted simulation's).
    """
    try:
        yield
    except BrokenPipeError:
        if not (status and reader_left(stderr=stderr)):
            raise


# -- the command group ---------------------------------------------------------------


def _print_version(ctx: click.Context, _param: click.Parameter, on: bool) -> None:
    """`--version`: read only when asked for (see `jackpot._lazy`).

    Not while the shell asks for completions (click parses the line then,
    resiliently): the version would be printed among them.
    """
    if on and not ctx.resilient_parsing:
        click.echo(f"jackpot {jackpot.__version__}")
        ctx.exit()


class _PipeBroken(Exception):  # noqa: N818 - it carries the BrokenPipeError, it is not one
    """A BrokenPipeError of a command, carried past click to `run` as it was.

    click's own handling of one (even with standalone_mode=False) exits with
    status 1, nothing said, and wraps sys.stdout and sys.stderr for good.
    """


class _Commands(click.Group):
    """The command group: a broken pipe goes past click, to be told by `run`."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        """Parse the line; a BrokenPipeError (`--help`, `--version`) comes out as `_PipeBroken`.

        The eager options print as the line is parsed, before `invoke`: `jackpot
        --help | true` exited 1 and, in-process, left click's wrappers on
        sys.stdout and sys.stderr and raised SystemExit out of `run`.
        """
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError as e:
            raise _PipeBroken from e

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a BrokenPipeError comes out as `_PipeBroken`."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise _PipeBroken from e


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version,
              help="Show the version and exit.")
@click.option("--db", type=click.Path(), envvar="JACKPOT_DB", default=None,  # checked by _path
              help="Database file (or set JACKPOT_DB).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def app(ctx: click.Context, db: str | None, as_json: bool) -> None:
    """Operate a jackpot database: pools, ledger, audit, health, metrics."""
    ctx.obj = Options(db, as_json)
    for warning in near_misses(os.environ):  # ignored, as open() logs: and this shows no log
        click.echo(f"jackpot: warning: {warning}", err=True)


@app.command()
@click.option("--level", "levels", multiple=True, metavar="NAME:SEED:RATE[:CAP]",
              help="A level to create (repeatable); default: minor, major, mega.")
@_shared
def init(*, levels: tuple[str, ...], db: str | None, as_json: bool | None) -> None:
    """Create the database (or add missing levels to it; existing levels are kept as they are)."""
    opts = _options(db, as_json)
    groups = [_parse_level(spec) for spec in levels] or None
    path = _path(opts, must_exist=False)
    # (SQLite would say "unable to open"; os.path.isdir: see _path.)
    if not is_database_url(path) and not os.path.isdir(Path(path).parent):  # noqa: PTH112
        msg = f"cannot create database {path!r}: no directory {str(Path(path).parent)!r}"
        raise CommandError(msg)
    before = _existing_levels(path)
    with _engine(opts, groups, must_exist=False) as engine:
        pools = engine.pools()
    kept = [g.name for g in groups or () if g.name in before]
    shown = redact(path)  # a URL's password is never printed
    if opts.json:
        _print_json({"db": shown, "levels": [_snapshot_dict(p) for p in pools.values()],
                     "created": sorted(set(pools) - before), "kept": kept})
        return
    console.print(_pools_table(pools, title=f"jackpot database {shown}"))
    for name in kept:
        console.print(f"kept {name} as it was, not changed: it already exists and --level does "
                      f"not change a level (use `jackpot config {name} KEY=VALUE...`)",
                      markup=False)


def _existing_levels(path: str) -> set[str]:
    """Return the levels the database already has (none when it is new or empty)."""
    if not is_database_url(path) and not os.path.isfile(path):  # noqa: PTH113 - see _path
        return set()
    store = _reader(path, Settings.from_env())  # refuses a file that is not ours
    try:
        if store.schema_version() == 0:
            return set()
        return set(reads.pools(store))
    finally:
        store.close()


def _parse_level(spec: str) -> GroupConfig:
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        msg = f"--level {spec!r}: expected NAME:SEED:RATE or NAME:SEED:RATE:CAP"
        raise CommandError(msg)
    name, seed, rate, *cap = parts
    try:
        return GroupConfig(name, seed, rate, cap[0] if cap else None)
    except ValidationError as e:  # named by the option the operator typed
        msg = f"--level {spec!r}: {str(e).removeprefix('GroupConfig.')}"
        raise CommandError(msg) from e


@app.command()
@_shared
def status(*, db: str | None, as_json: bool | None) -> None:
    """Show every level: amounts, versions, meters (read-only)."""
    opts = _options(db, as_json)
    pools = _read(opts, reads.pools)
    if opts.json:
        _print_json([_snapshot_dict(p) for p in pools.values()])
    else:
        console.print(_pools_table(pools))


@app.command()
@click.argument("level")
@click.option("--limit", type=_Integer(1, 10_000), default=10, show_default=True,
              help="How many wins and hits to show.")
@_shared
def history(*, level: str, limit: int, db: str | None, as_json: bool | None) -> None:
    """Show a level's last wins and must-hit-by hits, newest first (read-only)."""
    opts = _options(db, as_json)
    entries = _read(opts, lambda store: reads.history(store, level, limit))
    if opts.json:
        _print_json([dataclasses.asdict(e) for e in entries])
        return
    table = Table(title=f"wins and hits of {level}")
    for name in ("time (UTC)", "amount", "winner", "hit", "version", "op_id"):
        table.add_column(name, overflow="fold")
    for e in entries:
        table.add_row(_time(e.at_ms), _money(e.amount), Text(e.winner or "-"),
                      "yes" if e.hit else "", str(e.version), Text(e.op_id))
    console.print(table)


@app.command()
@click.option("--tail", type=_Integer(1, 100_000), default=20, show_default=True,
              help="How many of the latest rows.")
@click.option("--level", default=None, help="Only this level's rows.")
@_shared
def ledger(*, tail: int, level: str | None, db: str | None, as_json: bool | None) -> None:
    """Show the latest ledger rows, oldest first (read-only)."""
    opts = _options(db, as_json)
    rows = _read(opts, lambda store: reads.ledger(store, level=level, limit=tail))
    if opts.json:
        _print_json([{**dataclasses.asdict(r),
                      **{k: str(money.from_units(getattr(r, k))) for k in _LEDGER_AMOUNTS},
                      "detail": _detail_json(r.detail)}
                     for r in rows])
        return
    table = Table(title=f"ledger (last {counted(len(rows), 'row')})")
    # `paid` beside `delta`: a whole-pool win's delta is the pool's net change
    # (paid out, then the seed funded), so without it the payout shows nowhere.
    for name in ("seq", "time (UTC)", "kind", "level", "delta", "paid", "balance", "version",
                 "op_id", "who"):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(str(r.seq), _time(r.at_ms), r.kind, r.level,
                      _money(money.from_units(r.delta)),
                      _money(money.from_units(r.paid)) if r.paid else "-",
                      _money(money.from_units(r.balance_after)), str(r.version_after),
                      Text(r.op_id), Text(r.who or "-"))
    console.print(table)


def _detail_json(detail: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return a ledger row's detail with its amounts as decimal strings, as every amount.

    The store keeps a bet (`{"bet": units}`) and a retirement's carried
    fractions (`carried`: units, and parts of a unit in 1e-9) as integers.
    """
    if not detail:
        return detail
    out = dict(detail)
    if isinstance(out.get("bet"), int):
        out["bet"] = str(money.from_units(out["bet"]))
    carried = out.get("carried")
    if isinstance(carried, dict):
        out["carried"] = {
            k: (str(money.from_units(v)) if k.endswith("units")
                else f"{money.from_units(v).scaleb(-9, money.EXACT):f}")
            if isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in carried.items()}
    return out


@app.command()
@_shared
def verify(*, db: str | None, as_json: bool | None) -> int:
    """Recompute every level from the ledger; exit status 1 when the audit fails (read-only)."""
    opts = _options(db, as_json)
    report = _read(opts, audit)
    status = 0 if report.ok else 1
    with _failure_kept(status):
        if opts.json:
            _print_json(dataclasses.asdict(report))
        else:
            _verify_out(report)
    return status


@app.command(short_help="Copy the database into a new file while it serves; audit the copy.")
@click.argument("target", type=click.Path(dir_okay=False))
@_shared
def backup(*, target: str, db: str | None, as_json: bool | None) -> int:
    """Copy the database into the new file TARGET, then audit the copy (exit status 1 if bad).

    A consistent copy of one moment, taken while game servers write (SQLite's
    online backup under a read lock: no write waits for a lock), synced to disk.
    It is made as TARGET.partial and named TARGET once whole. Copying the file
    itself is not a backup: its -wal holds the latest commits. A PostgreSQL
    database is backed up with pg_dump.
    """
    opts = _options(db, as_json)
    path = _path(opts)
    if is_database_url(path):
        msg = ("a PostgreSQL database is backed up with pg_dump (or the server's own "
               "backups), not by jackpot")
        raise CommandError(msg)
    copying: list[Store] = []

    def copy(source: Store) -> None:
        copying.append(source)
        source.backup_to(target)

    try:
        # A jackpot database of a known schema only; copied again, as any read is read
        # again, should a writer open a closed file meanwhile (backup_to removes the torn
        # copy).
        _read(opts, copy)
        # (Read immutable: it makes no file beside the copy.)
        report = _read(Options(target, opts.json), audit)
    except BaseException:
        # Ctrl-C as it audits (most of the time taken), or once the copy was named, before
        # the audit began (the database's store closing): no copy left. Only this backup's:
        # a file another made at TARGET (refused by backup_to) is never removed.
        made = copying[-1].backup_made if copying else None
        with contextlib.suppress(OSError):
            if made is not None and os.path.samestat(os.lstat(target), made):
                Path(target).unlink()
        raise
    size = Path(target).stat().st_size
    status = 0 if report.ok else 1
    with _failure_kept(status):
        if opts.json:
            _print_json({"backup": target, "bytes": size, "audit": dataclasses.asdict(report)})
        else:
            console.print(f"copied {redact(path)} to {target} ({size:,} bytes)", markup=False,
                          soft_wrap=True)  # (paths whole: an operator copies them)
            _verify_out(report)
    return status


_WHO_BY_DEFAULT = "Who does it (audited); default: your login name (else your uid)."


@app.command(short_help="Change a level's settings (KEY=VALUE...), audited.")
@click.argument("level")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--expected-version", type=_Integer(1), default=None,
              help="Refuse the change if the level moved past this version.")
@click.option("--who", default=None, help=_WHO_BY_DEFAULT)
@click.option("--reason", default=None, help="Why (audited).")
@_op_id_option
@_shared
def config(*, level: str, changes: tuple[str, ...], expected_version: int | None,
           who: str | None, reason: str | None, op_id: str | None,
           db: str | None, as_json: bool | None) -> None:
    """Change a level's settings, e.g. `jackpot config minor cap=500 contribution_rate=0.004`.

    Keys: seed, contribution_rate, reserve_rate, cap, min_bet, max_contribution,
    must_hit_by, overflow_to; `none` clears an optional one.
    """
    opts = _options(db, as_json)
    parsed: dict[str, Any] = {}  # the engine names an unknown key
    for change in changes:
        key, sep, value = change.partition("=")
        if not sep or not key:
            msg = f"{change!r} is not KEY=VALUE"
            raise CommandError(msg)
        if key in parsed:
            msg = f"{key} is given twice: give each key once"
            raise CommandError(msg)
        if key in _NOT_SETTINGS:  # (a keyword of update_config itself: the engine never sees it)
            msg = f"unknown config field(s) {key!r}: allowed are {', '.join(CONFIG_FIELDS)}"
            raise CommandError(msg)
        parsed[key] = None if value.lower() == "none" else value
    by = _login_name() if who is None else who
    with _engine(opts) as engine:
        _served(engine, level)
        result = engine.update_config(level, op_id=op_id, expected_version=expected_version,
                                      who=by, reason=reason, **parsed)
    if opts.json:
        _print_json(dataclasses.asdict(result) | {"who": by})
        return
    _print_config_change(result, given=list(parsed), who=by)


def _print_config_change(result: ConfigResult, *, given: list[str], who: str) -> None:
    # The op_id always (a change whose outcome is in doubt is resent with it), on a
    # line of its own: a title is wrapped to the table's width, which can cut the op_id.
    # `who` as for adjust: the command may have filled it in (the login name).
    done = (f"config of {result.group} by {who}, now version {result.version} (op {result.op_id}"
            f"{', replayed' if result.replayed else ''})")
    table = Table()
    for name in ("field", "before", "after"):
        table.add_column(name, overflow="fold")
    for key in result.after:
        if result.before.get(key) != result.after[key]:
            table.add_row(key, _cell(result.before.get(key)), _cell(result.after[key]))
    for key, waiting in result.pending.items():
        table.add_row(key, _cell(result.before.get(key)),
                      f"{_cell(waiting)} (from the next reset)")
    if table.row_count:
        console.print(done, markup=False, soft_wrap=True)
        console.print(table)
        return
    # Every field given already had its value: say so rather than print an empty table.
    values = ", ".join(f"{key}={_cell(result.after.get(key))}" for key in given)
    console.print(f"{done}: no field changed ({values} already)", markup=False, soft_wrap=True)


def _cell(value: str | None) -> str:
    # None (a cleared cap, must_hit_by...) is "-" wherever a value is shown, as in status.
    return "-" if value is None else value


# ignore_unknown_options: a negative BET such as -1 is the argument (refused as negative),
# not an unknown option.
@app.command(context_settings={"ignore_unknown_options": True})
@click.argument("bet")
@click.option("--level", "levels", multiple=True, help="A level (repeatable); default: all.")
@_op_id_option
@click.option("--player", default=None, help="Who bet (the winner of a mystery hit).")
@_shared
def contribute(*, bet: str, levels: tuple[str, ...], op_id: str | None, player: str | None,
               db: str | None, as_json: bool | None) -> None:
    """Contribute one bet to the levels, by hand."""
    opts = _options(db, as_json)
    with _engine(opts) as engine:
        _served(engine, *levels)
        result = engine.contribute(bet, groups=list(levels) or None, op_id=op_id, player=player)
    if opts.json:
        _print_json(dataclasses.asdict(result))
        return
    # The op_id on a line of its own, as given: a table title is wrapped to the
    # table's width (which can cut it) and read as markup (where "[/b]" raised).
    console.print(f"bet {bet} (op {result.op_id}{', replayed' if result.replayed else ''})",
                  markup=False, soft_wrap=True)
    table = Table()
    for name in ("level", "added", "balance", "version"):
        table.add_column(name, justify="left" if name == "level" else "right",
                         overflow="fold")
    for name, added in result.contributions.items():
        table.add_row(name, _money(added), _money(result.balances[name]),
                      str(result.versions[name]))
    console.print(table)
    for hit in result.hits:
        to = "" if hit.winner is None else f" to {hit.winner}"
        console.print(f"mystery jackpot hit on {hit.group}: paid {_money(hit.amount)}{to}",
                      markup=False)


@app.command()
@click.argument("level")
@click.option("--amount", default=None, help="Pay this part only (default: the whole pool).")
@click.option("--winner", default=None, help="Who won.")
@_op_id_option
@_shared
def win(*, level: str, amount: str | None, winner: str | None, op_id: str | None,
        db: str | None, as_json: bool | None) -> None:
    """Pay a level by hand: the whole pool (then reset to seed) or --amount."""
    opts = _options(db, as_json)
    with _engine(opts) as engine:
        _served(engine, level)
        result = engine.process_win(level, op_id=op_id, amount=amount, winner=winner)
    if opts.json:
        _print_json(dataclasses.asdict(result))
        return
    console.print(f"paid {_money(result.amount)} from {result.group}"
                  f"{f' to {result.winner}' if result.winner else ''}; balance "
                  f"{_money(result.balance)}, version {result.version} (op {result.op_id}"
                  f"{', replayed' if result.replayed else ''})", markup=False)


@app.command()
@click.argument("level")
@click.option("--reason", required=True, help="Why (audited).")
@click.option("--who", default=None, help=_WHO_BY_DEFAULT)
@_op_id_option
@_shared
def suspend(*, level: str, reason: str, who: str | None, op_id: str | None,
            db: str | None, as_json: bool | None) -> None:
    """Stop a level taking bets and wins; its amount is kept exactly."""
    opts = _options(db, as_json)
    by = _login_name() if who is None else who
    with _engine(opts) as engine:
        _served(engine, level)
        result = engine.suspend(level, reason=reason, who=by, op_id=op_id)
    _admin_out(opts, result, who=by)


@app.command()
@click.argument("level")
@click.option("--reason", default=None, help="Why (audited).")
@click.option("--who", default=None, help=_WHO_BY_DEFAULT)
@_op_id_option
@_shared
def resume(*, level: str, reason: str | None, who: str | None, op_id: str | None,
           db: str | None, as_json: bool | None) -> None:
    """Let a suspended level take bets and wins again."""
    opts = _options(db, as_json)
    by = _login_name() if who is None else who
    with _engine(opts) as engine:
        _served(engine, level)
        result = engine.resume(level, reason=reason, who=by, op_id=op_id)
    _admin_out(opts, result, who=by)


# ignore_unknown_options: a negative DELTA such as -5 is the argument, not an option.
@app.command(context_settings={"ignore_unknown_options": True})
@click.argument("level")
@click.argument("delta", metavar="DELTA")
@click.option("--reason", required=True, help="Why (audited).")
@click.option("--who", default=None, help=_WHO_BY_DEFAULT)
@_op_id_option
@_shared
def adjust(*, level: str, delta: str, reason: str, who: str | None, op_id: str | None,
           db: str | None, as_json: bool | None) -> None:
    """Change a pool by a signed DELTA (+25.00, -5), audited with who and why.

    Never below 0, nor above the level's cap or must-hit-by.
    """
    opts = _options(db, as_json)
    by = _login_name() if who is None else who
    with _engine(opts) as engine:
        _served(engine, level)
        result = engine.adjust(level, delta, reason=reason, who=by, op_id=op_id)
    _admin_out(opts, result, who=by)


@app.command()
@click.argument("level")
@click.option("--transfer-to", required=True, metavar="LEVEL",
              help="The level that receives the pool and the reserve.")
@click.option("--reason", required=True, help="Why (audited).")
@click.option("--who", default=None, help=_WHO_BY_DEFAULT)
@_op_id_option
@_shared
def retire(*, level: str, transfer_to: str, reason: str, who: str | None, op_id: str | None,
           db: str | None, as_json: bool | None) -> None:
    """Retire a level for good, moving its pool and reserve to --transfer-to atomically."""
    opts = _options(db, as_json)
    by = _login_name() if who is None else who
    with _engine(opts) as engine:
        _served(engine, level, transfer_to)
        result = engine.retire(level, transfer_to=transfer_to, reason=reason, who=by,
                               op_id=op_id)
    _admin_out(opts, result, who=by)


def _login_name() -> str:
    """Return who runs the command, for the `who` an adjustment or retirement records.

    getpass.getuser(): LOGNAME, USER, LNAME or USERNAME, else the password
    database's name for the uid; where none names it (a container's uid
    with no passwd entry), the uid as text, so the record still tells who.

    A name the ledger cannot hold (LOGNAME or USER set blank, or to text
    with a tab) is refused saying where it came from: the engine's refusal
    named `who`, which the operator never gave.
    """
    try:
        name = getpass.getuser()
    except (OSError, KeyError, ImportError):  # (3.13: OSError; before: KeyError, ImportError)
        getuid = getattr(os, "getuid", None)
        if getuid is None:  # pragma: no cover - Windows with no USERNAME
            msg = "cannot tell who runs this command: pass --who"
            raise click.UsageError(msg) from None
        return str(getuid())
    try:
        check_text(name, "who", optional=False)
    except ValidationError as e:
        msg = (f"your login name (LOGNAME, USER, LNAME or USERNAME, else the password "
               f"database) cannot be recorded as who: {e}; pass --who")
        raise CommandError(msg) from None
    return name


def _admin_out(opts: Options, result: AdminResult, *, who: str) -> None:
    # `who`: what the record holds, shown since the command may have filled it in
    # (the login name) rather than the operator.
    if opts.json:
        _print_json(dataclasses.asdict(result) | {"who": who})
        return
    levels = ", ".join(f"{name} {_money(balance)} at version {result.versions[name]}"
                       for name, balance in result.balances.items())
    console.print(f"{result.action} {result.group} by {who}: {levels} (op {result.op_id}"
                  f"{', replayed' if result.replayed else ''})", markup=False)


@app.command()
@_shared
def health(*, db: str | None, as_json: bool | None) -> int:
    """Probe the database as a writer would; exit status 1 when failing.

    Only the database and disk checks: the actors and the lock and conflict
    rates are a running engine's (`engine.health()` in the game server's process).
    """
    opts = _options(db, as_json)
    path = _path(opts, must_exist=False)  # a missing file is a failing check, not an error
    report = report_of(bounded_checks(path, Settings.from_env(), _existing_store))
    status = 1 if report.status == "failing" else 0
    with _failure_kept(status):
        if opts.json:
            _print_json(report.to_dict())
        else:
            colour = {"ok": "green", "degraded": "yellow", "failing": "red"}[report.status]
            table = Table(title=Text.assemble("health: ", (report.status, colour)))
            for name in ("check", "status", "detail"):
                table.add_column(name, overflow="fold")
            for c in report.checks:
                table.add_row(c.name, c.status, Text(c.detail))  # it names the path
            console.print(table)
    return status


def _existing_store(path: str, settings: Settings) -> Store:
    """Open a writer's store on an existing jackpot database (never create one).

    Nor the writers' lock file beside it: health is run from monitoring, perhaps
    as a user who may not leave files there; the -wal and -shm the probe makes
    go as it closes (as SQLite's last connection), the lock file would stay.
    """
    return open_store(path, lock_timeout_ms=settings.lock_timeout_ms,
                      poll_interval_ms=settings.concurrency_check_interval_ms,
                      synchronous=settings.synchronous, create=False, make_lock_file=False,
                      pool_size=settings.pg_pool_size)


@app.command()
@click.option("--serve", is_flag=True, help="Serve /metrics over HTTP until interrupted.")
@click.option("--port", type=_Integer(0, 65535), default=9464, show_default=True,
              help="Port on 127.0.0.1 for --serve (0: any free port).")
@_shared
def metrics(*, serve: bool, port: int, db: str | None, as_json: bool | None) -> None:
    """Print what the database holds as Prometheus gauges, or serve them (--serve).

    Only the level gauges (amount, reserve, version), read from the database
    at each scrape. Operation counters, latencies and the health status are
    per process: scrape them from the game server's own engine.
    """
    opts = _options(db, as_json)
    if not Settings.from_env().enable_metrics:
        msg = "metrics are disabled (JACKPOT_ENABLE_METRICS=false)"
        raise CommandError(msg)
    if not serve and (click.get_current_context().get_parameter_source("port")
                      is not click.core.ParameterSource.DEFAULT):
        # `jackpot metrics --port 9100` printed the gauges once and exited 0: an
        # operator who meant to serve them learnt it only from the scrape failing.
        msg = "--port is where --serve serves the gauges: add --serve (or leave --port out)"
        raise CommandError(msg)
    if not serve:  # read once: a database that cannot be read is an error, not "no sample"
        pools = _read(opts, reads.pools)
        click.echo(generate_latest(database_registry(lambda: pools)).decode(), nl=False)
        return
    _read(opts, lambda _: None)  # refuse a file that is not a jackpot database, up front

    def read_pools() -> dict[str, PoolSnapshot]:
        try:
            return _read(opts, reads.pools)
        except CommandError as e:  # moved away or emptied since: no sample, no traceback
            raise StorageError(e.format_message()) from e

    server, _ = serve_registry(database_registry(read_pools), port)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        if opts.json:
            _print_json({"url": url})
        else:
            click.echo(f"serving {url} (Ctrl-C to stop)")
        _wait_for_signal()
    finally:
        server.shutdown()
        server.server_close()


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.2):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.command()
@click.option("--bets", type=_Integer(1, 10_000_000), default=1000, show_default=True,
              help="How many bets.")
@click.option("--win-every", type=_Integer(0), default=250, show_default=True,
              help="A win on a random level after every N bets (0: none).")
@click.option("--threads", type=_Integer(1, 64), default=4, show_default=True,
              help="Concurrent callers.")
@click.option("--seed", type=_Seed(), default=42, show_default=True,
              help="Random seed: the same one plans the same bets and wins.")
@_shared
def simulate(*, bets: int, win_every: int, threads: int, seed: int,
             db: str | None, as_json: bool | None) -> int:
    """Play bets and wins for real INTO the database, then show the pools, wins and audit.

    Every bet and win is a real, committed operation: the pools, meters and
    ledger of the database change for good. Run it on a copy or a test
    database, never on the one a game server uses. Ctrl-C stops it promptly:
    what was sent is committed (or refused), and the counts say how much.
    """
    opts = _options(db, as_json)
    with _engine(opts) as engine:
        # Wins go to levels that can still pay: a retired one refuses all for good.
        open_levels = [name for name, p in engine.pools().items() if p.status != "retired"]
        started = time.perf_counter()
        tally = _play(engine, _plan(bets, win_every, seed, open_levels or engine.groups),
                      threads,
                      total=bets + (bets // win_every if win_every else 0),
                      progress=not opts.json)
        elapsed = time.perf_counter() - started
        if tally.interrupted:
            return _interrupted(opts, tally, bets)
        pools, report = engine.pools(), engine.verify()
    paid = tally.paid
    operations = tally.bets + tally.win_count() + sum(tally.refused.values())
    summary = {"bets": tally.bets, "wagered": str(tally.wagered),
               "seconds": round(elapsed, 3),
               "operations_per_second": round(operations / elapsed) if elapsed else 0,
               "wins": {lvl: {"count": tally.wins[lvl],
                              "paid": str(paid[lvl])} for lvl in sorted(paid)},
               "refused": dict(tally.refused),
               "pools": [_snapshot_dict(p) for p in pools.values()],
               "audit": dataclasses.asdict(report)}

    def say() -> None:
        if opts.json:
            _print_json(summary)
            return
        console.print(f"played {counted(tally.bets, 'bet')} and "
                      f"{counted(tally.win_count(), 'win')} with {counted(threads, 'thread')} "
                      f"in {elapsed:.2f} s "
                      f"({summary['operations_per_second']} operations/s)")
        console.print(_pools_table(pools, title="pools after the simulation"))
        table = Table(title="wins")
        for name in ("level", "count", "paid"):
            table.add_column(name, justify="left" if name == "level" else "right",
                             overflow="fold")
        for lvl in sorted(paid):
            table.add_row(lvl, str(summary["wins"][lvl]["count"]), _money(paid[lvl]))  # type: ignore[index]
        console.print(table)
        for error, count in sorted(tally.refused.items()):
            console.print(f"refused: {count} x {error}", markup=False)
        _verify_out(report)

    status = 0 if report.ok else 1
    with _failure_kept(status):
        say()
    return status


def _interrupted(opts: Options, tally: _Tally, planned: int) -> int:
    """Say how much an interrupted simulation played; exit status 130 (as for SIGINT).

    130 also when the reader of what it says has gone (Ctrl-C at a terminal
    stops `jackpot simulate | jq` whole, jq first): it was 141, which says
    only that the output was cut, as if the simulation had run to its end.
    """
    with _failure_kept(130, stderr=not opts.json):
        if opts.json:
            _print_json({"interrupted": True, "planned_bets": planned, "bets": tally.bets,
                         "wagered": str(tally.wagered), "wins": tally.win_count(),
                         "refused": dict(tally.refused)})
        else:
            click.echo(f"interrupted: played {tally.bets} of {counted(planned, 'bet')} and "
                       f"{counted(tally.win_count(), 'win')} "
                       f"({sum(tally.refused.values())} refused); each one sent was "
                       "committed or refused whole: `jackpot verify` audits the books",
                       err=True)
    return 130


@dataclass
class _Tally:
    """What a simulation played (every count is of operations that finished)."""

    bets: int = 0
    wagered: Decimal = Decimal(0)
    wins: Counter[str] = dataclasses.field(default_factory=Counter)  # per level
    paid: dict[str, Decimal] = dataclasses.field(default_factory=dict)  # per level
    refused: Counter[str] = dataclasses.field(default_factory=Counter)
    interrupted: bool = False

    def win_count(self) -> int:
        return sum(self.wins.values())

    def add_win(self, level: str, amount: Decimal) -> None:
        """Count one win (constant memory, however many)."""
        self.wins[level] += 1
        self.paid[level] = money.EXACT.add(self.paid.get(level, Decimal(0)), amount)


def _plan(bets: int, win_every: int, seed: int, levels: Sequence[str]
          ) -> Iterator[tuple[str, Any]]:
    """Yield the operations one at a time: a plan of millions is never held whole."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not secrets
    for i in range(1, bets + 1):
        yield "bet", rng.choice(_STAKES)
        if win_every and i % win_every == 0:
            yield "win", rng.choice(levels)


def _play(engine: JackpotEngine, plan: Iterator[tuple[str, Any]], threads: int, *,
          total: int, progress: bool) -> _Tally:
    """Run the plan on `threads` callers, at most a few operations queued per caller.

    Bounded: only `_WINDOW` operations per thread are ever submitted and not
    finished, so memory does not grow with --bets and Ctrl-C (KeyboardInterrupt
    in this, the main, thread) stops it at once: what is queued is dropped,
    what is running finishes, and the tally counts exactly what finished.
    """
    tally = _Tally()
    lock = threading.Lock()

    def one(kind: str, arg: Any) -> None:
        try:
            if kind == "bet":
                engine.contribute(arg)
            else:
                w = engine.process_win(arg, winner="simulated")
        except JackpotError as e:
            with lock:
                tally.refused[type(e).__name__] += 1
            return
        with lock:
            if kind == "bet":
                tally.bets += 1
                tally.wagered = money.EXACT.add(tally.wagered, arg)
            else:
                tally.add_win(w.group, w.amount)

    pool = ThreadPoolExecutor(threads)
    pending: set[Future[None]] = set()
    stop = _StopOnCtrlC()
    try:
        bar_to = _Console(stderr=True)
        shown = progress and bar_to.is_terminal  # (not a terminal: no bar)
        # Not shown, not a byte: rich before 14.1 ends even a disabled bar with a
        # blank line on its console, so that one writes nowhere.
        with stop, Progress(console=bar_to if shown else Console(file=io.StringIO()),
                            transient=True, disable=not shown) as bar:
            task = bar.add_task("simulating", total=total)
            for kind, arg in plan:
                while len(pending) >= threads * _WINDOW and not stop.asked:
                    pending = _settle(pending, bar, task)
                if stop.asked:
                    break
                pending.add(pool.submit(one, kind, arg))
            while pending:
                pending = _settle(pending, bar, task, cancel=stop.asked)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # the running ones finish, in bounds
    tally.interrupted = stop.asked
    return tally


def _settle(pending: set[Future[None]], bar: Progress, task: Any, *,
            cancel: bool = False) -> set[Future[None]]:
    """Wait a moment for some of `pending`; raise what failed; return the rest.

    With `cancel`, what is queued and not begun is dropped first.
    """
    if cancel:
        for future in pending:
            future.cancel()
    done, rest = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
    for future in done:
        if not future.cancelled():
            future.result()
            bar.advance(task)
    return rest


class _StopOnCtrlC:
    """Turn the first Ctrl-C into a request to stop (checked between operations).

    A KeyboardInterrupt raised at any bytecode could land inside
    concurrent.futures' own locking and hang the shut-down; a flag cannot.
    A second Ctrl-C quits at once (exit status 130, nothing more reported):
    each operation sent was committed or refused whole either way.
    """

    def __init__(self) -> None:
        self.asked = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, _signum: int, _frame: object) -> None:
        if self.asked:
            _error("interrupted again: quitting without waiting")
            os._exit(130)
        self.asked = True


# -- entry point --------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (errors: one line on stderr)."""
    # SQLite's log goes to the root logger through apsw, whose first message
    # would otherwise install a default stderr handler (logging.basicConfig):
    # the command reports every error itself, in one line. Taken off again at
    # the end: a program (a test suite) that runs the command in-process many
    # times would otherwise gain a handler on its root logger per run.
    quiet = logging.NullHandler()
    logging.getLogger().addHandler(quiet)
    try:
        return _run(argv)
    finally:
        logging.getLogger().removeHandler(quiet)


def _run(argv: Sequence[str] | None) -> int:
    """`run`, with the root logger quietened."""
    _sent_op_id.clear()
    try:
        status_code = app.main(args=list(argv) if argv is not None else None, prog_name="jackpot",
                               standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        _error("interrupted")
        return 130
    except click.ClickException as e:
        return _refused(e)
    except (JackpotError, ValidationError) as e:
        if getattr(e, "outcome_unknown", False) and _sent_op_id:
            _error(f"{e} (this command's op_id: {_sent_op_id[0]}; to learn the outcome, run it "
                   f"again with --op-id {_sent_op_id[0]})")
        else:
            _error(str(e))
        return 2
    except (_PipeBroken, OSError) as e:
        return _system_refused(e)
    return status_code if isinstance(status_code, int) else 0


def _refused(e: click.ClickException) -> int:
    """Say why click refused the line (`jackpot` alone: the help, as written); return 2.

    Or 141 when the help's reader left (`jackpot | true` was a traceback, status 120).
    """
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click 8.2+
    if not (isinstance(e, no_args) and e.ctx is not None):
        _error(e.format_message())
        return 2
    try:
        click.echo(e.ctx.get_help())
    except BrokenPipeError as broken:
        return _system_refused(broken)
    return 2


def _system_refused(e: Exception) -> int:
    """Say what the system refused (one line); return the exit status: 1, or 141.

    A broken pipe is stdout's reader leaving early (`jackpot history |
    head`), or stderr's (a warning's, `2> >(true)`): no error of the
    command, nothing said. Any other pipe's (a socket's) is an error.
    """
    if isinstance(e, _PipeBroken | BrokenPipeError):
        if reader_left() or reader_left(stderr=True):
            return READER_LEFT
        e = e.__cause__ if isinstance(e, _PipeBroken) and isinstance(e.__cause__, OSError) else e
    if isinstance(e, OSError):
        _error(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
    else:
        _error(str(e))
    return 1


READER_LEFT = 141
"""The exit status when stdout's (or stderr's) reader left early (128 + SIGPIPE)."""


def reader_left(*, stderr: bool = False) -> bool:
    """Say whether stdout (or stderr) is a pipe whose reader has gone (`... | head` read enough).

    Asked of the pipe itself (poll on its writing end), so that a broken pipe
    of anything else (a socket) is still reported as an error. Linux answers
    POLLERR; the BSDs and macOS answer POLLHUP.
    """
    try:
        fd = (sys.stderr if stderr else sys.stdout).fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout, closed, or not a file
        return False


def _error(message: str) -> None:
    # One line: a message's line breaks (and the indentation around them) become
    # one space. Spaces within a line stay as they are: they may be a path's, in
    # quotes ('my  pools.db' was shown as 'my pools.db', a file that is not there).
    one_line = _LINE_BREAK.sub(" ", message.strip())
    # stderr's reader left (`jackpot ... 2>&1 | true`): the line can be said
    # nowhere, and the exit status still says the command failed. (It was a
    # traceback to that same pipe, and status 120.)
    with contextlib.suppress(BrokenPipeError):
        click.echo(f"jackpot: error: {one_line}", err=True)


_LINE_BREAK = re.compile(r"[ \t]*[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]\s*")
"""A line break as `str.splitlines` knows them, with the blanks either side of it."""
