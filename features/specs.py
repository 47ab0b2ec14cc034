"""Typed descriptors of what is being served and how: model, GPU, layout, workload, engine knobs.

Every physics function in `features` takes these dataclasses, so each term can be read against its equation.
Units are in the names: `_bytes`, `_gb` (1e9 bytes), `_gbps` (1e9 bytes/s), `_tflops` (1e12 FLOP/s), `_ms`, `_s`.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field, replace

import numpy as np

DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5, "int4": 0.5}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a weight or KV dtype name (`bf16`, `fp8`, `fp4`, ...)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of a decoder-only transformer (dense, GQA/MQA, MoE, MLA, sliding window)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # dense FFN width (dense layers, or the first_k_dense layers of a MoE)
    vocab_size: int
    hf_id: str = ""
    architecture: str = "llama"  # llama | qwen2 | qwen3 | qwen3_moe | mixtral | deepseek_v3 | gpt_oss | ...
    native_dtype: str = "bf16"
    tie_word_embeddings: bool = False
    ffn_matrices: int = 3  # 3 for gated FFNs (SwiGLU: gate, up, down); 2 for plain MLPs (GPT-J, OPT, BLOOM, Falcon, phi-2)
    # mixture of experts
    num_experts: int = 0
    experts_per_token: int = 0  # top-k
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_layers: int = 0  # leading layers with a dense FFN instead of experts (DeepSeek-V3)
    # multi-head latent attention (DeepSeek-V2/V3/R1)
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # sliding-window attention (gpt-oss alternates sliding and full layers)
    sliding_window: int = 0
    num_sliding_layers: int = 0
    notes: str = ""

    # Properties are written with arithmetic, not `if`, so a "columnar" spec whose fields are numpy arrays (one
    # entry per frame row, see features.frame) goes through the same physics code vectorised.
    @property
    def is_moe(self):
        return self.num_experts > 0

    @property
    def is_mla(self):
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self):
        return (self.num_layers - self.first_k_dense_layers) * (self.num_experts > 0)

    @property
    def num_dense_ffn_layers(self):
        return self.num_layers - self.num_moe_layers

    @property
    def num_full_attention_layers(self) -> int:
        return self.num_layers - self.num_sliding_layers


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet facts of one accelerator. Rates here are peaks; achieved rates come from calibration."""

    name: str
    memory_gb: float  # usable HBM, 1e9 bytes
    hbm_bandwidth_gbps: float
    bf16_tflops: float  # dense
    fp8_tflops: float  # dense; 0 when unsupported
    fp4_tflops: float  # dense; 0 when unsupported
    link_bandwidth_gbps: float  # intra-node, per GPU, one direction (NVLink/Infinity Fabric/PCIe)
    gpus_per_node: int = 8
    internode_bandwidth_gbps: float = 50.0  # per GPU, one direction (400 Gb/s NIC = 50 GB/s)
    vendor: str = "nvidia"
    aliases: tuple[str, ...] = ()
    notes: str = ""

    def peak_tflops(self, dtype: str) -> float:
        """Dense tensor-core peak for a compute dtype, falling back to the next wider supported one."""
        if dtype == "fp4" and self.fp4_tflops > 0:
            return self.fp4_tflops
        if dtype in ("fp8", "fp4", "int8") and self.fp8_tflops > 0:
            return self.fp8_tflops
        return self.bf16_tflops


@dataclass(frozen=True)
class Layout:
    """Parallel layout of one deployment: `num_gpus = tp * pp * dp`; `ep` splits experts over the MoE group."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    attention_dp: bool = False

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def attention_tp(self):
        """Degree attention heads are split over: 1 under attention-DP (each TP rank runs its own batch)."""
        return np.where(self.attention_dp, 1, self.tp) if not isinstance(self.attention_dp, bool) else (
            1 if self.attention_dp else self.tp)

    @property
    def attention_replicas(self):
        """Independent attention batches (each with its own KV cache) in the whole deployment."""
        return self.dp * self.tp // self.attention_tp

    @property
    def moe_group(self):
        """GPUs one layer's experts are spread over (EP may span DP ranks, as vLLM's DP+EP does)."""
        if type(self.tp) is int and type(self.ep) is int:  # one layout: plain integers
            return max(self.tp, self.ep)
        return np.maximum(self.tp, self.ep)

    @property
    def moe_tp(self):
        """Tensor-parallel degree inside each expert."""
        group = self.moe_group
        if type(group) is int and type(self.ep) is int:  # one layout: plain integers
            return max(1, group // self.ep)
        return np.maximum(1, group // self.ep)

    def label(self) -> str:
        parts = [f"TP{self.tp}"]
        if self.pp > 1:
            parts.append(f"PP{self.pp}")
        if self.dp > 1:
            parts.append(f"DP{self.dp}")
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.attention_dp:
            parts.append("ADP")
        return "x".join(parts)


@functools.lru_cache(maxsize=256)
def _clipped_lognormal_mean(median: float, sigma: float, min_tokens: int, max_tokens: int) -> float:
    """Mean of a lognormal length distribution clipped to [min_tokens, max_tokens], on a 4096-point quantile grid
    (cached: workloads are a handful of distributions, and a single prediction should not recompute it)."""
    q = (np.arange(4096) + 0.5) / 4096
    from scipy.stats import norm

    x = np.clip(median * np.exp(sigma * norm.ppf(q)), min_tokens, max_tokens)
    return float(x.mean())


@dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: `fixed` (all = median) or `lognormal` (median, sigma of log), clipped."""

    kind: str = "fixed"
    median: float = 128.0
    sigma: float = 0.0
    max_tokens: int = 1 << 20
    min_tokens: int = 1

    @property
    def mean(self) -> float:
        """Mean of the clipped distribution (closed form ignored for clipping: computed numerically)."""
        if self.kind == "fixed":
            return float(min(max(self.median, self.min_tokens), self.max_tokens))
        return _clipped_lognormal_mean(self.median, self.sigma, self.min_tokens, self.max_tokens)

    def spec(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{int(self.median)}"
        return f"lognormal:{self.median:g}:{self.sigma:g}:{self.max_tokens}"

    def sample(self, n: int, rng) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, int(round(self.median)), dtype=np.int64)
        x = self.median * np.exp(self.sigma * rng.standard_normal(n))
        return np.clip(np.round(x), self.min_tokens, self.max_tokens).astype(np.int64)


@dataclass(frozen=True)
class Workload:
    """Request lengths and arrival: a closed batch (`num_requests`), fixed `concurrency`, or `request_rate`."""

    name: str
    isl: LengthDist
    osl: LengthDist
    num_requests: int = 0
    concurrency: int = 0  # 0 = unlimited
    request_rate: float = 0.0  # requests/s, 0 = all at once

    def with_arrival(self, num_requests: int = 0, concurrency: int = 0, request_rate: float = 0.0) -> "Workload":
        return replace(self, num_requests=num_requests, concurrency=concurrency, request_rate=request_rate)

    def sample(self, n: int, seed: int = 0):
        """Sample `n` (isl, osl) pairs reproducibly."""
        rng = np.random.default_rng(seed)
        return self.isl.sample(n, rng), self.osl.sample(n, rng)


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs, with vLLM's names and (v1, LLM-class) defaults."""

    engine: str = "vllm"
    weight_dtype: str = "bf16"
    kv_cache_dtype: str = "auto"  # auto = same as weights (bf16 for fp8 weights, as vLLM does)
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    enable_chunked_prefill: bool = True
    enforce_eager: bool = False
    # knobs real engine runs (collect.backends.vllm) also set; defaults leave the engine to decide
    enable_prefix_caching: bool = False  # off unless asked: measurements should not depend on prompt overlap
    num_gpu_blocks_override: int = 0  # 0 = the engine sizes the KV cache; >0 = exactly this many blocks
    kv_cache_memory_gb: float = 0.0  # 0 = from gpu_memory_utilization (vLLM-CPU: VLLM_CPU_KVCACHE_SPACE or 1 GiB)
    max_model_len: int = 0  # 0 = the longest request of the workload

    @property
    def kv_dtype(self) -> str:
        if self.kv_cache_dtype in ("auto", "", None):
            return "bf16" if self.weight_dtype in ("fp8", "fp4", "int8", "int4") else self.weight_dtype
        return {"fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}.get(self.kv_cache_dtype, self.kv_cache_dtype)


@dataclass(frozen=True)
class Scenario:
    """Everything one prediction is about."""

    model: ModelSpec
    gpu: GPUSpec
    layout: Layout
    workload: Workload
    engine: EngineConfig = field(default_factory=EngineConfig)

