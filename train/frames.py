"""Feature frames for the learned models: the physics frame from `features`, training rows, feature matrices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.columns import Columns, columns_of, float_array
from features.errors import InputError
from features.schema import conform
from train.targets import PHYSICS_TARGETS, phys_col

# string columns whose values are worth a learned offset (engine differences, dtype, phase, the physics regime)
CATEGORICAL_COLUMNS = ("engine", "source", "weight_dtype", "kv_dtype", "phase", "op", "regime", "bottleneck")
FEATURE_PREFIX = "f_"


def is_physics_frame(frame: pd.DataFrame) -> bool:
    """True when `frame` already went through `features.frame.physics_frame` (has regime and f_ columns)."""
    return "regime" in frame.columns and any(c.startswith(FEATURE_PREFIX) for c in frame.columns)


def physics(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every physics answer (`phys_<target>`) and feature (`f_...`); computed once per frame."""
    if is_physics_frame(frame):
        return frame
    if "kind" not in frame.columns:
        raise InputError("measurement frame has no 'kind' column (serving, step or op)")
    from features.frame import physics_frame  # the physics model (features/frame.py)

    out = physics_frame(conform(frame))
    out.index = frame.index  # physics_frame keeps row order; keep the caller's row labels too
    return out


def target_rows(frame: pd.DataFrame, target: str, need_physics: bool = True) -> np.ndarray:
    """Boolean mask of rows usable to learn `target`: right kind, status ok, a positive measured value
    (and a positive physics answer when the model learns a residual on it)."""
    kind = next(k for k, ts in PHYSICS_TARGETS.items() if target in ts)
    if target not in frame.columns:
        return np.zeros(len(frame), dtype=bool)
    ok = (frame["kind"].astype("string") == kind).fillna(False).to_numpy(bool)
    if "status" in frame.columns:
        ok &= frame["status"].astype("string").fillna("ok").eq("ok").to_numpy(bool)
    meas = float_column(frame, target)
    ok &= np.isfinite(meas) & (meas > 0)
    if need_physics:
        phys = _phys(frame, target)
        ok &= np.isfinite(phys) & (phys > 0)
    return ok


def _first_float(v: np.ndarray) -> float:
    """The first value of a column array as `float_array` reads it."""
    return v[0] if isinstance(v, np.ndarray) and v.dtype.kind == "f" else float_array(v)[0]


def float_column(frame: pd.DataFrame, col: str, default: float = np.nan) -> np.ndarray:
    """A column as float64 (missing or absent = `default`), without pandas' slower coercion paths."""
    if isinstance(frame, Columns):  # a column table (numpy arrays)
        out = float_array(frame[col]) if col in frame else np.full(frame.n, default)
        return out if default != default else np.where(np.isnan(out), default, out)
    if col not in frame.columns:
        return np.full(len(frame), default)
    s = frame[col]
    try:
        out = s.to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError):
        out = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if not np.isnan(default):
        out = np.where(np.isnan(out), default, out)
    return out


def _phys(frame: pd.DataFrame, target: str) -> np.ndarray:
    return float_column(frame, phys_col(target))


def physics_answer(frame: pd.DataFrame, target: str) -> np.ndarray:
    """The physics model's answer for `target` on each row (NaN where physics has none)."""
    return _phys(frame, target)


@dataclass
class FeatureSpace:
    """The columns one kind's models read: numeric feature columns, then categorical codes, then log physics."""

    numeric: list[str] = field(default_factory=list)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    with_log_physics: bool = True

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, numeric_prefix: str = FEATURE_PREFIX, with_log_physics: bool = True,
                   categorical: tuple[str, ...] = CATEGORICAL_COLUMNS, exclude: tuple[str, ...] = ()):
        """Learn the feature list (numeric columns that vary, less `exclude`) and the category vocabularies of
        training rows (`cat_<column>` in `exclude` leaves a categorical column out)."""
        numeric = []
        for c in frame.columns:
            if not c.startswith(numeric_prefix) or c in exclude:
                continue
            v = pd.to_numeric(frame[c], errors="coerce") if frame[c].dtype == object else frame[c]
            if not (pd.api.types.is_numeric_dtype(v) or pd.api.types.is_bool_dtype(v)):
                continue
            v = v.astype("float64")
            if v.notna().any() and v.nunique(dropna=False) > 1:
                numeric.append(c)
        cats = {}
        for c in categorical:
            if c in frame.columns and f"cat_{c}" not in exclude:
                vals = sorted(frame[c].dropna().astype(str).unique().tolist())
                if len(vals) > 1:
                    cats[c] = {v: i for i, v in enumerate(vals)}
        return cls(numeric=numeric, categories=cats, with_log_physics=with_log_physics)

    @property
    def names(self) -> list[str]:
        """Feature names in matrix order."""
        return self.numeric + [f"cat_{c}" for c in self.categories] + (["log_phys"] if self.with_log_physics else [])

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 matrix of the features (missing = NaN); the log-physics column is left NaN for the caller."""
        cols = columns_of(frame)  # a pandas frame or a column table
        n = cols.n
        X = np.full((n, len(self.names)), np.nan, dtype=np.float32)
        if self.numeric:
            missing = [c for c in self.numeric if c not in cols]
            if missing:
                raise InputError(
                    f"the model needs feature columns this version of features does not produce ({sorted(missing)[0]}"
                    ", ...); retrain it with `layoutcast train`"
                )
            if n == 1:  # a single scenario: one row of Python floats beats a column copy per feature
                X[0, : len(self.numeric)] = [_first_float(cols[c]) for c in self.numeric]
            else:
                for j, c in enumerate(self.numeric):
                    X[:, j] = float_array(cols[c])
        j = len(self.numeric)
        for c, vocab in self.categories.items():
            if c in cols:
                values = np.asarray(cols[c], dtype=object)
                if n <= 64:  # a few rows: plain lookups beat factorising
                    X[:, j] = [vocab.get(v, np.nan) if isinstance(v, str) else np.nan for v in values]
                else:
                    codes, uniques = pd.factorize(values, use_na_sentinel=True)
                    lookup = np.array([vocab.get(u, np.nan) if isinstance(u, str) else np.nan for u in uniques]
                                      + [np.nan], dtype=np.float32)
                    X[:, j] = lookup[codes]  # code -1 (missing) picks the trailing NaN
            j += 1
        return X
