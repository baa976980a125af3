"""Every example runs as a user would run it (`python examples/NAME.py`), in its short mode.

Each runs in a fresh interpreter, in tmp_path as working directory, and must
exit 0 and print what it promises, ending with a clean audit.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import os
import random
import re
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jackpot import (
    AsyncJackpotEngine,
    JackpotEngine,
    StorageError,
    ValidationError,
    VerifyReport,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_example(name: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", "--quick", cwd=tmp_path)
    assert "played 50 bets; replaying spin-0 changed nothing: True" in out
    assert "player-9 won the minor jackpot: " in out
    assert "audit: OK - 3 levels, 154 ledger rows reconciled to 0.000001" in out


def test_asyncio_game_server(tmp_path: Path) -> None:
    out = run_example("asyncio_game_server.py", "--quick", cwd=tmp_path)
    assert "game server on 127.0.0.1:" in out
    assert "20 players x 10 spins" in out
    assert "\n200 spins in " in out
    assert "players were paid " in out
    assert ", exactly what the meters say was won" in out
    assert "health: ok" in out
    assert out.rstrip().endswith("reconciled to 0.000001")
    assert "audit: OK - 3 levels, " in out


def test_the_game_servers_players_never_overflow_its_listening_socket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every player connected at once: past the backlog the kernel dropped connections.

    A dropped player's spin waited on TCP's retries: `--players 3000` stalled
    for 100 s, then ended in a ConnectionResetError traceback. Connections
    opened and not yet taken by the server's handler (an upper bound of those
    the kernel holds unaccepted) must stay within the backlog the server
    listens with.
    """
    game = _load("asyncio_game_server.py", monkeypatch)
    counts = {"opened": 0, "handled": 0, "most_waiting": 0}
    backlogs: list[int] = []
    open_connection, start_server = asyncio.open_connection, asyncio.start_server
    handle = game.GameServer.handle

    async def opened(*args: Any, **kwargs: Any) -> Any:
        streams = await open_connection(*args, **kwargs)
        counts["opened"] += 1
        counts["most_waiting"] = max(counts["most_waiting"], counts["opened"] - counts["handled"])
        return streams

    async def handled(self: Any, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        counts["handled"] += 1
        await handle(self, reader, writer)

    async def listening(*args: Any, backlog: int = 100, **kwargs: Any) -> Any:
        backlogs.append(backlog)  # asyncio's default: 100
        return await start_server(*args, backlog=backlog, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", opened)
    monkeypatch.setattr(asyncio, "start_server", listening)
    monkeypatch.setattr(game.GameServer, "handle", handled)
    assert asyncio.run(game.main_async(tmp_path / "s.db", 1000, 1, kept=False))
    assert counts["opened"] == counts["handled"] == 1000
    assert counts["most_waiting"] <= backlogs[0]  # 215-383 when all 1,000 came at once


def _rounds_an_unkeyed_draw_would_pay(player: str, odds: int, count: int) -> list[str]:
    """Round ids whose op_id alone, as a seed, wins the first level: what a player could compute."""
    rounds = (f"r{n}" for n in range(1_000_000))
    return list(itertools.islice(
        (r for r in rounds if random.Random(f"{player}:{r}").randrange(odds) == 0), count))


def test_a_player_cannot_pick_the_rounds_that_win(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The player sends the round id: the outcome must not be computable from it alone."""
    game = _load("asyncio_game_server.py", monkeypatch)
    assert next(iter(game.WIN_ODDS)) == "minor"  # the level the server draws first
    rounds = _rounds_an_unkeyed_draw_would_pay("p-1", game.WIN_ODDS["minor"], 20)

    async def play() -> int:
        async with await AsyncJackpotEngine.open(tmp_path / "s.db", game.LEVELS) as engine:
            server = game.GameServer(engine)
            wins = 0
            for r in rounds:
                reply = await server.spin("p-1", r, "1.00")
                wins += [j["level"] for j in reply["jackpots"]].count("minor")
            return wins

    # Drawn with the server's secret, each round pays minor 1 time in 250:
    # all 20 of them would be a chance of 250**-20; seeded by the op_id, all 20 paid.
    assert asyncio.run(play()) < len(rounds)


def test_the_game_server_refuses_a_bad_request_and_keeps_the_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    game = _load("asyncio_game_server.py", monkeypatch)

    async def talk() -> list[dict[str, Any]]:
        async with await AsyncJackpotEngine.open(tmp_path / "s.db", game.LEVELS) as engine:
            tcp = await asyncio.start_server(game.GameServer(engine).handle, "127.0.0.1", 0)
            async with tcp:
                port = tcp.sockets[0].getsockname()[1]
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                replies = []
                for line in (b"not json", b"\xff\xfe", b"[1, 2]",
                             b"[" * 10_000,  # nested past the parser's recursion limit
                             b'{"op": "spin", "player": "p"}',
                             b'{"op": "spin", "player": "p", "round": "r1", "stake": 1.5}',
                             b'{"op": "spin", "player": "p", "round": "r1", "stake": "1.00"}'):
                    writer.write(line + b"\n")
                    await writer.drain()
                    replies.append(json.loads(await asyncio.wait_for(reader.readline(), 30)))
                writer.close()
                await writer.wait_closed()
                return replies

    *refused, spun = asyncio.run(talk())
    assert [(r["ok"], r["error"]) for r in refused] == [
        (False, "BadRequest"), (False, "BadRequest"), (False, "BadRequest"),
        (False, "BadRequest"), (False, "BadRequest"), (False, "ValidationError")]
    assert refused[3]["message"] == refused[0]["message"]  # told as any line that is not JSON
    assert refused[4]["message"] == "a spin needs round, stake"
    assert spun["ok"] is True
    assert spun["replayed"] is False


def test_the_game_server_refuses_a_request_nested_too_deep_to_print(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What json.loads returns for a line nested just short of its limit.

    repr() or str() of it, a few calls deeper, raises RecursionError: out of
    the handler as a traceback, for an unknown op or a spin's player.
    """
    game = _load("asyncio_game_server.py", monkeypatch)
    deep: list[Any] = []
    for _ in range(5_000):
        deep = [deep]

    async def ask() -> list[dict[str, Any]]:
        async with await AsyncJackpotEngine.open(tmp_path / "s.db", game.LEVELS) as engine:
            server = game.GameServer(engine)
            return [await server.answer({"op": deep}),
                    await server.answer({"op": "spin", "player": deep, "round": "r1",
                                         "stake": "1.00"}),
                    await server.answer({"op": "spin", "player": "p", "round": 7,
                                         "stake": "1.00"})]

    unknown, spin, spun = asyncio.run(ask())
    assert unknown == {"ok": False, "error": "BadRequest",
                       "message": 'unknown op of type list: send "spin" or "pools"'}
    assert spin == {"ok": False, "error": "BadRequest",
                    "message": "a spin's player and round are text or whole numbers"}
    assert spun["ok"] is True  # a round numbered, not named, is still a round


def _watched(server: Any, errors: list[BaseException], ended: asyncio.Event,
             ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Wrap the game server's handler: what it lets escape goes to `errors`; `ended` once done."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await server.handle(reader, writer)
        except Exception as e:  # what the server let escape
            errors.append(e)
        finally:
            ended.set()
    return handle


def test_the_game_server_hangs_up_on_a_line_too_long_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line past the stream's 64 KiB limit was a ValueError out of the handler."""
    game = _load("asyncio_game_server.py", monkeypatch)

    async def talk() -> tuple[list[BaseException], dict[str, Any], bytes]:
        errors: list[BaseException] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(context.get("exception")
                                                 or RuntimeError(context["message"])))
        async with await AsyncJackpotEngine.open(tmp_path / "s.db", game.LEVELS) as engine:
            ended = asyncio.Event()
            handle = _watched(game.GameServer(engine), errors, ended)
            tcp = await asyncio.start_server(handle, "127.0.0.1", 0)
            async with tcp:
                port = tcp.sockets[0].getsockname()[1]
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"x" * 100_000 + b"\n")
                await writer.drain()
                reply = json.loads(await asyncio.wait_for(reader.readline(), 30))
                rest = await asyncio.wait_for(reader.read(), 30)  # b"": the server hung up
                await asyncio.wait_for(ended.wait(), 30)
                writer.close()
                return errors, reply, rest

    errors, reply, rest = asyncio.run(talk())
    assert errors == []
    assert reply == {"ok": False, "error": "BadRequest", "message": "line too long: goodbye"}
    assert rest == b""


def test_the_game_server_takes_a_dropped_connection_in_its_stride(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A player who vanished mid-spin was a ConnectionResetError out of the handler."""
    game = _load("asyncio_game_server.py", monkeypatch)
    spin = b'{"op": "spin", "player": "p", "round": "r%d", "stake": "1.00"}\n'

    async def drop_then_play() -> tuple[list[BaseException], dict[str, Any], bool]:
        async with await AsyncJackpotEngine.open(tmp_path / "s.db", game.LEVELS) as engine:
            errors: list[BaseException] = []
            ended = asyncio.Event()
            handle = _watched(game.GameServer(engine), errors, ended)
            tcp = await asyncio.start_server(handle, "127.0.0.1", 0)
            async with tcp:
                port = tcp.sockets[0].getsockname()[1]
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"".join(spin % n for n in range(50)))
                await writer.drain()
                writer.transport.abort()  # the connection drops with its replies unread
                await asyncio.wait_for(ended.wait(), 30)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(spin % 0)  # the player is back and resends the first round
                await writer.drain()
                again = json.loads(await asyncio.wait_for(reader.readline(), 30))
                writer.close()
                await writer.wait_closed()
            return errors, again, (await engine.verify()).ok

    errors, again, audited = asyncio.run(drop_then_play())
    assert errors == []
    assert again["ok"] is True  # applied before the drop (then replayed) or now
    assert audited


def test_casino_floor(tmp_path: Path) -> None:
    png = tmp_path / "floor.png"
    out = run_example("casino_floor.py", "--quick", "--chart", str(png), cwd=tmp_path)
    assert out.startswith("casino floor: 4 banks (one process each) x 2 machines x 40 spins, "
                          "on a temporary file (--db PATH keeps one)\n")  # was "on floor.db"
    assert "\n320 spins in " in out
    assert "every level's 'won' meter equals what the banks paid out" in out
    assert "never past its must-hit-by 60.00" in out
    for level in ("dollar-major", "floor-mega", "high-grand", "mystery", "penny-minor"):
        assert f"\n{level} " in out
    if HAS_MATPLOTLIB:
        assert f"chart: pool amounts over time written to {png}" in out
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "note: matplotlib is not installed, so no chart was drawn" in out
        assert not png.exists()
    assert "audit: OK - 5 levels, " in out


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    if name != "_script.py":  # each example imports examples/_script.py as `_script`
        # (by its file, not sys.path: benchmarks/ has a _script module of its own)
        monkeypatch.setitem(sys.modules, "_script", _load("_script.py", monkeypatch))
    spec = importlib.util.spec_from_file_location(f"example_{name.removesuffix('.py')}",
                                                  EXAMPLES / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_no_one_can_foretell_which_spins_of_a_machine_pay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Op_ids are machine and spin numbers: the outcome must not be computable from them."""
    floor = _load("casino_floor.py", monkeypatch)
    bank = floor.Bank("t", ("1",), ("penny-minor",), {"penny-minor": 2})
    spins = 40
    foretold = {n for n in range(spins)
                if random.Random(f"t-m0-s{n}").randrange(2) == 0}  # what the op_id alone says
    paid: list[Any] = []
    with JackpotEngine.open(tmp_path / "f.db", floor.LEVELS) as engine:
        floor.play_machine(engine, bank, 0, spins, paid, secrets.token_bytes(32))
    won = {int(w.op_id.split(":")[0].removeprefix("t-m0-s")) for w in paid}
    # Seeded by the op_id, the spins paid were exactly those foretold; drawn
    # with a secret, the two sets of 40 coin flips agree once in 2**40.
    assert won != foretold


def test_casino_floor_without_matplotlib_skips_the_chart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    floor = _load("casino_floor.py", monkeypatch)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "floor.png"
    note = floor.chart([(0.0, {})], {}, png)
    assert note == ("note: matplotlib is not installed, so no chart was drawn "
                    "(pip install 'jackpot[charts]' to get one)")
    assert not png.exists()


def test_operator_console(tmp_path: Path) -> None:
    out = run_example("operator_console.py", "--quick", cwd=tmp_path)
    first = out.splitlines()[0]  # the database is a temporary one, and the reader is told
    assert first.startswith("the operator's console: export JACKPOT_DB=")
    assert first.endswith(" (a temporary file, removed at the end: "
                          "give --db PATH to keep it and run these commands yourself)")
    assert not Path(first.split("=", 1)[1].split(" (", 1)[0]).exists()
    assert "rate 0.01 -> 0.015 now; waits for the next reset: {'seed': '120.000000'}" in out
    assert "refused: ConcurrencyViolationError: level 'minor' is at version 42" in out
    assert "GroupSuspendedError: level 'major' is suspended" in out
    assert "replayed: True; major still 1025.46" in out
    assert "refused: InsufficientFundsError: " in out
    assert "the pool resets to 120.00 (the pending seed took effect)" in out
    assert "GroupRetiredError: level 'summer-promo' is retired" in out
    assert "summer-promo  retired" in out
    assert "status: ok" in out
    assert "audit: OK - 3 levels, 210 ledger rows reconciled to 0.000001" in out


def test_the_operator_consoles_commands_are_real_jackpot_commands(tmp_path: Path) -> None:
    """Each printed command runs; run again afterwards, it is replayed or refused as it was."""
    db = tmp_path / "console.db"
    out = run_example("operator_console.py", "--quick", "--db", str(db), cwd=tmp_path)
    assert out.startswith(f"the operator's console: export JACKPOT_DB={db}\n")
    steps = out.split("\noperator> ")[1:]
    assert len(steps) == 13
    for step in steps:
        line, _, answer = step.partition("\n")
        args = shlex.split(line, comments=True)
        assert args[0] == "jackpot", line
        done = subprocess.run([sys.executable, "-m", "jackpot", *args[1:]], cwd=tmp_path,
                              env={**os.environ, "JACKPOT_DB": str(db)},
                              capture_output=True, text=True, timeout=60, check=False)
        refused = answer.startswith("  refused: ")
        assert done.returncode == (2 if refused else 0), (line, done.stderr)
        if refused:  # the same refusal (amounts and versions have moved), not a usage error
            said = re.sub(r"[0-9.]+", "N", done.stderr.split(": ", 2)[2].strip())
            assert said in re.sub(r"[0-9.]+", "N", answer), (line, done.stderr)


@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py", "casino_floor.py",
                                  "operator_console.py"])
def test_an_example_refuses_an_existing_database(tmp_path: Path, name: str) -> None:
    """Their op_ids and checks are a fresh run's: a second run on the same file would fail."""
    db = tmp_path / "kept.db"
    db.write_bytes(b"")
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--db", str(db)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.endswith(f"error: --db {db}: the file exists; give a new path\n")
    assert done.stdout == ""
    assert db.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.db"]


@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py"])
def test_an_example_whose_audit_fails_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              name: str) -> None:
    """It printed 'audit: FAILED' and exited 0, so a script running it saw a success."""
    example = _load(name, monkeypatch)
    failed = VerifyReport(ok=False, problems=["level 'minor': forged"], levels=3, ledger_rows=0)
    monkeypatch.setattr(JackpotEngine, "verify", lambda _self: failed)
    # (The asyncio engine's verify() runs `_verify`, which a cancelled caller's turn skips.)
    monkeypatch.setattr(JackpotEngine, "_verify", lambda _self, _wanted: failed)
    monkeypatch.setattr(sys, "argv", [name, "--quick", "--db", str(tmp_path / "x.db")])
    with pytest.raises(SystemExit) as exited:
        example.main()
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert out.endswith("audit: FAILED - 3 levels, 0 ledger rows reconciled to 0.000001\n"
                        "  problem: level 'minor': forged\n")


def _counts_played(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, ...]:
    """Run the example's main() with `args`, its play replaced by one noting the counts."""
    example = _load(name, monkeypatch)
    played: list[tuple[int, ...]] = []

    def note(*counts: int) -> bool:
        played.append(tuple(c for c in counts if isinstance(c, int)))
        return True

    async def note_async(_path: Path, *counts: int, **_kw: bool) -> bool:
        return note(*counts)

    if name == "asyncio_game_server.py":
        monkeypatch.setattr(example, "main_async", note_async)
    elif name == "operator_console.py":
        monkeypatch.setattr(example, "session", lambda _engine, bets: note(bets))
    else:
        monkeypatch.setattr(example, "run", lambda _path, *counts, **_kw: note(*counts))
    monkeypatch.setattr(sys, "argv", [name, *args])
    with pytest.raises(SystemExit) as exited:
        example.main()
    assert exited.value.code == 0
    assert len(played) == 1
    return played[0]


@pytest.mark.parametrize(("name", "args", "counts"), [
    ("quickstart.py", [], (500,)),
    ("quickstart.py", ["--quick"], (50,)),
    ("quickstart.py", ["--quick", "--bets", "1000"], (1000,)),  # played 50
    ("asyncio_game_server.py", ["--quick"], (20, 10)),
    ("asyncio_game_server.py", ["--quick", "--players", "3"], (3, 10)),  # had 20 players
    ("asyncio_game_server.py", ["--spins", "4"], (200, 4)),
    ("casino_floor.py", ["--quick", "--spins", "7"], (2, 7)),  # played 40 spins
    ("casino_floor.py", ["--machines", "1"], (1, 300)),
    ("operator_console.py", ["--quick"], (40,)),
    ("operator_console.py", ["--bets", "12", "--quick"], (12,)),  # placed 40
])
def test_a_count_given_with_quick_is_played_as_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, args: list[str],
        counts: tuple[int, ...]) -> None:
    """--quick replaced counts given with it, without a word: `--quick --bets 1000` played 50."""
    monkeypatch.chdir(tmp_path)
    assert _counts_played(name, args, monkeypatch) == counts


@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py", "casino_floor.py",
                                  "operator_console.py"])
def test_an_examples_help_says_a_count_wins_over_quick(tmp_path: Path, name: str) -> None:
    out = " ".join(run_example(name, "--help", cwd=tmp_path).split())
    assert re.search(r"--quick a short run: .*, unless --\w+ (or --\w+ )?is given", out), out
    assert "with --quick)" in out


@pytest.mark.parametrize(("name", "args", "said"), [
    ("quickstart.py", ["--bets", "1"], "played 1 bet; replaying spin-0"),
    ("operator_console.py", ["--bets", "1"], "players placed 1 bet on "),
    ("asyncio_game_server.py", ["--players", "1", "--spins", "1"], "; 1 player x 1 spin\n"),
    ("asyncio_game_server.py", ["--players", "1", "--spins", "1"], "\n1 spin in "),
])
def test_one_of_a_thing_is_not_said_in_the_plural(tmp_path: Path, name: str, args: list[str],
                                                  said: str) -> None:
    """'played 1 bets', '1 players x 1 spins'."""
    assert said in run_example(name, *args, cwd=tmp_path)


def test_the_operator_consoles_help_says_its_bets_are_placed_twice(tmp_path: Path) -> None:
    """`--bets 400` placed 800 bets: 400 before the operator's session and 400 after it,
    where the help said "bets the players place (default: 400 ...)"."""
    out = run_example("operator_console.py", "--bets", "2", cwd=tmp_path)
    assert [line for line in out.splitlines() if "players placed" in line] == [
        "[floor] players placed 2 bets on minor, major, summer-promo",
        "[floor] players placed 2 bets on minor, major"]
    help_text = " ".join(run_example("operator_console.py", "--help", cwd=tmp_path).split())
    assert ("--bets BETS bets the players place before the operator's session, and as many "
            "again after it (default: 400, or 40 with --quick)") in help_text
    assert "--quick a short run: 40 bets each time, unless --bets is given" in help_text


@pytest.mark.parametrize(("name", "option"), [
    ("quickstart.py", "--db"), ("asyncio_game_server.py", "--db"), ("casino_floor.py", "--db"),
    ("operator_console.py", "--db"), ("casino_floor.py", "--chart")])
def test_an_example_refuses_a_path_in_a_missing_directory(tmp_path: Path, name: str,
                                                          option: str) -> None:
    """--db was a StorageError traceback (--chart a matplotlib one, after the whole run)."""
    path = tmp_path / "no-dir" / "x"
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", option, str(path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.endswith(
        f"error: {option} {path}: no directory {path.parent}; create it first\n")
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py", "casino_floor.py",
                                  "operator_console.py"])
def test_an_examples_help_keeps_its_docstrings_lines(tmp_path: Path, name: str) -> None:
    """The quickstart's --help ran its docstring's paragraphs and usage line together."""
    out = run_example(name, "--help", cwd=tmp_path)
    assert f"\nRun: python examples/{name} [" in out
    assert "\n--db keeps the database in a new file" in out


@pytest.mark.parametrize(("name", "option"), [
    ("quickstart.py", "--bets"), ("asyncio_game_server.py", "--players"),
    ("casino_floor.py", "--machines"), ("operator_console.py", "--bets")])
def test_a_count_that_is_not_a_number_is_named_as_such(tmp_path: Path, name: str,
                                                       option: str) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), option, "ten"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith(f"error: argument {option}: must be a whole number, got 'ten'\n")


@pytest.mark.parametrize(("name", "args"), [
    ("quickstart.py", ("--bets", "0")),  # was an IndexError traceback
    ("asyncio_game_server.py", ("--spins", "0")),  # was a KeyError traceback
    ("casino_floor.py", ("--machines", "0")),  # was a ValueError traceback
    ("casino_floor.py", ("--spins", "-2")),
    ("operator_console.py", ("--bets", "0")),  # was a session with no bets
])
def test_a_count_below_one_is_a_usage_error(tmp_path: Path, name: str,
                                            args: tuple[str, ...]) -> None:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # refused before anything was opened


_HELD_AFTER_ITS_FIRST_LINE = r"""
import os, runpy, sys

class Held:
    # stdout as it is, but held once its first line is out until the test has
    # read that line and closed its end of the pipe: the script writes the rest
    # to a pipe with no reader, as one piped into `head -1` does.
    def __init__(self, out, gate):
        self._out, self._gate, self._held = out, gate, False

    def write(self, text):
        n = self._out.write(text)
        if not self._held and "\n" in text:
            self._held = True
            self._out.flush()
            os.read(self._gate, 1)
        return n

    def __getattr__(self, name):
        return getattr(self._out, name)

sys.stdout = Held(sys.stdout, int(sys.argv[1]))
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(sys.argv[0])  # (as `python examples/NAME.py` sets it)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _held_run(name: str, tmp_path: Path, env: dict[str, str],
              after_first_line: Callable[[subprocess.Popen[str]], None]) -> tuple[str, int, str]:
    """Run `examples/NAME --quick` held after its first line; return (first line, status, stderr).

    `after_first_line` acts on the script while it is held in that line's
    write (closes the pipe, sends a signal); the script then goes on.
    """
    held = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            + _HELD_AFTER_ITS_FIRST_LINE)  # (Ctrl-C's handler even if this run ignores SIGINT)
    gate, release = os.pipe()
    try:
        with subprocess.Popen([sys.executable, "-c", held, str(gate), str(EXAMPLES / name),
                               "--quick"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, pass_fds=(gate,)) as script:
            assert script.stdout is not None
            try:
                first = script.stdout.readline()
                after_first_line(script)
                os.write(release, b"x")  # (asyncio.run's Ctrl-C only cancels: let it go on)
                _, err = script.communicate(timeout=120)
            finally:
                if script.poll() is None:  # (failed or timed out: do not wait on it at exit)
                    script.kill()
    finally:
        os.close(gate)
        os.close(release)
    return first, script.returncode, err


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py",
                                  "operator_console.py", "casino_floor.py"])
def test_an_example_whose_reader_leaves_early_stops_quietly(tmp_path: Path, name: str,
                                                            buffered: bool) -> None:
    """`python examples/NAME.py | head -1`: exit status 141 (SIGPIPE's), no traceback.

    Before: a BrokenPipeError traceback (status 1), or, with stdout buffered,
    "Exception ignored ... BrokenPipeError" at exit (status 120); the game
    server's print of a jackpot in its request handler was taken for the
    player hanging up, and the run ended in that player's JSONDecodeError.
    The script runs as it is, in its short mode; only its stdout is held
    after the first line until the test has closed the pipe (no sleeps, no
    race): the script writes the rest to a pipe no one reads.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"

    def leave(script: subprocess.Popen[str]) -> None:
        assert script.stdout is not None
        script.stdout.close()

    first, status, err = _held_run(name, tmp_path, env, leave)
    assert first.strip()  # it printed, and the reader left
    assert (status, err) == (141, "")


@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py",
                                  "operator_console.py", "casino_floor.py"])
def test_an_example_interrupted_by_ctrl_c_says_so_in_one_line(tmp_path: Path, name: str) -> None:
    """Ctrl-C during a run: status 130 (SIGINT's) and one line on stderr, no traceback.

    Before: a KeyboardInterrupt traceback through the engine's or asyncio's
    frames. The script is held in its first line's write (the harness of the
    test above) until SIGINT is sent, so the interrupt lands mid-run every time
    (under asyncio.run, its handler cancels the main task, which then ends).
    """
    first, status, err = _held_run(name, tmp_path, dict(os.environ),
                                   lambda script: script.send_signal(signal.SIGINT))
    assert first.strip()
    assert (status, err) == (
        130, "interrupted (Ctrl-C): each operation sent was committed whole or not at all\n")


def _refused_db(case: str, tmp_path: Path) -> Path:
    """A --db path that passes the scripts' own checks and that the engine refuses, even as root."""
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")  # 255 on the usual file systems
    if case == "name too long":  # (Path.exists raised ENAMETOOLONG on it before Python 3.13)
        return tmp_path / ("n" * (name_max + 42) + ".db")
    if case == "no room for -journal":  # fits, but SQLite's name-journal beside it would not
        return tmp_path / ("n" * (name_max - 8) + ".db")
    return Path("/proc/x.db")  # a directory no one may create files in, root neither


@pytest.mark.parametrize("case", ["name too long", "no room for -journal", "unwritable directory"])
@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py", "casino_floor.py",
                                  "operator_console.py"])
def test_a_db_the_engine_refuses_to_open_is_one_line_and_status_2(tmp_path: Path, name: str,
                                                                 case: str) -> None:
    """The scripts check --db for an existing file and a missing directory, but what
    the engine itself then refused to open ended in a StorageError traceback with
    status 1 (a 300-byte name: an OSError traceback from the existence check itself).
    A bad argument: one line, `<prog>: error: --db PATH: <the engine's message>`, and 2."""
    db = _refused_db(case, tmp_path)
    with pytest.raises(StorageError) as refused:  # the engine's own refusal, and its words
        JackpotEngine.open(db)
    assert list(tmp_path.iterdir()) == []
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--db", str(db)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr
    assert (done.returncode, done.stderr) == (2, f"{name}: error: --db {db}: {refused.value}\n")
    assert "audit" not in done.stdout
    assert list(tmp_path.iterdir()) == []  # no file, no chart, no -journal left behind


@pytest.mark.parametrize("db", [":memory:", "file:kept.db", os.fsdecode(b"caf\xe9.db")],
                         ids=["memory", "uri", "not-utf-8"])
@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py", "casino_floor.py",
                                  "operator_console.py"])
def test_a_db_name_the_engine_refuses_is_one_line_and_status_2(tmp_path: Path, name: str,
                                                              db: str) -> None:
    """A --db the engine refuses by its name (SQLite's in-memory or URI syntax, a name
    SQLite cannot take in UTF-8) is refused with a ValidationError, not a StorageError:
    the same bad argument. Before: a ValidationError traceback and status 1."""
    with pytest.raises(ValidationError) as refused:  # the engine's own refusal, and its words
        JackpotEngine.open(tmp_path / db if db.startswith("caf") else db)
    assert list(tmp_path.iterdir()) == []
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--db", db],
                          cwd=tmp_path, capture_output=True, timeout=120, check=False)
    err = done.stderr.decode("utf-8", "backslashreplace")
    assert "Traceback" not in err
    assert done.returncode == 2, err
    shown = db.encode("utf-8", "backslashreplace").decode()  # (how stderr writes it)
    said = str(refused.value).replace(repr(str(tmp_path / db)), repr(db))
    assert err == f"{name}: error: --db {shown}: {said}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("when", ["open without --db", "after the open of --db"])
@pytest.mark.parametrize("name", ["quickstart.py", "asyncio_game_server.py", "casino_floor.py",
                                  "operator_console.py"])
def test_only_the_open_of_a_given_db_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, when: str) -> None:
    """A temporary file the engine refuses, or a failure once the engine is open, is not
    a bad --db: the StorageError goes on as it is (a traceback, status 1), not as status 2."""
    example = _load(name, monkeypatch)
    failed = StorageError("disk I/O error")

    def refuse(*_args: object, **_kwargs: object) -> JackpotEngine:
        raise failed

    async def refuse_async(*_args: object, **_kwargs: object) -> AsyncJackpotEngine:
        raise failed

    def fail_on_enter(engine: JackpotEngine) -> JackpotEngine:
        engine.close()
        raise failed

    async def fail_on_aenter(engine: AsyncJackpotEngine) -> AsyncJackpotEngine:
        await engine.close()
        raise failed

    args = [name, "--quick"]
    if when == "open without --db":
        monkeypatch.setattr(JackpotEngine, "open", refuse)
        monkeypatch.setattr(AsyncJackpotEngine, "open", refuse_async)
    else:
        args += ["--db", str(tmp_path / "kept.db")]
        monkeypatch.setattr(JackpotEngine, "__enter__", fail_on_enter)
        monkeypatch.setattr(AsyncJackpotEngine, "__aenter__", fail_on_aenter)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(StorageError) as raised:
        example.main()
    assert raised.value is failed
