"""`layoutcast predict`: one configuration's throughput, TTFT, TPOT, KV capacity and makespan, with intervals."""

from __future__ import annotations

import sys

from features.catalog import resolve_model
from predictor.commands.common import add_engine, add_layout, add_model_gpu, add_workload, check_positive, engine_from_args, fmt, print_json

TARGET_LABELS = [
    ("output_throughput", "output throughput (tok/s)"), ("total_throughput", "total throughput (tok/s)"),
    ("request_throughput", "requests/s"), ("ttft_ms", "TTFT mean (ms)"), ("ttft_p99_ms", "TTFT p99 (ms)"),
    ("tpot_ms", "TPOT mean (ms)"), ("tpot_p99_ms", "TPOT p99 (ms)"), ("makespan_s", "makespan (s)"),
    ("kv_capacity_tokens", "KV capacity per replica (tokens)"), ("preemptions", "preemptions"),
]


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict one configuration")
    add_model_gpu(p)
    add_layout(p)
    add_workload(p)
    add_engine(p)
    p.add_argument("--no-simulate", action="store_true", help="steady-state physics only (skip the scheduler simulation)")
    p.add_argument("--predictor", default=None, help="a model artifact from `layoutcast train` (default: bundled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def run(args) -> int:
    from predictor.api import Predictor

    check_positive(args, "requests", "concurrency", "rate")
    model = resolve_model(args.model)
    engine = engine_from_args(args, model.native_dtype)
    pred = Predictor.load(args.predictor)
    r = pred.predict(args.model, args.gpu, args.tp, args.pp, args.dp, args.ep, args.attention_dp,
                     args.workload or "reasoning", args.requests, args.concurrency, args.rate, args.isl, args.osl,
                     engine=engine, simulate=False if args.no_simulate else None, seed=args.seed)
    if args.json:
        print_json(r.to_dict())
        return 0
    from rich.console import Console
    from rich.table import Table

    c = Console(width=None if sys.stdout.isatty() else 160)
    t = Table(title=f"{r.model} on {r.num_gpus}x {r.gpu} — {r.layout} — workload {r.workload}"
              + (f", {args.requests} requests" if args.requests else ""))
    t.add_column("target")
    t.add_column("predicted", justify="right")
    t.add_column("80% interval", justify="right")
    for key, label in TARGET_LABELS:
        v = r.targets.get(key)
        if key == "kv_capacity_tokens" and v is None:
            v = {"value": r.kv_capacity_tokens, "lo": float("nan"), "hi": float("nan")}
        if v is None:
            continue
        iv = f"{fmt(v['lo'])} – {fmt(v['hi'])}" if v["lo"] == v["lo"] else "-"
        t.add_row(label, fmt(v["value"]), iv)
    c.print(t)
    c.print(f"steady batch per replica: {fmt(r.steady_batch, 0)} sequences (KV cache holds {fmt(r.explanation.get('batch_limit_kv'), 0)}"
            f" at the average context); regime: [bold]{r.regime}[/bold], bottleneck: [bold]{r.bottleneck}[/bold]; "
            f"source: {r.source}{' + scheduler simulation' if r.simulated else ''}")
    terms = {k: v for k, v in r.explanation.items() if k.endswith("_ms")}
    if terms:
        c.print("step time terms (ms per step): " + ", ".join(f"{k[:-3]} {fmt(v, 2)}" for k, v in terms.items()))
    return 0
