"""Arguments shared by several sub-commands (model, GPU, layout, workload, engine knobs) and output helpers."""

from __future__ import annotations

import json
import sys

from features.errors import InputError


def add_model_gpu(p, gpus_flag: bool = False) -> None:
    p.add_argument("--model", required=True, help="catalog name, HF id, or path to a config.json")
    p.add_argument("--gpu", required=True, help="catalog GPU name (h200, h100, a100-80g, b200, ...)")


def add_layout(p) -> None:
    for name, help_ in (("tp", "tensor parallel"), ("pp", "pipeline parallel"), ("dp", "data parallel"), ("ep", "expert parallel")):
        p.add_argument(f"--{name}", type=int, default=1, help=f"{help_} degree (default 1)")
    p.add_argument("--attention-dp", action="store_true", help="attention data parallel (MoE; with --ep)")


def add_workload(p) -> None:
    p.add_argument("--workload", default=None, help="reasoning | chat | fixed:ISL/OSL (default reasoning)")
    p.add_argument("--isl", type=int, default=None, help="fixed input length (tokens), with --osl")
    p.add_argument("--osl", type=int, default=None, help="fixed output length (tokens), with --isl")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--requests", type=int, default=0, help="closed batch of N requests submitted at once")
    g.add_argument("--concurrency", type=int, default=0, help="fixed number of requests in flight")
    g.add_argument("--rate", type=float, default=0.0, help="request rate (requests/s, Poisson)")


def add_engine(p) -> None:
    p.add_argument("--engine", default="vllm", choices=["vllm"], help="serving engine modelled (default vllm)")
    p.add_argument("--weight-dtype", default=None, choices=["bf16", "fp16", "fp8", "fp4"], help="default: the model's native dtype")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "bf16", "fp16", "fp8"])
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--block-size", type=int, default=16)


def engine_from_args(args, native_dtype: str):
    from features.specs import EngineConfig

    if not 0.05 <= args.gpu_memory_utilization <= 1.0:
        raise InputError("--gpu-memory-utilization must be in (0.05, 1]")
    for flag in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be positive")
    return EngineConfig(engine=args.engine, weight_dtype=args.weight_dtype or native_dtype, kv_cache_dtype=args.kv_cache_dtype,
                        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                        gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size)


def check_positive(args, *names) -> None:
    for n in names:
        v = getattr(args, n, None)
        if v is not None and v < 0:
            raise InputError(f"--{n.replace('_', '-')} must not be negative")
    for n in ("tp", "pp", "dp", "ep"):
        v = getattr(args, n, None)
        if v is not None and v < 1:
            raise InputError(f"--{n} must be at least 1")


def print_json(doc) -> None:
    from predictor.api import _jsonable

    sys.stdout.write(json.dumps(_jsonable(doc), indent=2) + "\n")


def fmt(v, digits: int = 1) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f != f:
        return "-"
    if abs(f) >= 1e5:
        return f"{f:,.0f}"
    return f"{f:,.{digits}f}"
