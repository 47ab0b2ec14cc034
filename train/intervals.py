"""Prediction intervals by split conformal calibration of log residuals, per kind of novelty of the query.

A row whose model, GPU and layout were all seen in training gets the width calibrated on random held-out
folds; a row with an unseen model (or GPU, or layout) gets the width calibrated on folds that held whole
models (GPUs, layouts) out, so the nominal coverage holds for the kind of extrapolation actually asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.columns import columns_of, n_rows, text_array
from train.splits import layout_code

NOVELTY_DIMS = ("model", "gpu", "layout")


def conformal_offsets(residuals: np.ndarray, coverage: float = 0.8) -> tuple[float, float]:
    """Lower and upper offsets (log space) holding `coverage` of future residuals, with the finite-sample rank.

    The offsets bracket zero so the interval always contains the point prediction. With too few residuals
    for the exact rank, the extreme residual is used (the best finite answer the data supports).
    """
    r = np.sort(np.asarray(residuals, dtype=float)[np.isfinite(residuals)])
    n = len(r)
    if n == 0:
        return (math.nan, math.nan)
    tail = (1.0 - coverage) / 2.0
    k_lo = int(math.floor((n + 1) * tail))  # 1-based order statistic
    k_hi = int(math.ceil((n + 1) * (1.0 - tail)))
    lo = r[max(k_lo, 1) - 1]
    hi = r[min(k_hi, n) - 1]
    return (min(float(lo), 0.0), max(float(hi), 0.0))


def row_novelty(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The key of each row along every novelty dimension (model name, GPU name, layout code)."""
    cols = columns_of(frame)  # a pandas frame or a column table
    out = {}
    for dim in ("model", "gpu"):
        if dim in cols:
            out[dim] = text_array(cols[dim])
        else:
            out[dim] = np.full(cols.n, "", dtype=object)
    out["layout"] = layout_code(cols)
    return out


SHRINK_GRID = np.linspace(0.0, 1.0, 11)


SHRINK_MARGIN = 0.8  # shrink only when it cuts the held-out loss by at least 20%: full trust is the default


def best_shrink(y: np.ndarray, pred: np.ndarray) -> float:
    """The factor a in [0, 1] whose a x pred best predicts held-out y (median + 90th percentile of |error|).

    1 trusts the learned correction fully; 0 falls back to physics, for novelty the correction does not carry to.
    A few held-out groups are a noisy guide, so anything short of a clear gain keeps full trust.
    """
    err = np.abs(y[None, :] - SHRINK_GRID[:, None] * pred[None, :])
    loss = np.median(err, axis=1) + np.quantile(err, 0.9, axis=1)
    best = int(np.argmin(loss))
    return float(SHRINK_GRID[best]) if loss[best] < SHRINK_MARGIN * loss[-1] else 1.0


@dataclass
class IntervalCalibration:
    """Per grouping (`random`, `model`, `gpu`, `layout`): how far to trust the learned correction (`shrink`) and
    the conformal offsets of what is left; plus the keys seen in training, which say each row's novelty.

    A row whose novelty no grouping could calibrate (training data with one GPU only, say) gets the physics answer
    (no trust in the correction) with the prior width: the data cannot say how far such a row can be off.
    """

    coverage: float = 0.8
    offsets: dict[str, tuple[float, float]] = field(default_factory=dict)
    seen: dict[str, frozenset] = field(default_factory=dict)
    shrink: dict[str, float] = field(default_factory=dict)
    uncalibrated: tuple[str, ...] = ()  # novelty dimensions with a single group in training
    # uncalibrated dimensions the correction is nevertheless carried along (its features are relative to the
    # hardware, e.g. GPU-relative step features): such rows get the least trust and widest offsets of the
    # groupings that could be calibrated (the hardest extrapolation the data could check), not the physics
    transfer: tuple[str, ...] = ()
    # per grouping: the largest shift of a whole held-out group (|median log residual| of one model, GPU or layout
    # held out); a transferred novelty may move all its rows together by as much, an error independent of the
    # within-group spread, so it widens the widest offsets in quadrature
    group_shift: dict[str, float] = field(default_factory=dict)
    prior_log_halfwidth: float = math.log(2.0)  # no calibration data at all, or novelty none could calibrate

    def terms(self, frame: pd.DataFrame, keys: dict[str, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-row (trust in the learned correction, lower, upper log offsets); `keys`: `row_novelty(frame)`."""
        n = n_rows(frame)
        if not self.offsets:
            w = self.prior_log_halfwidth
            return np.ones(n), np.full(n, -w), np.full(n, w)
        base = self.offsets.get("random") or self._widest(self.offsets)
        lo, hi = np.full(n, base[0]), np.full(n, base[1])
        trust = np.full(n, self.shrink.get("random", 1.0))
        if not self.seen:
            return trust, lo, hi
        keys = keys if keys is not None else row_novelty(frame)
        widest = self._widest(self.offsets)
        least_trust = min(self.shrink.values(), default=1.0)
        physics_only = np.zeros(n, dtype=bool)  # rows novel along a dimension no grouping could calibrate
        for dim in NOVELTY_DIMS:
            seen = self.seen.get(dim)
            if seen is None:
                continue
            if n <= 64:
                unseen = np.array([k not in seen for k in keys[dim]], dtype=bool)
            else:  # factorised once per frame, shared by every target's calibration
                if (dim, "factorized") not in keys:
                    keys[(dim, "factorized")] = pd.factorize(keys[dim], use_na_sentinel=False)
                codes, uniques = keys[(dim, "factorized")]
                unseen = np.array([u not in seen for u in uniques], dtype=bool)[codes]
            if not unseen.any():
                continue
            if dim in self.offsets:
                (d_lo, d_hi), d_trust = self.offsets[dim], self.shrink.get(dim, 1.0)
            elif dim in self.uncalibrated and dim in self.transfer:
                shift = max(self.group_shift.values(), default=0.0)
                # independent error sources: widths add in quadrature
                (d_lo, d_hi), d_trust = (-math.hypot(widest[0], shift), math.hypot(widest[1], shift)), least_trust
            elif dim in self.uncalibrated:  # one group in training: no evidence how anything carries over
                w = self.prior_log_halfwidth
                lo[unseen], hi[unseen], trust[unseen] = -w, w, 0.0
                physics_only[unseen] = True
                continue
            else:
                (d_lo, d_hi), d_trust = widest, least_trust
            upd = unseen & ~physics_only
            lo[upd] = np.minimum(lo[upd], d_lo)
            hi[upd] = np.maximum(hi[upd], d_hi)
            trust[upd] = np.minimum(trust[upd], d_trust)
        return trust, lo, hi

    def bounds(self, frame: pd.DataFrame, keys: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-row (lower, upper) log offsets to add to the point prediction."""
        return self.terms(frame, keys)[1:]

    def __getstate__(self):
        """Seen keys as sorted tuples: set order varies between processes, and artifacts must be reproducible."""
        state = dict(self.__dict__)
        state["seen"] = {dim: tuple(sorted(keys, key=str)) for dim, keys in self.seen.items()}
        return state

    def __setstate__(self, state):
        state["seen"] = {dim: frozenset(keys) for dim, keys in state.get("seen", {}).items()}
        state.setdefault("shrink", {})
        state.setdefault("uncalibrated", ())
        state.setdefault("transfer", ())
        state.setdefault("group_shift", {})
        self.__dict__.update(state)

    @staticmethod
    def _widest(offsets: dict[str, tuple[float, float]]) -> tuple[float, float]:
        return (min(o[0] for o in offsets.values()), max(o[1] for o in offsets.values()))


def largest_group_shift(residuals: np.ndarray, groups: np.ndarray, min_rows: int = 5) -> float:
    """The largest |median residual| of one group (groups with at least `min_rows` rows; 0 when none)."""
    r = pd.Series(np.asarray(residuals, dtype=float)).groupby(np.asarray(groups))
    med = r.median()[r.size() >= min_rows]
    return float(med.abs().max()) if len(med) else 0.0


def seen_keys(frame: pd.DataFrame) -> dict[str, frozenset]:
    """The model names, GPU names and layout codes present in a training frame."""
    return {dim: frozenset(v.tolist()) for dim, v in row_novelty(frame).items()}
