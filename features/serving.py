"""Steady-state serving physics: KV capacity -> batch reached -> step time -> TPOT, TTFT, throughput, makespan.

Vectorised over rows (columnar specs), used by `predict_frame` and as the fast screen of search. The closed-batch
request-level simulation (`features.scheduler`) refines makespan, preemptions and the tail for single scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.calibration import Calibration
from features.elementwise import any_, as_float, ceil, clip, floor, maximum, minimum, plain, rows_shape, where
from features.memory import kv_capacity_tokens, kv_bytes_per_token_per_gpu, weight_bytes_per_gpu
from features.specs import EngineConfig, GPUSpec, Layout, ModelSpec
from features.steptime import StepTerms, replica_step_ms, stage_step_terms

REGIMES = ("compute", "bandwidth", "capacity", "communication")
_ENGINE_DEFAULTS = EngineConfig()  # `kv_capacity_tokens`'s engine: every knob it reads is passed explicitly


@dataclass
class EngineArrays:
    """Engine knobs as per-row arrays (or scalars)."""

    weight_dtype: object = "bf16"
    kv_dtype: object = "bf16"
    max_num_seqs: object = 256
    max_num_batched_tokens: object = 8192
    gpu_memory_utilization: object = 0.9
    block_size: object = 16
    num_gpu_blocks_override: object = 0  # > 0: the engine's KV cache is exactly this many blocks
    kv_cache_memory_bytes: object = 0  # > 0: explicit KV space per GPU rank (vLLM-CPU: VLLM_CPU_KVCACHE_SPACE GiB)
    split_kv: object = 1.0  # 1: decode attention splits long contexts over thread blocks (`steptime.kv_splits`)

    @classmethod
    def from_config(cls, e: EngineConfig) -> "EngineArrays":
        return cls(e.weight_dtype, e.kv_dtype, e.max_num_seqs, e.max_num_batched_tokens, e.gpu_memory_utilization, e.block_size,
                   e.num_gpu_blocks_override, e.kv_cache_memory_gb * 1e9)


@dataclass
class ServingEstimate:
    """Per-row physics answer for a serving configuration, with the terms that explain it."""

    kv_capacity_tokens: np.ndarray  # per attention replica
    weight_bytes_per_gpu: np.ndarray
    kv_bytes_per_token_per_gpu: np.ndarray
    batch: np.ndarray  # steady-state running sequences per replica
    batch_limit_kv: np.ndarray  # sequences the KV cache holds at the average context
    demand_per_replica: np.ndarray
    tpot_ms: np.ndarray
    ttft_ms: np.ndarray
    ttft_p99_ms: np.ndarray
    tpot_p99_ms: np.ndarray
    output_throughput: np.ndarray
    total_throughput: np.ndarray
    request_throughput: np.ndarray
    makespan_s: np.ndarray
    prefill_ms: np.ndarray
    hbm_bw_util: np.ndarray
    terms: dict  # ms per step at the steady batch: weights, kv, compute, communication, latency
    regime: np.ndarray
    bottleneck: np.ndarray
    feasible: np.ndarray
    infeasible_reason: np.ndarray


def explanatory_terms_ms(t, pp) -> dict:
    """Per-token-period step time split into what explains it: weight and KV streaming, compute, communication and
    fixed latency (ms; a stage's terms times the pipeline depth)."""
    return {
        "weights": pp * t.weight_read_ms,
        "kv_cache": pp * t.kv_read_ms,
        "compute": pp * t.compute_ms,
        "communication": pp * (t.comm_ms + t.p2p_ms),
        "latency": pp * (t.overhead_ms + t.misc_ms + t.lm_head_ms),
    }


# per explanatory term (`explanatory_terms_ms`): the regime and the bottleneck of a row it dominates
TERM_REGIME = {"weights": "bandwidth", "kv_cache": "bandwidth", "compute": "compute", "communication": "communication",
               "latency": "bandwidth"}
TERM_BOTTLENECK = {"weights": "weight_bandwidth", "kv_cache": "kv_bandwidth", "compute": "tensor_core_compute",
                   "communication": "interconnect", "latency": "kernel_latency"}


def dominant_index(terms: dict, shape) -> np.ndarray:
    """Position (in `terms`) of the largest term per row (the first of equal ones; a NaN term counts as the
    largest, as in `np.argmax`)."""
    values = list(terms.values())
    if not shape and plain(*values):  # one scenario: the same choice on plain numbers
        top = 0
        for i, v in enumerate(values):
            if v != v:
                return i
            if v > values[top]:
                top = i
        return top
    if len(shape) == 1 and all(np.shape(v) == shape for v in values):
        stack = np.array(values, dtype=float)  # the rows already line up: what vstack would build, in one call
    else:
        stack = np.vstack([np.broadcast_to(np.asarray(v, dtype=float), shape) for v in values])
    return np.argmax(stack, axis=0)


def dominant_term(terms: dict, shape) -> np.ndarray:
    """Name of the largest term per row."""
    return np.array(list(terms))[dominant_index(terms, shape)]


def expected_max_osl(osl_mean, osl_median, osl_sigma, osl_max, n_requests):
    """Expected longest output among n requests: median·exp(σ·z) with z the (1 − 1/n) normal quantile, clipped."""
    from scipy.special import ndtri  # the standard normal quantile (scipy.stats.norm.ppf without its overhead)

    n = maximum(as_float(n_requests), 2.0)
    z = ndtri(1.0 - 1.0 / n)
    sigma = as_float(osl_sigma)
    lognormal = minimum(as_float(osl_median) * np.exp(sigma * z), osl_max)
    return where(sigma > 0, lognormal, osl_mean)


def _stack_rows(values, shape, per=1) -> np.ndarray:
    """`values` (each broadcast to `shape`) stacked on a new leading axis, as floats, each divided by `per` (the
    pipeline depth: a micro-batch's share; plain numbers are divided before they are stacked, one array op less)."""
    if not shape and plain(*values, per):  # one scenario
        return np.array([v / per for v in values], dtype=float)
    if all(getattr(v, "shape", ()) == shape for v in values):
        return np.array(values, dtype=float) / per  # already row-shaped: one call
    out = np.empty((len(values),) + shape)
    for i, v in enumerate(values):
        out[i] = v
    return out / per


def _first(v, row_ndim: int):
    """The first of the stacked evaluations of a term (a term that did not vary is returned as it is)."""
    return v[0] if np.ndim(v) > row_ndim else v


class _FirstTerms:
    """The `StepTerms` of the first of stacked evaluations, each term taken when it is read."""

    def __init__(self, terms: StepTerms, row_ndim: int):
        self._terms, self._row_ndim = terms, row_ndim

    def __getattr__(self, name: str):
        return _first(getattr(self._terms, name), self._row_ndim)


def refill_chunk_tokens(batch, isl, max_batched_tokens):
    """Prompt tokens of a replacement request prefilled in one step beside `batch` running decodes (the token budget
    left by the decodes, at most the whole prompt)."""
    return minimum(isl, maximum(as_float(max_batched_tokens) - batch, 1.0))


def refill_mean_step_ms(decode_ms, with_chunk_ms, batch, isl, osl, max_batched_tokens):
    """Mean step of a replica that keeps `batch` sequences running by admitting a new request whenever one finishes,
    from its decode-only step and its step carrying one prompt chunk (`refill_chunk_tokens`).

    Each decode step completes batch / osl requests on average, and each replacement's prompt is prefilled in
    isl / chunk chunk steps' worth of work (a last, partial chunk costs its share of a full one: the chunk's extra
    time is prompt compute, linear in its tokens). Steps with a whole chunk are compute-bound while decode-only
    steps stream weights: averaging over the two (rather than spreading the prompt tokens evenly over all steps,
    which hides them under the weight streaming) is what makes TPOT grow with concurrency as vLLM's does."""
    b = as_float(batch)
    isl = as_float(isl)
    osl = maximum(as_float(osl), 1.0)
    chunks = isl / maximum(refill_chunk_tokens(b, isl, max_batched_tokens), 1.0)
    return decode_ms + b / osl * chunks * maximum(with_chunk_ms - decode_ms, 0.0)


def refill_step_ms(model: ModelSpec, gpu: GPUSpec, layout: Layout, cal: Calibration, batch, isl, osl, max_batched_tokens,
                   weight_dtype="bf16", kv_dtype="bf16"):
    """Mean time between two tokens of a replica refilled as requests finish (fixed concurrency, or a steady
    arrival rate): `refill_mean_step_ms` of the replica's decode-only step and its step with one prompt chunk."""
    b = as_float(batch)
    isl = as_float(isl)
    osl = as_float(osl)
    kv = b * (isl + maximum(osl, 1.0) / 2.0)
    chunk = refill_chunk_tokens(b, isl, max_batched_tokens)
    decode = replica_step_ms(model, gpu, layout, cal, b, kv, 0.0, 0.0, weight_dtype, kv_dtype)
    with_chunk = replica_step_ms(model, gpu, layout, cal, b, kv, chunk, 0.0, weight_dtype, kv_dtype)
    return refill_mean_step_ms(decode, with_chunk, b, isl, osl, max_batched_tokens)


def estimate_serving(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineArrays, cal: Calibration,
                     isl, osl, num_requests=0, concurrency=0, request_rate=0.0, osl_median=None, osl_sigma=0.0,
                     osl_max=None) -> ServingEstimate:
    """Steady-state serving estimate; every argument may be a scalar or a per-row array.

    With plain Python numbers for every per-row argument and engine knob (one scenario: the single `predict`), the
    scalar quantities are computed in plain Python (`features.elementwise`) and the answer's fields are numbers
    (and strings for the regime, bottleneck and reason); only the stacked step-time evaluations use arrays. The
    numbers are those of 1-element-array arguments."""
    isl = as_float(isl)
    osl = as_float(osl)
    nreq = as_float(num_requests)
    conc = as_float(concurrency)
    rate = as_float(request_rate)
    replicas = as_float(layout.attention_replicas)
    mns = as_float(engine.max_num_seqs)
    bs = as_float(engine.block_size)

    wbytes = weight_bytes_per_gpu(model, layout, engine.weight_dtype)
    kvb = kv_bytes_per_token_per_gpu(model, layout, engine.kv_dtype)
    cap = kv_capacity_tokens(model, gpu, layout, _ENGINE_DEFAULTS, weight_dtype=engine.weight_dtype,
                             kv_dtype=engine.kv_dtype, gpu_memory_utilization=engine.gpu_memory_utilization,
                             block_size=engine.block_size, max_num_batched_tokens=engine.max_num_batched_tokens,
                             max_num_seqs=engine.max_num_seqs, num_gpu_blocks_override=engine.num_gpu_blocks_override,
                             kv_cache_memory_bytes=engine.kv_cache_memory_bytes, weights_per_gpu=wbytes,
                             kv_per_token_per_gpu=kvb)

    avg_ctx = isl + osl / 2.0 + bs / 2.0  # average KV a running sequence holds, half a block of rounding
    b_kv = floor(cap / avg_ctx)
    # demand: closed batch -> requests per replica; concurrency -> its share; otherwise saturate
    demand = where(nreq > 0, nreq / replicas, where(conc > 0, conc / replicas, mns))
    demand = where((conc > 0) & (nreq > 0), minimum(conc, nreq) / replicas, demand)
    cap_batch = maximum(1.0, minimum(mns, b_kv))
    wanted = ceil(demand)  # sequences each replica is asked to run
    batch = maximum(1.0, minimum(cap_batch, wanted))

    # request rate: the batch in flight follows Little's law, B = rate_per_replica × osl × TPOT(B)
    open_loop = (rate > 0) & (nreq <= 0) & (conc <= 0)
    # finished requests are replaced while others decode (fixed concurrency with more requests than it, or a rate):
    # their prompts run as whole chunks inside decode steps (`refill_step_ms`); a closed batch prefills up front
    refill = open_loop | ((conc > 0) & ((nreq <= 0) | (nreq > conc)))
    any_refill = any_(refill)
    mnbt = as_float(engine.max_num_batched_tokens)

    def step(b):
        T = b * isl / maximum(osl, 1.0)  # chunked prefill work amortised over each request's decode steps
        if not any_refill:
            return replica_step_ms(model, gpu, layout, cal, b, b * (isl + osl / 2.0), T, 0.0, engine.weight_dtype,
                                   engine.kv_dtype, engine.split_kv)
        # the amortised step and `refill_step_ms`'s two steps (decode only, with one prompt chunk), in one pass
        refill_kv = b * (isl + maximum(osl, 1.0) / 2.0)
        decode, kv, prefill = (b, b, b), (b * (isl + osl / 2.0), refill_kv, refill_kv), (T, 0.0,
                                                                                          refill_chunk_tokens(b, isl, mnbt))
        rows = rows_shape(decode + kv + prefill + (layout.pp,))
        steps = layout.pp * stage_step_terms(model, gpu, layout, cal, *(_stack_rows(v, rows, layout.pp)
                                                                        for v in (decode, kv, prefill)),
                                             0.0, engine.weight_dtype, engine.kv_dtype,
                                             split_kv=engine.split_kv).stage_ms
        return where(refill, refill_mean_step_ms(steps[1], steps[2], b, isl, osl, mnbt), steps[0])

    if any_(open_loop):
        b = _ones_like(batch)
        for _ in range(12):
            b = clip(rate / replicas * osl * step(b) / 1e3, 1.0, cap_batch)
        batch = where(open_loop, b, batch)

    # every step time the estimate needs, evaluated together in one pass over stacked inputs (a per-row call of
    # the step physics costs the same for 1 row as for 1,000, so six calls on one row cost six times one):
    # 0 the steady step, kept with its terms (ms) to explain it, same inputs as step(batch); 1 a lone prefill of
    # the prompt; 2 a prompt chunk beside the other running decodes; 3 the opening burst of prompts; 4 one
    # sequence alone; 5 the fullest steady batch; with refilled rows also 6-11: the decode-only step and the step with
    # one prompt chunk at the steady batch, one sequence and the fullest batch (`refill_mean_step_ms`)
    others = maximum(batch - 1, 0)
    chunk = maximum(mnbt - others, 1.0)
    wave = minimum(wanted, cap_batch)
    burst_tokens = minimum(mnbt, wave * isl)
    fullest = maximum(batch, minimum(cap_batch, wanted))
    ones = _ones_like(batch)
    zero = _zeros_like(batch)
    pp = layout.pp
    ctx = isl + osl / 2.0  # average KV tokens of a running sequence
    osl1 = maximum(osl, 1.0)
    decode = (batch, zero, others, zero, ones, fullest)
    kv = (batch * ctx, zero, others * ctx, zero, ones * ctx, fullest * ctx)
    prefill_tokens = (batch * isl / osl1, isl, minimum(isl, chunk), burst_tokens, ones * isl / osl1,
                      fullest * isl / osl1)
    refill_batches = (batch, ones, fullest)
    if any_refill:  # each batch's decode-only step and step with one prompt chunk
        for b in refill_batches:
            refill_kv = b * (isl + osl1 / 2.0)
            decode += (b, b)
            kv += (refill_kv, refill_kv)
            prefill_tokens += (zero, refill_chunk_tokens(b, isl, mnbt))
    shape = rows_shape(decode + kv + prefill_tokens + (pp,))

    stacked = (_stack_rows(v, shape, pp) for v in (decode, kv, prefill_tokens))  # a micro-batch's share of each
    terms6 = stage_step_terms(model, gpu, layout, cal, *stacked, 0.0, engine.weight_dtype, engine.kv_dtype,
                              split_kv=engine.split_kv)
    step6 = pp * terms6.stage_ms
    tpot, tpot_alone, tpot_fullest = step6[0], step6[4], step6[5]
    if any_refill:
        tpot, tpot_alone, tpot_fullest = (
            where(refill, refill_mean_step_ms(step6[6 + 2 * i], step6[7 + 2 * i], b, isl, osl, mnbt), a)
            for i, (b, a) in enumerate(zip(refill_batches, (tpot, tpot_alone, tpot_fullest))))
    prefill = step6[1]
    # steady state: a new request's prompt is chunked into the token budget left after the running decodes
    n_chunks = ceil(isl / chunk)
    ttft_base = n_chunks * step6[2]
    ttft_base = maximum(ttft_base, prefill)
    completion_rate = batch / maximum(osl * tpot, 1e-9)  # requests per ms per replica
    waiting = maximum(demand - batch, 0.0)
    closed = nreq > 0
    demand1 = maximum(demand, 1.0)
    wait_mean = where(closed, waiting**2 / 2.0 / demand1, waiting) / completion_rate
    wait_p99 = waiting / completion_rate
    # requests that arrive together (a closed batch, or the opening burst of a fixed-concurrency run): the first
    # wave's prompts are prefilled back to back in chunks of the token budget; the k-th waits for k prompts
    per_token = step6[3] / burst_tokens
    first_mean = maximum(per_token * (wave * isl + isl) / 2.0, ttft_base)
    later = maximum(demand - wave, 0.0)
    ttft_closed = (wave * first_mean + later * (ttft_base + wait_mean * demand1 / maximum(later, 1.0)))
    ttft_closed = ttft_closed / maximum(wave + later, 1.0)
    burst = closed | (conc > 0)
    # a fixed-concurrency run of more requests than its concurrency: the opening burst is 1 in `rounds` requests;
    # the others arrive as earlier ones finish, so the mean and p99 TTFT blend the burst with a steady TTFT (a
    # benchmark of 50 x concurrency requests is ~steady). Prompts prefilled in one step finish together (same
    # lengths) and their successors arrive together: groups of as many whole prompts as the budget beside the
    # running decodes holds, all waiting for the group's step; plus the wait for a free slot (Little's law)
    rounds = where((conc > 0) & (nreq > conc), nreq / maximum(conc, 1.0), 1.0)
    group = clip(floor(chunk / maximum(isl, 1.0)), 1.0, maximum(wave, 1.0))
    steady_ttft = maximum(per_token * isl * group, ttft_base) + waiting / completion_rate
    ttft = where(burst, (ttft_closed + (rounds - 1.0) * steady_ttft) / rounds, ttft_base + wait_mean)
    queued_p99 = ttft_base + wait_p99
    # the slowest 1% of requests: the burst's last prompt when the burst is the whole run, else the burst's tail while
    # it is over 1% of the requests (its k-th prompt waits for k prompts)
    tail_prompts = wave * where(rounds > 1.0, maximum(1.0 - 0.01 * rounds, 0.0), 1.0)
    burst_p99 = maximum(per_token * tail_prompts * isl, ttft_base)
    ttft_p99 = where(burst, maximum(burst_p99, queued_p99), queued_p99)

    out_tps = replicas * batch / tpot * 1e3
    total_tps = out_tps * (isl + osl) / osl1
    req_tps = out_tps / osl1

    osl_med = osl if osl_median is None else as_float(osl_median)
    osl_top = osl if osl_max is None else as_float(osl_max)
    if any_(closed):
        longest = expected_max_osl(osl, osl_med, osl_sigma, osl_top, maximum(nreq, 1))
        work_s = demand * osl * tpot / batch / 1e3
        # the tail: the longest request runs alone at the end of a closed batch for the part it outlives the rest
        tail_s = maximum(longest - osl, 0.0) * tpot_alone / 1e3 * 0.5
        makespan = where(closed, maximum(work_s + tail_s + ttft_base / 1e3, longest * tpot_alone / 1e3), np.nan)
    else:  # no closed batch: no makespan (NaN, shaped as the closed-batch formula would be)
        rows = rows_shape((closed, demand, osl, tpot, batch, osl_med, osl_sigma, osl_top, nreq, tpot_alone, ttft_base))
        makespan = np.full(rows, np.nan) if rows else np.nan

    # the steady step's explanatory terms (of the first of the stacked evaluations)
    terms = explanatory_terms_ms(_FirstTerms(terms6, len(shape)), pp)
    # per token period each GPU streams its weights once per micro-batch (pp times) plus its share of the KV
    hbm_util = (pp * wbytes + kvb * batch * ctx) / (tpot / 1e3) / (gpu.hbm_bandwidth_gbps * 1e9)

    top = dominant_index(terms, np.shape(tpot))
    capacity_bound = (b_kv < minimum(mns, wanted)) & (b_kv >= 1)
    regime = where(capacity_bound, "capacity", _labels(TERM_REGIME, terms, top))
    bottleneck = where(capacity_bound, "kv_cache_capacity", _labels(TERM_BOTTLENECK, terms, top))
    min_tokens = isl + 1
    feasible = cap >= min_tokens
    reason = where(wbytes > gpu.memory_gb * 1e9 * as_float(engine.gpu_memory_utilization),
                   "weights do not fit in GPU memory", where(feasible, "", "no room for the KV cache of one request"))
    tpot_p99 = tpot_fullest  # the fullest steady batch
    return ServingEstimate(cap, wbytes, kvb, batch, b_kv, demand, tpot, ttft, ttft_p99, tpot_p99, out_tps, total_tps,
                           req_tps, makespan, prefill, hbm_util, terms, regime, bottleneck, feasible, reason)


def _labels(table: dict, terms: dict, top):
    """`table`'s label of the term at position `top` (per row: an array of labels; one position: a string)."""
    names = list(terms)
    return table[names[top]] if isinstance(top, int) else np.array([table[k] for k in names])[top]


def _ones_like(v):
    """Ones shaped like `v` (1.0 for a plain number)."""
    return 1.0 if isinstance(v, (int, float)) else np.ones_like(v)


def _zeros_like(v):
    """Zeros shaped like `v` (0.0 for a plain number)."""
    return 0.0 if isinstance(v, (int, float)) else np.zeros_like(v)
