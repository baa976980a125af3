"""Settings: safe defaults, validation, and JACKPOT_* variables (errors name the variable)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from decimal import Decimal

import pytest

from jackpot import JackpotEngine, Settings, ValidationError


def test_defaults() -> None:
    s = Settings()
    assert (s.max_retry_attempts, s.retry_delay_ms, s.lock_timeout_ms,
            s.concurrency_check_interval_ms, s.enable_metrics, s.log_level, s.synchronous) == (
        3, 100, 5000, 50, True, None, "FULL")


def test_from_empty_environment_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_from_env_reads_every_variable() -> None:
    env = {
        "JACKPOT_MAX_RETRY_ATTEMPTS": "7",
        "JACKPOT_RETRY_DELAY_MS": " 20 ",
        "JACKPOT_LOCK_TIMEOUT_MS": "1500",
        "JACKPOT_CONCURRENCY_CHECK_INTERVAL_MS": "5",
        "JACKPOT_ENABLE_METRICS": "off",
        "JACKPOT_LOG_LEVEL": "DEBUG",
        "JACKPOT_SYNCHRONOUS": "normal",
        "JACKPOT_PAGE_CACHE_MB": "64",
        "JACKPOT_PG_POOL_SIZE": "4",
        "UNRELATED": "x",
    }
    assert Settings.from_env(env) == Settings(
        max_retry_attempts=7, retry_delay_ms=20, lock_timeout_ms=1500,
        concurrency_check_interval_ms=5, enable_metrics=False, log_level="debug",
        synchronous="NORMAL", page_cache_mb=64, pg_pool_size=4)


@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("YES", True), ("On", True),
    ("0", False), ("false", False), ("no", False), ("OFF", False),
])
def test_enable_metrics_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"JACKPOT_ENABLE_METRICS": raw}).enable_metrics is expected


def test_overrides_win_over_the_environment() -> None:
    s = Settings.from_env({"JACKPOT_LOCK_TIMEOUT_MS": "1500"}, lock_timeout_ms=200)
    assert s.lock_timeout_ms == 200


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACKPOT_MAX_RETRY_ATTEMPTS", "9")
    assert Settings.from_env().max_retry_attempts == 9


def test_a_log_level_variable_of_none_is_not_offered_none() -> None:
    with pytest.raises(ValidationError) as info:
        Settings.from_env({"JACKPOT_LOG_LEVEL": "None"})
    assert str(info.value) == ("environment variable JACKPOT_LOG_LEVEL='None' is invalid: "
                               "expected one of debug, info, warning, error, critical")


def test_health_min_free_mb_from_the_environment() -> None:
    assert Settings.from_env({"JACKPOT_HEALTH_MIN_FREE_MB": "0"}).health_min_free_mb == 0
    assert Settings().health_min_free_mb == 100
    with pytest.raises(ValidationError, match="JACKPOT_HEALTH_MIN_FREE_MB='-1'"):
        Settings.from_env({"JACKPOT_HEALTH_MIN_FREE_MB": "-1"})


@pytest.mark.parametrize(("var", "raw", "expected"), [
    ("JACKPOT_LOCK_TIMEOUT_MS", "-5", "an integer in [1, 3600000] (ASCII digits only)"),
    ("JACKPOT_LOCK_TIMEOUT_MS", "soon", "an integer in [1, 3600000] (ASCII digits only)"),
    ("JACKPOT_CONCURRENCY_CHECK_INTERVAL_MS", "-1", "an integer in [1, 60000] (ASCII digits only)"),
    ("JACKPOT_MAX_RETRY_ATTEMPTS", "+3", "an integer in [0, 100] (ASCII digits only)"),
    ("JACKPOT_HEALTH_MIN_FREE_MB", "-1", "an integer in [0, 1073741824] (ASCII digits only)"),
    ("JACKPOT_PAGE_CACHE_MB", "9" * 19, "an integer in [1, 65536], got one of 19 digits"),
    ("JACKPOT_ENABLE_METRICS", "2", "true or false (or 1/0, yes/no, on/off)"),
])
def test_a_bad_variable_is_told_the_values_it_takes(var: str, raw: str, expected: str) -> None:
    """'-5' was told "expected a non-negative integer" by a setting that takes 1-3600000."""
    with pytest.raises(ValidationError) as info:
        Settings.from_env({var: raw})
    assert str(info.value) == f"environment variable {var}={raw!r} is invalid: expected {expected}"


@pytest.mark.parametrize(("var", "raw"), [
    ("JACKPOT_MAX_RETRY_ATTEMPTS", "three"),
    ("JACKPOT_MAX_RETRY_ATTEMPTS", "-1"),
    ("JACKPOT_MAX_RETRY_ATTEMPTS", "101"),
    ("JACKPOT_MAX_RETRY_ATTEMPTS", "2.5"),
    ("JACKPOT_MAX_RETRY_ATTEMPTS", "\uff13"),  # a full-width digit
    ("JACKPOT_RETRY_DELAY_MS", "60001"),
    ("JACKPOT_LOCK_TIMEOUT_MS", "0"),
    ("JACKPOT_LOCK_TIMEOUT_MS", "5s"),
    ("JACKPOT_CONCURRENCY_CHECK_INTERVAL_MS", "0"),
    ("JACKPOT_ENABLE_METRICS", "maybe"),
    ("JACKPOT_LOG_LEVEL", "loud"),
    ("JACKPOT_SYNCHRONOUS", "OFF"),
    ("JACKPOT_PAGE_CACHE_MB", "0"),
    ("JACKPOT_PAGE_CACHE_MB", "32MB"),
    ("JACKPOT_PG_POOL_SIZE", "0"),
])
def test_a_bad_variable_is_named_in_the_error(var: str, raw: str) -> None:
    env = {"JACKPOT_LOG_LEVEL": "warning", var: raw}  # one good neighbour
    with pytest.raises(ValidationError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message.startswith(f"environment variable {var}={raw!r} is invalid: ")
    assert message.count("JACKPOT_") == 1  # names only the bad one


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"max_retry_attempts": -1}, r"^max_retry_attempts must be an integer in \[0, 100\], got -1"),
    ({"max_retry_attempts": True}, r"^max_retry_attempts must be an integer"),
    ({"max_retry_attempts": 2.0}, r"^max_retry_attempts must be an integer"),
    ({"retry_delay_ms": "100"}, r"^retry_delay_ms must be an integer"),
    ({"lock_timeout_ms": 0}, r"^lock_timeout_ms must be an integer in \[1, 3600000\]"),
    ({"concurrency_check_interval_ms": 60_001}, r"^concurrency_check_interval_ms"),
    ({"enable_metrics": 1}, r"^enable_metrics must be a bool, got 1"),
    ({"log_level": "LOUD"}, r"^log_level must be one of debug, info.*got 'loud'"),
    ({"synchronous": "OFF"}, r"^synchronous must be one of FULL, EXTRA, NORMAL"),
    ({"page_cache_mb": 0}, r"^page_cache_mb must be an integer in \[1, 65536\], got 0"),
    ({"pg_pool_size": 10_001}, r"^pg_pool_size must be an integer in \[1, 10000\], got 10001"),
])
def test_settings_refuse_invalid_values(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_levels_and_sync_modes_are_taken_in_any_case_from_code_too() -> None:
    # As JACKPOT_LOG_LEVEL, JACKPOT_SYNCHRONOUS and configure_logging take them.
    s = Settings(log_level="INFO", synchronous="normal")
    assert (s.log_level, s.synchronous) == ("info", "NORMAL")
    assert s == Settings(log_level="info", synchronous="NORMAL")


@pytest.mark.parametrize("raw", ["", " ", "\t"])
def test_a_variable_set_but_empty_counts_as_unset(raw: str) -> None:
    # Container templates set JACKPOT_X=${X} whether X is given or not.
    env = {f"JACKPOT_{f.name.upper()}": raw for f in fields(Settings)}
    assert Settings.from_env(env) == Settings()


def test_a_variable_that_nearly_spells_a_setting_is_logged_not_silently_ignored(
        caplog: pytest.LogCaptureFixture) -> None:
    env = {"JACKPOT_LOCK_TIMEOUT": "2000", "JACKPOT_LOGLEVEL": "debug",
           "JACKPOT_DB": "pools.db", "JACKPOT_TEST_PG_URL": "postgresql://x", "JACKPOT_X": "1"}
    with caplog.at_level("WARNING", logger="jackpot"):
        assert Settings.from_env(env) == Settings()
    ignored = "is not a jackpot setting and is ignored: did you mean"
    assert [r.getMessage() for r in caplog.records] == [
        f"environment variable JACKPOT_LOCK_TIMEOUT {ignored} JACKPOT_LOCK_TIMEOUT_MS?",
        f"environment variable JACKPOT_LOGLEVEL {ignored} JACKPOT_LOG_LEVEL?"]


class _RaisingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = "log filter failed"
        raise RuntimeError(msg)


def test_a_variable_that_nearly_spells_a_setting_is_ignored_though_logging_it_raises() -> None:
    # Raising, the warning failed the settings, and every open() given none.
    log, raising = logging.getLogger("jackpot"), _RaisingFilter()
    log.addFilter(raising)
    try:
        assert Settings.from_env({"JACKPOT_LOCK_TIMEOUT": "2000"}) == Settings()
    finally:
        log.removeFilter(raising)


def test_an_invalid_override_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"^lock_timeout_ms must be an integer"):
        Settings.from_env({}, lock_timeout_ms=-5)


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.lock_timeout_ms = 1  # type: ignore[misc]


def test_a_variable_too_long_for_an_int_is_named_in_the_error() -> None:
    raw = "9" * 5000  # int() itself refuses more than 4300 digits, with a bare ValueError
    with pytest.raises(ValidationError) as info:
        Settings.from_env({"JACKPOT_LOCK_TIMEOUT_MS": raw})
    assert str(info.value).startswith("environment variable JACKPOT_LOCK_TIMEOUT_MS=")
    assert str(info.value).endswith("is invalid: expected an integer in [1, 3600000], got "
                                    "one of 5000 digits")
    # leading zeros are only notation
    assert Settings.from_env({"JACKPOT_LOCK_TIMEOUT_MS": "0" * 5000 + "7"}).lock_timeout_ms == 7


@pytest.mark.parametrize(("attempts", "delay_ms"), [(17, 100), (40, 100), (100, 1), (7, 60_000)])
def test_retries_whose_backoff_outgrows_an_hour_are_refused(attempts: int,
                                                             delay_ms: int) -> None:
    # each value is in its own range; together the engine would size its waits past
    # what the clock holds (40 retries at 100 ms: open() failed to start its actors)
    with pytest.raises(ValidationError) as info:
        Settings(max_retry_attempts=attempts, retry_delay_ms=delay_ms)
    assert str(info.value) == (
        f"max_retry_attempts {attempts} with retry_delay_ms {delay_ms} "
        "(JACKPOT_MAX_RETRY_ATTEMPTS, JACKPOT_RETRY_DELAY_MS): the last retry would wait "
        f"{delay_ms * 2 ** (attempts - 1)} ms, more than 3600000 ms "
        "(retry_delay_ms x 2**(max_retry_attempts - 1)); lower either")


def test_the_retry_budget_is_judged_on_both_variables_together() -> None:
    env = {"JACKPOT_MAX_RETRY_ATTEMPTS": "100", "JACKPOT_RETRY_DELAY_MS": "0"}
    assert Settings.from_env(env).max_retry_attempts == 100
    with pytest.raises(ValidationError, match=r"^max_retry_attempts 40 with retry_delay_ms 100 "):
        Settings.from_env({"JACKPOT_MAX_RETRY_ATTEMPTS": "40"})


@pytest.mark.parametrize(("attempts", "delay_ms"), [(16, 100), (100, 0), (6, 60_000)])
def test_an_engine_opens_with_the_largest_retry_budget(
        open_engine: Callable[..., JackpotEngine], attempts: int, delay_ms: int) -> None:
    engine = open_engine(settings=Settings(max_retry_attempts=attempts,
                                           retry_delay_ms=delay_ms))
    assert engine.contribute(10, groups="minor", op_id="b1").contributions == {
        "minor": Decimal("0.050000")}


def test_an_override_naming_no_setting_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"^no such setting: lock_timeout, retries$"):
        Settings.from_env({}, retries=3, lock_timeout=10)


@pytest.mark.parametrize(("environ", "says"), [
    # were AttributeErrors: 'int' object has no attribute 'strip' / 'startswith', and
    # 'str' object has no attribute 'get'
    ({"JACKPOT_LOCK_TIMEOUT_MS": 2000},
     r"^environment variable JACKPOT_LOCK_TIMEOUT_MS must be a str, not int"),
    ({"JACKPOT_LOCK_TIMEOUT_MS": b"2000"}, r"JACKPOT_LOCK_TIMEOUT_MS must be a str, not bytes"),
    ({"JACKPOT_ENABLE_METRICS": True}, r"JACKPOT_ENABLE_METRICS must be a str, not bool"),
    ({5: "5"}, r"^environ must map variable names \(str\) to values, not int to str"),
    ("JACKPOT_LOCK_TIMEOUT_MS=10", r"^environ must be a mapping .*, not str"),
    ([("JACKPOT_LOCK_TIMEOUT_MS", "10")], r"^environ must be a mapping .*, not list"),
])
def test_an_environment_of_other_things_than_strs_is_refused_by_name(
        environ: object, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings.from_env(environ)  # type: ignore[arg-type]
