"""Refit the physics model's efficiency constants and write data/calibration.json (with provenance).

Inputs: the project's own GPU-probe measurements (data/gpu_probe/, H200), the RoPE and KV-append op timings of the
H200 torch probe (data/torch_probe/h200_dense_grid.csv; the GPU probe's layers ran without those kernels) and, when
../shared/data is present, the measured NCCL and vLLM custom all-reduce timings and vLLM's decode-attention kernel
timings (split-KV shape) on H200 from aiconfigurator's op data. Deterministic.
    python scripts/calibrate.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from features.calibrate import describe, fit_calibration, probe_rows_from_schema
from features.calibration import CALIBRATION_PATH, save_calibration
from features.catalog import DATA_DIR

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    step = pd.read_csv(DATA_DIR / "gpu_probe" / "h200_step.csv")
    moe = pd.read_csv(DATA_DIR / "gpu_probe" / "h200_moe.csv")
    torch_h200 = pd.read_csv(DATA_DIR / "torch_probe" / "h200_dense_grid.csv", low_memory=False)
    _, rope_ops = probe_rows_from_schema(torch_h200[torch_h200["gpu"] == "h200"])
    comm = Path(args.shared) / "public" / "aiconfigurator" / "op_perf" / "h200_sxm" / "comm"
    nccl = custom = None
    prov = {"gpu_probe": "data/gpu_probe/h200_step.csv, h200_moe.csv (H200, torch 2.11, CUDA graphs, 2026-11-26)",
            "rope_kv_append": "data/torch_probe/h200_dense_grid.csv rope and kv_append op rows (H200, 2026-11-26)"}
    if comm.exists():
        nccl = pd.read_parquet(next((comm / "nccl").rglob("nccl_perf.parquet")))
        custom = pd.read_parquet(next((comm / "vllm").rglob("custom_allreduce_perf.parquet")))
        prov["collectives"] = ("aiconfigurator op_perf h200_sxm comm: nccl 2.29.2 nccl_perf.parquet and vLLM 0.24.0 "
                               "custom_allreduce_perf.parquet (ai-dynamo/aiconfigurator@095f58a5, Apache-2.0)")
    else:
        print(f"note: {comm} not found; collectives keep built-in defaults")
    attn = Path(args.shared) / "public" / "aiconfigurator" / "op_perf" / "h200_sxm" / "attention" / "vllm"
    engine_attn = None
    if attn.exists():
        engine_attn = pd.read_parquet(next(attn.rglob("generation_attention_perf.parquet")))
        # bf16 KV, full attention (no sliding window): the kernels the split-KV constants describe
        engine_attn = engine_attn[(engine_attn["kv_cache_dtype"] == "bfloat16") & (engine_attn["window_size"] == 0)]
        prov["engine_attention"] = ("aiconfigurator op_perf h200_sxm attention vllm 0.24.0 "
                                    "generation_attention_perf.parquet (FlashAttention 3 decode; bf16 KV, no window)")
    else:
        print(f"note: {attn} not found; split-KV attention keeps built-in defaults")
    cal = fit_calibration(step, moe, nccl, custom, provenance=prov, rope_ops=rope_ops, engine_attention=engine_attn)
    save_calibration(cal, CALIBRATION_PATH)
    print(describe(cal))
    print(f"wrote {CALIBRATION_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
