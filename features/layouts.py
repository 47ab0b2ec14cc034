"""Which parallel layouts are valid for a model on a GPU type, and why a layout is not.

Rules follow vLLM: attention heads divisible by TP; KV heads divisible by TP or TP divisible by KV heads
(replication); no more pipeline stages than layers; TP inside one node; experts divisible by EP and EP within the
GPUs of one replica set; and the weights plus reserves must leave room for the KV cache of at least one request.
"""

from __future__ import annotations

from features.errors import InfeasibleError
from features.memory import kv_capacity_tokens, weight_bytes_per_gpu
from features.specs import EngineConfig, GPUSpec, Layout, ModelSpec


def _powers_of_two(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def structural_reason(model: ModelSpec, layout: Layout, gpu: GPUSpec | None = None) -> str:
    """Why `layout` cannot run `model` regardless of memory ('' when it can)."""
    for name in ("tp", "pp", "dp", "ep"):
        if int(getattr(layout, name)) < 1:
            return f"{name.upper()} must be at least 1"
    a_tp = int(layout.attention_tp)
    if model.num_heads % a_tp:
        return f"TP {a_tp} does not divide the {model.num_heads} attention heads"
    if model.kv_lora_rank == 0 and model.num_kv_heads % a_tp and a_tp % model.num_kv_heads:
        return f"TP {a_tp} and the {model.num_kv_heads} KV heads do not divide one another"
    if layout.pp > model.num_layers:
        return f"PP {layout.pp} exceeds the {model.num_layers} layers"
    if gpu is not None and layout.tp > gpu.gpus_per_node:
        return f"TP {layout.tp} spans nodes ({gpu.gpus_per_node} GPUs per node); use PP or DP across nodes"
    if layout.ep > 1 and not model.is_moe:
        return "EP needs a mixture-of-experts model"
    if model.is_moe:
        if model.num_experts % layout.ep:
            return f"EP {layout.ep} does not divide the {model.num_experts} experts"
        if (layout.tp * layout.dp) % layout.ep:
            return f"EP {layout.ep} must divide TP x DP = {layout.tp * layout.dp}"
        if layout.ep > layout.tp and layout.ep % layout.tp:
            return f"EP {layout.ep} must be a multiple of TP {layout.tp} when it spans DP ranks"
        if layout.moe_tp > 1 and model.moe_intermediate_size % int(layout.moe_tp):
            return f"expert TP {int(layout.moe_tp)} does not divide the expert FFN {model.moe_intermediate_size}"
    if layout.attention_dp and not model.is_moe:
        return "attention-DP is for MoE models (use DP for dense models)"
    if model.intermediate_size % a_tp and not model.is_moe:
        return f"TP {a_tp} does not divide the FFN width {model.intermediate_size}"
    return ""


def memory_reason(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, min_tokens: int = 1,
                  weight_bytes: float | None = None, kv_tokens: float | None = None) -> str:
    """Why `layout` does not fit in memory ('' when it fits with room for `min_tokens` of KV cache). A caller that
    has already computed the weight bytes per GPU and the KV capacity (the serving physics does) passes them."""
    weights = float(weight_bytes_per_gpu(model, layout, engine.weight_dtype) if weight_bytes is None else weight_bytes)
    budget = gpu.memory_gb * 1e9 * engine.gpu_memory_utilization
    if weights > budget:
        return (f"weights need {weights / 1e9:.1f} GB per GPU, more than {budget / 1e9:.1f} GB "
                f"({engine.gpu_memory_utilization:.0%} of {gpu.memory_gb:g} GB)")
    cap = float(kv_capacity_tokens(model, gpu, layout, engine) if kv_tokens is None else kv_tokens)
    if cap < min_tokens:
        return f"only {cap:.0f} tokens of KV cache remain after weights and reserves (need {min_tokens})"
    return ""


def infeasible_reason(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, min_tokens: int = 1) -> str:
    """Structural reason first, then memory; '' when the layout can serve."""
    return structural_reason(model, layout, gpu) or memory_reason(model, gpu, layout, engine, min_tokens)


def check_layout(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, min_tokens: int = 1,
                 memory: bool = True) -> None:
    """Raise InfeasibleError with the reason when `layout` cannot serve `model` on `gpu` (`memory=False`: the
    structural rules only; the caller checks memory with `check_memory`)."""
    reason = infeasible_reason(model, gpu, layout, engine, min_tokens) if memory else structural_reason(model, layout, gpu)
    if reason:
        raise InfeasibleError(f"{layout.label()} cannot serve {model.name} on {gpu.name}: {reason}")


def check_memory(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, min_tokens: int = 1,
                 weight_bytes: float | None = None, kv_tokens: float | None = None) -> None:
    """Raise InfeasibleError when `layout` does not fit in memory (`memory_reason`, with precomputed values)."""
    reason = memory_reason(model, gpu, layout, engine, min_tokens, weight_bytes, kv_tokens)
    if reason:
        raise InfeasibleError(f"{layout.label()} cannot serve {model.name} on {gpu.name}: {reason}")


def enumerate_layouts(model: ModelSpec, gpu: GPUSpec, num_gpus: int, include_moe_variants: bool = True) -> list[Layout]:
    """Every TP × PP × DP (× EP, attention-DP for MoE) with tp·pp·dp = num_gpus; TP and EP in powers of two,
    TP within a node. Structurally invalid ones are included: callers report them with their reason."""
    out: list[Layout] = []
    for tp in _powers_of_two(min(num_gpus, max(gpu.gpus_per_node, 1) * 8)):
        if num_gpus % tp:
            continue
        rest = num_gpus // tp
        for pp in [p for p in range(1, rest + 1) if rest % p == 0]:
            dp = rest // pp
            out.append(Layout(tp=tp, pp=pp, dp=dp))
            if include_moe_variants and model.is_moe:
                for ep in _powers_of_two(tp * dp):
                    if ep == 1:
                        continue
                    out.append(Layout(tp=tp, pp=pp, dp=dp, ep=ep))
                    if ep == tp and tp > 1:
                        out.append(Layout(tp=tp, pp=pp, dp=dp, ep=ep, attention_dp=True))
    return out
