"""Closed-batch refinement: re-score leading search candidates with the request-level scheduler simulation.

The steady-state screen averages; a closed batch has a start (every prompt at once), preemptions when caches fill
and a tail where the longest outputs run alone. Aggregated candidates go through `Predictor.predict(simulate=True)`;
a mix simulates each member on its share of the requests (the deployment ends with its slowest member); a
disaggregated candidate simulates the decode pool with decode-only steps, each request arriving when its prompt
has been prefilled on the prefill pool and its KV cache has crossed the link.
"""

from __future__ import annotations

import numpy as np

from features.catalog import resolve_gpu, resolve_model
from features.disagg import kv_transfer_ms, pools_cross_nodes
from features.memory import kv_capacity_tokens
from features.scheduler import simulate
from features.specs import EngineConfig, Layout
from features.steptime import replica_step_ms
from predictor.api import Predictor
from predictor.scoring import TARGETS, SearchContext


def _engine(ctx: SearchContext, r) -> EngineConfig:
    return EngineConfig(weight_dtype=ctx.weight_dtype, kv_cache_dtype=str(r.kv_cache_dtype),
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


def refine_mixed(predictor: Predictor, ctx: SearchContext, r, seed: int) -> dict:
    wl = ctx.workload
    share = float(r.get("load_share_first", np.nan))
    share = share if np.isfinite(share) else 0.5
    n_a = max(1, int(round(wl.num_requests * share)))
    members = [(int(r.tp), int(r.pp), int(r.dp), int(r.ep), n_a),
               (int(r.b_tp), int(r.b_pp), int(r.b_dp), int(r.b_ep), max(1, wl.num_requests - n_a))]
    preds = [predictor.predict(ctx.model, ctx.gpu, tp, pp, dp, ep, False, wl, n, 0, 0.0, engine=_engine(ctx, r),
                               simulate=True, seed=seed + i) for i, (tp, pp, dp, ep, n) in enumerate(members)]
    mk = [p.targets["makespan_s"]["value"] for p in preds]
    makespan = max(mk)
    out = {"makespan_s": {k: max(p.targets["makespan_s"][k] for p in preds) for k in ("value", "lo", "hi")}}
    for t in ("output_throughput", "total_throughput", "request_throughput"):
        # what each member produced over its own run, over the whole deployment's run
        out[t] = {k: sum(p.targets[t][k] * m for p, m in zip(preds, mk)) / makespan for k in ("value", "lo", "hi")}
    weights = [p.targets["output_throughput"]["value"] * m for p, m in zip(preds, mk)]
    reqs = [p.targets["request_throughput"]["value"] * m for p, m in zip(preds, mk)]
    for t, w in (("tpot_ms", weights), ("ttft_ms", reqs)):
        out[t] = {k: sum(p.targets[t][k] * wi for p, wi in zip(preds, w)) / max(sum(w), 1e-12) for k in ("value", "lo", "hi")}
    for t in ("ttft_p99_ms", "tpot_p99_ms"):
        out[t] = {k: max(p.targets[t][k] for p in preds) for k in ("value", "lo", "hi")}
    out["preemptions"] = {"value": float(sum(p.preemptions or 0.0 for p in preds)), "lo": np.nan, "hi": np.nan}
    for t in ("ttft_ms", "tpot_ms"):  # a mix meets a latency SLO only when every member does
        out[f"worst_{t}"] = {"value": max(p.targets[t]["value"] for p in preds), "lo": np.nan, "hi": np.nan}
    return out


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

    def step_time_s(decode_seqs, decode_kv_tokens, prefill_tokens):
        # the prompt's KV arrives computed: a step that admits requests costs their first decode token
        d = np.maximum(np.asarray(decode_seqs, float), np.where(np.asarray(prefill_tokens) > 0, 1.0, 0.0))
        return replica_step_ms(model, gpu, decode, cal, d, decode_kv_tokens, 0.0, 0.0, wdt, kdt) / 1e3

    cap = int(kv_capacity_tokens(model, gpu, decode, engine))
    sim = simulate(isl, osl, step_time_s=step_time_s, kv_capacity_tokens=cap, block_size=engine.block_size,
                   max_num_seqs=engine.max_num_seqs, max_num_batched_tokens=engine.max_num_batched_tokens,
                   dp=int(decode.attention_replicas), arrival_s=arrival_s)
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
