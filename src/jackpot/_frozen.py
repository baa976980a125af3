"""Frozen dataclasses built on the operation path without the cost of their frozen `__init__`.

A frozen dataclass's `__init__` sets each field with `object.__setattr__`,
a C call per field: some 1,300 instructions a field, against a few dozen
for the plain slot store of a mutable class. Per bet the engine builds a
ledger `Entry` (19 fields: 31,000 instructions), the level's next
`LevelState`, its `Operation`, its `Contribution` and its idempotency record,
in all more than a tenth of a bet's instructions.

`builder(cls)` makes a mutable twin of a frozen slots dataclass: the same
fields, defaults and slots, an `__init__` of plain slot stores and nothing
else. The hot paths build the twin and make it the frozen class by
assigning `__class__` (CPython allows it between classes of the same slots
on the same base), in two lines:

    entry = _ENTRY(kind, level, ...)  # the twin: plain slot stores
    entry.__class__ = Entry  # from here on an Entry, frozen as any other

The object is then exactly what `Entry(...)` returns: the same type, fields,
equality, hash, repr and frozenness. Everywhere else the classes are built
as usual.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

__all__ = ["builder"]


def builder(cls: type) -> Any:
    """Return a mutable twin of the frozen slots dataclass `cls` (see the module docstring).

    Refuses a class whose instances need more than their fields set (a
    `__post_init__`, a field not set by `__init__`): the twin would skip it.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        msg = f"{cls.__qualname__} is not a frozen dataclass with slots"
        raise TypeError(msg)
    if hasattr(cls, "__post_init__") or any(not f.init for f in fields(cls)):
        msg = f"{cls.__qualname__} needs more than its fields set: build it with its __init__"
        raise TypeError(msg)
    namespace: dict[str, Any] = {
        "__annotations__": {f.name: f.type for f in fields(cls)},
        "__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.<builder>"}
    for f in fields(cls):
        if f.default is not MISSING or f.default_factory is not MISSING:
            namespace[f.name] = field(default=f.default, default_factory=f.default_factory,
                                      kw_only=f.kw_only)
        elif f.kw_only:
            namespace[f.name] = field(kw_only=True)
    twin: type = dataclass(slots=True, repr=False, eq=False, match_args=False)(
        type(cls.__name__, (), namespace))
    if twin.__slots__ != cls.__slots__ or twin.__bases__ != cls.__bases__:  # type: ignore[attr-defined]
        msg = f"{cls.__qualname__}: its twin would not have its layout"
        raise TypeError(msg)
    return twin
