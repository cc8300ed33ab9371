"""The package's one duration parser and one percentile (accordion.units), used by the configuration, the
CLI, the report, the simulator and the benchmarks alike."""

import math

import pytest

from accordion.units import parse_duration, percentile


@pytest.mark.parametrize("text, seconds", [("30", 30.0), ("30.5", 30.5), ("250ms", 0.25), ("30s", 30.0), (" 5m ", 300.0), ("2h", 7200.0), ("1d", 86400.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-5s", "5 minutes", "1w", "1e3", "5m30s"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_percentile_interpolates_between_ranks():
    # Positions 0..3; the 0.95 quantile is at 2.85: 3 + 0.85 * (4 - 3). Nearest rank would say 4.
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.95) == pytest.approx(3.85)
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([7.0], 0.95) == 7.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="quantile"):
        percentile([1.0], 95)
