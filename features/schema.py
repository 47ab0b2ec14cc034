"""The one measurement schema every source is mapped into (DESIGN.md, "Measurement records")."""

from __future__ import annotations

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1

KINDS = ("serving", "step", "op")
STATUSES = ("ok", "oom", "error", "infeasible")

# column -> pandas dtype ("string", "float64", "Int64", "boolean")
PROVENANCE_COLUMNS = {
    "kind": "string",
    "source": "string",
    "engine": "string",
    "engine_version": "string",
    "measured_at": "string",
    "status": "string",
}
CONFIG_COLUMNS = {
    "model": "string",
    "weight_dtype": "string",
    "kv_dtype": "string",
    "gpu": "string",
    "num_gpus": "Int64",
    "gpus_per_node": "Int64",
    "tp": "Int64",
    "pp": "Int64",
    "dp": "Int64",
    "ep": "Int64",
    "attention_dp": "boolean",
    "isl": "float64",
    "osl": "float64",
    "isl_dist": "string",
    "osl_dist": "string",
    "num_requests": "Int64",
    "concurrency": "Int64",
    "request_rate": "float64",
    "max_num_seqs": "Int64",
    "max_num_batched_tokens": "Int64",
    "gpu_memory_utilization": "float64",
    "block_size": "Int64",
    "phase": "string",
    "batch": "Int64",
    "context": "float64",
    "tokens": "float64",
    "op": "string",
}
SERVING_TARGETS = (
    "output_throughput",
    "total_throughput",
    "request_throughput",
    "ttft_ms",
    "tpot_ms",
    "ttft_p99_ms",
    "tpot_p99_ms",
    "makespan_s",
    "kv_capacity_tokens",
    "preemptions",
)
STEP_TARGETS = ("layer_ms", "lm_head_ms")
OP_TARGETS = ("op_ms",)
TARGET_COLUMNS = {t: "float64" for t in SERVING_TARGETS + STEP_TARGETS + OP_TARGETS}
# extra columns some sources fill: free-form detail kept for provenance and op shapes
EXTRA_COLUMNS = {
    "derived": "string",  # comma-separated target names computed from other measured values, not measured
    "detail": "string",  # JSON: source-specific fields (op shape m/n/k, message size, effective engine config)
    "run_id": "string",
}

COLUMNS: dict[str, str] = {**PROVENANCE_COLUMNS, **CONFIG_COLUMNS, **TARGET_COLUMNS, **EXTRA_COLUMNS}
DEFAULTS = {"tp": 1, "pp": 1, "dp": 1, "ep": 1, "attention_dp": False, "status": "ok"}


def empty_frame() -> pd.DataFrame:
    """A zero-row frame with every schema column and dtype."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def _to_float(s: pd.Series) -> np.ndarray:
    """A float array of a numeric-looking column (missing or non-numeric = NaN)."""
    if s.dtype.kind in "fiub" or str(s.dtype) in ("Int64", "Float64"):
        return s.to_numpy(dtype=float, na_value=np.nan)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _to_int64(s: pd.Series) -> pd.arrays.IntegerArray:
    """A nullable Int64 array of a numeric-looking column (rounded; missing or non-numeric = NA), built directly."""
    x = _to_float(s)
    mask = ~np.isfinite(x)
    return pd.arrays.IntegerArray(np.where(mask, 0, np.round(x)).astype(np.int64), mask)


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Return `df` with every schema column present (missing = NaN), defaults filled, dtypes coerced.

    Columns outside the schema are kept at the end (features, predictions). `num_gpus` is filled from the layout.
    Built column by column into a dict and assembled once (fast for one row and for 100,000).
    """
    out = pd.DataFrame(conform_arrays(df), index=df.index)
    rest = [c for c in df.columns if c not in COLUMNS]
    if rest:
        out = pd.concat([out, df[rest]], axis=1)
    return out


def conform_arrays(df: pd.DataFrame) -> dict[str, object]:
    """The schema columns of `conform(df)` as arrays (text as object arrays, Int64/boolean as pandas arrays), in
    schema order, before any frame is built: callers that only compute on them skip pandas' text conversions."""
    n = len(df)
    cols: dict[str, object] = {}
    for col, dtype in COLUMNS.items():
        if col not in df.columns:
            default = DEFAULTS.get(col)
            if dtype == "float64":
                cols[col] = np.full(n, np.nan if default is None else default, dtype=float)
            elif dtype == "string":
                cols[col] = np.full(n, default, dtype=object)
            elif dtype == "Int64":
                cols[col] = pd.arrays.IntegerArray(np.full(n, 0 if default is None else default, dtype=np.int64),
                                                   np.full(n, default is None))
            elif dtype == "boolean":
                cols[col] = pd.arrays.BooleanArray(np.full(n, bool(default)), np.full(n, default is None))
            else:
                cols[col] = pd.array([pd.NA if default is None else default] * n, dtype=dtype)
            continue
        s = df[col]
        try:
            if dtype == "float64":
                v = _to_float(s)
            elif dtype == "Int64":
                v = s.array if str(s.dtype) == "Int64" else _to_int64(s)
            elif dtype == "boolean":
                v = s.array if str(s.dtype) == "boolean" else pd.array([_to_bool(x) for x in s], dtype="boolean")
            else:  # text as plain Python objects (None when missing): far cheaper than Arrow strings to index
                v = s.to_numpy(dtype=object, na_value=None) if s.dtype == object or str(s.dtype).startswith(("string", "str")) \
                    else s.astype(object).to_numpy()
                v = np.array([None if x is None or (isinstance(x, float) and x != x) else str(x) for x in v], dtype=object) \
                    if len(v) < 64 else _clean_text(v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"column {col!r} cannot be read as {dtype}: {e}") from None
        if col in DEFAULTS:
            if dtype == "float64":
                v = np.where(np.isnan(v), DEFAULTS[col], v)
            elif dtype == "string":
                v = np.where(pd.isna(v), DEFAULTS[col], v).astype(object)
            else:
                v = pd.array(pd.Series(v, index=df.index).fillna(DEFAULTS[col]), dtype=dtype)
        cols[col] = v
    gpus = pd.array(cols["num_gpus"], dtype="Int64")
    missing_gpus = gpus.isna()
    if missing_gpus.any():
        layout = pd.array(cols["tp"], dtype="Int64") * pd.array(cols["pp"], dtype="Int64") * pd.array(cols["dp"], dtype="Int64")
        gpus = gpus.copy()
        gpus[missing_gpus] = layout[missing_gpus]
        cols["num_gpus"] = gpus
    return cols


def _clean_text(v: np.ndarray) -> np.ndarray:
    """Object array of str/None from any array of text-like values (NaN and pd.NA become None)."""
    missing = pd.isna(v)
    out = v.astype(object)
    out[missing] = None
    if not all(isinstance(x, str) for x in out[~missing][:8]):
        out[~missing] = [str(x) for x in out[~missing]]
    return out


def _to_bool(v):
    if v is pd.NA or v is None or (isinstance(v, float) and np.isnan(v)):
        return pd.NA
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "t", "y")
    return bool(v)


def targets_for_kind(kind: str) -> tuple[str, ...]:
    return {"serving": SERVING_TARGETS, "step": STEP_TARGETS, "op": OP_TARGETS}[kind]
