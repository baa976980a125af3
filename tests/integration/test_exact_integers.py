"""Exact integers of other kinds (numpy.int64 and the like) wherever the API takes an int.

Such a type declares itself an integer through `__index__`; `operator.index`
reads it losslessly, as a list index does. numpy is no dependency, so a small
class stands in for it. Floats (numpy's too) have no `__index__` and stay
refused; so does bool, and a type whose `__index__` refuses (numpy.bool_).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

import jackpot
from jackpot import GroupConfig, JackpotEngine, Settings, ValidationError, serve_metrics
from jackpot.money import parse_amount, parse_rate, parse_signed_amount


class Index:
    """An exact integer that is no int subclass, as numpy.int64."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


class NotAnIndex:
    """Declares `__index__` but refuses it, as numpy.bool_ does."""

    def __index__(self) -> int:
        msg = "not an integer"
        raise TypeError(msg)


def test_money_takes_an_exact_integer_of_another_kind() -> None:
    assert parse_amount(Index(7), name="bet") == 7_000_000
    assert parse_signed_amount(Index(-5), name="delta") == -5_000_000
    assert parse_rate(Index(0), name="reserve_rate", allow_zero=True) == 0
    assert GroupConfig("minor", seed=Index(10), contribution_rate="0.01").seed == Decimal(10)
    with pytest.raises(ValidationError, match=r"^bet must be a Decimal, int or decimal "
                                              r"string, not NotAnIndex$"):
        parse_amount(NotAnIndex(), name="bet")


@pytest.mark.parametrize(("value", "pattern"), [
    (Index(-1), r"^bet must not be negative, got -1$"),
    (Index(10**11 + 1), r"^bet 100000000001 is beyond the engine's range"),
])
def test_money_refuses_what_it_would_refuse_as_an_int(value: object, pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        parse_amount(value, name="bet")


def test_settings_keep_an_exact_integer_as_a_plain_int() -> None:
    s = Settings(lock_timeout_ms=Index(100), max_retry_attempts=Index(0))
    assert type(s.lock_timeout_ms) is int
    assert s == Settings(lock_timeout_ms=100, max_retry_attempts=0)
    with pytest.raises(ValidationError, match=r"^lock_timeout_ms must be an integer in "
                                              r"\[1, 3600000\], got Index\(0\)$"):
        Settings(lock_timeout_ms=Index(0))
    with pytest.raises(ValidationError, match=r"^page_cache_mb must be an integer"):
        Settings(page_cache_mb=NotAnIndex())


def test_the_engine_takes_exact_integers_of_another_kind(engine: JackpotEngine) -> None:
    first = engine.contribute(Index(2), groups="minor", op_id="bet-1")
    # The same request as the int 2: a replay, not an IdempotencyConflictError.
    assert engine.contribute(2, groups="minor", op_id="bet-1").replayed
    win = engine.process_win("minor", amount=Index(1), op_id="win-1",
                             expected_version=Index(first.versions["minor"]))
    assert (win.amount, win.version) == (Decimal(1), first.versions["minor"] + 1)
    assert [h.op_id for h in engine.history("minor", limit=Index(1))] == ["win-1"]
    with pytest.raises(ValidationError, match=r"^limit must be an int in \[1, 10000\], "
                                              r"got Index\(0\)$"):
        engine.history("minor", limit=Index(0))
    with pytest.raises(ValidationError, match=r"^expected_version must be a positive int"):
        engine.update_config("minor", expected_version=NotAnIndex(), seed=1)
    with pytest.raises(ValidationError, match="timeout must be a number of seconds"):
        engine.close(timeout=NotAnIndex())
    engine.close(timeout=Index(30))


def test_serve_metrics_takes_a_port_of_another_integer_kind(engine: JackpotEngine) -> None:
    server, thread = serve_metrics(engine, Index(0))
    try:
        assert server.server_port > 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()



class BrokenIndex:
    """Declares `__index__`, which fails with an error of its own."""

    def __index__(self) -> int:
        msg = "broken __index__"
        raise ValueError(msg)


class AnswersNothing:
    """Any attribute asked of it, `__index__` included, raises."""

    def __getattr__(self, name: str) -> object:
        msg = f"no {name} here"
        raise RuntimeError(msg)


@pytest.mark.parametrize("value", [BrokenIndex(), AnswersNothing()],
                         ids=["index-raises", "getattr-raises"])
def test_an_object_that_cannot_say_it_is_an_integer_is_refused_as_before(
        engine: JackpotEngine, value: object) -> None:
    """Refused with the parameter's ValidationError, not its own error raised through.

    Reading `__index__` let the object's ValueError (or the RuntimeError of
    a `__getattr__` asked for `__index__` by the protocol check) out of
    contribute, history, close... where it was a ValidationError before.
    """
    kind = type(value).__name__
    with pytest.raises(ValidationError, match=rf"^bet must be a Decimal, int or decimal "
                                              rf"string, not {kind}$"):
        engine.contribute(value, groups="minor")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^limit must be an int in \[1, 10000\]"):
        engine.history("minor", limit=value)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^expected_version must be a positive int"):
        engine.update_config("minor", expected_version=value, seed=1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^lock_timeout_ms must be an integer"):
        Settings(lock_timeout_ms=value)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^timeout must be a number of seconds"):
        engine.close(timeout=value)  # type: ignore[arg-type]
    assert engine.pools()["minor"].version == 1  # nothing changed


TYPED_USE = """
from jackpot import (AsyncJackpotEngine, GroupConfig, JackpotEngine, Settings,
                     serve_metrics)


class Int64:
    def __index__(self) -> int:
        return 2


def use(engine: JackpotEngine) -> None:
    n = Int64()
    GroupConfig("g", seed=n, contribution_rate="0.01", cap=n, reserve_rate="0",
                min_bet=n, max_contribution=n, must_hit_by=n)
    Settings(lock_timeout_ms=n, max_retry_attempts=n, page_cache_mb=n)
    engine.contribute(n, groups="minor")
    engine.process_win("minor", amount=n, expected_version=n, expected_amount=n)
    engine.update_config("minor", expected_version=n, seed=n, cap=n)
    engine.adjust("minor", n, reason="r", who="w")
    engine.history("minor", limit=n)
    serve_metrics(engine, n)
    engine.close(timeout=n)


async def use_async(engine: AsyncJackpotEngine) -> None:
    n = Int64()
    await engine.contribute(n, groups="minor")
    await engine.process_win("minor", amount=n, expected_version=n, expected_amount=n)
    await engine.update_config("minor", expected_version=n, must_hit_by=n)
    await engine.adjust("minor", n, reason="r", who="w")
    await engine.history("minor", limit=n)
    await engine.close(timeout=n)
"""


def test_a_type_checker_takes_an_exact_integer_of_another_kind_where_the_engine_does(
        tmp_path: Path) -> None:
    """Before: README promised numpy.int64 wherever an int goes, but the type hints said
    `int` (or `Decimal | int | str`): `mypy --strict` refused every such call the engine
    takes (the tests above needed `# type: ignore[arg-type]` on each), so a typed game
    server had to silence its checker for what README told it to do."""
    from mypy import api  # noqa: PLC0415 - a test dependency, only here

    config = tmp_path / "mypy.ini"  # (not the project's, which names files to check)
    config.write_text(f"[mypy]\nmypy_path = {Path(jackpot.__file__).parents[1]}\n")
    out, err, status = api.run(["--config-file", str(config), "--strict", "--no-error-summary",
                                "--cache-dir", str(tmp_path / "cache"), "--python-version",
                                "3.11", "-c", TYPED_USE])
    assert (out, err, status) == ("", "", 0)
