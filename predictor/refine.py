"""Closed-batch refinement: re-score leading search candidates with the request-level scheduler simulation.

The steady-state screen averages; a closed batch has a start (every prompt at once), preemptions when caches fill
and a tail where the longest outputs run alone. Aggregated candidates go through `Predictor.predict(simulate=True)`;
a mix splits one sample of the batch over its members as the router does and simulates each member on exactly its
requests (the deployment ends with its slowest member); a disaggregated candidate simulates the decode pool with
decode-only steps, each request arriving when its prompt has been prefilled on the prefill pool and its KV cache has
crossed the link. Mix members and decode pools get the learned step-speed correction of their layout, as aggregated
candidates do, so every mode is scored on the same footing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.catalog import resolve_gpu, resolve_model
from features.closed_batch import simulate_requests, stage_time_fn, usable_kv_tokens
from features.disagg import kv_transfer_ms, pools_cross_nodes
from features.memory import kv_capacity_tokens
from features.scheduler import simulate
from features.specs import EngineConfig, Layout
from features.steptime import replica_step_ms
from predictor.api import Predictor, scenario_row
from predictor.scoring import TARGETS, SearchContext


def _engine(ctx: SearchContext, r) -> EngineConfig:
    return EngineConfig(weight_dtype=ctx.weight_dtype or resolve_model(ctx.model).native_dtype, kv_cache_dtype=str(r.kv_cache_dtype),
                        max_num_seqs=int(r.max_num_seqs), max_num_batched_tokens=int(r.max_num_batched_tokens),
                        gpu_memory_utilization=float(r.gpu_memory_utilization))


def _scale(value: float, screened: dict, t: str) -> dict:
    """A simulated value with the screen's interval ratios (the learned/physics uncertainty of that candidate)."""
    v = screened.get(t)
    lo = screened.get(f"{t}_lo")
    hi = screened.get(f"{t}_hi")
    ok = v is not None and np.isfinite(v) and v > 0
    return {"value": value, "lo": value * lo / v if ok and lo is not None else np.nan,
            "hi": value * hi / v if ok and hi is not None else np.nan}


def _from_prediction(p) -> dict:
    return {t: dict(p.targets[t]) for t in p.targets}


def refine_aggregated(predictor: Predictor, ctx: SearchContext, r, seed: int) -> dict:
    p = predictor.predict(ctx.model, ctx.gpu, int(r.tp), int(r.pp), int(r.dp), int(r.ep), bool(r.attention_dp),
                          ctx.workload, ctx.workload.num_requests, ctx.workload.concurrency, ctx.workload.request_rate,
                          engine=_engine(ctx, r), simulate=True, seed=seed)
    out = _from_prediction(p)
    out["preemptions"] = {"value": float(p.preemptions or 0.0), "lo": np.nan, "hi": np.nan}
    return out


def _simulate_member(predictor: Predictor, ctx: SearchContext, layout: Layout, engine: EngineConfig,
                     isl: np.ndarray, osl: np.ndarray):
    """One aggregated member on its exact requests (closed batch): the physics step time scaled by the member's
    learned speed correction, as `Predictor.predict(simulate=True)` scales an aggregated simulation."""
    return simulate_requests(resolve_model(ctx.model), resolve_gpu(ctx.gpu), layout, engine, predictor.calibration,
                             isl, osl, speed=_learned_speed(predictor, ctx, layout, engine))


def split_by_share(n: int, share: float) -> np.ndarray:
    """Which member (0 or 1) the router sends each of `n` requests submitted at once to: a smooth weighted
    round-robin, the first member taking round(n * share) requests spread evenly through the batch."""
    share = float(np.clip(share, 0.0, 1.0))
    i = np.arange(n)
    first = np.floor((i + 1) * share + 0.5) > np.floor(i * share + 0.5)
    return np.where(first, 0, 1)


def refine_mixed(predictor: Predictor, ctx: SearchContext, r, seed: int) -> dict:
    """A mix on a closed batch: ONE sample of the batch, split over the members by the router (in proportion to
    what each member sustains, `load_share_first` of the screen), each member simulated on exactly its requests
    with vLLM's scheduler (preemption recompute and the tail included); the deployment ends with its slowest member.
    (Sampling each member's share separately would give each its own longest request: too long a tail for both.)"""
    wl = ctx.workload
    share = float(r.get("load_share_first", np.nan))
    share = share if np.isfinite(share) else 0.5
    engine = _engine(ctx, r)
    isl, osl = wl.sample(int(wl.num_requests), seed)
    member = split_by_share(len(isl), share)
    layouts = [Layout(int(r.tp), int(r.pp), int(r.dp), int(r.ep)), Layout(int(r.b_tp), int(r.b_pp), int(r.b_dp), int(r.b_ep))]
    sims, parts = [], []
    for k, lay in enumerate(layouts):
        mine = member == k
        if not mine.any():
            continue
        sims.append(_simulate_member(predictor, ctx, lay, engine, isl[mine], osl[mine]))
        parts.append(mine)
    makespan = max(s.makespan_s for s in sims)
    out_tokens = float(osl.sum())
    ttft = np.concatenate([s.ttft_s for s in sims]) * 1e3
    tpot = np.concatenate([s.tpot_s for s in sims]) * 1e3
    tpot = tpot[np.isfinite(tpot)]
    values = {"makespan_s": makespan, "output_throughput": out_tokens / makespan,
              "total_throughput": (out_tokens + float(isl.sum())) / makespan, "request_throughput": len(isl) / makespan,
              "ttft_ms": float(np.mean(ttft)), "ttft_p99_ms": float(np.percentile(ttft, 99)),
              "tpot_ms": float(np.mean(tpot)) if len(tpot) else np.nan,
              "tpot_p99_ms": float(np.percentile(tpot, 99)) if len(tpot) else np.nan}
    screened = {f"{t}{s}": float(r.get(f"pred_{t}{s}", np.nan)) for t in TARGETS for s in ("", "_lo", "_hi")}
    out = {t: _scale(v, screened, t) for t, v in values.items()}
    out["preemptions"] = {"value": float(sum(s.preemptions for s in sims)), "lo": np.nan, "hi": np.nan}
    for t, f in (("ttft_ms", lambda s: s.ttft_mean_s), ("tpot_ms", lambda s: s.tpot_mean_s)):
        # a mix meets a latency SLO only when every member does
        out[f"worst_{t}"] = {"value": max(f(s) for s in sims) * 1e3, "lo": np.nan, "hi": np.nan}
    return out


def _learned_speed(predictor: Predictor, ctx: SearchContext, layout: Layout, engine: EngineConfig) -> float:
    """Learned / physics TPOT of `layout` serving the search's workload as an aggregated engine (1.0 without a
    learned TPOT model): the factor `Predictor.predict(simulate=True)` applies to an aggregated simulation."""
    wl = ctx.workload
    row = scenario_row(str(ctx.model), resolve_gpu(ctx.gpu).name, layout, wl, engine)
    r = predictor.predict_frame(pd.DataFrame([row])).iloc[0]
    pred, phys = float(r.get("pred_tpot_ms", np.nan)), float(r.get("phys_tpot_ms", np.nan))
    return pred / phys if np.isfinite(pred) and np.isfinite(phys) and phys > 0 and pred > 0 else 1.0


def refine_disaggregated(predictor: Predictor, ctx: SearchContext, r, screened: dict, seed: int) -> dict:
    """Simulate the decode pool; arrivals = prefill completion on the prefill pool (FCFS, round-robin) + KV transfer."""
    model, gpu, cal = resolve_model(ctx.model), resolve_gpu(ctx.gpu), predictor.calibration
    engine = _engine(ctx, r)
    wdt, kdt = engine.weight_dtype, engine.kv_dtype
    decode = Layout(int(r.tp), int(r.pp), int(r.dp), int(r.ep), bool(r.attention_dp))
    prefill = Layout(int(r.b_tp), int(r.b_pp), 1, int(r.b_ep))
    n_prefill = int(r.b_dp)
    wl = ctx.workload
    isl, osl = wl.sample(int(wl.num_requests), seed)
    # prefill pool: requests in order, round-robin over replicas, each replica packs prompts into token-budget steps
    chunk = float(max(engine.max_num_batched_tokens, 1))
    ms_per_token = float(replica_step_ms(model, gpu, prefill, cal, 0.0, 0.0, chunk, 0.0, wdt, kdt)) / chunk
    done_ms = np.zeros(len(isl))
    for k in range(n_prefill):
        mine = np.arange(k, len(isl), n_prefill)
        done_ms[mine] = np.cumsum(isl[mine]) * ms_per_token
    cross = bool(pools_cross_nodes(gpu, int(r.num_gpus)))
    x_ms = kv_transfer_ms(model, gpu, cal, isl.astype(float), kdt, prefill.tp * prefill.pp, decode.tp * decode.pp, cross)
    arrival_s = (done_ms + x_ms) / 1e3

    # the learned correction of the decode engines' step speed, as aggregated candidates get it (their simulation is
    # scaled by the learned/physics TPOT ratio of their layout): the decode pool's layout as an aggregated engine
    speed = _learned_speed(predictor, ctx, decode, engine)
    stage = stage_time_fn(model, gpu, decode, engine, cal)  # one pipeline stage, one micro-batch

    def step_time_s(decode_seqs, decode_kv_tokens, prefill_tokens):
        # the prompt's KV arrives computed: a step that admits requests costs their first decode token
        d = np.maximum(np.asarray(decode_seqs, float), np.where(np.asarray(prefill_tokens) > 0, 1.0, 0.0))
        return speed * stage(d, decode_kv_tokens, 0.0)

    cap = usable_kv_tokens(kv_capacity_tokens(model, gpu, decode, engine), engine.block_size)
    sim = simulate(isl, osl, step_time_s=step_time_s, kv_capacity_tokens=cap, block_size=engine.block_size,
                   max_num_seqs=engine.max_num_seqs, max_num_batched_tokens=engine.max_num_batched_tokens,
                   dp=int(decode.attention_replicas), arrival_s=arrival_s, pp=int(decode.pp))
    ttft_ms = (arrival_s + sim.ttft_s) * 1e3
    makespan = sim.makespan_s
    out_tokens = float(osl.sum())
    values = {"makespan_s": makespan, "output_throughput": out_tokens / makespan,
              "total_throughput": (out_tokens + float(isl.sum())) / makespan, "request_throughput": len(isl) / makespan,
              "ttft_ms": float(np.mean(ttft_ms)), "ttft_p99_ms": float(np.percentile(ttft_ms, 99)),
              "tpot_ms": sim.tpot_mean_s * 1e3, "tpot_p99_ms": sim.tpot_p99_s * 1e3}
    out = {t: _scale(v, screened, t) for t, v in values.items()}
    out["preemptions"] = {"value": float(sim.preemptions), "lo": np.nan, "hi": np.nan}
    return out


def refine(predictor: Predictor, ctx: SearchContext, r, seed: int) -> dict:
    """Simulated targets ({target: {value, lo, hi}}) of one scored candidate row (a namedtuple or Series)."""
    if r["mode"] == "aggregated":
        return refine_aggregated(predictor, ctx, r, seed)
    if r["mode"] == "mixed":
        return refine_mixed(predictor, ctx, r, seed)
    screened = {}
    for t in TARGETS:
        for s in ("", "_lo", "_hi"):
            screened[f"{t}{s}"] = float(r[f"pred_{t}{s}"])
    return refine_disaggregated(predictor, ctx, r, screened, seed)
