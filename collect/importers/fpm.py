"""Importer for aiconfigurator's vLLM "forward pass metrics" golden runs (`fpm_golden_runs_vllm/`).

Each row of a case's `fpm_metrics_phase.csv` is one engine iteration of vLLM 0.20.1 on one (DP rank of a) deployment:
its batch composition (prefill and decode requests and tokens, KV tokens) and its latency. Rows become `kind=step`
with `phase` prefill / decode / mixed (chunked prefill with decodes), `batch` = requests in the step, `tokens` = tokens
in the step, `context` = mean KV tokens per request after the step. The whole iteration (all layers, TP/EP
communication, sampling) is in `detail.iteration_ms`; `layer_ms` = iteration_ms / the model's layer count is derived
from it (named in `derived`), so it includes communication, unlike a probe layer time.
Layout from the launch arguments (the effective config does not record EP/DP): `--enable-expert-parallel` with TP=T
and DP=D gives EP = T x D (KNOB_MAPPING.md). The GPU type is not recorded; the branch README places the validation
data under b300_sxm, so rows are stored as `b300` with that caveat in `detail.gpu_note`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from collect.importers._common import (ImportReport, NameResolver, detail_from_columns, dtype_name, finish, numeric,
                                       read_csv_checked, require_path, require_values, with_progress)
from features.catalog import resolve_model
from features.errors import InputError

SOURCE = "fpm"
FOLDER = "fpm_golden_runs_vllm"
PHASE_FILE = "fpm_metrics_phase.csv"
META_FILE = "vllm_metadata.json"
GPU = "b300"
GPU_NOTE = "GPU not recorded; b300 per the source README (unconfirmed)"
REQUIRED = ("phase", "ctx_tokens", "ctx_requests", "ctx_kv_tokens", "decode_tokens", "decode_requests",
            "decode_kv_tokens", "latency_ms")
NUMERIC = ("ctx_tokens", "ctx_requests", "ctx_kv_tokens", "decode_tokens", "decode_requests", "decode_kv_tokens",
           "mean_decode_kv_tokens", "queued_ctx_tokens", "queued_ctx_requests", "queued_decode_requests",
           "queued_decode_kv_tokens", "latency_ms", "counter_id", "dp_rank")
PHASES = {"context": "prefill", "decode": "decode", "mixed": "mixed"}
DETAIL = {c: c for c in ("ctx_tokens", "ctx_requests", "ctx_kv_tokens", "decode_tokens", "decode_requests",
                         "decode_kv_tokens", "queued_ctx_tokens", "queued_ctx_requests", "queued_decode_requests",
                         "queued_decode_kv_tokens", "workload_segment", "dp_rank")}
DETAIL.update({"counter_id": "iteration", "latency_ms": "iteration_ms"})


def _arg(args: list[str], flag: str) -> str | None:
    """The value after `flag` in a launch argument list (`--flag value` or `--flag=value`)."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _case_config(meta_path: Path) -> dict:
    """Engine, layout and knobs of one run from its `vllm_metadata.json`."""
    try:
        meta = json.loads(meta_path.read_text())
        args = [str(a) for a in meta["requested"]["engine_args"]]
        eff = meta.get("effective_config") or {}
    except FileNotFoundError:
        raise InputError(f"{SOURCE}: {str(meta_path)!r} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{SOURCE}: {str(meta_path)!r} is not a vLLM metadata file ({e})") from None
    try:
        tp = int(_arg(args, "--tensor-parallel-size") or eff.get("parallel_config.tensor_parallel_size") or 1)
        pp = int(_arg(args, "--pipeline-parallel-size") or eff.get("parallel_config.pipeline_parallel_size") or 1)
        dp = int(_arg(args, "--data-parallel-size") or 1)
    except ValueError as e:
        raise InputError(f"{SOURCE}: {str(meta_path)!r}: bad parallel size ({e})") from None
    ep = tp * dp if "--enable-expert-parallel" in args else 1
    cache = str(eff.get("cache_config.cache_dtype") or _arg(args, "--kv-cache-dtype") or "auto")
    act = str(eff.get("model_config.dtype") or "").replace("torch.", "")
    quant = _arg(args, "--quantization")
    return {
        "model_id": _arg(args, "--model") or (meta.get("requested", {}).get("deployment_config") or {}).get("model"),
        "tp": tp, "pp": pp, "dp": dp, "ep": ep,
        "engine_version": eff.get("vllm_version"),
        "kv_dtype": dtype_name(act) if cache == "auto" else dtype_name(cache),
        "quantization": quant,
        "max_num_seqs": eff.get("scheduler_config.max_num_seqs"),
        "max_num_batched_tokens": eff.get("scheduler_config.max_num_batched_tokens"),
        "gpu_memory_utilization": float(_arg(args, "--gpu-memory-utilization") or "nan"),
        "block_size": eff.get("cache_config.block_size"),
        "fuse_allreduce_rms": (eff.get("compilation_config.pass_config") or {}).get("fuse_allreduce_rms"),
        "cudagraph_mode": eff.get("compilation_config.cudagraph_mode"),
    }


def _measured_at(run_name: str) -> str | None:
    """The run's start time from its folder name suffix `_YYYYMMDD_HHMMSS`."""
    parts = run_name.split("_")
    if len(parts) >= 2 and len(parts[-2]) == 8 and parts[-2].isdigit() and len(parts[-1]) == 6 and parts[-1].isdigit():
        d, t = parts[-2], parts[-1]
        return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}"
    return None


def import_fpm(path: str | Path, progress: bool = False) -> tuple[pd.DataFrame, ImportReport]:
    """Per-iteration step rows of every golden run under `path` (the fpm folder or the aiconfigurator folder)."""
    p = require_path(path, SOURCE, is_dir=True)
    root = p / FOLDER if (p / FOLDER).is_dir() else p
    files = sorted(root.rglob(PHASE_FILE))
    if not files:
        raise InputError(f"{SOURCE}: no {PHASE_FILE} under {str(root)!r}")
    report = ImportReport(SOURCE, str(root))
    names = NameResolver()
    frames = []
    for f in with_progress(files, progress, "reading fpm runs"):
        case = f.parent
        run = case.relative_to(root).parts[0]
        cfg = _case_config(case / META_FILE)
        raw = read_csv_checked(f, REQUIRED)
        require_values(raw, ["phase", "latency_ms"], f)
        numeric(raw, [c for c in NUMERIC if c in raw.columns], f)
        report.rows_read += len(raw)
        report.files += 1
        bad_phase = ~raw["phase"].isin(list(PHASES))
        for ph, n in raw.loc[bad_phase, "phase"].value_counts().items():
            report.leave_out(f"unknown iteration phase {ph!r}", n)
        bad_lat = ~bad_phase & ~(raw["latency_ms"] > 0)
        report.leave_out("iteration latency not positive", int(bad_lat.sum()))
        raw = raw.loc[~bad_phase & ~bad_lat].reset_index(drop=True)
        model = names.model(cfg["model_id"])
        layers = resolve_model(model).num_layers if model else np.nan
        batch = raw["ctx_requests"] + raw["decode_requests"]
        tokens = raw["ctx_tokens"] + raw["decode_tokens"]
        kv_after = raw["ctx_kv_tokens"] + raw["ctx_tokens"] + raw["decode_kv_tokens"]
        weight = dtype_name(cfg["quantization"]) if cfg["quantization"] else (
            resolve_model(model).native_dtype if model else None)
        frames.append(pd.DataFrame({
            "kind": "step",
            "source": SOURCE,
            "engine": "vllm",
            "engine_version": cfg["engine_version"],
            "measured_at": _measured_at(run),
            "status": "ok",
            "model": model,
            "weight_dtype": weight,
            "kv_dtype": cfg["kv_dtype"],
            "gpu": names.gpu(GPU),
            "tp": cfg["tp"], "pp": cfg["pp"], "dp": cfg["dp"], "ep": cfg["ep"],
            "max_num_seqs": cfg["max_num_seqs"],
            "max_num_batched_tokens": cfg["max_num_batched_tokens"],
            "gpu_memory_utilization": cfg["gpu_memory_utilization"],
            "block_size": cfg["block_size"],
            "phase": raw["phase"].map(PHASES),
            "batch": batch,
            "context": (kv_after / batch.where(batch > 0)),
            "tokens": tokens,
            "layer_ms": raw["latency_ms"] / layers,
            "derived": "layer_ms",
            "detail": detail_from_columns(raw, DETAIL, {
                "gpu_note": GPU_NOTE, "num_layers": layers, "fuse_allreduce_rms": cfg["fuse_allreduce_rms"],
                "cudagraph_mode": cfg["cudagraph_mode"], "model_id": cfg["model_id"]}),
            "run_id": f"{SOURCE}:{case.relative_to(root).as_posix()}",
        }))
    names.raise_if_unknown(SOURCE)
    report.notes.append(f"{report.files} runs; layer_ms derived = iteration latency / layer count (includes TP/EP "
                        f"communication and sampling); GPU stored as {GPU}: {GPU_NOTE}")
    return finish(pd.concat(frames, ignore_index=True), report), report
