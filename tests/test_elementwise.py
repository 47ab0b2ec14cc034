"""`features.elementwise` on plain numbers gives numpy's answers (values, NaN, infinities, signed zeros)."""

from __future__ import annotations

import math

import numpy as np

from features import elementwise as ew

VALUES = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.5, -2.5, 1e300, -1e300, math.nan, math.inf, -math.inf, 3, 0, -3, True,
          False, 2.0**53, 4503599627370495.5, np.float64(7.25)]


def _same(got, want) -> bool:
    """Equal as floats, NaN equal to NaN, and the same sign of a zero."""
    g, w = float(got), float(want)
    return (math.isnan(g) and math.isnan(w)) or (g == w and math.copysign(1.0, g) == math.copysign(1.0, w))


def test_one_argument():
    for v in VALUES:
        for ours, theirs in ((ew.ceil, np.ceil), (ew.floor, np.floor)):
            assert isinstance(ours(v), float) and _same(ours(v), theirs(v)), (ours.__name__, v)
        assert _same(ew.as_float(v), np.asarray(v, dtype=float))


def test_two_and_three_arguments():
    for a in VALUES:
        for b in VALUES:
            assert _same(ew.maximum(a, b), np.maximum(a, b)), ("maximum", a, b)
            assert _same(ew.minimum(a, b), np.minimum(a, b)), ("minimum", a, b)
            for c in VALUES[::3]:
                assert _same(ew.clip(a, b, c), np.clip(a, b, c)), ("clip", a, b, c)


def test_where_and_arrays_go_to_numpy():
    assert ew.where(True, 1.5, "x") == 1.5 and ew.where(np.float64(1.0) > 2.0, 1.5, "x") == "x"
    rows = np.array([1.0, -2.0, math.nan])
    assert np.array_equal(ew.maximum(rows, 0.0), np.maximum(rows, 0.0), equal_nan=True)
    assert np.array_equal(ew.where(rows > 0, rows, 7.0), np.where(rows > 0, rows, 7.0))
    assert np.array_equal(ew.ceil(rows), np.ceil(rows), equal_nan=True)
    assert isinstance(ew.as_float(rows), np.ndarray) and ew.any_(rows > 0) and not ew.any_(0.0)
    assert ew.plain(1, 2.0, True, np.float64(3.0)) and not ew.plain(1.0, rows)
