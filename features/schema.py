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


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Return `df` with every schema column present (missing = NaN), defaults filled, dtypes coerced.

    Columns outside the schema are kept at the end (features, predictions). `num_gpus` is filled from the layout.
    """
    df = df.copy()
    for col, dtype in COLUMNS.items():
        if col not in df.columns:
            df[col] = pd.Series(np.nan if dtype == "float64" else pd.NA, index=df.index, dtype=dtype)
    for col, default in DEFAULTS.items():
        df[col] = df[col].fillna(default) if len(df) else df[col]
    for col, dtype in COLUMNS.items():
        try:
            if dtype == "float64":
                df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
            elif dtype == "Int64":
                df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
            elif dtype == "boolean":
                df[col] = df[col].map(_to_bool).astype("boolean")
            else:
                df[col] = df[col].astype("string")
        except (TypeError, ValueError) as e:
            raise ValueError(f"column {col!r} cannot be read as {dtype}: {e}") from None
    missing_gpus = df["num_gpus"].isna()
    if missing_gpus.any():
        df.loc[missing_gpus, "num_gpus"] = (df["tp"] * df["pp"] * df["dp"])[missing_gpus]
    rest = [c for c in df.columns if c not in COLUMNS]
    return df[list(COLUMNS) + rest]


def _to_bool(v):
    if v is pd.NA or v is None or (isinstance(v, float) and np.isnan(v)):
        return pd.NA
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "t", "y")
    return bool(v)


def targets_for_kind(kind: str) -> tuple[str, ...]:
    return {"serving": SERVING_TARGETS, "step": STEP_TARGETS, "op": OP_TARGETS}[kind]
