"""Scoring search candidates, vectorised: predictions with 80% intervals, the binding limit and feasibility.

Aggregated candidates are rows of one `Predictor.predict_frame` call. A mix is its members scored as separate
deployments, with the load split in proportion to what each member sustains (a router's weighted split), then
summed (throughput), token-weighted (TPOT), request-weighted (TTFT) or maxed (tails, makespan). A disaggregated
candidate is `features.disagg` physics, corrected by the learned residual of its decode pool's aggregated layout
(the ratio of prediction to physics and its interval), so every mode carries the same kind of interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.calibration import Calibration
from features.catalog import resolve_gpu, resolve_model
from features.disagg import estimate_disaggregated
from features.schema import SERVING_TARGETS
from features.serving import EngineArrays
from features.specs import DTYPE_BYTES, EngineConfig, Layout, Workload
from predictor.api import Predictor

TARGETS = [t for t in SERVING_TARGETS if t != "preemptions"]
TERMS = ("weights", "kv_cache", "compute", "communication", "latency")
KNOBS = ["max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype", "gpu_memory_utilization"]
SUM_TARGETS = ("output_throughput", "total_throughput", "request_throughput")
MAX_TARGETS = ("ttft_p99_ms", "tpot_p99_ms", "makespan_s")


@dataclass(frozen=True)
class SearchContext:
    """What every candidate of one search shares: model, GPU type, workload (with its load) and weight dtype."""

    model: str
    gpu: str
    workload: Workload
    weight_dtype: str

    @property
    def min_tokens(self) -> int:
        """KV tokens a replica must hold to serve one typical long prompt (as `Predictor.predict` checks)."""
        return int(min(self.workload.isl.max_tokens, self.workload.isl.median * 4)) + 1

    @property
    def has_load(self) -> bool:
        wl = self.workload
        return wl.num_requests > 0 or wl.concurrency > 0 or wl.request_rate > 0

    def kv_dtype(self, kv_cache_dtype: str) -> str:
        return EngineConfig(weight_dtype=self.weight_dtype, kv_cache_dtype=kv_cache_dtype).kv_dtype


def _frame(ctx: SearchContext, tp, pp, dp, ep, adp, knobs: pd.DataFrame, num_requests, concurrency, request_rate) -> pd.DataFrame:
    """Serving rows of the measurement schema (no targets) for per-row layouts, knobs and load."""
    wl = ctx.workload
    n = len(knobs)
    kv = knobs["kv_cache_dtype"].map(lambda k: ctx.kv_dtype(str(k))).to_numpy(dtype=object)
    return pd.DataFrame({
        "kind": "serving", "source": "prediction", "engine": "vllm", "model": ctx.model, "gpu": ctx.gpu,
        "weight_dtype": ctx.weight_dtype, "kv_dtype": kv,
        "tp": np.asarray(tp, dtype=np.int64), "pp": np.asarray(pp, dtype=np.int64), "dp": np.asarray(dp, dtype=np.int64),
        "ep": np.asarray(ep, dtype=np.int64), "attention_dp": np.asarray(adp, dtype=bool),
        "num_gpus": np.asarray(tp, dtype=np.int64) * np.asarray(pp, dtype=np.int64) * np.asarray(dp, dtype=np.int64),
        "isl": wl.isl.mean, "osl": wl.osl.mean, "isl_dist": wl.isl.spec(), "osl_dist": wl.osl.spec(),
        "num_requests": np.broadcast_to(np.asarray(num_requests, dtype=np.int64), (n,)),
        "concurrency": np.broadcast_to(np.asarray(concurrency, dtype=np.int64), (n,)),
        "request_rate": np.broadcast_to(np.asarray(request_rate, dtype=float), (n,)),
        "max_num_seqs": knobs["max_num_seqs"].to_numpy(dtype=np.int64),
        "max_num_batched_tokens": knobs["max_num_batched_tokens"].to_numpy(dtype=np.int64),
        "gpu_memory_utilization": knobs["gpu_memory_utilization"].to_numpy(dtype=float), "block_size": 16,
    })


def _predict(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """predict_frame on the unique rows only (mixes and disaggregated pools repeat members), mapped back."""
    keys = [c for c in frame.columns if c not in ("kind", "source", "engine")]
    codes, _ = pd.factorize(pd.util.hash_pandas_object(frame[keys], index=False).to_numpy())
    first = pd.Series(np.arange(len(frame))).groupby(codes).first().to_numpy()
    pred = predictor.predict_frame(frame.iloc[first].reset_index(drop=True))
    return pred.iloc[codes].reset_index(drop=True)


def _columns(pred: pd.DataFrame) -> dict[str, np.ndarray]:
    """The prediction columns a candidate carries, as arrays."""
    out = {}
    for t in TARGETS:
        for s in ("", "_lo", "_hi"):
            out[f"pred_{t}{s}"] = pred[f"pred_{t}{s}"].to_numpy(dtype=float)
    out["regime"] = pred["regime"].astype(object).to_numpy()
    out["bottleneck"] = pred["bottleneck"].astype(object).to_numpy()
    out["steady_batch"] = pred["f_batch"].to_numpy(dtype=float)
    out["batch_limit_kv"] = pred["f_batch_limit_kv"].to_numpy(dtype=float)
    out["hbm_bw_util"] = pred["f_hbm_bw_util"].to_numpy(dtype=float)
    out["weight_gb_per_gpu"] = pred["f_weight_bytes_per_gpu"].to_numpy(dtype=float) / 1e9
    out["phys_kv_capacity_tokens"] = pred["phys_kv_capacity_tokens"].to_numpy(dtype=float)
    for k in TERMS:
        out[f"term_{k}_ms"] = pred[f"f_term_{k}_ms"].to_numpy(dtype=float)
    out["term_kv_transfer_ms"] = np.zeros(len(pred))
    out["term_prefill_ms"] = pred["f_prefill_ms"].to_numpy(dtype=float)
    return out


def _memory_reasons(ctx: SearchContext, gpu_memory_gb: float, weight_gb: np.ndarray, cap: np.ndarray,
                    util: np.ndarray, structural: np.ndarray) -> np.ndarray:
    """Why each row does not fit (the wording of `features.layouts.memory_reason`), '' where it does."""
    budget_gb = gpu_memory_gb * util
    reasons = np.array(structural, dtype=object)
    for i in np.flatnonzero(reasons == ""):
        if weight_gb[i] > budget_gb[i]:
            reasons[i] = (f"weights need {weight_gb[i]:.1f} GB per GPU, more than {budget_gb[i]:.1f} GB "
                          f"({util[i]:.0%} of {gpu_memory_gb:g} GB)")
        elif not cap[i] >= ctx.min_tokens:
            reasons[i] = (f"only {max(cap[i], 0):.0f} tokens of KV cache remain after weights and reserves "
                          f"(need {ctx.min_tokens})")
    return reasons


def score_aggregated(predictor: Predictor, ctx: SearchContext, cand: pd.DataFrame) -> pd.DataFrame:
    wl = ctx.workload
    frame = _frame(ctx, cand["tp"], cand["pp"], cand["dp"], cand["ep"], cand["attention_dp"], cand[KNOBS],
                   wl.num_requests, wl.concurrency, wl.request_rate)
    cols = _columns(_predict(predictor, frame))
    gpu = resolve_gpu(ctx.gpu)
    cols["reason"] = _memory_reasons(ctx, gpu.memory_gb, cols["weight_gb_per_gpu"], cols["phys_kv_capacity_tokens"],
                                     cand["gpu_memory_utilization"].to_numpy(dtype=float), cand["reason"].to_numpy())
    return pd.DataFrame(cols, index=cand.index)


def _split_load(total, share: np.ndarray, integer: bool) -> np.ndarray:
    if integer:
        return np.where(total > 0, np.maximum(np.round(total * share), 1), 0).astype(np.int64)
    return total * share


def score_mixed(predictor: Predictor, ctx: SearchContext, cand: pd.DataFrame) -> pd.DataFrame:
    wl = ctx.workload
    knobs = cand[KNOBS].reset_index(drop=True)
    a = dict(tp=cand["tp"], pp=cand["pp"], ep=cand["ep"], n=cand["dp"].to_numpy())
    b = dict(tp=cand["b_tp"], pp=cand["b_pp"], ep=cand["b_ep"], n=cand["b_dp"].to_numpy())
    no_adp = np.zeros(len(cand), dtype=bool)

    def member(m, dp, nreq, conc, rate):
        return _frame(ctx, m["tp"], m["pp"], dp, m["ep"], no_adp, knobs, nreq, conc, rate)

    if ctx.has_load:  # a router splits the load in proportion to what each member sustains when saturated
        one = np.ones(len(cand), dtype=np.int64)
        sat = _predict(predictor, pd.concat([member(a, one, 0, 0, 0.0), member(b, one, 0, 0, 0.0)], ignore_index=True))
        thr = sat["pred_output_throughput"].to_numpy(dtype=float)
        wa, wb = a["n"] * thr[: len(cand)], b["n"] * thr[len(cand):]
        share_a = np.where(np.isfinite(wa) & np.isfinite(wb) & (wa + wb > 0), wa / np.maximum(wa + wb, 1e-12), 0.5)
    else:
        share_a = np.full(len(cand), 0.5)
    fa = member(a, a["n"], _split_load(wl.num_requests, share_a, True), _split_load(wl.concurrency, share_a, True),
                _split_load(wl.request_rate, share_a, False))
    fb = member(b, b["n"], _split_load(wl.num_requests, 1 - share_a, True),
                _split_load(wl.concurrency, 1 - share_a, True), _split_load(wl.request_rate, 1 - share_a, False))
    pred = _predict(predictor, pd.concat([fa, fb], ignore_index=True))
    ca, cb = _columns(pred.iloc[: len(cand)]), _columns(pred.iloc[len(cand):])
    out = _combine(ca, cb, a["n"] * np.asarray(a["tp"]) * np.asarray(a["pp"]),
                   b["n"] * np.asarray(b["tp"]) * np.asarray(b["pp"]))
    gpu = resolve_gpu(ctx.gpu)
    util = cand["gpu_memory_utilization"].to_numpy(dtype=float)
    ra = _memory_reasons(ctx, gpu.memory_gb, ca["weight_gb_per_gpu"], ca["phys_kv_capacity_tokens"], util,
                         np.full(len(cand), "", dtype=object))
    rb = _memory_reasons(ctx, gpu.memory_gb, cb["weight_gb_per_gpu"], cb["phys_kv_capacity_tokens"], util,
                         np.full(len(cand), "", dtype=object))
    out["reason"] = np.where(ra != "", np.char.add("first member: ", ra.astype(str)),
                             np.where(rb != "", np.char.add("second member: ", rb.astype(str)), "")).astype(object)
    out["load_share_first"] = share_a
    out["worst_ttft_ms"] = np.fmax(ca["pred_ttft_ms"], cb["pred_ttft_ms"])
    out["worst_tpot_ms"] = np.fmax(ca["pred_tpot_ms"], cb["pred_tpot_ms"])
    return pd.DataFrame(out, index=cand.index)


def _combine(ca: dict, cb: dict, gpus_a: np.ndarray, gpus_b: np.ndarray) -> dict:
    """One deployment's numbers from two members' (sums, weighted means, maxima)."""
    out = {}
    for t in TARGETS:
        for s in ("", "_lo", "_hi"):
            va, vb = ca[f"pred_{t}{s}"], cb[f"pred_{t}{s}"]
            if t in SUM_TARGETS:
                v = va + vb
            elif t in MAX_TARGETS:
                v = np.fmax(va, vb)
            elif t == "tpot_ms":
                wa, wb = ca["pred_output_throughput"], cb["pred_output_throughput"]
                v = (wa * va + wb * vb) / np.maximum(wa + wb, 1e-12)
            elif t == "ttft_ms":
                wa, wb = ca["pred_request_throughput"], cb["pred_request_throughput"]
                v = (wa * va + wb * vb) / np.maximum(wa + wb, 1e-12)
            else:  # kv_capacity_tokens: per replica, the smaller member's
                v = np.fmin(va, vb)
            out[f"pred_{t}{s}"] = v
    dominant_a = gpus_a >= gpus_b
    for k in ("regime", "bottleneck", "steady_batch", "batch_limit_kv", "hbm_bw_util", "phys_kv_capacity_tokens",
              *[f"term_{t}_ms" for t in TERMS], "term_kv_transfer_ms", "term_prefill_ms"):
        out[k] = np.where(dominant_a, ca[k], cb[k])
    out["weight_gb_per_gpu"] = np.fmax(ca["weight_gb_per_gpu"], cb["weight_gb_per_gpu"])
    return out


def score_disaggregated(predictor: Predictor, ctx: SearchContext, cand: pd.DataFrame, cal: Calibration) -> pd.DataFrame:
    wl = ctx.workload
    model = resolve_model(ctx.model)
    gpu = resolve_gpu(ctx.gpu)
    knobs = cand[KNOBS].reset_index(drop=True)
    kv_bytes = knobs["kv_cache_dtype"].map(lambda k: DTYPE_BYTES[ctx.kv_dtype(str(k))]).to_numpy(dtype=float)
    engine = EngineArrays(weight_dtype=ctx.weight_dtype, kv_dtype=kv_bytes,
                          max_num_seqs=knobs["max_num_seqs"].to_numpy(dtype=float),
                          max_num_batched_tokens=knobs["max_num_batched_tokens"].to_numpy(dtype=float),
                          gpu_memory_utilization=knobs["gpu_memory_utilization"].to_numpy(dtype=float), block_size=16.0)
    arr = {c: cand[c].to_numpy() for c in ("tp", "pp", "dp", "ep", "b_tp", "b_pp", "b_dp", "b_ep")}
    decode = Layout(tp=arr["tp"].astype(int), pp=arr["pp"].astype(int), dp=arr["dp"].astype(int),
                    ep=arr["ep"].astype(int), attention_dp=cand["attention_dp"].to_numpy(dtype=bool))
    prefill = Layout(tp=arr["b_tp"].astype(int), pp=arr["b_pp"].astype(int), dp=np.ones(len(cand), dtype=int),
                     ep=arr["b_ep"].astype(int), attention_dp=np.zeros(len(cand), dtype=bool))
    e = estimate_disaggregated(model, gpu, prefill, arr["b_dp"].astype(float), decode, engine, cal, wl.isl.mean,
                               wl.osl.mean, wl.num_requests, wl.concurrency, wl.request_rate, wl.osl.median,
                               wl.osl.sigma if wl.osl.kind != "fixed" else 0.0, wl.osl.max_tokens)
    # the decode pool's aggregated layout: its learned correction (prediction / physics) and interval carry over
    agg = _predict(predictor, _frame(ctx, cand["tp"], cand["pp"], cand["dp"], cand["ep"], cand["attention_dp"], knobs,
                                     wl.num_requests, wl.concurrency, wl.request_rate))
    phys_values = {"output_throughput": e.output_throughput, "total_throughput": e.total_throughput,
                   "request_throughput": e.request_throughput, "ttft_ms": e.ttft_ms, "tpot_ms": e.tpot_ms,
                   "ttft_p99_ms": e.ttft_p99_ms, "tpot_p99_ms": e.tpot_p99_ms, "makespan_s": e.makespan_s,
                   "kv_capacity_tokens": e.kv_capacity_tokens}
    n = len(cand)
    out: dict[str, np.ndarray] = {}
    for t, v in phys_values.items():
        v = np.broadcast_to(np.asarray(v, dtype=float), (n,))
        p = agg[f"pred_{t}"].to_numpy(dtype=float)
        ph = agg[f"phys_{t}"].to_numpy(dtype=float) if f"phys_{t}" in agg.columns else p
        ratio = np.where(np.isfinite(p) & np.isfinite(ph) & (ph > 0), p / np.where(ph > 0, ph, 1.0), 1.0)
        lo = np.where(p > 0, agg[f"pred_{t}_lo"].to_numpy(dtype=float) / np.where(p > 0, p, 1.0), np.nan)
        hi = np.where(p > 0, agg[f"pred_{t}_hi"].to_numpy(dtype=float) / np.where(p > 0, p, 1.0), np.nan)
        out[f"pred_{t}"] = v * ratio
        out[f"pred_{t}_lo"] = v * ratio * lo
        out[f"pred_{t}_hi"] = v * ratio * hi
    b = lambda x: np.broadcast_to(np.asarray(x), (n,))  # noqa: E731
    out.update(regime=b(e.regime).astype(object), bottleneck=b(e.bottleneck).astype(object), steady_batch=b(e.batch),
               batch_limit_kv=b(e.batch_limit_kv), hbm_bw_util=b(e.hbm_bw_util),
               weight_gb_per_gpu=b(e.weight_bytes_per_gpu) / 1e9, phys_kv_capacity_tokens=b(e.kv_capacity_tokens))
    for k in TERMS:
        out[f"term_{k}_ms"] = b(e.terms[k]).astype(float)
    out["term_kv_transfer_ms"] = b(e.kv_transfer_ms).astype(float)
    out["term_prefill_ms"] = b(e.prefill_ms).astype(float)
    out["reason"] = np.where(cand["reason"].to_numpy() != "", cand["reason"].to_numpy(), b(e.infeasible_reason)).astype(object)
    out["prefill_rate_per_s"] = b(e.prefill_rate_per_s)
    out["decode_rate_per_s"] = b(e.decode_rate_per_s)
    out["transfer_rate_per_s"] = b(e.transfer_rate_per_s)
    return pd.DataFrame(out, index=cand.index)


def score_candidates(predictor: Predictor, ctx: SearchContext, cand: pd.DataFrame) -> pd.DataFrame:
    """Predictions for candidate rows of `predictor.space.candidate_space` (same index), any mix of modes."""
    parts = []
    for mode in ("aggregated", "mixed", "disaggregated"):
        sel = cand[cand["mode"] == mode]
        if sel.empty:
            continue
        if mode == "aggregated":
            parts.append(score_aggregated(predictor, ctx, sel))
        elif mode == "mixed":
            parts.append(score_mixed(predictor, ctx, sel))
        else:
            parts.append(score_disaggregated(predictor, ctx, sel, predictor.calibration))
    out = pd.concat(parts).reindex(cand.index)
    out["feasible"] = (out["reason"] == "") & np.isfinite(out["pred_output_throughput"].to_numpy(dtype=float))
    out["throughput_per_gpu"] = out["pred_output_throughput"] / cand["num_gpus"].to_numpy(dtype=float)
    out["pred_kv_capacity_tokens"] = out["pred_kv_capacity_tokens"].fillna(out["phys_kv_capacity_tokens"])
    return out
