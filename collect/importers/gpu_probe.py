"""Importer for this project's GPU probe (`data/gpu_probe`): decoder-layer step times and GEMM/attention/copy/MoE ops.

decode/prefill rows become `kind=step` (`layer_ms` = median replay time per layer, `lm_head_ms`); gemm, attn, copy and
moe rows become `kind=op` (`op_ms`) with the op shape in `detail` (m, n, k, batch, context, tokens, bytes, FLOPs, ep).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from features.errors import InputError
from collect.importers._common import (ImportReport, NameResolver, detail_from_columns, finish, numeric,
                                       read_csv_checked, require_path, require_values)

SOURCE = "gpu-probe"
REQUIRED = ("kind", "model", "tp", "batch", "context", "tokens", "m", "n", "k", "ms_median", "lm_head_ms",
            "weight_bytes_layer", "kv_bytes_layer", "flops_layer", "gpu", "torch")
NUMERIC = ("tp", "batch", "context", "tokens", "m", "n", "k", "layers_timed", "ms_median", "ms_min", "ms_max",
           "lm_head_ms", "graph", "weight_bytes_layer", "kv_bytes_layer", "flops_layer", "mem_gb", "ep", "run")
OP_NAMES = {"gemm": "gemm", "attn": "attn_decode", "copy": "copy", "moe": "moe_ffn"}
STEP_KINDS = ("decode", "prefill")
DETAIL = {"m": "m", "n": "n", "k": "k", "batch": "batch", "context": "context", "tokens": "tokens",
          "weight_bytes_layer": "weight_bytes_layer", "kv_bytes_layer": "kv_bytes_layer", "flops_layer": "flops_layer",
          "ep": "ep", "ms_min": "ms_min", "ms_max": "ms_max", "layers_timed": "layers_timed", "graph": "cuda_graph",
          "impl": "impl", "run": "run", "mem_gb": "gpu_mem_gb", "cuda": "cuda"}


def _measured_date(folder: Path) -> str | None:
    """The measurement date the probe's README states ("Measured ... on YYYY-MM-DD"), if there is one."""
    readme = folder / "README.md"
    if readme.is_file():
        m = re.search(r"[Mm]easured\b[^.]*?\bon (\d{4}-\d{2}-\d{2})", readme.read_text(errors="replace"))
        if m:
            return m.group(1)
    return None


def import_gpu_probe(path: str | Path) -> tuple[pd.DataFrame, ImportReport]:
    """Rows of every probe CSV in the folder `path` (or the one CSV `path`) in the measurement schema."""
    p = require_path(path, SOURCE)
    files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"{SOURCE}: no CSV files in {str(p)!r}")
    report = ImportReport(SOURCE, str(p), files=len(files))
    names = NameResolver()
    measured_at = _measured_date(p if p.is_dir() else p.parent)
    frames = []
    for f in files:
        raw = read_csv_checked(f, REQUIRED)
        require_values(raw, ["kind", "ms_median", "gpu"], f)
        numeric(raw, [c for c in NUMERIC if c in raw.columns], f)
        if "cuda" in raw.columns:
            raw["cuda"] = raw["cuda"].map(lambda v: None if pd.isna(v) else str(v))
        report.rows_read += len(raw)
        known = raw["kind"].isin(STEP_KINDS + tuple(OP_NAMES))
        for k, n in raw.loc[~known, "kind"].value_counts().items():
            report.leave_out(f"unknown probe kind {k!r}", n)
        raw = raw.loc[known].reset_index(drop=True)
        is_step = raw["kind"].isin(STEP_KINDS)
        out = pd.DataFrame({
            "kind": is_step.map({True: "step", False: "op"}),
            "source": SOURCE,
            "engine": "torch",
            "engine_version": raw["torch"].astype("string"),
            "measured_at": measured_at,
            "status": "ok",
            "model": names.map_models(raw["model"]),
            "weight_dtype": "bf16",
            "kv_dtype": "bf16",
            "gpu": names.map_gpus(raw["gpu"]),
            "tp": raw["tp"].fillna(1),
            "ep": raw["ep"].fillna(1) if "ep" in raw.columns else 1,
            "phase": raw["kind"].where(is_step, raw["kind"].map({"attn": "decode"})),
            "batch": raw["batch"],
            "context": raw["context"],
            "tokens": raw["tokens"].where(raw["tokens"].notna() | (raw["kind"] != "gemm"), raw["m"]),
            "op": raw["kind"].map(OP_NAMES),
            "layer_ms": raw["ms_median"].where(is_step),
            "lm_head_ms": raw["lm_head_ms"].where(is_step),
            "op_ms": raw["ms_median"].where(~is_step),
            "detail": detail_from_columns(raw, DETAIL, {"file": f.name}),
            "run_id": f"{SOURCE}:{f.stem}",
        })
        frames.append(out)
    names.raise_if_unknown(SOURCE)
    report.notes.append("step rows: layer_ms = median replay time per decoder layer (one TP shard, no all-reduce); "
                        "op rows: gemm, attn_decode, copy, moe_ffn with the shape in detail")
    return finish(pd.concat(frames, ignore_index=True), report), report
