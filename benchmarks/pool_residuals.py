"""Where the physics misses on a campaign pool: log(measured / physics) by concurrency, GPU and model, and how its
spread splits between scenarios, layouts within a scenario and concurrencies within a layout.

Why: a campaign's learner sees ~5% of a pool; it can learn a few smooth, shared corrections from that, not one offset
per scenario or one curve per layout. This profile says which of these the physics leaves to learn (issue 6: the
aiconfigurator vLLM pool misses the 10%-error target at 5% measured). Diagnostic only: no model is fitted.
Writes benchmarks/results/pool_residuals.json.

    .venv/bin/python -m benchmarks.pool_residuals [--pools aiconfigurator,dli]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from rich.console import Console

from benchmarks._common import SHARED_DATA, write_result
from benchmarks.campaign import POOLS, load
from train.frames import float_column, physics

TARGETS = ("output_throughput", "tpot_ms", "ttft_ms")
LAYOUT = ("tp", "pp", "dp", "ep", "attention_dp")


def log_residuals(frame: pd.DataFrame, target: str) -> np.ndarray:
    """log(measured / physics) per row of a physics frame (NaN where either is missing or not positive)."""
    meas, phys = float_column(frame, target), float_column(frame, f"phys_{target}")
    ok = np.isfinite(meas) & np.isfinite(phys) & (meas > 0) & (phys > 0)
    return np.where(ok, np.log(np.where(ok, meas, 1.0) / np.where(ok, phys, 1.0)), np.nan)


def spread_split(res: pd.Series, scenario: pd.Series, layout: pd.Series) -> dict[str, float]:
    """Standard deviation of the residual: in all, of scenario means, of layout means around their scenario's mean,
    and of rows around their layout's mean (the concurrency sweep within a layout)."""
    d = pd.DataFrame({"r": res.to_numpy(), "s": scenario.to_numpy(), "l": (scenario + "|" + layout).to_numpy()}).dropna()
    s_mean = d.groupby("s")["r"].transform("mean")
    l_mean = d.groupby("l")["r"].transform("mean")
    return {"total": float(d["r"].std()), "between_scenarios": float(s_mean.std()),
            "layouts_within_scenario": float((l_mean - s_mean).std()), "within_layout": float((d["r"] - l_mean).std())}


def error_left(res: pd.Series, groups: pd.Series | None) -> float:
    """Median |prediction / measured - 1| of the physics after removing each group's exact mean residual (None: the
    pool's median residual): the error a learner that knew only that much would still make (an oracle bound that
    reads every row's target -- a diagnostic, not a model)."""
    d = pd.DataFrame({"r": res.to_numpy(), "g": "all" if groups is None else groups.to_numpy()}).dropna()
    shift = d.groupby("g")["r"].transform("median" if groups is None else "mean")
    return float(np.median(np.abs(np.expm1(shift - d["r"]))))


def profile(name: str) -> dict:
    """Residual profile of one serving pool (rows that ran)."""
    rb, _ = load(name)
    kind, scenario_cols = POOLS[name][3], POOLS[name][4]
    frame = rb.frame[rb.frame["kind"] == kind].reset_index(drop=True)
    ph = physics(frame)
    ph = ph[ph["status"].astype("string").fillna("ok").eq("ok").to_numpy(bool)].reset_index(drop=True)
    scen = ph[list(scenario_cols)].astype("string").fillna("-").agg("|".join, axis=1)
    lay = ph[[c for c in LAYOUT if c in ph.columns]].astype("string").fillna("-").agg("x".join, axis=1)
    conc = float_column(ph, "concurrency")  # the load of a run: concurrency, else its closed batch of requests
    conc = np.where(np.isfinite(conc), conc, float_column(ph, "num_requests"))
    bucket = pd.Series(np.exp2(np.round(np.log2(np.maximum(np.nan_to_num(conc, nan=1.0), 1.0)))).astype(int))
    out: dict = {"rows": len(ph), "scenarios": int(scen.nunique()), "targets": {}}
    for t in TARGETS:
        r = pd.Series(log_residuals(ph, t))
        if not r.notna().any():
            continue
        out["targets"][t] = {
            "median_log_residual": float(r.median()),
            "median_abs_pct_error": float(np.nanmedian(np.abs(np.expm1(-r)))),  # |physics / measured - 1|
            "spread": spread_split(r, scen, lay),
            # error left after an exact offset per pool / scenario / layout / (layout, concurrency bucket) ...
            "error_left_after_offset": {"pool": error_left(r, None), "scenario": error_left(r, scen),
                                        "layout": error_left(r, scen + "|" + lay),
                                        "scenario_and_concurrency": error_left(r, scen + "|" + bucket.astype(str))},
            "by_concurrency": {str(k): {"median": float(v.median()), "rows": int(v.notna().sum())}
                               for k, v in r.groupby(bucket)},
            "by_gpu_concurrency": {f"{g}@{k}": float(v.median()) for (g, k), v in r.groupby([ph["gpu"], bucket])
                                   if v.notna().sum() >= 5},
            "by_model": {str(m): float(v.median()) for m, v in r.groupby(ph["model"])},
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", default="aiconfigurator,dli")
    args = ap.parse_args(argv)
    console = Console(width=200)
    pools = {}
    for name in [p.strip() for p in args.pools.split(",") if p.strip()]:
        if not (SHARED_DATA / POOLS[name][1]).exists():
            console.print(f"[yellow]skip {name}: absent[/yellow]")
            continue
        pools[name] = profile(name)
        for t, v in pools[name]["targets"].items():
            conc = "  ".join(f"{k}:{c['median']:+.2f}" for k, c in v["by_concurrency"].items())
            sp = ", ".join(f"{k} {x:.2f}" for k, x in v["spread"].items())
            left = ", ".join(f"{k} {x:.1%}" for k, x in v["error_left_after_offset"].items())
            console.print(f"{name} {t}: median physics error {v['median_abs_pct_error']:.1%}; log residual sd {sp}\n"
                          f"  median log(measured/physics) by concurrency  {conc}\n"
                          f"  median error left after an exact mean offset per {left}")
    path = write_result("pool_residuals", {"pools": pools})
    console.print(f"wrote {path}")
    return pools


if __name__ == "__main__":
    main()
