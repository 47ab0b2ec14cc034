"""The candidate space of a layout search: what can be deployed on N GPUs, one row per candidate.

Three modes, each crossed with the engine knobs:
- `aggregated`: one layout of all N GPUs, TP within a node, PP and DP across nodes, EP and attention-DP for MoE
  (`features.layouts.enumerate_layouts`; structurally invalid layouts are kept with their reason);
- `mixed`: replicas of two different layouts side by side (e.g. 2×TP4 + 4×TP2), each an independent replica
  (EP inside the replica), a quarter, half or three quarters of the GPUs on the first;
- `disaggregated`: a prefill pool (n × TPk) and a decode pool (any aggregated layout of the rest, PP ≤ 2) with the
  prompt KV sent between them; an eighth to a half of the GPUs prefill.
Member A columns (`tp, pp, dp, ep, attention_dp`) hold the whole layout (aggregated), the first replica type with
`dp` replicas (mixed), or the decode pool (disaggregated); member B columns (`b_tp, b_pp, b_dp, b_ep`) hold the
second replica type or the prefill pool (`b_dp` replicas; 0 for aggregated); `share` is the GPU fraction of the
prefill pool or of the first mix member (0 for aggregated). `c_*` columns are the coordinates the Optuna samplers
move in (log2 degrees, ordinal knob indices); `layout_id` groups the knob variants of one layout.
"""

from __future__ import annotations

import hashlib
import itertools
from functools import lru_cache

import numpy as np
import pandas as pd

from features.catalog import resolve_gpu, resolve_model
from features.errors import InputError
from features.layouts import enumerate_layouts, structural_reason
from features.memory import weight_bytes_per_gpu
from features.specs import GPUSpec, Layout, ModelSpec

MODES = ("aggregated", "mixed", "disaggregated")
KNOB_NAMES = ("max_num_seqs", "max_num_batched_tokens", "kv_cache_dtype", "gpu_memory_utilization")
DEFAULT_KNOBS = {"max_num_seqs": [256], "max_num_batched_tokens": [8192], "kv_cache_dtype": ["auto"],
                 "gpu_memory_utilization": [0.9]}
WIDE_KNOBS = {"max_num_seqs": [64, 128, 256, 512, 1024], "max_num_batched_tokens": [2048, 8192, 16384],
              "kv_cache_dtype": ["auto", "fp8"], "gpu_memory_utilization": [0.8, 0.9, 0.95]}
MIX_SHARES = (0.25, 0.5, 0.75)  # fraction of the GPUs on the first replica type of a mix
PREFILL_SHARES = (0.125, 0.25, 0.375, 0.5)  # fraction of the GPUs in the prefill pool
# sampler coordinates: TP, attention TP (1 under attention-DP), PP and EP of the main layout; TP and PP of the second
# member or the prefill pool and its GPU share; knob indices
COORDS = ["c_tp", "c_atp", "c_pp", "c_ep", "c_b_tp", "c_b_pp", "c_share", "c_mns", "c_mnbt", "c_kvd", "c_gmu"]


def normalise_knobs(knobs: dict | None) -> dict:
    """Fill missing knobs with vLLM's defaults; reject unknown names and empty or invalid choices."""
    out = {k: list(v) for k, v in DEFAULT_KNOBS.items()}
    for k, v in (knobs or {}).items():
        if k not in DEFAULT_KNOBS:
            raise InputError(f"unknown engine knob {k!r}; expected one of {list(DEFAULT_KNOBS)}")
        vals = list(v) if isinstance(v, (list, tuple, set, np.ndarray)) else [v]
        if not vals:
            raise InputError(f"knob {k} needs at least one value")
        out[k] = sorted(set(vals), key=lambda x: (str(type(x)), x))
    for k in ("max_num_seqs", "max_num_batched_tokens"):
        if any(int(v) < 1 for v in out[k]):
            raise InputError(f"{k} values must be positive")
    if any(not 0.05 <= float(v) <= 1.0 for v in out["gpu_memory_utilization"]):
        raise InputError("gpu_memory_utilization values must be in (0.05, 1]")
    return out


def _log2(v) -> np.ndarray:
    return np.log2(np.maximum(np.asarray(v, dtype=float), 1.0))


@lru_cache(maxsize=4096)
def _structural(model: ModelSpec, gpu: GPUSpec, layout: Layout) -> str:
    return structural_reason(model, layout, gpu)


def _replica_types(model: ModelSpec, gpu: GPUSpec, max_gpus: int) -> list[Layout]:
    """Independent single replicas for mixes: TP in powers of two within a node, PP 1 or 2, EP = TP for MoE."""
    out = []
    tp = 1
    while tp <= gpu.gpus_per_node:
        for pp in (1, 2):
            if tp * pp > max_gpus:
                continue
            ep = tp if model.is_moe and tp > 1 else 1
            lay = Layout(tp=tp, pp=pp, dp=1, ep=ep)
            if not _structural(model, gpu, lay):
                out.append(lay)
        tp *= 2
    return out


def _fits_somewhere(model: ModelSpec, gpu: GPUSpec, layout: Layout, weight_dtype: str, max_util: float) -> bool:
    """Weights of `layout` fit in the largest memory budget any knob allows (cheap pre-filter for derived modes)."""
    return float(weight_bytes_per_gpu(model, layout, weight_dtype)) < gpu.memory_gb * 1e9 * max_util


def _aggregated_rows(model, gpu, num_gpus) -> list[dict]:
    rows = []
    for lay in enumerate_layouts(model, gpu, num_gpus):
        rows.append({"mode": "aggregated", "layout": lay.label(), "tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "ep": lay.ep,
                     "attention_dp": bool(lay.attention_dp), "b_tp": 0, "b_pp": 0, "b_dp": 0, "b_ep": 0, "share": 0.0,
                     "reason": _structural(model, gpu, lay)})
    return rows


def _mixed_rows(model, gpu, num_gpus, weight_dtype, max_util) -> list[dict]:
    types = [t for t in _replica_types(model, gpu, num_gpus - 1) if _fits_somewhere(model, gpu, t, weight_dtype, max_util)]
    rows = []
    for a, b in itertools.permutations(types, 2):
        ga, gb = a.tp * a.pp, b.tp * b.pp
        if (ga, a.tp) < (gb, b.tp):  # the first member is the larger replica; shares cover both orders
            continue
        for share in MIX_SHARES:
            gpus_a = num_gpus * share
            if gpus_a != int(gpus_a) or int(gpus_a) % ga or (num_gpus - int(gpus_a)) % gb or int(gpus_a) < ga:
                continue
            na, nb = int(gpus_a) // ga, (num_gpus - int(gpus_a)) // gb
            if nb < 1:
                continue
            label = f"{na}x{a.label()} + {nb}x{b.label()}"
            rows.append({"mode": "mixed", "layout": label, "tp": a.tp, "pp": a.pp, "dp": na, "ep": a.ep,
                         "attention_dp": False, "b_tp": b.tp, "b_pp": b.pp, "b_dp": nb, "b_ep": b.ep, "share": share,
                         "reason": ""})
    return rows


def _disaggregated_rows(model, gpu, num_gpus, weight_dtype, max_util) -> list[dict]:
    rows = []
    shares = sorted({int(round(num_gpus * f)) for f in PREFILL_SHARES if 1 <= round(num_gpus * f) < num_gpus})
    for s_p in shares:
        f = s_p / num_gpus
        decode_layouts = [d for d in enumerate_layouts(model, gpu, num_gpus - s_p)
                          if d.pp <= 2 and not _structural(model, gpu, d)
                          and _fits_somewhere(model, gpu, d, weight_dtype, max_util)]
        tp = 1
        while tp <= min(gpu.gpus_per_node, s_p):
            if s_p % tp == 0:
                pre = Layout(tp=tp, pp=1, dp=1, ep=tp if model.is_moe and tp > 1 else 1)
                if not _structural(model, gpu, pre) and _fits_somewhere(model, gpu, pre, weight_dtype, max_util):
                    n_p = s_p // tp
                    for d in decode_layouts:
                        rows.append({"mode": "disaggregated", "layout": f"P {n_p}x{pre.label()} | D {d.label()}",
                                     "tp": d.tp, "pp": d.pp, "dp": d.dp, "ep": d.ep, "attention_dp": bool(d.attention_dp),
                                     "b_tp": pre.tp, "b_pp": 1, "b_dp": n_p, "b_ep": pre.ep, "share": f, "reason": ""})
            tp *= 2
    return rows


def candidate_space(model_name: str, gpu_name: str, num_gpus: int, knobs: dict | None = None,
                    modes: tuple[str, ...] | list[str] = MODES, weight_dtype: str | None = None) -> pd.DataFrame:
    """Every candidate (mode × layout × knobs) for exactly `num_gpus` GPUs, with structural reasons where invalid."""
    model = resolve_model(model_name)
    gpu = resolve_gpu(gpu_name)
    if not isinstance(num_gpus, (int, np.integer)) or num_gpus < 1:
        raise InputError("--gpus must be at least 1")
    if num_gpus > 65536:
        raise InputError("--gpus must be at most 65,536")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InputError(f"unknown search mode {bad[0] if bad else '(none)'!r}; expected some of {list(MODES)}")
    knobs = normalise_knobs(knobs)
    wdt = weight_dtype or model.native_dtype
    max_util = max(float(v) for v in knobs["gpu_memory_utilization"])
    rows: list[dict] = []
    if "aggregated" in modes:
        rows += _aggregated_rows(model, gpu, num_gpus)
    if "mixed" in modes and num_gpus >= 2:
        rows += _mixed_rows(model, gpu, num_gpus, wdt, max_util)
    if "disaggregated" in modes and num_gpus >= 2:
        rows += _disaggregated_rows(model, gpu, num_gpus, wdt, max_util)
    layouts = pd.DataFrame(rows)
    if layouts.empty:
        raise InputError(f"no candidate layouts of {num_gpus} GPUs for modes {list(modes)}")
    knob_table = pd.DataFrame(list(itertools.product(*(knobs[k] for k in KNOB_NAMES))), columns=list(KNOB_NAMES))
    for k in KNOB_NAMES:
        knob_table[f"c_{_short(k)}"] = knob_table[k].map({v: i for i, v in enumerate(knobs[k])}).astype(int)
    space = layouts.merge(knob_table, how="cross")
    space["num_gpus"] = num_gpus
    space["c_tp"] = _log2(space["tp"]).astype(int)
    space["c_pp"] = _log2(space["pp"])  # ordinal: PP need not be a power of two
    space["c_ep"] = _log2(space["ep"]).astype(int)
    space["c_atp"] = np.where(space["attention_dp"], 0, space["c_tp"])  # attention TP: 1 under attention-DP
    space["c_b_tp"] = _log2(space["b_tp"]).astype(int)
    space["c_b_pp"] = _log2(space["b_pp"]).astype(int)
    space["c_share"] = (space["share"] * 8).round().astype(int)
    space["layout_id"] = pd.factorize(space["mode"] + "|" + space["layout"])[0]
    return space.reset_index(drop=True)


def _short(knob: str) -> str:
    return {"max_num_seqs": "mns", "max_num_batched_tokens": "mnbt", "kv_cache_dtype": "kvd",
            "gpu_memory_utilization": "gmu"}[knob]


def space_fingerprint(space: pd.DataFrame, context: dict) -> str:
    """A short hash of the candidates and the question asked: workers sharing a study must agree on both."""
    h = hashlib.sha256()
    h.update(repr(sorted(context.items())).encode())
    cols = ["mode", "layout"] + list(KNOB_NAMES)
    h.update(pd.util.hash_pandas_object(space[cols].astype(str), index=True).to_numpy().tobytes())
    return h.hexdigest()[:16]
