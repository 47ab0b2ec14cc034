"""The vectorised steady-state serving estimate against the request-level scheduler simulation, fixed concurrency.

`features/serving.py` screens every candidate of a search and makes every physics feature of the learned models;
`features/scheduler.py` simulates every request (and is held to the real vLLM engine by
`benchmarks/scheduler_fidelity.py`). On fixed-concurrency runs of fixed lengths — how aiconfigurator, DLI and most
published sweeps benchmark — the two should agree on the mean TTFT and TPOT. Grid: three dense models on H200
(8B TP1, 32B TP2, 70B TP4) × concurrency 4/16/64 × ISL/OSL 8192/1024, 1024/1024, 3000/500, each under
aiconfigurator's benchmark knobs (`max_num_seqs` = concurrency, token budget = concurrency + ISL + 1500,
50 × concurrency requests) and under vLLM's default 8,192-token budget. Also reported: the opening burst's TTFT
alone (what the estimate gave before it blended the burst with the steady state).

Run: `python -m benchmarks.serving_vs_simulation`. Writes benchmarks/results/serving_vs_simulation.json.
"""

from __future__ import annotations

import numpy as np

from benchmarks._common import write_result
from features.calibration import default_calibration
from features.catalog import resolve_gpu, resolve_model
from features.closed_batch import simulate_deployment
from features.serving import EngineArrays, estimate_serving
from features.specs import EngineConfig, Layout, LengthDist, Workload

MODELS = (("llama-3.1-8b", 1), ("qwen2.5-32b", 2), ("llama-3.1-70b", 4))
CONCURRENCY = (4, 16, 64)
LENGTHS = ((8192, 1024), (1024, 1024), (3000, 500))
REQUESTS_PER_CONCURRENCY = 50
GPU = "h200"


def one(name: str, tp: int, conc: int, isl: int, osl: int, budget: str) -> dict:
    """Estimate vs simulation for one run; `budget` is 'aiconfigurator' (batch + ISL + 1500) or 'vllm-default'."""
    model, gpu, layout, cal = resolve_model(name), resolve_gpu(GPU), Layout(tp=tp), default_calibration()
    tokens = conc + isl + 1500 if budget == "aiconfigurator" else EngineConfig().max_num_batched_tokens
    engine = EngineConfig(max_num_seqs=conc, max_num_batched_tokens=tokens)
    n = REQUESTS_PER_CONCURRENCY * conc
    sim = simulate_deployment(model, gpu, layout, engine, Workload("fixed", LengthDist("fixed", isl),
                                                                   LengthDist("fixed", osl), n, conc), n, cal)
    arrays = EngineArrays.from_config(engine)
    est = estimate_serving(model, gpu, layout, arrays, cal, float(isl), float(osl), num_requests=n, concurrency=conc)
    burst = estimate_serving(model, gpu, layout, arrays, cal, float(isl), float(osl), num_requests=0, concurrency=conc)
    sim_ttft, sim_tpot = sim.ttft_mean_s * 1e3, sim.tpot_mean_s * 1e3
    return {"model": name, "tp": tp, "concurrency": conc, "isl": isl, "osl": osl, "budget": budget,
            "max_num_batched_tokens": tokens, "num_requests": n, "sim_ttft_ms": sim_ttft,
            "est_ttft_ms": float(est.ttft_ms), "burst_ttft_ms": float(burst.ttft_ms), "sim_tpot_ms": sim_tpot,
            "est_tpot_ms": float(est.tpot_ms), "ttft_ratio": float(est.ttft_ms) / sim_ttft,
            "burst_ttft_ratio": float(burst.ttft_ms) / sim_ttft, "tpot_ratio": float(est.tpot_ms) / sim_tpot}


def summary(rows: list[dict]) -> dict:
    out = {}
    for budget in sorted({r["budget"] for r in rows}):
        sub = [r for r in rows if r["budget"] == budget]
        out[budget] = {k: {"min": float(np.min(v)), "median": float(np.median(v)), "max": float(np.max(v)),
                           "median_abs_log": float(np.median(np.abs(np.log(v))))}
                       for k in ("ttft_ratio", "burst_ttft_ratio", "tpot_ratio")
                       for v in [[r[k] for r in sub]]}
        out[budget]["runs"] = len(sub)
    return out


def main() -> dict:
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    grid = [(m, tp, c, i, o, b) for m, tp in MODELS for c in CONCURRENCY for i, o in LENGTHS
            for b in ("aiconfigurator", "vllm-default")]
    rows = [one(*g) for g in track(grid, description="estimate vs simulation")]
    console = Console()
    table = Table(title="steady-state estimate / request-level simulation (fixed concurrency, H200)")
    for col in ("model", "TP", "conc", "ISL/OSL", "budget", "TTFT sim ms", "est/sim", "burst/sim", "TPOT sim ms",
                "est/sim"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], str(r["tp"]), str(r["concurrency"]), f"{r['isl']}/{r['osl']}",
                      str(r["max_num_batched_tokens"]), f"{r['sim_ttft_ms']:.0f}", f"{r['ttft_ratio']:.2f}",
                      f"{r['burst_ttft_ratio']:.2f}", f"{r['sim_tpot_ms']:.1f}", f"{r['tpot_ratio']:.3f}")
    console.print(table)
    s = summary(rows)
    for budget, v in s.items():
        console.print(f"{budget} ({v['runs']} runs): TTFT est/sim {v['ttft_ratio']['min']:.2f}–"
                      f"{v['ttft_ratio']['max']:.2f} (median {v['ttft_ratio']['median']:.2f}); burst alone "
                      f"{v['burst_ttft_ratio']['min']:.2f}–{v['burst_ttft_ratio']['max']:.2f} (median "
                      f"{v['burst_ttft_ratio']['median']:.2f}); TPOT est/sim {v['tpot_ratio']['min']:.3f}–"
                      f"{v['tpot_ratio']['max']:.3f}")
    payload = {"gpu": GPU, "requests_per_concurrency": REQUESTS_PER_CONCURRENCY, "summary": s, "runs": rows}
    path = write_result("serving_vs_simulation", payload)
    console.print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
