"""Tests of the request-level vLLM scheduler simulation against a slow per-step reference and its invariants."""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.errors import InputError
from features.scheduler import linear_step_time, pipeline_round_s, simulate
from features.specs import LengthDist

STEP = linear_step_time(0.010, 2e-4, 1e-6, 5e-5)


# ---- the reference: vLLM's schedule() loop, one step at a time, one request at a time ----------------------------
@dataclass
class _Req:
    rid: int
    isl: int
    osl: int
    arrival: float
    gen: int = 0
    comp: int = 0
    blocks: int = 0
    preemptions: int = 0
    admitted: bool = False
    first_token_s: float = float("nan")
    finish_s: float = float("nan")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def reference(isl, osl, *, step_time_s, kv_capacity_tokens, block_size=16, max_num_seqs=256,
              max_num_batched_tokens=8192, enable_chunked_prefill=True, arrival_s=None, concurrency=0,
              reserve_full_sequence=True, pp=1):
    """One replica, literally: running pass with preemption of running[-1], then admissions, then the step.
    With `pp` > 1 a step is one round of `pp` micro-batches in flight: every running request at most once (a request
    in flight is not scheduled again), `pp` micro-batch budgets, and the round's time from `pipeline_round_s`."""
    n = len(isl)
    arrival = np.zeros(n) if arrival_s is None else np.asarray(arrival_s, float)
    reqs = [_Req(i, int(isl[i]), int(osl[i]), float(arrival[i])) for i in range(n)]
    if concurrency:
        future = deque(reqs[concurrency:])
        pending = deque(reqs[:concurrency])
    else:
        future = deque()
        pending = deque(sorted(reqs, key=lambda r: r.arrival))
    free = kv_capacity_tokens // block_size
    total_blocks = free
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    t, steps, preemptions, admit_order, max_used, peak = 0.0, 0, 0, [], 0, 0
    while pending or waiting or running or future:
        while pending and pending[0].arrival <= t:
            waiting.append(pending.popleft())
        if not waiting and not running:
            t = pending[0].arrival
            continue
        budget = max_num_batched_tokens * pp
        scheduled: list[tuple[_Req, int, int]] = []  # (request, tokens, computed before)
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            new = min(r.isl + r.gen - r.comp, budget)
            need = max(0, _cdiv(r.comp + new, block_size) - r.blocks)
            gave_up = False
            while need > free:
                victim = running.pop()
                free += victim.blocks
                victim.blocks, victim.comp = 0, 0
                victim.preemptions += 1
                preemptions += 1
                preempted = True
                waiting.appendleft(victim)
                if victim is r:
                    gave_up = True
                    break
            if gave_up:
                break
            free -= need
            r.blocks += need
            scheduled.append((r, new, r.comp))
            budget -= new
            i += 1
        if not preempted:
            while waiting and budget > 0 and len(running) < max_num_seqs:
                r = waiting[0]
                tok = r.isl + r.gen
                if not enable_chunked_prefill and tok > budget:
                    break
                new = min(tok, budget)
                if _cdiv(tok if reserve_full_sequence else new, block_size) > free:
                    break
                waiting.popleft()
                r.blocks = _cdiv(new, block_size)
                free -= r.blocks
                running.append(r)
                scheduled.append((r, new, 0))
                budget -= new
                if not r.admitted:
                    r.admitted = True
                    admit_order.append(r.rid)
        assert scheduled
        max_used = max(max_used, total_blocks - free)
        peak = max(peak, len(running))
        ds = sum(1 for _, new, _ in scheduled if new == 1)
        dkv = sum(c + 1 for _, new, c in scheduled if new == 1)
        pf = sum(new for _, new, _ in scheduled if new > 1)
        if pp > 1:
            t += float(pipeline_round_s(step_time_s, pp, max_num_batched_tokens, np.array([ds]), np.array([dkv]),
                                        np.array([pf]))[0])
        else:
            t += float(step_time_s(np.array([ds]), np.array([dkv]), np.array([pf]))[0])
        steps += 1
        for r, new, _ in scheduled:
            r.comp += new
            if r.comp == r.isl + r.gen:
                r.gen += 1
                if r.gen == 1:
                    r.first_token_s = t
                if r.gen == r.osl:
                    r.finish_s = t
                    free += r.blocks
                    r.blocks = 0
                    running.remove(r)
                    if future:
                        nxt = future.popleft()
                        nxt.arrival = t
                        pending.append(nxt)
    return {"finish_s": np.array([r.finish_s for r in reqs]),
            "ttft_s": np.array([r.first_token_s - r.arrival for r in reqs]),
            "preemptions": preemptions, "request_preemptions": np.array([r.preemptions for r in reqs]),
            "steps": steps, "makespan_s": max(r.finish_s for r in reqs), "admit_order": admit_order,
            "max_used_blocks": max_used, "peak_running": peak, "gen": np.array([r.gen for r in reqs])}


# ---- strategies -------------------------------------------------------------------------------------------------
@st.composite
def small_case(draw):
    """A small workload and engine that often runs out of KV blocks."""
    n = draw(st.integers(1, 24))
    isl = np.array(draw(st.lists(st.integers(1, 120), min_size=n, max_size=n)))
    osl = np.array(draw(st.lists(st.integers(1, 150), min_size=n, max_size=n)))
    block_size = draw(st.sampled_from([1, 4, 16]))
    need = int(_cdiv(int((isl + osl - 1).max()), block_size))
    num_blocks = draw(st.integers(need, need * 6))
    max_num_seqs = draw(st.integers(1, 16))
    mnbt = draw(st.integers(max(max_num_seqs, 8), 256))
    chunked = draw(st.booleans())
    if not chunked:
        mnbt = max(mnbt, int(isl.max() + osl.max()))
    return dict(isl=isl, osl=osl, kv_capacity_tokens=num_blocks * block_size, block_size=block_size,
                max_num_seqs=max_num_seqs, max_num_batched_tokens=mnbt, enable_chunked_prefill=chunked,
                reserve_full_sequence=draw(st.booleans()))


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compare(fast, ref):
    assert fast.preemptions == ref["preemptions"]
    assert fast.steps == ref["steps"]
    np.testing.assert_array_equal(fast.request_preemptions, ref["request_preemptions"])
    np.testing.assert_array_equal(fast.admit_order, ref["admit_order"])
    assert fast.makespan_s == pytest.approx(ref["makespan_s"], rel=1e-9)
    np.testing.assert_allclose(fast.finish_s, ref["finish_s"], rtol=1e-9)
    np.testing.assert_allclose(fast.ttft_s, ref["ttft_s"], rtol=1e-9)
    assert fast.peak_running == ref["peak_running"]


# ---- the fast simulator equals the reference -------------------------------------------------------------------
@FAST
@given(small_case())
def test_matches_reference_closed_batch(case):
    fast = simulate(step_time_s=STEP, **case)
    _compare(fast, reference(step_time_s=STEP, **case))


@FAST
@given(small_case(), st.lists(st.floats(0, 3.0), min_size=24, max_size=24))
def test_matches_reference_with_arrivals(case, times):
    arrival = np.array(times[: len(case["isl"])])
    fast = simulate(step_time_s=STEP, arrival_s=arrival, **case)
    _compare(fast, reference(step_time_s=STEP, arrival_s=arrival, **case))


@FAST
@given(small_case(), st.integers(1, 8))
def test_matches_reference_fixed_concurrency(case, concurrency):
    fast = simulate(step_time_s=STEP, concurrency=concurrency, **case)
    _compare(fast, reference(step_time_s=STEP, concurrency=concurrency, **case))


@settings(max_examples=40, deadline=None)
@given(small_case(), st.integers(2, 4))
def test_dp_closed_batch_is_round_robin_of_independent_replicas(case, dp):
    """All requests arrive at once: shortest-queue dispatch deals them round robin; replicas run independently."""
    fast = simulate(step_time_s=STEP, dp=dp, **case)
    n = len(case["isl"])
    np.testing.assert_array_equal(fast.replica, np.arange(n) % dp)
    total_pre = 0
    for r in range(dp):
        ids = np.arange(r, n, dp)
        if len(ids) == 0:
            assert fast.per_replica[r]["steps"] == 0
            continue
        sub = dict(case, isl=case["isl"][ids], osl=case["osl"][ids])
        ref = reference(step_time_s=STEP, **sub)
        np.testing.assert_allclose(fast.finish_s[ids], ref["finish_s"], rtol=1e-9)
        total_pre += ref["preemptions"]
    assert fast.preemptions == total_pre


def test_long_reasoning_case_matches_reference():
    """A bigger capacity-trap case (long outputs, chunked prefills of resumed requests) also matches exactly."""
    rng = np.random.default_rng(3)
    isl = LengthDist("lognormal", 100, 0.5, 2048).sample(60, rng)
    osl = LengthDist("lognormal", 600, 0.8, 3000).sample(60, rng)
    case = dict(isl=isl, osl=osl, kv_capacity_tokens=6000, block_size=16, max_num_seqs=32, max_num_batched_tokens=512)
    fast = simulate(step_time_s=STEP, **case)
    ref = reference(step_time_s=STEP, **case)
    assert ref["preemptions"] > 20
    _compare(fast, ref)


@FAST
@given(small_case(), st.integers(2, 4), st.integers(1, 2))
def test_matches_reference_pipeline_parallel(case, pp, dp):
    """PP: rounds of pp micro-batches in flight; the bulk-stepped simulator equals the literal round-by-round loop."""
    fast = simulate(step_time_s=STEP, pp=pp, **case)
    if dp == 1:
        _compare(fast, reference(step_time_s=STEP, pp=pp, **case))
    else:  # closed batch: round robin over independent replicas
        fast = simulate(step_time_s=STEP, pp=pp, dp=dp, **case)
        for r in range(dp):
            ids = np.arange(r, len(case["isl"]), dp)
            if len(ids):
                ref = reference(step_time_s=STEP, pp=pp, **dict(case, isl=case["isl"][ids], osl=case["osl"][ids]))
                np.testing.assert_allclose(fast.finish_s[ids], ref["finish_s"], rtol=1e-9)


def test_pipeline_round_time():
    """One request pays the whole pipeline per token; a full pipeline streams each stage once per micro-batch; a
    lone prefill chunk fits one micro-batch; decoders split evenly, the largest micro-batch sets the pace."""
    stage = linear_step_time(0.010, 1e-3, 0.0, 1e-5)
    r = pipeline_round_s(stage, 4, 512, np.array([1, 8, 10, 0, 0]), np.array([100, 800, 1000, 0, 0]),
                         np.array([0, 0, 0, 300, 2048]))
    np.testing.assert_allclose(r, [4 * 0.011, 4 * 0.012, 4 * 0.013, 4 * (0.010 + 300e-5), 4 * (0.010 + 512e-5)])
    one = simulate(np.array([64]), np.array([40]), step_time_s=linear_step_time(0.01), kv_capacity_tokens=4096, pp=4)
    assert one.makespan_s == pytest.approx(40 * 4 * 0.01) and one.steps == 40
    # PP cannot speed a lone request up, and with many requests its rounds cost pp x a micro-batch's stage step
    many = dict(isl=np.full(64, 32), osl=np.full(64, 50), kv_capacity_tokens=100_000, max_num_seqs=64)
    flat = simulate(step_time_s=linear_step_time(0.01, 1e-3), **many)
    piped = simulate(step_time_s=linear_step_time(0.01, 1e-3), pp=4, **many)
    assert piped.steps == flat.steps and piped.preemptions == flat.preemptions == 0
    assert piped.makespan_s > flat.makespan_s  # 4 x (10 ms + 16 seqs) per round against 10 ms + 64 seqs


@FAST
@given(small_case(), st.integers(2, 4))
@example({"isl": np.array([2]), "osl": np.array([1]), "kv_capacity_tokens": 2, "block_size": 1, "max_num_seqs": 1,
          "max_num_batched_tokens": 8, "enable_chunked_prefill": False, "reserve_full_sequence": False}, 2)
def test_invariants_pipeline_parallel(case, pp):
    """The scheduler invariants hold with PP micro-batches in flight too."""
    res = simulate(step_time_s=STEP, pp=pp, record_timeline=True, **case)
    tl = res.timeline[0]
    assert tl[:, 3].max() <= case["kv_capacity_tokens"] // case["block_size"] * case["block_size"]
    assert tl[:, 1].max() <= case["max_num_seqs"] and np.all(np.diff(tl[:, 0]) > 0)
    assert np.all(np.isfinite(res.finish_s))
    np.testing.assert_array_equal(res.output_tokens, case["osl"])
    assert res.admit_order.tolist() == list(range(len(case["isl"])))  # FCFS, each admitted for the first time once
    pre = res.request_preemptions > 0
    assert np.all(res.finish_s[pre] >= res.ttft_s[pre]) and res.preemptions == int(res.request_preemptions.sum())
    assert tl[:, 4].sum() == case["osl"].sum()  # every token emitted once: a request is in one micro-batch a round
    # a request advances at most once per round, and each round lasts at least pp of the fastest non-empty stage
    # step (one decode token, or a one-token prefill chunk: the first output token comes out of the prefill step)
    min_stage = min(float(STEP(np.array([1]), np.array([1]), np.array([0]))[0]),
                    float(STEP(np.array([0]), np.array([0]), np.array([1]))[0]))
    assert res.makespan_s >= case["osl"].max() * pp * min_stage * (1 - 1e-12)


# ---- invariants ------------------------------------------------------------------------------------------------
@FAST
@given(small_case(), st.integers(1, 3))
@example({"isl": np.array([2]), "osl": np.array([1]), "kv_capacity_tokens": 2, "block_size": 1, "max_num_seqs": 1,
          "max_num_batched_tokens": 8, "enable_chunked_prefill": False, "reserve_full_sequence": False}, 1)
def test_invariants(case, dp):
    res = simulate(step_time_s=STEP, dp=dp, record_timeline=True, **case)
    n = len(case["isl"])
    # never more blocks in use than exist
    for tl in res.timeline:
        if len(tl) == 0:
            continue
        assert tl[:, 3].max() <= case["kv_capacity_tokens"] // case["block_size"] * case["block_size"]
        assert np.all(np.diff(tl[:, 0]) > 0)
        assert tl[:, 1].max() <= case["max_num_seqs"]
    # every request finishes exactly once, with exactly osl tokens
    assert np.all(np.isfinite(res.finish_s))
    np.testing.assert_array_equal(res.output_tokens, case["osl"])
    assert sorted(res.admit_order.tolist()) == list(range(n))
    # FCFS: first admissions in arrival (= index) order within each replica
    for r in range(dp):
        order = [i for i in res.admit_order.tolist() if res.replica[i] == r]
        assert order == sorted(order)
    # preempted requests resumed and finished, after their first token
    pre = res.request_preemptions > 0
    assert np.all(res.finish_s[pre] >= res.ttft_s[pre])
    assert res.preemptions == int(res.request_preemptions.sum())
    # makespan covers one step per output token of the longest request, at the fastest possible non-empty step
    # (one decode token, or a one-token prefill chunk: the first output token comes out of the prefill step)
    min_step = min(float(STEP(np.array([1]), np.array([1]), np.array([0]))[0]),
                   float(STEP(np.array([0]), np.array([0]), np.array([1]))[0]))
    assert res.makespan_s >= case["osl"].max() * min_step * (1 - 1e-12)
    assert np.all(res.queue_s >= -1e-12) and np.all(res.running_s > 0)
    assert res.steps == sum(p["steps"] for p in res.per_replica)
    # every output token is emitted by exactly one logged step
    assert sum(tl[:, 4].sum() for tl in res.timeline) == case["osl"].sum()
    edges, rate = res.output_rate(0.05)
    assert rate.sum() * 0.05 == pytest.approx(case["osl"].sum())


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 30), st.integers(1, 64), st.integers(16, 400), st.integers(1, 8), st.sampled_from([1, 16]),
       st.integers(1, 32))
def test_more_kv_never_more_preemptions_for_identical_requests(n, isl, osl, extra, bs, max_num_seqs):
    """Identical requests: a cache that holds every co-running request to its end never preempts, and no smaller
    cache preempts less than that.

    Preemptions are NOT monotone in capacity in general, in vLLM as here: admission checks a request's current
    length, not its final one, so a slightly larger cache can admit a request early that it later preempts
    (n=2, isl=osl=16, block 1: 31 KV tokens never preempt, 32 tokens preempt once).
    """
    need = _cdiv(isl + osl - 1, bs)
    common = dict(isl=np.full(n, isl), osl=np.full(n, osl), step_time_s=STEP, block_size=bs, max_num_seqs=max_num_seqs)
    roomy = simulate(kv_capacity_tokens=(min(n, max_num_seqs) * need + extra) * bs, **common)
    tight = simulate(kv_capacity_tokens=(need + extra) * bs, **common)
    assert roomy.preemptions == 0
    assert tight.preemptions >= roomy.preemptions
    assert roomy.peak_running == min(n, max_num_seqs)


@settings(max_examples=60, deadline=None)
@given(small_case())
def test_unlimited_kv_and_seqs_means_no_preemption(case):
    n = len(case["isl"])
    case = dict(case, kv_capacity_tokens=int((case["isl"] + case["osl"]).sum()) * 2 + 64, max_num_seqs=max(n, 1),
                max_num_batched_tokens=max(case["max_num_batched_tokens"], n))
    res = simulate(step_time_s=STEP, **case)
    assert res.preemptions == 0
    assert res.full_cache_s == 0.0


def test_fixed_batch_decode_time_is_exact():
    """n identical requests, ample KV: one prefill step, then osl-1 decode steps of the whole batch."""
    n, isl, osl = 8, 10, 50
    res = simulate(np.full(n, isl), np.full(n, osl), step_time_s=STEP, kv_capacity_tokens=10_000, block_size=16)
    prefill = STEP(np.array([0]), np.array([0]), np.array([n * isl]))[0]
    kv = n * (isl + 1 + np.arange(osl - 1))
    decode = STEP(np.full(osl - 1, n), kv, np.zeros(osl - 1)).sum()
    assert res.makespan_s == pytest.approx(prefill + decode, rel=1e-12)
    assert res.steps == osl and res.peak_running == n
    np.testing.assert_allclose(res.ttft_s, prefill)
    assert res.output_throughput == pytest.approx(n * osl / res.makespan_s)


def test_capacity_trap_preempts_and_counts_recompute():
    """KV for ~4 of 16 long requests: the newest are preempted, resumed with prompt+generated prefilled again."""
    isl, osl = np.full(16, 50), np.full(16, 400)
    res = simulate(isl, osl, step_time_s=STEP, kv_capacity_tokens=4 * 450, block_size=16, record_timeline=True)
    assert res.preemptions > 0
    assert res.recompute_tokens > res.preemptions * 50
    assert res.prefill_tokens >= 16 * 50 + res.recompute_tokens
    assert 0 < res.full_cache_fraction <= 1
    assert res.peak_running == 16  # every prompt fits at first: the trap springs as the outputs grow
    assert res.mean_running < 8


def test_dp_spreads_and_speeds_up():
    rng = np.random.default_rng(0)
    isl = LengthDist("lognormal", 100, 0.5, 2048).sample(400, rng)
    osl = LengthDist("lognormal", 500, 0.8, 4000).sample(400, rng)
    one = simulate(isl, osl, step_time_s=STEP, kv_capacity_tokens=50_000, max_num_seqs=64)
    two = simulate(isl, osl, step_time_s=STEP, kv_capacity_tokens=50_000, max_num_seqs=64, dp=2)
    assert two.makespan_s < one.makespan_s
    assert [p["requests"] for p in two.per_replica] == [200, 200]


def test_bad_input_raises_input_error():
    ok = dict(step_time_s=STEP, kv_capacity_tokens=1600)
    with pytest.raises(InputError):
        simulate(np.array([10]), np.array([10, 20]), **ok)
    with pytest.raises(InputError):
        simulate(np.array([0]), np.array([10]), **ok)
    with pytest.raises(InputError, match="never finish"):
        simulate(np.array([1000]), np.array([1000]), **ok)
    with pytest.raises(InputError):
        simulate(np.array([10]), np.array([10]), max_num_batched_tokens=8, max_num_seqs=16, **ok)
    with pytest.raises(InputError):
        simulate(np.array([10]), np.array([10]), arrival_s=np.array([0.0]), concurrency=2, **ok)
    with pytest.raises(InputError, match="step_time_s"):
        simulate(np.array([10]), np.array([10]), step_time_s=lambda a, b, c: np.zeros_like(a, float),
                 kv_capacity_tokens=1600)


def test_reasoning_batch_simulates_fast():
    """The 2,000-request reasoning closed batch (outputs median 4,500, up to 32,768) in well under a second."""
    rng = np.random.default_rng(0)
    isl = LengthDist("lognormal", 100, 0.5, 2048).sample(2000, rng)
    osl = LengthDist("lognormal", 4500, 0.8, 32768).sample(2000, rng)
    step = linear_step_time(0.010, 2e-5, 1e-8, 1e-5)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        res = simulate(isl, osl, step_time_s=step, kv_capacity_tokens=2_000_000)
        best = min(best, time.perf_counter() - t0)
    assert res.steps > 30_000 and np.all(np.isfinite(res.finish_s))
    assert best < 0.5, f"{best:.3f} s"


@settings(max_examples=40, deadline=None)
@given(small_case(), st.integers(1, 2), st.booleans())
def test_interpolated_step_times_are_exact_for_affine_models(case, dp, with_arrivals):
    arrival = np.linspace(0, 2, len(case["isl"])) if with_arrivals else None
    exact = simulate(step_time_s=STEP, dp=dp, arrival_s=arrival, **case)
    interp = simulate(step_time_s=STEP, dp=dp, arrival_s=arrival, interpolate_step_times=True, **case)
    assert interp.steps == exact.steps and interp.preemptions == exact.preemptions
    np.testing.assert_allclose(interp.finish_s, exact.finish_s, rtol=1e-9)


def test_interpolated_step_times_close_for_a_curved_model():
    rng = np.random.default_rng(1)
    isl = LengthDist("lognormal", 100, 0.5, 2048).sample(300, rng)
    osl = LengthDist("lognormal", 800, 0.8, 6000).sample(300, rng)

    def curved(ds, kv, pf):
        return 0.005 + 1e-4 * ds + 2e-4 * np.sqrt(kv) + 3e-5 * pf

    exact = simulate(isl, osl, step_time_s=curved, kv_capacity_tokens=100_000, max_num_seqs=64)
    interp = simulate(isl, osl, step_time_s=curved, kv_capacity_tokens=100_000, max_num_seqs=64,
                      interpolate_step_times=True)
    assert interp.preemptions == exact.preemptions
    assert interp.makespan_s == pytest.approx(exact.makespan_s, rel=0.01)


# ---- against the real engine (vLLM CPU build) -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_schedule_is_reproduced_exactly(tmp_path):
    """A real vLLM engine in the capacity trap: the simulation makes the same number of steps and preemptions."""
    pytest.importorskip("vllm")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ is not installed
    from benchmarks.scheduler_fidelity import BLOCK_SIZE, MAX_NUM_BATCHED_TOKENS, real_metrics, run_engine, \
        trap_workload

    isl, osl = trap_workload(12)
    res = run_engine("tiny-llama", 1, isl, osl, (4, 16), 1, tmp_path, timeout_s=400)
    assert not res.get("error"), res.get("log_tail") or res.get("error")
    assert res["usable_blocks"] == 39  # num_gpu_blocks_override 40, one is vLLM's null block
    for reps in res["runs"]:
        real = real_metrics(reps)
        sim = simulate(np.array(isl), np.array(osl), step_time_s=STEP, kv_capacity_tokens=39 * BLOCK_SIZE,
                       block_size=BLOCK_SIZE, max_num_seqs=reps[0]["max_num_seqs"],
                       max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS)
        assert real["all_tokens_generated"]
        assert (sim.steps, sim.preemptions, sim.peak_running) == (real["steps"], real["preemptions"],
                                                                  real["peak_running"])
        assert real["preemptions"] > 0
        np.testing.assert_array_equal(sim.request_preemptions, reps[0]["request_preemptions"])
