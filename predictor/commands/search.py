"""`layoutcast search`: the best deployment (layout, replica mix or prefill/decode pools, and knobs) for N GPUs
under latency SLOs, ranked with intervals and the limit that binds; Pareto search; distributed Optuna studies."""

from __future__ import annotations

import sys

from predictor.commands.common import add_model_gpu, fmt, print_json


def register(sub) -> None:
    p = sub.add_parser("search", help="search parallel layouts for N GPUs")
    add_model_gpu(p)
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs to deploy on (any number of nodes)")
    p.add_argument("--workload", default=None, help="reasoning | chat | fixed:ISL/OSL (default reasoning)")
    p.add_argument("--isl", type=int, default=None)
    p.add_argument("--osl", type=int, default=None)
    p.add_argument("--requests", type=int, default=0, help="closed batch size (default 2,000 for --objective makespan)")
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.0, help="request rate (requests/s)")
    p.add_argument("--objective", default="throughput", choices=["throughput", "makespan", "tpot", "ttft"])
    p.add_argument("--pareto", default=None, choices=["tpot", "ttft"],
                   help="multi-objective: throughput per GPU against TPOT or TTFT (NSGA-II)")
    p.add_argument("--slo-ttft-ms", type=float, default=None)
    p.add_argument("--slo-tpot-ms", type=float, default=None)
    p.add_argument("--slo-ttft-p99-ms", type=float, default=None)
    p.add_argument("--slo-tpot-p99-ms", type=float, default=None)
    p.add_argument("--trials", type=int, default=400, help="Optuna trial budget (default 400)")
    p.add_argument("--exhaustive", action="store_true", help="score every candidate instead of Optuna")
    p.add_argument("--sampler", default="auto", choices=["auto", "tpe", "nsga2", "random"])
    p.add_argument("--modes", default=None,
                   help="deployment modes to consider (comma-separated: aggregated,mixed,disaggregated; default all "
                        "three; for a closed batch --requests N the leaders of every mode are re-scored by the "
                        "scheduler simulation, preemption recompute and the tail included)")
    p.add_argument("--knobs", action="store_true",
                   help="also search max_num_seqs, max_num_batched_tokens, KV dtype, gpu_memory_utilization")
    p.add_argument("--weight-dtype", default=None, choices=["bf16", "fp16", "fp8", "fp4"])
    p.add_argument("--refine", type=int, default=8, metavar="N",
                   help="closed batches: re-score the N leading candidates with the scheduler simulation (0: off)")
    p.add_argument("--draws", type=int, default=3, metavar="N",
                   help="closed batches: simulated candidates within --tie-margin of the leader are averaged over N "
                        "sampled batches, the same for each (default 3; 1: one batch)")
    p.add_argument("--tie-margin", type=float, default=0.05, metavar="F",
                   help="closed batches: which candidates get the extra batches (within this fraction of the leader)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna RDB storage shared by several workers (sqlite:///f.db, postgresql://...)")
    p.add_argument("--study-name", default=None, help="study name in --storage (default: derived from the question)")
    p.add_argument("--predictor", default=None, help="a model artifact from `layoutcast train` (default: bundled)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=10, help="rows to show")
    p.add_argument("--explain", action="store_true", help="why the winner wins, term by term beside the runner-up")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", default=None, metavar="FILE.png")
    p.set_defaults(func=run)


def run(args) -> int:
    from features.errors import InputError
    from predictor.api import Predictor
    from predictor.search import WIDE_KNOBS, search

    if args.requests < 0 or args.concurrency < 0 or args.rate < 0:
        raise InputError("--requests, --concurrency and --rate must not be negative")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise InputError("--plot must name a .png file")
    if args.study_name and not args.storage:
        raise InputError("--study-name needs --storage (a shared Optuna database)")
    slo = {k: v for k, v in (("ttft_ms", args.slo_ttft_ms), ("tpot_ms", args.slo_tpot_ms),
                             ("ttft_p99_ms", args.slo_ttft_p99_ms), ("tpot_p99_ms", args.slo_tpot_p99_ms))
           if v is not None}
    if args.modes is None:
        args.modes = "aggregated,mixed,disaggregated"
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    res = search(model=args.model, gpu=args.gpu, num_gpus=args.gpus, workload=args.workload or "reasoning",
                 objective=args.objective, slo=slo, trials=args.trials, exhaustive=args.exhaustive,
                 num_requests=args.requests or None, concurrency=args.concurrency, request_rate=args.rate,
                 isl=args.isl, osl=args.osl, knobs=WIDE_KNOBS if args.knobs else None, weight_dtype=args.weight_dtype,
                 seed=args.seed, predictor=Predictor.load(args.predictor), modes=modes, secondary=args.pareto,
                 sampler=args.sampler, storage=args.storage, study_name=args.study_name, refine_top=args.refine,
                 draws=args.draws, tie_margin=args.tie_margin,
                 show_progress=not args.json and sys.stderr.isatty())
    if args.plot:
        res.plot(args.plot)
    if args.json:
        doc = res.to_dict(top=args.top, explain=args.explain)
        if args.plot:
            doc["plot"] = args.plot
        print_json(doc)
        return 0
    _print_table(res, args)
    if args.explain:
        _print_explain(res)
    return 0


def _print_table(res, args) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=None if sys.stdout.isatty() else 200)
    df = res.ranked
    t = Table(title=f"{args.model} on {args.gpus}x {args.gpu}: objective {res.objective} ({res.method}; "
              f"{res.evaluated:,} of {res.space_size:,} candidates scored)")
    cols = [("mode", "mode", 0), ("layout", "layout", 0), ("pred_output_throughput", "out tok/s", 0),
            ("pred_output_throughput_lo", "lo", 0), ("pred_output_throughput_hi", "hi", 0),
            ("throughput_per_gpu", "tok/s/GPU", 0), ("pred_makespan_s", "makespan s", 0), ("pred_tpot_ms", "TPOT ms", 1),
            ("pred_ttft_ms", "TTFT ms", 0), ("pred_kv_capacity_tokens", "KV tokens/replica", 0),
            ("steady_batch", "batch", 0), ("preemptions", "preempt", 0), ("regime", "regime", 0),
            ("bottleneck", "bottleneck", 0)]
    if args.knobs:
        cols[2:2] = [("max_num_seqs", "max seqs", 0), ("max_num_batched_tokens", "tokens/step", 0),
                     ("kv_cache_dtype", "kv", 0), ("gpu_memory_utilization", "mem util", 2)]
    text = {"mode", "layout", "regime", "bottleneck", "kv"}
    for _, label, _ in cols:
        t.add_column(label, justify="left" if label in text else "right")
    feas = df[df["feasible"]].drop_duplicates(subset=["mode", "layout"])  # each layout once, at its best knobs
    for i, (_, r) in enumerate(feas.head(args.top).iterrows()):
        style = "bold green" if i == 0 and res.best else ("dim" if not r["meets_slo"] else None)
        t.add_row(*[str(r[k]) if isinstance(r[k], str) else fmt(r[k], d) for k, _, d in cols], style=style)
    c.print(t)
    infeasible = df[~df["feasible"]].drop_duplicates(subset=["layout"])
    if len(infeasible):
        c.print(f"[bold]infeasible ({len(infeasible)} layouts):[/bold]")
        for _, r in infeasible.head(args.top * 2).iterrows():
            c.print(f"  {r['layout']}: {r['reason']}")
    if res.best:
        b = res.best
        c.print(f"[bold green]best: {b['layout']}[/bold green] ({b['mode']}) — {fmt(b['pred_output_throughput'], 0)} output "
                f"tok/s ({fmt(b['pred_output_throughput_lo'], 0)}–{fmt(b['pred_output_throughput_hi'], 0)}), TPOT "
                f"{fmt(b['pred_tpot_ms'])} ms, TTFT {fmt(b['pred_ttft_ms'], 0)} ms, {b['regime']}-bound ({b['bottleneck']})")
    if res.secondary and len(res.pareto):
        c.print(f"Pareto front (throughput per GPU vs {res.secondary}): " + ", ".join(
            f"{r['layout']} {fmt(r['throughput_per_gpu'], 0)}/{fmt(r[res.pareto_axis], 1)}"
            for _, r in res.pareto.head(8).iterrows()))
    if res.message:
        c.print(f"[yellow]{res.message}[/yellow]")


def _print_explain(res) -> None:
    from rich.console import Console
    from rich.table import Table

    from predictor.explain import explain_lines

    ex = res.explain()
    c = Console(width=None if sys.stdout.isatty() else 200)
    if ex.get("table"):
        t = Table(title=f"why {ex['winner']} wins" + (f" over {ex['runner_up']}" if ex.get("runner_up") else ""))
        for h in ("", "winner", "runner-up"):
            t.add_column(h, justify="left" if not h else "right")
        for row in explain_lines(ex):
            t.add_row(*row)
        c.print(t)
    for line in ex["why"]:
        c.print(f"  • {line}")
