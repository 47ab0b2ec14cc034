"""Accuracy metrics: percentage errors, interval coverage, rank correlation across layouts, regret of the pick."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from train.splits import layout_code
from train.targets import HIGHER_IS_BETTER, PER_GPU_TARGETS, pred_cols

# every configuration column except the layout: rows sharing these differ only in how the GPUs are laid out
SCENARIO_COLUMNS = (
    "kind", "source", "engine", "engine_version", "model", "weight_dtype", "kv_dtype", "gpu", "gpus_per_node",
    "isl", "osl", "isl_dist", "osl_dist", "num_requests", "concurrency", "request_rate", "max_num_seqs",
    "max_num_batched_tokens", "gpu_memory_utilization", "block_size", "phase", "batch", "context", "tokens", "op",
)


def abs_pct_error(pred: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """|pred - measured| / measured, as a fraction."""
    return np.abs(pred - measured) / measured


def scenario_key(frame: pd.DataFrame) -> pd.Series:
    """One string per row naming its scenario (model, GPU, workload, engine, shape), ignoring the layout."""
    cols = [c for c in SCENARIO_COLUMNS if c in frame.columns]
    if not cols:
        return pd.Series("all", index=frame.index)
    return frame[cols].astype("string").fillna("").agg("|".join, axis=1)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def layout_ranking(frame: pd.DataFrame, target: str) -> dict:
    """Spearman correlation of predicted vs measured across the layouts of each scenario, and the pick's regret.

    Regret is how much worse the measured value of the layout with the best prediction is than the best
    measured layout of the scenario (a fraction, 0 = the right pick). Throughput targets are compared per GPU,
    as a search over a GPU budget does. Only scenarios with at least two distinct layouts count.
    """
    pred = frame[pred_cols(target)[0]].to_numpy(float)
    meas = frame[target].to_numpy(float)
    if target in PER_GPU_TARGETS and "num_gpus" in frame.columns:
        n = pd.to_numeric(frame["num_gpus"], errors="coerce").fillna(1).to_numpy(float)
        pred, meas = pred / n, meas / n
    work = pd.DataFrame({"s": scenario_key(frame).to_numpy(), "l": layout_code(frame), "p": pred, "m": meas})
    work = work[np.isfinite(work["p"]) & np.isfinite(work["m"])]
    rhos, regrets, picks = [], [], []
    sign = 1.0 if target in HIGHER_IS_BETTER else -1.0
    for _, g in work.groupby("s", sort=False):
        if g["l"].nunique() < 2:
            continue
        best_measured = (sign * g["m"]).max()
        picked = g["m"].to_numpy()[np.argmax(sign * g["p"].to_numpy())]
        regrets.append(abs(sign * best_measured - picked) / abs(best_measured) if best_measured else 0.0)
        picks.append(float(np.isclose(sign * picked, best_measured)))
        if g["l"].nunique() >= 3 and g["p"].nunique() > 1 and g["m"].nunique() > 1:
            rhos.append(spearmanr(g["p"], g["m"]).statistic)
    return {
        "n_scenarios": len(regrets),
        "spearman_mean": _nan_to_none(float(np.nanmean(rhos))) if rhos else None,
        "spearman_median": _nan_to_none(float(np.nanmedian(rhos))) if rhos else None,
        "n_spearman": len(rhos),
        "regret_mean": float(np.mean(regrets)) if regrets else None,
        "regret_median": float(np.median(regrets)) if regrets else None,
        "best_pick_rate": float(np.mean(picks)) if picks else None,
    }


def target_report(frame: pd.DataFrame, target: str) -> dict:
    """Median and 90th-percentile APE, interval coverage and layout ranking for one target's predicted rows."""
    p, lo, hi = pred_cols(target)
    if target not in frame.columns or p not in frame.columns:
        return {"n": 0}
    meas = pd.to_numeric(frame[target], errors="coerce").to_numpy(float)
    pred = frame[p].to_numpy(float)
    ok = np.isfinite(meas) & (meas > 0) & np.isfinite(pred)
    if not ok.any():
        return {"n": 0}
    sub = frame[ok]
    err = abs_pct_error(pred[ok], meas[ok])
    out = {
        "n": int(ok.sum()),
        "median_ape": float(np.median(err)),
        "p90_ape": float(np.quantile(err, 0.9)),
        "mean_abs_log_error": float(np.mean(np.abs(np.log(np.maximum(pred[ok], 1e-300)) - np.log(meas[ok])))),
    }
    if lo in frame.columns and hi in frame.columns:
        lo_v, hi_v = frame[lo].to_numpy(float)[ok], frame[hi].to_numpy(float)[ok]
        out["coverage"] = float(np.mean((meas[ok] >= lo_v) & (meas[ok] <= hi_v)))
        out["median_interval_ratio"] = float(np.median(hi_v / np.maximum(lo_v, 1e-300)))
    out.update(layout_ranking(sub, target))
    return out


def group_errors(frame: pd.DataFrame, target: str, group: pd.Series) -> pd.DataFrame:
    """Per-row absolute percentage error of `target` with the row's group, for error-by-group plots and tables."""
    p = pred_cols(target)[0]
    meas = pd.to_numeric(frame[target], errors="coerce").to_numpy(float)
    pred = frame[p].to_numpy(float)
    ok = np.isfinite(meas) & (meas > 0) & np.isfinite(pred)
    return pd.DataFrame({"group": group.to_numpy()[ok], "ape": abs_pct_error(pred[ok], meas[ok])})
