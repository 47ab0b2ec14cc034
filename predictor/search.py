"""Layout search: aggregated layouts, replica mixes and disaggregated prefill/decode pools of N GPUs, with engine
knobs, scored by the predictor under latency SLOs.

The candidate space (`predictor.space`) is a table; candidates are scored in vectorised batches
(`predictor.scoring`). Optuna visits the space (TPE for one objective with SLOs as constraints, NSGA-II for
throughput per GPU against TPOT or TTFT), or every candidate is scored (`exhaustive`, and whenever the space is no
larger than the trial budget). Only the candidates a search visited are ranked and can win. With `storage` (any
SQLAlchemy URL: SQLite, PostgreSQL) several workers share one Optuna study and each reports over all trials so far.
For closed batches the leading candidates are re-scored with the request-level scheduler simulation
(`predictor.refine`). Infeasible candidates are kept in the ranking with their reason.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd

from features.catalog import resolve_gpu, resolve_model, resolve_workload
from features.errors import InputError
from features.specs import Workload
from predictor.api import Predictor
from predictor.scoring import TARGETS, SearchContext, score_candidates
from predictor.space import (COORDS, DEFAULT_KNOBS, KNOB_NAMES, MODES, WIDE_KNOBS, candidate_space,  # noqa: F401
                             space_fingerprint)

OBJECTIVES = {  # name -> (prediction column, direction)
    "throughput": ("pred_output_throughput", "maximize"),
    "makespan": ("pred_makespan_s", "minimize"),
    "tpot": ("pred_tpot_ms", "minimize"),
    "ttft": ("pred_ttft_ms", "minimize"),
}
SECONDARY = {"tpot": "pred_tpot_ms", "ttft": "pred_ttft_ms"}  # the latency axis of a multi-objective search
SLO_COLUMNS = {"ttft_ms": "pred_ttft_ms", "tpot_ms": "pred_tpot_ms", "ttft_p99_ms": "pred_ttft_p99_ms",
               "tpot_p99_ms": "pred_tpot_p99_ms"}
SAMPLERS = ("auto", "tpe", "nsga2", "random")
PRESCORE_ROWS = 60_000  # spaces up to this size are scored in one vectorised pass (cheaper than many small ones)
BATCH = 32  # trials asked at once when candidates are scored lazily

DISPLAY_COLUMNS = ["mode", "layout", "tp", "pp", "dp", "ep", "attention_dp", "b_tp", "b_pp", "b_dp", "b_ep",
                   "num_gpus", "max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype", "gpu_memory_utilization",
                   "pred_output_throughput", "pred_output_throughput_lo", "pred_output_throughput_hi",
                   "throughput_per_gpu", "pred_makespan_s", "pred_makespan_s_lo", "pred_makespan_s_hi",
                   "pred_tpot_ms", "pred_tpot_ms_lo", "pred_tpot_ms_hi", "pred_ttft_ms", "pred_ttft_ms_lo",
                   "pred_ttft_ms_hi", "pred_tpot_p99_ms", "pred_ttft_p99_ms", "pred_kv_capacity_tokens", "steady_batch",
                   "term_kv_transfer_ms", "preemptions", "regime", "bottleneck", "meets_slo", "feasible", "reason",
                   "simulated"]


@dataclass
class SearchResult:
    """Ranked candidates (feasible first, best first), the best one, and the Pareto front of objective vs latency."""

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
    secondary: str | None = None  # "tpot" or "ttft" for a multi-objective search
    study_name: str | None = None
    context: dict = field(default_factory=dict)

    @property
    def pareto_axis(self) -> str:
        return SECONDARY.get(self.secondary or "tpot", "pred_tpot_ms")

    def to_dict(self, top: int = 10, explain: bool = False) -> dict:
        cols = [c for c in DISPLAY_COLUMNS if c in self.ranked.columns]
        infeasible = self.ranked.loc[~self.ranked["feasible"], ["mode", "layout", "reason"]].drop_duplicates(["layout", "reason"])
        doc = {
            "objective": self.objective, "secondary": self.secondary, "slo": self.slo, "method": self.method,
            "trials": self.trials, "evaluated": self.evaluated, "space_size": self.space_size, "message": self.message,
            "study_name": self.study_name, "timings_s": self.timings_s, "context": self.context, "best": self.best,
            "ranked": _records(self.ranked[cols].head(top)),
            "infeasible": _records(infeasible.head(200)),
            "pareto": _records(self.pareto[[c for c in cols if c in self.pareto.columns]].head(200)),
        }
        if explain:
            doc["explain"] = self.explain()
        return doc

    def explain(self) -> dict:
        """Why the winner wins: capacity, bandwidth and communication terms side by side with the runner-up."""
        from predictor.explain import explain_result

        return explain_result(self)

    def plot(self, path: str) -> str:
        from predictor.plots import plot_search

        return plot_search(self, path)


def _records(df: pd.DataFrame) -> list[dict]:
    from predictor.api import _jsonable

    return [_jsonable({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}) for r in df.to_dict("records")]


def _apply_slo(df: pd.DataFrame, slo: dict | None) -> pd.Series:
    ok = pd.Series(True, index=df.index)
    for k, limit in (slo or {}).items():
        ok &= df[SLO_COLUMNS[k]].fillna(np.inf) <= limit
    return ok


def _check_slo(slo: dict | None) -> dict:
    out = {}
    for k, limit in (slo or {}).items():
        if k not in SLO_COLUMNS:
            raise InputError(f"unknown SLO {k!r}; expected one of {sorted(SLO_COLUMNS)}")
        if limit is None or not np.isfinite(limit) or limit <= 0:
            raise InputError(f"SLO {k} must be positive")
        out[k] = float(limit)
    return out


class _Scores:
    """Scores of the candidate space, filled lazily in vectorised batches; arrays for fast trial lookups."""

    def __init__(self, predictor: Predictor, ctx: SearchContext, space: pd.DataFrame, col: str, sign: float, slo: dict,
                 secondary: str | None):
        self.predictor, self.ctx, self.space = predictor, ctx, space
        self.col, self.sign, self.slo, self.secondary = col, sign, slo, secondary
        n = len(space)
        self.done = np.zeros(n, dtype=bool)
        self.value = np.full(n, np.nan)  # sign × objective (minimised)
        self.second = np.full(n, np.nan)  # the latency axis of a multi-objective search
        self.tput_gpu = np.full(n, np.nan)
        self.feasible = np.zeros(n, dtype=bool)
        self.violation = np.zeros((n, len(slo)))
        self.frames: list[pd.DataFrame] = []

    def ensure(self, idx) -> None:
        idx = np.unique(np.asarray(idx, dtype=int))
        idx = idx[~self.done[idx]]
        if not len(idx):
            return
        s = score_candidates(self.predictor, self.ctx, self.space.iloc[idx])
        self.frames.append(s)
        obj = s[self.col].to_numpy(dtype=float)
        self.value[idx] = self.sign * obj
        self.feasible[idx] = s["feasible"].to_numpy(dtype=bool) & np.isfinite(obj)
        self.tput_gpu[idx] = s["throughput_per_gpu"].to_numpy(dtype=float)
        if self.secondary:
            self.second[idx] = s[SECONDARY[self.secondary]].to_numpy(dtype=float)
        for j, (k, limit) in enumerate(self.slo.items()):
            self.violation[idx, j] = s[SLO_COLUMNS[k]].to_numpy(dtype=float) / limit - 1.0
        self.done[idx] = True

    def table(self, idx) -> pd.DataFrame:
        """Candidates `idx` (space rows) joined with their scores."""
        scores = pd.concat(self.frames) if len(self.frames) > 1 else self.frames[0]
        self.frames = [scores]
        rows = self.space.loc[idx].drop(columns=["reason"])
        return rows.join(scores.loc[idx])

    @property
    def constraint_names(self) -> list[str]:
        return ["feasible"] + [f"slo_{k}" for k in self.slo]

    def constraints(self, i: int) -> list[float]:
        """Optuna constraints (<= 0 is satisfied): feasibility, then each SLO as predicted / limit - 1."""
        feas = 0.0 if self.feasible[i] else 1.0
        v = self.violation[i]
        return [feas] + [float(x) if np.isfinite(x) else 1e6 for x in v]

    def values(self, i: int) -> list[float]:
        if self.secondary:
            t = self.tput_gpu[i]
            s = self.second[i]
            return [float(t) if np.isfinite(t) and self.feasible[i] else 0.0,
                    float(s) if np.isfinite(s) and self.feasible[i] else 1e12]
        v = self.value[i]
        return [float(v) if np.isfinite(v) and self.feasible[i] else 1e30]


class _Navigator:
    """Maps an Optuna trial's parameters to the nearest candidate of the space.

    Every candidate has the same coordinates (log2 TP/PP/EP and attention-DP of the main layout: the whole
    deployment, a mix's first replica type, or the decode pool; TP/PP of the second member or the prefill pool and
    its share of the GPUs; knob indices), as level indices within its mode. A trial suggests the mode and every
    coordinate (one fixed parameter set, so multivariate TPE samples them jointly in one step); coordinates a mode
    does not use are ignored.
    """

    ORDINAL = False

    def __init__(self, space: pd.DataFrame):
        self.modes = [m for m in MODES if (space["mode"] == m).any()]
        self.rows: dict[str, np.ndarray] = {}
        self.coords: dict[str, np.ndarray] = {}
        self.used: dict[str, np.ndarray] = {}
        self.exact: dict[tuple, int] = {}
        self.levels: dict[str, int] = {}
        for c in COORDS[1:]:
            self.levels[c] = int(max(len(np.unique(space.loc[space["mode"] == m, c])) for m in self.modes))
        for m in self.modes:
            sub = space[space["mode"] == m]
            mat = []
            for c in COORDS[1:]:
                _, codes = np.unique(sub[c].to_numpy(dtype=float), return_inverse=True)
                mat.append(codes)
            mat = np.stack(mat, axis=1).astype(np.int64)
            used = np.array([len(np.unique(mat[:, j])) > 1 for j in range(mat.shape[1])])
            self.rows[m], self.coords[m], self.used[m] = sub.index.to_numpy(), mat, used
            for r, key in zip(self.rows[m], map(tuple, mat[:, used])):
                self.exact.setdefault((m, key), int(r))

    def suggest(self, trial: optuna.trial.BaseTrial) -> int:
        mode = trial.suggest_categorical("mode", self.modes) if len(self.modes) > 1 else self.modes[0]
        key = []
        for c in COORDS[1:]:
            n = self.levels[c]
            if n <= 1:
                key.append(0)
            elif self.ORDINAL and c not in ("c_kvd", "c_adp"):
                key.append(int(trial.suggest_int(c[2:], 0, n - 1)))
            else:
                key.append(int(trial.suggest_categorical(c[2:], list(range(n)))))
        key = np.asarray(key)
        used = self.used[mode]
        hit = self.exact.get((mode, tuple(key[used])))
        if hit is not None:
            return hit
        # no candidate at exactly these coordinates (e.g. a level this mode lacks): the nearest one, in levels
        dist = np.abs(self.coords[mode][:, used] - key[used][None, :]).sum(axis=1)
        return int(self.rows[mode][int(np.argmin(dist))])


def _sampler(kind: str, multi: bool, seed: int, batch: int, trials: int):
    if kind == "auto":
        kind = "nsga2" if multi else "tpe"
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        pop = int(min(50, max(8, trials // 8)))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(20, max(5, trials // 10)), multivariate=True,
                                      constant_liar=batch > 1)


def _study(storage: str | None, study_name: str | None, sampler, directions: list[str], fingerprint: str):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None:
        return optuna.create_study(directions=directions, sampler=sampler, study_name=study_name)
    try:
        rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:  # a bad URL, a missing driver, an unreachable server
        raise InputError(f"cannot open Optuna storage {storage!r}: {str(e).splitlines()[0]}") from None
    name = study_name or f"layoutcast-{fingerprint}"
    study = optuna.create_study(storage=rdb, study_name=name, directions=directions, sampler=sampler,
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise InputError(f"study {name!r} optimises {[d.name.lower() for d in study.directions]}, not {directions}")
    have = study.user_attrs.get("space_fingerprint")
    if have is None:
        study.set_user_attr("space_fingerprint", fingerprint)
    elif have != fingerprint:
        raise InputError(f"study {name!r} in {storage} was created for a different search (model, GPUs, workload, "
                         f"objective, SLO or knobs); use another --study-name")
    return study


def _run_optuna(scores: _Scores, nav: _Navigator, trials: int, seed: int, sampler_kind: str, storage: str | None,
                study_name: str | None, fingerprint: str, prescored: bool, show_progress: bool) -> tuple[np.ndarray, str, str]:
    multi = scores.secondary is not None
    directions = ["maximize", "minimize"] if multi else ["minimize"]
    batch = 1 if prescored or storage else BATCH

    sampler = _sampler(sampler_kind, multi, seed, batch, trials)
    study = _study(storage, study_name, sampler, directions, fingerprint)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    progress = _progress(show_progress, trials)
    done = 0
    while done < trials:
        k = min(batch, trials - done)
        asked = [study.ask() for _ in range(k)]
        picks = [nav.suggest(t) for t in asked]
        scores.ensure(picks)
        for t, i in zip(asked, picks):
            t.set_user_attr("candidate", int(i))
            for key, c in zip(scores.constraint_names, scores.constraints(i)):
                t.set_constraint(key, c)
            t.set_user_attr("worker", worker)
            vals = scores.values(i)
            study.tell(t, vals if multi else vals[0])
        done += k
        if progress:
            progress.update(done)
    if progress:
        progress.close()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    visited = np.array([t.user_attrs["candidate"] for t in complete if "candidate" in t.user_attrs], dtype=int)
    visited = visited[(visited >= 0) & (visited < len(scores.space))]
    scores.ensure(visited)  # other workers' candidates
    name = type(sampler).__name__.replace("Sampler", "").lower()
    label = f"optuna-{name} ({trials} trials" + (f"; study {study.study_name}: {len(complete)} trials" if storage else "") + ")"
    return visited, label, study.study_name


class _progress:
    """A rich progress bar for long searches (only when asked for and on a terminal)."""

    def __new__(cls, show: bool, total: int):
        if not show or total < 50:
            return None
        return super().__new__(cls)

    def __init__(self, show: bool, total: int):
        from rich.progress import Progress

        self.p = Progress(transient=True)
        self.p.start()
        self.task = self.p.add_task("search trials", total=total)

    def update(self, done: int) -> None:
        self.p.update(self.task, completed=done)

    def close(self) -> None:
        self.p.stop()


def search(model: str, gpu: str, num_gpus: int, workload: str | Workload = "reasoning", objective: str = "throughput",
           slo: dict | None = None, trials: int = 200, exhaustive: bool = False, num_requests: int | None = None,
           concurrency: int = 0, isl: int | None = None, osl: int | None = None, knobs: dict | None = None,
           weight_dtype: str | None = None, refine_top: int = 8, seed: int = 0, predictor: Predictor | None = None,
           show_progress: bool = False, request_rate: float = 0.0, modes: tuple[str, ...] | list[str] = MODES,
           secondary: str | None = None, sampler: str = "auto", storage: str | None = None,
           study_name: str | None = None) -> SearchResult:
    """Search layouts (aggregated, mixed, disaggregated) and knobs of `num_gpus` GPUs for the best `objective`
    under `slo`; with `secondary` ("tpot" or "ttft") a multi-objective search of throughput per GPU against it."""
    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
    if secondary is not None and secondary not in SECONDARY:
        raise InputError(f"unknown Pareto axis {secondary!r}; expected one of {sorted(SECONDARY)}")
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}")
    if trials < (0 if storage else 1):
        raise InputError("--trials must be at least 1")
    if (num_requests or 0) < 0 or (concurrency or 0) < 0 or (request_rate or 0) < 0:
        raise InputError("--requests, --concurrency and --rate must not be negative")
    slo = _check_slo(slo)
    predictor = predictor or Predictor.load()
    m = resolve_model(model)
    g = resolve_gpu(gpu)
    wdt = weight_dtype or m.native_dtype
    if objective == "makespan" and not num_requests:
        num_requests = 2000
    wl = resolve_workload(workload, isl, osl).with_arrival(int(num_requests or 0), int(concurrency or 0),
                                                          float(request_rate or 0.0))
    ctx = SearchContext(model, g.name, wl, wdt)
    space = candidate_space(model, g.name, num_gpus, knobs, tuple(modes), wdt)
    col, direction = OBJECTIVES[objective]
    sign = -1.0 if direction == "maximize" else 1.0
    scores = _Scores(predictor, ctx, space, col, sign, slo, secondary)
    context = {"model": m.name, "gpu": g.name, "num_gpus": int(num_gpus), "workload": wl.name,
               "num_requests": wl.num_requests, "concurrency": wl.concurrency, "request_rate": wl.request_rate,
               "weight_dtype": wdt, "modes": list(modes)}
    t_space = time.perf_counter() - t0

    use_exhaustive = storage is None and (exhaustive or len(space) <= trials)
    study = None
    if use_exhaustive:
        scores.ensure(np.arange(len(space)))
        visited = np.arange(len(space))
        method = "exhaustive"
    else:
        prescored = len(space) <= PRESCORE_ROWS
        if prescored:
            scores.ensure(np.arange(len(space)))
        fp = space_fingerprint(space, {**context, "objective": objective, "secondary": secondary, "slo": slo})
        visited, method, study = _run_optuna(scores, _Navigator(space), trials, seed, sampler, storage, study_name, fp,
                                             prescored, show_progress)
    t_search = time.perf_counter() - t0 - t_space

    seen = scores.table(np.unique(visited))
    seen["simulated"] = False
    seen["preemptions"] = np.nan
    seen["meets_slo"] = _apply_slo(seen, slo) & seen["feasible"] & np.isfinite(seen[col])
    if wl.num_requests > 0 and refine_top > 0:
        seen = _refine(predictor, ctx, seen, col, sign, refine_top, seed)
        seen["meets_slo"] = _apply_slo(seen, slo) & seen["feasible"] & np.isfinite(seen[col])
    ranked = _rank(seen, col, sign)
    best, message = _best_and_message(ranked, slo, col)
    front_col, front_dir = (("throughput_per_gpu", "maximize") if secondary else (col, direction))
    axis = SECONDARY.get(secondary or "tpot")
    front_rows = ranked[ranked["feasible"] & ranked["meets_slo"] & np.isfinite(ranked[front_col])]
    if front_rows.empty:
        front_rows = ranked[ranked["feasible"] & np.isfinite(ranked[front_col])]
    pareto = pareto_front(front_rows, front_col, front_dir, axis)
    return SearchResult(best=best, ranked=ranked, pareto=pareto, objective=objective, slo=slo,
                        trials=len(space) if use_exhaustive else trials, evaluated=len(seen), space_size=len(space),
                        method=method, message=message, secondary=secondary, study_name=study, context=context,
                        timings_s={"space": t_space, "search": t_search, "total": time.perf_counter() - t0})


def _refine(predictor: Predictor, ctx: SearchContext, seen: pd.DataFrame, col: str, sign: float, top: int,
            seed: int) -> pd.DataFrame:
    """Re-score the leading closed-batch candidates (by the screen) with the request-level simulation."""
    from predictor.refine import refine

    cand = seen[seen["feasible"] & np.isfinite(seen[col])]
    order = (sign * cand[col]).sort_values(kind="stable").index
    # small spaces: simulate every feasible candidate; large ones: the `top` best by the screen (distinct layouts)
    if len(order) > 3 * top:
        layouts = seen.loc[order, "layout"]
        order = layouts[~layouts.duplicated()].index[:top]
    for i in order:
        r = seen.loc[i]
        try:
            targets = refine(predictor, ctx, r, seed)
        except InputError as e:  # e.g. a request longer than a replica's whole cache: it can never finish
            seen.loc[i, "reason"] = f"simulation: {e}"
            seen.loc[i, "feasible"] = False
            continue
        for t, v in targets.items():
            for suffix, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi")):
                c = f"pred_{t}{suffix}"
                if c in seen.columns or suffix == "":
                    seen.loc[i, c] = v[key]
        seen.loc[i, "simulated"] = True
        seen.loc[i, "throughput_per_gpu"] = seen.loc[i, "pred_output_throughput"] / seen.loc[i, "num_gpus"]
    return seen


def _rank(seen: pd.DataFrame, col: str, sign: float) -> pd.DataFrame:
    """Feasible before infeasible, SLO-meeting before not, simulated (closed batch, tail included) before screened
    only, then by the objective."""
    sim_last = ~seen["simulated"] if seen["simulated"].any() else pd.Series(False, index=seen.index)
    key = np.where(seen["meets_slo"], sign * seen[col].astype(float).fillna(np.inf), np.inf)
    ranked = seen.assign(_feas=~seen["feasible"], _slo=~seen["meets_slo"], _sim=sim_last, _key=key)
    ranked = ranked.sort_values(["_feas", "_slo", "_sim", "_key"], kind="stable")
    return ranked.drop(columns=["_feas", "_slo", "_sim", "_key"]).reset_index(drop=True)


def _best_and_message(ranked: pd.DataFrame, slo: dict, col: str) -> tuple[dict | None, str]:
    ok = ranked[ranked["meets_slo"]]
    if len(ok):
        return _records(ok.head(1)[[c for c in DISPLAY_COLUMNS if c in ok.columns]])[0], ""
    feas = ranked[ranked["feasible"] & np.isfinite(ranked[col])]
    if len(feas):
        dist = pd.Series(0.0, index=feas.index)
        for k, limit in slo.items():
            dist += np.maximum(feas[SLO_COLUMNS[k]].astype(float).fillna(np.inf) / limit - 1.0, 0.0)
        closest = feas.loc[dist.idxmin()]
        parts = [f"{k} {closest[SLO_COLUMNS[k]]:.1f} (limit {v:g})" for k, v in slo.items()]
        return None, (f"no configuration meets the SLO; closest: {closest['layout']} "
                      f"(max_num_seqs {int(closest['max_num_seqs'])}, kv {closest['kv_cache_dtype']}) with "
                      + ", ".join(parts))
    reasons = ranked["reason"].astype(str)
    return None, "no feasible layout: " + "; ".join(sorted(set(reasons[reasons != ""].head(5))))


def pareto_front(df: pd.DataFrame, col: str, direction: str, second: str = "pred_tpot_ms") -> pd.DataFrame:
    """Candidates not dominated in (objective, latency): no other is at least as good in both and better in one."""
    if df.empty:
        return df
    obj = df[col].to_numpy(dtype=float) * (-1.0 if direction == "maximize" else 1.0)
    lat = df[second].to_numpy(dtype=float)
    ok = np.isfinite(obj) & np.isfinite(lat)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((lat[idx], obj[idx]))]  # by objective, then latency
    keep = []
    best_lat = np.inf
    last = (np.nan, np.nan)
    for i in order:
        if lat[i] < best_lat or (obj[i], lat[i]) == last:
            keep.append(i)
            best_lat = min(best_lat, lat[i])
            last = (obj[i], lat[i])
    return df.iloc[keep].sort_values(second)
