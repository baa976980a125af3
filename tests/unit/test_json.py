"""The engine's JSON encoder writes exactly what `json.dumps(..., sort_keys=True)` writes.

Fingerprints and stored JSON (results, ledger details, pending changes) of
existing databases must come out byte for byte the same.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from jackpot._json import sorted_encoder

VALUES: list[Any] = [
    {},
    {"bet": 1_000_000},
    {"carried_over": True},
    {"z": [1, -2.5, None, True, False, 'é"\\\n'], "a": {"y": 1, "b": -3}, "m": "x"},
    {"kind": "contribute", "bet": 10**18, "groups": ["major", "minor"], "player": "p\u2603"},
    "text",
    [],
    1.0,
    float("nan"),
]


@pytest.mark.parametrize("value", VALUES)
def test_the_text_is_json_dumps_sorted(value: Any) -> None:
    assert sorted_encoder()(value) == json.dumps(value, sort_keys=True)
    compact = sorted_encoder(separators=(",", ":"))
    assert compact(value) == json.dumps(value, sort_keys=True, separators=(",", ":"))


def test_a_value_json_cannot_hold_is_refused_as_json_dumps_refuses_it() -> None:
    with pytest.raises(TypeError, match="Object of type Decimal is not JSON serializable"):
        sorted_encoder()({"a": Decimal(1)})
