"""Collective timings (all-reduce, all-gather, all-to-all) vs message size with torch.distributed.

`world_size` processes are spawned with torch.multiprocessing (gloo on CPU, NCCL on GPUs, one GPU per rank); rank 0
sends each finished measurement to the parent through a queue, and the parent turns it into a schema row and hands
it to the sink at once. `message_bytes` is the size of the whole buffer on each rank, as nccl-tests counts it:
all-reduce input (= output), all-gather output (world_size x input), all-to-all send buffer.
"""

from __future__ import annotations

import json
import queue as queue_mod
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from collect.backends.torch_step import (
    ENGINE,
    SOURCE,
    _concat,
    _json_default,
    _now_iso,
    _progress,
    _row_device_detail,
    catalog_gpu_name,
    device_info,
    torch_dtype,
)
from collect.sinks import RowSink
from features.errors import InputError
from features.schema import conform

COLLECTIVES = ("allreduce", "allgather", "alltoall")
# bus bandwidth factor (nccl-tests): bytes each rank moves over its link per byte of message
_BUS_FACTOR = {"allreduce": lambda n: 2 * (n - 1) / n, "allgather": lambda n: (n - 1) / n,
               "alltoall": lambda n: (n - 1) / n}


def default_message_sizes(on_gpu: bool) -> tuple[int, ...]:
    """Message sizes in bytes: 1 KiB to 256 MiB (x4) on GPUs, 1 KiB to 4 MiB (x16) on CPU."""
    if on_gpu:
        return tuple(2**p for p in range(10, 29, 2))
    return tuple(2**p for p in range(10, 23, 4))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _message_elements(op: str, message_bytes: int, elem_bytes: int, world_size: int) -> int:
    """Elements of the whole per-rank buffer, rounded up so it splits evenly over the ranks."""
    elems = max(1, -(-message_bytes // elem_bytes))
    return -(-elems // world_size) * world_size


def _worker(rank: int, world_size: int, port: int, backend: str, ops: Sequence[str], sizes: Sequence[int],
            dtype_name: str, warmup: int, iters: int, results) -> None:
    """One rank: time every (op, size), MAX over ranks per iteration; rank 0 puts each result on `results`."""
    import torch
    import torch.distributed as dist

    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        dtype = torch_dtype(dtype_name)
        elem_bytes = torch.empty((), dtype=dtype).element_size()
        all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        for op in ops:
            for size in sizes:
                n = _message_elements(op, size, elem_bytes, world_size)
                buf = torch.ones(n, device=device, dtype=dtype)
                out = torch.empty_like(buf)
                part = buf[: n // world_size]
                run = {
                    "allreduce": lambda: dist.all_reduce(buf),
                    "allgather": lambda: all_gather(out, part),
                    "alltoall": lambda: dist.all_to_all_single(out, buf),
                }[op]
                ms = _time_collective(run, device, warmup, iters)
                times = torch.tensor(ms, device=device, dtype=torch.float64)
                dist.all_reduce(times, op=dist.ReduceOp.MAX)
                if rank == 0:
                    worst = times.cpu().numpy()
                    results.put({"op": op, "message_bytes": n * elem_bytes, "requested_bytes": size,
                                 "median_ms": float(np.median(worst)), "min_ms": float(worst.min()),
                                 "max_ms": float(worst.max()), "iters": iters, "warmup": warmup})
                del buf, out, part
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _time_collective(run, device: str, warmup: int, iters: int) -> list[float]:
    """Per-iteration times in ms of a collective: CUDA events on GPU, wall clock (synchronous gloo) on CPU."""
    import torch
    import torch.distributed as dist

    for _ in range(warmup):
        run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        dist.barrier()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            run()
            e.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    dist.barrier()
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def measure_collectives(world_size: int, sizes: Sequence[int], backend: str = "gloo", *,
                        ops: Sequence[str] = COLLECTIVES, dtype: str | None = None, warmup: int = 5,
                        iters: int = 20, on_row: RowSink | None = None, progress: bool = True,
                        timeout_s: float = 600.0) -> pd.DataFrame:
    """Time each collective at each message size over `world_size` spawned processes; one op row per (op, size)."""
    import torch
    import torch.multiprocessing as mp

    if world_size < 2:
        raise InputError(f"collectives need world_size >= 2, not {world_size}")
    if backend not in ("gloo", "nccl"):
        raise InputError(f"collective backend {backend!r} is not gloo or nccl")
    bad = sorted(set(ops) - set(COLLECTIVES))
    if bad:
        raise InputError(f"unknown collectives {bad}; expected some of {list(COLLECTIVES)}")
    if not sizes or min(sizes) < 1:
        raise InputError("collective message sizes must be positive byte counts")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise InputError(f"nccl collectives over {world_size} ranks need {world_size} GPUs; "
                         f"torch sees {torch.cuda.device_count()}")
    dtype = dtype or ("bf16" if backend == "nccl" else "fp32")
    torch_dtype(dtype)
    info = device_info("cuda:0" if backend == "nccl" else "cpu")
    gpu = catalog_gpu_name(info["device_name"]) if backend == "nccl" else "cpu"
    run_id = f"torch-coll-{uuid.uuid4().hex[:12]}"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = mp.start_processes(
        _worker, args=(world_size, _free_port(), backend, tuple(ops), tuple(sizes), dtype, warmup, iters, results),
        nprocs=world_size, join=False, start_method="spawn",
    )
    frames: list[pd.DataFrame] = []
    expected = len(ops) * len(sizes)
    deadline = time.monotonic() + timeout_s
    with _progress(f"collectives x{world_size} ({backend})", expected, progress) as advance:
        finished = False
        while len(frames) < expected:
            try:
                res = results.get(timeout=0.2)
            except queue_mod.Empty:
                if finished:
                    break
                finished = procs.join(timeout=0.05)  # raises if a rank failed
                if time.monotonic() > deadline:
                    _terminate(procs)
                    raise RuntimeError(f"collectives over {world_size} ranks did not finish in {timeout_s:.0f} s")
                continue
            df = conform(pd.DataFrame([_row(res, world_size, backend, dtype, gpu, info, run_id)]))
            frames.append(df)
            if on_row is not None:
                on_row(df)
            advance(f"{res['op']} {res['message_bytes']} B")
        while not procs.join(timeout=1.0):
            if time.monotonic() > deadline:
                _terminate(procs)
                raise RuntimeError(f"collectives over {world_size} ranks did not exit in {timeout_s:.0f} s")
    return _concat(frames)


def _terminate(procs) -> None:
    for p in procs.processes:
        if p.is_alive():
            p.terminate()


def _row(res: dict[str, Any], world_size: int, backend: str, dtype: str, gpu: str, info: dict[str, Any],
         run_id: str) -> dict[str, Any]:
    import torch

    op, size, ms = res["op"], res["message_bytes"], res["median_ms"]
    algbw_gbps = size / (ms * 1e-3) / 1e9 if ms > 0 else float("nan")
    detail = {
        "message_bytes": size, "requested_bytes": res["requested_bytes"], "world_size": world_size,
        "backend": backend, "ms_min": res["min_ms"], "ms_max": res["max_ms"], "iters": res["iters"],
        "warmup": res["warmup"], "algbw_gbps": algbw_gbps, "busbw_gbps": algbw_gbps * _BUS_FACTOR[op](world_size),
        "timing": "per-iteration max over ranks, median over iterations", "dtype": dtype,
        **_row_device_detail(info),
    }
    return {
        "kind": "op", "source": SOURCE, "engine": ENGINE, "engine_version": torch.__version__,
        "measured_at": _now_iso(), "status": "ok", "gpu": gpu, "num_gpus": world_size,
        "gpus_per_node": info.get("gpu_count") if backend == "nccl" else None, "weight_dtype": dtype,
        "op": op, "op_ms": ms, "run_id": run_id, "detail": json.dumps(detail, sort_keys=True, default=_json_default),
    }
