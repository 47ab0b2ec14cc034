"""Prediction intervals by split conformal calibration of log residuals, per kind of novelty of the query.

A row whose model, GPU and layout were all seen in training gets the width calibrated on random held-out
folds; a row with an unseen model (or GPU, or layout) gets the width calibrated on folds that held whole
models (GPUs, layouts) out, so the nominal coverage holds for the kind of extrapolation actually asked for.

Offsets are also calibrated per stratum (the row's data source), where a source has enough held-out residuals:
sources measure different quantities with very different error (GPU probes of one decoder layer within a few
percent, engine iterations of a whole forward pass off by tens of percent), and one pooled width would be too
wide for the first and far too narrow for the second. A row of a data set no training row came from gets at
least the prior width: nothing in training says how far such a measurement can be off. Query rows (no source, or
the predictor's "prediction") get the pooled offsets.

Held-out rows calibrate only where their source had rows in their fold's training set: a group held out together
with its whole source (the only GPU a data set was measured on) measures a new data set, which the prior width
covers, not the novelty the grouping stands for. A source whose held-out rows come from too few groups for a
group-level conformal quantile gets a random-effects prediction interval of a new group's shift (`group_shift_bounds`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.columns import Columns, columns_of, n_rows, text_array
from train.splits import layout_code

NOVELTY_DIMS = ("model", "gpu", "layout")
STRATUM_COLUMN = "source"  # offsets are calibrated per value of this column (Mondrian conformal)
QUERY_STRATA = ("", "prediction")  # rows that ask for a prediction rather than record a data set's measurement
MIN_STRATUM_RESIDUALS = 30  # fewer held-out residuals than this: the stratum uses the pooled offsets
MIN_GROUP_ROWS = 5  # a held-out group counts (and its shift is measured) from this many residuals


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


def min_groups_for(coverage: float) -> int:
    """The fewest held-out groups whose split-conformal quantile can reach `coverage` at the level of whole groups:
    a new group falls beyond the k-th largest of G with probability k / (G + 1), so G >= coverage / (1 - coverage)
    (4 for 80%)."""
    return max(2, math.ceil(coverage / (1.0 - coverage) - 1e-9))


def group_shift_bounds(residuals: np.ndarray, groups: np.ndarray, coverage: float = 0.8
                       ) -> tuple[float, float] | None:
    """Lower and upper offsets holding `coverage` of a new group's residuals, from a few held-out groups (None when
    fewer than two groups have `MIN_GROUP_ROWS` rows).

    Too few groups for a conformal quantile at the group level, so the shift of a whole group is treated as a random
    effect: a new group's median residual gets the textbook prediction interval from the G group medians seen
    (mean +- t(G-1) * sd * sqrt(1 + 1/G)), and the spread within a group (residuals minus their group's median, a
    conformal quantile over many rows) is added in quadrature. The offsets bracket zero.
    """
    from scipy.stats import t as student_t

    r = pd.Series(np.asarray(residuals, dtype=float))
    by = r.groupby(np.asarray(groups))
    counted = by.size() >= MIN_GROUP_ROWS
    meds = by.median()[counted].to_numpy()
    if len(meds) < 2:
        return None
    keep = np.asarray(counted.reindex(np.asarray(groups)).to_numpy(), dtype=bool)
    w_lo, w_hi = conformal_offsets((r - by.transform("median")).to_numpy()[keep], coverage)
    g = len(meds)
    mean = float(np.mean(meds))
    half = float(student_t.ppf(0.5 + coverage / 2.0, g - 1) * np.std(meds, ddof=1) * math.sqrt(1.0 + 1.0 / g))
    return min(mean - math.hypot(w_lo, half), 0.0), max(mean + math.hypot(w_hi, half), 0.0)


def stratum_offsets(residuals: np.ndarray, strata: np.ndarray, coverage: float = 0.8,
                    groups: np.ndarray | None = None, min_rows: int = MIN_STRATUM_RESIDUALS
                    ) -> dict[str, tuple[float, float]]:
    """Conformal offsets per stratum (sorted by name) for every stratum with at least `min_rows` finite residuals.

    `groups`: the held-out group of each residual (model, GPU, layout; None: not counted). A stratum whose residuals
    come from fewer groups than a group-level conformal quantile needs (`min_groups_for`) gets the wider of its row
    quantile and a random-effects bound over its groups (`group_shift_bounds`); with a single group, its shift is
    added in quadrature (nothing to estimate a spread of shifts from).
    """
    r = np.asarray(residuals, dtype=float)
    strata = np.asarray(strata, dtype=object)
    out = {}
    for key in sorted({str(k) for k in strata.tolist()}):
        sel = (strata == key) & np.isfinite(r)
        if sel.sum() < min_rows:
            continue
        lo, hi = conformal_offsets(r[sel], coverage)
        if groups is not None:  # (groups of None are left out)
            g = np.asarray(groups, dtype=object)[sel]
            known = np.array([v is not None for v in g.tolist()], dtype=bool)
            _, sizes = np.unique(g[known].astype(str), return_counts=True)
            if (sizes >= MIN_GROUP_ROWS).sum() < min_groups_for(coverage):
                bounds = group_shift_bounds(r[sel][known], g[known].astype(str), coverage)
                if bounds is None:
                    shift = largest_group_shift(r[sel][known], g[known].astype(str))
                    lo, hi = -math.hypot(lo, shift), math.hypot(hi, shift)
                else:
                    lo, hi = min(lo, bounds[0]), max(hi, bounds[1])
        out[key] = (lo, hi)
    return out


def row_strata(frame: pd.DataFrame) -> np.ndarray:
    """The stratum of each row (its data source; "" where unknown); a pandas frame or a column table."""
    cols = columns_of(frame)
    if STRATUM_COLUMN not in cols:
        return np.full(cols.n, "", dtype=object)
    return text_array(cols[STRATUM_COLUMN])


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
    (no trust in the correction) with the width of the physics answer's own errors on the training rows of its
    stratum (the prior width when those are unknown).
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
    # per grouping, per stratum (data source) with enough held-out residuals: that stratum's own offsets
    strata: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    # offsets of log(measured / physics) on the training rows, per stratum and pooled ("*"): the width of rows
    # that get the physics answer (empty: the prior width)
    physics_offsets: dict[str, tuple[float, float]] = field(default_factory=dict)
    seen_strata: frozenset = frozenset()  # strata of the training rows (empty: strata not tracked)

    def terms(self, frame: pd.DataFrame, keys: dict[str, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-row (trust in the learned correction, lower, upper log offsets); `keys`: `row_novelty(frame)`."""
        n = n_rows(frame)
        if not self.offsets:
            w = self.prior_log_halfwidth
            return np.ones(n), np.full(n, -w), np.full(n, w)
        keys = keys if keys is not None else {}
        self._fill_novelty(frame, keys)
        # a row's terms depend only on its stratum and on which of its model, GPU and layout training saw: they
        # are looked up in a table of the calibration (per stratum, over every novelty), made once
        if n == 1:  # a single scenario: its novelty profile as one number, its stratum's table sliced
            profile = 0
            for dim in NOVELTY_DIMS:
                profile = 2 * profile + int(dim in self.seen and keys[dim][0] not in self.seen[dim])
            _, uniques = self._strata_codes(frame, keys)
            one = self._table_of(uniques[0])
            return one[0, profile:profile + 1], one[1, profile:profile + 1], one[2, profile:profile + 1]
        else:
            profile = np.zeros(n, dtype=np.intp)
            for dim in NOVELTY_DIMS:
                unseen = _unseen(keys, dim, self.seen[dim], n) if dim in self.seen else np.zeros(n, dtype=bool)
                profile = 2 * profile + unseen
        codes, uniques = self._strata_codes(frame, keys)
        if len(uniques) == 1:  # one stratum (one data set): index its table directly
            one = self._table_of(uniques[0])
            return one[0][profile], one[1][profile], one[2][profile]
        table = np.stack([self._table_of(u) for u in uniques.tolist()], axis=1)  # (trust, lo, hi) x stratum x novelty
        return table[0][codes, profile], table[1][codes, profile], table[2][codes, profile]

    def _table_of(self, stratum: str) -> np.ndarray:
        """`_stratum_table(stratum)`, made once per calibration and stratum."""
        made = self.__dict__.setdefault("_profiles", {})
        table = made.get(stratum)
        if table is None:
            table = made[stratum] = self._stratum_table(stratum)
        return table

    def _stratum_table(self, stratum: str) -> np.ndarray:
        """(trust, lower, upper) x novelty of a row of `stratum`, for every combination of unseen model, GPU and
        layout (in `NOVELTY_DIMS` order, unseen = 1, read as a binary number)."""
        profiles = list(itertools.product((False, True), repeat=len(NOVELTY_DIMS)))
        n = len(profiles)
        unseen_key = object()  # a key no training row had
        keys = {dim: np.array([unseen_key if p[j] else next(iter(self.seen.get(dim) or ()), unseen_key)
                               for p in profiles], dtype=object) for j, dim in enumerate(NOVELTY_DIMS)}
        rows = Columns({STRATUM_COLUMN: np.full(n, stratum, dtype=object)}, n)
        return np.stack(self._row_terms(rows, keys))

    def _fill_novelty(self, frame: pd.DataFrame, keys: dict) -> None:
        """Put each row's novelty keys (`row_novelty`) in `keys` unless it has them all."""
        if self.seen and not all(d in keys for d in NOVELTY_DIMS):
            keys.update(row_novelty(frame))

    def _row_terms(self, frame: pd.DataFrame, keys: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`terms` worked out row by row (vectorised)."""
        n = n_rows(frame)
        strata = self._strata_codes(frame, keys) if (self.strata or self.seen_strata or self.physics_offsets) else None
        cache: dict = {}

        def offsets_of(g: str) -> tuple[np.ndarray, np.ndarray]:  # per-row offsets of a grouping, made on demand
            if g not in cache:
                if g == "widest":
                    parts = [offsets_of(k) for k in self.offsets]
                    cache[g] = (np.minimum.reduce([o[0] for o in parts]), np.maximum.reduce([o[1] for o in parts]))
                else:
                    cache[g] = self._row_offsets(self.offsets[g], self.strata.get(g, {}), strata, n)
            return cache[g]

        lo, hi = (a.copy() for a in offsets_of("random" if "random" in self.offsets else "widest"))
        trust = np.full(n, self.shrink.get("random", 1.0))
        if self.seen:
            self._fill_novelty(frame, keys)
            least_trust = min(self.shrink.values(), default=1.0)
            physics_only = np.zeros(n, dtype=bool)  # rows novel along a dimension no grouping could calibrate
            for dim in NOVELTY_DIMS:
                seen = self.seen.get(dim)
                if seen is None:
                    continue
                unseen = _unseen(keys, dim, seen, n)
                if not unseen.any():
                    continue
                if dim in self.offsets:
                    (d_lo, d_hi), d_trust = offsets_of(dim), self.shrink.get(dim, 1.0)
                elif dim in self.uncalibrated and dim in self.transfer:
                    shift = max(self.group_shift.values(), default=0.0)
                    w_lo, w_hi = offsets_of("widest")
                    # independent error sources: widths add in quadrature
                    (d_lo, d_hi), d_trust = (-np.hypot(w_lo, shift), np.hypot(w_hi, shift)), least_trust
                elif dim in self.uncalibrated:  # one group in training: no evidence how the correction carries over
                    p_lo, p_hi = self._physics_widths(strata, n)
                    lo[unseen], hi[unseen], trust[unseen] = p_lo[unseen], p_hi[unseen], 0.0
                    physics_only[unseen] = True
                    continue
                else:
                    (d_lo, d_hi), d_trust = offsets_of("widest"), least_trust
                upd = unseen & ~physics_only
                lo[upd] = np.minimum(lo[upd], d_lo[upd])
                hi[upd] = np.maximum(hi[upd], d_hi[upd])
                trust[upd] = np.minimum(trust[upd], d_trust)
        if self.seen_strata and strata is not None:  # a data set never seen in training: at least the prior width
            codes, uniques = strata
            new = np.array([u not in self.seen_strata and u not in QUERY_STRATA for u in uniques], dtype=bool)[codes]
            lo[new] = np.minimum(lo[new], -self.prior_log_halfwidth)
            hi[new] = np.maximum(hi[new], self.prior_log_halfwidth)
        return trust, lo, hi

    @staticmethod
    def _strata_codes(frame: pd.DataFrame, keys: dict) -> tuple[np.ndarray, np.ndarray]:
        """(codes, unique strata) of the rows, factorised once per frame and shared through `keys`."""
        if "stratum_codes" not in keys:
            if n_rows(frame) <= 64:  # a few rows: plain lookups beat factorising
                index: dict[str, int] = {}
                codes = np.array([index.setdefault(v, len(index)) for v in row_strata(frame).tolist()], dtype=np.intp)
                uniques = np.array(list(index), dtype=object)
            else:
                codes, uniques = pd.factorize(row_strata(frame), use_na_sentinel=False)
            keys["stratum_codes"] = (codes, np.asarray(uniques, dtype=object))
        return keys["stratum_codes"]

    @staticmethod
    def _row_offsets(pooled: tuple[float, float], by_stratum: dict[str, tuple[float, float]],
                     strata: tuple[np.ndarray, np.ndarray] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-row (lower, upper) offsets: the row's stratum's own where calibrated, else the pooled ones."""
        if strata is None or not by_stratum:
            return np.full(n, pooled[0]), np.full(n, pooled[1])
        codes, uniques = strata
        table = np.array([by_stratum.get(u, pooled) for u in uniques], dtype=float).reshape(-1, 2)
        return table[codes, 0], table[codes, 1]

    def _physics_widths(self, strata: tuple[np.ndarray, np.ndarray] | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-row offsets of the physics answer (its training errors; the prior width where unknown)."""
        w = self.prior_log_halfwidth
        pooled = self.physics_offsets.get("*", (-w, w))
        return self._row_offsets(pooled, {k: v for k, v in self.physics_offsets.items() if k != "*"}, strata, n)

    def bounds(self, frame: pd.DataFrame, keys: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-row (lower, upper) log offsets to add to the point prediction."""
        return self.terms(frame, keys)[1:]

    def __getstate__(self):
        """Seen keys as sorted tuples: set order varies between processes, and artifacts must be reproducible."""
        state = dict(self.__dict__)
        state.pop("_profiles", None)  # derived from the rest; made again on first use
        state["seen"] = {dim: tuple(sorted(keys, key=str)) for dim, keys in self.seen.items()}
        state["seen_strata"] = tuple(sorted(self.seen_strata, key=str))
        return state

    def __setstate__(self, state):
        state["seen"] = {dim: frozenset(keys) for dim, keys in state.get("seen", {}).items()}
        state.setdefault("shrink", {})
        state.setdefault("uncalibrated", ())
        state.setdefault("transfer", ())
        state.setdefault("group_shift", {})
        state.setdefault("strata", {})
        state.setdefault("physics_offsets", {})
        state["seen_strata"] = frozenset(state.get("seen_strata", ()))
        self.__dict__.update(state)

    @staticmethod
    def _widest(offsets: dict[str, tuple[float, float]]) -> tuple[float, float]:
        return (min(o[0] for o in offsets.values()), max(o[1] for o in offsets.values()))


def _unseen(keys: dict, dim: str, seen: frozenset, n: int) -> np.ndarray:
    """Rows whose key along `dim` was not seen in training (factorised once per frame for large frames)."""
    if n <= 64:
        return np.array([k not in seen for k in keys[dim]], dtype=bool)
    if (dim, "factorized") not in keys:
        keys[(dim, "factorized")] = pd.factorize(keys[dim], use_na_sentinel=False)
    codes, uniques = keys[(dim, "factorized")]
    return np.array([u not in seen for u in uniques], dtype=bool)[codes]


def largest_group_shift(residuals: np.ndarray, groups: np.ndarray, min_rows: int = MIN_GROUP_ROWS) -> float:
    """The largest |median residual| of one group (groups with at least `min_rows` rows; 0 when none)."""
    r = pd.Series(np.asarray(residuals, dtype=float)).groupby(np.asarray(groups))
    med = r.median()[r.size() >= min_rows]
    return float(med.abs().max()) if len(med) else 0.0


def seen_keys(frame: pd.DataFrame) -> dict[str, frozenset]:
    """The model names, GPU names and layout codes present in a training frame."""
    return {dim: frozenset(v.tolist()) for dim, v in row_novelty(frame).items()}


@dataclass
class HeldOut:
    """Out-of-fold predictions under one grouping, one entry per held-out row."""

    truth: np.ndarray  # the learned quantity (residual families: log(measured / physics))
    preds: np.ndarray  # its out-of-fold prediction
    labels: np.ndarray  # the row's held-out group (model, GPU, layout; the row itself for random folds)
    strata: np.ndarray  # the row's stratum (data source)
    in_train: np.ndarray  # whether the fold's training rows had the row's stratum


@dataclass
class HeldOutCalibration:
    """What `calibrate_held_out` makes of the held-out predictions of every grouping."""

    offsets: dict[str, tuple[float, float]] = field(default_factory=dict)
    shrink: dict[str, float] = field(default_factory=dict)
    strata: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    group_shift: dict[str, float] = field(default_factory=dict)
    uncalibrated: tuple[str, ...] = ()  # groupings whose held-out rows never had their source in training
    report: dict[str, float] = field(default_factory=dict)


def calibrate_held_out(held: dict[str, HeldOut], coverage: float = 0.8, residual: bool = True,
                       shrink: bool = True) -> HeldOutCalibration:
    """Trust and conformal offsets per grouping (pooled and per stratum) from its out-of-fold predictions.

    Only rows whose stratum the fold's training rows had count: a prediction never asks for a row of a data set
    training did not see through these offsets (such rows get the prior width), so a held-out group whose whole
    source was missing from its fold measures the wrong kind of novelty (a probe of one GPU predicted from engine
    iterations of another, say). A grouping with no such rows cannot be calibrated.
    """
    out = HeldOutCalibration()
    uncalibrated = []
    for grouping, h in held.items():
        valid = np.asarray(h.in_train, dtype=bool) & np.isfinite(h.truth) & np.isfinite(h.preds)
        if not valid.any():
            if grouping in NOVELTY_DIMS:
                uncalibrated.append(grouping)
            continue
        truth, preds = np.asarray(h.truth, dtype=float)[valid], np.asarray(h.preds, dtype=float)[valid]
        labels = np.asarray(h.labels, dtype=object)[valid]
        strata = np.asarray(h.strata, dtype=object)[valid]
        trust = best_shrink(truth, preds) if residual and shrink else 1.0
        out.shrink[grouping] = trust
        resid = truth - trust * preds
        out.offsets[grouping] = conformal_offsets(resid, coverage)
        out.strata[grouping] = stratum_offsets(resid, strata, coverage, None if grouping == "random" else labels)
        if grouping != "random":
            out.group_shift[grouping] = largest_group_shift(resid, labels)
        ape = np.abs(np.exp(-resid) - 1.0)
        out.report[f"oof_{grouping}_median_ape"] = float(np.median(ape))
        out.report[f"oof_{grouping}_p90_ape"] = float(np.quantile(ape, 0.9))
        if residual:
            out.report[f"oof_{grouping}_trust"] = trust
    out.uncalibrated = tuple(uncalibrated)
    return out
