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
from predictor.scoring import SearchContext, score_candidates
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
DRAWS = 3  # sampled closed batches the simulated contenders are averaged over (benchmarks/search_draws.py)
TIE_MARGIN = 0.05  # contenders: simulated within this fraction of the leader's objective on the first batch
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


def slo_values(df: pd.DataFrame, k: str) -> pd.Series:
    """The value an SLO on `k` is checked against: the prediction, or for a mix its worst member's (a mix meets
    a latency SLO only when every replica type does, whatever the average)."""
    v = df[SLO_COLUMNS[k]].astype(float)
    worst = f"worst_{k}"
    if worst in df.columns:
        v = np.fmax(v, df[worst].astype(float))
    return v


def _apply_slo(df: pd.DataFrame, slo: dict | None) -> pd.Series:
    ok = pd.Series(True, index=df.index)
    for k, limit in (slo or {}).items():
        ok &= slo_values(df, k).fillna(np.inf) <= limit
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
            self.violation[idx, j] = slo_values(s, k).to_numpy(dtype=float) / limit - 1.0
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

    def meets(self, rows: np.ndarray) -> np.ndarray:
        """Per row: feasible and within every SLO limit."""
        return self.feasible[rows] & ((self.violation[rows] <= 0).all(axis=1) if self.violation.shape[1] else True)

    def pick(self, rows: np.ndarray) -> int:
        """The row that stands for a layout: the best meeting the SLO, else the least violating, else the first."""
        feas = self.feasible[rows]
        meets = self.meets(rows)
        if meets.any():
            cand = rows[meets]
            return int(cand[np.argmin(np.where(np.isfinite(self.value[cand]), self.value[cand], np.inf))])
        if feas.any():
            viol = np.clip(self.violation[rows], 0.0, None).sum(axis=1) if self.violation.shape[1] else np.zeros(len(rows))
            viol = np.where(np.isfinite(viol), viol, 1e6)
            cand = rows[feas]
            return int(cand[np.argmin(viol[feas])])
        return int(rows[0])

    def values(self, i: int) -> list[float]:
        if self.secondary:
            t = self.tput_gpu[i]
            s = self.second[i]
            return [float(t) if np.isfinite(t) and self.feasible[i] else 0.0,
                    float(s) if np.isfinite(s) and self.feasible[i] else 1e12]
        v = self.value[i]
        return [float(v) if np.isfinite(v) and self.feasible[i] else 1e30]


KNOB_COORDS = ("c_mns", "c_mnbt", "c_kvd", "c_gmu")


class _Navigator:
    """Maps an Optuna trial's parameters to the nearest unit (candidate, or layout) of one mode's space.

    Every unit has the same coordinates: log2 TP, attention TP (1 under attention-DP), PP and EP of the main
    layout (the whole deployment, a mix's first replica type, or the decode pool), TP/PP of the second member or
    the prefill pool and its share of the GPUs, and the knob indices; as level indices, suggested as ordinal
    integers so TPE's kernels generalise between neighbouring degrees (one fixed parameter set: multivariate TPE
    samples them jointly). With `knobs=False` the units are layouts (their first row stands for them) and the knob coordinates
    are left out: the caller sweeps a layout's knobs in one vectorised lookup.
    """

    CATEGORICAL = ("c_kvd",)

    def __init__(self, space: pd.DataFrame, knobs: bool):
        units = space if knobs else space.drop_duplicates("layout_id")
        names = [c for c in COORDS if knobs or c not in KNOB_COORDS]
        mat = np.stack([np.unique(units[c].to_numpy(dtype=float), return_inverse=True)[1] for c in names],
                       axis=1).astype(np.int64)
        used = mat.max(axis=0) > 0
        self.names = [c for c, u in zip(names, used) if u]
        self.levels = mat[:, used].max(axis=0) + 1
        self.coords = mat[:, used]
        self.rows = units.index.to_numpy()
        self.size = len(units)
        self.exact: dict[tuple, int] = {}
        for r, key in zip(self.rows, map(tuple, self.coords)):
            self.exact.setdefault(key, int(r))

    def suggest(self, trial: optuna.trial.BaseTrial, seen: set[int]) -> int:
        """The unit at the trial's coordinates; when it was scored already (or does not exist), the nearest unit
        (L1 distance in levels) not scored yet, so every trial scores something new."""
        key = np.array([int(trial.suggest_categorical(c[2:], list(range(n)))) if c in self.CATEGORICAL
                        else int(trial.suggest_int(c[2:], 0, int(n) - 1)) for c, n in zip(self.names, self.levels)],
                       dtype=np.int64)
        hit = self.exact.get(tuple(key))
        if hit is not None and hit not in seen:
            return hit
        dist = np.abs(self.coords - key[None, :]).sum(axis=1).astype(float)
        if seen:
            dist[np.isin(self.rows, np.fromiter(seen, dtype=np.int64, count=len(seen)))] = np.inf
        j = int(np.argmin(dist))
        return int(self.rows[j])


def allocate_trials(units: dict[str, int], trials: int) -> dict[str, int]:
    """Split a trial budget equally over deployment modes, never more than a mode has units (layouts); what a
    small mode cannot use goes to the others, so the whole budget is used while units remain."""
    alloc = {m: 0 for m in units}
    left = min(trials, sum(units.values()))
    while left > 0:
        room = sorted((m for m in units if alloc[m] < units[m]), key=lambda m: units[m] - alloc[m])  # least first
        for j, m in enumerate(room):
            k = min(max(1, left // (len(room) - j)), units[m] - alloc[m], left)
            alloc[m] += k
            left -= k
    return alloc


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


_SCHEMA_RACE = ("already exists", "duplicate key", "uniqueviolation", "integrityerror")


def open_storage(url: str, attempts: int = 6):
    """An Optuna RDB storage (any SQLAlchemy URL), or one clear line saying why it cannot be opened.

    Workers started together on an empty database race to create Optuna's tables; the loser sees a duplicate-key or
    already-exists error and retries after a short random wait (the winner's tables are there by then)."""
    import random

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # a bad URL, a missing driver, an unreachable server, or the creation race
            text = f"{type(e).__name__} {e}".lower()
            if attempt + 1 < attempts and any(k in text for k in _SCHEMA_RACE):
                time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
                continue
            raise InputError(f"cannot open Optuna storage {url!r}: {str(e).splitlines()[0]}") from None


def _study(rdb, name: str, sampler, directions: list[str], fingerprint: str):
    """An in-memory study, or one shared through RDB storage (created by the first worker, loaded by the rest)."""
    if rdb is None:
        return optuna.create_study(directions=directions, sampler=sampler, study_name=name)
    study = optuna.create_study(storage=rdb, study_name=name, directions=directions, sampler=sampler,
                                load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise InputError(f"study {name!r} optimises {[d.name.lower() for d in study.directions]}, not {directions}")
    have = study.user_attrs.get("space_fingerprint")
    if have is None:
        study.set_user_attr("space_fingerprint", fingerprint)
    elif have != fingerprint:
        raise InputError(f"study {name!r} was created for a different search (model, GPUs, workload, objective, "
                         f"SLO or knobs); use another --study-name")
    return study


class _ModeStudy:
    """One deployment mode's Optuna study: asks trials, moves each to a unit not scored yet, tells its value."""

    def __init__(self, mode: str, nav: _Navigator, study, scores: _Scores, space: pd.DataFrame, groups, rep: dict,
                 batch: int, worker: str):
        self.mode, self.nav, self.study, self.scores, self.space = mode, nav, study, scores, space
        self.groups, self.rep, self.batch, self.worker = groups, rep, batch, worker
        self.multi = scores.secondary is not None
        self.asked = 0
        # units other workers (or earlier runs) of this study scored already: new trials go elsewhere
        self.seen = {u for u in map(self._unit, self._picked()) if u is not None} & set(nav.rows.tolist())

    def _unit(self, row: int) -> int | None:
        if self.groups is None:
            return int(row)
        return self.rep.get(int(self.space.at[row, "layout_id"]))

    def _picked(self) -> np.ndarray:
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        rows = np.array([t.user_attrs["candidate"] for t in done if "candidate" in t.user_attrs], dtype=int)
        return np.unique(rows[(rows >= 0) & (rows < len(self.space))])

    @property
    def left(self) -> int:
        return self.nav.size - len(self.seen)

    def run(self, n: int, progress=None) -> None:
        done = 0
        while done < n and self.left > 0:
            k = min(self.batch, n - done)
            asked = [self.study.ask() for _ in range(k)]
            units = []
            for t in asked:
                units.append(self.nav.suggest(t, self.seen))
                self.seen.add(units[-1])
            members = [self.groups[int(self.space.at[u, "layout_id"])] if self.groups is not None else np.array([u])
                       for u in units]
            self.scores.ensure(np.concatenate(members))
            for t, rows in zip(asked, members):
                i = self.scores.pick(rows)
                t.set_user_attr("candidate", int(i))
                t.set_user_attr("worker", self.worker)
                for key, c in zip(self.scores.constraint_names, self.scores.constraints(i)):
                    t.set_constraint(key, c)
                vals = self.scores.values(i)
                self.study.tell(t, vals if self.multi else vals[0])
            done += k
            self.asked += k
            if progress:
                progress.advance(k)

    def best(self) -> float:
        """The best (minimised) value among the candidates this study scored that are feasible and meet the SLO."""
        rows = self._picked()
        vals = self.scores.value[rows][self.scores.meets(rows)]
        return float(vals.min()) if len(vals) else np.inf

    def visited(self) -> np.ndarray:
        rows = self._picked()
        if self.groups is None or not len(rows):
            return rows
        return np.concatenate([self.groups[int(lid)] for lid in np.unique(self.space["layout_id"].to_numpy()[rows])])


def _run_optuna(scores: _Scores, space: pd.DataFrame, trials: int, seed: int, sampler_kind: str, storage,
                study_name: str | None, fingerprint: str, prescored: bool,
                show_progress: bool) -> tuple[np.ndarray, str, str]:
    """One Optuna study per deployment mode (aggregated, mixed, disaggregated). One objective: half the budget is
    split equally between the modes, the other half between the modes whose best so far is within 10% of the best
    of all (the rest of the space cannot win by much). Returns the rows visited (by every worker sharing the
    studies), the method label and the study name."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    multi = scores.secondary is not None
    # one objective: a trial is a layout and its knobs are swept in one vectorised lookup (the best that meets
    # the SLO stands for it); a Pareto search moves over layouts and knobs together (knobs trade latency)
    nested = not multi
    groups = space.groupby("layout_id", sort=False).indices if nested else None
    # structurally invalid layouts (heads, layers, experts, TP across nodes) cannot win: the samplers skip them and
    # the ranking lists each once with its reason
    valid = space["reason"].to_numpy() == ""
    invalid = space.index[~valid & ~space["layout_id"].duplicated().to_numpy()].to_numpy()
    modes = [m for m in MODES if ((space["mode"] == m).to_numpy() & valid).any()]
    rep = {int(lid): int(rows[0]) for lid, rows in groups.items()} if nested else {}  # layout -> its first row
    directions = ["maximize", "minimize"] if multi else ["minimize"]
    batch = 1 if prescored or storage else BATCH
    worker = f"{socket.gethostname()}:{os.getpid()}"
    name = study_name or f"layoutcast-{fingerprint}"
    progress = _progress(show_progress, trials)
    studies: dict[str, _ModeStudy] = {}
    kind = ""
    for k, m in enumerate(modes):
        nav = _Navigator(space[(space["mode"] == m).to_numpy() & valid], knobs=not nested)
        sampler = _sampler(sampler_kind, multi, seed + k, batch, max(trials // len(modes), 1))
        kind = type(sampler).__name__.replace("Sampler", "").lower()
        studies[m] = _ModeStudy(m, nav, _study(storage, f"{name}/{m}", sampler, directions, fingerprint), scores,
                                space, groups, rep, batch, worker)
    first = allocate_trials({m: s.left for m, s in studies.items()}, trials if multi else (trials + 1) // 2)
    for m, n in first.items():
        studies[m].run(n, progress)
    left = trials - sum(first.values())
    if left > 0:
        bests = {m: s.best() for m, s in studies.items()}
        top = min(bests.values())
        near = [m for m in modes if np.isfinite(bests[m]) and bests[m] <= top + 0.1 * abs(top)] or modes
        for group in (near, [m for m in modes if m not in near]):  # what the leaders cannot use goes to the rest
            extra = allocate_trials({m: studies[m].left for m in group}, left)
            for m, n in extra.items():
                studies[m].run(n, progress)
                left -= n
    if progress:
        progress.close()
    visited = np.unique(np.concatenate([s.visited() for s in studies.values()] + [invalid]))
    scores.ensure(visited)  # other workers' candidates
    unit = "layouts, knobs swept per layout" if nested else "candidates"
    split = ", ".join(f"{m} {s.asked}/{s.nav.size}" for m, s in studies.items())
    label = f"optuna-{kind} ({trials} trials over {unit}: {split}"
    if storage:
        total = sum(len(s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
                    for s in studies.values())
        label += f"; studies {name}/<mode>: {total} trials"
    return visited, label + ")", name


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

    def advance(self, k: int) -> None:
        self.p.update(self.task, advance=k)

    def close(self) -> None:
        self.p.stop()


def search(model: str, gpu: str, num_gpus: int, workload: str | Workload = "reasoning", objective: str = "throughput",
           slo: dict | None = None, trials: int = 400, exhaustive: bool = False, num_requests: int | None = None,
           concurrency: int = 0, isl: int | None = None, osl: int | None = None, knobs: dict | None = None,
           weight_dtype: str | None = None, refine_top: int = 8, seed: int = 0, predictor: Predictor | None = None,
           show_progress: bool = False, request_rate: float = 0.0, modes: tuple[str, ...] | list[str] = MODES,
           secondary: str | None = None, sampler: str = "auto", storage: str | None = None,
           study_name: str | None = None, draws: int = DRAWS, tie_margin: float = TIE_MARGIN) -> SearchResult:
    """Search layouts (aggregated, mixed, disaggregated) and knobs of `num_gpus` GPUs for the best `objective`
    under `slo`; with `secondary` ("tpot" or "ttft") a multi-objective search of throughput per GPU against it.
    Closed batches: the simulated candidates within `tie_margin` of the leader are re-simulated on `draws` sampled
    batches in all (the same batches for each) and ranked by the mean."""
    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
    if secondary is not None and secondary not in SECONDARY:
        raise InputError(f"unknown Pareto axis {secondary!r}; expected one of {sorted(SECONDARY)}")
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}")
    if trials < (0 if storage else 1):
        raise InputError("--trials must be at least 1")
    if draws < 1 or not 0 <= tie_margin < 1:
        raise InputError("--draws must be at least 1 and --tie-margin in [0, 1)")
    if (num_requests or 0) < 0 or (concurrency or 0) < 0 or (request_rate or 0) < 0:
        raise InputError("--requests, --concurrency and --rate must not be negative")
    slo = _check_slo(slo)
    rdb = open_storage(storage) if storage else None
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

    n_units = int(space["layout_id"].nunique()) if secondary is None else len(space)
    use_exhaustive = storage is None and (exhaustive or n_units <= trials)
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
        visited, method, study = _run_optuna(scores, space, trials, seed, sampler, rdb, study_name, fp, prescored,
                                             show_progress)
    t_search = time.perf_counter() - t0 - t_space

    seen = scores.table(np.unique(visited))
    seen["simulated"] = False
    seen["sim_draws"] = 0
    seen["preemptions"] = np.nan
    seen["meets_slo"] = _apply_slo(seen, slo) & seen["feasible"] & np.isfinite(seen[col])
    if wl.num_requests > 0 and refine_top > 0:
        seen = _refine(predictor, ctx, seen, col, sign, refine_top, seed, draws, tie_margin)
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
            seed: int, draws: int = 1, tie_margin: float = 0.0) -> pd.DataFrame:
    """Re-score the leading closed-batch candidates (by the screen) with the request-level simulation; those within
    `tie_margin` of the simulated leader get `draws` sampled batches in all and keep the mean of each target."""
    cand = seen[seen["feasible"] & np.isfinite(seen[col])]
    order = (sign * cand[col]).sort_values(kind="stable").index
    # small spaces: simulate every feasible candidate; large ones: the `top` best by the screen (distinct layouts)
    # of every deployment mode, so one mode's optimistic screen (a capacity-trapped mix, whose steady-state estimate
    # misses preemption recompute and the tail) cannot keep another mode's leaders from being simulated
    if len(order) > 3 * top:
        layouts = seen.loc[order, "layout"]
        distinct = layouts[~layouts.duplicated()].index
        modes = seen.loc[distinct, "mode"] if "mode" in seen.columns else pd.Series("aggregated", index=distinct)
        order = pd.Index([i for m in pd.unique(modes) for i in distinct[(modes == m).to_numpy()][:top]])
    runs: dict = {}
    for i in order:
        targets = _simulate_candidate(predictor, ctx, seen, i, seed)
        if targets is not None:
            runs[i] = [targets]
    # a closed batch's makespan hangs on where its few longest requests land, so one sampled batch can reorder
    # candidates a few percent apart: contenders get more batches (common to all of them) and are ranked by the mean
    if draws > 1 and runs:
        first = pd.Series({i: sign * r[0][col.removeprefix("pred_")]["value"] for i, r in runs.items()
                           if col.removeprefix("pred_") in r[0]}).dropna()
        if len(first) > 1:
            lead = first.min()
            close = first.index[(first - lead).abs() <= tie_margin * abs(lead)]
            if len(close) > 1:
                for i in close:
                    for k in range(1, draws):
                        more = _simulate_candidate(predictor, ctx, seen, i, seed + k)
                        if more is not None:
                            runs[i].append(more)
    for i, results in runs.items():
        for t, v in _mean_targets(results).items():
            if t.startswith("worst_") or t == "preemptions":
                seen.loc[i, t] = v["value"]
                continue
            for suffix, key in (("", "value"), ("_lo", "lo"), ("_hi", "hi")):
                c = f"pred_{t}{suffix}"
                if c in seen.columns or suffix == "":
                    seen.loc[i, c] = v[key]
        seen.loc[i, "simulated"] = True
        seen.loc[i, "sim_draws"] = len(results)
        seen.loc[i, "throughput_per_gpu"] = seen.loc[i, "pred_output_throughput"] / seen.loc[i, "num_gpus"]
    return seen


def _simulate_candidate(predictor: Predictor, ctx: SearchContext, seen: pd.DataFrame, i, seed: int) -> dict | None:
    """The simulated targets of candidate `i` on the batch sampled with `seed`; None (and the candidate marked
    infeasible) when the simulation refuses it, e.g. a request longer than a replica's whole cache."""
    from predictor.refine import refine

    try:
        return refine(predictor, ctx, seen.loc[i], seed)
    except InputError as e:
        seen.loc[i, "reason"] = f"simulation: {e}"
        seen.loc[i, "feasible"] = False
        return None


def _mean_targets(results: list[dict]) -> dict:
    """Per target, the mean value/lo/hi over simulated draws (targets missing from a draw are skipped there)."""
    out = {}
    for t in results[0]:
        vals = [r[t] for r in results if t in r]
        out[t] = {k: float(np.mean([v[k] for v in vals])) for k in ("value", "lo", "hi")}
    return out


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
            dist += np.maximum(slo_values(feas, k).fillna(np.inf) / limit - 1.0, 0.0)
        closest = feas.loc[dist.idxmin()]
        parts = [f"{k} {slo_values(feas.loc[[dist.idxmin()]], k).iloc[0]:.1f} (limit {v:g})" for k, v in slo.items()]
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
    front = df.iloc[keep].sort_values(second, kind="stable")
    return front.drop_duplicates(subset=[col, second])  # knob variants that predict the same point: the first
