"""Importers of the shared measurement data sets: each is a pure function `path -> (DataFrame, ImportReport)`.

`IMPORTERS` maps the `layoutcast import SOURCE` names to them; `run_import` calls one with the options it accepts;
`stream_import` gives the same rows as a stream of frames (bounded memory for the 3 M-row aiconfigurator op tables)
for `Store.append` to write in one transaction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from collect.importers._common import ImportReport
from collect.importers.aiconfigurator import OPS_MODES, import_aiconfigurator, stream_aiconfigurator
from collect.importers.csv_file import import_csv
from collect.importers.dli import import_dli
from collect.importers.fpm import import_fpm
from collect.importers.gpu_probe import import_gpu_probe
from collect.importers.llm_inference_bench import import_llm_inference_bench
from collect.importers.nim import import_nim
from collect.importers.trtllm_perf import import_trtllm_perf
from collect.importers.vidur import import_vidur
from features.errors import InputError

Importer = Callable[..., tuple[pd.DataFrame, ImportReport]]

IMPORTERS: dict[str, Importer] = {
    "gpu-probe": import_gpu_probe,
    "trtllm-perf": import_trtllm_perf,
    "dli": import_dli,
    "nim": import_nim,
    "aiconfigurator": import_aiconfigurator,
    "fpm": import_fpm,
    "llm-inference-bench": import_llm_inference_bench,
    "vidur": import_vidur,
    "csv": import_csv,
}

# where each source lives under the shared data folder (`../shared/data`)
SHARED_PATHS: dict[str, str] = {
    "gpu-probe": "gpu_probe",
    "trtllm-perf": "public/trtllm_perf_overview",
    "dli": "public/nvidia_dli_nim_genaiperf",
    "nim": "public/nvidia_dli_nim_genaiperf",
    "aiconfigurator": "public/aiconfigurator",
    "fpm": "public/aiconfigurator/fpm_golden_runs_vllm",
    "llm-inference-bench": "public/llm_inference_bench",
    "vidur": "public/vidur_profiling",
}


# sources whose import can be streamed frame by frame (large ones): same rows, bounded memory
STREAMERS: dict[str, Callable[..., tuple[Iterator[pd.DataFrame], ImportReport]]] = {
    "aiconfigurator": stream_aiconfigurator,
}


def _call(source: str, fn: Callable, path: str | Path, options: dict):
    accepted = inspect.signature(fn).parameters
    unsupported = [k for k, v in options.items() if k not in accepted and v is not None and k != "progress"]
    if unsupported:
        raise InputError(f"import {source}: option(s) {unsupported} do not apply to this source")
    return fn(path, **{k: v for k, v in options.items() if k in accepted and v is not None})


def run_import(source: str, path: str | Path, **options) -> tuple[pd.DataFrame, ImportReport]:
    """Run the importer for `source` on `path`, passing only the options it accepts (e.g. `ops`, `progress`)."""
    if source not in IMPORTERS:
        raise InputError(f"unknown import source {source!r} (one of {', '.join(IMPORTERS)})")
    return _call(source, IMPORTERS[source], path, options)


def stream_import(source: str, path: str | Path, **options) -> tuple[Iterator[pd.DataFrame], ImportReport]:
    """The import as an iterator of schema frames plus its report (complete once the iterator is exhausted):
    `Store.append` takes the iterator in one transaction, holding one frame in memory at a time."""
    if source in STREAMERS:
        return _call(source, STREAMERS[source], path, options)
    frame, report = run_import(source, path, **options)
    return iter([frame]), report


__all__ = ["IMPORTERS", "SHARED_PATHS", "STREAMERS", "ImportReport", "OPS_MODES", "run_import", "stream_import"]
