"""Replayed active-learning campaigns on real pools: model error and search success against the share of a pool measured.

Pools (shared data): the TRT-LLM 0.9 DLI sweep (`dli` importer: TP x batch per model, GPU, dtype, ISL/OSL), the vLLM
rows of aiconfigurator's silicon sample (layout x concurrency per model, system, ISL/OSL), and the H200 GPU-probe
decoder-step rows (TP shard per model and shape). For each pool, strategy (random, uncertainty, search) and seed, one
campaign runs with the replay backend up to 10% of the pool's configurations in batches of ~1% (random and
uncertainty ones stopped at half that budget and resumed, so their curves have a point at exactly half); after every
batch the model is scored on the pool rows not yet measured (median absolute % error) and each scenario's best
measured configuration is compared with the pool's true best. The campaign never reads a row's targets before
measuring it. `--strategies` reruns only some strategies and keeps the others' runs from the last results file.

Targets (issue 6): `uncertainty` reaches `random`'s final error with at most half its budget; with 5% of a pool
measured the median error on the rest is <= 10%; `search` finds a configuration within 3% of the pool's true best in
>= 90% of scenarios while measuring <= 10% of the pool. Prints tables, writes benchmarks/results/campaign.json and
benchmarks/results/campaign.png.

    .venv/bin/python -m benchmarks.campaign [--seeds 5] [--pools dli,aiconfigurator,gpu-probe] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from benchmarks._common import RESULTS, SHARED_DATA, code_version, write_result
from collect.acquisition import resolve_objective
from collect.backends.replay import ReplayBackend
from collect.campaign import Campaign, CampaignSettings, PoolEvaluator, default_targets, parse_budget
from collect.dispatch import BackendSpec, SerialDispatcher, install_backend, load_pool
from collect.sampler import answerable, pool_candidates
from collect.store import Store

STRATEGIES = ("random", "uncertainty", "search")
HALF_BUDGET_STRATEGIES = ("random", "uncertainty")  # compared at half the budget: their curves get a point there
FRACTIONS = (0.01, 0.02, 0.05, 0.10)
POOLS = {
    # name: (importer source, shared-data folder, row filter, kind, scenario columns, objective)
    "dli": ("dli", "public/nvidia_dli_nim_genaiperf", None, "serving", ("model", "gpu", "weight_dtype", "isl", "osl"),
            "throughput"),
    "aiconfigurator": ("aiconfigurator", "public/aiconfigurator", ("engine", "vllm"), "serving",
                       ("model", "gpu", "weight_dtype", "isl", "osl"), "throughput"),
    "gpu-probe": ("gpu-probe", "gpu_probe", ("kind", "step"), "step",
                  ("model", "gpu", "weight_dtype", "phase", "batch", "context", "tokens"), "layer"),
}


def load(name: str) -> tuple[ReplayBackend, pd.DataFrame]:
    """The pool's replay backend and its candidate configurations (no targets)."""
    source, folder, keep, kind, _, _ = POOLS[name]
    frame = load_pool(f"{source}:{SHARED_DATA / folder}")
    if keep is not None:
        frame = frame[frame[keep[0]] == keep[1]]
    rb = ReplayBackend(frame.reset_index(drop=True))
    cand = pool_candidates(rb.frame)
    cand = cand[cand["kind"] == kind].reset_index(drop=True)
    return rb, answerable(cand, rb.frame, resolve_objective(POOLS[name][5], kind).target)


def run_one(name: str, rb: ReplayBackend, cand: pd.DataFrame, evaluator: PoolEvaluator, strategy: str, seed: int,
            max_fraction: float, code: str = "") -> dict:
    """One replayed campaign; its learning curve as plain records."""
    _, _, _, _, scenario, objective = POOLS[name]
    n = len(cand)
    batch = max(4, math.ceil(n / 100))
    budget = max(batch, int(round(max_fraction * n)))
    spec = BackendSpec.make("replay", pool=name)
    install_backend(spec, rb)
    store = Store("sqlite://")
    t0 = time.monotonic()
    points = []
    # random and uncertainty campaigns stop at half their budget and are resumed to the full budget (one campaign, as
    # a user extends one): the learning curve then has a point at exactly half the budget, where the half-budget
    # target is judged; search campaigns, judged at the full budget only, run in one go
    stops = sorted({budget // 2, budget} - {0}) if strategy in HALF_BUDGET_STRATEGIES else [budget]
    for stop in stops:
        settings = CampaignSettings(backend="replay", strategy=strategy, budget=parse_budget(stop), batch=batch,
                                    seed=seed, objective=objective, scenario=scenario)
        res = Campaign(settings, cand, SerialDispatcher(spec, store), store, evaluator=evaluator, progress=False).run()
        points += [p for p in res.curve if not points or p.runs > points[-1].runs]  # a resumed run repeats its start
    store.close()
    curve = [{"runs": p.runs, "fraction": p.runs / n, "ok_runs": p.ok_runs, "heldout": p.heldout,
              "within_3pct": p.best.get("within_3pct"), "measured_scenarios": p.best.get("measured_scenarios"),
              "mean_regret": p.best.get("mean_regret"), "recommended_within_3pct": p.best.get("recommended_within_3pct"),
              "model_pick_within_3pct": p.best.get("model_pick_within_3pct")}
             for p in points]
    return {"pool": name, "strategy": strategy, "seed": seed, "configs": n, "batch": batch, "budget": budget,
            "seconds": round(time.monotonic() - t0, 1), "code": code, "curve": curve}


def nearest(curve: list[dict], runs: int) -> dict:
    """The curve point whose number of runs is closest to `runs` (the fewer on a tie)."""
    return min(curve, key=lambda p: (abs(p["runs"] - runs), p["runs"]))


def at_runs(curve: list[dict], runs: int, key) -> float:
    """The value of `key(point)` at the curve point nearest `runs` runs measured."""
    v = key(nearest(curve, runs))
    return math.nan if v is None else float(v)


def summarise(name: str, runs: list[dict], target: str, scenarios: int) -> dict:
    """Median-over-seeds error and search success per strategy at each budget fraction, and the three checks."""
    n = runs[0]["configs"]
    out: dict = {"configs": n, "scenarios": scenarios, "target": target, "by_strategy": {}}
    finals = {}
    for strategy in STRATEGIES:
        mine = [r for r in runs if r["strategy"] == strategy]
        if not mine:
            continue
        rows = {}
        grid = sorted({p["runs"] for r in mine for p in r["curve"]})
        med_curve = {}
        for k in grid:
            errs = [at_runs(r["curve"], k, lambda p: p["heldout"].get(target)) for r in mine]
            hits = [at_runs(r["curve"], k, lambda p: p["within_3pct"]) for r in mine]
            rec = [at_runs(r["curve"], k, lambda p: p.get("recommended_within_3pct")) for r in mine]
            med_curve[k] = (float(np.nanmedian(errs)), float(np.nanmedian(hits)),
                            float(np.nanmedian(rec)) if np.isfinite(rec).any() else None)
        for f in FRACTIONS:
            k = int(round(f * n))
            errs = [at_runs(r["curve"], k, lambda p: p["heldout"].get(target)) for r in mine]
            hits = [at_runs(r["curve"], k, lambda p: p["within_3pct"]) for r in mine]
            recommended = [at_runs(r["curve"], k, lambda p: p.get("recommended_within_3pct")) for r in mine]
            model_pick = [at_runs(r["curve"], k, lambda p: p.get("model_pick_within_3pct")) for r in mine]
            failed = [at_runs(r["curve"], k, lambda p: p["runs"] - p["ok_runs"]) for r in mine]
            covered = [at_runs(r["curve"], k, lambda p: p["measured_scenarios"]) for r in mine]
            others = {t: float(np.nanmedian([at_runs(r["curve"], k, lambda p, t=t: p["heldout"].get(t)) for r in mine]))
                      for t in sorted({t for r in mine for p in r["curve"] for t in p["heldout"]})}
            k_real = nearest(mine[0]["curve"], k)["runs"]
            rows[f"{f:.0%}"] = {"runs": k_real, "fraction": k_real / n, "median_ape": float(np.nanmedian(errs)),
                                "median_ape_by_target": others, "within_3pct": float(np.nanmedian(hits)),
                                "scenarios_measured": float(np.nanmedian(covered)),
                                "recommended_within_3pct": float(np.nanmedian(recommended))
                                if np.isfinite(recommended).any() else None,
                                "model_pick_within_3pct": float(np.nanmedian(model_pick))
                                if np.isfinite(model_pick).any() else None,
                                "failed_runs": float(np.nanmedian(failed)),
                                "within_3pct_of_measured_scenarios": float(np.nanmedian(
                                    [h / c if c else np.nan for h, c in zip(hits, covered)]))}
        out["by_strategy"][strategy] = {"at_fraction": rows, "curve": {str(k): v for k, v in med_curve.items()}}
        finals[strategy] = med_curve
    checks = {}
    if "random" in finals and "uncertainty" in finals:
        r_runs = max(finals["random"])
        r_err = finals["random"][r_runs][0]
        need = _runs_to_reach(finals["uncertainty"], r_err)
        checks["uncertainty_half_budget"] = {"random_final_runs": r_runs, "random_final_error": r_err,
                                             "uncertainty_runs_to_reach_it": need,
                                             "met": need is not None and need <= r_runs / 2,
                                             "by_budget": _half_budget_by_budget(out["by_strategy"], finals)}
    five = {s: v["at_fraction"]["5%"]["median_ape"] for s, v in out["by_strategy"].items()}
    checks["error_at_5pct_le_10pct"] = {"median_ape": five, "met": {s: bool(e <= 0.10) for s, e in five.items()}}
    if "search" in out["by_strategy"]:
        at10 = out["by_strategy"]["search"]["at_fraction"]["10%"]
        checks["search_within_3pct_ge_90pct_at_10pct"] = {
            "share_of_scenarios": at10["within_3pct"], "share_of_measured_scenarios": at10["within_3pct_of_measured_scenarios"],
            "runs": at10["runs"], "scenarios": scenarios,
            "ceiling": min(1.0, at10["runs"] / scenarios) if scenarios else None,  # one run per scenario at most
            # "true best": the best configuration of the scenario that ran (failed pool rows never count); the search
            # target is judged on the measured best (share_of_scenarios); also reported: the configuration the
            # campaign would recommend per scenario (the best that ran among those measured, else the model's pick
            # among configurations not predicted likely to fail) and the model's pick where predicted and measured
            # values compete; failed_runs: runs of the budget that failed (OOM / error)
            "recommended_share_of_scenarios": at10.get("recommended_within_3pct"),
            "model_pick_share_of_scenarios": at10.get("model_pick_within_3pct"),
            "failed_runs": at10.get("failed_runs"),
            "met": bool(at10["within_3pct"] >= 0.9)}
    out["checks"] = checks
    return out


def _half_budget_by_budget(by_strategy: dict, finals: dict) -> list[dict]:
    """The half-budget comparison at each smaller budget too, as if the campaigns had stopped there: random's error
    at the budget, the fewest runs with which uncertainty's median curve reaches it (on its batch grid: the runs
    needed may lie between two points), and uncertainty's error at the curve point nearest half the budget."""
    out = []
    for f in FRACTIONS:
        budget = by_strategy["random"]["at_fraction"][f"{f:.0%}"]
        r_err = budget["median_ape"]
        need = _runs_to_reach(finals["uncertainty"], r_err)
        half = min(finals["uncertainty"], key=lambda k: (abs(k - budget["runs"] / 2), k))
        out.append({"budget": f"{f:.0%}", "runs": budget["runs"], "random_error": r_err,
                    "uncertainty_runs_to_reach_it": need,
                    "uncertainty_runs_near_half": half, "uncertainty_error_near_half": finals["uncertainty"][half][0],
                    "met": need is not None and need <= budget["runs"] / 2})
    return out


def _runs_to_reach(median_curve: dict, error: float) -> int | None:
    """The fewest runs at which a median curve ({runs: (error, ...)}) is at or below `error` (None: never)."""
    return next((k for k, (e, *_) in sorted(median_curve.items()) if e <= error), None)


def figure(summaries: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 3.6 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        s = summaries[name]
        for strategy, v in s["by_strategy"].items():
            ks = sorted(int(k) for k in v["curve"])
            x = [100.0 * k / s["configs"] for k in ks]
            axes[i, 0].plot(x, [100 * v["curve"][str(k)][0] for k in ks], marker="o", label=strategy)
            line = axes[i, 1].plot(x, [100 * v["curve"][str(k)][1] for k in ks], marker="o", label=f"{strategy}: best measured")
            if strategy == "search" and all(len(v["curve"][str(k)]) > 2 and v["curve"][str(k)][2] is not None for k in ks):
                axes[i, 1].plot(x, [100 * v["curve"][str(k)][2] for k in ks], linestyle="--", color=line[0].get_color(),
                                label=f"{strategy}: recommended")
        axes[i, 0].axhline(10, color="grey", linestyle=":", linewidth=1)
        axes[i, 0].set_title(f"{name}: median error of {s['target']} on unmeasured rows")
        axes[i, 0].set_ylabel("median APE %")
        axes[i, 1].axhline(90, color="grey", linestyle=":", linewidth=1)
        axes[i, 1].set_title(f"{name}: scenarios with a configuration within 3% of the best")
        axes[i, 1].set_ylabel("% of scenarios")
        axes[i, 1].set_ylim(0, 100)
    save_curves_figure(fig, axes.ravel(), path)


def save_curves_figure(fig, axes, path) -> None:
    """Label every axis as a curve over the share of a pool measured, grid and legend it, save the figure, close it."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel("% of the pool measured")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="campaigns per pool and strategy (per-seed results move "
                    "by a scenario or two, see `runs` in the result file)")
    ap.add_argument("--pools", default=",".join(POOLS))
    ap.add_argument("--max-fraction", type=float, default=0.10)
    ap.add_argument("--quick", action="store_true", help="one seed, pools as given")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help="the strategies to run; the other strategies' "
                    "runs of the same pools and seeds are kept from benchmarks/results/campaign.json")
    ap.add_argument("--resummarise", action="store_true", help="recompute the summary of the last results file "
                    "(no campaign is run)")
    args = ap.parse_args(argv)
    if args.resummarise:
        return resummarise(Console(width=200))
    seeds = range(1 if args.quick else args.seeds)
    console = Console(width=200)
    summaries, all_runs = {}, []
    strategies = [x.strip() for x in args.strategies.split(",") if x.strip()]
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        ap.exit(2, f"error: unknown strategies {unknown} (choose from {', '.join(STRATEGIES)})\n")
    kept = _kept_runs(set(STRATEGIES) - set(strategies), set(seeds))
    code = code_version()  # the commit whose code these runs load (read once, before any runs)
    for name in [p.strip() for p in args.pools.split(",") if p.strip()]:
        if not (SHARED_DATA / POOLS[name][1]).exists():
            console.print(f"[yellow]skip {name}: {SHARED_DATA / POOLS[name][1]} is absent[/yellow]")
            continue
        rb, cand = load(name)
        kind, scenario, objective_name = POOLS[name][3], POOLS[name][4], POOLS[name][5]
        objective = resolve_objective(objective_name, kind)
        targets = default_targets(kind, objective)
        evaluator = PoolEvaluator(rb.frame, objective, scenario, targets, kind)
        console.print(f"[bold]{name}[/bold]: {len(cand):,} configurations, {len(evaluator.true_best):,} scenarios "
                      f"(objective {objective.name}, error on {objective.target})")
        runs = [r for r in kept if r["pool"] == name]
        for seed in seeds:
            for strategy in strategies:
                r = run_one(name, rb, cand, evaluator, strategy, seed, args.max_fraction, code)
                last = r["curve"][-1]
                console.print(f"  {strategy:12s} seed {seed}: {last['runs']} runs, held-out "
                              f"{last['heldout'].get(objective.target, float('nan')):.1%}, within 3% in "
                              f"{(last['within_3pct'] or 0):.0%} of scenarios ({r['seconds']:.0f} s)")
                runs.append(r)
        all_runs += runs
        summaries[name] = summarise(name, runs, objective.target, len(evaluator.true_best))
        _print(console, name, summaries[name])
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / "campaign.png"
    if summaries:
        figure(summaries, png)
    path = write_result("campaign", {"seeds": len(list(seeds)), "fractions": list(FRACTIONS), "pools": summaries,
                                     "runs": all_runs, "figure": str(png.name)})
    console.print(f"wrote {path} and {png}")
    return summaries


def _kept_runs(strategies: set[str], seeds: set[int]) -> list[dict]:
    """The runs of `strategies` and `seeds` in the last results file (none when it is absent or none are asked for)."""
    path = RESULTS / "campaign.json"
    if not strategies or not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["runs"] if r["strategy"] in strategies and r["seed"] in seeds]


def resummarise(console: Console) -> dict:
    """Summaries, tables and figure again from the curves stored in benchmarks/results/campaign.json."""
    doc = json.loads((RESULTS / "campaign.json").read_text())
    summaries = {}
    for name, old in doc["pools"].items():
        runs = [r for r in doc["runs"] if r["pool"] == name]
        summaries[name] = summarise(name, runs, old["target"], old.get("scenarios") or _scenarios(name))
        _print(console, name, summaries[name])
    figure(summaries, RESULTS / "campaign.png")
    doc["pools"] = summaries
    path = write_result("campaign", {k: v for k, v in doc.items() if k not in ("benchmark", "machine")})
    console.print(f"wrote {path} and {RESULTS / 'campaign.png'}")
    return summaries


def _scenarios(name: str) -> int:
    rb, _ = load(name)
    kind, scenario, objective_name = POOLS[name][3], POOLS[name][4], POOLS[name][5]
    objective = resolve_objective(objective_name, kind)
    return len(PoolEvaluator(rb.frame, objective, scenario, default_targets(kind, objective), kind).true_best)


def _print(console: Console, name: str, s: dict) -> None:
    t = Table(title=f"{name}: median over seeds, {s['configs']:,} configurations, {s['scenarios']} scenarios (within 3%: "
              f"best measured vs the best that ran; recommended: best measured, else the model's likely-to-run pick)")
    t.add_column("strategy")
    for f in FRACTIONS:
        t.add_column(f"{f:.0%} err", justify="right")
    for f in FRACTIONS:
        t.add_column(f"{f:.0%} within 3%", justify="right")
    for f in FRACTIONS:
        t.add_column(f"{f:.0%} recommended", justify="right")
    t.add_column("failed runs", justify="right")

    def pct(x):
        return "-" if x is None or not np.isfinite(x) else f"{x:.0%}"

    for strategy, v in s["by_strategy"].items():
        a = v["at_fraction"]
        top = a[f"{FRACTIONS[-1]:.0%}"]
        t.add_row(strategy, *[f"{a[f'{f:.0%}']['median_ape']:.1%}" for f in FRACTIONS],
                  *[f"{a[f'{f:.0%}']['within_3pct']:.0%}" for f in FRACTIONS],
                  *[pct(a[f"{f:.0%}"].get("recommended_within_3pct")) for f in FRACTIONS],
                  f"{top.get('failed_runs', float('nan')):.0f}/{top['runs']}")
    console.print(t)
    for k, v in s["checks"].items():
        console.print(f"  {k}: { {a: b for a, b in v.items() if a != 'by_budget'} }")
    by_budget = s["checks"].get("uncertainty_half_budget", {}).get("by_budget")
    if by_budget:
        h = Table(title=f"{name}: uncertainty vs random's error at each budget (met: reached with at most half of it)")
        for c in ("budget", "runs", "random error", "uncertainty runs to reach it", "uncertainty near half",
                  "met"):
            h.add_column(c, justify="right")
        for b in by_budget:
            need = b["uncertainty_runs_to_reach_it"]
            h.add_row(b["budget"], str(b["runs"]), f"{b['random_error']:.1%}", "-" if need is None else str(need),
                      f"{b['uncertainty_error_near_half']:.1%} at {b['uncertainty_runs_near_half']}",
                      "yes" if b["met"] else "no")
        console.print(h)


if __name__ == "__main__":
    main()
