"""Physics-model error on the H200 GPU-probe step data, holding out whole models.

For each model, the layer constants are refitted without that model's rows (GEMM and attention op timings are
model-agnostic and stay), then that model's decode and prefill layer times are predicted. Prints a table and
writes benchmarks/results/accuracy_step.json. Target (issue 2): median APE <= 10%, p90 <= 25%.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from benchmarks._common import REPO, write_result
from features.calibrate import fit_calibration, predict_probe_layer_ms


def main() -> dict:
    step = pd.read_csv(REPO / "data" / "gpu_probe" / "h200_step.csv")
    layers = step[step["kind"].isin(["decode", "prefill"])].reset_index(drop=True)
    preds = np.full(len(layers), np.nan)
    for model in sorted(layers["model"].unique()):
        cal = fit_calibration(step, None, holdout_models=(model,))
        idx = np.flatnonzero(layers["model"] == model)
        preds[idx] = predict_probe_layer_ms(layers.iloc[idx].reset_index(drop=True), cal)
    layers["pred_ms"] = preds
    layers["ape"] = np.abs(layers["pred_ms"] / layers["ms_median"] - 1.0)
    rows = []
    for (model, kind), g in layers.groupby(["model", "kind"]):
        rows.append({"model": model, "kind": kind, "n": len(g), "median_ape": float(g["ape"].median()),
                     "p90_ape": float(g["ape"].quantile(0.9))})
    overall = {"n": len(layers), "median_ape": float(layers["ape"].median()), "p90_ape": float(layers["ape"].quantile(0.9))}
    t = Table(title="physics layer_ms error, leave-one-model-out (H200 GPU probe)")
    for c in ("model", "kind", "rows", "median APE", "p90 APE"):
        t.add_column(c, justify="right" if c not in ("model", "kind") else "left")
    for r in rows:
        t.add_row(r["model"], r["kind"], str(r["n"]), f"{r['median_ape']:.1%}", f"{r['p90_ape']:.1%}")
    t.add_row("ALL", "", str(overall["n"]), f"{overall['median_ape']:.1%}", f"{overall['p90_ape']:.1%}", style="bold")
    Console(width=120).print(t)
    ok = overall["median_ape"] <= 0.10 and overall["p90_ape"] <= 0.25
    print(f"target median <= 10% and p90 <= 25%: {'met' if ok else 'NOT met'}")
    path = write_result("accuracy_step", {"split": "leave-one-model-out", "overall": overall, "per_model": rows,
                                          "target": {"median_ape": 0.10, "p90_ape": 0.25}, "met": ok})
    print(f"wrote {path}")
    return overall


if __name__ == "__main__":
    main()
