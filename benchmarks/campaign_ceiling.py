"""How much can choosing what to measure help at all? Replayed campaigns whose selection is told the truth.

Issue 6 asks `uncertainty` to reach `random`'s final error (10% of a pool) with at most half the runs. This benchmark
bounds what any error-driven selection can do with the campaign's learner (`collect.acquisition.Surrogate`: the same
point predictions a campaign scores) on the real pools of `benchmarks/campaign.py`. After each batch the learner is
refitted and the next batch chosen among the untried configurations by

- `random`: uniformly (the baseline);
- `largest_error`: the configurations the current model gets most wrong (mean |log(predicted / measured)| over the
  configuration's pool rows), read from the pool's targets -- what a perfect uncertainty estimate would point at;
- `median_error`: the configurations whose error is nearest the current median error, also read from the targets
  -- the rows that decide the metric (the median absolute % error on the rest of the pool).

Both oracles cheat (they read targets no campaign may read); if neither reaches random's final error with half the
runs, no uncertainty estimate, however good, makes error-driven selection do it with this learner on this pool.
Every strategy starts from the same random first batch; budgets, batches and the error metric are those of
`benchmarks/campaign.py`.

    .venv/bin/python -m benchmarks.campaign_ceiling [--pools aiconfigurator,dli] [--seeds 3]

Prints a table, writes benchmarks/results/campaign_ceiling.json and campaign_ceiling.png.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks._common import RESULTS, SHARED_DATA, write_result
from benchmarks.campaign import POOLS, load, save_curves_figure
from collect.acquisition import Surrogate, resolve_objective
from collect.campaign import PoolEvaluator, default_targets
from collect.sampler import config_hashes
from train.frames import float_column
from train.targets import pred_cols

MODES = ("random", "largest_error", "median_error")


def run_pool(name: str, seeds: range, progress: Progress) -> dict:
    """Learning curves (median over seeds) of every mode on one pool."""
    rb, cand = load(name)
    _, _, _, kind, scenario, objective_name = POOLS[name]
    objective = resolve_objective(objective_name, kind)
    targets = default_targets(kind, objective)
    target = objective.target
    ev = PoolEvaluator(rb.frame, objective, scenario, targets, kind)
    phys, hashes = ev.phys, ev.hashes
    measured = float_column(phys, target)
    good = ev.ok & np.isfinite(measured) & (measured > 0)
    configs = np.asarray(config_hashes(cand), dtype=object)
    n = len(configs)
    batch, budget = max(4, math.ceil(n / 100)), int(round(0.10 * n))
    curves: dict[str, list[dict[int, float]]] = {m: [] for m in MODES}
    task = progress.add_task(f"{name}", total=len(MODES) * len(seeds))
    for mode in MODES:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            chosen = list(rng.choice(configs, batch, replace=False))
            curve: dict[int, float] = {}
            while True:
                sur = Surrogate(targets, seed=seed, members=0).fit(phys[np.isin(hashes, chosen)])
                rest = good & ~np.isin(hashes, chosen)
                pred = sur.model.predict_arrays(phys[rest])[pred_cols(target)[0]]
                ape = np.abs(pred / measured[rest] - 1.0)
                curve[len(chosen)] = float(np.nanmedian(ape))
                if len(chosen) >= budget:
                    break
                k = min(batch, budget - len(chosen))
                untried = np.setdiff1d(configs, chosen)
                if mode == "random":
                    chosen += list(rng.choice(untried, k, replace=False))
                    continue
                err = pd.Series(np.abs(np.log(pred / measured[rest])), index=hashes[rest]).groupby(level=0).mean()
                if mode == "median_error":
                    err = -(err - math.log1p(float(np.nanmedian(ape)))).abs()
                err = err.reindex(untried).fillna(-np.inf)  # untried configurations with no good pool row: last
                chosen += list(err.sort_values(ascending=False, kind="stable").index[:k])
            curves[mode].append(curve)
            progress.advance(task)
    grid = sorted(curves["random"][0])
    median = {m: {k: float(np.median([c[k] for c in curves[m]])) for k in grid} for m in MODES}
    final = median["random"][grid[-1]]
    reach = {m: next((k for k in grid if median[m][k] <= final), None) for m in MODES}
    half = grid[-1] / 2
    return {"configs": n, "batch": batch, "budget": budget, "target": target, "seeds": len(seeds),
            "curves": {m: {str(k): v for k, v in median[m].items()} for m in MODES},
            "per_seed": {m: [{str(k): v for k, v in c.items()} for c in curves[m]] for m in MODES},
            "random_final_error": final, "runs_to_reach_random_final": reach,
            "any_mode_reaches_it_with_half_budget": any(r is not None and r <= half for m, r in reach.items()
                                                        if m != "random")}


def figure(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for mode in MODES:
            ks = sorted(int(k) for k in r["curves"][mode])
            ax.plot([100 * k / r["configs"] for k in ks], [100 * r["curves"][mode][str(k)] for k in ks], marker="o",
                    label=mode)
        ax.axhline(100 * r["random_final_error"], color="grey", ls=":", lw=1)
        ax.axvline(5, color="grey", ls=":", lw=1)
        ax.set_title(f"{name}: median error of {r['target']} on unmeasured rows")
        ax.set_ylabel("median APE %")
    save_curves_figure(fig, axes[0], path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", default="aiconfigurator,dli")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    console = Console(width=160)
    results: dict = {}
    t0 = time.monotonic()
    with Progress(console=console) as progress:
        for name in [p.strip() for p in args.pools.split(",") if p.strip()]:
            if name not in POOLS:
                raise SystemExit(f"unknown pool {name!r} (choose from {', '.join(POOLS)})")
            if not (SHARED_DATA / POOLS[name][1]).exists():
                console.print(f"[yellow]skip {name}: {SHARED_DATA / POOLS[name][1]} is absent[/yellow]")
                continue
            results[name] = run_pool(name, range(args.seeds), progress)
    table = Table(title="error-driven selection told the truth vs random (median over seeds)")
    for col in ("pool", "mode", "error at 5%", "error at 10%", "runs to reach random's final", "half budget"):
        table.add_column(col, justify="left" if col in ("pool", "mode") else "right")
    for name, r in results.items():
        grid = sorted(int(k) for k in r["curves"]["random"])
        at5 = min(grid, key=lambda k: (abs(k - 0.05 * r["configs"]), k))
        for mode in MODES:
            reach = r["runs_to_reach_random_final"][mode]
            table.add_row(name, mode, f"{r['curves'][mode][str(at5)]:.1%}", f"{r['curves'][mode][str(grid[-1])]:.1%}",
                          "-" if reach is None else str(reach), f"{grid[-1] // 2}")
    console.print(table)
    png = RESULTS / "campaign_ceiling.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if results:
        figure(results, png)
    path = write_result("campaign_ceiling", {"pools": results, "modes": list(MODES), "figure": png.name,
                                             "seconds": round(time.monotonic() - t0, 1)})
    console.print(f"wrote {path} and {png}")
    return results


if __name__ == "__main__":
    main()
