"""Collect a small real vLLM-CPU serving data set with the vLLM backend: `data/vllm_cpu/measurements.csv`.

Real engine runs (vLLM CPU build, dummy weights) of tiny model shapes from the catalog — `tiny-llama` (2 layers,
hidden 128), `tiny-llama-h512` (the same architecture, 4 layers of hidden 512) and `tiny-moe` — at TP 1 and 2 (and DP 2 online), several `max_num_seqs`, closed batches of 1 to 64 requests, output lengths 64 to 512, a lognormal
(reasoning-like, scaled down) workload, and KV-exhaustion cases (a 40-block cache: the scheduler must preempt).
Each engine start serves several workloads (`VLLMBackend.measure_many`); rows are appended to the CSV (and a store,
if given) as each engine finishes, so an interrupted collection keeps what it finished. Provenance (machine, vLLM
and torch versions, date, load average) goes to `data/vllm_cpu/provenance.json`.

The machine is shared (2 cores, other jobs running): timings carry contention noise; each row's `detail` has the
1-minute load average when its engine finished.

Run: `python -m benchmarks.collect_cpu [--out data/vllm_cpu/measurements.csv] [--store URL] [--budget-min 15]
[--only NAME ...]`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from features.catalog import resolve_model
from features.specs import EngineConfig, Layout, LengthDist, Workload

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data" / "vllm_cpu"


def fixed(isl: int, osl: int, n: int, concurrency: int = 0) -> Workload:
    return Workload(f"fixed:{isl}/{osl}", LengthDist("fixed", isl), LengthDist("fixed", osl), num_requests=n,
                    concurrency=concurrency)


def lognormal(n: int) -> Workload:
    """Reasoning-shaped lengths, scaled to the CPU: ISL median 64, OSL median 256 (sigma 0.8, max 768)."""
    return Workload("lognormal:64/256", LengthDist("lognormal", 64, 0.5, 256), LengthDist("lognormal", 256, 0.8, 768),
                    num_requests=n)


@dataclass
class EngineRun:
    """One engine start and the workloads it serves in turn."""

    name: str
    model: str
    layout: Layout
    engine: EngineConfig
    workloads: list[Workload] = field(default_factory=list)
    mode: str = "offline"


SMALL_KV = dict(block_size=32, num_gpu_blocks_override=40)  # 1,280 tokens of KV cache


def grid() -> list[EngineRun]:
    """The engine starts of the data set, most informative first (the budget may cut the tail)."""
    batch_sweep = [fixed(64, o, n) for o in (64, 256) for n in (1, 8, 32)] + [lognormal(32)]
    return [
        EngineRun("tiny-tp1-seqs64", "tiny-llama", Layout(tp=1), EngineConfig(block_size=32, max_num_seqs=64),
                  batch_sweep + [fixed(64, 512, 64)]),
        EngineRun("tiny-tp1-kv40", "tiny-llama", Layout(tp=1), EngineConfig(max_num_seqs=64, **SMALL_KV),
                  [fixed(32, o, n) for o in (128, 512) for n in (8, 32)] + [lognormal(24)]),
        EngineRun("small-tp1-seqs32", "tiny-llama-h512", Layout(tp=1), EngineConfig(block_size=32, max_num_seqs=32),
                  [fixed(64, o, n) for o in (64, 256) for n in (8, 32)] + [lognormal(16)]),
        EngineRun("tiny-tp2-seqs64", "tiny-llama", Layout(tp=2), EngineConfig(block_size=32, max_num_seqs=64),
                  [fixed(64, o, n) for o in (64, 256) for n in (8, 32)]),
        EngineRun("moe-tp1-seqs64", "tiny-moe", Layout(tp=1), EngineConfig(block_size=32, max_num_seqs=64),
                  [fixed(64, o, n) for o in (64, 256) for n in (8, 32)]),
        EngineRun("tiny-tp1-seqs8-kv40", "tiny-llama", Layout(tp=1), EngineConfig(max_num_seqs=8, **SMALL_KV),
                  [fixed(32, o, 32) for o in (128, 512)]),
        EngineRun("tiny-tp2-kv40", "tiny-llama", Layout(tp=2), EngineConfig(max_num_seqs=64, **SMALL_KV),
                  [fixed(32, 512, 32)]),
        EngineRun("small-tp2-seqs32", "tiny-llama-h512", Layout(tp=2), EngineConfig(block_size=32, max_num_seqs=32),
                  [fixed(64, 256, n) for n in (8, 32)]),
        EngineRun("tiny-tp1-online", "tiny-llama", Layout(tp=1), EngineConfig(block_size=32, max_num_seqs=64),
                  [fixed(64, 256, 32), fixed(64, 256, 32, concurrency=4)], mode="online"),
        # vLLM's own data parallelism (vllm serve --data-parallel-size 2, TP 1 per replica): one replica per core
        EngineRun("tiny-tp1-dp2-online", "tiny-llama", Layout(tp=1, dp=2), EngineConfig(block_size=32, max_num_seqs=64),
                  [fixed(64, 256, 32), fixed(64, 256, 32, concurrency=4)], mode="online"),
    ]


def provenance() -> dict:
    """Machine, software versions and date of the collection."""
    cpu_model = ""
    try:
        cpu_model = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    versions = {}
    for dist in ("vllm-cpu", "vllm", "torch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
            "cpu_model": cpu_model, "cpus_allowed": sorted(os.sched_getaffinity(0)), "memory_gb": round(mem_gb, 1),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "load_avg_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from collect.backends.vllm import VLLMBackend
    from collect.sinks import make_sink

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DATA_DIR / "measurements.csv"))
    ap.add_argument("--store", default=None, help="also append the rows to this store URL")
    ap.add_argument("--budget-min", type=float, default=15.0, help="start no engine after this many minutes")
    ap.add_argument("--only", nargs="*", default=None, help="names of engine runs to do (default all)")
    ap.add_argument("--seed", type=int, default=20260101)
    args = ap.parse_args(argv)

    console = Console(stderr=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sink = make_sink(out, args.store)
    prov = provenance()
    prov["runs"] = []
    t0 = time.monotonic()
    runs = [r for r in grid() if not args.only or r.name in args.only]
    for i, run in enumerate(runs):
        elapsed_min = (time.monotonic() - t0) / 60
        if elapsed_min > args.budget_min:
            console.log(f"budget of {args.budget_min} min spent: skipping {[r.name for r in runs[i:]]}")
            prov["skipped"] = [r.name for r in runs[i:]]
            break
        model = resolve_model(run.model)
        console.log(f"[{i + 1}/{len(runs)}] {run.name}: {len(run.workloads)} workloads ({elapsed_min:.1f} min in)")
        backend = VLLMBackend(mode=run.mode, on_row=sink, timeout_s=900, progress=console.log)
        t_run = time.monotonic()
        frame = backend.measure_many(model, run.layout, run.engine, run.workloads, seed=args.seed + 100 * i)
        prov["runs"].append({"name": run.name, "wall_s": round(time.monotonic() - t_run, 1),
                             "statuses": frame["status"].value_counts().to_dict(), "load_avg": os.getloadavg()})
    prov["load_avg_end"] = os.getloadavg()
    prov["total_wall_min"] = round((time.monotonic() - t0) / 60, 1)
    prov_path = out.parent / "provenance.json"
    # every collection session is kept: rows already in the CSV keep the provenance of the session that made them
    doc = json.loads(prov_path.read_text()) if prov_path.exists() else {"sessions": []}
    if "sessions" not in doc:
        doc = {"sessions": [doc]}
    doc["sessions"].append(prov)
    prov_path.write_text(json.dumps(doc, indent=2) + "\n")
    console.log(f"done in {prov['total_wall_min']} min: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
