"""Where a campaign's measurements run: in this process, in parallel local processes, or as Ray tasks on GPU nodes.

A `Job` is one configuration to measure (candidate columns as a dict) with the run id its rows are stamped with.
`measure_job(spec, job, store)` runs it with the backend `spec` names (replay, vllm, torch) wherever it executes,
appends the rows to the store (a URL is opened there, so Ray workers on other nodes write to a shared PostgreSQL
store directly) and returns an `Outcome`. A run that fails for any reason becomes one schema row with status
`error` (`oom`, `infeasible` where that is what happened) and the reason in `detail`, so the campaign goes on and
the failure teaches feasibility. Dispatchers yield outcomes as runs finish.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from features.errors import InfeasibleError, InputError
from features.schema import COLUMNS, conform

BACKENDS = ("replay", "vllm", "torch")
_BACKEND_CACHE: dict[str, object] = {}  # per process: a backend is built once (a replay pool is read once)


@dataclass(frozen=True)
class BackendSpec:
    """Which backend measures and how (picklable: it travels to worker processes and Ray tasks)."""

    name: str
    options: tuple[tuple[str, object], ...] = ()  # sorted (key, value) pairs: pool, mode, gpu, timeout_s, device, ...

    @classmethod
    def make(cls, name: str, **options) -> "BackendSpec":
        if name not in BACKENDS:
            raise InputError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
        return cls(name, tuple(sorted((k, v) for k, v in options.items() if v is not None)))

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    @property
    def key(self) -> str:
        return json.dumps([self.name, self.options], sort_keys=True, default=str)


@dataclass(frozen=True)
class Job:
    """One configuration to measure."""

    config_hash: str
    config: dict
    run_id: str
    seed: int = 0
    num_gpus: int = 1


@dataclass
class Outcome:
    """What one run produced: its rows (already stored when a store was given), their content hashes, its status."""

    job: Job
    status: str
    rows: pd.DataFrame
    row_hashes: list[str] = field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0
    worker: str = ""


# --- pools -----------------------------------------------------------------------------------------------------------

def load_pool(pool: str) -> pd.DataFrame:
    """A recorded pool: a schema CSV/parquet file, an importer's input as `SOURCE:PATH` (e.g. `dli:../shared/data/
    public/nvidia_dli_nim_genaiperf`), or a store URL (`sqlite:///x.db`, `postgresql://...`)."""
    from collect.importers import IMPORTERS, run_import

    text = str(pool)
    head, sep, rest = text.partition(":")
    if sep and head in IMPORTERS and not rest.startswith("//"):
        options = {"ops": "none"} if head == "aiconfigurator" else {}
        frame, _ = run_import(head, rest, **options)
        return frame
    if "://" in text:
        from collect.store import Store

        with Store(text) as s:
            return s.read()
    from collect.importers.csv_file import import_csv

    frame, _ = import_csv(Path(text))
    return frame


def backend_for(spec: BackendSpec):
    """The backend object for `spec`, built once per process."""
    cached = _BACKEND_CACHE.get(spec.key)
    if cached is not None:
        return cached
    if spec.name == "replay":
        from collect.backends.replay import ReplayBackend

        pool = spec.option("pool")
        if not pool:
            raise InputError("the replay backend needs a pool (--pool FILE)")
        backend = ReplayBackend(load_pool(pool))
    elif spec.name == "vllm":
        from collect.backends.vllm import VLLMBackend

        backend = VLLMBackend(mode=spec.option("mode", "offline"), gpu=spec.option("gpu"),
                              timeout_s=float(spec.option("timeout_s", 1800.0)), log_dir=spec.option("log_dir"))
    else:
        backend = None  # torch: one TorchStepBackend per run (its dtype is the run's)
    _BACKEND_CACHE[spec.key] = backend
    return backend


def install_backend(spec: BackendSpec, backend) -> None:
    """Use an already-built backend object for `spec` in this process (a replay pool the driver has loaded)."""
    _BACKEND_CACHE[spec.key] = backend


# --- one measurement -------------------------------------------------------------------------------------------------

def _measure_replay(backend, job: Job) -> pd.DataFrame:
    return backend.measure(job.config)


def _workload_of(config: dict):
    from features.catalog import parse_length_dist
    from features.specs import LengthDist, Workload

    def dist(spec, mean):
        if isinstance(spec, str) and spec:
            return parse_length_dist(spec)
        return LengthDist("fixed", float(mean))

    isl, osl = dist(config.get("isl_dist"), config.get("isl")), dist(config.get("osl_dist"), config.get("osl"))
    nreq = int(config.get("num_requests") or 0)
    return Workload(f"{isl.spec()}/{osl.spec()}", isl, osl, num_requests=nreq,
                    concurrency=int(config.get("concurrency") or 0), request_rate=float(config.get("request_rate") or 0.0))


def _engine_of(config: dict, native_dtype: str, extra: dict):
    from features.specs import EngineConfig

    base = EngineConfig()

    def pick(key, default):
        v = config.get(key)
        return default if v is None or (isinstance(v, float) and v != v) else v

    weight_dtype = pick("weight_dtype", native_dtype)
    kv = config.get("kv_dtype")
    auto_kv = EngineConfig(weight_dtype=weight_dtype).kv_dtype  # what vLLM's `auto` gives for these weights
    kv_flag = "auto" if not isinstance(kv, str) or not kv or kv == auto_kv else VLLM_KV_DTYPES.get(kv, "auto")
    return EngineConfig(engine="vllm", weight_dtype=weight_dtype, kv_cache_dtype=kv_flag,
                        max_num_seqs=int(pick("max_num_seqs", base.max_num_seqs)),
                        max_num_batched_tokens=int(pick("max_num_batched_tokens", base.max_num_batched_tokens)),
                        gpu_memory_utilization=float(pick("gpu_memory_utilization", base.gpu_memory_utilization)),
                        block_size=int(pick("block_size", base.block_size)), **extra)


def _layout_of(config: dict):
    from features.specs import Layout

    def i(key):
        v = config.get(key)
        return 1 if v is None or (isinstance(v, float) and v != v) else int(v)

    return Layout(tp=i("tp"), pp=i("pp"), dp=i("dp"), ep=i("ep"), attention_dp=bool(config.get("attention_dp") or False))


VLLM_KV_DTYPES = {"fp8": "fp8", "bf16": "bfloat16"}  # schema KV dtype -> vLLM's --kv-cache-dtype (else auto)
ENGINE_EXTRA_OPTIONS = ("kv_cache_memory_gb", "num_gpu_blocks_override", "max_model_len", "enforce_eager",
                        "enable_chunked_prefill")


def _check_device(here: str, job: Job) -> None:
    """Refuse to measure a configuration meant for another GPU type (a Ray task placed on the wrong node)."""
    wanted = job.config.get("gpu")
    if wanted and here != wanted:
        raise InputError(f"this worker's device is {here!r}, the configuration is for {wanted!r}: not measured")


def _measure_vllm(backend, spec: BackendSpec, job: Job) -> pd.DataFrame:
    from features.catalog import resolve_model

    _check_device(backend.gpu, job)
    model = resolve_model(job.config["model"])
    extra = {k: spec.option(k) for k in ENGINE_EXTRA_OPTIONS if spec.option(k) is not None}
    engine = _engine_of(job.config, model.native_dtype, extra)
    return backend.measure(model, _layout_of(job.config), engine, _workload_of(job.config), seed=job.seed)


def _measure_torch(spec: BackendSpec, job: Job) -> pd.DataFrame:
    from collect.backends.torch_step import StepGrid, TorchStepBackend
    from features.catalog import resolve_model

    c = job.config
    model = resolve_model(c["model"])
    timing = {k: int(spec.option(k)) for k in ("layers_timed", "replays", "warmup") if spec.option(k) is not None}
    backend = TorchStepBackend(device=spec.option("device"), dtype=c.get("weight_dtype") or None, progress=False,
                               seed=job.seed, run_id=job.run_id, **timing)
    _check_device(backend.gpu, job)
    batch, context, tokens = int(c.get("batch") or 1), int(c.get("context") or 0), int(c.get("tokens") or 1)
    if (c.get("phase") or "decode") == "decode":
        grid = StepGrid(batches=(batch,), contexts=(context,), prefill_tokens=(), prefill_prior=())
    else:
        grid = StepGrid(batches=(), contexts=(), prefill_tokens=(tokens,), prefill_prior=(max(context - tokens, 0),))
    rows = backend.measure_model(model, int(c.get("tp") or 1), grid)
    if rows is None or len(rows) == 0:
        raise InfeasibleError("; ".join(backend.skipped) or "the torch backend measured nothing for this shape")
    return rows


def failure_row(job: Job, backend: str, status: str, reason: str) -> pd.DataFrame:
    """One schema row recording a failed run of `job` (its configuration, no targets)."""
    row = {k: v for k, v in job.config.items() if k in COLUMNS}
    row.update(status=status, source=f"layoutcast-campaign-{backend}", run_id=job.run_id,
               measured_at=pd.Timestamp.now(tz="UTC").isoformat(),
               detail=json.dumps({"reason": reason[:2000], "campaign_run": job.run_id, "host": platform.node()}))
    return conform(pd.DataFrame([row]))


def measure_job(spec: BackendSpec, job: Job, store=None) -> Outcome:
    """Measure one job with the backend, store its rows (a Store or a URL; None: do not store), return the outcome."""
    from collect.backends.replay import ReplayUnavailable
    from collect.store import Store, content_hashes

    t0 = time.monotonic()
    error = None
    try:
        backend = backend_for(spec)
        if spec.name == "replay":
            rows = _measure_replay(backend, job)
        elif spec.name == "vllm":
            rows = _measure_vllm(backend, spec, job)
        else:
            rows = _measure_torch(spec, job)
        rows = conform(rows.reset_index(drop=True))[list(COLUMNS)]
        rows["run_id"] = job.run_id
    except Exception as e:  # noqa: BLE001 - any failure of a run is recorded as its outcome
        status = "infeasible" if isinstance(e, InfeasibleError) else "oom" if isinstance(e, MemoryError) else "error"
        error = f"{type(e).__name__}: {e}"
        if not isinstance(e, (InfeasibleError, ReplayUnavailable, InputError)):
            error += "\n" + "".join(traceback.format_exception(e)[-3:])
        rows = failure_row(job, spec.name, status, error)
    if store is not None:
        opened = store if hasattr(store, "append") else Store(store)
        try:
            opened.append(rows)
        finally:
            if opened is not store:
                opened.close()
    statuses = rows["status"].astype("string").fillna("ok")
    status = "ok" if statuses.eq("ok").any() else str(statuses.iloc[0])
    return Outcome(job=job, status=status, rows=rows, row_hashes=content_hashes(rows), error=error,
                   wall_s=time.monotonic() - t0, worker=f"{platform.node()}:{os.getpid()}")


# --- dispatchers ------------------------------------------------------------------------------------------------------

class SerialDispatcher:
    """Runs jobs one after another in this process."""

    def __init__(self, spec: BackendSpec, store=None):
        self.spec, self.store = spec, store

    def run(self, jobs: list[Job]) -> Iterator[Outcome]:
        for job in jobs:
            yield measure_job(self.spec, job, self.store)

    def close(self) -> None:
        pass


class ProcessDispatcher:
    """Runs jobs in `workers` local processes (spawned, so engines start from a clean interpreter); each worker
    appends its rows to the store at `store_url` (a file or a server: an in-memory store cannot be shared)."""

    def __init__(self, spec: BackendSpec, store_url: str, workers: int):
        import concurrent.futures as cf
        import multiprocessing as mp

        if store_url.startswith("sqlite://") and store_url in ("sqlite://", "sqlite:///:memory:"):
            raise InputError("parallel workers need a store file or server (--store PATH or URL), not an in-memory one")
        self.spec, self.store_url, self.workers = spec, store_url, int(workers)
        self._cf = cf
        self._pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))

    def run(self, jobs: list[Job]) -> Iterator[Outcome]:
        futures = {self._pool.submit(measure_job, self.spec, job, self.store_url): job for job in jobs}
        for fut in self._cf.as_completed(futures):
            job = futures[fut]
            try:
                yield fut.result()
            except Exception as e:  # noqa: BLE001 - a worker that died: record the run as an error
                yield _lost(self.spec, job, self.store_url, f"worker process failed: {type(e).__name__}: {e}")
                if isinstance(e, self._cf.process.BrokenProcessPool):
                    import multiprocessing as mp

                    self._pool = self._cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RayDispatcher:
    """Runs each job as a Ray task (one GPU per GPU of the configuration when `gpus_per_run`); tasks write to the
    shared store themselves. `address`: `auto`, `ray://host:port`, or `local` for a new local instance. A task that
    lands on a node whose GPU type is not the configuration's records an error instead of mislabelled numbers (give
    each GPU type its own cluster, or nodes the same type)."""

    def __init__(self, spec: BackendSpec, store_url: str, address: str = "auto", gpus_per_run: bool | None = None,
                 num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise InputError("Ray is not installed (pip install 'ray[default]', or layoutcast[cluster])") from None
        if store_url in ("sqlite://", "sqlite:///:memory:"):
            raise InputError("Ray tasks need a shared store (a PostgreSQL URL, or an SQLite file on a shared disk)")
        self.ray = ray
        self._owns = False
        if not ray.is_initialized():
            kwargs = {"num_cpus": num_cpus} if address == "local" else {"address": address}
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kwargs)
            self._owns = True
        self.spec, self.store_url = spec, store_url
        self.gpus_per_run = spec.name != "replay" if gpus_per_run is None else gpus_per_run
        self._task = ray.remote(max_retries=0)(measure_job)

    def run(self, jobs: list[Job]) -> Iterator[Outcome]:
        ray = self.ray
        pending = {}
        for job in jobs:
            opts = {"num_cpus": 1, "num_gpus": job.num_gpus if self.gpus_per_run else 0}
            pending[self._task.options(**opts).remote(self.spec, job, self.store_url)] = job
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            job = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a task or node that died: record the run as an error
                yield _lost(self.spec, job, self.store_url, f"Ray task failed: {type(e).__name__}: {e}")

    def close(self) -> None:
        if self._owns:
            self.ray.shutdown()


def _lost(spec: BackendSpec, job: Job, store_url: str, reason: str) -> Outcome:
    """The outcome of a run whose worker died: an error row, stored from here."""
    from collect.store import Store, content_hashes

    rows = failure_row(job, spec.name, "error", reason)
    with Store(store_url) as s:
        s.append(rows)
    return Outcome(job=job, status="error", rows=rows, row_hashes=content_hashes(rows), error=reason,
                   worker=f"{platform.node()}:{os.getpid()}")


def make_dispatcher(spec: BackendSpec, store, workers: int = 1, ray_address: str | None = None):
    """Serial (one worker, no Ray), local processes (`workers` > 1) or Ray (`ray_address`)."""
    url = store.url if hasattr(store, "url") else str(store)
    if ray_address:
        return RayDispatcher(spec, url, ray_address, num_cpus=max(1, workers) if ray_address == "local" else None)
    if workers > 1:
        return ProcessDispatcher(spec, url, workers)
    return SerialDispatcher(spec, store)
