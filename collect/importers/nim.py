"""Importer for the NIM (TRT-LLM backend) GenAI-Perf concurrency sweep (`nim.csv`).

Each row is a fixed-concurrency run: request and output throughput, mean TTFT and inter-token latency (ns -> ms).
GenAI-Perf reports p95, not p99, so the p99 targets stay empty and the p95 values go to `detail`. NIM does not state
its tensor-parallel degree; it is taken as the GPU count (NIM latency/throughput profiles) and noted in `detail`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from collect.importers._common import (ImportReport, NameResolver, detail_from_columns, dtype_name, finish, numeric,
                                       read_csv_checked, require_values)
from collect.importers.dli import resolve_file
from features.errors import InputError

SOURCE = "nim"
FILE = "nim.csv"
UNITS = {"request_throughput-unit": "requests/sec", "request_latency-unit": "ns", "time_to_first_token-unit": "ns",
         "inter_token_latency-unit": "ns", "output_token_throughput-unit": "tokens/sec"}
REQUIRED = ("task_inputs-model", "task_inputs-GPU", "task_inputs-n_gpus", "task_inputs-precision",
            "request_throughput-avg", "time_to_first_token-avg", "inter_token_latency-avg",
            "output_token_throughput-avg", "num_input_token-avg", "num_output_token-avg", "input_config-concurrency",
            *UNITS)
NUMERIC = ("task_inputs-n_gpus", "request_throughput-avg", "request_latency-avg", "request_latency-p95",
           "time_to_first_token-avg", "time_to_first_token-p95", "inter_token_latency-avg", "inter_token_latency-p95",
           "output_token_throughput-avg", "output_token_throughput_per_request-avg", "num_input_token-avg",
           "num_output_token-avg", "num_input_token-p95", "num_output_token-p95", "input_config-concurrency",
           "input_config-synthetic_input_tokens_mean", "input_config-synthetic_input_tokens_stddev",
           "input_config-output_tokens_mean")
NS_PER_MS = 1e6


def import_nim(path: str | Path) -> tuple[pd.DataFrame, ImportReport]:
    """Rows of the NIM GenAI-Perf sweep (`path` is `nim.csv` or its folder) in the schema."""
    f = resolve_file(path, FILE, SOURCE)
    raw = read_csv_checked(f, REQUIRED)
    require_values(raw, ["task_inputs-model", "task_inputs-GPU", "task_inputs-n_gpus", "input_config-concurrency"], f)
    numeric(raw, [c for c in NUMERIC if c in raw.columns], f)
    for col, unit in UNITS.items():
        wrong = raw[col].notna() & (raw[col].astype(str).str.strip() != unit)
        if wrong.any():
            i = int(np.flatnonzero(wrong.to_numpy())[0])
            raise InputError(f"{str(f)!r} line {i + 2}: {col} is {raw[col].iloc[i]!r}, expected {unit!r}")
    report = ImportReport(SOURCE, str(f), rows_read=len(raw), files=1)
    names = NameResolver()
    isl, osl = raw["num_input_token-avg"], raw["num_output_token-avg"]
    in_mean = raw.get("input_config-synthetic_input_tokens_mean", pd.Series(np.nan, index=raw.index))
    in_std = raw.get("input_config-synthetic_input_tokens_stddev", pd.Series(np.nan, index=raw.index))
    out_mean = raw.get("input_config-output_tokens_mean", pd.Series(np.nan, index=raw.index))
    fixed_in = in_mean.notna() & (in_std.fillna(0) == 0)
    ms = {c: raw[c] / NS_PER_MS for c in ("request_latency-avg", "request_latency-p95", "time_to_first_token-p95",
                                          "inter_token_latency-p95") if c in raw.columns}
    detail_src = raw.assign(**{f"{k}_ms": v for k, v in ms.items()})
    out = pd.DataFrame({
        "kind": "serving",
        "source": SOURCE,
        "engine": "trtllm",
        "status": "ok",
        "model": names.map_models(raw["task_inputs-model"]),
        "weight_dtype": raw["task_inputs-precision"].map(dtype_name),
        "gpu": names.map_gpus(raw["task_inputs-GPU"]),
        "num_gpus": raw["task_inputs-n_gpus"],
        "tp": raw["task_inputs-n_gpus"],
        "isl": isl,
        "osl": osl,
        "isl_dist": ("fixed:" + in_mean.astype("Int64").astype(str)).where(fixed_in, None),
        "osl_dist": ("fixed:" + out_mean.astype("Int64").astype(str)).where(out_mean.notna(), None),
        "concurrency": raw["input_config-concurrency"],
        "output_throughput": raw["output_token_throughput-avg"],
        "total_throughput": raw["request_throughput-avg"] * (isl + osl),
        "request_throughput": raw["request_throughput-avg"],
        "ttft_ms": raw["time_to_first_token-avg"] / NS_PER_MS,
        "tpot_ms": raw["inter_token_latency-avg"] / NS_PER_MS,
        "derived": "total_throughput",
        "detail": detail_from_columns(
            detail_src, {"task_inputs-execution_type": "runtime", "input_config-backend": "backend",
                         "request_latency-avg_ms": "request_latency_ms",
                         "request_latency-p95_ms": "request_latency_p95_ms",
                         "time_to_first_token-p95_ms": "ttft_p95_ms", "inter_token_latency-p95_ms": "itl_p95_ms",
                         "output_token_throughput_per_request-avg": "output_tok_s_per_request",
                         "num_input_token-p95": "isl_p95", "num_output_token-p95": "osl_p95"},
            {"tp_note": "NIM does not state TP; taken as the GPU count"}),
        "run_id": f"{SOURCE}:{f.stem}",
    })
    names.raise_if_unknown(SOURCE)
    report.notes.append("tp = GPU count (not stated by NIM); p95 latencies in detail (no p99 reported); "
                        "total_throughput derived = request throughput x (isl + osl)")
    return finish(out, report), report
