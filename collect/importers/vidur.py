"""Importer for Vidur's operator profiles (microsoft/vidur `data/profiling`): `kind=op` rows, `op_ms` = median time.

- `compute/<gpu>/<org>/<model>/mlp.csv`: one profile row times the decoder's ops (emb, input_layernorm, attn_pre_proj
  = QKV GEMM, attn_rope, attn_post_proj = O GEMM, post_attention_layernorm, mlp_up_proj, mlp_act, mlp_down_proj, add)
  at `num_tokens` tokens under TP = `num_tensor_parallel_workers`: each op becomes one row named as in Vidur.
- `legacy_a100/attention.csv`: attention kernels (`attn_prefill` / `attn_decode`, plus the reshape kernels) vs batch,
  KV-cache size and prefill chunk, for the model shape in `detail` (no model name in the file).
- `network/<gpu>_<topology>/{all_reduce,send_recv}.csv`: collectives (`allreduce`, `sendrecv`) vs message `size`
  over `num_workers` GPUs with `devices_per_node` of them on one node.
A record is one (profile row, op) pair; pairs whose timing is empty (a decode kernel on a prefill row) are reported.
Engine: `vidur` for the compute profiles (Vidur's profiler running Sarathi/vLLM kernels; no version recorded),
`nccl` for the collectives (torch.distributed over NCCL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from collect.importers._common import (ImportReport, NameResolver, detail_from_columns, finish, numeric,
                                       read_csv_checked, require_path, with_progress)
from features.errors import InputError

SOURCE = "vidur"
COMPUTE_SHAPE = {"n_head": "n_head", "n_kv_head": "n_kv_head", "n_embd": "n_embd", "n_expanded_embd": "n_expanded_embd",
                 "vocab_size": "vocab_size", "use_gated_mlp": "use_gated_mlp"}
ATTN_SHAPE = {"n_embd": "n_embd", "n_q_head": "n_q_head", "n_kv_head": "n_kv_head", "block_size": "block_size",
              "max_model_len": "max_model_len", "batch_size": "batch_size", "prefill_chunk_size": "prefill_chunk_size",
              "kv_cache_size": "kv_cache_size", "attention_backend": "attention_backend",
              "profile_method": "profile_method"}
NET_OPS = {"all_reduce": "allreduce", "send_recv": "sendrecv"}


def _ops_in(df: pd.DataFrame) -> list[str]:
    """Op names with timing columns `time_stats.<op>.median` in a Vidur profile."""
    return [c[len("time_stats."):-len(".median")] for c in df.columns
            if c.startswith("time_stats.") and c.endswith(".median")]


def _stat_detail(df: pd.DataFrame, op: str) -> dict[str, str]:
    return {f"time_stats.{op}.{s}": f"{s}_ms" for s in ("min", "max", "mean", "std")}


def _expand(raw: pd.DataFrame, base: dict, shape: dict[str, str], report: ImportReport, constant: dict,
            per_op=None) -> list[pd.DataFrame]:
    """One frame per op column of a profile: rows with a timing; the empty ones are counted as left out."""
    frames = []
    for op in _ops_in(raw):
        med = pd.to_numeric(raw[f"time_stats.{op}.median"], errors="coerce")
        report.rows_read += len(raw)
        has = med.notna() & (med >= 0)
        report.leave_out("no timing for this op in the profile row (e.g. a decode kernel on a prefill row)",
                         int((~has).sum()))
        if not has.any():
            continue
        sub = raw.loc[has].reset_index(drop=True)
        cols = {k: (v.loc[has].reset_index(drop=True) if isinstance(v, pd.Series) else v) for k, v in base.items()}
        if per_op:
            cols.update(per_op(op, sub))
        frames.append(pd.DataFrame({**cols, "op": op, "op_ms": med[has].to_numpy(),
                                    "detail": detail_from_columns(sub, {**shape, **_stat_detail(sub, op)}, constant)}))
    return frames


def _compute(f: Path, root: Path, names: NameResolver, report: ImportReport) -> list[pd.DataFrame]:
    gpu_dir, *model_parts = f.parent.relative_to(root / "compute").parts
    raw = read_csv_checked(f, ("num_tokens", "num_tensor_parallel_workers"))
    numeric(raw, [c for c in raw.columns if c.startswith("time_stats.") or c in
                  ("num_tokens", "num_tensor_parallel_workers", "n_head", "n_kv_head", "n_embd", "n_expanded_embd",
                   "vocab_size")], f)
    report.files += 1
    model_id = "/".join(model_parts)
    base = {"kind": "op", "source": SOURCE, "engine": "vidur", "status": "ok", "model": names.model(model_id),
            "gpu": names.gpu(gpu_dir), "tp": raw["num_tensor_parallel_workers"], "tokens": raw["num_tokens"],
            "run_id": f"{SOURCE}:{f.relative_to(root).as_posix()}"}
    return _expand(raw, base, COMPUTE_SHAPE, report, {"model_id": model_id, "profile": "mlp"})


def _attention(f: Path, root: Path, names: NameResolver, report: ImportReport) -> list[pd.DataFrame]:
    raw = read_csv_checked(f, ("batch_size", "kv_cache_size", "prefill_chunk_size", "is_prefill",
                               "num_tensor_parallel_workers"))
    numeric(raw, [c for c in raw.columns if c.startswith("time_stats.") or c in
                  ("batch_size", "kv_cache_size", "prefill_chunk_size", "num_tensor_parallel_workers", "n_embd",
                   "n_q_head", "n_kv_head", "block_size", "max_model_len")], f)
    report.files += 1
    prefill = raw["is_prefill"].astype(str).str.lower().isin(["true", "1"])
    gpu_dir = f.parent.name.replace("legacy_", "")
    batch, kv, chunk = raw["batch_size"], raw["kv_cache_size"], raw["prefill_chunk_size"]
    base = {"kind": "op", "source": SOURCE, "engine": "vidur", "status": "ok", "gpu": names.gpu(gpu_dir),
            "tp": raw["num_tensor_parallel_workers"], "phase": prefill.map({True: "prefill", False: "decode"}),
            "batch": batch, "context": kv + chunk.where(prefill, 0), "tokens": (batch * chunk).where(prefill, batch),
            "block_size": raw["block_size"] if "block_size" in raw else np.nan,
            "run_id": f"{SOURCE}:{f.relative_to(root).as_posix()}"}
    return _expand(raw, base, ATTN_SHAPE, report, {"profile": "attention", "model_id": "unknown (shape in detail)"})


def _network(f: Path, root: Path, names: NameResolver, report: ImportReport) -> list[pd.DataFrame]:
    raw = read_csv_checked(f, ("num_workers", "size", "collective", "devices_per_node"))
    numeric(raw, [c for c in raw.columns if c.startswith("time_stats.") or c in
                  ("num_workers", "size", "devices_per_node", "max_devices_per_node", "rank")], f)
    report.files += 1
    system = f.parent.name  # e.g. a100_dgx, h100_pairwise_nvlink
    gpu_part, _, topology = system.partition("_")
    workers = raw["num_workers"]
    is_p2p = raw["collective"].astype(str) == "send_recv"
    base = {"kind": "op", "source": SOURCE, "engine": "nccl", "status": "ok", "gpu": names.gpu(system),
            "num_gpus": workers, "gpus_per_node": raw["devices_per_node"],
            "tp": workers.where(~is_p2p, 1), "pp": workers.where(is_p2p, 1),
            "run_id": f"{SOURCE}:{f.relative_to(root).as_posix()}"}
    frames = _expand(raw, base, {"size": "message_size", "devices_per_node": "devices_per_node",
                                 "max_devices_per_node": "max_devices_per_node", "rank": "rank"},
                     report, {"topology": topology or system, "gpu_folder": gpu_part})
    for fr in frames:
        fr["op"] = fr["op"].map(NET_OPS).fillna(fr["op"])
    return frames


def import_vidur(path: str | Path, progress: bool = False) -> tuple[pd.DataFrame, ImportReport]:
    """Op rows of the Vidur profiling folder `path` (compute/, legacy_a100/, network/) in the schema."""
    root = require_path(path, SOURCE, is_dir=True)
    jobs = [(f, _compute) for f in sorted(root.glob("compute/*/*/*/mlp.csv"))]
    jobs += [(f, _attention) for f in sorted(root.glob("*/attention.csv"))]
    jobs += [(f, _network) for f in sorted(root.glob("network/*/*.csv"))]
    if not jobs:
        raise InputError(f"{SOURCE}: no compute/*/*/*/mlp.csv, */attention.csv or network/*/*.csv under {str(root)!r}")
    report = ImportReport(SOURCE, str(root))
    names = NameResolver()
    frames = []
    for f, fn in with_progress(jobs, progress, "reading Vidur profiles"):
        frames.extend(fn(f, root, names, report))
    names.raise_if_unknown(SOURCE)
    report.notes.append("op_ms = median of Vidur's repeated timings (min/max/mean/std in detail); one record per "
                        "(profile row, op); attention.csv holds one model shape (in detail), no model name")
    return finish(pd.concat(frames, ignore_index=True), report), report
