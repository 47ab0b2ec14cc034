"""`layoutcast search`: the best layout (and knobs) for N GPUs under latency SLOs, ranked with reasons."""

from __future__ import annotations

import sys

from predictor.commands.common import add_model_gpu, fmt, print_json


def register(sub) -> None:
    p = sub.add_parser("search", help="search parallel layouts for N GPUs")
    add_model_gpu(p)
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs to deploy on")
    p.add_argument("--workload", default=None, help="reasoning | chat | fixed:ISL/OSL (default reasoning)")
    p.add_argument("--isl", type=int, default=None)
    p.add_argument("--osl", type=int, default=None)
    p.add_argument("--requests", type=int, default=0, help="closed batch size (default 2,000 for --objective makespan)")
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--objective", default="throughput", choices=["throughput", "makespan", "tpot"])
    p.add_argument("--slo-ttft-ms", type=float, default=None)
    p.add_argument("--slo-tpot-ms", type=float, default=None)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--exhaustive", action="store_true", help="enumerate every candidate instead of Optuna TPE")
    p.add_argument("--knobs", action="store_true", help="also search max_num_seqs, max_num_batched_tokens, KV dtype")
    p.add_argument("--weight-dtype", default=None, choices=["bf16", "fp16", "fp8", "fp4"])
    p.add_argument("--predictor", default=None, help="a model artifact from `layoutcast train` (default: bundled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=10, help="rows to show")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.set_defaults(func=run)


def run(args) -> int:
    from features.errors import InputError
    from predictor.api import Predictor
    from predictor.search import WIDE_KNOBS, search

    if args.requests < 0 or args.concurrency < 0:
        raise InputError("--requests and --concurrency must not be negative")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise InputError("--plot must name a .png file")
    slo = {k: v for k, v in (("ttft_ms", args.slo_ttft_ms), ("tpot_ms", args.slo_tpot_ms)) if v is not None}
    res = search(model=args.model, gpu=args.gpu, num_gpus=args.gpus, workload=args.workload or "reasoning",
                 objective=args.objective, slo=slo, trials=args.trials, exhaustive=args.exhaustive,
                 num_requests=args.requests or None, concurrency=args.concurrency, isl=args.isl, osl=args.osl,
                 knobs=WIDE_KNOBS if args.knobs else None, weight_dtype=args.weight_dtype, seed=args.seed,
                 predictor=Predictor.load(args.predictor))
    if args.plot:
        res.plot(args.plot)
    if args.json:
        doc = res.to_dict(top=args.top)
        if args.plot:
            doc["plot"] = args.plot
        print_json(doc)
        return 0
    _print_table(res, args)
    return 0


def _print_table(res, args) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=None if sys.stdout.isatty() else 160)
    df = res.ranked
    t = Table(title=f"{args.model} on {args.gpus}x {args.gpu}: objective {res.objective} ({res.method}; "
              f"{res.evaluated} of {res.space_size} candidates scored)")
    cols = [("layout", "layout", 0), ("pred_output_throughput", "out tok/s", 0), ("throughput_per_gpu", "tok/s/GPU", 0),
            ("pred_makespan_s", "makespan s", 0), ("pred_tpot_ms", "TPOT ms", 1), ("pred_ttft_ms", "TTFT ms", 0),
            ("pred_kv_capacity_tokens", "KV tokens/replica", 0), ("steady_batch", "batch", 0), ("preemptions", "preempt", 0),
            ("regime", "regime", 0), ("bottleneck", "bottleneck", 0)]
    if args.knobs:
        cols.insert(1, ("max_num_seqs", "max seqs", 0))
        cols.insert(2, ("kv_cache_dtype", "kv", 0))
    for _, label, _ in cols:
        t.add_column(label, justify="left" if label in ("layout", "regime", "bottleneck", "kv") else "right")
    feas = df[df["feasible"]].drop_duplicates(subset=["layout", "max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype"])
    for i, (_, r) in enumerate(feas.head(args.top).iterrows()):
        style = "bold green" if i == 0 and res.best else ("dim" if not r["meets_slo"] else None)
        t.add_row(*[str(r[k]) if d == 0 and isinstance(r[k], str) else fmt(r[k], d) for k, _, d in cols], style=style)
    c.print(t)
    infeasible = df[~df["feasible"]].drop_duplicates(subset=["layout"])
    if len(infeasible):
        c.print("[bold]infeasible:[/bold]")
        for _, r in infeasible.iterrows():
            c.print(f"  {r['layout']}: {r['reason']}")
    if res.best:
        b = res.best
        c.print(f"[bold green]best: {b['layout']}[/bold green] — {fmt(b['pred_output_throughput'], 0)} output tok/s "
                f"({fmt(b['pred_output_throughput_lo'], 0)}–{fmt(b['pred_output_throughput_hi'], 0)}), TPOT {fmt(b['pred_tpot_ms'])} ms, "
                f"{b['regime']}-bound ({b['bottleneck']})")
    if res.message:
        c.print(f"[yellow]{res.message}[/yellow]")
