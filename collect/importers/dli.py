"""Importer for the TensorRT-LLM 0.9 static-batch sweep (NVIDIA DLI `trt_llm_0_9_0_dli.csv`).

One row is one static batch of `Batch Size` requests at fixed ISL/OSL: `num_requests` = batch, `makespan_s` = batch
latency, `output_throughput` = published throughput (= batch x OSL / latency, checked), TTFT and TPOT as measured.
Runs with empty results failed and are kept as feasibility labels: `status=oom` when a smaller batch of the same
configuration succeeded and no larger one did (memory grows with batch), else `status=error`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from collect.importers._common import (ImportReport, NameResolver, detail_from_columns, dtype_name, finish, numeric,
                                       read_csv_checked, require_path, require_values, row_keys)
from features.errors import InputError

SOURCE = "dli"
FILE = "trt_llm_0_9_0_dli.csv"
FOLDER = "nvidia_dli_nim_genaiperf"
COL_TTFT = "1st Token Latency (ms)"
COL_LAT = "Latency (ms)"
COL_TPUT = "Throughput (tokens / sec)"
COL_TPOT = "Token-to-token Latency (ms)"
REQUIRED = ("Model", "GPU", "Precision", "Batch Size", "Number of GPUs", "Tensor Model Parallel Size",
            "Pipeline Model Parallel Size", "Input/Output Lengths", COL_TTFT, COL_LAT, COL_TPUT, COL_TPOT)
NUMERIC = ("Batch Size", "Number of GPUs", "Tensor Model Parallel Size", "Pipeline Model Parallel Size", COL_TTFT,
           COL_LAT, COL_TPUT, COL_TPOT, "Generation Throughput (tokens / sec)",
           "Throughput per GPU (tokens / sec / GPU)", "GPU Peak Memory Usage (GB)", "Input Token Length",
           "Output Token Length")
CONFIG_KEYS = ("Model", "GPU", "Precision", "Tensor Model Parallel Size", "Pipeline Model Parallel Size",
               "Input/Output Lengths")
DETAIL = {"Generation Throughput (tokens / sec)": "generation_tok_s",
          "Throughput per GPU (tokens / sec / GPU)": "output_tok_s_per_gpu",
          "GPU Peak Memory Usage (GB)": "gpu_peak_memory_gb", "Enable Custom All Reduce": "custom_all_reduce",
          "Enable XQA": "xqa", "Use Fake Weight": "fake_weights", "MIG": "mig", "PBR": "pbr",
          "Custom Model Name": "model_as_printed"}


def resolve_file(path: str | Path, filename: str, source: str) -> Path:
    """The data file: `path` itself, or `filename` inside the folder `path` (or its `nvidia_dli_nim_genaiperf/`)."""
    p = require_path(path, source)
    if p.is_file():
        return p
    for candidate in (p / filename, p / FOLDER / filename):
        if candidate.is_file():
            return candidate
    raise InputError(f"{source}: no {filename} in {str(p)!r}")


def failure_status(raw: pd.DataFrame, failed: np.ndarray) -> np.ndarray:
    """`oom` for a failed run above the largest successful batch of its configuration, `error` otherwise."""
    batch = raw["Batch Size"].to_numpy(dtype=float)
    ok_batch = np.where(~failed, batch, np.nan)
    key = row_keys(raw[list(CONFIG_KEYS)])
    max_ok = pd.Series(ok_batch).groupby(key.to_numpy()).transform("max").to_numpy()
    oom = failed & ~np.isnan(max_ok) & (batch > max_ok)
    return np.where(oom, "oom", "error")


def import_dli(path: str | Path) -> tuple[pd.DataFrame, ImportReport]:
    """Rows of the TRT-LLM 0.9 DLI sweep (`path` is the CSV or its folder) in the schema, failed runs included."""
    f = resolve_file(path, FILE, SOURCE)
    raw = read_csv_checked(f, REQUIRED)
    require_values(raw, ["Model", "GPU", "Precision", "Batch Size", "Tensor Model Parallel Size",
                         "Input/Output Lengths"], f)
    numeric(raw, [c for c in NUMERIC if c in raw.columns], f)
    report = ImportReport(SOURCE, str(f), rows_read=len(raw), files=1)
    lengths = raw["Input/Output Lengths"].astype(str).str.extract(r"^\s*(\d+)\s*,\s*(\d+)\s*$").astype(float)
    if lengths.isna().any().any():
        i = int(np.flatnonzero(lengths.isna().any(axis=1).to_numpy())[0])
        raise InputError(f"{str(f)!r} line {i + 2}: 'Input/Output Lengths' = {raw['Input/Output Lengths'].iloc[i]!r} "
                         "is not 'ISL,OSL'")
    isl, osl = lengths[0], lengths[1]
    failed = raw[COL_TPUT].isna().to_numpy() | raw[COL_LAT].isna().to_numpy()
    status = np.where(failed, failure_status(raw, failed), "ok")
    batch = raw["Batch Size"]
    latency_s = raw[COL_LAT] / 1000.0
    names = NameResolver()
    raw["failure"] = np.where(status == "oom", "failed run above the largest successful batch of this configuration",
                              np.where(status == "error", "failed run: empty results", None))
    detail = detail_from_columns(raw, {**DETAIL, "failure": "failure"},
                                 {"batching": "static", "engine_build": "TRT-LLM 0.9.0"})
    out = pd.DataFrame({
        "kind": "serving",
        "source": SOURCE,
        "engine": "trtllm",
        "engine_version": "0.9.0",
        "status": status,
        "model": names.map_models(raw["Model"]),
        "weight_dtype": raw["Precision"].map(dtype_name),
        "gpu": names.map_gpus(raw["GPU"]),
        "num_gpus": raw["Number of GPUs"],
        "tp": raw["Tensor Model Parallel Size"],
        "pp": raw["Pipeline Model Parallel Size"],
        "isl": isl,
        "osl": osl,
        "isl_dist": "fixed:" + isl.astype("Int64").astype(str),
        "osl_dist": "fixed:" + osl.astype("Int64").astype(str),
        "num_requests": batch,
        "max_num_seqs": batch,
        "output_throughput": raw[COL_TPUT],
        "total_throughput": batch * (isl + osl) / latency_s,
        "request_throughput": batch / latency_s,
        "ttft_ms": raw[COL_TTFT].where(~failed),
        "tpot_ms": raw[COL_TPOT],
        "makespan_s": latency_s,
        "derived": np.where(failed, None, "total_throughput,request_throughput"),
        "detail": detail,
        "run_id": f"{SOURCE}:{f.stem}",
    })
    bad = out["num_gpus"] != out["tp"] * out["pp"]
    if bad.any():
        raise InputError(f"{str(f)!r} line {int(np.flatnonzero(bad.to_numpy())[0]) + 2}: Number of GPUs != TP x PP")
    names.raise_if_unknown(SOURCE)
    n_oom, n_err = int((status == "oom").sum()), int((status == "error").sum())
    report.notes.append(f"{n_oom + n_err} failed runs kept as feasibility labels: {n_oom} status=oom (batch above the "
                        f"largest successful batch of the same configuration), {n_err} status=error")
    return finish(out, report), report
