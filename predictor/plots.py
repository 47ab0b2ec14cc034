"""Plots a person would rather see than read: search candidates with the Pareto front marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from predictor.search import OBJECTIVES, SECONDARY  # noqa: E402

REGIME_COLORS = {"capacity": "tab:red", "bandwidth": "tab:blue", "compute": "tab:green", "communication": "tab:orange"}
MODE_MARKERS = {"aggregated": "o", "mixed": "s", "disaggregated": "^"}
Y_LABELS = {"throughput": "predicted output tokens/s", "makespan": "predicted makespan (s)",
            "tpot": "predicted TPOT (ms)", "ttft": "predicted TTFT (ms)"}


def plot_search(result, path: str) -> str:
    """Objective (or throughput per GPU, for a Pareto search) vs latency for every feasible candidate scored:
    colour = the regime that binds, marker = deployment mode; the Pareto front, the best and the SLO marked."""
    if result.secondary:
        col, ylabel, xcol = "throughput_per_gpu", "predicted output tokens/s per GPU", SECONDARY[result.secondary]
    else:
        col, ylabel, xcol = OBJECTIVES[result.objective][0], Y_LABELS[result.objective], "pred_tpot_ms"
    xlabel = {"pred_tpot_ms": "predicted TPOT (ms)", "pred_ttft_ms": "predicted TTFT (ms)"}[xcol]
    df = result.ranked[result.ranked["feasible"] & np.isfinite(result.ranked[col].astype(float))]
    if len(df) > 20000:  # a readable cloud: the best per layout plus a sample
        df = df.groupby("layout", sort=False).head(3)
    fig, ax = plt.subplots(figsize=(8.5, 5.8))
    if result.slo and "meets_slo" in df.columns:
        miss = df[~df["meets_slo"].astype(bool)]
        ax.scatter(miss[xcol], miss[col], s=14, alpha=0.35, color="lightgrey", label="misses the SLO")
        df = df[df["meets_slo"].astype(bool)]
    for (regime, mode), g in df.groupby(["regime", "mode"]):
        ax.scatter(g[xcol], g[col], s=22, alpha=0.55, color=REGIME_COLORS.get(regime, "grey"),
                   marker=MODE_MARKERS.get(mode, "o"), label=f"{regime}-bound, {mode}")
    if len(result.pareto):
        p = result.pareto.sort_values(xcol)
        ax.plot(p[xcol], p[col], "k--", lw=1.2, label="Pareto front")
        for _, r in p.head(12).iterrows():
            ax.annotate(r["layout"], (r[xcol], r[col]), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
    if result.best:
        ax.scatter([result.best[xcol]], [result.best[col]], s=170, facecolors="none", edgecolors="k", lw=2,
                   label=f"best: {result.best['layout']}")
    for k, v in result.slo.items():
        if ("tpot" in k and xcol == "pred_tpot_ms") or ("ttft" in k and xcol == "pred_ttft_ms"):
            ax.axvline(v, color="grey", ls=":", label=f"SLO {k} {v:g}")
    if len(df) and (df[xcol].max() / max(df[xcol].min(), 1e-9)) > 50:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    what = f"throughput per GPU vs {result.secondary}" if result.secondary else result.objective
    ax.set_title(f"layoutcast search: {what}\n{result.method}", fontsize=9)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
