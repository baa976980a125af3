"""Exact integers of other kinds (numpy.int64 and the like) wherever the API takes an int.

Such a type declares itself an integer through `__index__`; `operator.index`
reads it losslessly, as a list index does. numpy is no dependency, so a small
class stands in for it. Floats (numpy's too) have no `__index__` and stay
refused; so does bool, and a type whose `__index__` refuses (numpy.bool_).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

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
    assert GroupConfig("minor", seed=Index(10), contribution_rate="0.01").seed == Decimal(10)  # type: ignore[arg-type]
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
    s = Settings(lock_timeout_ms=Index(100), max_retry_attempts=Index(0))  # type: ignore[arg-type]
    assert type(s.lock_timeout_ms) is int
    assert s == Settings(lock_timeout_ms=100, max_retry_attempts=0)
    with pytest.raises(ValidationError, match=r"^lock_timeout_ms must be an integer in "
                                              r"\[1, 3600000\], got Index\(0\)$"):
        Settings(lock_timeout_ms=Index(0))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^page_cache_mb must be an integer"):
        Settings(page_cache_mb=NotAnIndex())  # type: ignore[arg-type]


def test_the_engine_takes_exact_integers_of_another_kind(engine: JackpotEngine) -> None:
    first = engine.contribute(Index(2), groups="minor", op_id="bet-1")  # type: ignore[arg-type]
    # The same request as the int 2: a replay, not an IdempotencyConflictError.
    assert engine.contribute(2, groups="minor", op_id="bet-1").replayed
    win = engine.process_win("minor", amount=Index(1), op_id="win-1",  # type: ignore[arg-type]
                             expected_version=Index(first.versions["minor"]))  # type: ignore[arg-type]
    assert (win.amount, win.version) == (Decimal(1), first.versions["minor"] + 1)
    assert [h.op_id for h in engine.history("minor", limit=Index(1))] == ["win-1"]  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^limit must be an int in \[1, 10000\], "
                                              r"got Index\(0\)$"):
        engine.history("minor", limit=Index(0))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^expected_version must be a positive int"):
        engine.update_config("minor", expected_version=NotAnIndex(), seed=1)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="timeout must be a number of seconds"):
        engine.close(timeout=NotAnIndex())  # type: ignore[arg-type]
    engine.close(timeout=Index(30))  # type: ignore[arg-type]


def test_serve_metrics_takes_a_port_of_another_integer_kind(engine: JackpotEngine) -> None:
    server, thread = serve_metrics(engine, Index(0))  # type: ignore[arg-type]
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
