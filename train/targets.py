"""Which targets the learned models correct, per measurement kind, and which direction of each is better."""

from __future__ import annotations

# targets the physics model answers (`phys_<target>`), per row kind; `preemptions` has no physics term (and is often 0)
PHYSICS_TARGETS: dict[str, tuple[str, ...]] = {
    "serving": (
        "output_throughput",
        "total_throughput",
        "request_throughput",
        "ttft_ms",
        "tpot_ms",
        "ttft_p99_ms",
        "tpot_p99_ms",
        "makespan_s",
        "kv_capacity_tokens",
    ),
    "step": ("layer_ms", "lm_head_ms"),
    "op": ("op_ms",),
}
ALL_TARGETS: tuple[str, ...] = tuple(t for ts in PHYSICS_TARGETS.values() for t in ts)
KIND_OF_TARGET: dict[str, str] = {t: k for k, ts in PHYSICS_TARGETS.items() for t in ts}
HIGHER_IS_BETTER: frozenset[str] = frozenset(
    {"output_throughput", "total_throughput", "request_throughput", "kv_capacity_tokens"}
)
# throughput-like targets scale with the number of GPUs: a search over a GPU budget compares them per GPU
PER_GPU_TARGETS: frozenset[str] = frozenset({"output_throughput", "total_throughput", "request_throughput"})


def phys_col(target: str) -> str:
    """Column holding the physics model's answer for `target`."""
    return f"phys_{target}"


def pred_cols(target: str) -> tuple[str, str, str]:
    """Columns of the point prediction and the 80% interval's low and high ends."""
    return f"pred_{target}", f"pred_{target}_lo", f"pred_{target}_hi"
