"""Column tables: the columns of a measurement frame as plain numpy arrays, without pandas in the hot path.

The physics (`features.frame.physics_columns`) and the learned layer (`train.residual.FrameModel.predict_arrays`)
read their inputs through these: a pandas frame is wrapped once (`FrameColumns`, each column converted on first
access), a single scenario is a `Columns` of one-element arrays (no DataFrame at all: pandas costs milliseconds per
call on one row), and the rows of one kind are a `RowSubset` that takes only the columns actually read.
Numbers are float64 (NaN where missing), flags float (1/0, NaN where missing), text object arrays (None where missing).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import numpy as np
import pandas as pd


class Columns(Mapping):
    """A read-only mapping column name -> numpy array of `n` rows."""

    def __init__(self, arrays: Mapping[str, np.ndarray], n: int):
        self._arrays = dict(arrays)
        self.n = int(n)

    def __getitem__(self, col: str) -> np.ndarray:
        return self._arrays[col]

    def __contains__(self, col) -> bool:
        return col in self._arrays

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)


class _LazyColumns(Columns):
    """A column table whose arrays are made from a source on first access (and kept); membership, order and
    width are the source's."""

    def __init__(self, names, n: int):
        self._names = names
        self._arrays = {}
        self.n = int(n)

    @abstractmethod
    def _load(self, col: str) -> np.ndarray:
        """The array of `col`, made from the source."""

    def __getitem__(self, col: str) -> np.ndarray:
        v = self._arrays.get(col)
        if v is None:
            v = self._arrays[col] = self._load(col)
        return v

    def __contains__(self, col) -> bool:
        return col in self._names

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class FrameColumns(_LazyColumns):
    """The columns of a pandas frame, each converted to numpy on first access (and kept)."""

    def __init__(self, frame: pd.DataFrame):
        super().__init__(frame.columns, len(frame))
        self._frame = frame

    def _load(self, col: str) -> np.ndarray:
        return series_array(self._frame[col])


class RowSubset(_LazyColumns):
    """Rows `idx` of another column table, each column taken on first access (a wide frame is never copied)."""

    def __init__(self, base: Columns, idx: np.ndarray):
        super().__init__(base, len(idx))
        self._base = base
        self._idx = idx

    def _load(self, col: str) -> np.ndarray:
        return self._base[col][self._idx]


def series_array(s: pd.Series) -> np.ndarray:
    """A column as numpy: numbers and flags as float64 (NaN where missing), anything else as objects (None)."""
    dt = s.dtype
    if dt.kind in "fiub" or str(dt) in ("Int64", "Int32", "Float64", "boolean"):
        return s.to_numpy(dtype=float, na_value=np.nan)
    if dt == object:
        return s.to_numpy()
    return s.to_numpy(dtype=object, na_value=None)


def columns_of(table) -> Columns:
    """`table` (a pandas frame or a column table) as a column table."""
    return table if isinstance(table, Columns) else FrameColumns(table)


def float_array(v: np.ndarray) -> np.ndarray:
    """A column array as float64: numbers as they are, text parsed (anything unparsable or missing = NaN)."""
    v = np.asarray(v)
    if v.dtype.kind in "fiub":
        return v.astype(float, copy=False)
    return np.asarray(pd.to_numeric(pd.Series(v, dtype=object), errors="coerce"), dtype=float)


def n_rows(table) -> int:
    """Rows of a pandas frame or a column table."""
    return table.n if isinstance(table, Columns) else len(table)


def text_array(v: np.ndarray, missing: str = "") -> np.ndarray:
    """A text column array as objects with `missing` where a value is missing."""
    v = np.asarray(v, dtype=object)
    if len(v) == 1:  # one row (a single scenario): a plain check beats pd.isna's dispatch
        x = v[0]
        gap = x is None or x is pd.NA or x is pd.NaT or (isinstance(x, (float, np.floating)) and x != x)
        return np.array([missing], dtype=object) if gap else v
    gaps = pd.isna(v)
    return np.where(gaps, missing, v) if gaps.any() else v


class ChainColumns(Columns):
    """Two column tables of the same rows read as one: a column of `first` wins over one of the same name."""

    def __init__(self, first: Columns, second: Columns):
        self._first, self._second = first, second
        self.n = first.n

    def __getitem__(self, col: str) -> np.ndarray:
        return self._first[col] if col in self._first else self._second[col]

    def __contains__(self, col) -> bool:
        return col in self._first or col in self._second

    def __iter__(self):
        yield from self._first
        yield from (c for c in self._second if c not in self._first)

    def __len__(self) -> int:
        return sum(1 for _ in self)
