"""The README's code blocks run and say what they claim; its tables match the code.

Every fenced block is either run here (Python blocks in-process, each with a
small harness: a temporary working directory, the context a fragment needs;
the `jackpot` command block line by line through the command's own entry point,
`_cli.run`, as tests/ops/test_cli.py runs it in-process, against a temporary
database), or listed in NOT_RUN with the reason and what is checked instead.
A block added to the README without either fails
`test_every_block_is_run_or_said_why_not`.

The tables (settings, errors, health checks), and the lists of values written
out in prose (outcomes, operation kinds, config keys, settings' values), are
compared with the code; the metrics table with what an engine exports, in
tests/ops/test_alerts.py.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import re
import shlex
import tomllib
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

import jackpot
from _readme import README, Block, blocks, names_in, table
from backends.pg import RUN_LOCALLY
from jackpot import JackpotEngine, JackpotError, Settings, _cli

ROOT = README.parent
Harness = Callable[[Block, Path, pytest.CaptureFixture[str]], None]

NOT_RUN = {
    ("Two commands", 0): "creates a venv and pip-installs from the package index (a minute, "
                         "network): test_the_setup_commands_name_what_the_repository_has "
                         "checks the extras and the script it names",
    ("Two commands", 1): "the whole test suite, of which this is a part (minutes): "
                         "test_the_setup_commands_name_what_the_repository_has checks its extra",
    ("PostgreSQL", 0): "needs a PostgreSQL server: tests/backends/test_readme_pg.py runs it "
                       "against the test server (scripts/with-postgres)",
    ("PostgreSQL", 1): "runs the PostgreSQL suite (minutes): "
                       "test_the_postgresql_command_is_the_one_the_tests_name checks it",
}


def _run(block: Block) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(block.code(), namespace)  # the README's own code, as a reader runs it
    return namespace


def _quickstart(block: Block, _tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(block)  # opens pools.db in the working directory, as written
    assert capsys.readouterr().out.splitlines() == [
        ("{'major': Decimal('0.007500'), 'minor': Decimal('0.012500')} "
         "{'major': Decimal('1000.007500'), 'minor': Decimal('100.012500')} "
         "{'major': 2, 'minor': 2}"),
        "100.012500 100.000000",
        "True",  # engine.verify().ok
    ]


def _levels(block: Block, _tmp: Path, _capsys: pytest.CaptureFixture[str]) -> None:
    engine = _run(block)["engine"]  # the block leaves it open, as a server would
    assert isinstance(engine, JackpotEngine)
    try:
        pools = engine.pools()
        assert sorted(pools) == ["major", "minor", "mystery"]  # "creates the levels"
        assert (pools["major"].cap, pools["major"].min_bet) == (Decimal(5000), Decimal(1))
        assert (pools["mystery"].must_hit_by, pools["minor"].reserve_rate) == (Decimal(60), Decimal("0.002"))
    finally:
        engine.close()


def _asyncio(block: Block, _tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(block)  # a whole program, as a reader pastes it: it runs serve() itself
    assert capsys.readouterr().out == "() 100.012500 True\n"  # no hit; the win; verify().ok


def _json_logs(block: Block, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The block's comment shows the line of a win: make that win (a bet of 10
    # on minor adds 0.05 to its seed of 100) and compare the line with it.
    shown = "".join(line.strip().removeprefix("#").strip()
                    for line in block.text.splitlines() if line.startswith("#"))
    sample = json.loads(shown.replace(",...}", "}"))
    log = logging.getLogger("jackpot")
    before = list(log.handlers)
    _run(block)  # configure_logging(level="info"): to stderr, here captured
    try:
        with JackpotEngine.open(tmp_path / "logs.db") as engine:
            engine.contribute(10, groups=("minor",))
            engine.process_win("minor", op_id="win-1", winner="p9")
    finally:
        for handler in set(log.handlers) - set(before):
            log.removeHandler(handler)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    line = next(r for r in lines if r["op_id"] == "win-1")
    assert list(line)[:len(sample)] == list(sample)  # the same fields, in that order
    datetime.fromisoformat(line["time"])
    assert {k: line[k] for k in sample if k != "time"} == {k: v for k, v in sample.items()
                                                        if k != "time"}


HARNESSES: dict[tuple[str, int], Harness] = {
    ("jackpot", 0): _quickstart,
    ("Concepts", 0): _levels,
    ("Embedding", 0): _asyncio,
    ("Logs", 0): _json_logs,
}

CLI_BLOCK = ("The `jackpot` command", 0)


def test_every_block_is_run_or_said_why_not() -> None:
    found = [b.key for b in blocks()]
    assert len(found) == len(set(found))
    assert set(found) == {*HARNESSES, *NOT_RUN, CLI_BLOCK}


@pytest.mark.parametrize("block", blocks("python"), ids=lambda b: f"README.md:{b.line}")
def test_every_python_block_compiles(block: Block) -> None:
    block.code()


@pytest.mark.parametrize("block", [b for b in blocks("python") if b.key not in NOT_RUN],
                         ids=lambda b: f"README.md:{b.line}")
def test_the_python_block_runs_and_prints_what_it_says(
        block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert block.key in HARNESSES, f"README.md:{block.line}: no harness runs this block"
    monkeypatch.chdir(tmp_path)
    HARNESSES[block.key](block, tmp_path, capsys)


# -- the `jackpot` command block ------------------------------------------------------------

# What the block's commands need that a reader supplies: the level `retire`
# names (the block creates `daily`, and retires `promo`); fewer bets for
# `simulate` (10,000 take seconds). Each is run as written otherwise, with
# every [optional part] given.
CLI_BEFORE = {"retire": ["init", "--level", "promo:10:0.01"]}
CLI_FEWER = {"--bets 10000": "--bets 250"}
CLI_NOT_RUN = {
    "pip install 'jackpot[cli]'": "installs; test_the_setup_commands_name_what_the_repository_has "
                                  "checks the extra",
    "jackpot metrics --serve --port 9464": "serves until interrupted: its flags are checked "
                                           "against `metrics --help`",
}


def _cli_lines() -> list[str]:
    """The block's commands, comments dropped (a comment line continues the one above)."""
    (block,) = [b for b in blocks() if b.key == CLI_BLOCK]
    lines = [line.split(" # ")[0].strip() for line in block.text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _argv(line: str) -> list[str]:
    for written, fewer in CLI_FEWER.items():
        line = line.replace(written, fewer)
    words = shlex.split(line)
    assert words[0] == "jackpot", line
    return [w.strip("[]") for w in words[1:]]  # every optional part given


def _command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = _cli.run(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_block_lists_every_command_and_runs_as_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = _cli_lines()
    (export,) = [line for line in lines if line.startswith("export ")]
    lines.remove(export)
    assert export.startswith("export JACKPOT_DB=")  # (or --db PATH): a temporary file here
    monkeypatch.setenv("JACKPOT_DB", str(tmp_path / "pools.db"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)  # (`backup pools-copy.db` writes there)
    run = [line for line in lines if line not in CLI_NOT_RUN]
    assert sorted(set(lines) - set(run)) == sorted(CLI_NOT_RUN)
    for line in run:
        argv = _argv(line)
        if argv[0] in CLI_BEFORE:
            assert _command(CLI_BEFORE[argv[0]], capsys)[0] == 0
        status, out, err = _command(argv, capsys)
        assert (status, err.strip()) == (0, ""), f"{line}: {out}"  # (simulate: a progress bar's
        # last line, on stderr)
    commands = {_argv(line)[0] for line in lines if line.startswith("jackpot ")}
    assert commands - {"--version"} == set(_cli.app.commands)
    status, out, _ = _command(["status", "--json"], capsys)
    levels = {p["name"]: p["status"] for p in json.loads(out)}
    assert levels == {"daily": "active", "major": "active", "mega": "active",
                      "minor": "active", "promo": "retired"}


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    status, out, err = _command([command, "--help"], capsys)
    assert (status, err) == (0, "")
    return out


def test_the_flags_of_the_commands_not_run_and_every_commands_common_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    serve = _argv("jackpot metrics --serve --port 9464")
    text = _help(serve[0], capsys)
    assert [f for f in serve if f.startswith("--") and f not in text] == []
    # "--db PATH on any command", "Every command takes --json", and the
    # commands that change a level take --op-id.
    changing = re.search(r"Each command that changes a level by hand \(([^)]*)\) takes `--op-id`",
                         " ".join(README.read_text(encoding="utf-8").split()))
    assert changing is not None
    for command in _cli.app.commands:
        text = _help(command, capsys)
        flags = {"--db", "--json"} | ({"--op-id"} if command in names_in(changing[1]) else set())
        assert {f for f in flags if f not in text} == set(), command
    assert sorted(names_in(changing[1])) == sorted(
        c for c in _cli.app.commands if "--op-id" in _help(c, capsys))


def test_the_setup_commands_name_what_the_repository_has() -> None:
    text = README.read_text(encoding="utf-8")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    named = set(re.findall(r"(?:jackpot|\.)\[(\w+)\]", text))
    assert named >= {"cli", "test"}
    assert named <= set(extras)
    # The README: the test extra "includes the packages of" cli, postgres and otel, not charts.
    said = re.search(r"`\.\[test\]` includes the packages of the (.*?) extras \(not (.*?)\)",
                     " ".join(text.split()))
    assert said is not None
    for extra in names_in(said[1]):
        assert set(extras[extra]) <= set(extras["test"]), extra
    for extra in names_in(said[2]):
        assert not set(extras[extra]) & set(extras["test"]), extra
    for block in blocks("sh")[:2]:
        assert "pip install -q -e" in block.text
    assert "python examples/quickstart.py" in blocks("sh")[0].text
    assert (ROOT / "examples" / "quickstart.py").is_file()


def test_the_postgresql_command_is_the_one_the_tests_name() -> None:
    (block,) = [b for b in blocks() if b.key == ("PostgreSQL", 1)]
    assert block.text.strip() == RUN_LOCALLY
    assert os.access(ROOT / "scripts" / "with-postgres", os.X_OK)


def test_every_repository_path_the_readme_names_exists() -> None:
    text = README.read_text(encoding="utf-8")
    paths = set(re.findall(r"\b(?:\.ci|examples|benchmarks|ops|tests|src|scripts)/[\w./-]*\w",
                           text))
    paths -= {"examples/NAME.py", "ops/s"}  # a placeholder; operations per second
    assert len(paths) > 15
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


# -- tables and names ------------------------------------------------------------------------


def test_the_settings_table_gives_each_settings_variable_and_default() -> None:
    rows = {names_in(variable)[0]: default
            for variable, default, _ in table("variable", "default", "meaning")}
    defaults = Settings()
    expected = {}
    for f in dataclasses.fields(Settings):
        value = getattr(defaults, f.name)
        shown = ("unset" if value is None else f"`{str(value).lower()}`"
                 if isinstance(value, bool) else f"`{value}`")
        expected[f"JACKPOT_{f.name.upper()}"] = shown
    assert rows == expected


def test_the_errors_table_names_every_exported_error_with_its_bases() -> None:
    rows = table("error", "raised when")
    errors = {name for name in jackpot.__all__
              if isinstance(getattr(jackpot, name), type)
              and issubclass(getattr(jackpot, name), JackpotError)}
    assert {names_in(cell)[0] for cell, _ in rows} == errors
    for cell, _ in rows:
        name, *bases = names_in(cell)
        assert all(issubclass(getattr(jackpot, name), getattr(builtins, b)) for b in bases), cell


def test_the_health_table_lists_the_checks_in_their_order(tmp_path: Path) -> None:
    rows = table("check", "ok", "degraded", "failing")
    with JackpotEngine.open(tmp_path / "h.db") as engine:
        checks = [c.name for c in engine.health().checks]
    assert [names_in(name)[0] for name, *_ in rows] == checks


def test_the_names_the_readme_gives_the_api_exist() -> None:
    text = README.read_text(encoding="utf-8")
    exported = re.findall(r"`jackpot\.([A-Z]\w*)", text)
    assert len(exported) >= 4
    assert sorted(set(exported) - set(jackpot.__all__)) == []
    for owner, attribute in set(re.findall(r"`([A-Z]\w+)\.([a-z_]\w*)", text)):
        if owner in jackpot.__all__:
            cls = getattr(jackpot, owner)
            assert hasattr(cls, attribute) or attribute in {
                f.name for f in dataclasses.fields(cls)}, f"{owner}.{attribute}"


def _said(pattern: str) -> str:
    """The one place the README (its lines joined) matches `pattern`: its first group."""
    found = re.findall(pattern, " ".join(README.read_text(encoding="utf-8").split()))
    assert len(found) == 1, (pattern, found)
    return str(found[0])


def _listed(words: str) -> list[str]:
    """`a, b or c` / `a, b, or c` / "`a`, `b` or `c`" -> [a, b, c]."""
    return [w.strip("` ") for w in re.split(r",\s*(?:or\s+)?|\s+or\s+", words) if w.strip("` ")]


def test_the_lists_the_readme_gives_are_the_codes() -> None:
    """The value lists written out in prose: outcomes, operation kinds, config keys, settings.

    The tables are compared above; these lists sit in sentences and table
    cells, and drift unseen when the code gains a value (a new outcome, a
    config key, a log level).
    """
    from jackpot import ConfigChanges, metrics, settings, stats  # noqa: PLC0415

    assert _listed(_said(r"finished operations; outcome is ([a-z, ]+?) \(")) == list(stats.OUTCOMES)
    assert _listed(_said(r"Operations are the engine's kinds: ([a-z, ]+);")) == list(
        metrics.OPERATIONS)
    keys = list(ConfigChanges.__annotations__)
    assert sorted(_listed(_said(r"`update_config\(group, .*?\)` changes (.*?) \(typed as"))) == (
        sorted(keys))
    help_text = " ".join((_cli.app.commands["config"].help or "").split())  # `config --help`
    said = re.search(r"Keys: ([a-z_, ]+); `none` clears", help_text)
    assert said is not None
    assert sorted(_listed(said[1])) == sorted(keys)
    rows = {names_in(variable)[0]: meaning
            for variable, _, meaning in table("variable", "default", "meaning")}
    assert _listed(re.split(r"[:;]", rows["JACKPOT_LOG_LEVEL"])[1]) == list(settings.LOG_LEVELS)
    assert names_in(rows["JACKPOT_SYNCHRONOUS"])[1:] == list(settings._SYNC_MODES)
    words = names_in(rows["JACKPOT_ENABLE_METRICS"])  # `true`/`false`, `1`/`0`, ...
    assert len(words) == 8
    for yes, no in zip(words[::2], words[1::2], strict=True):
        assert Settings.from_env({"JACKPOT_ENABLE_METRICS": yes}).enable_metrics is True
        assert Settings.from_env({"JACKPOT_ENABLE_METRICS": no}).enable_metrics is False


def test_the_oldest_versions_the_readme_names_are_the_floors_pyproject_allows() -> None:
    """"The oldest versions `pyproject.toml` allows (...)": each one named is its floor.

    The list once named psycopg 3.1.20, the oldest tried, where pyproject
    allows 3.1 on: a reader took the versions in between for tested.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for spec in [*project["dependencies"],
                 *(s for extra in project["optional-dependencies"].values() for s in extra)]:
        found = re.fullmatch(r"([\w-]+)(?:\[\w+\])?>=([\d.]+)(?:,.*)?", spec.replace(" ", ""))
        assert found is not None, spec
        floors[found[1].lower()] = tuple(int(n) for n in found[2].split("."))
    named = _said(r"passes with the oldest versions `pyproject.toml` allows \((.*?);")
    versions = [item.split() for item in named.split(", ")]
    assert len(versions) >= 6
    for name, version in versions:
        floor = floors[name.lower()]
        numbers = tuple(int(n) for n in version.split("."))
        assert numbers[len(floor):] == (0,) * (len(numbers) - len(floor)), version
        assert numbers[:len(floor)] == floor, (name, version, floor)
