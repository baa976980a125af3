"""Crash safety on PostgreSQL: SIGKILL engines mid-run, and cut their server connections.

Workers (tests/faults/_pg_crash_worker.py, each its own process and engine on
one PostgreSQL database, standing in for game servers on several hosts) run
contributions to one, two and three levels and whole-pool wins with explicit
op_ids, and log each op_id with its result (fsync) only after the call
returned. The parent decides when to strike by reading the workers'
acknowledgements from their pipes, never by sleeping:

- SIGKILL: the parent kills one worker when a worker (itself or another one)
  acknowledges its n-th operation, so the kill lands anywhere in the victim's
  operation, with the others still writing. The server rolls back whatever
  the dead client left open. The victim restarts with the operation that was
  in flight (applied before the kill, now replayed, or not at all).
- pg_terminate_backend: the parent terminates every server process of the
  workers (PostgreSQL backends dying mid-transaction, or idle in the pool).
  A call that loses its connection must raise a JackpotError that says so (or
  be retried by the engine); the worker sends it again with the same op_id.

After every strike a snapshot of the ledger must show every acknowledged op_id
with one row per level it touched and no op_id half applied. At the end a
fresh engine must replay every acknowledged op_id with its original result,
the ledger must hold exactly the acknowledged op_ids, each committed version
of a level must belong to exactly one result, the money must add up to the
smallest unit (carried fractions included), and `verify()` must pass.

Three small tests make the moments that matter certain instead of likely: the
connection dies just after the server finished a COMMIT (the call must report
the operation applied, not failed), just before it (StorageError, nothing
changed, the retry applies it), and while idle in the pool (replaced unseen).

JACKPOT_SLOW=1 runs a long soak; the default run strikes a few times. The
server comes from JACKPOT_TEST_PG_URL (see tests/backends/pg.py: without it
this module fails in CI and is skipped elsewhere).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from jackpot import GroupConfig, JackpotEngine, StorageError
from jackpot.money import RATE_SCALE, SCALE

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> ModuleType:
    """Load a helper module by path (tests/faults is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pg = _load("_jackpot_test_pg", HERE.parent / "backends" / "pg.py")
plan = _load("_pg_crash_worker", HERE / "_pg_crash_worker.py")

PG_URL = pg.require_pg_url()
SLOW = os.environ.get("JACKPOT_SLOW") == "1"
WORKERS = 3
KILLS = 60 if SLOW else 6
TERMINATIONS, TERMINATION_OPS = (40, 500) if SLOW else (5, 60)  # strikes; ops per worker
DEADLINE_S = 900 if SLOW else 120
# Rates with 7 decimals on bets with 2: most contributions leave a fraction of
# a unit to carry, so "to the smallest unit" is really tested.
GROUPS = (
    GroupConfig("major", Decimal(1000), Decimal("0.0012345")),
    GroupConfig("mega", Decimal(10000), Decimal("0.0003217")),
    GroupConfig("minor", Decimal(100), Decimal("0.0051234")),
)
SEEDS = {g.name: g.seed for g in GROUPS}
RATES = {g.name: int(g.contribution_rate * RATE_SCALE) for g in GROUPS}
# What a call that lost its server connection may raise (a StorageError), or
# what the engine's own retries may end in when the strikes keep coming.
EXPECTED_ERRORS = {"StorageError", "ConcurrencyViolationError", "LockTimeoutError"}


@pytest.fixture
def pg_target() -> Iterator[str]:
    with pg.fresh_schema(PG_URL) as url:
        # A name of our own: pg_terminate_backend must hit the workers only.
        yield f"{url}&application_name=jackpot-crash-{uuid.uuid4().hex[:12]}"


def op_of(oid: str) -> tuple[int, int]:
    """Return (worker, index) of a plan op_id."""
    worker, index = oid[1:].split("-")
    return int(worker), int(index)


def rows_of_request(req: dict[str, Any]) -> int:
    """The ledger rows a request writes: one per level it touches."""
    return 1 if req["kind"] == "win" else len(req["groups"])


def rows_of(oid: str) -> int:
    """The ledger rows a plan op_id writes."""
    return rows_of_request(plan.request(*op_of(oid)))


def units(d: str | Decimal) -> int:
    exact = Decimal(d) * SCALE
    assert exact == exact.to_integral_value(), d
    return int(exact)


# -- the workers ----------------------------------------------------------------------


class Worker:
    """One worker process: started, counted by its acknowledgements, killed, restarted."""

    def __init__(self, k: int, url: str, tmp_path: Path) -> None:
        self.k, self.url = k, url
        self.log, self.err = tmp_path / f"acks-{k}.jsonl", tmp_path / f"worker-{k}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen = 0  # acknowledgements read from the pipe since the last start

    def start(self, begin: int, stop: int = -1) -> None:
        with self.err.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "_pg_crash_worker.py"), self.url, str(self.log),
                 str(self.k), str(begin), str(stop)],
                stdout=subprocess.PIPE, stderr=err, bufsize=0)
        self.seen = 0

    def kill(self, *, check: bool = True) -> None:
        """SIGKILL the worker and reap it; `check`: it must have been running until then."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if check:
            assert self.proc.returncode == -signal.SIGKILL, self.stderr()
        self.reap()

    def reap(self) -> None:
        assert self.proc is not None
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def stderr(self) -> str:
        return self.err.read_text()[-3000:] if self.err.exists() else ""

    def lines(self) -> list[dict[str, Any]]:
        """The complete lines of the log (cutting one a kill left half written)."""
        data = self.log.read_bytes() if self.log.exists() else b""
        complete = data[:data.rfind(b"\n") + 1]
        if complete != data and self.proc is None:
            self.log.write_bytes(complete)  # the restarted worker appends after it
        return [json.loads(line) for line in complete.splitlines()]

    def acked(self) -> list[dict[str, Any]]:
        """The acknowledged operations, in order: op_ids 0, 1, 2... of this worker."""
        acks = [line for line in self.lines() if "result" in line]
        assert [a["op_id"] for a in acks] == [plan.op_id(self.k, i) for i in range(len(acks))]
        return acks


def pump(workers: list[Worker], until: Callable[[], bool], deadline: float) -> None:
    """Count acknowledgements from the workers' pipes until `until()` (or all have ended)."""
    with selectors.DefaultSelector() as sel:
        for w in workers:
            if w.proc is not None and w.proc.stdout is not None:
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        while not until():
            assert sel.get_map(), "every worker ended before the awaited acknowledgement"
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no acknowledgement in time: " + " / ".join(
                f"worker {w.k}: {w.seen} acks, stderr {w.stderr()[-1500:]!r}" for w in workers)
            for key, _ in sel.select(remaining):
                w = key.data
                chunk = os.read(key.fd, 4096)
                if not chunk:  # the worker ended: only a finished plan may end it
                    sel.unregister(key.fileobj)
                    assert w.proc is not None
                    assert w.proc.wait(30) == 0, f"worker {w.k} died: {w.stderr()}"
                    continue
                w.seen += chunk.count(b"\n")


# -- checks -----------------------------------------------------------------------------


def ledger_snapshot(url: str) -> tuple[Counter[str], dict[str, Any]]:
    """Rows per op_id and the level rows, read in one snapshot on a connection of our own."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        rows = Counter(r[0] for r in conn.execute(
            "SELECT op_id FROM ledger WHERE kind <> 'create'"))
        levels = {r[0]: r[1:] for r in conn.execute("SELECT name, amount, version FROM levels")}
    return rows, levels


def check_snapshot(url: str, workers: list[Worker], where: str) -> None:
    """Every acknowledged op_id is there whole; no op_id is half applied; none is unplanned.

    The logs are read before the snapshot is taken, so whatever they
    acknowledge was committed before it.
    """
    acked = {w.k: [a["op_id"] for a in w.acked()] for w in workers}
    rows, _ = ledger_snapshot(url)
    for oid, n in rows.items():
        assert n == rows_of(oid), f"{where}: {oid} half applied ({n} of {rows_of(oid)} rows)"
    for w in workers:
        for oid in acked[w.k]:
            assert rows[oid] == rows_of(oid), f"{where}: acknowledged {oid} has {rows[oid]} rows"
        if w.proc is None:  # stopped: nothing beyond the one operation in flight
            beyond = [o for o in rows if op_of(o)[0] == w.k and op_of(o)[1] > len(acked[w.k])]
            assert beyond == [], f"{where}: worker {w.k} never sent {beyond}"


def check_books(url: str, acked: dict[str, dict[str, Any]]) -> None:
    """The ledger holds exactly the acknowledged op_ids; the money adds up to the unit."""
    expected = {name: units(seed) for name, seed in SEEDS.items()}
    exact = dict.fromkeys(expected, 0)  # sum of bet x rate, in units x RATE_SCALE
    granted: dict[tuple[str, int], str] = {}
    for oid, record in acked.items():
        req, r = plan.request(*op_of(oid)), record["result"]
        assert r["op_id"] == oid
        if req["kind"] == "win":
            assert (r["group"], r["reset"], Decimal(r["balance"])) == (
                req["group"], True, SEEDS[req["group"]]), r
            expected[r["group"]] += units(r["balance"]) - units(r["amount"])
            assert granted.setdefault((r["group"], r["version"]), oid) == oid
        else:
            assert sorted(r["contributions"]) == req["groups"], r
            assert r["hits"] == []
            for level, added in r["contributions"].items():
                expected[level] += units(added)
                exact[level] += units(req["bet"]) * RATES[level]
                assert granted.setdefault((level, r["versions"][level]), oid) == oid

    levels, ledger, totals = pg.read_books(url)
    assert Counter(r.op_id for r in ledger if r.kind != "create") == {
        oid: rows_of(oid) for oid in acked}
    for r in ledger:
        if r.kind != "create":
            assert granted[(r.level, r.version_after)] == r.op_id, r
    assert {n: s.amount for n, s in levels.items()} == expected
    for name, s in levels.items():
        assert totals[name].meters["contributed"] * RATE_SCALE + s.carry == exact[name], name
        assert s.version == 1 + sum(1 for level, _ in granted if level == name), name

    # A fresh engine replays every acknowledged op_id with its first result
    # and changes nothing doing so.
    before = ledger_snapshot(url)
    with JackpotEngine.open(url) as engine:
        for oid, record in sorted(acked.items()):
            again = plan.send(engine, oid, plan.request(*op_of(oid)))
            assert (again.replayed, again.to_record()) == (True, record["result"]), oid
        report = engine.verify()
    assert (report.ok, report.problems) == (True, [])
    assert report.ledger_rows == len(GROUPS) + sum(map(rows_of, acked))
    assert ledger_snapshot(url) == before


# -- the tests ------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_engines_on_postgres_loses_no_acknowledged_operation(
        pg_target: str, tmp_path: Path) -> None:
    with JackpotEngine.open(pg_target, GROUPS):
        pass
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    workers = [Worker(k, pg_target, tmp_path) for k in range(WORKERS)]
    deadline = time.monotonic() + DEADLINE_S
    try:
        for w in workers:
            w.start(0)
        for kill in range(KILLS):
            victim = workers[rng.randrange(WORKERS)]
            # Mostly another worker's acknowledgement: the kill then lands at
            # an unrelated moment of the victim's operation.
            witness = victim if rng.random() < 0.25 else rng.choice(
                [w for w in workers if w is not victim])
            wanted = witness.seen + rng.randint(1, 8)
            where = f"seed {seed}, kill {kill} of worker {victim.k} at ack {wanted} of {witness.k}"
            pump(workers, lambda w=witness, n=wanted: w.seen >= n, deadline)
            before = len(victim.acked())
            victim.kill()
            acked = len(victim.acked())
            assert acked >= before, where
            check_snapshot(pg_target, workers, where)
            victim.start(acked)
        for w in workers:  # the last kills: wherever each one is
            w.kill()
    finally:
        for w in workers:
            if w.proc is not None:
                w.kill(check=False)  # a failure above says why; this must not mask it
    assert sum(len(w.acked()) for w in workers) >= KILLS, "the workers hardly ran"
    check_snapshot(pg_target, workers, f"seed {seed}, all killed")

    # The operations in flight at the last kills are sent once more: applied
    # now or replayed, each exactly once; then every applied op is acknowledged.
    acked = {a["op_id"]: a for w in workers for a in w.acked()}
    with JackpotEngine.open(pg_target) as engine:
        for w in workers:
            oid = plan.op_id(w.k, len(w.acked()))
            result = plan.send(engine, oid, plan.request(w.k, len(w.acked())))
            acked[oid] = {"op_id": oid, "result": result.to_record()}
    check_books(pg_target, acked)


def terminate_backends(url: str) -> int:
    """Terminate every server process of the workers (by application_name); return how many."""
    app = url.rsplit("application_name=", 1)[1]
    with psycopg.connect(url, autocommit=True, application_name="jackpot-crash-test") as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()", (app,)).fetchall()
    return sum(1 for (ok,) in rows if ok)


@pytest.mark.slow
def test_terminated_server_connections_half_apply_nothing(
        pg_target: str, tmp_path: Path) -> None:
    with JackpotEngine.open(pg_target, GROUPS):
        pass
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    total = WORKERS * TERMINATION_OPS
    strikes = sorted(rng.sample(range(5, total * 9 // 10), TERMINATIONS))
    workers = [Worker(k, pg_target, tmp_path) for k in range(WORKERS)]
    deadline = time.monotonic() + DEADLINE_S
    terminated = []
    try:
        for w in workers:
            w.start(0, TERMINATION_OPS)
        for n, at in enumerate(strikes):
            pump(workers, lambda at=at: sum(w.seen for w in workers) >= at, deadline)
            terminated.append(terminate_backends(pg_target))
            check_snapshot(pg_target, workers, f"seed {seed}, after termination {n}")
        pump(workers, lambda: all(w.proc is not None and w.proc.poll() is not None
                                  for w in workers), deadline)
    finally:
        for w in workers:
            if w.proc is not None and w.proc.poll() is None:
                w.kill(check=False)
    for w in workers:
        assert w.proc is not None
        assert w.proc.wait(30) == 0, f"worker {w.k}: {w.stderr()}"
        w.reap()
    assert sum(terminated) > 0, terminated

    # Every operation of every plan was acknowledged exactly once, in order.
    acks = {w.k: w.acked() for w in workers}
    assert all(len(a) == TERMINATION_OPS for a in acks.values()), seed
    # The calls whose connection died mid-transaction (how many depends on
    # where the strikes landed) said so, and that nothing was changed.
    errors = [line for w in workers for line in w.lines() if "error" in line]
    for e in errors:
        assert e["error"] in EXPECTED_ERRORS, e
        if e["error"] == "StorageError":
            assert "connection" in e["message"], e
            assert "nothing was changed" in e["message"], e
    # A call that failed was not applied: its retry applies it (a replay would
    # mean the failed call had committed after all, and was reported failed).
    failed = {e["op_id"] for e in errors}
    replayed = sorted(a["op_id"] for w in workers for a in acks[w.k] if a["replayed"])
    assert replayed == [], (seed, replayed, [e for e in errors if e["op_id"] in replayed])
    assert failed <= {a["op_id"] for w in workers for a in acks[w.k]}
    check_books(pg_target, {a["op_id"]: a for w in workers for a in acks[w.k]})


# -- the connection dies right before or right after a COMMIT, deterministically ------


@pytest.fixture
def die_at_commit(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Arm: the next COMMIT any connection sends is followed (or preceded) by its own end.

    The session terminates itself in the same pipeline, so the server's FATAL
    arrives just after the COMMIT's answer ("after": the commit is durable,
    its answer is lost with the connection) or just before the COMMIT
    ("before": the server rolls the transaction back).
    """
    armed: list[str] = []
    real = psycopg.Connection.execute
    suicide = "SELECT pg_terminate_backend(pg_backend_pid())"

    def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if query != "COMMIT" or not armed:
            return real(self, query, *args, **kwargs)
        when = armed.pop()
        if when == "before":
            real(self, suicide)
        cur = real(self, query, *args, **kwargs)
        if when == "after":
            real(self, suicide)
        return cur

    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    return armed.append


@pytest.mark.parametrize("kind", ["contribute", "win"])
def test_a_commit_whose_answer_is_lost_is_reported_as_applied(
        pg_target: str, die_at_commit: Callable[[str], None], kind: str) -> None:
    req = plan.request(0, 6 if kind == "win" else 2)
    assert req["kind"] == kind
    with JackpotEngine.open(pg_target, GROUPS) as engine:
        plan.send(engine, "warm-up", plan.request(0, 0))
        die_at_commit("after")
        result = plan.send(engine, "x-1", req)
        assert result.replayed is False
        # The engine goes on from the committed state, on a new connection.
        after = plan.send(engine, "x-2", plan.request(0, 2))
        assert after.replayed is False
    rows, _ = ledger_snapshot(pg_target)
    assert rows == {"warm-up": 1, "x-1": rows_of_request(req), "x-2": 3}
    with JackpotEngine.open(pg_target) as engine:
        again = plan.send(engine, "x-1", req)
        assert (again.replayed, again.to_record()) == (True, result.to_record())
        assert engine.verify().ok


def test_a_connection_lost_before_commit_changes_nothing(
        pg_target: str, die_at_commit: Callable[[str], None]) -> None:
    req = plan.request(0, 2)  # all three levels
    with JackpotEngine.open(pg_target, GROUPS) as engine:
        plan.send(engine, "warm-up", plan.request(0, 0))
        before = ledger_snapshot(pg_target)
        die_at_commit("before")
        with pytest.raises(StorageError, match=r"lost .*nothing was changed: retry"):
            plan.send(engine, "x-1", req)
        assert ledger_snapshot(pg_target) == before
        retried = plan.send(engine, "x-1", req)  # applied now, not a replay
        assert retried.replayed is False
    rows, _ = ledger_snapshot(pg_target)
    assert rows == {"warm-up": 1, "x-1": 3}
    with JackpotEngine.open(pg_target) as engine:
        assert engine.verify().ok


def test_pooled_connections_the_server_closed_are_replaced_unseen(pg_target: str) -> None:
    with JackpotEngine.open(pg_target, GROUPS) as engine:
        for i in range(6):  # several actors: several pooled connections
            plan.send(engine, f"a-{i}", plan.request(0, i))
        assert terminate_backends(pg_target) >= 1
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            app = pg_target.rsplit("application_name=", 1)[1]
            deadline = time.monotonic() + 30
            while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                               (app,)).fetchone() != (0,):
                assert time.monotonic() < deadline, "terminated sessions linger"
                time.sleep(0.01)
        # Every pooled connection is dead now; the next calls never see it.
        results = [plan.send(engine, f"b-{i}", plan.request(0, i)) for i in range(7)]
        assert [r.replayed for r in results] == [False] * 7
        assert engine.verify().ok
