"""Disaggregated prefill/decode serving physics: a prefill pool and a decode pool of separate replicas.

Prefill replicas run only prompts (chunks of `max_num_batched_tokens`), the decode pool runs only decode steps (no
prefill tokens in its steps, which is why disaggregation lowers TPOT), and each request's prompt KV cache crosses the
link between the pools (NVLink when both pools sit in one node, the NIC otherwise). Vectorised like
`features.serving.estimate_serving`: every argument may be a scalar or a per-row array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features import comm
from features.calibration import Calibration
from features.memory import (kv_bytes_per_token, kv_bytes_per_token_per_gpu, kv_capacity_tokens, weight_bytes_per_gpu,
                             _bytes)
from features.serving import EngineArrays, dominant_term, expected_max_osl, explanatory_terms_ms
from features.specs import EngineConfig, GPUSpec, Layout, ModelSpec
from features.steptime import replica_step_ms, stage_step_terms


def kv_transfer_bytes(model: ModelSpec, prompt_tokens, kv_dtype="bf16"):
    """Bytes of one request's prompt KV cache (all layers, unsharded; sliding layers hold at most their window)."""
    kb = _bytes(kv_dtype)
    full = np.asarray(prompt_tokens, dtype=float) * kv_bytes_per_token(model, kv_dtype)
    window = np.minimum(np.asarray(prompt_tokens, dtype=float), np.maximum(model.sliding_window, 0))
    sliding = model.num_sliding_layers * window * 2 * model.num_kv_heads * model.head_dim * kb
    return full + sliding


def kv_transfer_ms(model: ModelSpec, gpu: GPUSpec, cal: Calibration, prompt_tokens, kv_dtype, prefill_gpus, decode_gpus,
                   crosses_node):
    """Time to move one prompt's KV from its prefill replica to its decode replica: every GPU of the smaller replica
    moves its shard over its own link in parallel (lanes = min of the two replica sizes), as a P2P send each."""
    lanes = np.maximum(np.minimum(np.asarray(prefill_gpus, dtype=float), np.asarray(decode_gpus, dtype=float)), 1.0)
    return comm.p2p_ms(kv_transfer_bytes(model, prompt_tokens, kv_dtype) / lanes, gpu, cal, crosses_node)


def pools_cross_nodes(gpu: GPUSpec, num_gpus):
    """Prefill and decode pools share a node only when the whole deployment fits in one node."""
    return np.asarray(num_gpus) > gpu.gpus_per_node


@dataclass
class DisaggEstimate:
    """Per-row physics answer for a disaggregated deployment, with the terms that explain it."""

    kv_capacity_tokens: np.ndarray  # per decode replica
    prefill_kv_capacity_tokens: np.ndarray
    weight_bytes_per_gpu: np.ndarray  # the larger of the two pools
    batch: np.ndarray  # steady-state running sequences per decode replica
    batch_limit_kv: np.ndarray
    demand_per_replica: np.ndarray
    tpot_ms: np.ndarray
    ttft_ms: np.ndarray
    ttft_p99_ms: np.ndarray
    tpot_p99_ms: np.ndarray
    output_throughput: np.ndarray
    total_throughput: np.ndarray
    request_throughput: np.ndarray
    makespan_s: np.ndarray
    prefill_ms: np.ndarray  # one prompt alone on a prefill replica
    kv_transfer_ms: np.ndarray  # one prompt's KV from prefill to decode replica
    prefill_rate_per_s: np.ndarray  # requests/s the prefill pool sustains
    decode_rate_per_s: np.ndarray  # requests/s the decode pool sustains when fed at will
    transfer_rate_per_s: np.ndarray  # requests/s the links between the pools sustain
    hbm_bw_util: np.ndarray  # decode pool
    terms: dict  # decode pool ms per step at the steady batch; kv_transfer and prefill per request
    regime: np.ndarray
    bottleneck: np.ndarray
    feasible: np.ndarray
    infeasible_reason: np.ndarray


def estimate_disaggregated(model: ModelSpec, gpu: GPUSpec, prefill: Layout, num_prefill_replicas, decode: Layout,
                           engine: EngineArrays, cal: Calibration, isl, osl, num_requests=0, concurrency=0,
                           request_rate=0.0, osl_median=None, osl_sigma=0.0, osl_max=None,
                           crosses_node=None) -> DisaggEstimate:
    """Steady state of `num_prefill_replicas` prefill replicas of layout `prefill` feeding a decode pool `decode`
    (its `dp` is the number of decode replicas). Throughput is the least of what the prefill pool, the links and
    the decode pool sustain; TTFT = prefill + KV transfer + the first decode step (+ queueing); TPOT = decode steps
    without prefill tokens."""
    isl = np.asarray(isl, dtype=float)
    osl = np.asarray(osl, dtype=float)
    nreq = np.asarray(num_requests, dtype=float)
    conc = np.asarray(concurrency, dtype=float)
    rate = np.asarray(request_rate, dtype=float)
    n_p = np.asarray(num_prefill_replicas, dtype=float)
    mns = np.asarray(engine.max_num_seqs, dtype=float)
    mnbt = np.asarray(engine.max_num_batched_tokens, dtype=float)
    bs = np.asarray(engine.block_size, dtype=float)
    wdt, kdt = engine.weight_dtype, engine.kv_dtype
    p_gpus = np.asarray(prefill.tp * prefill.pp, dtype=float)
    d_gpus_replica = np.asarray(decode.tp * decode.pp, dtype=float)
    total_gpus = n_p * p_gpus + np.asarray(decode.num_gpus, dtype=float)
    cross = pools_cross_nodes(gpu, total_gpus) if crosses_node is None else np.asarray(crosses_node)

    def capacity(layout):
        return kv_capacity_tokens(model, gpu, layout, EngineConfig(), weight_dtype=wdt, kv_dtype=kdt,
                                  gpu_memory_utilization=engine.gpu_memory_utilization, block_size=engine.block_size,
                                  max_num_batched_tokens=engine.max_num_batched_tokens, max_num_seqs=engine.max_num_seqs)

    cap_d, cap_p = capacity(decode), capacity(prefill)
    w_d, w_p = weight_bytes_per_gpu(model, decode, wdt), weight_bytes_per_gpu(model, prefill, wdt)
    kvb = kv_bytes_per_token_per_gpu(model, decode, kdt)
    replicas = np.asarray(decode.attention_replicas, dtype=float)

    # prefill pool: steps of up to max_num_batched_tokens prompt tokens (whole prompts when they fit)
    chunk = np.maximum(np.minimum(mnbt, np.maximum(isl, np.floor(mnbt / np.maximum(isl, 1.0)) * isl)), 1.0)
    step_p = replica_step_ms(model, gpu, prefill, cal, 0.0, 0.0, chunk, 0.0, wdt, kdt)
    prefill_rate = n_p * chunk / np.maximum(isl, 1.0) / step_p  # requests per ms
    n_chunks = np.ceil(isl / np.maximum(mnbt, 1.0))
    prefill_alone = n_chunks * replica_step_ms(model, gpu, prefill, cal, 0.0, 0.0, np.minimum(isl, mnbt), 0.0, wdt, kdt)

    # links between the pools
    x_ms = kv_transfer_ms(model, gpu, cal, isl, kdt, p_gpus, d_gpus_replica, cross)
    lanes_total = np.minimum(n_p * p_gpus, np.asarray(decode.num_gpus, dtype=float))
    per_lane_ms = comm.p2p_ms(kv_transfer_bytes(model, isl, kdt), gpu, cal, cross)  # one request over one lane
    transfer_rate = lanes_total / per_lane_ms

    # decode pool: batch from KV capacity, max_num_seqs and demand; steps carry no prefill tokens
    avg_ctx = isl + osl / 2.0 + bs / 2.0
    b_kv = np.floor(cap_d / avg_ctx)
    demand = np.where(nreq > 0, nreq / replicas, np.where(conc > 0, conc / replicas, mns))
    demand = np.where((conc > 0) & (nreq > 0), np.minimum(conc, nreq) / replicas, demand)
    cap_batch = np.maximum(1.0, np.minimum(mns, b_kv))
    batch = np.maximum(1.0, np.minimum(cap_batch, np.ceil(demand)))

    def step(b):
        return replica_step_ms(model, gpu, decode, cal, b, b * (isl + osl / 2.0), 0.0, 0.0, wdt, kdt)

    # the prefill pool or the links can starve the decode pool: its batch then follows Little's law at their rate
    feed = np.minimum(prefill_rate, transfer_rate)
    open_loop = (rate > 0) & (nreq <= 0) & (conc <= 0)
    inflow = np.where(open_loop, np.minimum(feed, rate / 1e3), feed)
    decode_capacity = replicas * batch / np.maximum(osl * step(batch), 1e-9)  # requests per ms, fed at will
    starved = open_loop | (feed < decode_capacity)
    if np.any(starved):
        b = np.array(batch, dtype=float)
        for _ in range(12):
            b = np.clip(inflow / replicas * osl * step(b), 1.0, cap_batch)
        batch = np.where(starved, np.minimum(b, batch), batch)

    # the steady step, kept with its terms (ms) to explain it; same inputs as step(batch)
    pp = decode.pp
    t = stage_step_terms(model, gpu, decode, cal, batch / pp, batch * (isl + osl / 2.0) / pp, 0.0, 0.0, wdt, kdt)
    tpot = pp * t.stage_ms
    decode_rate = replicas * batch / np.maximum(osl * tpot, 1e-9)  # requests per ms
    req_rate = np.minimum(decode_rate, feed)
    out_tps = req_rate * osl * 1e3
    total_tps = out_tps * (isl + osl) / np.maximum(osl, 1.0)
    req_tps = req_rate * 1e3

    # TTFT: prefill alone + transfer + first decode step, plus queueing for a prefill slot or a decode slot
    ttft_base = prefill_alone + x_ms + tpot
    closed = nreq > 0
    burst = closed | (conc > 0)
    wave = np.minimum(np.ceil(demand), cap_batch) * replicas  # requests admitted at once across the decode pool
    burst_ms = wave / np.maximum(prefill_rate, 1e-12)  # the first wave's prompts queue at the prefill pool
    completion_rate = batch / np.maximum(osl * tpot, 1e-9)  # per decode replica
    waiting = np.maximum(demand - batch, 0.0)
    wait_mean = np.where(closed, waiting**2 / 2.0 / np.maximum(demand, 1.0), waiting) / completion_rate
    wait_p99 = waiting / completion_rate
    ttft = ttft_base + np.where(burst, np.maximum(burst_ms / 2.0, wait_mean), wait_mean)
    ttft_p99 = ttft_base + np.where(burst, np.maximum(burst_ms, wait_p99), wait_p99)
    tpot_p99 = step(np.maximum(batch, np.minimum(cap_batch, np.ceil(demand))))

    osl_med = osl if osl_median is None else np.asarray(osl_median, dtype=float)
    osl_top = osl if osl_max is None else np.asarray(osl_max, dtype=float)
    longest = expected_max_osl(osl, osl_med, osl_sigma, osl_top, np.maximum(nreq, 1))
    tpot_alone = step(np.ones_like(batch))
    work_s = nreq / np.maximum(req_rate, 1e-12) / 1e3
    tail_s = np.maximum(longest - osl, 0.0) * tpot_alone / 1e3 * 0.5
    first_s = (prefill_alone + x_ms) / 1e3
    makespan = np.where(closed, np.maximum(work_s + tail_s + first_s, first_s + longest * tpot_alone / 1e3), np.nan)

    terms = explanatory_terms_ms(t, pp)
    hbm_util = (pp * w_d + kvb * batch * (isl + osl / 2.0)) / (tpot / 1e3) / (gpu.hbm_bandwidth_gbps * 1e9)

    top = dominant_term(terms, tpot.shape)
    capacity_bound = (b_kv < np.minimum(mns, np.ceil(demand))) & (b_kv >= 1)
    prefill_bound = prefill_rate < np.minimum(decode_capacity, transfer_rate) * 0.999
    transfer_bound = (transfer_rate < np.minimum(decode_capacity, prefill_rate) * 0.999) & ~prefill_bound
    regime = np.select([transfer_bound, prefill_bound, capacity_bound, top == "compute", top == "communication"],
                       ["communication", "compute", "capacity", "compute", "communication"], "bandwidth")
    bottleneck = np.select(
        [transfer_bound, prefill_bound, capacity_bound, top == "weights", top == "kv_cache", top == "compute",
         top == "communication"],
        ["kv_transfer", "prefill_pool", "kv_cache_capacity", "weight_bandwidth", "kv_bandwidth", "tensor_core_compute",
         "interconnect"], "kernel_latency")
    min_tokens = isl + 1
    budget = gpu.memory_gb * 1e9 * np.asarray(engine.gpu_memory_utilization, dtype=float)
    feasible = (cap_d >= min_tokens) & (cap_p >= min_tokens)
    reason = np.where(w_p > budget, "prefill replica weights do not fit in GPU memory",
                      np.where(w_d > budget, "decode replica weights do not fit in GPU memory",
                               np.where(cap_p < min_tokens, "no room for one prompt's KV cache on a prefill replica",
                                        np.where(cap_d < min_tokens, "no room for the KV cache of one request", ""))))
    terms = {**terms, "kv_transfer": x_ms * np.ones_like(tpot), "prefill": prefill_alone * np.ones_like(tpot)}
    return DisaggEstimate(cap_d, cap_p, np.maximum(w_d, w_p), batch, b_kv, demand, tpot, ttft, ttft_p99, tpot_p99, out_tps,
                          total_tps, req_tps, makespan, prefill_alone, x_ms, prefill_rate * 1e3, decode_capacity * 1e3,
                          transfer_rate * 1e3, hbm_util, terms, regime, bottleneck, feasible, reason)
