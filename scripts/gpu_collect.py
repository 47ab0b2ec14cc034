#!/usr/bin/env python
"""One-shot collection on a lent GPU: decode/prefill steps, ops, MoE blocks and collectives, within a time budget.

On a machine with one NVIDIA H100/H200 (one call of about 8 minutes):
    python scripts/gpu_collect.py --out "$OUT" --time-budget-s 450
Writes OUT/torch_probe.csv (schema rows, appended as each measurement finishes, so a stopped or killed run keeps
every finished row) and OUT/device.json (card, driver and library versions; what ran, what was skipped, whether the
budget cut the run short). The budget is shared between phases (ops, dense steps, MoE blocks, collectives) and
between the models of a phase; time one part leaves unused goes to the next. CPU check of the same path:
    python scripts/gpu_collect.py --device cpu --models tiny-llama --time-budget-s 20 --out /tmp/gpu_collect
Needs torch, numpy, pandas, pyyaml (rich optional); the repository need not be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DENSE_MODELS = ("llama-3.1-8b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "llama-3.1-70b", "llama-3.1-405b")
MOE_MODELS = ("mixtral-8x7b", "qwen3-30b-a3b", "gpt-oss-120b", "deepseek-v3")
PHASE_WEIGHTS = {"ops": 1.0, "dense": 5.0, "moe": 2.5, "collectives": 1.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_collect_out", help="output folder (default $OUT)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16 (GPU default), fp16 or fp32 (CPU default)")
    p.add_argument("--models", default=None, help="comma list of models (default: dense + MoE catalog set; "
                                                     "on CPU tiny-llama,tiny-moe)")
    p.add_argument("--tps", default="1,2,4,8", help="TP shards of dense models")
    p.add_argument("--eps", default="1,2,4,8", help="EP degrees of MoE blocks")
    p.add_argument("--batches", default=None, help="decode batches")
    p.add_argument("--contexts", default=None, help="decode contexts")
    p.add_argument("--prefill-tokens", default=None, help="prefill chunk sizes")
    p.add_argument("--prefill-prior", default=None, help="cached tokens before a prefill chunk (0 = whole prompt)")
    p.add_argument("--moe-batches", default="1,8,32,128,512,2048", help="tokens per MoE block")
    p.add_argument("--phases", default="ops,dense,moe,collectives", help="which phases to run, in order")
    p.add_argument("--layers-timed", type=int, default=5)
    p.add_argument("--replays", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--time-budget-s", type=float, default=450.0, help="stop starting measurements after this")
    p.add_argument("--store", default=None, help="also append rows to this store URL")
    return p.parse_args(argv)


def run_shared(jobs: list[tuple[str, float, Callable[[float], None]]], seconds: float, log) -> None:
    """Run (name, weight, job(seconds)) in order, each given its weight's share of the time left (unused rolls over)."""
    deadline = time.monotonic() + seconds
    for i, (name, weight, job) in enumerate(jobs):
        left = deadline - time.monotonic()
        if left <= 0:
            log(f"budget spent: not starting {', '.join(n for n, _, _ in jobs[i:])}")
            return
        share = left * weight / sum(w for _, w, _ in jobs[i:])
        try:
            job(share)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - one failed part must not lose the rest of the run
            log(f"{name} failed: {type(e).__name__}: {e}")
            traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)

    import torch

    from collect.backends import torch_step as ts
    from collect.backends.torch_collectives import default_message_sizes, measure_collectives
    from features.catalog import resolve_model
    from features.errors import InputError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "torch_probe.csv", out / "device.json"
    backend = ts.TorchStepBackend(args.device, args.dtype, layers_timed=args.layers_timed, replays=args.replays,
                                  warmup=args.warmup)
    on_gpu = backend.is_cuda
    sink = ts.make_sink(csv_path, args.store)
    counts: dict[str, int] = {}
    notes: list[str] = []

    def counted(df) -> None:
        sink(df)
        for kind, op, phase, status in zip(df["kind"], df["op"], df["phase"], df["status"]):
            key = f"{kind}:{op if isinstance(op, str) else phase}:{status}"
            counts[key] = counts.get(key, 0) + 1

    def log(msg: str) -> None:
        notes.append(msg)
        print(f"[gpu_collect] {msg}", file=sys.stderr, flush=True)

    meta = {
        "script": "scripts/gpu_collect.py", "args": vars(args), "started_at": ts._now_iso(),
        "device": ts.device_info(backend.device), "gpu": backend.gpu, "dtype": backend.dtype_name,
        "grouped_mm": ts.grouped_mm_available(backend.device, backend.dtype_name),
        "memory_bytes_planned": backend.memory_bytes, "run_id": backend.run_id, "csv": csv_path.name,
    }

    def write_json(final: bool) -> None:
        doc = {**meta, "finished": final, "elapsed_s": round(time.monotonic() - started, 1), "rows": counts,
               "stopped_early": backend.stopped_early, "skipped": backend.skipped, "notes": notes}
        json_path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))

    write_json(False)
    default_names = (DENSE_MODELS + MOE_MODELS) if on_gpu else ("tiny-llama", "tiny-moe")
    models = []
    for name in ts._names(args.models) or list(default_names):
        try:
            models.append(resolve_model(name))
        except InputError as e:
            log(f"skipping model {name}: {e}")
    grid0 = ts.StepGrid() if on_gpu else ts.cpu_step_grid()
    grid = ts.StepGrid(
        batches=ts.parse_int_list(args.batches, "batches") or grid0.batches,
        contexts=ts.parse_int_list(args.contexts, "contexts") or grid0.contexts,
        prefill_tokens=ts.parse_int_list(args.prefill_tokens, "prefill tokens") or grid0.prefill_tokens,
        prefill_prior=ts.parse_int_list(args.prefill_prior, "prefill prior", allow_zero=True) or grid0.prefill_prior,
    )
    tps, eps = ts.parse_int_list(args.tps, "tps"), ts.parse_int_list(args.eps, "eps")
    moe_batches = ts.parse_int_list(args.moe_batches, "moe batches")

    def budgeted(fn: Callable[[], object]) -> Callable[[float], None]:
        def job(seconds: float) -> None:
            backend.set_time_budget(seconds)
            fn()

        return job

    def ops_phase(seconds: float) -> None:
        grid_ops = ts.probe_op_grid() if on_gpu else ts.cpu_op_grid()
        extra = ops_extra_grid(ts, on_gpu)
        run_shared([("probe ops", 3.0, budgeted(lambda: backend.measure_ops(grid_ops, on_row=counted))),
                    ("kv/rope ops", 1.0, budgeted(lambda: backend.measure_ops(extra, on_row=counted)))], seconds, log)

    def dense_phase(seconds: float) -> None:
        jobs = []
        for m in models:
            if m.is_moe:
                continue
            for tp in tps:
                try:
                    ts.shard_layer(m, tp)
                except InputError as e:
                    log(f"skipping {m.name} tp{tp}: {e}")
                    continue
                if not ts.fits_memory(m, tp, 1, min(grid.contexts), backend.elem_bytes, backend.memory_bytes):
                    log(f"skipping {m.name} tp{tp}: the shard does not fit in {ts.MEMORY_FRACTION:.0%} of memory")
                    continue
                jobs.append((f"{m.name} tp{tp}", 1.0,
                             budgeted(lambda m=m, tp=tp: backend.measure_model(m, tp, grid, on_row=counted))))
        run_shared(jobs, seconds, log)

    def moe_phase(seconds: float) -> None:
        jobs = []
        for m in models:
            if not m.is_moe:
                continue
            for ep in eps:
                if m.num_experts % ep:
                    log(f"skipping {m.name} ep{ep}: does not divide {m.num_experts} experts")
                    continue
                jobs.append((f"{m.name} ep{ep}", 1.0,
                             budgeted(lambda m=m, ep=ep: backend.measure_moe(m, ep, moe_batches, on_row=counted))))
        run_shared(jobs, seconds, log)

    def collectives_phase(seconds: float) -> None:
        ranks = torch.cuda.device_count() if on_gpu else 2
        sizes = default_message_sizes(on_gpu)
        worlds = [w for w in (2, 4, 8) if w <= ranks]
        if not worlds:
            log(f"collectives skipped: {ranks} GPU(s) visible, need at least 2")
            return
        jobs = [(f"collectives x{w}", 1.0, lambda s, w=w: measure_collectives(
            w, sizes, "nccl" if on_gpu else "gloo", on_row=counted, timeout_s=max(10.0, s),
            iters=20 if on_gpu else 5, warmup=5 if on_gpu else 2)) for w in worlds]
        run_shared(jobs, seconds, log)

    phases = {"ops": ops_phase, "dense": dense_phase, "moe": moe_phase, "collectives": collectives_phase}
    chosen = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(phases))
    if unknown:
        log(f"unknown phases ignored: {unknown}")
    jobs = [(p, PHASE_WEIGHTS[p], phases[p]) for p in chosen if p in phases]
    try:
        run_shared(jobs, args.time_budget_s, log)
    except KeyboardInterrupt:
        log("interrupted: rows finished so far are in the CSV")
    finally:
        meta["finished_at"] = ts._now_iso()
        write_json(True)
    total = sum(counts.values())
    print(f"[gpu_collect] {total} rows -> {csv_path}; {json_path.name}; "
          f"{time.monotonic() - started:.0f} s; stopped early: {backend.stopped_early}", file=sys.stderr)
    return 0


def _interrupt(signum, frame) -> None:
    """SIGTERM (a job time limit) ends the run like Ctrl-C, so device.json is still written."""
    raise KeyboardInterrupt


def ops_extra_grid(ts, on_gpu: bool):
    """KV append and RoPE at the shard shapes of Llama-3.1-8B/70B (8 or 1 KV heads, head dim 128)."""
    if not on_gpu:
        return ts.OpGrid(kv_append=(ts.KvAppendShape(4, 256, 2, 64),), rope=(ts.RopeShape(16, 8, 2, 64, 256),))
    kv = tuple(ts.KvAppendShape(b, c, h, 128) for h in (8, 1) for b in (1, 8, 32, 128, 256) for c in (4096, 32768))
    rope = tuple(ts.RopeShape(t, hq, hk, 128, 32768) for hq, hk in ((32, 8), (8, 1))
                 for t in (1, 8, 32, 128, 512, 2048, 8192))
    return ts.OpGrid(kv_append=kv, rope=rope)


if __name__ == "__main__":
    sys.exit(main())
