"""Durations and percentiles: one parser and one percentile for the whole package (configuration, CLI,
report, simulator, benchmarks). Imports nothing of Accordion's, so every layer may use it."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds in "30", "30.5", "250ms", "30s", "5m", "2h" or "1d". Raises ValueError (what pydantic's
    validators and float() raise) for anything else; callers name the field."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 30, 30s, 5m, 2h, 1d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of values, by linear interpolation between closest ranks (numpy's
    default, so numbers agree with the usual tools); nan when there are none."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
