"""Fitted efficiency constants of the physics model, loaded from `data/calibration.json`.

Achieved rates are stored as fractions of the datasheet rate of the GPU they were measured on (the H200 of
`data/gpu_probe`), so another GPU's achieved rate is its datasheet rate times the measured fraction; no datasheet
peak is ever used as an achieved rate. Latency floors and the per-thread-block attention rate are absolute (they
are set by kernel launch and memory latency, which the H100 and H200 share, not by the HBM datasheet rate). `scripts/calibrate.py` refits them (provenance is recorded in the file).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields

from features.catalog import DATA_DIR

CALIBRATION_PATH = DATA_DIR / "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """Efficiency curves of kernels and collectives (fractions of datasheet rates; latency floors in ms)."""

    # GEMM: t = floor + (t_mem^p + t_compute^p)^(1/p); t_mem = bytes / (bw_frac × HBM), t_compute = flops / (rate_frac × peak)
    gemm_bw_frac: float = 0.9
    gemm_rate_frac: float = 0.75
    gemm_floor_ms: float = 0.006
    gemm_p: float = 1.0
    # decode attention: t = floor + kv_bytes / min(sat_frac × HBM, units × unit_gbps); units = seqs × KV heads;
    # the per-unit rate is absolute (latency-bound thread blocks), not a fraction of the datasheet bandwidth
    attn_bw_sat_frac: float = 0.95
    attn_unit_gbps: float = 43.0
    attn_floor_ms: float = 0.008
    # split-KV decode kernels of serving engines: each (sequence, KV head) is cut into ceil(context / split_tokens)
    # blocks, at most max_splits; fitted on vLLM's measured FlashAttention decode kernels (the probe ran SDPA)
    attn_split_tokens: float = 512.0
    attn_max_splits: float = 16.0
    # prefill attention FLOPs run at this fraction of the dense peak
    prefill_attn_rate_frac: float = 0.4
    # small kernels of a layer (norms, residual adds, activation, RoPE, KV append): fixed cost + bytes moved
    layer_misc_ms: float = 0.03
    misc_bytes_per_token_hidden: float = 12.0  # bytes moved per token per hidden unit by the small kernels
    # RoPE and KV append (two kernels a layer): per-kernel floor; RoPE moves its q/k tensors this many times over
    rope_kv_floor_ms: float = 0.008
    rope_traffic: float = 4.0
    # MoE grouped GEMM
    moe_floor_ms: float = 0.02
    moe_bw_frac: float = 0.7
    moe_rate_frac: float = 0.5
    # LM head + sampling per step (beyond the LM-head GEMM): fixed cost
    sampling_ms: float = 0.05
    # engine overhead per scheduler step (CPU side not hidden by async scheduling)
    step_overhead_ms: float = 0.3
    # collectives: op -> {num_gpus as str: [alpha_ms, bus_bw_frac_of_link]}
    collectives: dict = field(default_factory=dict)
    reference_gpu: str = "h200"
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> "Calibration":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@functools.lru_cache(maxsize=1)
def default_calibration() -> Calibration:
    """The committed calibration; falls back to the dataclass defaults only if the file is missing."""
    if CALIBRATION_PATH.exists():
        return Calibration.from_json(json.loads(CALIBRATION_PATH.read_text()))
    return Calibration()


def save_calibration(cal: Calibration, path=CALIBRATION_PATH) -> None:
    path.write_text(json.dumps(cal.to_json(), indent=2, sort_keys=True) + "\n")
    default_calibration.cache_clear()
