"""The soak's arithmetic: the slope it judges and README's formula it compares with."""

from __future__ import annotations

import pytest

from streams.devtools.soak import predicted_mib, slope


def test_slope_is_the_least_squares_one() -> None:
    assert slope([(0, 100.0), (1, 100.5), (2, 101.0), (3, 101.5)]) == pytest.approx(0.5)
    assert slope([(0, 5.0), (1, 7.0), (2, 5.0), (3, 7.0)]) == pytest.approx(0.4)
    assert slope([(0, 1.0)]) == 0.0


def test_the_formula_adds_rocksdb_buffered_traces_and_kept_decisions_to_the_rest() -> None:
    assert predicted_mib(90.0, buffered=0, kept=0) == 90.0 + 64
    busy = predicted_mib(90.0, buffered=20_000, kept=100_000)
    assert busy - 90.0 - 64 == pytest.approx((210 * 20_000 + 167 * 100_000) / 2**20)
