"""Memory physics: parameter counts, weight bytes per GPU, KV bytes per token, KV capacity per replica.

Every function is arithmetic over the dataclass fields (no `if` on values), so it works both on one spec and on a
columnar spec whose fields are numpy arrays (one entry per frame row).
"""

from __future__ import annotations

import math

import numpy as np

from features.elementwise import any_, floor, maximum, minimum, where
from features.specs import EngineConfig, GPUSpec, Layout, ModelSpec, dtype_bytes

GIB = 1024**3
# Memory vLLM holds outside the model and KV pools: CUDA context, NCCL buffers, allocator slack (non-torch memory)
# and the CUDA-graph pool. vLLM's profiler subtracts both before sizing the KV cache.
NON_TORCH_BYTES = 1.5 * GIB
CUDA_GRAPH_BYTES = 0.75 * GIB


def _ceil_div(a, b):
    if type(a) is int and type(b) is int:  # one spec: plain integers
        return -(-a // b)
    return -(-np.asarray(a) // np.asarray(b))


def kv_heads_per_gpu(model: ModelSpec, layout: Layout):
    """KV heads one GPU holds: KV heads split over attention TP, replicated when there are fewer than TP."""
    per_gpu = _ceil_div(model.num_kv_heads, layout.attention_tp)
    return max(1, per_gpu) if type(per_gpu) is int else np.maximum(1, per_gpu)


def attention_params_per_layer(model: ModelSpec):
    """Parameters of one attention block (Q, K, V, O; MLA's low-rank projections when `kv_lora_rank` > 0)."""
    h, hd = model.hidden_size, model.head_dim
    gqa = h * model.num_heads * hd * 2 + h * model.num_kv_heads * hd * 2
    qk_hd = model.qk_nope_head_dim + model.qk_rope_head_dim
    q_proj = where(model.q_lora_rank > 0, h * model.q_lora_rank + model.q_lora_rank * model.num_heads * qk_hd,
                      h * model.num_heads * qk_hd)
    mla = (q_proj + h * (model.kv_lora_rank + model.qk_rope_head_dim)
           + model.kv_lora_rank * model.num_heads * (model.qk_nope_head_dim + model.v_head_dim)
           + model.num_heads * model.v_head_dim * h)
    return where(model.kv_lora_rank > 0, mla, gqa)


def dense_ffn_params_per_layer(model: ModelSpec):
    """Dense FFN: 3 × hidden × intermediate when gated (gate, up, down), 2 × for a plain MLP (up, down)."""
    return model.ffn_matrices * model.hidden_size * model.intermediate_size


def expert_params(model: ModelSpec):
    """One routed expert's gated FFN: 3 × hidden × moe_intermediate."""
    return 3 * model.hidden_size * model.moe_intermediate_size


def embedding_params(model: ModelSpec):
    """Input embedding plus LM head (shared when tied)."""
    return model.vocab_size * model.hidden_size * where(model.tie_word_embeddings, 1, 2)


def total_params(model: ModelSpec):
    """All parameters of the model."""
    per_layer_moe = (model.num_experts + model.num_shared_experts) * expert_params(model) + model.hidden_size * model.num_experts
    return (model.num_layers * attention_params_per_layer(model)
            + model.num_dense_ffn_layers * dense_ffn_params_per_layer(model)
            + model.num_moe_layers * per_layer_moe + embedding_params(model))


def active_params_per_token(model: ModelSpec):
    """Parameters one token touches (routed top-k plus shared experts), excluding the embedding table."""
    moe_active = (model.experts_per_token + model.num_shared_experts) * expert_params(model)
    return (model.num_layers * attention_params_per_layer(model)
            + model.num_dense_ffn_layers * dense_ffn_params_per_layer(model)
            + model.num_moe_layers * moe_active + model.vocab_size * model.hidden_size)


def layers_per_stage(model: ModelSpec, layout: Layout):
    """Decoder layers on the most loaded pipeline stage (vLLM splits layers as evenly as it can)."""
    return _ceil_div(model.num_layers, layout.pp)


def weight_bytes_per_gpu(model: ModelSpec, layout: Layout, weight_dtype: str | np.ndarray = "bf16"):
    """Weight bytes on the most loaded GPU: attention/dense FFN split over attention TP, experts over the MoE group,
    vocabulary-parallel embedding and LM head on the first and last stage (both on one GPU when PP = 1)."""
    wb = _bytes(weight_dtype)
    stage_layers = layers_per_stage(model, layout)
    a_tp = layout.attention_tp
    hd, h = model.head_dim, model.hidden_size
    # GQA: Q and O split over TP; K and V split too, but never below one head per GPU.
    gqa_attn = (h * model.num_heads * hd * 2) / a_tp + h * kv_heads_per_gpu(model, layout) * hd * 2
    is_mla = model.kv_lora_rank > 0
    attn = where(is_mla, attention_params_per_layer(model) / a_tp, gqa_attn) if any_(is_mla) else gqa_attn
    dense_layers_on_stage = minimum(model.num_dense_ffn_layers, stage_layers)
    moe_layers_on_stage = stage_layers - dense_layers_on_stage
    dense = dense_layers_on_stage * dense_ffn_params_per_layer(model) / a_tp
    experts = moe_layers_on_stage * (model.num_experts * expert_params(model) / layout.moe_group
                                     + model.num_shared_experts * expert_params(model) / a_tp
                                     + model.hidden_size * model.num_experts)
    embed = where(layout.pp > 1, 1, where(model.tie_word_embeddings, 1, 2)) * model.vocab_size * h / layout.tp
    return (stage_layers * attn + dense + experts + embed) * wb


def kv_bytes_per_token(model: ModelSpec, kv_dtype: str | np.ndarray = "bf16"):
    """KV-cache bytes one token occupies across the whole model (all full-attention layers, unsharded).

    GQA: layers × 2 (K, V) × KV heads × head_dim × bytes. MLA: layers × (kv_lora_rank + rope dim) × bytes (the latent
    cache, K and V share it). Sliding-window layers hold at most `sliding_window` tokens per sequence and are
    counted per sequence in `kv_bytes_per_sequence_fixed`, not here.
    """
    kb = _bytes(kv_dtype)
    full_layers = model.num_layers - model.num_sliding_layers
    gqa = full_layers * 2 * model.num_kv_heads * model.head_dim * kb
    mla = full_layers * (model.kv_lora_rank + model.qk_rope_head_dim) * kb
    return where(model.kv_lora_rank > 0, mla, gqa)


def kv_bytes_per_token_per_gpu(model: ModelSpec, layout: Layout, kv_dtype: str | np.ndarray = "bf16"):
    """KV bytes per token on one GPU of the most loaded stage: KV heads split over attention TP (replicated when
    fewer than TP); MLA's latent cache is replicated on every TP rank, as vLLM does."""
    kb = _bytes(kv_dtype)
    stage_layers = layers_per_stage(model, layout)
    full_frac = (model.num_layers - model.num_sliding_layers) / model.num_layers
    gqa = 2 * kv_heads_per_gpu(model, layout) * model.head_dim * kb
    mla = (model.kv_lora_rank + model.qk_rope_head_dim) * kb
    per_layer = where(model.kv_lora_rank > 0, mla, gqa)
    return stage_layers * full_frac * per_layer


def kv_bytes_per_sequence_fixed(model: ModelSpec, layout: Layout, kv_dtype: str | np.ndarray = "bf16"):
    """Per-sequence KV bytes on one GPU for sliding-window layers (at most `sliding_window` tokens each)."""
    kb = _bytes(kv_dtype)
    stage_frac = layers_per_stage(model, layout) / model.num_layers
    return model.num_sliding_layers * stage_frac * model.sliding_window * 2 * kv_heads_per_gpu(model, layout) * model.head_dim * kb


def activation_bytes_per_gpu(model: ModelSpec, layout: Layout, engine: EngineConfig | None = None,
                             max_num_batched_tokens=None, max_num_seqs=None):
    """Peak activation memory vLLM's profiling run sees: a forward pass of `max_num_batched_tokens` tokens
    (hidden states, fused QKV, gate-up intermediate in bf16) plus fp32 logits for up to `max_num_seqs` rows."""
    mnbt = max_num_batched_tokens if max_num_batched_tokens is not None else engine.max_num_batched_tokens
    mns = max_num_seqs if max_num_seqs is not None else engine.max_num_seqs
    a_tp = layout.attention_tp
    ffn_width = maximum(model.intermediate_size, model.moe_intermediate_size * maximum(model.experts_per_token, 1))
    per_token = (4 * model.hidden_size + (model.num_heads + 2 * model.num_kv_heads) * model.head_dim / a_tp
                 + 2 * ffn_width / a_tp) * 2
    logits = minimum(mns, mnbt) * model.vocab_size / layout.tp * 4
    return mnbt * per_token + logits


def kv_capacity_tokens(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig,
                       weight_dtype=None, kv_dtype=None, gpu_memory_utilization=None, block_size=None,
                       max_num_batched_tokens=None, max_num_seqs=None, gpu_memory_gb=None,
                       num_gpu_blocks_override=None, kv_cache_memory_bytes=None, weights_per_gpu=None,
                       kv_per_token_per_gpu=None):
    """KV-cache capacity in tokens of one attention replica: num_gpu_blocks × block_size, the engine's own figure
    (vLLM's scheduler keeps one of those blocks as its null block; that is left to the scheduler model).

    The engine's explicit sizing wins, as in vLLM: `num_gpu_blocks_override` > 0 -> exactly that many blocks;
    otherwise an explicit KV space per GPU rank (`kv_cache_memory_bytes`; vLLM-CPU's `VLLM_CPU_KVCACHE_SPACE` GiB
    becomes exactly this) -> space / KV bytes per token per GPU, rounded down to whole blocks; otherwise the
    profiled free memory: memory × gpu_memory_utilization − weights − activations − CUDA graphs − non-torch
    memory on the most loaded GPU, over KV bytes per token per GPU, rounded down to whole blocks. Negative -> 0
    (does not fit). Keyword overrides let a frame pass per-row arrays instead of one EngineConfig; a caller that
    reports them too may pass `weight_bytes_per_gpu` and `kv_bytes_per_token_per_gpu` it computed for the same
    model, layout and dtypes (`weights_per_gpu`, `kv_per_token_per_gpu`).
    """
    wdt = engine.weight_dtype if weight_dtype is None else weight_dtype
    kdt = engine.kv_dtype if kv_dtype is None else kv_dtype
    util = engine.gpu_memory_utilization if gpu_memory_utilization is None else gpu_memory_utilization
    bs = engine.block_size if block_size is None else block_size
    override = engine.num_gpu_blocks_override if num_gpu_blocks_override is None else num_gpu_blocks_override
    space = engine.kv_cache_memory_gb * 1e9 if kv_cache_memory_bytes is None else kv_cache_memory_bytes
    override = _nan_to_num(override)
    space = _nan_to_num(space)
    mem_bytes = (gpu.memory_gb if gpu_memory_gb is None else gpu_memory_gb) * 1e9
    weights = weight_bytes_per_gpu(model, layout, wdt) if weights_per_gpu is None else weights_per_gpu
    free = (mem_bytes * util - weights
            - activation_bytes_per_gpu(model, layout, engine, max_num_batched_tokens, max_num_seqs)
            - CUDA_GRAPH_BYTES - NON_TORCH_BYTES)
    free = where(space > 0, space, free)
    per_token = kv_bytes_per_token_per_gpu(model, layout, kdt) if kv_per_token_per_gpu is None else kv_per_token_per_gpu
    # sliding-window layers: charge their per-sequence cost against a typical 256-sequence batch as per-token slack
    if any_(model.num_sliding_layers):
        per_token = per_token + kv_bytes_per_sequence_fixed(model, layout, kdt) / 4096.0
    tokens = floor(maximum(free, 0) / per_token)
    blocks = where(override > 0, floor(override) * bs, floor(tokens / bs) * bs)
    return blocks[()] if isinstance(blocks, np.ndarray) else blocks


def fits_in_memory(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, min_kv_tokens: int = 1):
    """True where weights and reserves leave room for at least `min_kv_tokens` of KV cache."""
    return kv_capacity_tokens(model, gpu, layout, engine) >= min_kv_tokens


def _nan_to_num(v):
    """`np.nan_to_num` of a sizing knob as floats, without its overhead on a plain finite number."""
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return np.nan_to_num(np.asarray(v, dtype=float))


def _bytes(dtype):
    if isinstance(dtype, str):
        return dtype_bytes(dtype)
    if isinstance(dtype, float):  # already bytes per element
        return dtype
    arr = np.asarray(dtype)
    if arr.dtype.kind in "fi":
        return arr
    return np.vectorize(dtype_bytes, otypes=[float])(arr)
