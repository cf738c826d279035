"""Hints for error messages about mistyped names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word, choices: Iterable, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``word`` (case-insensitive, spelling of
    the choice kept), or ``""`` when nothing is close."""
    lower = {str(c).lower(): str(c) for c in sorted(choices, key=str)}
    close = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=cutoff)
    return f"; did you mean {lower[close[0]]!r}?" if close else ""
