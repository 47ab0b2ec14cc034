"""Measure how far the physics-only model is from real data and write data/physics_uncertainty.json.

For each target: the 10th and 90th percentiles of log(measured / physics) over every real measurement in the shared
data sets (serving targets: TRT-LLM perf overview, DLI sweep, NIM, aiconfigurator end-to-end, LLM-Inference-Bench;
step targets: the H200 GPU probe with the layer constants refitted leaving each model out). The physics has no
parameter fitted on serving data, so all of it is held out. `Predictor` uses these as the 80% interval when no
learned model is loaded.   python scripts/physics_uncertainty.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from features.catalog import DATA_DIR
from features.frame import physics_frame
from features.schema import SERVING_TARGETS

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["trtllm-perf", "dli", "nim", "aiconfigurator", "llm-inference-bench"]


def main() -> int:
    from collect.importers import SHARED_PATHS, run_import  # scripts may use every package
    from features.calibrate import fit_calibration, predict_probe_layer_ms

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    frames = []
    for src in SOURCES:
        df, _ = run_import(src, Path(args.shared) / SHARED_PATHS[src])
        frames.append(df[(df["kind"] == "serving") & (df["status"] == "ok")])
    serving = physics_frame(pd.concat(frames, ignore_index=True))
    out = {}
    for t in SERVING_TARGETS:
        m = serving[t].to_numpy(dtype=float)
        p = serving[f"phys_{t}"].to_numpy(dtype=float)
        ok = np.isfinite(m) & np.isfinite(p) & (m > 0) & (p > 0)
        if ok.sum() >= 20:
            r = np.log(m[ok] / p[ok])
            out[t] = [float(np.quantile(r, 0.1)), float(np.quantile(r, 0.9))]
            print(f"{t:22s} n={ok.sum():6d}  80% of log(measured/physics) in [{out[t][0]:+.2f}, {out[t][1]:+.2f}]")
    step = pd.read_csv(DATA_DIR / "gpu_probe" / "h200_step.csv")
    layers = step[step["kind"].isin(["decode", "prefill"])].reset_index(drop=True)
    r = np.empty(len(layers))
    for model in layers["model"].unique():
        idx = np.flatnonzero(layers["model"] == model)
        cal = fit_calibration(step, None, holdout_models=(model,))
        r[idx] = np.log(layers["ms_median"].to_numpy()[idx] / predict_probe_layer_ms(layers.iloc[idx].reset_index(drop=True), cal))
    out["layer_ms"] = [float(np.quantile(r, 0.1)), float(np.quantile(r, 0.9))]
    print(f"{'layer_ms':22s} n={len(r):6d}  80% of log(measured/physics) in [{out['layer_ms'][0]:+.2f}, {out['layer_ms'][1]:+.2f}]")
    doc = {"what": "10th/90th percentiles of log(measured / physics) on held-out real data", "made": str(date.today()),
           "sources": SOURCES + ["gpu-probe (leave-one-model-out)"], "targets": out}
    path = DATA_DIR / "physics_uncertainty.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
