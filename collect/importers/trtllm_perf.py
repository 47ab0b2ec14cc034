"""Importer for the TensorRT-LLM perf-overview tables (0.14, 0.20, 1.0): saturated offline output throughput.

`output_tok_s_total` is output tokens/s of the whole deployment at max load (all requests queued at once), so it maps
to `output_throughput`; `total_throughput` (x (isl+osl)/osl) and `request_throughput` (/ osl) are derived from it
and named in `derived`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from collect.importers._common import (ImportReport, NameResolver, detail_from_columns, dtype_name, finish, numeric,
                                       read_csv_checked, require_path, require_values)
from features.errors import InputError

SOURCE = "trtllm-perf"
FILE = "trtllm_perf_overview_throughput.csv"
REQUIRED = ("source_version", "backend", "model", "hf_model", "precision", "gpu", "n_gpus", "tp", "pp", "ep",
            "attention_dp", "layout_label", "isl", "osl", "reported_metric", "output_tok_s_total")
NUMERIC = ("n_gpus", "tp", "pp", "ep", "isl", "osl", "batch_size", "output_tok_s_total", "output_tok_s_per_gpu")


def import_trtllm_perf(path: str | Path) -> tuple[pd.DataFrame, ImportReport]:
    """Rows of `trtllm_perf_overview_throughput.csv` (`path` is the file or its folder) in the schema."""
    p = require_path(path, SOURCE)
    f = p / FILE if p.is_dir() else p
    require_path(f, SOURCE, is_dir=False)
    raw = read_csv_checked(f, REQUIRED)
    require_values(raw, ["source_version", "gpu", "tp", "pp", "isl", "osl", "output_tok_s_total"], f)
    numeric(raw, [c for c in NUMERIC if c in raw.columns], f)
    report = ImportReport(SOURCE, str(f), rows_read=len(raw), files=1)
    metric = raw["reported_metric"].astype(str)
    other = metric != "output_tok_s_total"
    for m, n in metric[other].value_counts().items():
        report.leave_out(f"reported metric {m!r} is not output tokens/s of the deployment", n)
    raw = raw.loc[~other].reset_index(drop=True)
    if (raw["n_gpus"].notna() & (raw["n_gpus"] != raw["tp"] * raw["pp"])).any():
        i = int(np.flatnonzero((raw["n_gpus"] != raw["tp"] * raw["pp"]).to_numpy())[0])
        raise InputError(f"{str(f)!r}: row {i + 2} has n_gpus != tp x pp; the file is not the expected table")
    names = NameResolver()
    model_name = raw["hf_model"].fillna(raw["model"])
    osl = raw["osl"]
    out = pd.DataFrame({
        "kind": "serving",
        "source": SOURCE,
        "engine": "trtllm",
        "engine_version": raw["source_version"].astype(str),
        "status": "ok",
        "model": names.map_models(model_name),
        "weight_dtype": raw["precision"].map(dtype_name),
        "gpu": names.map_gpus(raw["gpu"]),
        "num_gpus": raw["n_gpus"],
        "tp": raw["tp"],
        "pp": raw["pp"],
        "dp": 1,
        "ep": raw["ep"],
        "attention_dp": raw["attention_dp"],
        "isl": raw["isl"],
        "osl": osl,
        "isl_dist": "fixed:" + raw["isl"].astype("Int64").astype(str),
        "osl_dist": "fixed:" + osl.astype("Int64").astype(str),
        "max_num_seqs": raw["batch_size"] if "batch_size" in raw.columns else np.nan,
        "output_throughput": raw["output_tok_s_total"],
        "total_throughput": raw["output_tok_s_total"] * (raw["isl"] + osl) / osl,
        "request_throughput": raw["output_tok_s_total"] / osl,
        "derived": "total_throughput,request_throughput",
        "detail": detail_from_columns(
            raw, {"backend": "backend", "model": "model_as_printed", "layout_label": "layout_label",
                  "output_tok_s_per_gpu": "output_tok_s_per_gpu", "source_url": "source_url",
                  "source_commit": "source_commit", "ep": "ep_reported"},
            {"scenario": "offline max load: all requests queued at once, fixed ISL/OSL"}),
        "run_id": SOURCE + ":" + raw["source_version"].astype(str),
    })
    names.raise_if_unknown(SOURCE)
    report.notes.append("output_throughput = published output tok/s (whole deployment, saturated); "
                        "total_throughput and request_throughput derived from it; EP left at 1 where not printed")
    return finish(out, report), report
