"""Online mode of the vLLM backend: starts `vllm serve` on 127.0.0.1, drives it with an asyncio client, stops it.

The client posts token-id prompts to `/v1/completions` with streaming, `ignore_eos` and `max_tokens` = the asked
output length, honouring a closed batch (all at once), a fixed concurrency or a Poisson request rate. TTFT is the
time to the first streamed token, TPOT (latency - TTFT) / (output tokens - 1), as vLLM's own benchmark defines them.
KV capacity (`vllm:cache_config_info`: num_gpu_blocks × block_size) and preemptions (`vllm:num_preemptions_total`,
the difference across each workload) come from the server's Prometheus `/metrics`. Results use the same JSON shape
as the offline child (`collect.backends.vllm_offline`), so one summariser turns both into schema rows.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from collect.backends.vllm_offline import poisson_arrivals_s
from collect.procs import free_port, start_group, stop_group, tail

HOST = "127.0.0.1"
_FLAG_ONLY_TRUE = {"skip_tokenizer_init", "enforce_eager", "enable_expert_parallel"}
_BOOL_NEGATABLE = {"enable_prefix_caching", "enable_chunked_prefill"}
_OFFLINE_ONLY = {"disable_log_stats", "model"}


def engine_args_to_cli(engine_args: dict) -> list[str]:
    """`LLM(**engine_args)` keyword arguments as `vllm serve` flags (same names, dashes; booleans as switches)."""
    argv: list[str] = []
    for key, value in engine_args.items():
        if key in _OFFLINE_ONLY or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key in _FLAG_ONLY_TRUE:
            if value:
                argv.append(flag)
        elif key in _BOOL_NEGATABLE:
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, str(value)]
    return argv


def prom_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in Prometheus text exposition format."""
    out = []
    pattern = re.compile(r"^" + re.escape(name) + r"(\{(.*)\})?\s+(\S+)")
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            out.append((labels, float(m.group(3))))
        except ValueError:
            continue
    return out


def label_value(text: str):
    """A Prometheus label value as the Python value it prints (int, float, bool, None, or the string)."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


_KV_SIZE_LINE = re.compile(r"KV cache size: ([\d,]+) tokens")


def kv_sizes_from_log(text: str) -> list[int]:
    """Each engine's "KV cache size: N tokens" line in a vLLM log (one per engine replica), in order."""
    return [int(m.group(1).replace(",", "")) for m in _KV_SIZE_LINE.finditer(text)]


def _get(url: str, timeout_s: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, ""


def preemptions_total(base_url: str) -> float:
    """The server's `vllm:num_preemptions_total` summed over engines."""
    _, text = _get(base_url + "/metrics")
    return float(sum(v for _, v in prom_samples(text, "vllm:num_preemptions_total")))


def cache_info(base_url: str) -> dict[str, str]:
    """Labels of `vllm:cache_config_info` for engine 0 (one replica): num_gpu_blocks, block_size, cache_dtype, ..."""
    _, text = _get(base_url + "/metrics")
    samples = prom_samples(text, "vllm:cache_config_info")
    samples.sort(key=lambda s: s[0].get("engine", "0"))
    return samples[0][0] if samples else {}


async def _one_request(session, url: str, model: str, prompt: list[int], output_len: int, t0: float) -> dict:
    """Send one streaming completion; its timings relative to `t0` (perf_counter seconds)."""
    payload = {"model": model, "prompt": prompt, "max_tokens": int(output_len), "ignore_eos": True,
               "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    chunks = 0
    completion_tokens = None
    error = None
    try:
        async with session.post(url, json=payload) as resp:
            if resp.status != 200:
                error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
            else:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    obj = json.loads(data)
                    if obj.get("error"):
                        error = str(obj["error"].get("message", obj["error"]))[:300]
                        break
                    if obj.get("choices"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter()
                    if obj.get("usage"):
                        completion_tokens = obj["usage"].get("completion_tokens")
    except Exception as e:  # noqa: BLE001 - a failed request is data, not a crash of the run
        error = f"{type(e).__name__}: {e}"[:300]
    end = time.perf_counter()
    gen = int(completion_tokens if completion_tokens is not None else chunks)
    ttft = (first - start) if first is not None else None
    tpot = ((end - first) / (gen - 1)) if first is not None and gen > 1 else None
    return {"isl": len(prompt), "osl_asked": int(output_len), "osl": gen, "start_s": start - t0, "end_s": end - t0,
            "ttft_s": ttft, "tpot_s": tpot, "preemptions": None, "ok": error is None and gen == int(output_len),
            "error": error}


async def run_workload_async(base_url: str, model: str, workload: dict) -> dict:
    """Serve one workload through the HTTP API (closed batch, fixed concurrency or Poisson rate)."""
    import aiohttp

    prompts, output_lens = workload["prompts"], workload["output_lens"]
    n = len(prompts)
    limit = int(workload.get("concurrency") or 0) or n
    arrivals = poisson_arrivals_s(n, float(workload.get("request_rate") or 0.0), int(workload.get("seed", 0)))
    sem = asyncio.Semaphore(limit)
    url = base_url + "/v1/completions"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    t0 = time.perf_counter()
    wall_start = time.time()

    async def fire(i: int, session) -> dict:
        delay = arrivals[i] - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        async with sem:
            return await _one_request(session, url, model, prompts[i], output_lens[i], t0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        records = await asyncio.gather(*(fire(i, session) for i in range(n)))
    makespan_s = max(r["end_s"] for r in records) - min(r["start_s"] for r in records)
    return {"requests": list(records), "makespan_s": makespan_s, "wall_start": wall_start, "wall_end": time.time()}


def _wait_healthy(proc, base_url: str, deadline: float) -> str:
    """'' once `/health` answers 200; else why not (the server exited, or the deadline passed)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"vllm serve exited with code {proc.returncode} before it was ready"
        status, _ = _get(base_url + "/health", timeout_s=2.0)
        if status == 200:
            return ""
        time.sleep(0.5)
    return "vllm serve was not ready before the startup timeout"


def run_online(plan: dict, env: dict[str, str], log_path: Path, timeout_s: float, startup_timeout_s: float,
               python: str = sys.executable) -> dict:
    """Start the server, run the plan's workloads in turn, stop the server's whole process group; the result JSON."""
    engine_args = plan["engine_args"]
    port = free_port(HOST)
    base_url = f"http://{HOST}:{port}"
    cmd = [python, "-m", "collect.backends.vllm_serve", engine_args["model"], "--host", HOST, "--port", str(port),
           "--served-model-name", "layoutcast-model", *engine_args_to_cli(engine_args)]
    result: dict = {"workloads": [], "error": None, "command": cmd[2:]}
    t_start = time.monotonic()
    deadline = t_start + timeout_s
    proc = start_group(cmd, env, log_path)
    try:
        why = _wait_healthy(proc, base_url, min(deadline, t_start + startup_timeout_s))
        if why:
            result["error"] = why
            result["timed_out"] = "timeout" in why
            return result
        result["engine_start_s"] = time.monotonic() - t_start
        _, version = _get(base_url + "/version")
        try:
            result["vllm_version"] = json.loads(version).get("version")
        except (json.JSONDecodeError, AttributeError):
            pass
        info = cache_info(base_url)
        effective = {k: v for k, v in engine_args.items() if k != "model"}
        for key in ("block_size", "num_gpu_blocks", "num_gpu_blocks_override", "kv_cache_memory_bytes",
                    "gpu_memory_utilization", "enable_prefix_caching"):
            if key in info and info[key] not in ("None", ""):
                effective[key] = label_value(info[key])
        if "cache_dtype" in info:
            effective["kv_cache_dtype"] = info["cache_dtype"]
        result["effective"] = effective
        per_engine = kv_sizes_from_log(log_path.read_text(errors="replace"))
        dp = int(engine_args.get("data_parallel_size") or 1)
        if per_engine:
            result["kv_capacity_tokens"] = min(per_engine)
            result["replica_kv_capacity_tokens"] = per_engine
        elif info.get("num_gpu_blocks", "None") != "None" and info.get("block_size"):
            # the frontend sums num_gpu_blocks over the DP engines (vllm.v1.engine.core_client)
            result["kv_capacity_tokens"] = int(info["num_gpu_blocks"]) * int(info["block_size"]) // dp
        if dp > 1 and "num_gpu_blocks" in effective:
            effective["num_gpu_blocks"] = int(effective["num_gpu_blocks"]) // dp
        if plan.get("warmup"):  # untimed, as in offline mode
            t_warm = time.monotonic()
            asyncio.run(asyncio.wait_for(run_workload_async(base_url, "layoutcast-model", plan["warmup"]),
                                         max(1.0, deadline - time.monotonic())))
            result["warmup_s"] = time.monotonic() - t_warm
        for wl in plan["workloads"]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                result["error"], result["timed_out"] = f"timeout after {timeout_s:.0f} s", True
                break
            before = preemptions_total(base_url)
            try:
                res = asyncio.run(asyncio.wait_for(run_workload_async(base_url, "layoutcast-model", wl), remaining))
            except asyncio.TimeoutError:
                result["error"], result["timed_out"] = f"timeout after {timeout_s:.0f} s", True
                break
            res["preemptions"] = preemptions_total(base_url) - before
            result["workloads"].append(res)
            if proc.poll() is not None:
                result["error"] = f"vllm serve exited with code {proc.returncode} during the run"
                break
    finally:
        stop_group(proc, grace_s=20.0)
        result["log_tail"] = tail(log_path, max_lines=400)
    return result
