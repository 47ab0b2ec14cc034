"""Child-process entry point of the vLLM backend's offline mode: runs the `LLM` API on a plan, writes JSON results.

Run as `python -m collect.backends.vllm_offline PLAN.json RESULT.json`. The plan holds the `LLM` keyword arguments
and one or more workloads (token-id prompts, output lengths, concurrency or request rate); one engine serves them
in turn. After engine start and after every workload the result file is rewritten, so a crash keeps what finished.
An untimed warm-up batch (the plan's `warmup`) runs first. Per request it records vLLM's own timings (`RequestOutput.metrics`: first-token latency, first/last token times).
Only this child imports vLLM; the parent turns the JSON into schema rows (`collect.backends.vllm`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def _write_json(path: Path, doc: dict) -> None:
    """Write `doc` atomically (temp file + rename), so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def effective_engine_config(llm) -> dict:
    """The engine's own view of its knobs after defaults and platform adjustments (vllm_config)."""
    vc = llm.llm_engine.vllm_config
    sc, cc, mc, pc = vc.scheduler_config, vc.cache_config, vc.model_config, vc.parallel_config

    def get(obj, name, default=None):
        v = getattr(obj, name, default)
        return v if isinstance(v, (int, float, str, bool)) or v is None else str(v)

    return {
        "max_num_seqs": get(sc, "max_num_seqs"),
        "max_num_batched_tokens": get(sc, "max_num_batched_tokens"),
        "enable_chunked_prefill": get(sc, "enable_chunked_prefill", get(sc, "chunked_prefill_enabled")),
        "block_size": get(cc, "block_size"),
        "kv_cache_dtype": get(cc, "cache_dtype"),
        "enable_prefix_caching": get(cc, "enable_prefix_caching"),
        "gpu_memory_utilization": get(cc, "gpu_memory_utilization"),
        "kv_cache_memory_bytes": get(cc, "kv_cache_memory_bytes"),
        "num_gpu_blocks": get(cc, "num_gpu_blocks"),
        "num_gpu_blocks_override": get(cc, "num_gpu_blocks_override"),
        "max_model_len": get(mc, "max_model_len"),
        "dtype": get(mc, "dtype"),
        "enforce_eager": get(mc, "enforce_eager"),
        "seed": get(mc, "seed"),
        "tensor_parallel_size": get(pc, "tensor_parallel_size"),
        "pipeline_parallel_size": get(pc, "pipeline_parallel_size"),
        "data_parallel_size": get(pc, "data_parallel_size"),
        "enable_expert_parallel": get(pc, "enable_expert_parallel"),
        "compilation_mode": get(vc.compilation_config, "mode"),
    }


def preemptions_total(llm) -> float:
    """vLLM's `vllm:num_preemptions` counter summed over engines (it only ever grows)."""
    return float(sum(getattr(m, "value", 0.0) for m in llm.get_metrics() if m.name == "vllm:num_preemptions"))


def _barrier(barrier_dir: str | None, tag: str, rank: int, num_ranks: int, timeout_s: float = 900.0) -> None:
    """File barrier across the replica processes of one data-parallel run, so their workloads start together."""
    if not barrier_dir or num_ranks <= 1:
        return
    d = Path(barrier_dir)
    (d / f"{tag}.{rank}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(d.glob(f"{tag}.*"))) < num_ranks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"replica {rank} waited {timeout_s:.0f} s for the other replicas at {tag}")
        time.sleep(0.05)


def poisson_arrivals_s(n: int, request_rate: float, seed: int) -> list[float]:
    """Arrival offsets (s) of `n` requests: all at 0 when `request_rate` is 0, else a Poisson process from 0."""
    import numpy as np

    if request_rate <= 0:
        return [0.0] * n
    gaps = np.random.default_rng(seed + 7919).exponential(1.0 / request_rate, n)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


def run_workload(llm, workload: dict) -> dict:
    """Serve one workload (closed batch, fixed concurrency or Poisson rate); per-request timings and the makespan."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompts, output_lens = workload["prompts"], workload["output_lens"]
    n = len(prompts)
    concurrency = int(workload.get("concurrency") or 0) or n
    rate = float(workload.get("request_rate") or 0.0)
    arrivals_s = poisson_arrivals_s(n, rate, int(workload.get("seed", 0)))
    engine = llm.llm_engine
    submitted_s: dict[str, float] = {}
    index_of: dict[str, int] = {}
    records: list[dict | None] = [None] * n
    next_i, in_flight, done = 0, 0, 0
    t0 = time.perf_counter()
    wall_start = time.time()
    while done < n:
        now = time.perf_counter() - t0
        while next_i < n and in_flight < concurrency and arrivals_s[next_i] <= now:
            params = SamplingParams(max_tokens=int(output_lens[next_i]), ignore_eos=True, temperature=0.0,
                                    detokenize=False)
            internal_id = llm.enqueue([TokensPrompt(prompt_token_ids=list(prompts[next_i]))], params, use_tqdm=False)[0]
            rid = internal_id.rsplit("-", 1)[0]  # outputs carry the external id; enqueue returns "<id>-<suffix>"
            submitted_s[rid] = time.perf_counter() - t0
            index_of[rid] = next_i
            next_i += 1
            in_flight += 1
        if not engine.has_unfinished_requests():
            if next_i >= n:
                raise RuntimeError(f"the engine went idle with {n - done} of {n} requests unaccounted for")
            if next_i < n:  # idle until the next arrival
                time.sleep(max(0.0, min(0.05, arrivals_s[next_i] - (time.perf_counter() - t0))))
            continue
        for out in engine.step():
            if not getattr(out, "finished", False) or out.request_id not in index_of:
                continue
            end_s = time.perf_counter() - t0
            m = out.metrics
            gen = len(out.outputs[0].token_ids) if out.outputs else 0
            first_ts = float(getattr(m, "first_token_ts", 0.0) or 0.0)
            last_ts = float(getattr(m, "last_token_ts", 0.0) or 0.0)
            tpot_s = (last_ts - first_ts) / (gen - 1) if gen > 1 and last_ts >= first_ts > 0 else None
            records[index_of[out.request_id]] = {
                "isl": len(prompts[index_of[out.request_id]]),
                "osl_asked": int(output_lens[index_of[out.request_id]]),
                "osl": gen,
                "start_s": submitted_s[out.request_id],
                "end_s": end_s,
                "ttft_s": float(m.first_token_latency) if m is not None and m.first_token_latency else None,
                "tpot_s": tpot_s,
                "preemptions": int(getattr(m, "num_preemptions", 0) or 0),
                "ok": gen == int(output_lens[index_of[out.request_id]]),
            }
            in_flight -= 1
            done += 1
    makespan_s = max(r["end_s"] for r in records) - min(r["start_s"] for r in records)
    return {"requests": records, "makespan_s": makespan_s, "wall_start": wall_start, "wall_end": time.time()}


def main(plan_path: str, result_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    out_path = Path(result_path)
    result: dict = {"workloads": [], "error": None, "rank": plan.get("rank", 0)}
    t_start = time.time()
    try:
        import vllm
        from vllm import LLM

        result["vllm_version"] = str(vllm.__version__)
        llm = LLM(**plan["engine_args"])
        result["engine_start_s"] = time.time() - t_start
        eff = effective_engine_config(llm)
        result["effective"] = eff
        if eff.get("num_gpu_blocks") and eff.get("block_size"):
            result["kv_capacity_tokens"] = int(eff["num_gpu_blocks"]) * int(eff["block_size"])
        try:
            from vllm.platforms import current_platform

            result["device_type"] = str(current_platform.device_type)
        except Exception:  # noqa: BLE001 - provenance only
            pass
        if plan.get("warmup"):  # untimed: first-use costs (kernel selection, allocations) stay out of the rows
            t_warm = time.time()
            run_workload(llm, plan["warmup"])
            result["warmup_s"] = time.time() - t_warm
        _write_json(out_path, result)
        for i, wl in enumerate(plan["workloads"]):
            _barrier(plan.get("barrier_dir"), f"wl{i}", plan.get("rank", 0), plan.get("num_ranks", 1))
            before = preemptions_total(llm)
            res = run_workload(llm, wl)
            res["preemptions"] = preemptions_total(llm) - before
            result["workloads"].append(res)
            _write_json(out_path, result)
    except BaseException as e:  # noqa: BLE001 - every failure is reported to the parent as data
        result["error"] = f"{type(e).__name__}: {e}".strip().splitlines()[0][:2000]
        result["traceback"] = traceback.format_exc()[-6000:]
        _write_json(out_path, result)
        sys.stderr.write(result["traceback"])
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: python -m collect.backends.vllm_offline PLAN.json RESULT.json\n")
        raise SystemExit(2)
    code = main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    # the results are written: skip vLLM's engine teardown (it waits at least 5 s on its worker before killing it);
    # the parent ends this process group (collect.procs.stop_group), engine core and workers included
    os._exit(code)
