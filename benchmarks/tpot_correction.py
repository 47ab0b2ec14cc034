"""How far the bundled model's step-speed correction sits from what comparable real runs measured.

A closed-batch search scales the scheduler simulation's step time by the learned TPOT over the physics TPOT of the
workload's steady state (`predictor.refine._learned_speed`). This prints, for the study's dense models on 8xH200
serving the `reasoning` workload (2,000 requests), that factor per 8-GPU layout; and, from every shared serving
measurement with a large batch (a concurrency of 64 or more, or a closed batch of 64 or more requests with
`max_num_seqs` 64 or more) and long outputs (2,048 tokens or more), the median measured TPOT over physics TPOT by TP
degree: the rows nearest this workload. Writes benchmarks/results/tpot_correction.json.

    .venv/bin/python -m benchmarks.tpot_correction
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from benchmarks._common import SHARED_DATA, write_result
from benchmarks.accuracy import _load_builder
from features.catalog import resolve_workload
from features.specs import EngineConfig, Layout
from predictor.api import Predictor, scenario_row
from train.frames import float_column, physics

MODELS = ("deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-14b", "deepseek-r1-distill-qwen-32b")
LAYOUTS = {"TP8": Layout(8, 1, 1), "TP4xDP2": Layout(4, 1, 2), "TP2xDP4": Layout(2, 1, 4), "DP8": Layout(1, 1, 8)}
MIN_BATCH, MIN_OSL = 64, 2048


def learned_factors(predictor: Predictor) -> dict[str, dict[str, float]]:
    """Learned / physics TPOT per model and layout for the reasoning workload on 8xH200 (NaN where infeasible)."""
    wl = dataclasses.replace(resolve_workload("reasoning"), num_requests=2000)
    rows = [scenario_row(m, "h200", lay, wl, EngineConfig()) for m in MODELS for lay in LAYOUTS.values()]
    r = predictor.predict_frame(pd.DataFrame(rows))
    ratio = (float_column(r, "pred_tpot_ms") / float_column(r, "phys_tpot_ms")).reshape(len(MODELS), len(LAYOUTS))
    return {m: dict(zip(LAYOUTS, map(float, ratio[i]))) for i, m in enumerate(MODELS)}


def measured_factors() -> dict[str, dict[str, float]]:
    """Median measured / physics TPOT by TP over shared serving rows with large batches and long outputs."""
    rows = pd.concat(_load_builder().shared_measurements(SHARED_DATA), ignore_index=True)
    ph = physics(rows[rows["kind"] == "serving"].reset_index(drop=True))
    ratio = float_column(ph, "tpot_ms") / float_column(ph, "phys_tpot_ms")
    closed = np.fmin(float_column(ph, "num_requests"), float_column(ph, "max_num_seqs"))
    batch = np.fmax(float_column(ph, "concurrency"), closed)
    use = (batch >= MIN_BATCH) & (float_column(ph, "osl") >= MIN_OSL) & np.isfinite(ratio) & (ratio > 0)
    tp = float_column(ph, "tp")
    out = {}
    for t in sorted(set(tp[use].astype(int))):
        m = use & (tp == t)
        out[f"TP{t}"] = {"median": float(np.median(ratio[m])), "rows": int(m.sum()),
                         "sources": sorted(set(ph.loc[m, "source"].astype(str)))}
    return out


def main() -> None:
    console = Console()
    learned = learned_factors(Predictor.load())
    t = Table(title="learned / physics TPOT, reasoning workload, 8xH200 (bundled model)")
    t.add_column("model")
    for name in LAYOUTS:
        t.add_column(name, justify="right")
    for m, row in learned.items():
        t.add_row(m, *(f"{v:.2f}" for v in row.values()))
    console.print(t)
    measured = measured_factors()
    t = Table(title=f"measured / physics TPOT, shared serving rows, batch >= {MIN_BATCH}, output >= {MIN_OSL} tokens")
    for c in ("TP", "median", "rows", "sources"):
        t.add_column(c, justify="right" if c in ("median", "rows") else "left")
    for k, v in measured.items():
        t.add_row(k, f"{v['median']:.2f}", str(v["rows"]), ", ".join(v["sources"]))
    console.print(t)
    path = write_result("tpot_correction", {"learned": learned, "measured": measured,
                                            "min_batch": MIN_BATCH, "min_osl": MIN_OSL})
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
