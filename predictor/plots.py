"""Plots a person would rather see than read: search candidates with the Pareto front marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from predictor.search import OBJECTIVES  # noqa: E402


def plot_search(result, path: str) -> str:
    """Objective vs TPOT for every feasible candidate, coloured by regime; Pareto front and the best marked."""
    col, direction = OBJECTIVES[result.objective]
    df = result.ranked[result.ranked["feasible"] & np.isfinite(result.ranked[col])]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {"capacity": "tab:red", "bandwidth": "tab:blue", "compute": "tab:green", "communication": "tab:orange"}
    for regime, g in df.groupby("regime"):
        ax.scatter(g["pred_tpot_ms"], g[col], s=28, alpha=0.7, color=colors.get(regime, "grey"), label=f"{regime}-bound")
    if len(result.pareto):
        p = result.pareto.sort_values("pred_tpot_ms")
        ax.plot(p["pred_tpot_ms"], p[col], "k--", lw=1.2, label="Pareto front")
        for _, r in p.iterrows():
            ax.annotate(r["layout"], (r["pred_tpot_ms"], r[col]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if result.best:
        ax.scatter([result.best["pred_tpot_ms"]], [result.best[col]], s=160, facecolors="none", edgecolors="k", lw=2,
                   label=f"best: {result.best['layout']}")
    for k, v in result.slo.items():
        if k.startswith("tpot"):
            ax.axvline(v, color="grey", ls=":", label=f"SLO {k} {v:g}")
    ax.set_xlabel("predicted TPOT (ms)")
    ax.set_ylabel({"throughput": "predicted output tokens/s", "makespan": "predicted makespan (s)",
                   "tpot": "predicted TPOT (ms)"}[result.objective])
    ax.set_title(f"layoutcast search: {result.objective} ({result.method})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
