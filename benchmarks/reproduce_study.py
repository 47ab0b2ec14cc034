"""Reproduce the study (DESIGN.md): 8×H200, `reasoning` workload, closed batch of 2,000 requests.

For DeepSeek-R1-Distill Llama-8B, Qwen-14B, Qwen-32B, Llama-70B, Llama-3.1-405B and DeepSeek-R1 (FP8), every
feasible layout of 1, 2, 4 and 8 GPUs is predicted with the physics model and the request-level vLLM scheduler
simulation (same sampled requests for every layout). Prints one table per model (makespan, output throughput,
per-GPU throughput, KV capacity, batch reached, preemptions, HBM bandwidth use, regime, bottleneck), writes
benchmarks/results/reproduce_study.json and two plots: makespan by layout per model, and KV usage / running
batch over time for Qwen-32B under DP8, TP8 and TP2×DP4 (the capacity trap).
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._common import RESULTS, write_result  # noqa: E402
from features.calibration import default_calibration  # noqa: E402
from features.catalog import resolve_gpu, resolve_model, resolve_workload  # noqa: E402
from features.closed_batch import stage_time_fn, usable_kv_tokens  # noqa: E402
from features.layouts import enumerate_layouts, infeasible_reason  # noqa: E402
from features.memory import kv_capacity_tokens  # noqa: E402
from features.scheduler import simulate  # noqa: E402
from features.serving import EngineArrays, estimate_serving  # noqa: E402
from features.specs import EngineConfig, Layout  # noqa: E402

MODELS = [("deepseek-r1-distill-llama-8b", "bf16"), ("deepseek-r1-distill-qwen-14b", "bf16"),
          ("deepseek-r1-distill-qwen-32b", "bf16"), ("deepseek-r1-distill-llama-70b", "bf16"),
          ("llama-3.1-405b", "fp8"), ("deepseek-r1", "fp8")]
GPU_COUNTS = (1, 2, 4, 8)


def run_layout(model, gpu, layout, engine, isl, osl, cal, timeline=False):
    cap = int(kv_capacity_tokens(model, gpu, layout, engine))
    sim = simulate(isl, osl, step_time_s=stage_time_fn(model, gpu, layout, engine, cal), pp=int(layout.pp),
                   kv_capacity_tokens=usable_kv_tokens(cap, engine.block_size),
                   block_size=engine.block_size, max_num_seqs=engine.max_num_seqs,
                   max_num_batched_tokens=engine.max_num_batched_tokens, dp=int(layout.attention_replicas),
                   record_timeline=timeline)
    steady = estimate_serving(model, gpu, layout, EngineArrays.from_config(engine), cal, float(isl.mean()),
                              float(osl.mean()), num_requests=len(isl), osl_median=4500, osl_sigma=0.8, osl_max=32768)
    return cap, sim, steady


def _item(x) -> str:
    return str(np.asarray(x).ravel()[0])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="reproduce the 8xH200 reasoning study")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="*", default=[m for m, _ in MODELS])
    args = ap.parse_args(argv)
    cal = default_calibration()
    gpu = resolve_gpu("h200")
    wl = resolve_workload("reasoning")
    isl, osl = wl.sample(args.requests, args.seed)
    console = Console(width=170)
    results: dict = {"gpu": "h200", "workload": "reasoning", "num_requests": args.requests, "seed": args.seed,
                     "isl_mean": float(isl.mean()), "osl_mean": float(osl.mean()), "osl_max": int(osl.max()), "models": {}}
    t_start = time.perf_counter()
    for name, dtype in [m for m in MODELS if m[0] in args.models]:
        model = resolve_model(name)
        engine = EngineConfig(weight_dtype=dtype)
        rows = []
        for n in GPU_COUNTS:
            for layout in enumerate_layouts(model, gpu, n):
                reason = infeasible_reason(model, gpu, layout, engine, min_tokens=int(isl.max() + osl.max()))
                row = {"layout": layout.label(), "gpus": n, "tp": layout.tp, "pp": layout.pp, "dp": layout.dp,
                       "ep": layout.ep, "attention_dp": layout.attention_dp, "feasible": not reason, "reason": reason}
                if not reason:
                    cap, sim, steady = run_layout(model, gpu, layout, engine, isl, osl, cal)
                    row.update(makespan_s=sim.makespan_s, output_throughput=sim.output_throughput,
                               throughput_per_gpu=sim.output_throughput / n, kv_capacity_tokens=cap,
                               peak_batch=sim.peak_running, mean_batch=sim.mean_running, preemptions=sim.preemptions,
                               full_cache_fraction=sim.full_cache_fraction, tpot_ms=sim.tpot_mean_s * 1e3,
                               hbm_bw_util=float(steady.hbm_bw_util), regime=_item(steady.regime),
                               bottleneck=_item(steady.bottleneck), steady_makespan_s=float(steady.makespan_s),
                               terms_ms={k: float(v) for k, v in steady.terms.items()})
                rows.append(row)
        feasible = [r for r in rows if r["feasible"]]
        best8 = min((r for r in feasible if r["gpus"] == 8), key=lambda r: r["makespan_s"], default=None)
        best_per_gpu = max(feasible, key=lambda r: r["throughput_per_gpu"], default=None)
        results["models"][name] = {"weight_dtype": dtype, "layouts": rows,
                                   "best_8gpu": best8["layout"] if best8 else None,
                                   "best_throughput_per_gpu": best_per_gpu["layout"] if best_per_gpu else None}
        _print_model(console, name, dtype, rows, best8)
    results["elapsed_s"] = time.perf_counter() - t_start
    _plot_makespans(results)
    _plot_capacity_trap(cal, gpu, isl, osl)
    path = write_result("reproduce_study", results)
    console.print(f"wrote {path}, {RESULTS / 'study_makespan.png'}, {RESULTS / 'study_kv_usage_32b.png'} "
                  f"in {results['elapsed_s']:.0f} s")
    return results


def _print_model(console, name, dtype, rows, best8) -> None:
    t = Table(title=f"{name} ({dtype}) on H200, reasoning, closed batch — best on 8 GPUs: "
              f"{best8['layout'] if best8 else 'none'}")
    cols = ["layout", "GPUs", "makespan s", "out tok/s", "tok/s/GPU", "KV tokens/replica", "peak batch", "mean batch",
            "preempt", "full-cache", "HBM use", "regime", "bottleneck"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("layout", "regime", "bottleneck") else "right")
    for r in sorted(rows, key=lambda r: (r["gpus"], r.get("makespan_s", np.inf))):
        if not r["feasible"]:
            continue
        style = "bold green" if best8 and r["layout"] == best8["layout"] else None
        t.add_row(r["layout"], str(r["gpus"]), f"{r['makespan_s']:,.0f}", f"{r['output_throughput']:,.0f}",
                  f"{r['throughput_per_gpu']:,.0f}", f"{r['kv_capacity_tokens']:,}", str(r["peak_batch"]),
                  f"{r['mean_batch']:.0f}", f"{r['preemptions']:,}", f"{r['full_cache_fraction']:.0%}",
                  f"{r['hbm_bw_util']:.0%}", r["regime"], r["bottleneck"], style=style)
    console.print(t)
    bad = sorted({(r["layout"], r["reason"]) for r in rows if not r["feasible"]})
    if bad:
        console.print("  infeasible: " + "; ".join(f"{l} ({why})" for l, why in bad[:6]) + (" ..." if len(bad) > 6 else ""))


def _plot_makespans(results) -> None:
    names = list(results["models"])
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.6 * len(names)), squeeze=False)
    colors = {"capacity": "tab:red", "bandwidth": "tab:blue", "compute": "tab:green", "communication": "tab:orange"}
    for ax, name in zip(axes[:, 0], names):
        rows = [r for r in results["models"][name]["layouts"] if r["feasible"] and r["gpus"] == 8]
        rows.sort(key=lambda r: r["makespan_s"])
        ax.bar([r["layout"] for r in rows], [r["makespan_s"] for r in rows], color=[colors.get(r["regime"], "grey") for r in rows])
        ax.set_title(f"{name}: predicted makespan of 2,000 reasoning requests on 8×H200 (colour = regime)", fontsize=9)
        ax.set_ylabel("s")
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.tight_layout()
    fig.savefig(RESULTS / "study_makespan.png", dpi=110)
    plt.close(fig)


def _plot_capacity_trap(cal, gpu, isl, osl) -> None:
    model = resolve_model("deepseek-r1-distill-qwen-32b")
    engine = EngineConfig()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for layout, color in ((Layout(dp=8), "tab:red"), (Layout(tp=8), "tab:blue"), (Layout(tp=2, dp=4), "tab:green")):
        cap, sim, _ = run_layout(model, gpu, layout, engine, isl, osl, cal, timeline=True)
        tl = sim.timeline[0]  # replica 0
        ax1.plot(tl[:, 0], tl[:, 3] / cap, color=color, lw=1, label=f"{layout.label()} (cap {cap:,} tok, {sim.preemptions:,} preemptions)")
        ax2.plot(tl[:, 0], tl[:, 1], color=color, lw=1, label=f"{layout.label()} makespan {sim.makespan_s:,.0f} s")
    ax1.set_ylabel("KV cache used (fraction), replica 0")
    ax2.set_ylabel("running sequences, replica 0")
    ax2.set_xlabel("time (s)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    ax1.set_title("DeepSeek-R1-Distill-Qwen-32B, 2,000 reasoning requests on 8×H200: the capacity trap (simulated)")
    fig.tight_layout()
    fig.savefig(RESULTS / "study_kv_usage_32b.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
