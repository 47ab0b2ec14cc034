"""Layout search: every valid layout of N GPUs (and engine knobs), scored by the predictor, under SLOs.

Optuna's TPE explores the space by default (a trial = one configuration); `exhaustive=True` enumerates it. Every
candidate is scored in one vectorised `predict_frame`, so a trial is a table lookup; for closed batches the best
candidates are then re-scored with the request-level scheduler simulation (makespan, preemptions, tail).
Infeasible layouts are kept in the ranking with their reason.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
import pandas as pd

from features.catalog import resolve_gpu, resolve_model, resolve_workload
from features.errors import InputError
from features.layouts import enumerate_layouts, infeasible_reason, structural_reason
from features.specs import EngineConfig, Layout, Workload
from predictor.api import Predictor, scenario_row

OBJECTIVES = {  # name -> (prediction column, direction)
    "throughput": ("pred_output_throughput", "maximize"),
    "makespan": ("pred_makespan_s", "minimize"),
    "tpot": ("pred_tpot_ms", "minimize"),
}
SLO_COLUMNS = {"ttft_ms": "pred_ttft_ms", "tpot_ms": "pred_tpot_ms", "ttft_p99_ms": "pred_ttft_p99_ms",
               "tpot_p99_ms": "pred_tpot_p99_ms"}
DEFAULT_KNOBS = {"max_num_seqs": [256], "max_num_batched_tokens": [8192], "kv_cache_dtype": ["auto"]}
WIDE_KNOBS = {"max_num_seqs": [64, 128, 256, 512, 1024], "max_num_batched_tokens": [2048, 8192, 16384],
              "kv_cache_dtype": ["auto", "fp8"]}


@dataclass
class SearchResult:
    """Ranked candidates (feasible first, best first), the best one, and the Pareto front of objective vs TPOT."""

    best: dict | None
    ranked: pd.DataFrame
    pareto: pd.DataFrame
    objective: str
    slo: dict
    trials: int
    evaluated: int
    space_size: int
    method: str
    message: str = ""
    timings_s: dict = field(default_factory=dict)

    def to_dict(self, top: int = 10) -> dict:
        cols = [c for c in DISPLAY_COLUMNS if c in self.ranked.columns]
        return {
            "objective": self.objective, "slo": self.slo, "method": self.method, "trials": self.trials,
            "evaluated": self.evaluated, "space_size": self.space_size, "message": self.message, "best": self.best,
            "ranked": _records(self.ranked[cols].head(top)),
            "infeasible": _records(self.ranked.loc[~self.ranked["feasible"], ["layout", "reason"]].drop_duplicates()),
            "pareto": _records(self.pareto[[c for c in cols if c in self.pareto.columns]]),
        }

    def plot(self, path: str) -> str:
        from predictor.plots import plot_search

        return plot_search(self, path)


DISPLAY_COLUMNS = ["layout", "tp", "pp", "dp", "ep", "attention_dp", "max_num_seqs", "max_num_batched_tokens",
                   "kv_cache_dtype", "pred_output_throughput", "pred_output_throughput_lo", "pred_output_throughput_hi",
                   "throughput_per_gpu", "pred_makespan_s", "pred_makespan_s_lo", "pred_makespan_s_hi", "pred_tpot_ms",
                   "pred_ttft_ms", "pred_kv_capacity_tokens", "steady_batch", "preemptions", "regime", "bottleneck",
                   "meets_slo", "feasible", "reason", "simulated"]


def _records(df: pd.DataFrame) -> list[dict]:
    from predictor.api import _jsonable

    return [_jsonable({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}) for r in df.to_dict("records")]


def candidate_space(model_name: str, gpu_name: str, num_gpus: int, knobs: dict | None = None) -> pd.DataFrame:
    """All layout × knob combinations for exactly `num_gpus` GPUs, with structural reasons where invalid."""
    model = resolve_model(model_name)
    gpu = resolve_gpu(gpu_name)
    if num_gpus < 1:
        raise InputError("--gpus must be at least 1")
    knobs = knobs or DEFAULT_KNOBS
    rows = []
    for layout in enumerate_layouts(model, gpu, num_gpus):
        reason = structural_reason(model, layout, gpu)
        for mns, mnbt, kvd in itertools.product(knobs["max_num_seqs"], knobs["max_num_batched_tokens"], knobs["kv_cache_dtype"]):
            rows.append({"layout": layout.label(), "tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "ep": layout.ep,
                         "attention_dp": layout.attention_dp, "max_num_seqs": mns, "max_num_batched_tokens": mnbt,
                         "kv_cache_dtype": kvd, "reason": reason})
    return pd.DataFrame(rows)


def _score_space(predictor: Predictor, model_name, gpu_name, space: pd.DataFrame, wl: Workload, weight_dtype: str) -> pd.DataFrame:
    model = resolve_model(model_name)
    gpu = resolve_gpu(gpu_name)
    rows = []
    for r in space.itertuples(index=False):
        engine = EngineConfig(weight_dtype=weight_dtype, kv_cache_dtype=r.kv_cache_dtype, max_num_seqs=int(r.max_num_seqs),
                              max_num_batched_tokens=int(r.max_num_batched_tokens))
        layout = Layout(int(r.tp), int(r.pp), int(r.dp), int(r.ep), bool(r.attention_dp))
        row = scenario_row(model_name, gpu.name, layout, wl, engine)
        rows.append(row)
    pred = predictor.predict_frame(pd.DataFrame(rows))
    out = space.reset_index(drop=True).copy()
    for c in pred.columns:
        if c.startswith("pred_") or c in ("regime", "bottleneck"):
            out[c] = pred[c].to_numpy()
    out["steady_batch"] = pred["f_batch"].to_numpy()
    out["batch_limit_kv"] = pred["f_batch_limit_kv"].to_numpy()
    out["hbm_bw_util"] = pred["f_hbm_bw_util"].to_numpy()
    for k in ("weights", "kv_cache", "compute", "communication", "latency"):
        out[f"term_{k}_ms"] = pred[f"f_term_{k}_ms"].to_numpy()
    out["num_gpus"] = out["tp"] * out["pp"] * out["dp"]
    out["throughput_per_gpu"] = out["pred_output_throughput"] / out["num_gpus"]
    # memory feasibility (structural reasons were computed with the space)
    min_tokens = int(min(wl.isl.max_tokens, wl.isl.median * 4)) + 1
    reasons = out["reason"].tolist()
    for i, r in enumerate(out.itertuples(index=False)):
        if not reasons[i]:
            engine = EngineConfig(weight_dtype=weight_dtype, kv_cache_dtype=r.kv_cache_dtype, max_num_seqs=int(r.max_num_seqs),
                                  max_num_batched_tokens=int(r.max_num_batched_tokens))
            reasons[i] = infeasible_reason(model, gpu, Layout(int(r.tp), int(r.pp), int(r.dp), int(r.ep), bool(r.attention_dp)),
                                           engine, min_tokens)
    out["reason"] = reasons
    out["feasible"] = out["reason"] == ""
    out["simulated"] = False
    out["preemptions"] = np.nan
    return out


def _apply_slo(df: pd.DataFrame, slo: dict) -> pd.Series:
    ok = pd.Series(True, index=df.index)
    for k, limit in (slo or {}).items():
        if k not in SLO_COLUMNS:
            raise InputError(f"unknown SLO {k!r}; expected one of {sorted(SLO_COLUMNS)}")
        if limit is None:
            continue
        if limit <= 0:
            raise InputError(f"SLO {k} must be positive")
        ok &= df[SLO_COLUMNS[k]] <= limit
    return ok


def search(model: str, gpu: str, num_gpus: int, workload: str | Workload = "reasoning", objective: str = "throughput",
           slo: dict | None = None, trials: int = 200, exhaustive: bool = False, num_requests: int | None = None,
           concurrency: int = 0, isl: int | None = None, osl: int | None = None, knobs: dict | None = None,
           weight_dtype: str | None = None, refine_top: int = 8, seed: int = 0, predictor: Predictor | None = None,
           show_progress: bool = False) -> SearchResult:
    """Search layouts (and knobs) of `num_gpus` GPUs for the best `objective` under `slo`."""
    import time

    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
    if trials < 1:
        raise InputError("--trials must be at least 1")
    predictor = predictor or Predictor.load()
    m = resolve_model(model)
    g = resolve_gpu(gpu)
    wdt = weight_dtype or m.native_dtype
    if objective == "makespan" and not num_requests:
        num_requests = 2000
    wl = resolve_workload(workload, isl, osl).with_arrival(int(num_requests or 0), int(concurrency or 0))
    space = candidate_space(model, g.name, num_gpus, knobs)
    scored = _score_space(predictor, model, g.name, space, wl, wdt)
    t_score = time.perf_counter() - t0
    col, direction = OBJECTIVES[objective]
    sign = -1.0 if direction == "maximize" else 1.0
    valid = scored["feasible"] & np.isfinite(scored[col])
    scored["meets_slo"] = _apply_slo(scored, slo) & valid

    if exhaustive or len(scored) <= 1:
        visited = np.arange(len(scored))
        method = "exhaustive"
    else:
        visited = _optuna_visit(scored, col, sign, trials, seed)
        method = f"optuna-tpe ({trials} trials)"
    t_search = time.perf_counter() - t0 - t_score

    seen = scored.iloc[np.unique(visited)].copy()
    # re-score the leading closed-batch candidates with the request-level simulation
    if wl.num_requests > 0 and refine_top > 0:
        seen = _refine_with_simulation(predictor, seen, model, g.name, wl, wdt, col, sign, refine_top, seed)
        seen["meets_slo"] = _apply_slo(seen, slo) & seen["feasible"] & np.isfinite(seen[col])
    # simulated (closed-batch) candidates rank ahead of steady-state-only ones: their numbers include the tail
    sim_first = ~seen["simulated"] if seen["simulated"].any() else pd.Series(False, index=seen.index)
    ranked = seen.assign(_key=np.where(seen["meets_slo"], sign * seen[col].fillna(np.inf), np.inf),
                         _feas=~seen["feasible"], _sim=sim_first).sort_values(["_feas", "_sim", "_key"])
    ranked = ranked.drop(columns=["_key", "_feas", "_sim"])
    ranked = ranked.reset_index(drop=True)
    best = None
    message = ""
    ok = ranked[ranked["meets_slo"]]
    if len(ok):
        best = _records(ok.head(1)[[c for c in DISPLAY_COLUMNS if c in ok.columns]])[0]
    elif ranked["feasible"].any():
        feas = ranked[ranked["feasible"]].copy()
        dist = pd.Series(0.0, index=feas.index)
        for k, limit in (slo or {}).items():
            dist += np.maximum(feas[SLO_COLUMNS[k]] / limit - 1.0, 0.0)
        closest = feas.loc[dist.idxmin()]
        parts = [f"{k} {closest[SLO_COLUMNS[k]]:.1f} (limit {v:g})" for k, v in (slo or {}).items()]
        message = (f"no configuration meets the SLO; closest: {closest['layout']} with " + ", ".join(parts))
    else:
        message = "no feasible layout: " + "; ".join(sorted(set(ranked["reason"].head(5))))
    pareto = pareto_front(ranked[ranked["feasible"] & np.isfinite(ranked[col])], col, direction)
    return SearchResult(best=best, ranked=ranked, pareto=pareto, objective=objective, slo=dict(slo or {}),
                        trials=trials if not exhaustive else len(scored), evaluated=len(seen), space_size=len(scored),
                        method=method, message=message,
                        timings_s={"score": t_score, "search": t_search, "total": time.perf_counter() - t0})


def _optuna_visit(scored: pd.DataFrame, col: str, sign: float, trials: int, seed: int) -> np.ndarray:
    """TPE over the layout and knob dimensions; infeasible or SLO-violating trials score as +inf (minimised)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dims = ["layout", "max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype"]
    choices = {d: sorted(scored[d].astype(str).unique().tolist()) for d in dims}
    index = {tuple(str(v) for v in r): i for i, r in enumerate(scored[dims].itertuples(index=False))}
    value = np.where(scored["meets_slo"], sign * scored[col].to_numpy(dtype=float), np.inf)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, trials // 4)), multivariate=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    visited = []
    for _ in range(trials):
        trial = study.ask()
        key = tuple(trial.suggest_categorical(d, choices[d]) for d in dims)
        i = index.get(key)
        if i is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        visited.append(i)
        v = value[i]
        study.tell(trial, float(v) if np.isfinite(v) else 1e30)
    return np.array(visited, dtype=int)


def _refine_with_simulation(predictor: Predictor, seen: pd.DataFrame, model: str, gpu: str, wl: Workload, wdt: str,
                            col: str, sign: float, top: int, seed: int) -> pd.DataFrame:
    seen = seen.copy()
    cand = seen[seen["feasible"] & np.isfinite(seen[col])]
    # small spaces: simulate every feasible candidate; large ones: the `top` best by the steady-state screen
    order = (sign * cand[col]).sort_values().index
    order = order if len(order) <= 3 * top else order[:top]
    for i in order:
        r = seen.loc[i]
        p = predictor.predict(model, gpu, int(r.tp), int(r.pp), int(r.dp), int(r.ep), bool(r.attention_dp), wl,
                              wl.num_requests, wl.concurrency, wl.request_rate,
                              engine=EngineConfig(weight_dtype=wdt, kv_cache_dtype=r.kv_cache_dtype,
                                                  max_num_seqs=int(r.max_num_seqs),
                                                  max_num_batched_tokens=int(r.max_num_batched_tokens)),
                              simulate=True, seed=seed)
        for t, v in p.targets.items():
            for suffix, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi")):
                c = f"pred_{t}{suffix}"
                if c in seen.columns or suffix == "":
                    seen.loc[i, c] = v[key]
        seen.loc[i, "preemptions"] = p.preemptions
        seen.loc[i, "simulated"] = True
        seen.loc[i, "throughput_per_gpu"] = seen.loc[i, "pred_output_throughput"] / seen.loc[i, "num_gpus"]
    return seen


def pareto_front(df: pd.DataFrame, col: str, direction: str) -> pd.DataFrame:
    """Candidates not dominated in (objective, TPOT): no other is at least as good in both and better in one."""
    if df.empty:
        return df
    obj = df[col].to_numpy(dtype=float) * (-1.0 if direction == "maximize" else 1.0)
    tpot = df["pred_tpot_ms"].to_numpy(dtype=float)
    keep = np.ones(len(df), dtype=bool)
    for i in range(len(df)):
        dominated = (obj <= obj[i]) & (tpot <= tpot[i]) & ((obj < obj[i]) | (tpot < tpot[i]))
        keep[i] = not dominated.any()
    return df[keep].sort_values("pred_tpot_ms")
