"""The learned layer: per target, a regressor of log(measured / physics) with conformal 80% intervals.

`ResidualModel(**hyperparams).fit(frame).predict(frame)` adds `pred_<target>`, `pred_<target>_lo` and
`pred_<target>_hi`. With no measurements of a target the prediction is the physics answer itself.
`FrameModel` holds everything the learner families share (rows, log targets, calibration, prediction);
the baselines in `train.baselines` differ only in the learner and in the features they read.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import numpy as np
import pandas as pd

from features.columns import Columns, RowSubset, columns_of
from train.frames import CATEGORICAL_COLUMNS, FeatureSpace, float_column, physics, physics_answer, target_rows
from train.fastpath import CompiledForest
from train.intervals import (NOVELTY_DIMS, HeldOut, IntervalCalibration, calibrate_held_out, conformal_offsets,
                             row_novelty, row_strata, seen_keys, stratum_offsets)
from train.learners import XGBLearner
from train.splits import group_key, split_folds
from train.targets import PHYSICS_TARGETS, pred_cols

CALIBRATION_GROUPINGS = ("random", "model", "gpu", "layout")
# one measurement in other units (total = output x (isl + osl) / osl, requests = output / osl): the physics answers
# obey the same identities, so the learned correction of output_throughput applies to them unchanged
SHARED_RESIDUAL = {"total_throughput": "output_throughput", "request_throughput": "output_throughput"}
FAST_PATH_ROWS = 64  # up to this many rows per kind, learned corrections come from the compiled forest
LAYOUT_DESCRIPTORS = ("f_tp", "f_pp", "f_dp", "f_ep", "f_attention_dp", "f_num_gpus")
MAX_LOG_CORRECTION = 7.0  # a learned correction never moves physics by more than e^7 (~1,100x) either way


class FrameModel(ABC):
    """Shared machinery: one learner per target on one feature space per kind, calibrated intervals."""

    family: ClassVar[str] = "base"
    transfer_novelty: tuple[str, ...] = ()  # (instance attribute; class default for models pickled before it)
    residual: ClassVar[bool] = True  # learn log(measured / physics); False: learn log(measured) directly
    feature_prefix: ClassVar[str] = "f_"
    # per kind: feature columns never read. A serving prediction has no data source (`source="prediction"`, an
    # unseen category that sent rows down whichever branch trees chose for missing values), so no family reads the
    # source of serving rows; per-source differences are left to the per-source interval offsets
    excluded_features: ClassVar[dict[str, tuple[str, ...]]] = {"serving": ("cat_source",)}
    categorical: ClassVar[tuple[str, ...]] = CATEGORICAL_COLUMNS
    defaults: ClassVar[dict] = {}

    def __init__(self, seed: int = 0, coverage: float = 0.8, calibration: tuple[str, ...] = CALIBRATION_GROUPINGS,
                 inner_folds: int = 3, max_rows: int = 20000, min_rows: int = 8, shrink: bool = True,
                 source_balance: float = 0.5, transfer_novelty: tuple[str, ...] = (), **hyper):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameters {sorted(unknown)}")
        self.seed, self.coverage, self.calibration = int(seed), float(coverage), tuple(calibration)
        self.inner_folds, self.max_rows, self.min_rows = int(inner_folds), int(max_rows), int(min_rows)
        self.shrink = bool(shrink)  # calibrate per novelty how far to trust the correction (residual families)
        # row weight = rows of its source ^ -source_balance: 0 counts rows, 1 counts every data set equally; the
        # default (square root) keeps a small data set that measures something else from being drowned out
        self.source_balance = float(source_balance)
        # novelty dimensions (e.g. "gpu") the correction carries to even when training has a single group of them
        # (see IntervalCalibration.transfer); empty: such rows get the physics answer and the prior width
        self.transfer_novelty = tuple(transfer_novelty)
        self.hyper = {**self.defaults, **hyper}
        self.spaces_: dict[str, FeatureSpace] = {}
        self.learners_: dict[str, object] = {}
        self.calibration_: dict[str, IntervalCalibration] = {}
        self.fit_report_: dict[str, dict] = {}

    # --- sklearn-style parameters -----------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        return {"seed": self.seed, "coverage": self.coverage, "calibration": self.calibration,
                "inner_folds": self.inner_folds, "max_rows": self.max_rows, "min_rows": self.min_rows,
                "shrink": self.shrink, "source_balance": self.source_balance,
                "transfer_novelty": self.transfer_novelty, **self.hyper}

    def set_params(self, **params) -> "FrameModel":
        fresh = type(self)(**{**self.get_params(), **params})
        self.__dict__.update(fresh.__dict__)
        return self

    def clone(self, **params) -> "FrameModel":
        """An unfitted copy with the same hyperparameters (some overridden)."""
        return type(self)(**{**self.get_params(), **params})

    # --- what subclasses choose -------------------------------------------------------------------------
    @abstractmethod
    def make_learner(self, n_features: int, seed: int):
        """A fresh regressor for one target (None: no learner, the physics answer is the prediction)."""

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The frame with the columns this family reads (physics features by default)."""
        return physics(frame)

    @property
    def feature_names(self) -> dict[str, list[str]]:
        """Feature names per kind, in matrix order."""
        return {k: s.names for k, s in self.spaces_.items()}

    # --- fitting ----------------------------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame, progress: Callable[[str], None] | None = None) -> "FrameModel":
        """Learn every target that has at least `min_rows` usable measurements; calibrate its interval."""
        frame = self.prepare(frame)
        self.spaces_, self.learners_, self.calibration_, self.fit_report_ = {}, {}, {}, {}
        self.__dict__.pop("_fast", None)
        for kind, targets in PHYSICS_TARGETS.items():
            masks = {t: self._rows(frame, t) for t in targets}
            any_rows = np.logical_or.reduce(list(masks.values()))
            if any_rows.sum() < self.min_rows:
                continue
            space = FeatureSpace.from_frame(frame[any_rows], self.feature_prefix, self.residual, self.categorical,
                                           self.excluded_features.get(kind, ()))
            self.spaces_[kind] = space
            for t in targets:
                if masks[t].sum() < self.min_rows:
                    continue
                if self._shared_source(t) is not None:
                    self.fit_report_[t] = {"n": int(masks[t].sum()), "shares_correction_of": self._shared_source(t)}
                    continue
                if progress:
                    progress(t)
                sub = frame[masks[t]]
                X, y = self._xy(space, sub, t)
                w = self._weights(sub)
                learner = self.make_learner(X.shape[1], self.seed)
                if learner is not None:
                    learner.fit(X, y, w)
                    self.learners_[t] = learner
                self.calibration_[t], self.fit_report_[t] = self._calibrate(space, sub, t, X, y, w, learner)
        return self

    def _shared_source(self, target: str) -> str | None:
        """The target whose learned correction `target` reuses (residual families, once that one is fitted)."""
        src = SHARED_RESIDUAL.get(target)
        return src if self.residual and src is not None and src in self.calibration_ else None

    def _rows(self, frame: pd.DataFrame, target: str) -> np.ndarray:
        mask = target_rows(frame, target, need_physics=True)
        idx = np.flatnonzero(mask)
        if len(idx) > self.max_rows:  # a deterministic subsample keeps huge tables tractable
            src = (frame["source"].to_numpy(dtype=object, na_value="")[idx] if "source" in frame.columns
                   else np.zeros(len(idx), dtype=object))
            keep = balanced_subsample(idx, src, self.max_rows, self.seed)
            mask = np.zeros(len(frame), dtype=bool)
            mask[keep] = True
        return mask

    def _weights(self, sub: pd.DataFrame) -> np.ndarray | None:
        """Row weights that let small data sets count next to big ones (None: every row counts once)."""
        if not self.source_balance or "source" not in sub.columns:
            return None
        src = sub["source"].to_numpy(dtype=object, na_value="")
        codes, uniques = pd.factorize(src)
        w = np.bincount(codes).astype(float)[codes] ** -self.source_balance
        return w / w.mean()

    def _xy(self, space: FeatureSpace, sub: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
        X = space.matrix(sub)
        log_meas = nan_safe_log(float_column(sub, target))
        if not self.residual:
            return X, log_meas
        log_phys = nan_safe_log(physics_answer(sub, target))
        X[:, -1] = log_phys
        return X, log_meas - log_phys

    def fold_learner(self, fitted, n_features: int, seed: int):
        """A fresh learner for one cross-validation fold; `fitted`: the target's learner fitted on all its rows
        (families whose hyperparameters are tuned in the fit keep that fit's, rather than tune them per fold)."""
        return self.make_learner(n_features, seed)

    def _calibrate(self, space, sub, target, X, y, w=None, fitted=None) -> tuple[IntervalCalibration, dict]:
        """Out-of-fold predictions under each grouping give that grouping's trust in the learned correction
        (residual families) and the conformal offsets of the remaining error (`train.intervals.calibrate_held_out`)."""
        uncalibrated, held = [], {}
        strata = row_strata(sub)
        for grouping in self.calibration:
            folds = split_folds(sub, grouping, self.inner_folds, self.seed)
            if not folds:
                if grouping in NOVELTY_DIMS:
                    uncalibrated.append(grouping)
                continue
            truth, preds, labels, held_strata, in_train = [], [], [], [], []
            keys = group_key(sub, grouping).to_numpy(dtype=object)
            for k, (tr, te) in enumerate(folds):
                learner = self.fold_learner(fitted, X.shape[1], self.seed + 1 + k)
                pred = (np.zeros(len(te)) if learner is None
                        else learner.fit(X[tr], y[tr], None if w is None else w[tr]).predict(X[te]))
                if self.residual:
                    pred = np.clip(pred, -MAX_LOG_CORRECTION, MAX_LOG_CORRECTION)  # as predict_arrays does
                truth.append(y[te])
                preds.append(pred)
                labels.append(keys[te])
                held_strata.append(strata[te])
                in_train.append(np.isin(strata[te], strata[tr]))
            held[grouping] = HeldOut(*(np.concatenate(a) for a in (truth, preds, labels, held_strata, in_train)))
        made = calibrate_held_out(held, self.coverage, self.residual, self.shrink)
        uncalibrated += [g for g in made.uncalibrated if g not in uncalibrated]
        offsets = dict(made.offsets)
        if not offsets and self.make_learner(X.shape[1], self.seed) is None:
            offsets["random"] = conformal_offsets(y, self.coverage)  # physics alone: its residuals as they are
        physics_offsets = {}
        if self.residual:  # y is log(measured / physics): the physics answer's own errors, for physics-only rows
            physics_offsets = {"*": conformal_offsets(y, self.coverage), **stratum_offsets(y, strata, self.coverage)}
        report = {"n": int(len(y)), **made.report}
        return IntervalCalibration(self.coverage, offsets, seen_keys(sub), made.shrink, tuple(uncalibrated),
                                   transfer=self.transfer_novelty, group_shift=made.group_shift, strata=made.strata,
                                   physics_offsets=physics_offsets,
                                   seen_strata=frozenset(str(v) for v in strata.tolist())), report

    # --- prediction -------------------------------------------------------------------------------------
    def predict_arrays(self, frame: pd.DataFrame | Columns) -> dict[str, np.ndarray]:
        """`pred_<target>`, `_lo`, `_hi` arrays (NaN on rows of other kinds) for every kind present in `frame`: a
        measurement frame, or a column table that already holds the physics (`features.frame.physics_columns`)."""
        if isinstance(frame, Columns) and type(self).prepare is not FrameModel.prepare:
            frame = pd.DataFrame({c: frame[c] for c in frame})  # families with their own columns (descriptors)
        cols = frame if isinstance(frame, Columns) else columns_of(self.prepare(frame))
        n = cols.n
        kinds = np.asarray(cols["kind"], dtype=object)
        out: dict[str, np.ndarray] = {}
        for kind, targets in PHYSICS_TARGETS.items():
            if n == 1 and kinds[0] != kind:  # one row: only its own kind
                continue
            mask = kinds == kind
            if not mask.any():
                continue
            whole = bool(mask.all())
            sub = cols if whole else RowSubset(cols, np.flatnonzero(mask))
            space = self.spaces_.get(kind)
            keys = row_novelty(sub) if self.calibration_ else None
            bounds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
            for t in targets:
                key = self._shared_source(t) or t
                if key not in bounds:
                    cal = self.calibration_.get(key) or IntervalCalibration(self.coverage)
                    bounds[key] = cal.terms(sub, keys)
            logs = log_physics(sub, targets)  # log physics answers of the kind's targets, in one pass
            corrections = self._corrections(kind, targets, space, sub, bounds, logs)
            keys_of = {t: self._shared_source(t) or t for t in targets}
            points, lo_offs, hi_offs = [], [], []
            for t in targets:
                key = keys_of[t]
                trust, lo_off, hi_off = bounds[key]
                if self.residual or key not in corrections:
                    # no measurements of this target: the physics answer
                    points.append(logs[t] + trust * corrections[key] if key in corrections else logs[t])
                else:
                    points.append(corrections[key])
                lo_offs.append(lo_off)
                hi_offs.append(hi_off)
            # every target of the kind in one pass: point, low and high ends as (3, targets, rows)
            point = np.array(points)  # (targets, rows)
            vals = np.exp(np.array([point, point + np.array(lo_offs), point + np.array(hi_offs)]))
            for i, t in enumerate(targets):
                for col, v in zip(pred_cols(t), vals[:, i]):
                    if whole:
                        out[col] = v
                    else:
                        full = np.full(n, np.nan)
                        full[mask] = v
                        out[col] = full
        return out

    def _corrections(self, kind: str, targets, space: FeatureSpace | None, sub: Columns,
                     bounds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], logs: dict[str, np.ndarray]
                     ) -> dict[str, np.ndarray]:
        """Per learned target of `kind`: the clipped log correction (residual families; 0 where the target's trust
        in it (`bounds`, from `IntervalCalibration.terms`) is 0, which large batches skip computing) or the log
        prediction (other families). `logs`: the log physics answer of each target (`log_physics`)."""
        learned = [t for t in targets if t in self.learners_]
        if not learned:
            return {}
        X = space.matrix(sub)
        if not self.residual:
            return {t: self.learners_[t].predict(X) for t in learned}
        fast = self._fast_forest(kind, learned) if sub.n <= FAST_PATH_ROWS else None
        if fast is not None:  # one vectorised walk over every target's trees
            Xe = np.empty((sub.n, X.shape[1] - 1 + len(learned)), dtype=np.float32)
            Xe[:, : X.shape[1] - 1] = X[:, :-1]
            Xe[:, X.shape[1] - 1:] = np.array([logs[t] for t in learned]).T
            margins = np.clip(fast.predict(Xe), -MAX_LOG_CORRECTION, MAX_LOG_CORRECTION)
            return {t: margins[:, j] for j, t in enumerate(learned)}
        else:
            raw = {}
            for t in learned:
                X[:, -1] = logs[t]
                need = bounds[t][0] > 0 if t in bounds else None
                if need is None or need.all():
                    raw[t] = self.learners_[t].predict(X)
                else:  # rows the correction does not carry to (unseen GPU with one GPU in training, say)
                    raw[t] = np.zeros(sub.n)
                    if need.any():
                        raw[t][need] = self.learners_[t].predict(X[need])
        return {t: np.clip(r, -MAX_LOG_CORRECTION, MAX_LOG_CORRECTION) for t, r in raw.items()}

    def _fast_forest(self, kind: str, learned: list[str]):
        """The compiled forest of `kind`'s XGBoost learners (built once, not pickled); None for other learners."""
        cache = self.__dict__.setdefault("_fast", {})
        if kind not in cache:
            boosters = [getattr(self.learners_[t], "_booster", None) for t in learned]
            ok = all(b is not None and type(self.learners_[t]) is XGBLearner for t, b in zip(learned, boosters))
            n_base = len(self.spaces_[kind].names) - 1
            cache[kind] = CompiledForest.from_boosters(boosters, n_base, per_booster_column=True) if ok else None
        return cache[kind]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_fast", None)  # derived from the boosters; rebuilt on first use
        return state

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The physics frame of `frame` with `pred_<target>`, `pred_<target>_lo`, `pred_<target>_hi` added."""
        framed = self.prepare(frame)
        preds = self.predict_arrays(framed)
        stale = [c for c in preds if c in framed.columns]
        base = framed.drop(columns=stale) if stale else framed
        return pd.concat([base, pd.DataFrame(preds, index=framed.index)], axis=1)


class ResidualModel(FrameModel):
    """XGBoost on the physics features predicting log(measured / physics); monotone in the physics answer.

    Few, fairly strong trees by default: the correction is smooth, and 100,000-row predictions must stay fast.
    """

    family = "residual-xgb"
    # in serving rows the raw layout numbers name a whole deployment rather than describe it: trees split on them
    # as group identifiers (with plain TP1 held out, TP=1 in training was only DP/EP layouts whose TTFT physics
    # misses by e^4, and the held-out TP1 rows got that correction: leave-layout-out TTFT 70% median error, 55%
    # coverage). The serving correction reads the layout only through the physics terms it shapes (weights and KV
    # per GPU, communication time, batch limits), which carry over to layouts not in training: leave-layout-out TTFT
    # 38%, coverage 74% (benchmarks/accuracy.py). In step rows TP is the shard shape of the timed kernels: kept.
    excluded_features: ClassVar[dict[str, tuple[str, ...]]] = {"serving": (*LAYOUT_DESCRIPTORS, "cat_source")}
    defaults = {
        "n_estimators": 60, "max_depth": 6, "learning_rate": 0.15, "min_child_weight": 1.0, "subsample": 0.8,
        "colsample_bytree": 0.8, "reg_lambda": 1.0, "reg_alpha": 0.0, "monotone_phys": 1,
    }

    def make_learner(self, n_features: int, seed: int):
        h = dict(self.hyper)
        mono = int(h.pop("monotone_phys"))
        monotone = (0,) * (n_features - 1) + (mono,) if self.residual else None
        return XGBLearner(monotone=monotone, seed=seed, **h)


def balanced_subsample(idx: np.ndarray, groups: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """At most `max_rows` of `idx`, shared evenly between groups (sources): small ones are kept whole, so a big
    data set cannot crowd out a small one that measures something else."""
    codes, _ = pd.factorize(groups)
    sizes = np.bincount(codes)
    quota, left = np.zeros(len(sizes), dtype=int), max_rows
    for rank, g in enumerate(np.argsort(sizes, kind="stable")):
        quota[g] = min(int(sizes[g]), left // (len(sizes) - rank))
        left -= quota[g]
    rng = np.random.default_rng(seed)
    picked = [rng.choice(idx[codes == g], quota[g], replace=False) if quota[g] < sizes[g] else idx[codes == g]
              for g in range(len(sizes))]
    return np.sort(np.concatenate(picked))


def log_physics(frame, targets) -> dict[str, np.ndarray]:
    """`nan_safe_log` of the physics answer of each of `targets`, taken in one pass over all of them."""
    if not targets:
        return {}
    logs = nan_safe_log(np.array([physics_answer(frame, t) for t in targets], dtype=float))
    return dict(zip(targets, logs))


def nan_safe_log(x: np.ndarray) -> np.ndarray:
    """log(x) with NaN for non-positive or missing values (no warnings)."""
    x = np.asarray(x, dtype=float)
    out = np.full(x.shape, math.nan)
    ok = np.isfinite(x) & (x > 0)
    out[ok] = np.log(x[ok])
    return out
