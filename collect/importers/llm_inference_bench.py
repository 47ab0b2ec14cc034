"""Importer for Argonne's LLM-Inference-Bench result tables (static offline batches, ISL = OSL).

`Throughput` counts input + output tokens (= batch x 2 x length / latency for vLLM, TensorRT-LLM, DeepSpeed and
SambaFlow), so it maps to `total_throughput`; `output_throughput` = total / 2 (ISL = OSL) and `request_throughput`
= batch / latency are derived and named in `derived`; `makespan_s` is the whole-batch latency.
llama.cpp rows are left out and reported: their throughput follows another definition (ratio 0.016-1.0 to the
formula), so they cannot share the targets. Rows with the KV cache switched off or with speculative decoding are left
out (not configurations layoutcast models), and the ISL x OSL heatmap is left out because it does not state its GPU.
Precision is FP16 unless the file states weight / KV-cache dtypes; `Num of Hardware` is the tensor-parallel degree
except where the parallelism study states a pipeline or expert layout.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from collect.importers._common import (ImportReport, NameResolver, check_columns, detail_from_columns, dtype_name,
                                       finish, numeric, read_csv_checked, require_path, require_values, with_progress)
from features.errors import InputError

SOURCE = "llm-inference-bench"
BASE = ("Hardware", "Num of Hardware", "Framework", "Model")
THROUGHPUT_FILES = ("throughput_all_results.csv", "best_hw_framework.csv", "parallelism_tp_pp_ep_a100_trtllm.csv",
                    "kv_cache_dtype.csv", "quantization.csv", "kv_cache_block_size.csv", "power.csv",
                    "perplexity_vs_throughput.csv", "speculative_decoding.csv", "kv_cache_on_off_gaudi2.csv",
                    "sn40l.csv")
TTFT_FILE = "ttft_e2e_latency.csv"
HEATMAP_FILE = "heatmap_isl_osl_trtllm_llama3_8b.csv"
ENGINES = {"vllm": "vllm", "tensorrt-llm": "trtllm", "deepspeed-mii": "deepspeed-mii", "deepspeed": "deepspeed",
           "llama.cpp": "llama.cpp", "sambaflow": "sambaflow"}
DETAIL = {"KV Cache Dtype": "dtypes", "kv_cache_dtype": "dtypes",
          "KV Cache Block_size": "block_size", "avg_power": "avg_power", "Throughput_per_watt_avg": "tok_s_per_watt",
          "Perplexity": "perplexity", "KV Cache": "kv_cache", "speculative_decoding": "speculative_decoding",
          "Hardware": "hardware_as_printed", "Model": "model_id"}


def _layout(kind: pd.Series, n: pd.Series) -> pd.DataFrame:
    """tp, pp, ep from the parallelism study's label (TP, PP, EP, TP2xPP2, TP2xEP2); plain TP = n elsewhere."""
    label = kind.fillna("").astype(str).str.lower()
    tp, pp, ep = n.astype(float).copy(), pd.Series(1.0, index=n.index), pd.Series(1.0, index=n.index)
    hybrid_pp = label.str.contains("pipeline") & label.str.contains("tensor") | label.str.contains(r"tp\s*=\s*2 and pp")
    hybrid_ep = label.str.contains(r"tp\s*=\s*2 and ep")
    pure_pp = (label.str.contains("pipeline") | (label == "pp")) & ~hybrid_pp
    pure_ep = (label == "ep")
    tp[pure_pp], pp[pure_pp] = 1.0, n[pure_pp]
    tp[hybrid_pp], pp[hybrid_pp] = 2.0, 2.0
    ep[pure_ep] = n[pure_ep]
    tp[hybrid_ep], ep[hybrid_ep] = n[hybrid_ep], 2.0
    known = (label == "") | label.isin(["tp", "tensor parallelism"]) | pure_pp | hybrid_pp | pure_ep | hybrid_ep
    return pd.DataFrame({"tp": tp, "pp": pp, "ep": ep, "known": known})


def _dtypes(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Weight and KV dtypes from `Weight = fp16, KV Cache = fp8` (full_prec = fp16, int8_sq = int8)."""
    t = text.fillna("").astype(str)
    w = t.str.extract(r"Weight\s*=\s*([\w.]+)", flags=re.I)[0]
    kv = t.str.extract(r"KV Cache\s*=\s*([\w.]+)", flags=re.I)[0]
    alias = {"full_prec": "fp16", "int8_sq": "int8"}
    return (w.map(lambda v: dtype_name(alias.get(v, v)) if isinstance(v, str) else None),
            kv.map(lambda v: dtype_name(alias.get(v, v)) if isinstance(v, str) else None))


def _throughput_rows(f: Path, report: ImportReport, names: NameResolver) -> pd.DataFrame | None:
    raw = read_csv_checked(f, BASE)
    raw = raw.rename(columns={"latency": "Latency", "throughput": "Throughput"})
    check_columns(raw, ("Input Output Length", "Batch Size", "Latency", "Throughput"), f)
    require_values(raw, [*BASE, "Input Output Length", "Batch Size", "Latency"], f)  # power.csv omits some Throughput
    numeric(raw, ["Num of Hardware", "Input Output Length", "Batch Size", "Latency", "Throughput"]
            + [c for c in ("KV Cache Block_size", "avg_power", "Throughput_per_watt_avg", "Perplexity") if c in raw], f)
    report.rows_read += len(raw)
    report.files += 1
    engine = raw["Framework"].astype(str).str.strip().str.lower().map(ENGINES)
    drop = pd.Series(False, index=raw.index)
    rules = [
        (engine.isna(), "framework not recognised"),
        (engine == "llama.cpp", "llama.cpp: throughput definition differs (not input+output tokens/s)"),
        (raw.get("KV Cache", pd.Series("", index=raw.index)).astype(str).str.startswith("Without"),
         "KV cache switched off: not a serving configuration"),
        (raw.get("speculative_decoding", pd.Series("", index=raw.index)).astype(str).str.startswith("With "),
         "speculative decoding: not modelled"),
    ]
    parallelism = raw.get("Parallelism Type", pd.Series(None, index=raw.index, dtype=object))
    layout = _layout(parallelism, raw["Num of Hardware"])
    rules.append((~layout["known"], "parallelism label not recognised"))
    for mask, reason in rules:
        mask = mask.fillna(False) & ~drop
        report.leave_out(reason, int(mask.sum()))
        drop |= mask
    raw, engine, layout = (x.loc[~drop].reset_index(drop=True) for x in (raw, engine, layout))
    if not len(raw):
        return None
    dt_col = "KV Cache Dtype" if "KV Cache Dtype" in raw else ("kv_cache_dtype" if "kv_cache_dtype" in raw else None)
    if dt_col:
        weight, kv = _dtypes(raw[dt_col])
    else:
        weight = kv = pd.Series("fp16", index=raw.index)
    length, batch, latency = raw["Input Output Length"], raw["Batch Size"], raw["Latency"]
    return pd.DataFrame({
        "kind": "serving", "source": SOURCE, "engine": engine, "status": "ok",
        "model": names.map_models(raw["Model"]), "weight_dtype": weight, "kv_dtype": kv,
        "gpu": names.map_gpus(raw["Hardware"]), "num_gpus": layout["tp"] * layout["pp"],
        "tp": layout["tp"], "pp": layout["pp"], "ep": layout["ep"],
        "isl": length, "osl": length,
        "isl_dist": "fixed:" + length.astype("Int64").astype(str),
        "osl_dist": "fixed:" + length.astype("Int64").astype(str),
        "num_requests": batch,
        "block_size": raw["KV Cache Block_size"] if "KV Cache Block_size" in raw else np.nan,
        "total_throughput": raw["Throughput"],
        "output_throughput": raw["Throughput"] / 2.0,
        "request_throughput": batch / latency,
        "makespan_s": latency,
        "derived": np.where(raw["Throughput"].notna(), "output_throughput,request_throughput", "request_throughput"),
        "detail": detail_from_columns(raw, DETAIL, {"batching": "static offline batch"}),
        "run_id": f"{SOURCE}:{f.stem}",
    })


def _ttft_rows(f: Path, report: ImportReport, names: NameResolver) -> pd.DataFrame:
    # the source leaves `end_latency` off some records (the field is optional there, not truncation)
    raw = read_csv_checked(f, (*BASE, "Input Length", "Output Length", "Batch Size", "TTFT Latency", "end_latency"),
                           optional_trailing=1)
    require_values(raw, [*BASE, "Input Length", "Output Length", "Batch Size", "TTFT Latency"], f)
    numeric(raw, ["Num of Hardware", "Input Length", "Output Length", "Batch Size", "TTFT Latency", "end_latency"], f)
    report.rows_read += len(raw)
    report.files += 1
    engine = raw["Framework"].astype(str).str.strip().str.lower().map(ENGINES)
    bad = engine.isna() | (engine == "llama.cpp")
    report.leave_out("framework not recognised or llama.cpp", int(bad.sum()))
    raw, engine = raw.loc[~bad].reset_index(drop=True), engine[~bad].reset_index(drop=True)
    return pd.DataFrame({
        "kind": "serving", "source": SOURCE, "engine": engine, "status": "ok",
        "model": names.map_models(raw["Model"]), "weight_dtype": "fp16", "kv_dtype": "fp16",
        "gpu": names.map_gpus(raw["Hardware"]), "num_gpus": raw["Num of Hardware"], "tp": raw["Num of Hardware"],
        "isl": raw["Input Length"], "osl": raw["Output Length"],
        "isl_dist": "fixed:" + raw["Input Length"].astype("Int64").astype(str),
        "osl_dist": "fixed:" + raw["Output Length"].astype("Int64").astype(str),
        "num_requests": raw["Batch Size"],
        "ttft_ms": raw["TTFT Latency"] * 1000.0,
        "detail": detail_from_columns(raw, {"Hardware": "hardware_as_printed", "Model": "model_id",
                                            "end_latency": "end_latency_s"},
                                      {"batching": "static offline batch", "units": "TTFT and end latency in s",
                                       "note": "end_latency's output length is not stated (the file gives OSL 1)"}),
        "run_id": f"{SOURCE}:{f.stem}",
    })


def import_llm_inference_bench(path: str | Path, progress: bool = False) -> tuple[pd.DataFrame, ImportReport]:
    """Every LLM-Inference-Bench table in the folder `path` (or one of its CSV files) in the schema."""
    p = require_path(path, SOURCE)
    folder = p if p.is_dir() else p.parent
    files = [folder / n for n in (*THROUGHPUT_FILES, TTFT_FILE, HEATMAP_FILE)] if p.is_dir() else [p]
    files = [f for f in files if f.is_file()]
    if not files:
        raise InputError(f"{SOURCE}: none of the LLM-Inference-Bench tables ({THROUGHPUT_FILES[0]}, ...) in {str(p)!r}")
    report = ImportReport(SOURCE, str(p))
    names = NameResolver()
    frames = []
    for f in with_progress(files, progress, "reading LLM-Inference-Bench tables"):
        if f.name == HEATMAP_FILE:
            raw = read_csv_checked(f)
            report.rows_read += len(raw)
            report.files += 1
            report.leave_out(f"{HEATMAP_FILE}: GPU not stated in the file", len(raw))
        elif f.name == TTFT_FILE:
            frames.append(_ttft_rows(f, report, names))
        else:
            rows = _throughput_rows(f, report, names)
            if rows is not None:
                frames.append(rows)
    names.raise_if_unknown(SOURCE)
    report.notes.append("total_throughput = published Throughput (input+output tok/s); output_throughput = total/2 "
                        "(ISL = OSL) and request_throughput derived; rows repeated across tables are kept once")
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return finish(frame, report), report
