"""JSON text exactly as `json.JSONEncoder(sort_keys=True, ...).encode` writes it, cheaper.

Fingerprints, stored results, ledger details and pending changes are
encoded on every write (four to eight times per bet). `JSONEncoder.encode`
builds a C encoder for each call; this builds it once and reuses it,
byte for byte the same text. Without the check for circular references,
which the engine's own values (plain dicts, lists, strings and numbers,
never circular) do not need.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from typing import Any

__all__ = ["sorted_encoder"]


def sorted_encoder(*, separators: tuple[str, str] = (", ", ": ")) -> Callable[[Any], str]:
    """Return `json.JSONEncoder(sort_keys=True, separators=separators).encode`, built once."""
    plain = json.JSONEncoder(sort_keys=True, separators=separators)
    make = getattr(_encoder, "c_make_encoder", None)  # (None without the C accelerator)
    if make is None:  # pragma: no cover - CPython has it
        return plain.encode
    # The arguments `JSONEncoder.iterencode` passes it (markers None: no circular check).
    chunks = make(None, plain.default, _encoder.encode_basestring_ascii, plain.indent,
                  plain.key_separator, plain.item_separator, plain.sort_keys, plain.skipkeys,
                  plain.allow_nan)

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode
