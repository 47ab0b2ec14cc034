"""Request-level simulation of vLLM v1 serving: FCFS continuous batching, chunked prefill, paged KV, preemption.

Why: on reasoning workloads the KV cache, not compute, binds — how many sequences fit, when the scheduler preempts,
how long the closed-batch tail runs alone. Averages miss that; this simulator replays the scheduler's rules
(see `features.scheduler_replica` for the per-step rules and the vLLM source they follow) with any step-time model.

Arrival modes: a closed batch (all requests at t=0), `arrival_s` (open arrivals, e.g. a request rate), or
`concurrency` (closed loop: a new request arrives when one finishes). With `dp` replicas each has its own cache and
FCFS queue; a request goes to the replica holding the fewest requests (running + waiting), ties to the lowest index,
as vLLM's DP load balancer (`vllm/v1/engine/core_client.py::DPLBAsyncMPClient.get_core_engine_for_request`) does
when KV usage is below its penalty threshold. In `concurrency` mode a freed slot is refilled on the replica that
freed it, which is what that rule picks when `concurrency` divides evenly by `dp`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from features.errors import InputError
from features.scheduler_replica import EngineKnobs, Replica, RequestTable, StepTimeFn, cdiv, pipeline_round_s

__all__ = ["SimResult", "StepTimeFn", "simulate", "linear_step_time", "pipeline_round_s"]


@dataclass
class SimResult:
    """What a simulated run measured: makespan, per-request latencies, preemptions, batch and KV usage over time."""

    makespan_s: float
    # Per request (input order).
    ttft_s: np.ndarray
    finish_s: np.ndarray
    tpot_s: np.ndarray
    queue_s: np.ndarray
    running_s: np.ndarray
    request_preemptions: np.ndarray
    output_tokens: np.ndarray
    replica: np.ndarray
    # Totals.
    preemptions: int
    steps: int
    output_throughput: float
    total_throughput: float
    request_throughput: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_mean_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    peak_running: int
    mean_running: float  # time-weighted running batch per replica
    full_cache_s: float  # time in steps where the KV cache bound: a preemption, or a waiting request short of blocks
    full_cache_fraction: float  # of the replicas' busy time
    mean_kv_usage: float  # time-weighted fraction of KV blocks in use
    prefill_tokens: int  # all prefill work, recomputation after preemptions included
    recompute_tokens: int  # prompt + generated tokens that preempted requests must prefill again
    decode_kv_tokens_read: int  # sum over steps of decode KV tokens: x KV bytes/token -> KV traffic, bandwidth use
    admit_order: np.ndarray  # request ids in order of first admission
    per_replica: list[dict] = field(default_factory=list)
    # per replica, one row per engine step: (t_end_s, running, waiting, kv_used_tokens, output_tokens_in_step)
    timeline: list[np.ndarray] | None = None

    def output_rate(self, bin_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Output throughput over time (needs record_timeline): bin start times (s) and tokens/s of all replicas."""
        if not self.timeline:
            raise InputError("output_rate needs simulate(..., record_timeline=True)")
        edges = np.arange(0.0, self.makespan_s + bin_s, bin_s)
        tokens = np.zeros(len(edges))
        for tl in self.timeline:
            if len(tl):
                idx = np.minimum((tl[:, 0] // bin_s).astype(np.int64), len(edges) - 1)
                tokens += np.bincount(idx, weights=tl[:, 4], minlength=len(edges))
        return edges, tokens / bin_s

    def summary(self) -> dict:
        """The scalar results as a plain dict (JSON-ready)."""
        skip = {"ttft_s", "finish_s", "tpot_s", "queue_s", "running_s", "request_preemptions", "output_tokens",
                "replica", "admit_order", "timeline", "per_replica"}
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.__dict__.items() if k not in skip}


def linear_step_time(a_s: float, per_seq_s: float = 0.0, per_kv_token_s: float = 0.0,
                     per_prefill_token_s: float = 0.0) -> StepTimeFn:
    """A step-time model t = a + b*decode_seqs + c*decode_kv_tokens + d*prefill_tokens (for tests and calibration)."""

    def step_time_s(decode_seqs: np.ndarray, decode_kv_tokens: np.ndarray, prefill_tokens: np.ndarray) -> np.ndarray:
        return a_s + per_seq_s * decode_seqs + per_kv_token_s * decode_kv_tokens + per_prefill_token_s * prefill_tokens

    return step_time_s


def _check_inputs(isl, osl, kv_capacity_tokens, block_size, max_num_seqs, max_num_batched_tokens, dp,
                  arrival_s, concurrency) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate and normalise the inputs; bad input raises InputError with one clear line."""
    isl = np.asarray(isl)
    osl = np.asarray(osl)
    if isl.ndim != 1 or osl.shape != isl.shape or len(isl) == 0:
        raise InputError("isl and osl must be non-empty 1-D arrays of the same length")
    if not (np.issubdtype(isl.dtype, np.number) and np.issubdtype(osl.dtype, np.number)):
        raise InputError("isl and osl must be numeric")
    if np.any(isl < 1) or np.any(osl < 1):
        raise InputError("every request needs isl >= 1 and osl >= 1 tokens")
    if block_size < 1 or max_num_seqs < 1 or dp < 1:
        raise InputError("block_size, max_num_seqs and dp must be >= 1")
    if max_num_batched_tokens < max_num_seqs:
        raise InputError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_num_seqs ({max_num_seqs})")
    if kv_capacity_tokens < block_size:
        raise InputError(f"kv_capacity_tokens ({kv_capacity_tokens}) holds no {block_size}-token block")
    num_blocks = kv_capacity_tokens // block_size
    worst = int(cdiv(int((isl + osl - 1).max()), block_size))
    if worst > num_blocks:
        raise InputError(f"a request of {int((isl + osl).max())} tokens needs {worst} KV blocks but a replica "
                         f"holds {num_blocks}: it can never finish")
    if concurrency < 0:
        raise InputError("concurrency must be >= 0")
    if arrival_s is not None:
        if concurrency:
            raise InputError("give arrival_s or concurrency, not both")
        arrival_s = np.asarray(arrival_s, dtype=np.float64)
        if arrival_s.shape != isl.shape or not np.all(np.isfinite(arrival_s)) or np.any(arrival_s < 0):
            raise InputError("arrival_s must hold one finite time >= 0 per request")
    return isl.astype(np.int64), osl.astype(np.int64), arrival_s


def _run_open(replicas: list[Replica], arrival_s: np.ndarray) -> None:
    """Arrivals at known times: bring every replica up to each arrival, then send it to the least-loaded one."""
    order = np.argsort(arrival_s, kind="stable")
    for rid in order.tolist():
        t = float(arrival_s[rid])
        if t > 0:
            for rep in replicas:
                rep.advance(until_s=t)
        best = min(replicas, key=lambda r: (r.load(), r.index))
        best.add(rid, t)
    for rep in replicas:
        rep.advance()


def _run_closed_loop(replicas: list[Replica], n: int, concurrency: int) -> None:
    """Fixed concurrency: the first `concurrency` requests at t=0, then one new request per finished one."""
    nxt = 0
    for _ in range(min(concurrency, n)):
        min(replicas, key=lambda r: (r.load(), r.index)).add(nxt, 0.0)
        nxt += 1
    heap: list[tuple[float, int, int]] = []

    def push(rep: Replica) -> None:
        finished = rep.advance(stop_on_finish=True)
        if finished:
            rep.resolve()
            heapq.heappush(heap, (rep.clock_s, rep.index, finished))

    for rep in replicas:
        push(rep)
    while heap:
        t, idx, finished = heapq.heappop(heap)
        rep = replicas[idx]
        for _ in range(finished):
            if nxt < n:
                rep.add(nxt, t)
                nxt += 1
        push(rep)


def _percentiles(x: np.ndarray) -> tuple[float, float, float]:
    """(mean, p50, p99) of the finite values, NaN when there are none."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    return float(x.mean()), float(np.percentile(x, 50)), float(np.percentile(x, 99))


def simulate(isl: np.ndarray, osl: np.ndarray, *, step_time_s: StepTimeFn, kv_capacity_tokens: int,
             block_size: int = 16, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
             enable_chunked_prefill: bool = True, dp: int = 1, arrival_s: np.ndarray | None = None,
             concurrency: int = 0, record_timeline: bool = False, reserve_full_sequence: bool = True,
             interpolate_step_times: bool = False, pp: int = 1) -> SimResult:
    """Simulate serving `isl`/`osl` requests on `dp` vLLM v1 replicas of `kv_capacity_tokens` KV each.

    `step_time_s(decode_seqs, decode_kv_tokens, prefill_tokens)` gives seconds per engine step, elementwise;
    decode_kv_tokens counts each decoding sequence's context including the token computed in the step.
    `reserve_full_sequence` is vLLM's `scheduler_reserve_full_isl` (default on): admit a request only when the free
    blocks hold its whole current sequence, not just its first prefill chunk.
    `interpolate_step_times` evaluates `step_time_s` only at the first and last step of each run of identical decode
    steps and interpolates linearly between them (exact for models affine in decode_kv_tokens; far fewer calls to
    an expensive model).
    `pp` > 1: a pipeline-parallel engine with up to `pp` micro-batches in flight. A simulated step is then one
    scheduling round in which every running request advances once (a request in flight is in no other micro-batch),
    with `pp` x `max_num_batched_tokens` tokens of budget, and `step_time_s` gives ONE stage's time for ONE
    micro-batch; the round's time is `features.scheduler_replica.pipeline_round_s` (pp x the largest micro-batch's
    stage time: full pipelines stream each stage once per micro-batch; a lone request pays the whole pipeline).
    """
    if int(pp) < 1:
        raise InputError("pp must be >= 1")
    isl, osl, arrival_s = _check_inputs(isl, osl, kv_capacity_tokens, block_size, max_num_seqs,
                                        max_num_batched_tokens, dp, arrival_s, concurrency)
    n = len(isl)
    knobs = EngineKnobs(num_blocks=kv_capacity_tokens // block_size, block_size=block_size,
                        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                        enable_chunked_prefill=enable_chunked_prefill, reserve_full_sequence=reserve_full_sequence,
                        pp=int(pp))
    table = RequestTable(isl=isl, osl=osl, arrival_s=np.zeros(n) if arrival_s is None else arrival_s.copy())
    replicas = [Replica(i, table, knobs, step_time_s, interpolate_step_times) for i in range(dp)]
    if concurrency:
        _run_closed_loop(replicas, n, concurrency)
    else:
        _run_open(replicas, table.arrival_s)
    return _collect(table, replicas, knobs, record_timeline)


def _collect(table: RequestTable, replicas: list[Replica], knobs: EngineKnobs, record_timeline: bool) -> SimResult:
    """Turn the replicas' step logs and the request table into a SimResult."""
    n = len(table.isl)
    replica_of = np.asarray(table.replica, np.int64)
    finish_step = np.asarray(table.finish_step, np.int64)
    first_token_step = np.asarray(table.first_token_step, np.int64)
    first_admit_step = np.asarray(table.first_admit_step, np.int64)
    ttft = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    queue = np.zeros(n)
    per_replica, timeline = [], []
    steps_total = pre_total = prefill_total = recompute_total = kv_read_total = 0
    full_s = busy_s = run_time_integral = kv_time_integral = 0.0
    peak = 0
    for rep in replicas:
        log = rep.log_arrays()
        start, dur = log["start_s"], log["dur_s"]
        end = start + dur
        mine = np.flatnonzero(replica_of == rep.index)
        if len(mine):
            finish[mine] = end[finish_step[mine]]
            first_tok[mine] = end[first_token_step[mine]]
            arrival = table.arrival_s[mine]
            queue[mine] = start[first_admit_step[mine]] - arrival
            ttft[mine] = first_tok[mine] - arrival
        for rid, since, back in rep.requeues:
            queue[rid] += start[back] - start[since]
        rep_full = float(dur[log["kv_full"].astype(bool)].sum()) if len(dur) else 0.0
        rep_busy = float(dur.sum())
        rep_peak = int(log["running"].max()) if len(dur) else 0
        rep_mean = float((log["running"] * dur).sum() / rep_busy) if rep_busy else 0.0
        kv_used = log["kv_blocks"] * knobs.block_size
        steps_total += len(dur)
        pre_total += rep.preemptions
        prefill_total += int(log["prefill_tokens"].sum())
        recompute_total += rep.recompute_tokens
        kv_read_total += int(log["decode_kv_tokens"].sum())
        full_s += rep_full
        busy_s += rep_busy
        run_time_integral += float((log["running"] * dur).sum())
        kv_time_integral += float((kv_used * dur).sum())
        peak = max(peak, rep_peak)
        rep_finish = float(finish[mine].max()) if len(mine) else 0.0
        per_replica.append({"replica": rep.index, "requests": int(len(mine)), "makespan_s": rep_finish,
                            "steps": int(len(dur)), "busy_s": rep_busy, "preemptions": rep.preemptions,
                            "peak_running": rep_peak, "mean_running": rep_mean, "full_cache_s": rep_full,
                            "recompute_tokens": rep.recompute_tokens})
        if record_timeline:
            timeline.append(np.column_stack([end, log["running"], log["waiting"], kv_used, log["emitted"]])
                            .astype(np.float64))
    makespan = float(np.nanmax(finish))
    tpot = np.where(table.osl > 1, (finish - first_tok) / np.maximum(table.osl - 1, 1), np.nan)
    arrival_all = table.arrival_s
    running = finish - arrival_all - queue
    out_tokens = int(table.osl.sum())
    span = makespan - float(arrival_all.min())
    t_mean, t_p50, t_p99 = _percentiles(ttft)
    p_mean, p_p50, p_p99 = _percentiles(tpot)
    return SimResult(
        makespan_s=makespan, ttft_s=ttft, finish_s=finish, tpot_s=tpot, queue_s=queue, running_s=running,
        request_preemptions=np.asarray(table.preemptions, np.int64),
        output_tokens=np.asarray(table.gen, np.int64), replica=replica_of, preemptions=pre_total,
        steps=steps_total, output_throughput=out_tokens / span,
        total_throughput=(out_tokens + int(table.isl.sum())) / span,
        request_throughput=n / span, ttft_mean_s=t_mean, ttft_p50_s=t_p50, ttft_p99_s=t_p99, tpot_mean_s=p_mean,
        tpot_p50_s=p_p50, tpot_p99_s=p_p99, peak_running=peak,
        mean_running=run_time_integral / busy_s if busy_s else 0.0, full_cache_s=full_s,
        full_cache_fraction=full_s / busy_s if busy_s else 0.0,
        mean_kv_usage=kv_time_integral / busy_s / (knobs.num_blocks * knobs.block_size) if busy_s else 0.0,
        prefill_tokens=prefill_total, recompute_tokens=recompute_total, decode_kv_tokens_read=kv_read_total,
        admit_order=np.asarray(table.admit_order, np.int64), per_replica=per_replica,
        timeline=timeline if record_timeline else None)

