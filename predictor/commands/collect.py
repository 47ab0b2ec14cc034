"""`layoutcast collect`: take real measurements with a backend and write them to the store and/or a CSV file.

Each backend is one entry of BACKENDS: a function (args, sink, say) -> frame of schema rows; adding a backend is
one function and one line. Rows are written as each run finishes, so an interrupted collection keeps them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

from features.errors import InputError
from predictor.commands.common import add_engine, add_layout, check_positive, engine_from_args, fmt


def register(sub) -> None:
    p = sub.add_parser("collect", help="measure configurations with a real engine and store the rows")
    p.add_argument("--backend", required=True, choices=sorted(BACKENDS), help="measurement backend")
    p.add_argument("--model", required=True, help="catalog name, HF id, or path to a config.json")
    p.add_argument("--gpu", default=None, help="catalog GPU name (default: detected; `cpu` for vLLM-CPU)")
    add_layout(p)
    p.add_argument("--workload", default=None, help="reasoning | chat | fixed:ISL/OSL (default reasoning)")
    p.add_argument("--isl", type=int, default=None, help="fixed input length (tokens), with --osl")
    p.add_argument("--osl", type=int, default=None, help="fixed output length (tokens), with --isl")
    p.add_argument("--requests", type=int, default=32, help="number of requests (a closed batch unless "
                   "--concurrency or --rate shapes their arrival; default 32)")
    p.add_argument("--concurrency", type=int, default=0, help="requests in flight at most (default: all)")
    p.add_argument("--rate", type=float, default=0.0, help="request rate (requests/s, Poisson; default: all at once)")
    add_engine(p)
    p.set_defaults(block_size=None)  # engine default per build: 16 on GPUs, 32 on vLLM-CPU (its attention needs it)
    p.add_argument("--kv-cache-gb", type=float, default=0.0, help="KV cache memory per replica (GB; default: engine)")
    p.add_argument("--num-gpu-blocks", type=int, default=0, help="exactly this many KV blocks (vLLM override)")
    p.add_argument("--max-model-len", type=int, default=0, help="default: the longest request")
    p.add_argument("--no-chunked-prefill", action="store_true")
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--prefix-caching", action="store_true", help="enable prefix caching (off by default)")
    p.add_argument("--mode", default="offline", choices=["offline", "online"],
                   help="vLLM: LLM API in a child process, or `vllm serve` + streaming client")
    p.add_argument("--seed", type=int, default=None, help="default: a fresh random seed per run")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take before it is stopped")
    p.add_argument("--store", default=None, help="store URL or SQLite path to append the rows to")
    p.add_argument("--out", default=None, help="CSV file to append the rows to")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON document")
    from collect.backends.torch_step import add_torch_arguments

    add_torch_arguments(p)  # --measure, --device, --batches, --contexts, ... (torch backend only)
    p.set_defaults(func=run)


def _workload(args):
    from features.catalog import resolve_workload

    if args.requests < 1:
        raise InputError("--requests must be at least 1")
    w = resolve_workload(args.workload, args.isl, args.osl)
    return w.with_arrival(num_requests=args.requests, concurrency=args.concurrency, request_rate=args.rate)


def run_vllm(args, sink, say):
    """Measure one configuration with the real vLLM engine (collect.backends.vllm)."""
    from collect.backends.vllm import VLLMBackend, vllm_install
    from features.catalog import resolve_model
    from features.specs import Layout

    model = resolve_model(args.model)
    if args.block_size is None:
        args.block_size = 32 if vllm_install().cpu else 16
    engine = replace(engine_from_args(args, model.native_dtype), kv_cache_memory_gb=args.kv_cache_gb,
                     num_gpu_blocks_override=args.num_gpu_blocks, max_model_len=args.max_model_len,
                     enable_chunked_prefill=not args.no_chunked_prefill, enforce_eager=args.enforce_eager,
                     enable_prefix_caching=args.prefix_caching)
    layout = Layout(tp=args.tp, pp=args.pp, dp=args.dp, ep=args.ep, attention_dp=args.attention_dp)
    backend = VLLMBackend(mode=args.mode, gpu=args.gpu, timeout_s=args.timeout, on_row=sink, progress=say)
    return backend.measure(model, layout, engine, _workload(args), seed=args.seed)


def run_torch(args, sink, say):
    """Step, op, MoE and collective timings with real torch forward passes (collect.backends.torch_step)."""
    from collect.backends.torch_step import collect_torch

    opts = dict(vars(args))
    opts["csv"] = args.out
    say(f"torch backend: {opts.get('measure') or 'step'} for {args.model}")
    return collect_torch(opts, args.store)


BACKENDS = {"vllm": run_vllm, "torch": run_torch}

SHOWN = [("status", "status"), ("output_throughput", "output tok/s"), ("total_throughput", "total tok/s"),
         ("ttft_ms", "TTFT ms"), ("ttft_p99_ms", "TTFT p99"), ("tpot_ms", "TPOT ms"), ("tpot_p99_ms", "TPOT p99"),
         ("makespan_s", "makespan s"), ("kv_capacity_tokens", "KV tokens"), ("preemptions", "preemptions")]


STEP_SHOWN = [("status", "status"), ("kind", "kind"), ("phase", "phase"), ("op", "op"), ("batch", "batch"),
              ("context", "context"), ("tokens", "tokens"), ("layer_ms", "layer ms"), ("lm_head_ms", "LM head ms"),
              ("op_ms", "op ms")]


def run(args) -> int:
    from rich.console import Console

    from collect.sinks import make_sink

    check_positive(args, "concurrency", "rate", "kv_cache_gb", "num_gpu_blocks", "max_model_len")
    if args.timeout <= 0:
        raise InputError("--timeout must be positive")
    sink = make_sink(args.out, args.store)
    err = Console(stderr=True)
    with err.status(f"collecting with {args.backend}...") as status:
        def say(msg: str) -> None:
            err.log(msg)
            status.update(msg)

        frame = BACKENDS[args.backend](args, sink, say)
    if args.json:
        rows = json.loads(frame.to_json(orient="records"))
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        from rich.table import Table

        shown = SHOWN if (frame["kind"] == "serving").all() else STEP_SHOWN
        t = Table(title=f"{args.backend} measurements")
        for col in ("model", "tp", "pp", "dp", "ep") + tuple(label for _, label in shown):
            t.add_column(col, justify="right")
        for _, r in frame.iterrows():
            t.add_row(str(r["model"]), *(str(r[c]) for c in ("tp", "pp", "dp", "ep")),
                      *(str(r[c]) if c in ("status", "kind", "phase", "op") else fmt(r[c], 4) for c, _ in shown))
        Console(width=None if sys.stdout.isatty() else 200).print(t)
        for _, r in frame.iterrows():
            if r["status"] != "ok":
                sys.stderr.write(f"run {r['run_id']}: {r['status']}: {json.loads(r['detail']).get('reason')}\n")
    return 0 if (frame["status"] == "ok").all() else 1
