"""Logs: records of operations carry op_id, operation, level, attempt and outcome."""

from __future__ import annotations

import asyncio
import enum
import io
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from _helpers import run_python
from jackpot import (
    AsyncJackpotEngine,
    GroupConfig,
    InsufficientFundsError,
    JackpotEngine,
    JackpotError,
    JSONFormatter,
    LockTimeoutError,
    Settings,
    StorageError,
    UnknownGroupError,
    ValidationError,
    configure_logging,
)
from jackpot.logs import FIELDS

from .conftest import write_lock_held


def _records(caplog: pytest.LogCaptureFixture, **match: object) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "jackpot"
            and all(getattr(r, k, object()) == v for k, v in match.items())]


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in FIELDS}


def test_a_win_is_logged_with_its_fields(engine: JackpotEngine,
                                         caplog: pytest.LogCaptureFixture) -> None:
    engine.contribute("10", groups="minor")
    with caplog.at_level(logging.INFO, logger="jackpot"):
        engine.process_win("minor", op_id="win-1", winner="p9")
        engine.process_win("minor", op_id="win-1", winner="p9")  # a replay is logged too
    first, replay = _records(caplog, operation="win")
    assert _fields(first) == {"op_id": "win-1", "operation": "win", "level": "minor",
                              "attempt": None, "outcome": "ok"}
    assert first.levelno == logging.INFO
    assert (first.amount, first.balance, first.version, first.winner) == (  # type: ignore[attr-defined]
        "100.050000", "100.000000", 3, "p9")
    assert first.getMessage() == "win on minor: paid 100.050000 to p9 (op win-1, ok)"
    assert _fields(replay)["outcome"] == "replayed"


def test_a_win_or_hit_with_no_winner_and_a_refusal_with_no_op_id_say_so_not_none(
        open_engine: Callable[..., JackpotEngine], caplog: pytest.LogCaptureFixture) -> None:
    # "paid 100.050000 to None" read as a player named None; "win None refused" too.
    engine = open_engine(groups=[GroupConfig("minor", seed=Decimal(100),
                                             contribution_rate=Decimal("0.005")),
                                 GroupConfig("myst", seed=Decimal(1),
                                             contribution_rate=Decimal("0.5"),
                                             must_hit_by=Decimal("1.000001"))])
    engine.contribute("10", groups="minor")
    with caplog.at_level(logging.INFO, logger="jackpot"):
        engine.process_win("minor", op_id="win-2")
        engine.contribute("0.000002", groups="myst", op_id="bet-2")
        with pytest.raises(UnknownGroupError):
            engine.process_win("nope")
    win, hit, refused = (r.getMessage() for r in _records(caplog))
    assert win == "win on minor: paid 100.050000, no winner named (op win-2, ok)"
    assert hit.startswith("mystery jackpot hit on myst: paid 1.000001, no winner named (op bet-2)")
    assert refused.startswith("win (no op_id) refused: unknown level 'nope'")


def test_a_config_change_is_logged(engine: JackpotEngine,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jackpot"):
        engine.update_config("major", op_id="cfg-1", cap="5000", who="ops", reason="promo")
    (record,) = _records(caplog, operation="config")
    assert _fields(record) == {"op_id": "cfg-1", "operation": "config", "level": "major",
                               "attempt": None, "outcome": "ok"}
    assert record.before["cap"] is None  # type: ignore[attr-defined]
    assert record.after["cap"] == "5000.000000"  # type: ignore[attr-defined]
    assert record.version == 2  # type: ignore[attr-defined]


def test_a_refusal_is_logged_at_info(engine: JackpotEngine,
                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jackpot"), pytest.raises(InsufficientFundsError):
        engine.process_win("minor", amount="5000", op_id="big")
    (record,) = _records(caplog, op_id="big")
    assert _fields(record) == {"op_id": "big", "operation": "win", "level": "minor",
                               "attempt": None, "outcome": "rejected"}
    assert record.levelno == logging.INFO
    assert record.error == "InsufficientFundsError"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("call", "operation", "expected"), [
    (lambda e: e.contribute("-1", op_id="neg"), "contribute", ("ValidationError", None)),
    (lambda e: e.contribute(1.5, op_id="flt"), "contribute", ("ValidationError", None)),
    (lambda e: e.contribute("1", groups=("nosuch",), op_id="grp"), "contribute",
     ("UnknownGroupError", "nosuch")),
    (lambda e: e.contribute("-1", groups=["minor", "major"], op_id="two"), "contribute",
     ("ValidationError", "major,minor")),  # joined and sorted, as an applied one's
    (lambda e: e.contribute("1", groups=("minor", "bad\nname"), op_id="bad"), "contribute",
     ("ValidationError", "minor")),  # the valid names only: never the refused one, raw
    (lambda e: e.contribute("-1", groups=(g for g in ["minor"]), op_id="gen"), "contribute",
     ("ValidationError", None)),  # a generator is not read again: it may have been consumed
    (lambda e: e.process_win("nosuch", op_id="w"), "win", ("UnknownGroupError", "nosuch")),
    (lambda e: e.process_win("minor", amount="NaN", op_id="nan"), "win", ("ValidationError",
     "minor")),
    (lambda e: e.update_config("minor", bogus="1", op_id="cfg"), "config", ("ValidationError",
     "minor")),
    (lambda e: e.suspend("minor", reason="", op_id="s"), "suspend", ("ValidationError", "minor")),
    (lambda e: e.adjust("minor", "x", who="ops", reason="r", op_id="a"), "adjust", ("ValidationError",
     "minor")),
    (lambda e: e.retire("minor", transfer_to="minor", who="ops", reason="r", op_id="t"), "retire",
     ("ValidationError", "minor")),
    (lambda e: e.retire("minor", transfer_to="major", who="ops", reason="", op_id="t2"), "retire",
     ("ValidationError", "major,minor")),
])
def test_a_refusal_of_bad_arguments_is_logged_and_counted(
        engine: JackpotEngine, caplog: pytest.LogCaptureFixture,
        call: Callable[[JackpotEngine], object], operation: str,
        expected: tuple[str, str | None]) -> None:
    """Refused before any request is built, and still an operator's refusal to see.

    Its level is the one the call named (was null, whatever the call named).
    """
    with caplog.at_level(logging.INFO, logger="jackpot"), pytest.raises(JackpotError):
        call(engine)
    (record,) = _records(caplog, operation=operation)
    assert record.outcome == "rejected"  # type: ignore[attr-defined]
    assert (record.error, record.level) == expected  # type: ignore[attr-defined]
    assert record.levelno == logging.INFO
    assert engine.stats.snapshot()[f"operations:{operation}:rejected"] == 1
    assert engine.pools()["minor"].version == 1  # and nothing changed


def test_a_refusal_naming_thousands_of_levels_is_logged_without_them(
        engine: JackpotEngine, caplog: pytest.LogCaptureFixture) -> None:
    """Its record's level is None, not every valid name it gave, joined.

    Each valid name went into the record: 100,000 unknown names made a
    one-line record of 700 KB for a call refused at its first name.
    """
    names = [f"level{i}" for i in range(100_000)]
    with caplog.at_level(logging.INFO, logger="jackpot"), pytest.raises(
            UnknownGroupError, match=r"^unknown level 'level0'"):
        engine.contribute("1", groups=names, op_id="many")
    (record,) = _records(caplog, operation="contribute")
    assert (record.outcome, record.level) == ("rejected", None)  # type: ignore[attr-defined]
    # 64 names are still a call's levels, all of them.
    with caplog.at_level(logging.INFO, logger="jackpot"), pytest.raises(UnknownGroupError):
        engine.contribute("1", groups=["minor", *names[:63]], op_id="some")
    (record,) = _records(caplog, op_id="some")
    assert record.level == ",".join(sorted(["minor", *names[:63]]))  # type: ignore[attr-defined]


class _UnhashableKind(type):
    def __hash__(cls) -> int:
        msg = "no hash for this kind"
        raise RuntimeError(msg)


class _Groups(metaclass=_UnhashableKind):
    """An argument whose type cannot be hashed (looked up in a set of types)."""


class _Masked:
    """An argument whose `__class__` raises (asked by isinstance)."""

    @property
    def __class__(self) -> type:  # type: ignore[override]
        msg = "no class to show"
        raise RuntimeError(msg)


@pytest.mark.parametrize("groups", [_Groups(), [_Masked()]], ids=["type-hash", "class"])
def test_a_refusal_whose_level_argument_raises_when_read_is_still_logged(
        engine: JackpotEngine, caplog: pytest.LogCaptureFixture, groups: object) -> None:
    """The refusal is logged with level None, not replaced by "reporting ... failed".

    Reading the level argument for the record raised: `after_the_fact` then
    logged its failure instead of the refusal.
    """
    with caplog.at_level(logging.INFO, logger="jackpot"), pytest.raises(
            ValidationError, match=r"^bet must not be negative, got -1$"):
        engine.contribute("-1", groups=groups, op_id="odd")  # type: ignore[arg-type]
    assert [(r.outcome, r.level) for r in _records(caplog)] == [  # type: ignore[attr-defined]
        ("rejected", None)]


def test_the_async_engine_logs_the_level_a_refused_call_named(
        db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def refused() -> None:
        engine = await AsyncJackpotEngine.open(db_path)
        try:
            with pytest.raises(ValidationError):
                await engine.process_win("mega", amount="NaN", op_id="w")
            with pytest.raises(ValidationError):
                await engine.retire("minor", transfer_to="major", who="ops", reason="", op_id="r")
        finally:
            await engine.close()

    with caplog.at_level(logging.INFO, logger="jackpot"):
        asyncio.run(refused())
    assert [(r.operation, r.level) for r in _records(caplog, outcome="rejected")] == [  # type: ignore[attr-defined]
        ("win", "mega"), ("retire", "major,minor")]


def test_a_refused_op_id_is_logged_cut_and_quoted_never_raw(
        engine: JackpotEngine, caplog: pytest.LogCaptureFixture) -> None:
    forged = "x\nERROR win on mega: paid 1000000.00 to mallory (op fake-1, ok)"
    with caplog.at_level(logging.INFO, logger="jackpot"):
        for op_id in (forged, "A" * 1_000_000):
            with pytest.raises(ValidationError, match=r"^op_id must be 1-256 printable"):
                engine.contribute("1", op_id=op_id)
    records = _records(caplog, operation="contribute")
    assert len(records) == 2
    for record in records:
        assert "\n" not in record.getMessage()
        assert len(record.getMessage()) < 400
        assert len(str(record.op_id)) < 80  # type: ignore[attr-defined]


def test_a_refused_op_id_of_a_str_subclass_is_logged_as_the_text_it_holds(
        engine: JackpotEngine, caplog: pytest.LogCaptureFixture) -> None:
    """As an accepted one is: an enum member's own str() ('Round.FIRST') is not its op_id."""

    class Round(str, enum.Enum):  # noqa: UP042 - not StrEnum: its str() is not the value
        FIRST = "round-1"

    with caplog.at_level(logging.INFO, logger="jackpot"), pytest.raises(JackpotError):
        engine.contribute("-1", op_id=Round.FIRST)
    (record,) = _records(caplog, operation="contribute")
    assert record.getMessage() == "contribute round-1 refused: bet must not be negative, got -1"
    assert type(record.op_id) is str  # type: ignore[attr-defined]
    assert record.op_id == "round-1"  # type: ignore[attr-defined]


def test_refusals_of_bad_arguments_stay_out_of_the_health_window(
        engine: JackpotEngine) -> None:
    for _ in range(5):
        with pytest.raises(ValidationError, match=r"^bet must not be negative, got -1$"):
            engine.contribute("-1")
    assert engine.stats.recent() == []  # they never queued for a lock
    engine.close()
    with pytest.raises(ValidationError, match=r"^bet must be a plain decimal string"):
        engine.contribute("bad")  # refused on a closed engine: not counted, as a good one
    assert engine.stats.snapshot()["operations:contribute:rejected"] == 5


@pytest.mark.usefixtures("blind_to_other_writers")  # a conflict, not a reload
def test_a_version_conflict_is_logged_with_its_attempt(
        open_engine: Callable[..., JackpotEngine], caplog: pytest.LogCaptureFixture) -> None:
    a, b = open_engine(), open_engine()
    b.contribute("1", groups="minor")
    with caplog.at_level(logging.INFO, logger="jackpot"):
        a.contribute("1", groups="minor", op_id="bet-7")
    (record,) = _records(caplog, outcome="conflict")
    assert _fields(record) == {"op_id": "bet-7", "operation": "contribute", "level": "minor",
                               "attempt": 0, "outcome": "conflict"}
    assert record.getMessage() == "version conflict on minor (expected version 1)"


def test_a_reload_is_logged_at_debug(open_engine: Callable[..., JackpotEngine],
                                     caplog: pytest.LogCaptureFixture) -> None:
    a, b = open_engine(), open_engine()
    b.contribute("1", groups="minor")
    with caplog.at_level(logging.DEBUG, logger="jackpot"):
        a.contribute("1", groups="minor", op_id="bet-9")
    (record,) = _records(caplog, outcome="reload")
    assert record.levelno == logging.DEBUG
    assert {name: getattr(record, name) for name in ("op_id", "operation", "level",
                                                     "outcome")} == {
        "op_id": "bet-9", "operation": "contribute", "level": "minor", "outcome": "reload"}
    assert record.getMessage() == "level minor changed elsewhere (cached version 1, stored 2): re-read"
    assert not _records(caplog, outcome="conflict")


def test_a_lock_timeout_is_logged_at_warning(open_engine: Callable[..., JackpotEngine],
                                             db_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    engine = open_engine(settings=Settings(lock_timeout_ms=100))
    with (caplog.at_level(logging.INFO, logger="jackpot"), write_lock_held(db_path),
          pytest.raises(LockTimeoutError)):
        engine.contribute("1", groups=("minor", "mega"), op_id="bet-8")
    (record,) = _records(caplog, outcome="timeout")
    assert _fields(record) == {"op_id": "bet-8", "operation": "contribute",
                               "level": "mega,minor", "attempt": None, "outcome": "timeout"}
    assert record.levelno == logging.WARNING
    assert record.error == "LockTimeoutError"  # type: ignore[attr-defined]


def test_plain_contributions_are_not_logged(engine: JackpotEngine,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="jackpot"):
        for _ in range(3):
            engine.contribute("1")
    assert _records(caplog) == []


def test_json_formatter_writes_one_object_per_line_with_every_field(
        engine: JackpotEngine) -> None:
    stream = io.StringIO()
    handler = configure_logging(level="info", stream=stream)
    try:
        engine.contribute("10", groups="minor")
        engine.process_win("minor", op_id="w-json", winner="ann")
        logging.getLogger("jackpot").info("no operation here")
    finally:
        logging.getLogger("jackpot").removeHandler(handler)
    win, plain = (json.loads(line) for line in stream.getvalue().splitlines())
    assert {k: win[k] for k in (*FIELDS, "severity", "logger", "amount", "winner")} == {
        "op_id": "w-json", "operation": "win", "level": "minor", "attempt": None,
        "outcome": "ok", "severity": "INFO", "logger": "jackpot", "amount": "100.050000",
        "winner": "ann"}
    assert win["message"] == "win on minor: paid 100.050000 to ann (op w-json, ok)"
    assert win["time"].endswith("+00:00")
    assert {k: plain[k] for k in FIELDS} == dict.fromkeys(FIELDS)


def test_json_formatter_keeps_exceptions_and_odd_values() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("jackpot", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                   exc_info=__import__("sys").exc_info())
    record.op_id = "op-1"
    record.detail = {1, 2}  # not JSON: written as its str()
    out = json.loads(JSONFormatter().format(record))
    assert out["message"] == "failed x"
    assert out["op_id"] == "op-1"
    assert out["operation"] is None
    assert out["detail"] == "{1, 2}"
    assert out["exception"].splitlines()[-1] == "ValueError: boom"


def test_json_formatter_keeps_a_stack_asked_for() -> None:
    # logger.info(..., stack_info=True): logging.Formatter writes the stack
    # after the message; the JSON lines left it out.
    stream = io.StringIO()
    handler = configure_logging(level="info", stream=stream)
    try:
        logging.getLogger("jackpot").info("where from", stack_info=True)
    finally:
        logging.getLogger("jackpot").removeHandler(handler)
    out = json.loads(stream.getvalue())
    assert out["stack"].startswith("Stack (most recent call last):")
    assert "test_json_formatter_keeps_a_stack_asked_for" in out["stack"]
    assert "stack" not in json.loads(JSONFormatter().format(
        logging.LogRecord("jackpot", logging.INFO, __file__, 1, "plain", (), None)))


def _strict(constant: str) -> object:
    msg = f"{constant} is no JSON"
    raise ValueError(msg)


def test_json_formatter_writes_nan_and_infinities_as_text_a_strict_reader_takes() -> None:
    # json.dumps writes a float NaN bare, as NaN: no JSON (RFC 8259), and a
    # strict reader (jq, Go's encoding/json, a log shipper) drops the line.
    record = logging.LogRecord("game", logging.INFO, __file__, 1, "rtp", (), None)
    record.rtp = float("nan")
    record.limits = {"high": float("inf"), "low": [float("-inf"), 1.5]}
    line = JSONFormatter().format(record)
    out = json.loads(line, parse_constant=_strict)
    assert out["rtp"] == "NaN"
    assert out["limits"] == {"high": "Infinity", "low": ["-Infinity", 1.5]}
    assert out["message"] == "rtp"


class _NoText:
    def __str__(self) -> str:
        msg = "no text"
        raise RuntimeError(msg)

    __repr__ = __str__


def test_json_formatter_writes_a_record_whose_extra_json_cannot_encode() -> None:
    # The README has a game server attach JSONFormatter to a handler of its
    # own, where its own records carry their own extras. A dict keyed by
    # tuples (a Counter of (level, outcome)), a structure that holds itself,
    # or a value whose str() raises made format() raise (TypeError, a
    # RecursionError in the NaN fallback, the value's own error): logging
    # printed "--- Logging error ---" and the record was lost.
    record = logging.LogRecord("game", logging.INFO, __file__, 1, "tally", (), None)
    looped: dict[str, object] = {"rtp": float("nan")}
    looped["self"] = looped
    record.by_outcome = {("minor", "ok"): 3, None: [float("inf")]}
    record.looped = looped
    record.odd = _NoText()
    out = json.loads(JSONFormatter().format(record), parse_constant=_strict)
    assert out["message"] == "tally"
    assert out["by_outcome"] == {"('minor', 'ok')": 3, "null": ["Infinity"]}
    assert out["looped"] == {"rtp": "NaN", "self": "<circular reference>"}
    assert out["odd"] == "<a _NoText whose str() failed>"


def test_text_format_shows_the_fields() -> None:
    stream = io.StringIO()
    handler = configure_logging(stream=stream, json_lines=False)
    try:
        logging.getLogger("jackpot").warning("hello", extra={"op_id": "o", "level": "minor"})
    finally:
        logging.getLogger("jackpot").removeHandler(handler)
    assert stream.getvalue().rstrip().endswith(
        "WARNING jackpot hello [op_id=o operation=None level=minor attempt=None outcome=None]")


def test_configure_logging_again_replaces_its_handler_and_leaves_others_alone() -> None:
    log = logging.getLogger("jackpot")
    first, second, own = io.StringIO(), io.StringIO(), io.StringIO()
    mine = logging.StreamHandler(own)
    log.addHandler(mine)
    handler = None
    try:
        configure_logging(stream=first)
        handler = configure_logging(stream=second, json_lines=False)
        log.warning("once")
    finally:
        log.removeHandler(mine)
        if handler is not None:
            log.removeHandler(handler)
    assert first.getvalue() == ""  # was: every record written to both streams
    assert second.getvalue().count("once") == 1
    assert own.getvalue() == "once\n"


@pytest.mark.parametrize("level", ["verbose", 10, ""])
def test_configure_logging_refuses_a_bad_level_and_changes_nothing(level: object) -> None:
    log = logging.getLogger("jackpot")
    handlers, before = list(log.handlers), log.level
    with pytest.raises(ValidationError, match="level must be one of debug, info, warning"):
        configure_logging(level=level, stream=io.StringIO())  # type: ignore[arg-type]
    assert (log.handlers, log.level) == (handlers, before)  # was: a new handler left installed


@pytest.mark.parametrize("json_lines", ["no", 0, None, 1])
def test_configure_logging_refuses_a_json_lines_that_is_not_a_bool_and_changes_nothing(
        json_lines: object) -> None:
    # Any truthy value was taken: json_lines="no" gave JSON lines.
    log = logging.getLogger("jackpot")
    handlers, before = list(log.handlers), log.level
    with pytest.raises(ValidationError, match=r"^json_lines must be True or False, not "):
        configure_logging(level="debug", stream=io.StringIO(),
                          json_lines=json_lines)  # type: ignore[arg-type]
    assert (log.handlers, log.level) == (handlers, before)


_FORKED_CONFIGURE = """
import io, logging, os, signal, sys, threading
from jackpot import configure_logging, logs
log = logging.getLogger("jackpot")
held, forked = threading.Event(), threading.Event()
add = log.addHandler

def adding(handler):  # configure_logging paused with its new handler just added
    add(handler)
    held.set()
    forked.wait()

def configure():  # a thread of the parent configuring its logs as the process forks
    if sys.argv[1] == "lock":
        with logs._configure_lock:
            held.set()
            forked.wait()
    else:
        log.addHandler = adding
        configure_logging(stream=io.StringIO())

threading.Thread(target=configure).start()
held.wait()
child = os.fork()
if child == 0:  # a worker configures its own logs
    signal.alarm(int(sys.argv[2]))  # a hung child ends, and says nothing
    vars(log).pop("addHandler", None)
    configure_logging(stream=io.StringIO())
    print("child", sum(isinstance(h, logging.StreamHandler) for h in log.handlers), flush=True)
    os._exit(0)
forked.set()
os.waitpid(child, 0)
"""


@pytest.mark.parametrize("when", ["lock", "adding"])
def test_a_forked_child_configures_its_logging_once(when: str) -> None:
    # The lock of configure_logging was copied held by the fork: the child's
    # configure_logging hung on it. And one fork-copied just after the
    # parent's handler was added, before it was remembered, left the child
    # two handlers (every record written twice).
    hang = 30  # seconds: only a hang waits this long
    done = run_python(_FORKED_CONFIGURE, when, str(hang), timeout=hang * 3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child 1"], done.stderr


def test_the_same_error_gets_its_traceback_once_a_minute(caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A full disk failed every operation with a ~40-line traceback each: 75,000 lines
    # in 10 s with 4 threads, often written to that same disk.
    from jackpot import logs  # noqa: PLC0415 - its clock, moved for the test
    from jackpot._throttle import Throttle  # noqa: PLC0415
    from jackpot.requests import Requests  # noqa: PLC0415

    now = [5000.0]
    monkeypatch.setattr(logs, "_TRACEBACKS", Throttle(60, kept=256, clock=lambda: now[0]))
    op = Requests(["minor"]).contribute(1, groups="minor", op_id="o", player=None)
    full, other = StorageError("database or disk is full"), StorageError("disk I/O error")

    def traced(error: BaseException, of: object = op) -> bool:
        caplog.clear()
        try:
            raise error
        except StorageError as e:
            logs.log_failure(of, "error", e)  # type: ignore[arg-type]
        [record] = caplog.records
        assert record.levelname == "ERROR"
        return bool(record.exc_info)

    with caplog.at_level("ERROR", logger="jackpot"):
        assert [traced(full), traced(full), traced(other)] == [True, False, True]
        assert caplog.records[0].getMessage().endswith("disk I/O error")
        traced(full)
        assert caplog.records[0].getMessage().endswith(
            "(traceback logged once a minute for this error)")
        now[0] += 61
        assert [traced(full), traced(full)] == [True, False]
        # The same failure of another operation (its op_id in the message) is the same error.
        one, two = (Requests(["minor"]).contribute(1, groups="minor", op_id=f"bet-{n}",
                                                   player=None) for n in (1, 2))
        assert [traced(StorageError("contribute 'bet-1' ran out of retries"), one),
                traced(StorageError("contribute 'bet-2' ran out of retries"), two)] == [
            True, False]


class _AnswersNothing:
    """Any plain attribute asked of it, `write` included, raises."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # (pytest asks for __name__)
            raise AttributeError(name)
        msg = f"no {name} here"
        raise RuntimeError(msg)


@pytest.mark.parametrize(("stream", "says"), [
    (5, r"^stream must be a text stream with a write\(\) method .* not int$"),
    ("stderr", r"^stream must be a text stream with a write\(\) method .* not str$"),
    (io.BytesIO(), r"^stream must be a text stream, not the binary BytesIO"),
    # Its __getattr__ raising (was raised through: a RuntimeError, not this).
    (_AnswersNothing(), (r"^stream must be a text stream with a write\(\) method .* "
                         r"not _AnswersNothing$")),
])
def test_configure_logging_refuses_a_stream_it_cannot_write_to_and_changes_nothing(
        stream: object, says: str) -> None:
    """Refused at the call: it was taken, and every record then failed to be written."""
    log = logging.getLogger("jackpot")
    handlers, before = list(log.handlers), log.level
    with pytest.raises(ValidationError, match=says):
        configure_logging(level="debug", stream=stream)  # type: ignore[arg-type]
    assert (log.handlers, log.level) == (handlers, before)
