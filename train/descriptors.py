"""Raw descriptors without any physics: configuration numbers plus catalog facts of the model and the GPU.

They feed the descriptor-only baseline, which shows what the physics features add.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.catalog import resolve_gpu, resolve_model

DESCRIPTOR_PREFIX = "d_"
CONFIG_NUMBERS = (
    "tp", "pp", "dp", "ep", "num_gpus", "isl", "osl", "num_requests", "concurrency", "request_rate",
    "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "block_size", "batch", "context", "tokens",
)
MODEL_FACTS = (
    "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size",
    "num_experts", "experts_per_token", "moe_intermediate_size", "kv_lora_rank",
)
GPU_FACTS = ("memory_gb", "hbm_bandwidth_gbps", "bf16_tflops", "fp8_tflops", "fp4_tflops", "link_bandwidth_gbps")
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5, "int4": 0.5}


def _facts(names: pd.Series, resolve, facts: tuple[str, ...]) -> np.ndarray:
    names = names.astype("string").fillna("")
    uniq = names.unique().tolist()
    table = {}
    for name in uniq:
        spec = resolve(name) if name else None
        table[name] = [float(getattr(spec, f, np.nan)) if spec is not None else np.nan for f in facts]
    return np.array([table[n] for n in names.tolist()], dtype=float).reshape(len(names), len(facts))


def descriptor_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` plus `d_` columns: layout and workload numbers, model architecture, GPU datasheet, dtype bytes."""
    cols: dict[str, np.ndarray] = {}
    for c in CONFIG_NUMBERS:
        if c in frame.columns:
            cols[DESCRIPTOR_PREFIX + c] = pd.to_numeric(frame[c], errors="coerce").to_numpy(float)
    if "attention_dp" in frame.columns:
        cols[DESCRIPTOR_PREFIX + "attention_dp"] = frame["attention_dp"].astype("boolean").fillna(False).to_numpy(float)
    if "model" in frame.columns:
        m = _facts(frame["model"], resolve_model, MODEL_FACTS)
        for i, f in enumerate(MODEL_FACTS):
            cols[DESCRIPTOR_PREFIX + f] = m[:, i]
    if "gpu" in frame.columns:
        g = _facts(frame["gpu"], resolve_gpu, GPU_FACTS)
        for i, f in enumerate(GPU_FACTS):
            cols[DESCRIPTOR_PREFIX + f] = g[:, i]
    for c in ("weight_dtype", "kv_dtype"):
        if c in frame.columns:
            cols[DESCRIPTOR_PREFIX + c + "_bytes"] = frame[c].astype("string").map(DTYPE_BYTES).astype(float).to_numpy()
    extra = pd.DataFrame(cols, index=frame.index)
    return pd.concat([frame.drop(columns=[c for c in extra.columns if c in frame.columns]), extra], axis=1)
