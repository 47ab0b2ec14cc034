"""PNG figures of an evaluation: parity (predicted vs measured) and error by group, one row per target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from train.metrics import group_errors
from train.targets import pred_cols


def evaluation_figure(preds: pd.DataFrame, targets: list[str], groups: pd.Series, path: str | Path,
                      title: str = "") -> Path:
    """Write one PNG: for each target a log-log parity plot with its 80% intervals and APE box plots per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in targets if pred_cols(t)[0] in preds.columns]
    n = max(1, len(targets))
    fig, axes = plt.subplots(n, 2, figsize=(12, 3.6 * n), squeeze=False)
    for i, t in enumerate(targets):
        p, lo, hi = pred_cols(t)
        meas = pd.to_numeric(preds[t], errors="coerce").to_numpy(float)
        pred = preds[p].to_numpy(float)
        ok = np.isfinite(meas) & (meas > 0) & np.isfinite(pred) & (pred > 0)
        ax = axes[i, 0]
        if lo in preds.columns:
            ax.errorbar(meas[ok], pred[ok], yerr=[pred[ok] - preds[lo].to_numpy(float)[ok],
                                                 preds[hi].to_numpy(float)[ok] - pred[ok]],
                        fmt="none", ecolor="0.8", lw=0.5, zorder=1)
        ax.scatter(meas[ok], pred[ok], s=6, alpha=0.6, zorder=2)
        if ok.any():
            a, b = np.min([meas[ok], pred[ok]]), np.max([meas[ok], pred[ok]])
            ax.plot([a, b], [a, b], "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel=f"measured {t}", ylabel=f"predicted {t}", title=f"{t}: parity")
        errs = group_errors(preds, t, groups)
        ax = axes[i, 1]
        if len(errs):
            order = errs.groupby("group")["ape"].median().sort_values().index.tolist()[:30]
            ax.boxplot([100 * errs.loc[errs["group"] == g, "ape"].to_numpy() for g in order], showfliers=False)
            ax.set_xticks(range(1, len(order) + 1), order, rotation=60, ha="right", fontsize=7)
        ax.set(ylabel="absolute % error", title=f"{t}: error by group")
    top = 1.0 - 0.45 / (3.6 * n)  # room for the title above the first row
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, top if title else 1.0))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
