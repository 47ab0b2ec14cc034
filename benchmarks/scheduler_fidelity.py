"""Scheduler fidelity: the request-level simulation (`features.scheduler`) against the real vLLM engine (CPU build).

For tiny Llama-architecture models (catalog `tiny-llama`, and a larger `small-llama` shape) at TP 1 and 2, a real
vLLM engine runs a closed batch of long-output requests in a KV cache small enough to force the capacity trap
(`num_gpu_blocks_override` 40, block size 32: 39 usable blocks, one is vLLM's null block), at several `max_num_seqs`.
The engine core runs in this benchmark's child process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; one unbound OpenMP
thread per process, see ENGINE_THREADS_ENV), so its real `Scheduler` is instrumented directly: each step's start/end, running/waiting counts, KV blocks in use, batch
composition and preemptions are logged (nothing in the engine is replaced; `schedule()` is wrapped, not changed).

Step-time calibration (same machine, same engine, minutes apart): before each validation run the engine serves a
calibration set of fixed batches (1/4/8/12 sequences decoding, and an 8x120-token prefill batch) that never fills
the cache; the per-step wall times are fitted by non-negative least squares to
t = a + b*decode_seqs + c*decode_kv_tokens + d*prefill_tokens (all calibration steps of one engine pooled).
The simulator then replays each validation run with the same request lengths and knobs and that step-time model.

Compared per run: makespan (within 15%), the ordering of `max_num_seqs` settings by makespan (identical),
preemptions (within 25% or both zero), peak running batch (within 10%), time with a full cache (steps that
preempted, or where a request waited while the batch was below `max_num_seqs`), and the number of engine steps
(a timing-free check of the schedule itself). The machine is shared (2 cores, other jobs running), so wall times
carry contention noise: the calibration drift between repeats is reported next to the errors.

Run: `python -m benchmarks.scheduler_fidelity [--engines tiny-llama:1 tiny-llama:2 small-llama:1 small-llama:2] [--quick]`.
Writes benchmarks/results/scheduler_fidelity.json and scheduler_fidelity_timeline.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._common import RESULTS, write_result  # noqa: E402

BLOCK_SIZE = 32
NUM_GPU_BLOCKS = 40  # vLLM keeps one as its null block: 39 usable
MAX_MODEL_LEN = 1024
MAX_NUM_BATCHED_TOKENS = 512
MAX_NUM_SEQS_SWEEP = (2, 4, 8, 16)
CALIBRATION_BATCHES = ((1, 24, 48), (4, 24, 48), (8, 24, 48), (12, 24, 48), (8, 120, 4))  # (requests, isl, osl)
# One unbound OpenMP thread per engine process (TP workers included). vLLM-CPU's default binds every worker's
# threads to all cores of a NUMA node; on a shared 2-core machine each stall of one core then stalls every parallel
# region (steps of 1.5 ms took 10-300 ms at random); unbound single threads keep step times steady.
ENGINE_THREADS_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
STEP_COLUMNS = ("t_start", "t_end", "running", "waiting", "kv_blocks", "decode_seqs", "decode_kv_tokens",
                "prefill_tokens", "preempted")


# ---- workloads and models ---------------------------------------------------------------------------------------
def trap_workload(num_requests: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Long outputs, short prompts (a reasoning workload scaled to a 1,248-token cache): isl ~40, osl ~300."""
    rng = np.random.default_rng(seed)
    isl = np.clip(np.round(40 * np.exp(0.5 * rng.standard_normal(num_requests))), 8, 200).astype(int)
    osl = np.clip(np.round(300 * np.exp(0.6 * rng.standard_normal(num_requests))), 16, 800).astype(int)
    osl = np.minimum(osl, MAX_MODEL_LEN - isl)
    return isl.tolist(), osl.tolist()


def model_spec(name: str):
    """`tiny-llama` from the catalog, or `small-llama`: the same architecture, 4 layers of hidden 512."""
    from features.catalog import resolve_model

    tiny = resolve_model("tiny-llama")
    if name == "tiny-llama":
        return tiny
    if name == "small-llama":
        return dataclasses.replace(tiny, name="small-llama", num_layers=4, hidden_size=512, num_heads=8,
                                   num_kv_heads=4, head_dim=64, intermediate_size=1408, vocab_size=4096)
    raise SystemExit(f"unknown model {name!r} (tiny-llama, small-llama)")


# ---- child: one real engine, instrumented --------------------------------------------------------------------------
class StepRecorder:
    """Wraps the live vLLM Scheduler's schedule/update_from_output/_preempt_request to log every engine step."""

    def __init__(self, scheduler):
        self.s = scheduler
        self.rows: list[list[float]] = []
        self._preempted = 0
        self.usable_blocks = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
        orig_schedule, orig_update, orig_preempt = scheduler.schedule, scheduler.update_from_output, \
            scheduler._preempt_request

        def schedule(*a, **k):
            t = time.perf_counter()
            self._preempted = 0
            out = orig_schedule(*a, **k)
            ds = dkv = pf = 0
            for req_id, n_tok in out.num_scheduled_tokens.items():
                if n_tok == 1:  # num_computed_tokens already includes this step's token: its context length
                    ds += 1
                    dkv += scheduler.requests[req_id].num_computed_tokens
                else:
                    pf += n_tok
            running, waiting = scheduler.get_request_counts()
            used = self.usable_blocks - scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
            self.rows.append([t, np.nan, running, waiting, used, ds, dkv, pf, self._preempted])
            return out

        def update_from_output(*a, **k):
            res = orig_update(*a, **k)
            if self.rows:
                self.rows[-1][1] = time.perf_counter()
            return res

        def preempt(*a, **k):
            self._preempted += 1
            return orig_preempt(*a, **k)

        scheduler.schedule, scheduler.update_from_output, scheduler._preempt_request = \
            schedule, update_from_output, preempt


def run_closed_batch(llm, recorder: StepRecorder, isl: list[int], osl: list[int], max_num_seqs: int, seed: int) -> dict:
    """Serve one closed batch (all requests queued before the first step) with `max_num_seqs` in force."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    sched = recorder.s
    sched.max_num_running_reqs = max_num_seqs
    if hasattr(sched, "max_num_active_reqs"):
        sched.max_num_active_reqs = max_num_seqs
    rng = np.random.default_rng(seed)
    engine = llm.llm_engine
    ids = []
    for i, (p, o) in enumerate(zip(isl, osl)):
        params = SamplingParams(max_tokens=int(o), ignore_eos=True, temperature=0.0, detokenize=False)
        prompt = TokensPrompt(prompt_token_ids=rng.integers(3, 1000, size=int(p)).tolist())
        ids.append(llm.enqueue([prompt], params, use_tqdm=False)[0])
    recorder.rows = []
    gen: dict[str, int] = {}
    pre: dict[str, int] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if getattr(out, "finished", False):
                gen[out.request_id] = len(out.outputs[0].token_ids)
                m = getattr(out, "metrics", None)
                pre[out.request_id] = int(getattr(m, "num_preemptions", 0) or 0) if m is not None else -1
    rows = np.array(recorder.rows, dtype=np.float64)
    t0 = rows[0, 0]
    rows[:, :2] -= t0
    return {"max_num_seqs": max_num_seqs, "isl": list(map(int, isl)), "osl": list(map(int, osl)),
            "generated": [gen.get(r, -1) for r in ids], "request_preemptions": [pre.get(r, -1) for r in ids],
            "steps": rows.tolist(), "makespan_s": float(rows[-1, 1]), "preemptions": int(rows[:, 8].sum())}


def child_main(plan_path: str, result_path: str) -> int:
    """Child process: start the engine in-process, run calibration and validation batches, write JSON."""
    plan = json.loads(Path(plan_path).read_text())
    out: dict = {"error": None, "runs": [], "calibration": []}
    path = Path(result_path)
    try:
        from collect.modelfolder import write_model_folder
        from vllm import LLM
        import vllm

        model = model_spec(plan["model"])
        folder = write_model_folder(model, Path(plan["workdir"]) / model.name, max_position_embeddings=MAX_MODEL_LEN)
        t = time.time()
        llm = LLM(model=str(folder), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", seed=0,
                  tensor_parallel_size=plan["tp"], block_size=BLOCK_SIZE, num_gpu_blocks_override=NUM_GPU_BLOCKS,
                  max_model_len=MAX_MODEL_LEN, max_num_seqs=max(MAX_NUM_SEQS_SWEEP),
                  max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS, enable_chunked_prefill=True,
                  enable_prefix_caching=False, async_scheduling=False, enforce_eager=True,
                  gpu_memory_utilization=0.1, disable_log_stats=True)
        out["engine_start_s"] = time.time() - t
        out["vllm_version"] = str(vllm.__version__)
        sched = llm.llm_engine.engine_core.engine_core.scheduler
        rec = StepRecorder(sched)
        out["usable_blocks"] = rec.usable_blocks
        out["scheduler_reserve_full_isl"] = bool(getattr(sched, "scheduler_reserve_full_isl", False))
        isl, osl = plan["isl"], plan["osl"]
        run_closed_batch(llm, rec, [24] * 8, [16] * 8, max(MAX_NUM_SEQS_SWEEP), seed=999)  # warm-up, discarded
        out["runs"] = [[] for _ in plan["max_num_seqs"]]
        for rep in range(plan["repeats"]):
            cal = []
            for k, (b, ci, co) in enumerate(CALIBRATION_BATCHES):
                r = run_closed_batch(llm, rec, [ci] * b, [co] * b, max(MAX_NUM_SEQS_SWEEP), seed=1000 + k)
                cal.append({"batch": b, "isl": ci, "osl": co, "steps": r["steps"], "preemptions": r["preemptions"]})
            out["calibration"].append(cal)
            for j, m in enumerate(plan["max_num_seqs"]):
                run = run_closed_batch(llm, rec, isl, osl, m, seed=j)
                out["runs"][j].append(run)
                path.write_text(json.dumps(out))
                print(f"repeat {rep} max_num_seqs={m}: {run['makespan_s']:.1f} s, {len(run['steps'])} steps, "
                      f"{run['preemptions']} preemptions", flush=True)
    except BaseException as e:  # noqa: BLE001 - reported to the parent as data
        import traceback

        out["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:1000]
        out["traceback"] = traceback.format_exc()[-4000:]
        path.write_text(json.dumps(out))
        return 1
    path.write_text(json.dumps(out))
    return 0


# ---- parent: run engines, calibrate, simulate, compare ------------------------------------------------------------
def run_engine(model: str, tp: int, isl, osl, sweep, repeats: int, workdir: Path, timeout_s: float) -> dict:
    """Run one engine's child process to completion (its process group is always stopped)."""
    from collect.procs import start_group, tail, wait_group

    plan = {"model": model, "tp": tp, "isl": isl, "osl": osl, "max_num_seqs": list(sweep), "repeats": repeats,
            "workdir": str(workdir)}
    plan_path = workdir / f"plan_{model}_tp{tp}.json"
    result_path = workdir / f"result_{model}_tp{tp}.json"
    log_path = workdir / f"log_{model}_tp{tp}.txt"
    plan_path.write_text(json.dumps(plan))
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONPATH=str(REPO), **ENGINE_THREADS_ENV)
    proc = start_group([sys.executable, "-m", "benchmarks.scheduler_fidelity", "--child", str(plan_path),
                        str(result_path)], env, log_path, cwd=str(REPO))
    rc, timed_out = wait_group(proc, timeout_s)
    res = json.loads(result_path.read_text()) if result_path.exists() else {"runs": [], "calibration": []}
    if rc != 0 or timed_out:
        res["error"] = res.get("error") or f"exit code {rc}{' (timed out)' if timed_out else ''}"
        res["log_tail"] = tail(log_path, 30)
    return res


def steps_array(steps: list) -> np.ndarray:
    """Logged steps as an array with each step's duration: next start - start (last: its own end - start)."""
    a = np.array(steps, dtype=np.float64)
    dur = np.append(np.diff(a[:, 0]), a[-1, 1] - a[-1, 0])
    return np.column_stack([a, dur])


def fit_step_time(calibration: list[dict]) -> dict:
    """NNLS fit of t = a + b*decode_seqs + c*decode_kv_tokens + d*prefill_tokens on one calibration set's steps.

    Stalls from other jobs on the shared machine only ever add time: steps whose residual exceeds 4 robust sigmas
    above the fit are dropped and the fit repeated (twice), so the model is the engine's own step time."""
    from scipy.optimize import nnls

    a = np.vstack([steps_array(c["steps"]) for c in calibration])
    X = np.column_stack([np.ones(len(a)), a[:, 5], a[:, 6], a[:, 7]])
    y = a[:, 9]
    keep = np.ones(len(y), bool)
    for _ in range(3):
        coef, _ = nnls(X[keep], y[keep])
        resid = y - X @ coef
        sigma = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        keep = resid <= 4 * max(sigma, 1e-5)
    pred = X @ coef
    r2 = 1 - float(((y[keep] - pred[keep]) ** 2).sum() / ((y[keep] - y[keep].mean()) ** 2).sum())
    return {"a_s": float(coef[0]), "per_decode_seq_s": float(coef[1]), "per_kv_token_s": float(coef[2]),
            "per_prefill_token_s": float(coef[3]), "r2_kept": r2, "steps": int(len(a)),
            "stall_steps_dropped": int((~keep).sum()), "median_step_s": float(np.median(y))}


def calibrate(calibrations: list[list[dict]]) -> dict:
    """Fit every calibration repeat; use the least contended one (lowest median step time), as the real side uses
    the fastest repeat of each run. The spread of the repeats' medians is reported as the machine's drift."""
    fits = [fit_step_time(cal) for cal in calibrations]
    best = min(fits, key=lambda f: f["median_step_s"])
    med = [f["median_step_s"] for f in fits]
    return {**best, "repeats": fits, "drift": float(max(med) / min(med) - 1)}


def real_metrics(repeats: list[dict]) -> dict:
    """What the real engine did: makespan (fastest repeat), preemptions, peak/mean running, full-cache time, steps.

    A closed batch is scheduled identically every time (no arrivals, greedy, fixed lengths), so the repeats differ
    only in wall time; the fastest is the one least slowed by other jobs on the shared machine."""
    best = min(repeats, key=lambda r: r["makespan_s"])
    a = steps_array(best["steps"])
    dur = a[:, 9]
    full = (a[:, 8] > 0) | ((a[:, 3] > 0) & (a[:, 2] < best["max_num_seqs"]))
    sched = [(len(r["steps"]), r["preemptions"]) for r in repeats]
    return {"makespan_s": best["makespan_s"], "makespan_s_repeats": [r["makespan_s"] for r in repeats],
            "preemptions": best["preemptions"], "peak_running": int(a[:, 2].max()),
            "mean_running": float((a[:, 2] * dur).sum() / dur.sum()), "full_cache_s": float(dur[full].sum()),
            "full_cache_fraction": float(dur[full].sum() / dur.sum()), "steps": int(len(a)),
            "schedule_identical_across_repeats": len(set(sched)) == 1,
            "all_tokens_generated": all(r["generated"] == r["osl"] for r in repeats)}


def simulate_run(run: dict, fit: dict, usable_blocks: int):
    """The simulator on the same requests and knobs, with the calibrated step-time model."""
    from features.scheduler import linear_step_time, simulate

    step = linear_step_time(fit["a_s"], fit["per_decode_seq_s"], fit["per_kv_token_s"], fit["per_prefill_token_s"])
    return simulate(np.array(run["isl"]), np.array(run["osl"]), step_time_s=step,
                    kv_capacity_tokens=usable_blocks * BLOCK_SIZE, block_size=BLOCK_SIZE,
                    max_num_seqs=run["max_num_seqs"], max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS,
                    enable_chunked_prefill=True, record_timeline=True)


def compare(real: dict, sim) -> dict:
    """Errors and pass/fail of one run against the criteria of the fidelity issue."""
    mk_err = sim.makespan_s / real["makespan_s"] - 1
    pr, ps = real["preemptions"], sim.preemptions
    pre_ok = (pr == 0 and ps == 0) or (max(pr, ps) > 0 and abs(ps - pr) <= 0.25 * max(pr, 1))
    peak_err = sim.peak_running / real["peak_running"] - 1
    return {"makespan_err": mk_err, "makespan_ok": abs(mk_err) <= 0.15, "preemptions_ok": bool(pre_ok),
            "peak_running_err": peak_err, "peak_running_ok": abs(peak_err) <= 0.10,
            "steps_err": sim.steps / real["steps"] - 1}


def sim_metrics(sim) -> dict:
    return {"makespan_s": sim.makespan_s, "preemptions": sim.preemptions, "peak_running": sim.peak_running,
            "mean_running": sim.mean_running, "full_cache_s": sim.full_cache_s,
            "full_cache_fraction": sim.full_cache_fraction, "steps": sim.steps}


def plot(results: list[dict], path: Path) -> None:
    """KV blocks in use and running batch over time, real vs simulated, one row per engine at one max_num_seqs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["runs"]]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 3.2 * len(rows)), squeeze=False)
    for ax_row, eng in zip(axes, rows):
        run = max(eng["runs"], key=lambda r: r["real"]["preemptions"])
        real = steps_array(run["raw"]["steps"])
        tl = run["timeline"]
        for ax, col_real, col_sim, label in ((ax_row[0], 4, 3, "KV in use (tokens)"), (ax_row[1], 2, 1, "running")):
            scale = BLOCK_SIZE if col_real == 4 else 1
            ax.step(real[:, 1], real[:, col_real] * scale, where="post", lw=0.8, label="real vLLM")
            ax.step(tl[:, 0], tl[:, col_sim], where="post", lw=0.8, label="simulated", alpha=0.8)
            ax.set_title(f"{eng['engine']} max_num_seqs={run['max_num_seqs']}: {label}", fontsize=9)
            ax.set_xlabel("time (s)")
            if col_real == 4:
                ax.axhline(eng["usable_blocks"] * BLOCK_SIZE, color="k", lw=0.6, ls="--")
        ax_row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="request-level scheduler simulation vs the real vLLM CPU engine")
    ap.add_argument("--engines", nargs="*", default=["tiny-llama:1", "tiny-llama:2", "small-llama:1", "small-llama:2"],
                    help="MODEL:TP engines to run (tiny-llama, small-llama)")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every run (the fastest is compared)")
    ap.add_argument("--quick", action="store_true", help="two max_num_seqs settings, 12 requests (a smoke run)")
    ap.add_argument("--timeout-s", type=float, default=420.0, help="per engine")
    ap.add_argument("--workdir", help="keep the engines' raw step logs and logs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sweep = (4, 16) if args.quick else MAX_NUM_SEQS_SWEEP
    isl, osl = trap_workload(12 if args.quick else args.requests)
    results = []
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="sched-fidelity-") as tmp:
        if args.workdir:
            tmp = args.workdir
            Path(tmp).mkdir(parents=True, exist_ok=True)
        for spec in args.engines:
            model, tp = spec.split(":")[0], int(spec.split(":")[1]) if ":" in spec else 1
            label = f"{model} TP{tp}"
            with console.status(f"real vLLM: {label}, max_num_seqs {list(sweep)} (engine start + runs)..."):
                t = time.time()
                res = run_engine(model, tp, isl, osl, sweep, args.repeats, Path(tmp), args.timeout_s)
            eng = {"engine": label, "model": model, "tp": tp, "wall_s": time.time() - t,
                   "engine_start_s": res.get("engine_start_s"), "vllm_version": res.get("vllm_version"),
                   "usable_blocks": res.get("usable_blocks"), "error": res.get("error"),
                   "scheduler_reserve_full_isl": res.get("scheduler_reserve_full_isl"), "runs": []}
            if res.get("error"):
                eng["log_tail"] = res.get("log_tail") or res.get("traceback")
                console.print(f"[red]{label}: {res['error']}[/red]")
            done = [reps for reps in res.get("runs", []) if reps]
            if res.get("calibration") and done:
                fit = calibrate(res["calibration"])
                eng["fit"] = fit
                for reps in done:
                    run = reps[0]
                    real = real_metrics(reps)
                    sim = simulate_run(run, fit, res["usable_blocks"])
                    eng["runs"].append({"max_num_seqs": run["max_num_seqs"], "real": real, "sim": sim_metrics(sim),
                                        "check": compare(real, sim), "raw": min(reps, key=lambda r: r["makespan_s"]),
                                        "timeline": sim.timeline[0]})
                order_real = [r["max_num_seqs"] for r in sorted(eng["runs"], key=lambda r: r["real"]["makespan_s"])]
                order_sim = [r["max_num_seqs"] for r in sorted(eng["runs"], key=lambda r: r["sim"]["makespan_s"])]
                eng["ordering"] = {"real": order_real, "sim": order_sim, "identical": order_real == order_sim}
            results.append(eng)
    table = Table(title="scheduler simulation vs real vLLM (CPU), closed batch in a 39-block x 32-token KV cache")
    for col in ("engine", "max_seqs", "makespan real/sim s", "err", "preempt real/sim", "peak real/sim",
                "full-cache s real/sim", "steps real/sim", "ok"):
        table.add_column(col, justify="right")
    for eng in results:
        for r in eng["runs"]:
            re_, si, ch = r["real"], r["sim"], r["check"]
            ok = ch["makespan_ok"] and ch["preemptions_ok"] and ch["peak_running_ok"]
            table.add_row(eng["engine"], str(r["max_num_seqs"]), f"{re_['makespan_s']:.2f} / {si['makespan_s']:.2f}",
                          f"{ch['makespan_err']:+.1%}", f"{re_['preemptions']} / {si['preemptions']}",
                          f"{re_['peak_running']} / {si['peak_running']}",
                          f"{re_['full_cache_s']:.2f} / {si['full_cache_s']:.2f}", f"{re_['steps']} / {si['steps']}",
                          "yes" if ok else "NO")
    console.print(table)
    for eng in results:
        if "ordering" in eng:
            console.print(f"{eng['engine']}: order by makespan real {eng['ordering']['real']} sim "
                          f"{eng['ordering']['sim']}; step-time fit R2 {eng['fit']['r2_kept']:.2f} ({eng['fit']['stall_steps_dropped']} stalled "
                          f"steps dropped), calibration drift "
                          f"{eng['fit']['drift']:.0%}")
    png = RESULTS / "scheduler_fidelity_timeline.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, png)
    runs = [r for e in results for r in e["runs"]]
    summary = {
        "runs": len(runs),
        "makespan_within_15pct": sum(r["check"]["makespan_ok"] for r in runs),
        "preemptions_within_25pct_or_both_zero": sum(r["check"]["preemptions_ok"] for r in runs),
        "peak_running_within_10pct": sum(r["check"]["peak_running_ok"] for r in runs),
        "orderings_identical": sum(bool(e.get("ordering", {}).get("identical")) for e in results),
        "engines": len(results),
        "median_abs_makespan_err": float(np.median([abs(r["check"]["makespan_err"]) for r in runs])) if runs else None,
        "exact_step_count_matches": sum(r["real"]["steps"] == r["sim"]["steps"] for r in runs),
        "exact_preemption_matches": sum(r["real"]["preemptions"] == r["sim"]["preemptions"] for r in runs),
        "total_wall_s": time.time() - t_all,
    }
    for eng in results:  # keep the JSON readable: drop raw step logs and timelines
        for r in eng["runs"]:
            r.pop("raw")
            r.pop("timeline")
    payload = {"workload": {"isl": isl, "osl": osl}, "block_size": BLOCK_SIZE, "num_gpu_blocks": NUM_GPU_BLOCKS,
               "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS, "max_model_len": MAX_MODEL_LEN,
               "summary": summary, "engines": results, "plot": png.name}
    path = write_result("scheduler_fidelity", payload)
    console.print(f"summary: {summary}\nwrote {path} and {png}")
    return payload


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        raise SystemExit(child_main(sys.argv[2], sys.argv[3]))
    main()
