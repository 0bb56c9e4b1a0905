"""Argument checks every layer shares: a public function anywhere refuses a bad size with the same words.

It imports nothing from jaxst, so the architectures, the functional core, io, the engine and the facades
can all reach it (before it, ``base.positive_int`` sat above the core and eleven copies were inlined).
A Python or numpy integer counts; a bool does not, though Python calls it an int.
"""

from __future__ import annotations

import numpy as np


def is_int(value) -> bool:
    """Whether ``value`` is a Python or numpy integer and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value, *, optional: bool = False) -> int | None:
    """``value`` as an int when it is an integer >= 1, else a ValueError naming ``name``
    (``"{name} must be a positive integer, got {value!r}"``). With ``optional``, None passes through."""
    return _at_least(name, value, 1, "a positive integer", optional)


def non_negative_int(name: str, value, *, optional: bool = False) -> int | None:
    """``value`` as an int when it is an integer >= 0, else a ValueError naming ``name``. With ``optional``,
    None passes through."""
    return _at_least(name, value, 0, "a non-negative integer", optional)


def callable_arg(name: str, value):
    """``value`` when it is callable, else a TypeError naming ``name`` (a loss's similarity or distance)."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def _at_least(name: str, value, minimum: int, what: str, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be {what}{' or None' if optional else ''}, got {value!r}")
    return int(value)


__all__ = ["callable_arg", "is_int", "non_negative_int", "positive_int"]
