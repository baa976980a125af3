"""An asyncio game server: players bet over local TCP, the jackpots run in-process.

The server (plain asyncio streams, on 127.0.0.1 and a port the OS picks)
speaks JSON lines. A player sends {"op": "spin", "player": ..., "round": ...,
"stake": "1.00"}; the server contributes the bet to the jackpots with
`AsyncJackpotEngine`, lets its game logic decide whether the spin won a
jackpot, and replies with what the bet added, any jackpot paid, and the
meters. The round id makes the op_id, so a player who resends a spin after a
lost reply gets the same answer and is never charged twice. The player picks
the round id, so the round's outcome is drawn from it with a secret only the
server holds: a player who knows this code still cannot pick rounds that win.
A request that is not what the server speaks gets a refusal, not a dropped
connection.

Levels: "mystery" is a must-hit-by jackpot (it pays when the pool reaches a
hidden trigger, at the latest at 8.00); "minor" and "major" pay when the game
says so (here: by chance, 1 in 250 and 1 in 2,500 spins).

Run: python examples/asyncio_game_server.py [--players N] [--spins N] [--quick] [--db PATH]

--db keeps the database in a new file (an existing one is refused: the
round ids, and so the op_ids, are the same on every run, and the check of
what players were paid against the meters counts this run only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import secrets
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from _script import opening_db, run_script  # (examples/_script.py: how every example ends)

from jackpot import AsyncJackpotEngine, Contribution, GroupConfig, JackpotError, Win

LEVELS = [
    GroupConfig("mystery", seed=Decimal(5), contribution_rate=Decimal("0.02"),
                must_hit_by=Decimal(8)),
    GroupConfig("minor", seed=Decimal(100), contribution_rate=Decimal("0.01"),
                reserve_rate=Decimal("0.002")),
    GroupConfig("major", seed=Decimal(1000), contribution_rate=Decimal("0.004"),
                min_bet=Decimal("0.50")),
]
WIN_ODDS = {"minor": 250, "major": 2500}  # 1 in N spins pays that level
STAKES = ["0.20", "0.50", "1.00", "2.00", "5.00"]
_SHOWN_WINS = 12
# Players who may be connecting at once: the listening socket's backlog. The
# kernel queues only that many connections the server has not accepted yet and
# drops the rest; a dropped player's spin then waits on TCP's retries (a minute
# or more) and fails with ConnectionResetError: with `--players 3000` the run
# stalled for 100 s, then ended in that traceback. So players come in as the
# server takes them, as players on a real floor arrive over time.
ARRIVING = 100


class GameServer:
    """Serves spins for any number of connected players."""

    def __init__(self, engine: AsyncJackpotEngine) -> None:
        self.engine = engine
        self.spins = 0
        self.paid: list[Win] = []
        # A real server keeps this secret the same across restarts (or stores
        # each round's outcome before it answers), so that a spin resent after a
        # restart gets the outcome it had.
        self._secret = secrets.token_bytes(32)

    def outcome(self, op_id: str) -> random.Random:
        """Return the round's draw: the same for a resent spin, unknowable to the player."""
        return random.Random(hmac.digest(self._secret, op_id.encode(), hashlib.sha256))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one player's requests, one JSON line each, until they hang up."""
        # A player whose connection drops is routine, not a server error: a spin
        # in flight was applied or not, and resending its round tells which.
        try:
            with contextlib.suppress(ConnectionError):
                while line := await self._next_line(reader, writer):
                    try:
                        request = json.loads(line)
                    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
                        request = None
                    reply = await self.answer(request)
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _next_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """Return the player's next line (b"" once they hang up, or sent one too long)."""
        try:
            return await reader.readline()
        except ValueError:  # past the stream's limit (64 KiB): no request is that long
            writer.write(json.dumps({"ok": False, "error": "BadRequest",
                                     "message": "line too long: goodbye"}).encode() + b"\n")
            await writer.drain()
            return b""

    async def answer(self, request: object) -> dict[str, Any]:
        """Turn one request into a reply; a refused request says why."""
        if not isinstance(request, dict):
            return {"ok": False, "error": "BadRequest",
                    "message": 'send one JSON object per line, such as {"op": "pools"}'}
        if request.get("op") == "spin" and (why := _bad_spin(request)):
            return {"ok": False, "error": "BadRequest", "message": why}
        try:
            if request.get("op") == "spin":
                return await self.spin(request["player"], request["round"], request["stake"])
            if request.get("op") == "pools":
                return {"ok": True, "pools": {n: str(p.amount)
                                              for n, p in (await self.engine.pools()).items()}}
        except JackpotError as e:
            return {"ok": False, "error": type(e).__name__, "message": str(e)}
        op = request.get("op")  # (shown only as text: the repr of a deep list recurses)
        shown = repr(op[:40]) if isinstance(op, str) else f"of type {type(op).__name__}"
        return {"ok": False, "error": "BadRequest",
                "message": f'unknown op {shown}: send "spin" or "pools"'}

    async def spin(self, player: str, round_id: str, stake: str) -> dict[str, Any]:
        op_id = f"{player}:{round_id}"
        # The player is recorded as the winner of any mystery hit this bet triggers.
        bet: Contribution = await self.engine.contribute(stake, op_id=op_id, player=player)
        self.spins += not bet.replayed
        wins = list(bet.hits)  # must-hit-by hits come with the bet that triggered them
        # The game's outcome is a function of the round, so a resent spin gets
        # the same outcome, and its win the same op_id: it is paid only once.
        outcome = self.outcome(op_id)
        for level, odds in WIN_ODDS.items():
            if outcome.randrange(odds) == 0:
                wins.append(await self.engine.process_win(level, op_id=f"{op_id}:{level}",
                                                          winner=player))
        # Recorded, and told by `show_pools`: a print here, in the request's path,
        # failed the spin it answers once stdout was gone (`| head`), and was taken
        # for the player hanging up (BrokenPipeError is a ConnectionError).
        self.paid.extend(w for w in wins if not w.replayed)
        return {"ok": True, "replayed": bet.replayed,
                "added": {n: str(v) for n, v in bet.contributions.items()},
                "jackpots": [{"level": w.group, "amount": str(w.amount)} for w in wins]}


def _bad_spin(request: dict[str, Any]) -> str:
    """Say what a spin request lacks ("" if nothing)."""
    missing = [k for k in ("player", "round", "stake") if k not in request]
    if missing:
        return f"a spin needs {', '.join(missing)}"
    # They make its op_id: a list or an object is no id (and one nested deep
    # enough that it parsed fails str() here).
    if not all(isinstance(request[k], (str, int)) for k in ("player", "round")):
        return "a spin's player and round are text or whole numbers"
    return ""


async def play(port: int, player: str, spins: int, seed: int,
               door: asyncio.Semaphore) -> Decimal:
    """One simulated player: connect, spin `spins` times, return the jackpots won.

    The player holds a place at the `door` (see ARRIVING) from connecting
    until its first spin is answered, which proves the server took it.
    """
    rng = random.Random(seed)
    await door.acquire()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except BaseException:
        door.release()
        raise
    won = Decimal(0)

    async def send(request: dict[str, Any]) -> dict[str, Any]:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        reply: dict[str, Any] = json.loads(await reader.readline())
        if not reply["ok"]:
            msg = f"{player}: {request} refused: {reply['message']}"
            raise RuntimeError(msg)
        return reply

    try:
        first: dict[str, Any] = {}
        for n in range(spins):
            request = {"op": "spin", "player": player, "round": f"r{n}",
                       "stake": rng.choice(STAKES)}
            reply = await send(request)
            if not first:
                door.release()  # in: the next player may come
                first = {"request": request, "reply": reply}
            won += sum((Decimal(j["amount"]) for j in reply["jackpots"]), Decimal(0))
            await asyncio.sleep(rng.uniform(0, 0.01))  # the reels spin
        # Say the first reply was lost: the player resends that spin as it was.
        again = await send(first["request"])
        assert again == {**first["reply"], "replayed": True}, "a resent spin must replay"
    finally:
        if not first:  # never answered: leave the door to the others
            door.release()
        writer.close()
        await writer.wait_closed()
    return won


async def show_pools(engine: AsyncJackpotEngine, server: GameServer, started: float,
                     every: float, stop: asyncio.Event) -> None:
    """Print the jackpots paid since the last look and the live meters, until told to stop."""
    told = 0
    while True:
        told = tell_wins(server.paid, told)
        pools = await engine.pools()
        line = " | ".join(f"{n} {p.amount:>9.2f}" for n, p in pools.items())
        print(f"[{time.perf_counter() - started:5.1f}s] spins {server.spins:>6} | {line}")
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def tell_wins(paid: list[Win], told: int) -> int:
    """Print the first `_SHOWN_WINS` jackpots of `paid[told:]`; return how many are told."""
    for w in paid[told:_SHOWN_WINS]:
        kind = "mystery hit" if w.hit else "jackpot win"
        print(f"  {kind}: {w.group} paid {w.amount:.2f} to {w.winner} (op {w.op_id})")
    if told <= _SHOWN_WINS < len(paid):
        print("  ... (more jackpots: see the meters below)")
    return len(paid)


async def main_async(path: Path, players: int, spins: int, *, kept: bool) -> bool:
    """Serve the players' spins, print the meters and the audit; return whether it passed."""
    with opening_db(path, given=kept):  # (the engine refuses a --db: one line, status 2)
        engine = await AsyncJackpotEngine.open(path, LEVELS)
    async with engine:
        server = GameServer(engine)
        tcp = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=ARRIVING)
        port = tcp.sockets[0].getsockname()[1]
        print(f"game server on 127.0.0.1:{port}; {_n(players, 'player')} x {_n(spins, 'spin')}")
        started = time.perf_counter()
        stop = asyncio.Event()
        meters = asyncio.create_task(show_pools(engine, server, started, 0.5, stop))
        door = asyncio.Semaphore(ARRIVING)
        try:
            async with tcp:
                won = await asyncio.gather(*(play(port, f"player-{i}", spins, seed=100 + i,
                                                  door=door) for i in range(players)))
            stop.set()
            await meters
        finally:
            # Cut short (Ctrl-C cancels this task), the meters stop before the
            # engine closes: left running they asked a closed engine for the
            # pools ("Task exception was never retrieved ... EngineClosedError").
            meters.cancel()  # (nothing once it has ended)
            await asyncio.wait([meters])
        seconds = time.perf_counter() - started
        pools = await engine.pools()
        report = await engine.verify()
        health = await engine.health()

        print()
        hits = sum(w.hit for w in server.paid)
        print(f"{_n(server.spins, 'spin')} in {seconds:.1f} s ({server.spins / seconds:.0f}/s); "
              f"{_n(len(server.paid), 'jackpot')} paid, "
              f"{hits} of them {'a mystery hit' if hits == 1 else 'mystery hits'}")
        print(f"{'level':<9}{'amount':>12}{'bets':>8}{'wagered':>12}{'hits':>6}{'wins':>6}"
              f"{'won':>12}{'reserve':>10}")
        for p in pools.values():
            m = p.meters
            print(f"{p.name:<9}{p.amount:>12.2f}{m['bets']:>8}{m['wagered']:>12.2f}"
                  f"{m['hits']:>6}{m['wins']:>6}{m['won']:>12.2f}{p.reserve:>10.2f}")
        paid_total = sum((w.amount for w in server.paid), Decimal(0))
        won_total = sum((p.meters["won"] for p in pools.values()), Decimal(0))
        assert paid_total == sum(won, Decimal(0)) == won_total, "players and meters disagree"
        must_hit_by = pools["mystery"].must_hit_by
        assert must_hit_by is not None
        assert pools["mystery"].amount <= must_hit_by
        print(f"players were paid {paid_total:.2f}, exactly what the meters say was won")
        print(f"health: {health.status}")
        print(f"audit: {'OK' if report.ok else 'FAILED'} - {report.levels} levels, "
              f"{report.ledger_rows} ledger rows reconciled to 0.000001")
        for problem in report.problems:
            print(f"  problem: {problem}")
        return report.ok


def _n(count: int, noun: str) -> str:
    """Return the count and its noun, plural unless one: '1 bet', '2 bets' (not '1 bets')."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _count(text: str) -> int:
    """Argparse type: a whole number of at least 1 (with none there is nothing to show)."""
    try:
        value = int(text)
    except ValueError:  # argparse would say "invalid _count value", naming this function
        msg = f"must be a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--players", type=_count, default=None,
                        help="simulated players (default: 200, or 20 with --quick)")
    parser.add_argument("--spins", type=_count, default=None,
                        help="spins per player (default: 50, or 10 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 20 players x 10 spins, unless --players or "
                             "--spins is given")
    parser.add_argument("--db", type=Path, default=None,
                        help="a new database file to keep (default: a temporary one)")
    args = parser.parse_args()
    # (os.path.exists: Path.exists raises on a name too long for its directory before
    # Python 3.13; the engine's open refuses that name, saying why.)
    if args.db is not None and os.path.exists(args.db):  # noqa: PTH110 - see above
        parser.error(f"--db {args.db}: the file exists; give a new path")
    if args.db is not None and not args.db.parent.is_dir():
        parser.error(f"--db {args.db}: no directory {args.db.parent}; create it first")
    # --quick gives short defaults; a count given as well is played as given
    # (--quick replaced it: `--quick --players 300` had 20 players).
    players = args.players if args.players is not None else 20 if args.quick else 200
    spins = args.spins if args.spins is not None else 10 if args.quick else 50
    with tempfile.TemporaryDirectory() as tmp:
        ok = asyncio.run(main_async(args.db or Path(tmp) / "server.db", players, spins,
                                    kept=args.db is not None))
    raise SystemExit(0 if ok else 1)  # a script that runs it learns the audit's verdict


if __name__ == "__main__":
    run_script(main)
