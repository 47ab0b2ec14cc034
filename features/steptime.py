"""Step-time physics: one engine step (decode tokens plus chunked-prefill tokens) on one pipeline stage.

Per layer and GPU: GEMMs as latency floor + blended memory/compute time (`gemm_ms`), decode attention as KV
bytes over an achieved bandwidth that grows with the number of (sequence × KV head) work units, prefill attention
FLOPs, MoE grouped GEMMs over the experts the batch actually hits, small kernels, and TP all-reduce / EP
all-to-all. All functions are vectorised: scalars or numpy arrays (columnar specs) broadcast together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from features import comm
from features.calibration import Calibration
from features.elementwise import any_, as_float, maximum, rows_shape, where
from features.memory import _bytes, kv_heads_per_gpu, layers_per_stage
from features.specs import GPUSpec, Layout, ModelSpec

ACT_BYTES = 2.0  # activations are bf16


def peak_tflops(gpu: GPUSpec, weight_dtype) -> np.ndarray:
    """Datasheet dense rate for the GEMM dtype (fp8/fp4 weights run W8A8/W4A4 where the GPU supports it)."""
    wb = _bytes(weight_dtype)
    if not any(isinstance(v, np.ndarray) for v in (wb, gpu.fp8_tflops, gpu.fp4_tflops, gpu.bf16_tflops)):
        # one GPU and one dtype: the same choice without array operations
        fp8 = gpu.fp8_tflops if gpu.fp8_tflops > 0 else gpu.bf16_tflops
        fp4 = gpu.fp4_tflops if gpu.fp4_tflops > 0 else fp8
        return fp4 if wb <= 0.5 else fp8 if wb <= 1.0 else gpu.bf16_tflops
    fp8 = np.where(np.asarray(gpu.fp8_tflops) > 0, gpu.fp8_tflops, gpu.bf16_tflops)
    fp4 = np.where(np.asarray(gpu.fp4_tflops) > 0, gpu.fp4_tflops, fp8)
    return np.where(wb <= 0.5, fp4, np.where(wb <= 1.0, fp8, gpu.bf16_tflops))


def gemm_terms(m, n, k, weight_bytes, gpu: GPUSpec, cal: Calibration, weight_dtype="bf16", peak=None):
    """(memory ms, compute ms) of x[m,k] @ W[k,n]: bytes of W plus activations in/out; 2mnk FLOPs."""
    m = np.asarray(m, dtype=float)
    bytes_moved = n * k * weight_bytes + (m * k + m * n) * ACT_BYTES
    t_mem = bytes_moved / (cal.gemm_bw_frac * gpu.hbm_bandwidth_gbps * 1e9) * 1e3
    peak = peak_tflops(gpu, weight_dtype) if peak is None else peak
    t_comp = 2.0 * m * n * k / (cal.gemm_rate_frac * peak * 1e12) * 1e3
    return t_mem, t_comp


def gemm_ms(m, n, k, gpu: GPUSpec, cal: Calibration, weight_dtype="bf16", peak=None, weight_bytes=None):
    """Time of one GEMM: floor + (t_mem^p + t_compute^p)^(1/p); zero when m = 0."""
    wb = _bytes(weight_dtype) if weight_bytes is None else weight_bytes
    t_mem, t_comp = gemm_terms(m, n, k, wb, gpu, cal, weight_dtype, peak)
    return _gemm_time(m, t_mem, t_comp, cal)


def _gemm_time(m, t_mem, t_comp, cal: Calibration):
    """floor + (t_mem^p + t_compute^p)^(1/p) of `gemm_terms`; zero when m = 0."""
    p = cal.gemm_p
    blend = np.hypot(t_mem, t_comp) if p == 2.0 else (t_mem**p + t_comp**p) ** (1.0 / p)
    t = cal.gemm_floor_ms + blend
    return np.where(np.asarray(m) > 0, t, 0.0)


STACKED_GEMMS_MAX = 1 << 14  # elements (GEMMs × rows of m) up to which `gemms_ms` stacks the GEMMs in one pass


def gemms_ms(m, shapes: dict, weight_bytes, gpu: GPUSpec, cal: Calibration, peak, terms_of=()) -> tuple[dict, dict]:
    """`gemm_ms` (and its `gemm_terms`) for several weight shapes at once: the same formulas, evaluated over a
    leading axis that stacks the GEMMs (one pass of numpy operations for all of them, the same numbers as one call
    each).

    `shapes` maps a name to the (n, k) of x[m, k] @ W[k, n]; n and k may be scalars or per-row arrays, all in the
    weight dtype of `weight_bytes` (at peak rate `peak`). Returns ({name: time ms}, {name: (t_mem, t_comp)} for the
    names in `terms_of`); a GEMM whose n and k do not vary by row may come back broadcast to the rows of those that
    do. Stacking pays on few rows, where numpy's per-call overhead is the cost; on many rows (above
    `STACKED_GEMMS_MAX` elements) the GEMMs go one at a time, which keeps each one's temporaries small.
    """
    m = np.asarray(m, dtype=float)
    if m.size * len(shapes) > STACKED_GEMMS_MAX:
        return (_GemmsOneByOne(m, shapes, weight_bytes, gpu, cal, peak),
                {name: gemm_terms(m, *shapes[name], weight_bytes, gpu, cal, peak=peak) for name in terms_of})
    n = _stack([nk[0] for nk in shapes.values()])
    k = _stack([nk[1] for nk in shapes.values()])
    # the stacking axis goes in front of every operand's dimensions (rows broadcast behind it)
    ndim = max(m.ndim, n.ndim - 1, k.ndim - 1,
               *(getattr(v, "ndim", 0) for v in (weight_bytes, peak, gpu.hbm_bandwidth_gbps)))
    n, k = (v.reshape((len(shapes),) + (1,) * (ndim + 1 - v.ndim) + v.shape[1:]) for v in (n, k))
    t_mem, t_comp = gemm_terms(m, n, k, weight_bytes, gpu, cal, peak=peak)
    index = {name: i for i, name in enumerate(shapes)}
    return (dict(zip(shapes, _gemm_time(m, t_mem, t_comp, cal))),
            {name: (t_mem[index[name]], t_comp[index[name]]) for name in terms_of})


class _GemmsOneByOne(Mapping):
    """`gemms_ms`'s times on many rows: each GEMM computed when it is read, and not kept (so the temporaries of
    one are freed before the next, as a call of `gemm_ms` per GEMM does)."""

    def __init__(self, m, shapes: dict, weight_bytes, gpu: GPUSpec, cal: Calibration, peak):
        self.m, self.shapes, self.weight_bytes, self.gpu, self.cal, self.peak = m, shapes, weight_bytes, gpu, cal, peak

    def __getitem__(self, name: str) -> np.ndarray:
        n, k = self.shapes[name]
        return gemm_ms(self.m, n, k, self.gpu, self.cal, peak=self.peak, weight_bytes=self.weight_bytes)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _stack(values: list) -> np.ndarray:
    """Scalars or arrays stacked on a new leading axis (broadcast together), as floats."""
    try:
        return np.array(values, dtype=float)
    except ValueError:  # scalars beside per-row arrays, or arrays of different shapes
        return np.stack(np.broadcast_arrays(*values)).astype(float)


def _zeros_over(*values) -> np.ndarray:
    """Zeros with the broadcast shape of `values`: a term no row has, shaped as its formula over them would be."""
    return np.zeros(rows_shape(values))


def kv_splits(seqs, kv_tokens, cal: Calibration, split_kv=1.0) -> np.ndarray:
    """Thread blocks each (sequence, KV head) is cut into along its context by a split-KV (flash-decoding) kernel.

    Serving engines' decode kernels (FlashAttention's and FlashInfer's split-KV, TensorRT-LLM's multi-block XQA)
    cut a long context into chunks of at least `attn_split_tokens` KV tokens, at most `attn_max_splits` of them
    (both fitted on vLLM's measured decode kernels, `calibrate.fit_split_attention`), so few sequences still fill
    the GPU. `split_kv` 0 (per row) keeps one block per (sequence, KV head), as PyTorch's SDPA ran in the GPU probe
    and the torch backend, and TensorRT-LLM before 0.12 unless built with multi-block mode.
    """
    seqs = np.asarray(seqs, dtype=float)
    ctx = np.asarray(kv_tokens, dtype=float) / np.maximum(seqs, 1.0)
    splits = np.clip(np.ceil(ctx / cal.attn_split_tokens), 1.0, cal.attn_max_splits)
    return 1.0 + as_float(split_kv) * (splits - 1.0)


def decode_attention_ms(seqs, kv_tokens, model: ModelSpec, layout: Layout, gpu: GPUSpec, cal: Calibration, kv_dtype="bf16",
                        split_kv=1.0):
    """Decode attention of one layer on one GPU: floor + max(KV bytes / achieved bandwidth, FLOPs / rate).

    The achieved bandwidth is min(saturated, units × per-unit) with units = sequences × KV heads per GPU (one
    thread block each), as the GPU probe measured (0.36 TB/s at batch 1 vs 4.6 TB/s at batch ≥ 32 on an H200).
    The saturated bandwidth is a fraction of the datasheet HBM bandwidth; the per-unit bandwidth is an absolute
    rate (`attn_unit_gbps`): one thread block streams KV as fast as its loads in flight over the memory latency
    allow, whatever the HBM generation (an H100 and an H200 run batch-1 attention in the same time, while
    batch ≥ 32 attention scales with their 1.43× datasheet bandwidth ratio). Serving engines split each context
    over several blocks (`kv_splits`), so their units are sequences × KV heads × splits.
    """
    seqs = np.asarray(seqs, dtype=float)
    kv_tokens = np.asarray(kv_tokens, dtype=float)
    kb = _bytes(kv_dtype)
    kvh = kv_heads_per_gpu(model, layout)
    heads = maximum(1, model.num_heads / layout.attention_tp)
    is_mla = model.kv_lora_rank > 0
    per_token = where(is_mla, (model.kv_lora_rank + model.qk_rope_head_dim) * kb, 2 * kvh * model.head_dim * kb)
    units = seqs * where(is_mla, maximum(1, heads / 16), kvh) * kv_splits(seqs, kv_tokens, cal, split_kv)
    hbm = gpu.hbm_bandwidth_gbps * 1e9
    bw = np.minimum(cal.attn_bw_sat_frac * hbm, np.maximum(units, 1) * cal.attn_unit_gbps * 1e9)
    # FLOPs per KV token and head: 2·(2·kv_lora_rank + rope dim) for MLA's latent, 4·head_dim for GQA (QK and PV)
    flops = kv_tokens * heads * where(is_mla, 2 * (2 * model.kv_lora_rank + model.qk_rope_head_dim), 4 * model.head_dim)
    t_mem = kv_tokens * per_token / bw * 1e3
    t_comp = flops / (cal.prefill_attn_rate_frac * gpu.bf16_tflops * 1e12) * 1e3
    return np.where(seqs > 0, cal.attn_floor_ms + np.maximum(t_mem, t_comp), 0.0), t_mem


def prefill_attention_ms(prefill_tokens, prefix_tokens, model: ModelSpec, layout: Layout, gpu: GPUSpec, cal: Calibration):
    """Causal attention FLOPs of a prefill chunk of T tokens after P cached tokens: 4·T·(P + T/2)·heads·head_dim."""
    T = np.asarray(prefill_tokens, dtype=float)
    P = np.asarray(prefix_tokens, dtype=float)
    heads = maximum(1, model.num_heads / layout.attention_tp)
    hd = where(model.kv_lora_rank > 0, model.qk_nope_head_dim + model.qk_rope_head_dim, model.head_dim)
    flops = 4.0 * T * (P + T / 2.0) * heads * hd
    t = flops / (cal.prefill_attn_rate_frac * gpu.bf16_tflops * 1e12) * 1e3
    return np.where(T > 0, cal.attn_floor_ms + t, 0.0)


def rope_kv_append_ms(tokens, model: ModelSpec, layout: Layout, gpu: GPUSpec, cal: Calibration, kv_dtype="bf16"):
    """RoPE on the new tokens' query and key heads plus the KV-cache append of their keys and values, one layer.

    Two small kernels, each a latency floor (`rope_kv_floor_ms`) plus its bytes over the GEMM-achieved HBM
    bandwidth: RoPE reads and writes (heads + KV heads) × head_dim bf16 values per token, `rope_traffic` times
    over (an unfused rotate-half moves the tensor several times), and the append reads and writes 2 × KV heads ×
    head_dim values per token. Zero when there are no tokens. MLA models rotate only the RoPE part of the latent.
    """
    m = np.asarray(tokens, dtype=float)
    kb = _bytes(kv_dtype)
    kvh = kv_heads_per_gpu(model, layout)
    heads = maximum(1, model.num_heads / layout.attention_tp)
    is_mla = model.kv_lora_rank > 0
    rot = where(is_mla, (heads + 1) * model.qk_rope_head_dim, (heads + kvh) * model.head_dim)
    rope_bytes = 2.0 * rot * ACT_BYTES * cal.rope_traffic
    append_bytes = 2.0 * where(is_mla, (model.kv_lora_rank + model.qk_rope_head_dim) * kb, 2 * kvh * model.head_dim * kb)
    bw = cal.gemm_bw_frac * gpu.hbm_bandwidth_gbps * 1e9
    t = 2.0 * cal.rope_kv_floor_ms + m * (rope_bytes + append_bytes) / bw * 1e3
    return np.where(m > 0, t, 0.0)


@dataclass
class StepTerms:
    """Per-stage time of one engine step, split into the terms that explain it (all ms, arrays broadcast)."""

    gemm_ms: np.ndarray  # dense GEMMs (attention projections, dense FFN, shared experts)
    attention_ms: np.ndarray
    moe_ms: np.ndarray
    misc_ms: np.ndarray  # small kernels per layer
    comm_ms: np.ndarray  # TP all-reduce + EP all-to-all per layer, times layers
    lm_head_ms: np.ndarray
    overhead_ms: np.ndarray  # engine step overhead (CPU)
    p2p_ms: np.ndarray
    # explanatory sub-terms (not added again)
    weight_read_ms: np.ndarray
    kv_read_ms: np.ndarray
    compute_ms: np.ndarray
    layer_ms: np.ndarray  # one decoder layer (average over dense and MoE layers), no communication

    @property
    def stage_ms(self):
        return (self.gemm_ms + self.attention_ms + self.moe_ms + self.misc_ms + self.comm_ms + self.lm_head_ms
                + self.overhead_ms + self.p2p_ms)


def stage_step_terms(model: ModelSpec, gpu: GPUSpec, layout: Layout, cal: Calibration, decode_seqs, decode_kv_tokens,
                     prefill_tokens=0.0, prefill_prefix_tokens=0.0, weight_dtype="bf16", kv_dtype="bf16",
                     include_comm=True, include_lm_head=True, include_overhead=True, rope_kv=0.0,
                     split_kv=1.0) -> StepTerms:
    """Time of one step of the most loaded pipeline stage for one attention replica's batch.

    `decode_seqs` sequences each decode one token with `decode_kv_tokens` KV tokens in total; `prefill_tokens`
    prompt tokens (chunked prefill, after `prefill_prefix_tokens` cached ones) run in the same fused step.
    `rope_kv` (0 or 1, per row) adds the RoPE and KV-append kernels as layoutcast's torch backend runs them
    (unfused: `rope_kv_append_ms`): 1 for its layer stacks (source `torch-probe`); 0 for serving engines, whose
    fused rotary and cache-write kernels are a few microseconds and sit in the fitted small-kernel term
    (`layer_misc_ms`), and for the H200 GPU probe, whose layers ran without them. `split_kv` (0 or 1, per row):
    whether decode attention splits each context over several thread blocks (`kv_splits`): 1 for serving engines,
    0 for PyTorch SDPA (the GPU probe and the torch backend).

    Terms that no row has (MLA projections, shared or routed experts, EP all-to-all, the pipeline hand-off, the
    RoPE/KV-append kernels) are not evaluated: they are zeros shaped as their formula would have been.
    """
    d = np.asarray(decode_seqs, dtype=float)
    kv = np.asarray(decode_kv_tokens, dtype=float)
    T = np.asarray(prefill_tokens, dtype=float)
    m = d + T  # tokens through the GEMMs
    running = m > 0  # rows whose step runs any token
    h, hd = model.hidden_size, model.head_dim
    a_tp = layout.attention_tp
    heads_g = maximum(1, model.num_heads / a_tp)
    kvh_g = kv_heads_per_gpu(model, layout)
    wb = _bytes(weight_dtype)
    peak = peak_tflops(gpu, wb)

    is_mla = model.kv_lora_rank > 0
    any_mla = any_(is_mla)
    shared_w = model.num_shared_experts * model.moe_intermediate_size / a_tp
    any_shared = any_(shared_w > 0)
    # every dense GEMM of a layer as the (n, k) of x[m, k] @ W[k, n], evaluated together by `gemms_ms`
    shapes = {
        "qkv": ((heads_g + 2 * kvh_g) * hd, h),  # GQA attention projections
        "o": (h, heads_g * hd),
        "ffn_in": ((model.ffn_matrices - 1) * model.intermediate_size / a_tp, h),  # dense FFN: gate and up, down
        "ffn_out": (h, model.intermediate_size / a_tp),
        "ffn": (model.ffn_matrices * model.intermediate_size / a_tp, h),  # the whole FFN as one (explanatory terms)
    }
    if any_mla:
        qk_hd = model.qk_nope_head_dim + model.qk_rope_head_dim
        shapes.update({
            "q_a": (model.q_lora_rank, h), "q_b": (heads_g * qk_hd, maximum(model.q_lora_rank, 1)),
            "q": (heads_g * qk_hd, h),  # MLA query: low-rank (q_a, q_b) or one projection
            "kv_a": (model.kv_lora_rank + model.qk_rope_head_dim, h),
            "kv_b": (heads_g * (model.qk_nope_head_dim + model.v_head_dim), maximum(model.kv_lora_rank, 1)),
            "mla_o": (h, heads_g * maximum(model.v_head_dim, 1)),
        })
    if any_shared:  # shared experts (MoE layers): gate and up, down
        shapes.update({"shared_in": (2 * maximum(shared_w, 1), h), "shared_out": (h, maximum(shared_w, 1))})
    g, explain = gemms_ms(m, shapes, wb, gpu, cal, peak, terms_of=("qkv", "o", "ffn"))

    # attention projections
    gqa_proj = g["qkv"] + g["o"]
    mla_proj = 0.0 if not any_mla else (where(model.q_lora_rank > 0, g["q_a"] + g["q_b"], g["q"])
                                         + g["kv_a"] + g["kv_b"] + g["mla_o"])
    proj = where(is_mla, mla_proj, gqa_proj)
    # dense FFN (dense layers) and shared experts (MoE layers)
    dense_ffn = g["ffn_in"] + g["ffn_out"]
    shared = 0.0 if not any_shared else where(shared_w > 0, g["shared_in"] + g["shared_out"], 0.0)
    L = model.num_layers
    dense_frac = model.num_dense_ffn_layers / L
    moe_frac = model.num_moe_layers / L
    gemm_layer = proj + dense_frac * dense_ffn + moe_frac * shared

    # MoE: tokens entering the MoE group come from every attention replica in it
    has_experts = model.num_experts > 0
    E = maximum(model.num_experts, 1)
    k_top = model.experts_per_token
    hbm = gpu.hbm_bandwidth_gbps * 1e9
    if any_(has_experts):
        group_tokens = m * layout.moe_group / a_tp
        local_experts = E / layout.ep
        hit = local_experts * (1.0 - (1.0 - k_top / E) ** group_tokens)
        expert_bytes = 3 * h * model.moe_intermediate_size * wb / layout.moe_tp
        moe_bytes = hit * expert_bytes
        moe_flops = 2.0 * group_tokens * k_top * 3 * h * model.moe_intermediate_size / layout.moe_group
        moe_mem = moe_bytes / (cal.moe_bw_frac * hbm) * 1e3
        moe_comp = moe_flops / (cal.moe_rate_frac * peak * 1e12) * 1e3
        moe_layer = np.where(has_experts & running, cal.moe_floor_ms + moe_mem + moe_comp, 0.0) * moe_frac
    else:  # a dense model: no expert is hit and no expert FLOPs run
        moe_mem = moe_comp = 0.0
        moe_layer = _zeros_over(m, has_experts, moe_frac, h, model.moe_intermediate_size, wb, layout.tp, layout.ep, a_tp,
                                hbm, peak)

    attn_dec, kv_read = decode_attention_ms(d, kv, model, layout, gpu, cal, kv_dtype, split_kv)
    attn_pre = prefill_attention_ms(T, prefill_prefix_tokens, model, layout, gpu, cal)
    misc = np.where(running, cal.layer_misc_ms + cal.misc_bytes_per_token_hidden * m * h / hbm * 1e3, 0.0)
    rope_kv = as_float(rope_kv)
    if any_(rope_kv):
        misc = misc + rope_kv * rope_kv_append_ms(m, model, layout, gpu, cal, kv_dtype)
    else:  # no row runs the unfused RoPE and KV-append kernels
        misc = misc + _zeros_over(rope_kv, m, model.num_heads, model.num_kv_heads, hd, model.kv_lora_rank, a_tp,
                                  hbm, _bytes(kv_dtype))

    # communication per layer: 2 all-reduces of m×hidden under attention TP; EP all-to-all dispatch + combine; the
    # token exchange of MoE TP across attention-DP ranks
    if include_comm:
        ar_bytes = m * h * ACT_BYTES
        tp_comm = 2 * comm.allreduce_ms(ar_bytes, a_tp, gpu, cal)
        ep_rows = has_experts & (layout.ep > 1)
        if any_(ep_rows):
            a2a_bytes = m * k_top * h * ACT_BYTES
            ep_comm = where(ep_rows, 2 * comm.alltoall_ms(a2a_bytes, layout.moe_group, gpu, cal,
                                                          comm.ep_group_gpus_per_node(gpu, layout)), 0.0) * moe_frac
        else:  # no row spreads experts over EP ranks: nothing to dispatch
            ep_comm = _zeros_over(m, ep_rows, moe_frac, k_top, h, layout.tp, layout.pp, gpu.gpus_per_node,
                                  gpu.internode_bandwidth_gbps, gpu.link_bandwidth_gbps)
        # MoE TP over attention-DP ranks (attention DP without EP): each rank's tokens are gathered over the MoE group
        # before the experts and the partial outputs reduce-scattered back, the traffic of an all-reduce of the group's
        # tokens (vLLM's DP with MoE sharded over all DP x TP ranks)
        dp_moe_rows = has_experts & (layout.ep <= 1) & (layout.moe_group > a_tp)
        if any_(dp_moe_rows):
            group_bytes = m * layout.moe_group / a_tp * h * ACT_BYTES
            dp_moe_comm = where(dp_moe_rows, comm.allreduce_ms(group_bytes, layout.moe_group, gpu, cal), 0.0) * moe_frac
        else:  # no row shards experts over attention-DP ranks without EP
            dp_moe_comm = 0.0
        comm_layer = np.where(running, tp_comm + ep_comm + dp_moe_comm, 0.0)
    else:
        comm_layer = np.zeros_like(m)

    n_layers = layers_per_stage(model, layout)
    # LM head (bf16) on the last stage for the sequences that emit a token this step (a prefill chunk emits one)
    out_rows = d + (T > 0)
    lm_head = gemm_ms(out_rows, model.vocab_size / layout.tp, h, gpu, cal, peak=gpu.bf16_tflops,
                      weight_bytes=_bytes("bf16"))
    lm = np.where(out_rows > 0, lm_head + cal.sampling_ms, 0.0)
    lm = lm if include_lm_head else np.zeros_like(lm)
    overhead = np.where(running, cal.step_overhead_ms, 0.0) if include_overhead else np.zeros_like(m)
    if any_(layout.pp > 1):
        p2p = np.where((layout.pp > 1) & running, comm.p2p_ms(m * h * ACT_BYTES, gpu, cal,
                                                              layout.tp * layout.pp > gpu.gpus_per_node), 0.0)
    else:  # one pipeline stage: no hand-off
        p2p = _zeros_over(m, layout.pp, h, layout.tp, gpu.gpus_per_node, gpu.internode_bandwidth_gbps,
                          gpu.link_bandwidth_gbps)

    # explanatory terms: weight streaming vs KV streaming vs compute
    (w_attn_mem, w_attn_comp), (o_mem, o_comp), (f_mem, f_comp) = explain["qkv"], explain["o"], explain["ffn"]
    weight_read = n_layers * (w_attn_mem + o_mem + dense_frac * f_mem + moe_mem)
    compute = n_layers * (w_attn_comp + o_comp + dense_frac * f_comp + moe_comp)

    layer = gemm_layer + moe_layer + attn_dec + attn_pre + misc
    return StepTerms(
        gemm_ms=n_layers * gemm_layer,
        attention_ms=n_layers * (attn_dec + attn_pre),
        moe_ms=n_layers * moe_layer,
        misc_ms=n_layers * misc,
        comm_ms=n_layers * comm_layer,
        lm_head_ms=lm,
        overhead_ms=overhead,
        p2p_ms=p2p,
        weight_read_ms=weight_read,
        kv_read_ms=n_layers * kv_read,
        compute_ms=compute,
        layer_ms=layer,
    )


def replica_step_ms(model: ModelSpec, gpu: GPUSpec, layout: Layout, cal: Calibration, decode_seqs, decode_kv_tokens,
                    prefill_tokens=0.0, prefill_prefix_tokens=0.0, weight_dtype="bf16", kv_dtype="bf16", split_kv=1.0):
    """Time between two tokens of a request in one replica running `decode_seqs` sequences.

    PP = 1: one stage step. PP > 1: the batch is split into `pp` micro-batches in flight (vLLM's batch queue),
    so each request advances once per pp × stage step of a micro-batch of decode_seqs / pp sequences.
    """
    pp = layout.pp
    terms = stage_step_terms(model, gpu, layout, cal, np.asarray(decode_seqs, float) / pp,
                             np.asarray(decode_kv_tokens, float) / pp, np.asarray(prefill_tokens, float) / pp,
                             prefill_prefix_tokens, weight_dtype, kv_dtype, split_kv=split_kv)
    return pp * terms.stage_ms
