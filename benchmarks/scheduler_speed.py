"""Speed of the request-level scheduler simulation on the study's 2,000-request reasoning closed batch.

The reasoning workload (ISL lognormal median 100, sigma 0.5; OSL lognormal median 4,500, sigma 0.8, max 32,768),
2,000 requests at once, simulated (a) with a linear step-time model at several KV capacities, from a cache that
never fills to a deep capacity trap, and (b) with the physics step-time model for DeepSeek-R1-Distill-Qwen-32B on
8xH200 layouts (what `layoutcast search` runs per candidate). Best of `--repeats` wall times.

Run: `python -m benchmarks.scheduler_speed`. Writes benchmarks/results/scheduler_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import write_result  # noqa: E402
from features.scheduler import linear_step_time, simulate  # noqa: E402


CPU_MS: dict[int, float] = {}  # id(result) -> best CPU ms of the call that made it (see timed)


def timed(fn, repeats: int):
    """(best wall seconds, last result) of `repeats` calls; the best CPU time of this process is kept in CPU_MS
    (on a shared 2-core machine other jobs stretch the wall clock; CPU time shows the simulator's own cost)."""
    best, best_cpu, res = np.inf, np.inf, None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        res = fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    CPU_MS[id(res)] = best_cpu * 1e3
    return best, res


def linear_cases(isl, osl, repeats: int) -> list[dict]:
    """A linear step-time model (10 ms + per-sequence, per-KV-token and per-prefill-token terms), KV swept."""
    step = linear_step_time(0.010, 2e-5, 1e-8, 1e-5)
    rows = []
    for label, cap, dp in (("ample KV (never full)", 20_000_000, 1), ("2M KV tokens", 2_000_000, 1),
                           ("600k KV tokens (trap)", 600_000, 1), ("300k KV tokens (deep trap)", 300_000, 1),
                           ("DP8 x 300k KV tokens", 300_000, 8)):
        wall, r = timed(lambda: simulate(isl, osl, step_time_s=step, kv_capacity_tokens=cap, dp=dp), repeats)
        rows.append({"case": f"linear, {label}", "wall_ms": wall * 1e3, "cpu_ms": CPU_MS[id(r)], "steps": r.steps, "preemptions": r.preemptions,
                     "makespan_s": r.makespan_s, "peak_running": r.peak_running})
    return rows


def physics_cases(repeats: int) -> list[dict]:
    """The physics step-time model (features.closed_batch) for the 32B model on 8xH200 layouts."""
    from features.catalog import resolve_gpu, resolve_model, resolve_workload
    from features.closed_batch import simulate_deployment
    from features.specs import EngineConfig, Layout

    model, gpu = resolve_model("deepseek-r1-distill-qwen-32b"), resolve_gpu("h200")
    wl = resolve_workload("reasoning").with_arrival(num_requests=2000)
    rows = []
    for layout in (Layout(tp=1, dp=8), Layout(tp=2, dp=4), Layout(tp=4, dp=2), Layout(tp=8)):
        wall, r = timed(lambda: simulate_deployment(model, gpu, layout, EngineConfig(), wl, 2000), repeats)
        rows.append({"case": f"physics, 32B {layout.label()}", "wall_ms": wall * 1e3, "cpu_ms": CPU_MS[id(r)],
                     "steps": r.steps,
                     "preemptions": r.preemptions, "makespan_s": r.makespan_s, "peak_running": r.peak_running})
    # the same TP1xDP8 case with step times evaluated at each bulk run's ends only (interpolate_step_times)
    from features.calibration import default_calibration
    from features.closed_batch import step_time_fn, usable_kv_tokens
    from features.memory import kv_capacity_tokens
    from features.scheduler import simulate

    layout, engine = Layout(tp=1, dp=8), EngineConfig()
    isl, osl = wl.sample(2000, 0)
    step = step_time_fn(model, gpu, layout, engine, default_calibration())
    cap = usable_kv_tokens(kv_capacity_tokens(model, gpu, layout, engine), engine.block_size)
    wall, r = timed(lambda: simulate(isl, osl, step_time_s=step, kv_capacity_tokens=cap, dp=8,
                                     interpolate_step_times=True), repeats)
    rows.append({"case": "physics, 32B TP1xDP8, interpolated step times", "wall_ms": wall * 1e3,
                 "cpu_ms": CPU_MS[id(r)], "steps": r.steps,
                 "preemptions": r.preemptions, "makespan_s": r.makespan_s, "peak_running": r.peak_running})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="scheduler simulation speed on the 2,000-request reasoning batch")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from features.specs import LengthDist

    rng = np.random.default_rng(0)
    isl = LengthDist("lognormal", 100, 0.5, 2048).sample(2000, rng)
    osl = LengthDist("lognormal", 4500, 0.8, 32768).sample(2000, rng)
    rows = linear_cases(isl, osl, args.repeats)
    try:
        rows += physics_cases(args.repeats)
    except Exception as e:  # noqa: BLE001 - the physics model is another module's; report, do not hide
        rows.append({"case": "physics, 32B on 8xH200", "error": f"{type(e).__name__}: {e}"})
    table = Table(title="2,000-request reasoning closed batch: simulation wall time (best of %d)" % args.repeats)
    for col in ("case", "wall ms", "CPU ms", "steps", "preemptions", "peak running", "makespan s"):
        table.add_column(col, justify="right")
    for r in rows:
        if "error" in r:
            table.add_row(r["case"], r["error"], "", "", "", "", "")
            continue
        table.add_row(r["case"], f"{r['wall_ms']:.0f}", f"{r['cpu_ms']:.0f}", str(r["steps"]), str(r["preemptions"]),
                      str(r["peak_running"]), f"{r['makespan_s']:.0f}")
    Console().print(table)
    payload = {"requests": 2000, "workload": "reasoning", "repeats": args.repeats, "target_ms": 200,
               "load_average_1m_at_end": os.getloadavg()[0], "cases": rows}
    path = write_result("scheduler_speed", payload)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
