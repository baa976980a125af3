"""The once-a-while-per-kind rule behind the tracebacks and the pool warnings."""

from __future__ import annotations

import threading

from jackpot._throttle import Passed, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_kind_passes_once_per_period_and_says_how_many_were_held_back() -> None:
    clock = Clock()
    throttle = Throttle(60, kept=10, clock=clock)
    assert throttle.admit("full") == Passed(0, 60)
    assert [throttle.admit("full") for _ in range(5)] == [None] * 5
    assert throttle.admit("io") == Passed(0, 60)  # another kind is not held back
    clock.now += 59.9
    assert throttle.admit("full") is None
    clock.now += 0.1
    assert throttle.admit("full") == Passed(6, 60)
    assert throttle.admit("full") is None
    clock.now += 600
    assert throttle.admit("full") == Passed(1, 600)


def test_kinds_past_their_period_are_forgotten_first_when_full() -> None:
    clock = Clock()
    throttle = Throttle(60, kept=4, clock=clock)
    throttle.admit("old")
    throttle.admit("old")  # held back: a count that is lost when "old" is forgotten
    clock.now += 61
    for kind in ("a", "b", "c"):
        throttle.admit(kind)
    assert throttle.admit("d") == Passed(0, 60)  # full: "old" (no longer held back) goes
    # The fresh ones are still held back: none of them was forgotten to make room.
    assert [throttle.admit(k) for k in ("a", "b", "c", "d")] == [None] * 4
    assert throttle.admit("old") == Passed(0, 60)


def test_when_every_kind_is_fresh_the_stalest_half_goes_and_memory_stays_bounded() -> None:
    clock = Clock()
    throttle = Throttle(60, kept=100, clock=clock)
    for n in range(10_000):
        clock.now += 0.001
        assert throttle.admit(n) == Passed(0, 60)
    assert len(throttle._seen) <= 100
    # The newest kinds are the ones remembered (still held back), the oldest passed again.
    assert throttle.admit(9_999) is None
    assert throttle.admit(0) == Passed(0, 60)


def test_threads_admitting_one_kind_let_exactly_one_through() -> None:
    throttle = Throttle(3600, kept=10)
    start = threading.Barrier(8)
    passed: list[Passed | None] = []
    lock = threading.Lock()

    def run() -> None:
        start.wait()
        for _ in range(1000):
            p = throttle.admit("same")
            with lock:
                passed.append(p)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(passed) == 8000
    assert [p for p in passed if p is not None] == [Passed(0, 3600)]
