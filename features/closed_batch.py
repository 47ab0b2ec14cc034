"""Request-level simulation of one deployment serving a workload, driven by the physics step-time model.

Joins the memory model (KV capacity per replica), the step-time model (time of a stage step with d decoding
sequences, their KV tokens and p prefill tokens) and `features.scheduler.simulate` (vLLM v1's scheduling rules; with
PP, its micro-batches in flight).
"""

from __future__ import annotations

import numpy as np

from features.calibration import Calibration, default_calibration
from features.memory import kv_capacity_tokens
from features.scheduler import SimResult, simulate
from features.specs import EngineConfig, GPUSpec, Layout, ModelSpec, Workload
from features.steptime import replica_step_ms, stage_step_terms


def usable_kv_tokens(kv_capacity_tokens: float, block_size: int) -> int:
    """Tokens the scheduler can hand out of a cache of `kv_capacity_tokens` (what vLLM logs as the KV cache size):
    vLLM v1's block pool keeps one block as its null block (`BlockPool.null_block`), so (num_blocks - 1) x block_size."""
    blocks = int(kv_capacity_tokens) // int(block_size)
    return max(blocks - 1, 0) * int(block_size)


def step_time_fn(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, cal: Calibration):
    """The scheduler's step-time callback: seconds of one replica step (vectorised over steps)."""

    def step_time_s(decode_seqs, decode_kv_tokens, prefill_tokens):
        return replica_step_ms(model, gpu, layout, cal, decode_seqs, decode_kv_tokens, prefill_tokens, 0.0,
                               engine.weight_dtype, engine.kv_dtype) / 1e3

    return step_time_s


def stage_time_fn(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, cal: Calibration):
    """The scheduler's step-time callback for `simulate(..., pp=layout.pp)`: seconds of one step of the most loaded
    pipeline stage for one micro-batch (for PP 1 the same as `step_time_fn`); the scheduler composes the rounds."""
    if layout.pp == 1:
        return step_time_fn(model, gpu, layout, engine, cal)

    def step_time_s(decode_seqs, decode_kv_tokens, prefill_tokens):
        return stage_step_terms(model, gpu, layout, cal, np.asarray(decode_seqs, float),
                                np.asarray(decode_kv_tokens, float), np.asarray(prefill_tokens, float), 0.0,
                                engine.weight_dtype, engine.kv_dtype).stage_ms / 1e3

    return step_time_s


def simulate_deployment(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, workload: Workload,
                        num_requests: int | None = None, cal: Calibration | None = None, seed: int = 0,
                        record_timeline: bool = False) -> SimResult:
    """Simulate `num_requests` requests of `workload` (closed batch, fixed concurrency, or request rate)."""
    cal = cal or default_calibration()
    n = int(num_requests or workload.num_requests or max(workload.concurrency, 1) * 4)
    isl, osl = workload.sample(n, seed)
    arrival = None
    if workload.request_rate > 0:
        rng = np.random.default_rng(seed + 1)
        arrival = np.cumsum(rng.exponential(1.0 / workload.request_rate, size=n))
    return simulate_requests(model, gpu, layout, engine, cal, isl, osl, arrival_s=arrival,
                             concurrency=int(workload.concurrency), record_timeline=record_timeline)


def simulate_requests(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, cal: Calibration,
                      isl: np.ndarray, osl: np.ndarray, *, speed: float = 1.0, arrival_s: np.ndarray | None = None,
                      concurrency: int = 0, record_timeline: bool = False) -> SimResult:
    """Simulate exactly these requests on the deployment, on the physics step time (times `speed`, a learned
    correction of the step speed; 1.0: the physics alone) and the KV cache the scheduler can hand out."""
    step_time_s = stage_time_fn(model, gpu, layout, engine, cal)
    if speed != 1.0:
        base = step_time_s

        def step_time_s(decode_seqs, decode_kv_tokens, prefill_tokens):
            return speed * base(decode_seqs, decode_kv_tokens, prefill_tokens)

    cap = usable_kv_tokens(kv_capacity_tokens(model, gpu, layout, engine), engine.block_size)
    return simulate(
        isl, osl, step_time_s=step_time_s, kv_capacity_tokens=cap, pp=int(layout.pp),
        block_size=engine.block_size, max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens, enable_chunked_prefill=engine.enable_chunked_prefill,
        dp=int(layout.attention_replicas), arrival_s=arrival_s, concurrency=concurrency,
        record_timeline=record_timeline,
    )
