"""Replay backend: answers a measurement request from recorded rows, as if it had measured the configuration.

A request (a config dict, a Series or a one-row frame) matches the recorded rows whose every configuration column
(`features.schema.CONFIG_COLUMNS`, after `conform`: layout defaults filled, empty equals empty) is equal to it;
`kind` and `engine` narrow the match when the request gives them. Model and GPU names are resolved to catalog names
first, so `h100` finds rows stored as `h100-sxm`. The matching rows come back as recorded (status included: an `oom`
row replays as an OOM); a configuration never recorded raises `ReplayUnavailable` (`lookup` returns None).
`candidates()` lists every configuration it can answer, without targets, so a campaign can treat it as a pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import InputError
from features.schema import COLUMNS, CONFIG_COLUMNS, conform

CONFIG_KEYS: tuple[str, ...] = tuple(CONFIG_COLUMNS)
NARROWING_KEYS: tuple[str, ...] = ("kind", "engine")
CANDIDATE_COLUMNS: tuple[str, ...] = NARROWING_KEYS + CONFIG_KEYS


def _row_key(frame: pd.DataFrame, columns) -> str:
    """`_keys` of the first row, without pandas column operations (one request at a time stays cheap)."""
    row = frame.iloc[0]
    return "\x1f".join("" if pd.isna(row[c]) else str(row[c]) for c in columns)


class ReplayUnavailable(LookupError):
    """The replayed recording holds no measurement of the requested configuration."""


def _keys(frame: pd.DataFrame, columns) -> pd.Series:
    """One string per row over `columns` of a conformed frame (empty values as an empty field)."""
    parts = [frame[c].astype(object).where(frame[c].notna(), "").astype(str) for c in columns]
    return parts[0].str.cat(parts[1:], sep="\x1f")


def _catalog_names(frame: pd.DataFrame) -> pd.DataFrame:
    """Model and GPU columns as catalog names where the catalog knows them (other values unchanged)."""
    from features.catalog import resolve_gpu, resolve_model

    out = frame.copy()
    for col, resolve in (("model", resolve_model), ("gpu", resolve_gpu)):
        if col not in out.columns:
            continue
        mapping = {}
        for v in pd.unique(out[col].dropna()):
            try:
                mapping[v] = resolve(str(v)).name
            except (InputError, OSError):
                mapping[v] = v
        out[col] = out[col].map(lambda v, m=mapping: m.get(v, v))
    return out


class ReplayBackend:
    """A backend over recorded measurements: exact configuration match, rows returned as recorded."""

    name = "replay"

    def __init__(self, frame: pd.DataFrame):
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"ReplayBackend needs a measurement DataFrame, not {type(frame).__name__}")
        if len(frame) and "kind" not in frame.columns:
            raise InputError("the recorded frame has no 'kind' column: not a measurement frame")
        try:
            self.frame = conform(_catalog_names(frame.reset_index(drop=True)))
        except ValueError as e:
            raise InputError(f"the recorded frame does not fit the measurement schema: {e}") from None
        keys = _keys(self.frame, CONFIG_KEYS) if len(self.frame) else pd.Series([], dtype=object)
        groups = keys.groupby(keys, sort=False).indices
        self._index: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in groups.items()}

    @classmethod
    def from_store(cls, store, **filters) -> "ReplayBackend":
        """Replay what a `collect.store.Store` (or a store URL) holds, optionally filtered like `Store.read`."""
        from collect.store import Store

        if isinstance(store, Store):
            return cls(store.read(**filters))
        with Store(store, create=False) as s:
            return cls(s.read(**filters))

    @classmethod
    def from_file(cls, path: str | Path) -> "ReplayBackend":
        """Replay a schema CSV or parquet file (validated like `layoutcast import csv`)."""
        from collect.importers.csv_file import import_csv

        frame, _ = import_csv(path)
        return cls(frame)

    def __len__(self) -> int:
        return len(self.frame)

    def candidates(self) -> pd.DataFrame:
        """Every configuration this backend can answer (kind, engine and configuration columns, no targets)."""
        cand = self.frame[list(CANDIDATE_COLUMNS)]
        return cand.loc[~_keys(cand, CANDIDATE_COLUMNS).duplicated().to_numpy()].reset_index(drop=True)

    def _request_frame(self, request) -> pd.DataFrame:
        if isinstance(request, pd.DataFrame):
            if len(request) != 1:
                raise InputError(f"a replay request is one configuration; got a frame of {len(request)} rows")
            req = request.reset_index(drop=True)
        elif isinstance(request, pd.Series):
            req = request.to_frame().T.reset_index(drop=True)
        elif isinstance(request, Mapping):
            req = pd.DataFrame([dict(request)])
        else:
            raise InputError(f"a replay request is a config dict or a one-row frame, not {type(request).__name__}")
        unknown = [c for c in req.columns if c not in COLUMNS]
        if unknown:
            raise InputError(f"replay request has columns outside the measurement schema: {unknown}")
        narrowing = {c: req[c].iloc[0] for c in NARROWING_KEYS if c in req.columns and pd.notna(req[c].iloc[0])}
        req = req[[c for c in req.columns if c in CONFIG_KEYS]]
        try:
            conformed = conform(_catalog_names(req.assign(kind="serving")))
        except ValueError as e:
            raise InputError(f"replay request does not fit the measurement schema: {e}") from None
        for c, v in narrowing.items():
            conformed[c] = v
        return conformed.assign(**{c: pd.NA for c in NARROWING_KEYS if c not in narrowing})

    def lookup(self, request) -> pd.DataFrame | None:
        """The recorded rows for the requested configuration (status as recorded), or None if never recorded."""
        req = self._request_frame(request)
        idx = self._index.get(_row_key(req, CONFIG_KEYS))
        if idx is None:
            return None
        rows = self.frame.iloc[idx]
        for c in NARROWING_KEYS:
            v = req[c].iloc[0]
            if pd.notna(v):
                rows = rows[rows[c] == v]
        return rows.reset_index(drop=True) if len(rows) else None

    def available(self, request) -> bool:
        """Whether the recording can answer this configuration."""
        return self.lookup(request) is not None

    def measure(self, request) -> pd.DataFrame:
        """The recorded measurement rows for `request`; raises ReplayUnavailable when none was recorded."""
        rows = self.lookup(request)
        if rows is None:
            raise ReplayUnavailable("no recorded measurement for this configuration")
        return rows

    __call__ = measure
