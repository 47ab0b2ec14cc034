"""What a campaign learns between batches and how it picks the next one: the surrogate, acquisition scores, batches.

The surrogate is the project's learned model (`train.residual.ResidualModel`: physics answer x a learned, calibrated
correction; in a campaign each correction blends a Gaussian process with boosted trees and trees over a ridge trend,
which carry smooth trends between the few measured rows, `CampaignResidualModel`) fitted on what the campaign has
measured, plus a small bootstrap ensemble of the trees whose disagreement makes the calibrated interval vary from row
to row, and a feasibility model (`FeasibilityModel`:
a memory model as the prior -- `MemoryFitModel`, a Bayesian logistic regression of "did not run out of memory" on the
physics' memory demand, `memory_demand`, with learned offsets per model, GPU and layout, so one OOM teaches the
threshold of every workload of its group -- times the measured rate of other failures, blended with a classifier
fitted on the statuses measured so far) whose P(run succeeds) multiplies every acquisition value; `recommend` never
sends a user to an unmeasured configuration it expects to fail. Acquisitions: `uncertainty` scores the width of each
candidate's calibrated log-interval (each target's relative to its median, averaged over the campaign's targets)
times its chance of running, per unit of budget when the budget is GPU-hours (the campaign applies it to a random
subsample of the untried candidates, so batches stay representative); `search` scores the chance that measuring a
candidate solves its scenario (it runs and lands within 3% of the scenario's best where the best measured so far
does not), sampled from the predictive distribution on the log scale so scenarios of any size compare; it mixes
the learned model's ranking of a scenario's configurations with the physics model's, weighted by how often each
ranked held-out scenarios right in the campaign's own measurements (`physics_ranking_weight`). An alternative
uncertainty acquisition, `variance_reduction_batch`, picks the batch that most reduces the predictive variance summed
over the untried pool (kernel in the encoded space); on the DLI and aiconfigurator pools it did no better than the
widest-interval rule (a tuning seed, not the benchmark's), so it is opt-in (`CampaignSettings.acquisition`).
`select_batch` takes the best-scored candidates but keeps a batch diverse: a candidate close (in the encoded
configuration space) to one already in the batch is discounted, and with scenario groups each scenario gives at most
one configuration per batch while others remain. (`search` passes no encoding, so no distance discount: each
scenario is its own search.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm

from features.errors import InputError
from train.frames import FeatureSpace, float_column, physics_answer, target_rows
from train.learners import AveragedLearner, GaussianProcessLearner, RidgeBoostLearner, XGBLearner
from train.residual import MAX_LOG_CORRECTION, ResidualModel, nan_safe_log
from train.targets import ALL_TARGETS, KIND_OF_TARGET, pred_cols

Z80 = float(norm.ppf(0.9))  # half-width of a central 80% normal interval, in standard deviations
PRIOR_LOG_SIGMA = math.log(2.0) / Z80  # no measurement yet: "within a factor of two" at 80%
SCENARIO_ERROR_CORRELATION = 0.7  # search: how alike the model's errors are across the layouts of one scenario


@dataclass(frozen=True)
class Objective:
    """What `search` optimises: a target, its direction, and whether it is normalised per GPU."""

    name: str
    target: str
    higher_is_better: bool
    per_gpu: bool

    def utility(self, values: np.ndarray, num_gpus: np.ndarray) -> np.ndarray:
        """log utility, higher is better: log(throughput / GPUs) or -log(latency x GPUs) (-log latency unnormalised)."""
        return self.log_utility(nan_safe_log(values), num_gpus)

    def log_utility(self, log_values: np.ndarray, num_gpus: np.ndarray) -> np.ndarray:
        sign = 1.0 if self.higher_is_better else -1.0
        n = np.log(np.maximum(np.nan_to_num(np.asarray(num_gpus, dtype=float), nan=1.0), 1.0))
        return sign * np.asarray(log_values, dtype=float) - (n if self.per_gpu else 0.0)


OBJECTIVES: dict[str, Objective] = {
    "throughput": Objective("throughput", "output_throughput", True, True),  # output tok/s per GPU
    "makespan": Objective("makespan", "makespan_s", False, True),  # GPU-seconds to finish the closed batch
    "tpot": Objective("tpot", "tpot_ms", False, False),
    "ttft": Objective("ttft", "ttft_ms", False, False),
    "layer": Objective("layer", "layer_ms", False, True),  # GPU-milliseconds per decoder-layer step
}


def resolve_objective(name: str | None, kind: str) -> Objective:
    """The named objective (default: throughput for serving campaigns, layer time for step campaigns)."""
    name = name or ("throughput" if kind == "serving" else "layer")
    if name not in OBJECTIVES:
        raise InputError(f"unknown objective {name!r} (choose from {', '.join(OBJECTIVES)})")
    obj = OBJECTIVES[name]
    if KIND_OF_TARGET[obj.target] != kind:
        raise InputError(f"objective {name!r} ({obj.target}) does not apply to {kind} campaigns")
    return obj


# --- the surrogate -------------------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """Per candidate and target: log point prediction, log interval offsets, ensemble log spread; chance of running."""

    log_point: dict[str, np.ndarray] = field(default_factory=dict)
    log_lo: dict[str, np.ndarray] = field(default_factory=dict)  # offsets (<= 0) to the 80% interval's low end
    log_hi: dict[str, np.ndarray] = field(default_factory=dict)
    log_spread: dict[str, np.ndarray] = field(default_factory=dict)
    p_ok: np.ndarray | None = None

    def log_sigma(self, target: str) -> np.ndarray:
        """A per-row standard deviation (log scale): the calibrated width, modulated by the ensemble's disagreement."""
        width = self.log_hi[target] - self.log_lo[target]
        sigma = np.where(np.isfinite(width), width / (2.0 * Z80), np.nan)
        spread = self.log_spread.get(target)
        if spread is not None and np.isfinite(spread).any() and np.nanmedian(spread) > 0:
            rel = spread / np.nanmedian(spread)
            sigma = sigma * (0.5 + 0.5 * np.where(np.isfinite(rel), rel, 1.0))
        return sigma


RIDGE_ALPHA = 3.0  # penalty of the linear part (standardised features) of the campaign's blended learner
GP_WEIGHT = 0.5  # share of the Gaussian process in the campaign's blended correction (the trees share the rest)


class CampaignResidualModel(ResidualModel):
    """The residual model as a campaign fits it: each correction blends a Gaussian process (`gp_weight`) with the
    mean of boosted trees and of boosted trees over a ridge trend (`RidgeBoostLearner`); `ridge_alpha` 0 leaves the
    trees alone, `gp_weight` 0 the trees alone.

    With tens to hundreds of rows, trees cut smooth trends (an error that grows with the load, one offset per model)
    into a few steps; the linear member carries them between the measured rows, and averaging it with the plain trees
    keeps the pools whose corrections are not linear from paying for it. A kernel carries a smooth correction
    between the rows better still, and the trees keep the sharp steps it would blur. Median error on the rest of a
    pool, trees' blend -> with the process (benchmarks/campaign.py, 5 seeds, median; 5% / 10% of the pool measured):
    DLI sweep `random` 7.3% / 5.4% -> 6.9% / 5.7%, `uncertainty` 5.9% / 5.0% -> 6.3% / 4.3%; aiconfigurator vLLM rows
    `random` 10.5% / 8.8% -> 9.5% / 8.1%, `uncertainty` 9.9% / 8.3% -> 9.0% / 7.7%. Cross-validation folds keep the
    kernel the full fit tuned (`fold_learner`): tuning it per fold would triple the fit time. `search` campaigns leave
    the process out (`campaign.STRATEGY_MODEL_PARAMS`)."""

    defaults = {**ResidualModel.defaults, "ridge_alpha": RIDGE_ALPHA, "gp_weight": GP_WEIGHT}

    def make_learner(self, n_features: int, seed: int, gp: GaussianProcessLearner | None = None):
        h = dict(self.hyper)
        alpha = float(h.pop("ridge_alpha"))
        gp_weight = float(h.pop("gp_weight"))
        monotone = (0,) * (n_features - 1) + (int(h.pop("monotone_phys")),)
        trees = XGBLearner(monotone=monotone, seed=seed, **h)
        if alpha > 0:
            trees = AveragedLearner((trees, RidgeBoostLearner(alpha, XGBLearner(monotone=monotone, seed=seed + 1, **h))))
        if gp_weight <= 0:
            return trees
        return AveragedLearner((trees, gp or GaussianProcessLearner(seed=seed)), (1.0 - gp_weight, gp_weight))

    def fold_learner(self, fitted, n_features: int, seed: int):
        gp = fitted.members[-1] if isinstance(fitted, AveragedLearner) else None
        if isinstance(gp, GaussianProcessLearner):
            return self.make_learner(n_features, seed, gp.frozen(seed))
        return self.make_learner(n_features, seed)


class Surrogate:
    """ResidualModel + bootstrap ensemble + feasibility classifier, refitted on a campaign's measured rows."""

    def __init__(self, targets: tuple[str, ...], seed: int = 0, members: int = 3, model_params: dict | None = None):
        unknown = [t for t in targets if t not in ALL_TARGETS]
        if unknown:
            raise InputError(f"unknown target(s) {unknown} (choose from {', '.join(ALL_TARGETS)})")
        self.targets, self.seed, self.members = tuple(targets), int(seed), int(members)
        self.model_params = dict(model_params or {})
        self.model: ResidualModel | None = None
        self.ensemble: dict[str, list[XGBLearner]] = {}
        self.feasibility: FeasibilityModel | None = None

    def training_frame(self, measured: pd.DataFrame) -> pd.DataFrame:
        """The measured physics frame with every target outside the campaign's emptied (fewer models to fit)."""
        frame = measured.copy()
        for t in ALL_TARGETS:
            if t not in self.targets and t in frame.columns:
                frame[t] = np.nan
        return frame

    def fit(self, measured: pd.DataFrame, encoded: np.ndarray | None = None) -> "Surrogate":
        """Fit on the physics frame of measured rows (`encoded`: their configurations in `sampler.encode` space)."""
        frame = self.training_frame(measured)
        self.model = CampaignResidualModel(seed=self.seed, **self.model_params).fit(frame)
        self.ensemble = {}
        rng = np.random.default_rng(self.seed)
        for t in self.targets:
            kind, learner = KIND_OF_TARGET[t], self.model.learners_.get(t)
            space = self.model.spaces_.get(kind)
            if learner is None or space is None or self.members < 2:
                continue
            X, y = residual_xy(space, frame, t)
            if len(y) < 8:
                continue
            members = []
            for k in range(self.members):
                idx = rng.integers(0, len(y), len(y))
                members.append(XGBLearner(**_learner_params(self.model, X.shape[1]), seed=self.seed + 101 + k)
                               .fit(X[idx], y[idx]))
            self.ensemble[t] = members
        self.feasibility = _fit_feasibility(measured, encoded, self.seed)
        return self

    def predict(self, candidates: pd.DataFrame, encoded: np.ndarray | None = None) -> Prediction:
        """Predictions for a physics frame of candidates (`encoded`: their configurations, for feasibility)."""
        if self.model is None:
            raise RuntimeError("Surrogate.predict before fit")
        arrays = self.model.predict_arrays(candidates)
        out = Prediction()
        for t in self.targets:
            p, lo, hi = pred_cols(t)
            if p not in arrays:
                continue
            point = nan_safe_log(arrays[p])
            out.log_point[t] = point
            out.log_lo[t] = nan_safe_log(arrays[lo]) - point
            out.log_hi[t] = nan_safe_log(arrays[hi]) - point
            members = self.ensemble.get(t)
            if members:
                space = self.model.spaces_[KIND_OF_TARGET[t]]
                X = space.matrix(candidates)
                X[:, -1] = nan_safe_log(physics_answer(candidates, t))
                preds = np.vstack([np.clip(m.predict(X), -MAX_LOG_CORRECTION, MAX_LOG_CORRECTION) for m in members])
                out.log_spread[t] = preds.std(axis=0)
        out.p_ok = self.feasibility.p_ok(candidates, encoded) if self.feasibility is not None \
            else np.ones(len(candidates))
        return out


def residual_xy(space: FeatureSpace, frame: pd.DataFrame, target: str) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix and log(measured / physics) of the rows usable for `target` (as ResidualModel builds them)."""
    sub = frame[target_rows(frame, target)]
    X = space.matrix(sub)
    log_phys = nan_safe_log(physics_answer(sub, target))
    X[:, -1] = log_phys
    return X, nan_safe_log(float_column(sub, target)) - log_phys


def _learner_params(model: ResidualModel, n_features: int) -> dict:
    """The residual model's own learner settings (monotone in the physics answer, the last column)."""
    h = {k: v for k, v in model.hyper.items() if k not in ("ridge_alpha", "gp_weight")}  # (the trees' settings only)
    mono = int(h.pop("monotone_phys"))
    return {**h, "monotone": (0,) * (n_features - 1) + (mono,)}


def _concurrent_sequences(frame: pd.DataFrame) -> np.ndarray:
    """Sequences a run holds at once: the request count, concurrency or max_num_seqs, at most max_num_seqs (NaN when
    none is known)."""
    seqs = np.fmax(np.fmax(float_column(frame, "num_requests"), float_column(frame, "concurrency")),
                   float_column(frame, "max_num_seqs"))
    cap_seqs = float_column(frame, "max_num_seqs")
    return np.where(np.isfinite(cap_seqs), np.fmin(seqs, np.maximum(cap_seqs, 1.0)), seqs)  # runs at most these


def _kv_need_ratio(frame: pd.DataFrame) -> np.ndarray:
    """log(KV tokens the concurrent sequences need at full length / KV capacity the physics computes, all replicas)."""
    per_seq = np.nan_to_num(float_column(frame, "isl"), nan=0.0) + np.nan_to_num(float_column(frame, "osl"), nan=0.0)
    cap = float_column(frame, "f_kv_capacity_tokens") * np.maximum(float_column(frame, "dp", 1.0), 1.0)
    return np.log(np.maximum(np.nan_to_num(_concurrent_sequences(frame), nan=1.0), 1.0) * np.maximum(per_seq, 1.0)
                  / np.maximum(np.nan_to_num(cap, nan=1.0), 1.0))


PRIOR_OK_FEASIBLE = 0.95  # physics prior: a run the memory model says fits succeeds this often (before any failure)
PRIOR_OK_INFEASIBLE = 0.15  # ... and one it says does not fit
MEMORY_COLUMNS = ("f_weight_bytes_per_gpu", "f_gpu_mem_gb", "f_kv_bytes_per_token")


def memory_demand(frame: pd.DataFrame) -> np.ndarray | None:
    """log(worst-case memory a run asks of one GPU / the GPU's memory), from the physics' memory terms: the weights
    per GPU plus the KV cache of the concurrent sequences at full length (ISL + OSL tokens each, split over the data
    replicas) at the KV bytes per token one GPU holds (KV heads split over TP, replicated when fewer than TP; MLA's
    latent cache replicated; layers split over PP). A paged KV cache rarely holds every sequence at full length, so
    this bounds the demand from above; the feasibility model learns where, above zero, runs start to fail. None when
    the frame lacks the memory terms (e.g. step rows or a bare frame)."""
    if not len(frame) or any(c not in frame.columns for c in MEMORY_COLUMNS):
        return None
    if "kind" in frame.columns and frame["kind"].astype("string").fillna("").ne("serving").all():
        return None  # step / op rows hold no sequences
    weights = float_column(frame, "f_weight_bytes_per_gpu")
    mem = float_column(frame, "f_gpu_mem_gb") * 1e9
    tp = np.maximum(float_column(frame, "tp", 1.0), 1.0)
    kv_heads = np.maximum(float_column(frame, "f_kv_heads", 1.0), 1.0)
    mla = float_column(frame, "f_mla", 0.0) > 0
    shards = np.where(mla, 1.0, np.minimum(tp, kv_heads)) * np.maximum(float_column(frame, "pp", 1.0), 1.0)
    kv_per_gpu = np.nan_to_num(float_column(frame, "f_kv_bytes_per_token"), nan=0.0) / shards
    per_seq = np.nan_to_num(float_column(frame, "isl"), nan=0.0) + np.nan_to_num(float_column(frame, "osl"), nan=0.0)
    seqs = np.nan_to_num(_concurrent_sequences(frame), nan=0.0) / np.maximum(float_column(frame, "dp", 1.0), 1.0)
    demand = np.nan_to_num(weights, nan=0.0) + seqs * per_seq * kv_per_gpu
    out = np.log(np.maximum(demand, 1.0) / np.where(mem > 0, mem, np.nan))
    return np.where(np.isfinite(out), out, 0.0)


def _feasibility_features(frame: pd.DataFrame, encoded: np.ndarray) -> np.ndarray:
    """Encoded configuration plus the physics' memory terms, and the ratio that decides most OOMs: the KV cache the
    requested sequences need over the KV capacity the physics computes (and the memory demand, where known)."""
    extra = [np.log1p(np.maximum(float_column(frame, c, 0.0), 0.0))
             for c in ("f_kv_capacity_tokens", "f_batch_limit_kv", "f_weight_bytes_per_gpu") if c in frame.columns]
    extra += [float_column(frame, "f_feasible", 1.0)] if "f_feasible" in frame.columns else []
    if "f_kv_capacity_tokens" in frame.columns:
        extra.append(_kv_need_ratio(frame))
    demand = memory_demand(frame)
    if demand is not None:
        extra.append(demand)
    return np.column_stack([encoded] + extra) if extra else encoded


# the memory model: P(no out-of-memory failure) = sigmoid(b0 + b1 x demand + b2 x clipped KV-need ratio + b3 x physics
# verdict + group offsets); MAP with Gaussian priors. The prior means are the physics' own belief: the memory verdict
# (weights and reserves fit: P = PRIOR_OK_FEASIBLE, else PRIOR_OK_INFEASIBLE), with no slope in the KV demand --
# whether a demand over the KV capacity fails (a statically sized cache) or only queues (vLLM's paged cache
# preempts) depends on the engine, so measured failures teach the slopes (prior sd 4 and 1: a few failures suffice).
MEMORY_PRIOR_MEAN = (math.log(PRIOR_OK_INFEASIBLE / (1.0 - PRIOR_OK_INFEASIBLE)), 0.0, 0.0,
                     math.log(PRIOR_OK_FEASIBLE / (1.0 - PRIOR_OK_FEASIBLE))
                     - math.log(PRIOR_OK_INFEASIBLE / (1.0 - PRIOR_OK_INFEASIBLE)))
MEMORY_PRIOR_SD = (2.0, 4.0, 1.0, 2.0)
MEMORY_GROUP_SD = 1.0  # prior sd of each group's offset (log-odds): how far one model / GPU / layout may differ
# groups whose fitting thresholds differ (nested: a layout of a model on a GPU in a dtype shares its parents' offsets)
MEMORY_GROUPS = (("model",), ("gpu",), ("engine", "model", "gpu", "weight_dtype", "kv_dtype"),
                 ("engine", "model", "gpu", "weight_dtype", "kv_dtype", "tp", "pp", "dp", "ep", "attention_dp"))
MEMORY_FAILURES = ("oom", "infeasible")  # statuses the memory model learns; others ("error") are a plain rate
MEMORY_HALF_WEIGHT = 20.0  # with the memory model as prior the classifier gets half the weight after 20 rare outcomes


def _group_keys(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    cols = [c for c in columns if c in frame.columns]
    if not cols:
        return np.full(len(frame), "", dtype=object)
    parts = [frame[c].astype(object).where(frame[c].notna(), "").astype(str).to_numpy(dtype=object) for c in cols]
    out = parts[0]
    for p in parts[1:]:
        out = out + "|" + p
    return out


class MemoryFitModel:
    """P(a run does not fail for memory) from the physics' memory demand, with learned offsets per model, GPU and
    layout group: a Bayesian logistic regression (MAP, Gaussian priors centred on the physics) fitted on the statuses
    a campaign measured. A failure at one workload teaches the threshold of its whole group (every ISL/OSL/batch of
    that model, GPU and layout), and a run that fit raises it."""

    def __init__(self):
        self.coef = np.asarray(MEMORY_PRIOR_MEAN, dtype=float)
        self.offsets: list[dict] = [{} for _ in MEMORY_GROUPS]

    @staticmethod
    def design(frame: pd.DataFrame) -> np.ndarray | None:
        demand = memory_demand(frame)
        if demand is None:
            return None
        ratio = np.clip(_kv_need_ratio(frame), -6.0, 6.0) if "f_kv_capacity_tokens" in frame.columns \
            else np.zeros(len(frame))
        fits = FeasibilityModel.physics_fits(frame).astype(float)
        return np.column_stack([np.ones(len(frame)), demand, ratio, fits])

    def fit(self, frame: pd.DataFrame, fitted: np.ndarray) -> "MemoryFitModel":
        """`fitted`: per row, True where the run did not fail for memory."""
        from scipy.optimize import minimize

        X = self.design(frame)
        if X is None or not len(frame):
            return self
        y = np.asarray(fitted, dtype=float)
        codes, uniques = [], []
        for cols in MEMORY_GROUPS:
            c, u = pd.factorize(pd.Series(_group_keys(frame, cols), dtype=object))
            codes.append(c)
            uniques.append(list(u))
        nc, sizes = X.shape[1], [len(u) for u in uniques]
        mean = np.r_[np.asarray(MEMORY_PRIOR_MEAN), np.zeros(sum(sizes))]
        sd = np.r_[np.asarray(MEMORY_PRIOR_SD), np.full(sum(sizes), MEMORY_GROUP_SD)]
        starts = np.cumsum([nc] + sizes[:-1])

        def loss(b):
            z = X @ b[:nc]
            for c, st in zip(codes, starts):
                z = z + b[st + c]
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
            r = p - y
            g = np.empty_like(b)
            g[:nc] = X.T @ r
            for c, st, n in zip(codes, starts, sizes):
                g[st:st + n] = np.bincount(c, weights=r, minlength=n)
            d = (b - mean) / sd
            return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(d * d)), g + d / sd

        b = minimize(loss, mean.copy(), jac=True, method="L-BFGS-B").x
        self.coef = b[:nc]
        self.offsets = [dict(zip(u, b[st:st + n])) for u, st, n in zip(uniques, starts, sizes)]
        return self

    def p_fit(self, frame: pd.DataFrame) -> np.ndarray | None:
        X = self.design(frame)
        if X is None:
            return None
        z = X @ self.coef
        for cols, off in zip(MEMORY_GROUPS, self.offsets):
            if off:
                z = z + pd.Series(_group_keys(frame, cols), dtype=object).map(off).fillna(0.0).to_numpy(dtype=float)
        return 0.5 * (1.0 + np.tanh(0.5 * z))


PRIOR_STRENGTH = 10.0  # pseudo-runs behind each prior rate (the measured rates take over as runs accumulate)
CLASSIFIER_HALF_WEIGHT = 1.0  # the classifier gets half the weight once this many runs of the rarer outcome were seen
CLASSIFIER_MIN_LEAF = 1  # (leaf 2 and half-weight 4 avoided fewer failures on the DLI pool, tuning seed 0)
PRIOR_OK_OTHER = 0.98  # with the memory model: how often a run that fits does not fail otherwise (before any error)


class FeasibilityModel:
    """P(run succeeds), learned from the statuses the campaign measured (OOM / error rows are recorded runs).

    A physics prior blended with a random-forest classifier on the encoded configuration and the physics'
    memory-headroom terms, whose weight grows with the number of runs of the rarer outcome (n / (n + half weight));
    with fewer than two of either outcome the prior alone answers. The prior, where the frame carries the physics'
    memory terms (serving rows), is the memory model (`MemoryFitModel`: P(no out-of-memory failure) from the memory
    demand with learned per-group offsets) times the measured rate of other failures (errors), and the classifier's
    half weight is MEMORY_HALF_WEIGHT runs: the memory model generalises from a few failures to every workload of
    their model, GPU and layout, where the forest needs many. Without memory terms the prior is the memory verdict
    (`f_feasible`) turned into a success rate, each of the two rates shrunk from PRIOR_OK_(IN)FEASIBLE towards what
    the campaign measured for runs with that verdict, and the half weight CLASSIFIER_HALF_WEIGHT. Only measured rows
    are ever seen: the candidates' own statuses are unknown."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.rate = {True: PRIOR_OK_FEASIBLE, False: PRIOR_OK_INFEASIBLE}
        self.memory: MemoryFitModel | None = None
        self.other_ok = PRIOR_OK_OTHER
        self.classifier = None
        self.weight = 0.0
        self.n_ok = self.n_failed = 0

    @staticmethod
    def physics_fits(frame: pd.DataFrame) -> np.ndarray:
        """The physics memory verdict per row (unknown: fits)."""
        if "f_feasible" not in frame.columns:
            return np.ones(len(frame), dtype=bool)
        return np.nan_to_num(float_column(frame, "f_feasible"), nan=1.0) > 0.5

    def fit(self, measured: pd.DataFrame, encoded: np.ndarray | None) -> "FeasibilityModel":
        status = measured["status"].astype("string").fillna("ok") if len(measured) else pd.Series([], dtype="string")
        ok = status.eq("ok").to_numpy(bool)
        self.n_ok, self.n_failed = int(ok.sum()), int((~ok).sum())
        fits = self.physics_fits(measured)
        for verdict, prior in ((True, PRIOR_OK_FEASIBLE), (False, PRIOR_OK_INFEASIBLE)):
            mine = fits == verdict
            self.rate[verdict] = float((ok[mine].sum() + PRIOR_STRENGTH * prior) / (mine.sum() + PRIOR_STRENGTH))
        half = CLASSIFIER_HALF_WEIGHT
        self.memory = MemoryFitModel()  # its physics prior until serving rows with memory terms were measured
        if memory_demand(measured) is not None:
            memory_failed = status.isin(MEMORY_FAILURES).to_numpy(bool)
            self.memory.fit(measured, ~memory_failed)
            other = ~ok & ~memory_failed  # failures the memory model does not explain
            self.other_ok = float((len(ok) - memory_failed.sum() - other.sum() + PRIOR_STRENGTH * PRIOR_OK_OTHER)
                                  / (len(ok) - memory_failed.sum() + PRIOR_STRENGTH))
            half = MEMORY_HALF_WEIGHT
        rarer = min(self.n_ok, self.n_failed)
        if encoded is not None and rarer >= 2:
            from sklearn.ensemble import RandomForestClassifier

            clf = RandomForestClassifier(n_estimators=100, min_samples_leaf=CLASSIFIER_MIN_LEAF, random_state=self.seed,
                                         n_jobs=1)
            self.classifier = clf.fit(_feasibility_features(measured, encoded), ok.astype(int))
            self.weight = rarer / (rarer + half)
        return self

    def prior(self, frame: pd.DataFrame) -> np.ndarray:
        if self.memory is not None:
            p = self.memory.p_fit(frame)
            if p is not None:
                return p * self.other_ok
        fits = self.physics_fits(frame)
        return np.where(fits, self.rate[True], self.rate[False])

    def p_ok(self, frame: pd.DataFrame, encoded: np.ndarray | None = None) -> np.ndarray:
        """Chance that each row's configuration runs (a physics frame; `encoded` its `sampler.encode` rows)."""
        p = self.prior(frame)
        if self.classifier is not None and encoded is not None and len(frame):
            q = self.classifier.predict_proba(_feasibility_features(frame, encoded))
            q = q[:, list(self.classifier.classes_).index(1)] if 1 in self.classifier.classes_ else np.zeros(len(frame))
            p = (1.0 - self.weight) * p + self.weight * q
        return np.clip(p, 0.0, 1.0)

    def predict_proba(self, features_frame: pd.DataFrame, encoded: np.ndarray | None = None) -> np.ndarray:
        p = self.p_ok(features_frame, encoded)
        return np.column_stack([1.0 - p, p])


def _fit_feasibility(measured: pd.DataFrame, encoded: np.ndarray | None, seed: int) -> FeasibilityModel:
    """The feasibility model of a campaign's measured rows (physics prior alone until both outcomes were seen)."""
    return FeasibilityModel(seed).fit(measured, encoded)


# --- acquisition scores --------------------------------------------------------------------------------------------

def _relative_to_median(values: np.ndarray, missing: float) -> np.ndarray:
    """`values` with every non-finite entry replaced by the largest finite one (`missing` when there is none),
    divided by their median when it is positive."""
    top = np.nanmax(values) if np.isfinite(values).any() else missing
    v = np.where(np.isfinite(values), values, top)
    mid = float(np.median(v))
    return v / mid if mid > 0 else v


def scenario_centrality(X: np.ndarray, scenario: np.ndarray) -> np.ndarray:
    """How typical each configuration is of its scenario, in (0, 1]: exp(-d^2 / (2 ell^2)) with d its distance from the
    centroid of its scenario's configurations in the encoded space and ell the median non-zero d over the pool.

    A scenario's first run teaches the model that scenario's offset from the physics; measured at a typical
    configuration (middle of its layouts and loads) that offset carries to the rest of the scenario, measured at an
    extreme one it carries the extreme's own error with it."""
    X = np.asarray(X, dtype=float)
    d = np.zeros(len(X))
    if not len(X) or not X.shape[1]:
        return np.ones(len(X))
    for rows in pd.DataFrame({"s": np.asarray(scenario, dtype=object)}).groupby("s", sort=False).indices.values():
        d[rows] = np.sqrt(((X[rows] - X[rows].mean(axis=0)) ** 2).sum(axis=1))
    ell = float(np.median(d[d > 0])) if (d > 0).any() else 1.0
    return np.exp(-0.5 * (d / ell) ** 2)


def uncertainty_scores(pred: Prediction, targets: tuple[str, ...], cost: np.ndarray | None = None) -> np.ndarray:
    """Calibrated log-interval width, each target's relative to its median (rows without a prediction count as the
    widest) and averaged over the targets, times the chance the run succeeds, divided by its cost if given."""
    widths = []
    for t in targets:
        if t not in pred.log_point:
            continue
        widths.append(_relative_to_median(2.0 * Z80 * pred.log_sigma(t), 2.0 * math.log(2.0)))
    if not widths:
        n = len(pred.p_ok) if pred.p_ok is not None else 0
        return np.ones(n)
    return per_run_value(np.mean(widths, axis=0), pred.p_ok, cost)


def per_run_value(value: np.ndarray, p_ok: np.ndarray | None, cost: np.ndarray | None = None) -> np.ndarray:
    """What measuring each candidate is worth: `value` times its chance of running, divided by its cost if given."""
    score = np.asarray(value, dtype=float) * (p_ok if p_ok is not None else 1.0)
    if cost is not None:
        score = score / np.maximum(np.asarray(cost, dtype=float), 1e-12)
    return score


def relative_variance(pred: Prediction, targets: tuple[str, ...]) -> np.ndarray:
    """Per candidate, the predictive log-variance averaged over the targets, each target's relative to its median
    (rows without a prediction count as the most uncertain)."""
    parts = []
    for t in targets:
        if t not in pred.log_point:
            continue
        parts.append(_relative_to_median(pred.log_sigma(t), PRIOR_LOG_SIGMA) ** 2)
    n = len(pred.p_ok) if pred.p_ok is not None else 0
    return np.mean(parts, axis=0) if parts else np.ones(n)


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, incumbent: np.ndarray) -> np.ndarray:
    """E[max(0, U - incumbent)] for U ~ Normal(mu, sigma) (log utilities: a relative improvement)."""
    sigma = np.maximum(np.asarray(sigma, dtype=float), 1e-9)
    z = (mu - incumbent) / sigma
    return sigma * norm.pdf(z) + (mu - incumbent) * norm.cdf(z)


def search_scores(pred: Prediction, objective: Objective, num_gpus: np.ndarray, scenario: np.ndarray,
                  incumbent: dict[str, float], seed: int = 0, within: float = 0.03,
                  samples: int = 256, log_physics: np.ndarray | None = None,
                  physics_weight: float = 0.0, measured_utility: np.ndarray | None = None) -> np.ndarray:
    """Per candidate, the chance that measuring it solves its scenario: that it runs, comes within `within` of the
    scenario's best, and the best measured so far did not (sampled from the predictive distribution, failures
    included). Scenarios never measured have nothing solved yet, so their likely-best configurations come first;
    a scenario whose incumbent is probably already near-best gives way. Ties go by expected improvement.

    With `log_physics` (the physics answer of the objective's target, log) and `physics_weight` > 0 the chance is a
    mixture over two hypotheses of how the candidates of a scenario rank: the learned model's (its per-row
    corrections), with weight 1 - physics_weight, and the physics model's, lifted to the learned level of the scenario
    (the scenario's mean learned correction), with weight physics_weight. Few measurements make a learned correction
    noisy from layout to layout, while the physics ranking is often right; the mixture measures the physics' pick
    too where the two disagree and the model's pick did not settle the scenario.

    The mixture's weight is updated per scenario by what the scenario's measurements say of each hypothesis
    (`hypothesis_weights`): a scenario where the physics' lifted ranking missed a measurement by much more than the
    predictive spread trusts it less there (a first pick that came in far below the physics' value no longer holds
    back second tries in its scenario).

    With `measured_utility` (per candidate, its measured log utility, NaN where not measured) each hypothesis is
    conditioned on what its scenario's measurements revealed: the error the model shares across a scenario's
    configurations (correlation SCENARIO_ERROR_CORRELATION) is estimated from the measured ones, and the untried
    ones are shifted by its expected part (rho^2 x the mean measured error), so a scenario the model over-predicted
    does not draw second tries it would not need, and one it under-predicted does."""
    t = objective.target
    n = len(scenario)
    if t not in pred.log_point:
        return np.zeros(n)
    groups = pd.Series(scenario, dtype=object)

    def condition(m: np.ndarray) -> np.ndarray:
        if measured_utility is None:
            return m
        err = pd.Series(np.asarray(measured_utility, dtype=float) - m).groupby(groups).transform("mean")
        return m + SCENARIO_ERROR_CORRELATION ** 2 * np.nan_to_num(err.to_numpy(dtype=float), nan=0.0)

    u_learned = objective.log_utility(pred.log_point[t], num_gpus)  # before conditioning
    mu = condition(u_learned)
    sigma = pred.log_sigma(t)
    sigma = np.where(np.isfinite(sigma), sigma, PRIOR_LOG_SIGMA)
    p_ok = pred.p_ok if pred.p_ok is not None else np.ones(n)
    inc = np.array([incumbent.get(s, np.nan) for s in scenario], dtype=float)
    ei = np.where(np.isfinite(mu) & np.isfinite(inc), expected_improvement(np.nan_to_num(mu), sigma, np.nan_to_num(inc)),
                  0.0) * p_ok
    idx = np.flatnonzero(np.isfinite(mu))
    gain = np.zeros(n)
    if len(idx):
        gain[idx] = chance_to_solve(mu[idx], sigma[idx], p_ok[idx], scenario[idx], inc[idx],
                                    math.log(1.0 - within), seed, samples)
    if log_physics is not None and physics_weight > 0:
        log_phys = np.asarray(log_physics, dtype=float)
        corr = pd.Series(pred.log_point[t] - log_phys).groupby(groups).transform("mean")
        u_physics = objective.log_utility(log_phys + corr.to_numpy(dtype=float), num_gpus)
        mu_phys = condition(u_physics)
        alt = np.flatnonzero(np.isfinite(mu_phys))
        gain_phys = np.zeros(n)
        if len(alt):
            gain_phys[alt] = chance_to_solve(mu_phys[alt], sigma[alt], p_ok[alt], scenario[alt], inc[alt],
                                             math.log(1.0 - within), seed + 1, samples)
        weight = hypothesis_weights(u_learned, u_physics, measured_utility, sigma, groups, physics_weight)
        gain = (1.0 - weight) * gain + weight * gain_phys
    # a scenario with no good measurement would fail for sure: cover every scenario first (one try each, its most
    # promising configuration), then spend on second tries where the incumbent is least likely near-best
    fresh = ~np.isfinite(inc)
    # (the cover-first bonus is not scaled by p_ok: postponing scenarios whose candidates look risky left them
    # uncovered -- fewer failed runs on the DLI pool, 39 vs 55 of 345, but fewer scenarios solved, 79% vs 88%)
    return gain + fresh + 1e-3 * ei / (1.0 + ei)


def hypothesis_weights(mu_learned: np.ndarray, mu_physics: np.ndarray, measured_utility: np.ndarray | None,
                       sigma: np.ndarray, scenario: pd.Series, physics_weight: float) -> np.ndarray:
    """Per candidate, the posterior weight of the physics-ranking hypothesis in its scenario: the prior
    `physics_weight` times the Gaussian likelihood of the scenario's measured log utilities under each hypothesis
    (`mu_physics`, `mu_learned`; spread `sigma`), normalised. The learned model was fitted on those measurements, so
    its likelihood is optimistic: the physics ranking loses weight only where it missed a measurement by clearly more
    than the predictive spread. Scenarios without a measurement keep the prior."""
    n = len(mu_learned)
    if measured_utility is None:
        return np.full(n, physics_weight)
    meas = np.asarray(measured_utility, dtype=float)

    def log_likelihood(mu: np.ndarray) -> np.ndarray:
        z2 = ((meas - mu) / np.maximum(sigma, 1e-6)) ** 2
        per = pd.Series(np.where(np.isfinite(z2), -0.5 * z2, 0.0), index=scenario.index)
        return per.groupby(scenario).transform("sum").to_numpy(dtype=float)

    ll_learned, ll_physics = log_likelihood(np.asarray(mu_learned, dtype=float)), log_likelihood(
        np.asarray(mu_physics, dtype=float))
    top = np.maximum(ll_learned, ll_physics)
    a = physics_weight * np.exp(ll_physics - top)
    b = (1.0 - physics_weight) * np.exp(ll_learned - top)
    return a / np.maximum(a + b, 1e-300)


def physics_ranking_weight(surrogate: "Surrogate | None", measured: pd.DataFrame | None, objective: Objective,
                           scenario: np.ndarray, seed: int = 0, folds: int = 3, prior: float = 0.5,
                           prior_pairs: float = 4.0, within: float = 0.03) -> float:
    """How far to trust the physics model's ranking of a scenario's configurations over the learned model's, from the
    campaign's own measurements: scenarios are split into folds; the residual learner is fitted on the other folds'
    rows and ranks each held-out scenario's measured configurations (pairs more than `within` apart), as physics does.
    Returns the share of the pairs on which exactly one of the two is right that physics gets right, shrunk towards
    `prior` as if `prior_pairs` such pairs had been seen (no data: `prior`). Out-of-scenario by construction, so
    neither ranking has seen the scenario it is judged on."""
    t = objective.target
    if surrogate is None or surrogate.model is None or measured is None or not len(measured):
        return prior
    kind = KIND_OF_TARGET[t]
    space, model = surrogate.model.spaces_.get(kind), surrogate.model
    if space is None or t not in model.learners_:
        return prior
    use = target_rows(measured, t) & measured["status"].astype("string").fillna("ok").eq("ok").to_numpy(bool)
    sub = measured[use]
    scen = np.asarray(scenario, dtype=object)[use]
    if len(sub) < 8:
        return prior
    X, y = residual_xy(space, sub, t)
    log_phys = X[:, -1].copy()
    u_true = objective.log_utility(log_phys + y, float_column(sub, "num_gpus"))
    u_phys = objective.log_utility(log_phys, float_column(sub, "num_gpus"))
    codes, uniques = pd.factorize(pd.Series(scen, dtype=object))
    counts = np.bincount(codes, minlength=len(uniques))
    multi = np.flatnonzero(counts >= 2)
    if not len(multi):
        return prior
    rng = np.random.default_rng(seed)
    fold_of = rng.integers(0, folds, len(uniques))
    u_model = np.full(len(sub), np.nan)
    params = _learner_params(model, X.shape[1])
    for f in range(folds):
        test = np.isin(codes, multi[fold_of[multi] == f])
        train = fold_of[codes] != f
        if not test.any() or train.sum() < 8:
            continue
        learner = XGBLearner(**params, seed=seed + 7 + f).fit(X[train], y[train])
        corr = np.clip(learner.predict(X[test]), -MAX_LOG_CORRECTION, MAX_LOG_CORRECTION)
        u_model[test] = u_phys[test] + objective.log_utility(corr, np.ones(int(test.sum())))
    phys_only = model_only = 0
    gap = -math.log(1.0 - within)
    for c in multi:
        rows = np.flatnonzero((codes == c) & np.isfinite(u_model) & np.isfinite(u_true))
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                i, j = rows[a], rows[b]
                d = u_true[i] - u_true[j]
                if abs(d) <= gap:
                    continue
                p_right = (u_phys[i] - u_phys[j]) * d > 0
                m_right = (u_model[i] - u_model[j]) * d > 0
                phys_only += int(p_right and not m_right)
                model_only += int(m_right and not p_right)
    return float((phys_only + prior * prior_pairs) / (phys_only + model_only + prior_pairs))


def chance_to_solve(mu: np.ndarray, sigma: np.ndarray, p_ok: np.ndarray, group: np.ndarray, incumbent: np.ndarray,
                    tol_log: float, seed: int = 0, samples: int = 256,
                    rho: float = SCENARIO_ERROR_CORRELATION) -> np.ndarray:
    """Probability that a candidate runs, its utility is within `tol_log` (< 0) of the best of its group, and the
    group's incumbent (NaN: none) is not. Utilities ~ Normal(mu, sigma) with correlation `rho` between the errors of
    one group's candidates (a model that is off for a scenario is off for all its layouts alike), and runs fail with
    probability 1 - p_ok (Monte Carlo)."""
    rng = np.random.default_rng(seed)
    samples = int(min(samples, max(32, 20_000_000 // max(len(mu), 1))))  # bounded memory for huge candidate sets
    codes, _ = pd.factorize(pd.Series(group, dtype=object), sort=True)
    order = np.argsort(codes, kind="stable")
    c_sorted = codes[order]
    starts = np.flatnonzero(np.r_[True, c_sorted[1:] != c_sorted[:-1]])
    member = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(mu)]))
    shared = rng.standard_normal((samples, len(starts)))[:, member]  # the model's error common to a scenario
    own = rng.standard_normal((samples, len(mu)))
    U = mu[order][None, :] + sigma[order][None, :] * (rho * shared + math.sqrt(1.0 - rho * rho) * own)
    U = np.where(rng.random((samples, len(mu))) < p_ok[order][None, :], U, -np.inf)
    inc = np.nan_to_num(incumbent[order][starts], nan=-np.inf)  # per group
    best = np.maximum(np.maximum.reduceat(U, starts, axis=1), inc[None, :])
    unsolved = inc[None, :] < best + tol_log
    near = np.isfinite(U) & (U >= best[:, member] + tol_log) & unsolved[:, member]
    out = np.empty(len(mu))
    out[order] = near.mean(axis=0)
    return out


LIKELY_TO_FAIL = 0.5  # a recommendation never goes to an unmeasured configuration below this chance of running


def recommend(scenario: np.ndarray, predicted_utility: np.ndarray, measured_utility: np.ndarray,
              measured: np.ndarray, p_ok: np.ndarray | None = None, min_p_ok: float = LIKELY_TO_FAIL,
              measured_first: bool = True) -> dict:
    """Per scenario, the index of the configuration to recommend. `measured_first` (default): the best measured one
    that ran (measured utility), else among the unmeasured the best predicted one that is not likely to fail
    (`p_ok` >= `min_p_ok`). Otherwise measured values (configurations that ran) and predicted values (unmeasured
    configurations not likely to fail) compete directly. A measured configuration that failed (measured utility NaN)
    is never recommended; a scenario where nothing ran and every unmeasured configuration is likely to fail falls
    back to the one most likely to run (ties: predicted utility), so every scenario with a candidate gets an answer."""
    scenario = np.asarray(scenario, dtype=object)
    u_pred = np.asarray(predicted_utility, dtype=float)
    u_meas = np.asarray(measured_utility, dtype=float)
    measured = np.asarray(measured, dtype=bool)
    p = np.ones(len(scenario)) if p_ok is None else np.nan_to_num(np.asarray(p_ok, dtype=float), nan=1.0)
    out: dict = {}
    for s, idx in pd.Series(np.arange(len(scenario))).groupby(pd.Series(scenario, dtype=object)).groups.items():
        idx = np.asarray(idx)
        ran = idx[measured[idx] & np.isfinite(u_meas[idx])]
        if len(ran) and measured_first:
            out[s] = int(ran[np.argmax(u_meas[ran])])
            continue
        rest = idx[~measured[idx] & np.isfinite(u_pred[idx])]
        safe = rest[p[rest] >= min_p_ok]
        pool = np.r_[ran, safe].astype(int)
        if len(pool):
            value = np.where(measured[pool], u_meas[pool], u_pred[pool])
            out[s] = int(pool[np.argmax(value)])
        elif len(rest):
            out[s] = int(rest[np.lexsort((-u_pred[rest], -p[rest]))[0]])
    return out


# --- batches -------------------------------------------------------------------------------------------------------

def select_batch(scores: np.ndarray, X: np.ndarray, k: int, available: np.ndarray, cost: np.ndarray | None = None,
                 budget_left: float = math.inf, groups: np.ndarray | None = None, shortlist: int = 8) -> list[int]:
    """Up to `k` indices of available candidates: greedy by score, a candidate near one already chosen discounted
    (score x min(1, distance / d_ref)); with `groups`, one per group while other groups remain; the summed `cost`
    stays within `budget_left`."""
    avail = np.flatnonzero(available & np.isfinite(scores))
    if len(avail) == 0 or k <= 0:
        return []
    cost = np.zeros(len(scores)) if cost is None else np.asarray(cost, dtype=float)
    order = avail[np.argsort(-scores[avail], kind="stable")]
    short = order[: max(shortlist * k, 32)]
    pts = X[short] if X.shape[1] else np.zeros((len(short), 1))
    sample = pts[: min(len(pts), 200)]
    pair = np.sqrt(((sample[:, None, :] - sample[None, :, :]) ** 2).sum(-1))
    d_ref = 0.25 * float(np.median(pair[np.triu_indices(len(sample), 1)])) if len(sample) > 1 else 0.0
    s = scores[short].astype(float)
    s = s - min(0.0, s.min())
    chosen: list[int] = []
    used_groups: set = set()
    min_d = np.full(len(short), np.inf)
    taken = np.zeros(len(short), dtype=bool)
    spent = 0.0
    while len(chosen) < k:
        fits = ~taken & (spent + cost[short] <= budget_left + 1e-12)
        if not fits.any():
            break
        if groups is not None:
            fresh = fits & np.array([groups[i] not in used_groups for i in short])
            if fresh.any():
                fits = fresh
        discount = np.minimum(1.0, min_d / d_ref) if d_ref > 0 else np.ones(len(short))
        value = np.where(fits, s * discount + 1e-12 * s, -np.inf)
        j = int(np.argmax(value))
        if not np.isfinite(value[j]):
            break
        taken[j] = True
        chosen.append(int(short[j]))
        spent += cost[short[j]]
        if groups is not None:
            used_groups.add(groups[short[j]])
        min_d = np.minimum(min_d, np.sqrt(((pts - pts[j]) ** 2).sum(axis=1)))
    for i in order[len(short):]:  # the shortlist ran dry (budget): fill from the rest in score order
        if len(chosen) >= k:
            break
        if spent + cost[i] <= budget_left + 1e-12:
            chosen.append(int(i))
            spent += cost[i]
    return chosen


# --- integrated variance reduction (uncertainty) ------------------------------------------------------------------

MAX_REFERENCE = 2500  # pool points the integrated variance is summed over (a random subsample beyond this)
MAX_CANDIDATES = 4000  # candidates scored per batch (a random subsample beyond this)


def kernel_lengthscale(X: np.ndarray, share: float = 0.01, rng: np.random.Generator | None = None,
                       sample: int = 1000) -> float:
    """A kernel length scale for `X` (encoded configurations): the median distance from a point to its
    ceil(share x n)-th nearest neighbour, so one measurement informs about `share` of the pool around it."""
    n = len(X)
    if n < 2 or X.shape[1] == 0:
        return 1.0
    rng = rng or np.random.default_rng(0)
    idx = rng.choice(n, min(n, sample), replace=False)
    k = int(min(n - 1, max(1, math.ceil(share * n))))
    d = np.sqrt(((X[idx, None, :] - X[None, :, :]) ** 2).sum(-1))
    kth = np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself
    ell = float(np.median(kth))
    return ell if ell > 0 else 1.0


def rbf(A: np.ndarray, B: np.ndarray, ell: float) -> np.ndarray:
    """Gaussian kernel exp(-|a - b|^2 / (2 ell^2)) between the rows of A and B (float32)."""
    if A.shape[1] == 0:
        return np.ones((len(A), len(B)), dtype=np.float32)
    d2 = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return np.exp(-np.maximum(d2, 0.0) / (2.0 * ell * ell)).astype(np.float32)


def variance_reduction_batch(variance: np.ndarray, X: np.ndarray, k: int, available: np.ndarray,
                             measured: np.ndarray | None = None, weight: np.ndarray | None = None,
                             cost: np.ndarray | None = None, budget_left: float = math.inf,
                             ell: float | None = None, seed: int = 0, p_ok: np.ndarray | None = None) -> list[int]:
    """Up to `k` available candidates that most reduce the predictive variance summed over the untried pool
    (integrated variance reduction, greedy batch). Each pool point j holds a remaining variance v_j (its
    predictive variance x `weight`, e.g. its chance of running, already discounted near measured points); measuring
    candidate i removes k(i, j) x v_j from every j (kernel k in the encoded space), so a pick's gain is the
    variance it explains where the pool is dense and uncertain, and the next pick looks elsewhere: the batch is
    diverse and representative by construction. Gain is per unit cost when `cost` is given; the summed cost stays
    within `budget_left`; `p_ok` (a candidate's chance of running) scales what measuring it can teach."""
    n = len(variance)
    avail = np.flatnonzero(np.asarray(available, dtype=bool) & np.isfinite(variance))
    if len(avail) == 0 or k <= 0:
        return []
    rng = np.random.default_rng(seed)
    v = np.where(np.isfinite(variance), np.maximum(variance, 0.0), 0.0)
    if weight is not None:
        v = v * np.clip(np.nan_to_num(np.asarray(weight, dtype=float), nan=1.0), 0.0, None)
    measured = np.zeros(n, dtype=bool) if measured is None else np.asarray(measured, dtype=bool)
    ref = np.flatnonzero(~measured)
    if len(ref) > MAX_REFERENCE:
        ref = rng.choice(ref, MAX_REFERENCE, replace=False)
    cands = avail if len(avail) <= MAX_CANDIDATES else rng.choice(avail, MAX_CANDIDATES, replace=False)
    ell = float(ell) if ell else kernel_lengthscale(X, rng=rng)
    vr = v[ref].astype(np.float64)
    done = np.flatnonzero(measured)
    for start in range(0, len(done), 2000):  # what is already measured explains its neighbourhood
        Km = rbf(X[done[start:start + 2000]], X[ref], ell)
        vr *= np.prod(1.0 - 0.95 * Km, axis=0)
    K = rbf(X[cands], X[ref], ell)  # candidates x reference points
    c = np.ones(len(cands)) if cost is None else np.maximum(np.asarray(cost, dtype=float)[cands], 1e-12)
    if p_ok is not None:
        c = c / np.clip(np.nan_to_num(np.asarray(p_ok, dtype=float)[cands], nan=1.0), 1e-3, 1.0)
    chosen: list[int] = []
    taken = np.zeros(len(cands), dtype=bool)
    spent = 0.0
    while len(chosen) < k:
        gain = (K @ vr) / c
        over = (spent + np.asarray(cost, dtype=float)[cands] > budget_left + 1e-12) if cost is not None else False
        gain = np.where(taken | over, -np.inf, gain)
        j = int(np.argmax(gain))
        if not np.isfinite(gain[j]):
            break
        taken[j] = True
        chosen.append(int(cands[j]))
        spent += 0.0 if cost is None else float(np.asarray(cost, dtype=float)[cands[j]])
        vr *= 1.0 - 0.95 * K[j]
    return chosen
