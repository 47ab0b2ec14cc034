"""Elementwise operations for physics that runs on one scenario (plain Python numbers) or on many rows (arrays).

The physics functions take every per-row quantity either as a plain Python number (one scenario: the single
`predict`) or as a numpy array (a frame). A numpy call on a number costs ~0.5-1 µs, the same arithmetic on Python
floats ~30 ns, so these helpers compute with plain Python when every argument is a plain number and call numpy
otherwise: one implementation of the physics serves both.

On plain numbers the results equal numpy's: Python float arithmetic is IEEE double like numpy's, `maximum` and
`minimum` propagate NaN as numpy does (Python's `max`/`min` do not), and `ceil`/`floor` return floats (keeping the
sign of a zero) as numpy does, where `math.ceil`/`math.floor` return integers. An integer stays a Python integer
where numpy would return a float of the same value (the physics uses integers below 2**53 only, where both agree).
"""

from __future__ import annotations

import math

import numpy as np

PLAIN = (int, float)  # plain numbers (bool is an int, numpy's float64 a float): computed without numpy
_TRUTH = PLAIN + (np.bool_,)  # one truth value (numpy's from comparing numpy floats)
_PLAIN_OR_TEXT = PLAIN + (str,)


def plain(*values) -> bool:
    """Whether every value is a plain Python number (no array): the arithmetic then runs in Python."""
    return all(isinstance(v, PLAIN) for v in values)


def as_float(v):
    """`v` as floats: a Python float for a plain number, else `np.asarray(v, dtype=float)`."""
    return float(v) if isinstance(v, PLAIN) else np.asarray(v, dtype=float)


def where(cond, a, b):
    """`np.where(cond, a, b)`. With one truth value for `cond` (a plain bool, or numpy's from comparing numpy
    floats): `a if cond else b` when both are plain numbers or strings, and the chosen operand itself (not a copy:
    do not modify it in place) when it is a float array with the shape np.where would give."""
    if isinstance(cond, _TRUTH):
        pick, other = (a, b) if cond else (b, a)
        if isinstance(pick, _PLAIN_OR_TEXT) and isinstance(other, _PLAIN_OR_TEXT):
            return pick
        if (isinstance(pick, np.ndarray) and pick.dtype == np.float64
                and (isinstance(other, PLAIN) or (isinstance(other, np.ndarray) and other.shape == pick.shape
                                                  and other.dtype.kind in "biuf"))):
            return pick
    return np.where(cond, a, b)


def maximum(a, b):
    """`np.maximum(a, b)`: the larger (b on a tie, as numpy), NaN if either is NaN."""
    if isinstance(a, PLAIN) and isinstance(b, PLAIN):
        return a if a > b or a != a else b
    return np.maximum(a, b)


def minimum(a, b):
    """`np.minimum(a, b)`: the smaller (b on a tie, as numpy), NaN if either is NaN."""
    if isinstance(a, PLAIN) and isinstance(b, PLAIN):
        return a if a < b or a != a else b
    return np.minimum(a, b)


def clip(v, lo, hi):
    """`np.clip(v, lo, hi)`: lo below lo, hi above hi (NaN if any is NaN; v itself on a tie, as numpy)."""
    if isinstance(v, PLAIN) and isinstance(lo, PLAIN) and isinstance(hi, PLAIN):
        v = lo if v < lo or lo != lo else v
        return hi if v > hi or hi != hi else v
    return np.clip(v, lo, hi)


def ceil(v):
    """`np.ceil(v)` as a float (NaN and infinities unchanged, the sign of a zero kept: ceil(-0.5) is -0.0)."""
    return _rounded(v, math.ceil) if isinstance(v, PLAIN) else np.ceil(v)


def floor(v):
    """`np.floor(v)` as a float (NaN and infinities unchanged, the sign of a zero kept)."""
    return _rounded(v, math.floor) if isinstance(v, PLAIN) else np.floor(v)


def _rounded(v, to_int) -> float:
    """`to_int` (math.ceil or math.floor) of a plain number as numpy rounds: a float, NaN and infinities kept, and
    a zero result carrying the sign of `v`."""
    if not math.isfinite(v):
        return float(v)
    r = float(to_int(v))
    return math.copysign(r, v) if r == 0.0 else r


def any_(v) -> bool:
    """Whether any row is true (nonzero)."""
    return bool(v.any()) if isinstance(v, np.ndarray) else bool(v)


def rows_shape(values) -> tuple:
    """The broadcast shape of `values` (plain numbers and per-row arrays; the common case, one shape, without
    numpy's general broadcasting machinery); () for plain numbers only."""
    shapes = {getattr(v, "shape", ()) for v in values} - {()}
    if not shapes:
        return ()
    return shapes.pop() if len(shapes) == 1 else np.broadcast_shapes(*shapes)
