"""A bet's fingerprint, written directly, is `fingerprint` of its request: replays depend on it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from jackpot.requests import Requests, bet_fingerprint
from jackpot.service import fingerprint

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", fullmatch=True)


def _request(units: int, names: tuple[str, ...] | None, player: str | None) -> dict[str, Any]:
    """The request as the engine has always fingerprinted it (a dict, canonical JSON)."""
    request: dict[str, Any] = {"kind": "contribute", "bet": units,
                               "groups": "*" if names is None else list(names)}
    if player is not None:
        request["player"] = player
    return request


@given(st.integers(min_value=1, max_value=10**17),
       st.none() | st.lists(NAMES, min_size=1, max_size=5, unique=True).map(
           lambda n: tuple(sorted(n))),
       st.none() | st.text(min_size=1, max_size=256))
def test_a_bet_fingerprint_is_the_request_s(units: int, names: tuple[str, ...] | None,
                                            player: str | None) -> None:
    assert bet_fingerprint(units, names, player) == fingerprint(_request(units, names, player))


def test_known_bets_keep_their_fingerprints() -> None:
    """Fingerprints stored by earlier versions (a replay compares with them)."""
    assert bet_fingerprint(1_000_000, None, None) == fingerprint(
        {"kind": "contribute", "bet": 1_000_000, "groups": "*"})
    assert bet_fingerprint(5, ("major", "minor"), 'Zoë "the \\ best"\u2028') == fingerprint(
        {"kind": "contribute", "bet": 5, "groups": ["major", "minor"],
         "player": 'Zoë "the \\ best"\u2028'})


def test_a_built_bet_carries_that_fingerprint() -> None:
    reqs = Requests(["minor", "major", "mega"])
    for groups, names in ((None, None), (["minor", "mega"], ("mega", "minor")),
                          ("major", ("major",))):
        op = reqs.contribute(Decimal("2.50"), groups=groups, op_id="b-1", player="ann")
        assert op.fingerprint == fingerprint(_request(2_500_000, names, "ann"))
        op = reqs.contribute(Decimal("2.50"), groups=groups, op_id="b-1")
        assert op.fingerprint == fingerprint(_request(2_500_000, names, None))
