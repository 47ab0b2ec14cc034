"""The campaign space: which configurations a campaign may measure, and a space-filling first design over them.

A space file (YAML or JSON) names models, GPUs and GPU counts, layout ranges, workloads, request counts and engine
knobs (or, for `kind: step`, decoder-step shapes), plus constraints written as expressions over the configuration
columns (`"tp * pp <= 8"`, `"max_num_seqs <= num_requests"`). `enumerate_space` lists only configurations that
are structurally valid and fit in memory (features.layouts, the physics model's memory terms); `narrow_pool`
applies the same axes and constraints to a recorded pool's configurations (the replay backend). `encode` maps
configurations to the unit cube (log scale for sizes; models by parameter count, GPUs by bandwidth and memory),
where `initial_design` places a scrambled Sobol or Latin-hypercube sample and takes the nearest valid
configuration to each point. `config_hashes` names a configuration independently of how it was measured.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.errors import InputError
from features.schema import CONFIG_COLUMNS, conform

# the columns that say what a candidate configuration is (what the replay backend matches on, and what is hashed)
CANDIDATE_COLUMNS: tuple[str, ...] = ("kind", "engine", "engine_version") + tuple(CONFIG_COLUMNS)
LAYOUT_AXES = ("tp", "pp", "dp", "ep", "attention_dp")
ENGINE_AXES = ("weight_dtype", "kv_cache_dtype", "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
               "block_size")
STEP_AXES = ("phase", "batch", "context", "tokens", "prior")  # decode: batch x context; prefill: tokens after prior
SPACE_KEYS = {"name", "kind", "engine", "models", "gpus", "num_gpus", "layouts", "workloads", "requests", "concurrency",
              "request_rate", "engine_knobs", "step", "constraints", "scenario", "objective", "backend_options"}
NUMERIC_ENCODED = ("num_gpus", "tp", "pp", "dp", "ep", "isl", "osl", "num_requests", "concurrency", "request_rate",
                   "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "block_size", "batch", "context",
                   "tokens")
CATEGORY_ENCODED = ("kind", "engine", "weight_dtype", "kv_dtype", "phase", "op")
MAX_CANDIDATES = 500_000


@dataclass(frozen=True)
class CampaignSpace:
    """A parsed space file: the axes a campaign may vary, the constraints, and what a scenario is."""

    name: str = "space"
    kind: str = "serving"
    engine: str = ""  # engine of the configurations ("" = vllm for serving, torch for steps; a pool: any engine)
    models: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    num_gpus: tuple[int, ...] = ()
    layouts: dict = field(default_factory=dict)  # axis -> allowed values (tp, pp, dp, ep, attention_dp)
    workloads: tuple[str, ...] = ()
    requests: tuple[int, ...] = ()
    concurrency: tuple[int, ...] = ()
    request_rate: tuple[float, ...] = ()
    engine_knobs: dict = field(default_factory=dict)  # ENGINE_AXES -> allowed values
    step: dict = field(default_factory=dict)  # STEP_AXES -> allowed values (kind: step)
    constraints: tuple[str, ...] = ()
    scenario: tuple[str, ...] = ()  # configuration columns that define a scenario (empty: the default)
    objective: str = ""
    backend_options: dict = field(default_factory=dict)


# --- parsing ----------------------------------------------------------------------------------------------------

def _values(doc: dict, key: str, cast, where: str) -> tuple:
    """A list-valued entry (a scalar counts as a one-element list), each value cast; InputError on bad values."""
    raw = doc.get(key)
    if raw is None:
        return ()
    items = raw if isinstance(raw, (list, tuple)) else [raw]
    out = []
    for v in items:
        try:
            out.append(cast(v))
        except (TypeError, ValueError):
            raise InputError(f"{where}: {key} value {v!r} is not a valid {getattr(cast, '__name__', 'value')}") from None
    return tuple(out)


def _bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return v.strip().lower() in ("true", "yes", "1")
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    raise ValueError(v)


def _positive_int(v) -> int:
    if isinstance(v, bool) or float(v) != int(float(v)) or int(float(v)) < 1:
        raise ValueError(v)
    return int(float(v))


def _nonneg_int(v) -> int:
    if isinstance(v, bool) or float(v) != int(float(v)) or int(float(v)) < 0:
        raise ValueError(v)
    return int(float(v))


def _nonneg_float(v) -> float:
    f = float(v)
    if not math.isfinite(f) or f < 0:
        raise ValueError(v)
    return f


_AXIS_CAST = {"tp": _positive_int, "pp": _positive_int, "dp": _positive_int, "ep": _positive_int,
              "attention_dp": _bool, "weight_dtype": str, "kv_cache_dtype": str, "max_num_seqs": _positive_int,
              "max_num_batched_tokens": _positive_int, "gpu_memory_utilization": float, "block_size": _positive_int,
              "phase": str, "batch": _positive_int, "context": _nonneg_int, "tokens": _positive_int,
              "prior": _nonneg_int}


def parse_space(doc: dict, where: str = "space") -> CampaignSpace:
    """A CampaignSpace from a parsed YAML/JSON document; one InputError line for anything malformed."""
    if not isinstance(doc, dict):
        raise InputError(f"{where}: a space file is a mapping of keys (models, gpus, layouts, ...)")
    unknown = sorted(set(doc) - SPACE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown} (known: {', '.join(sorted(SPACE_KEYS))})")
    kind = str(doc.get("kind", "serving"))
    if kind not in ("serving", "step"):
        raise InputError(f"{where}: kind must be serving or step, not {kind!r}")
    groups = {}
    for key, axes in (("layouts", LAYOUT_AXES), ("engine_knobs", ENGINE_AXES), ("step", STEP_AXES)):
        sub = doc.get(key) or {}
        if not isinstance(sub, dict):
            raise InputError(f"{where}: {key} is a mapping of axis -> list of values")
        bad = sorted(set(sub) - set(axes))
        if bad:
            raise InputError(f"{where}: unknown {key} axis {bad} (known: {', '.join(axes)})")
        groups[key] = {a: _values(sub, a, _AXIS_CAST[a], f"{where}: {key}") for a in axes if sub.get(a) is not None}
    util = groups["engine_knobs"].get("gpu_memory_utilization", ())
    if any(not 0.05 <= u <= 1.0 for u in util):
        raise InputError(f"{where}: engine_knobs gpu_memory_utilization values must be in (0.05, 1]")
    phases = groups["step"].get("phase", ())
    if any(p not in ("decode", "prefill") for p in phases):
        raise InputError(f"{where}: step phase values are decode or prefill")
    constraints = _values(doc, "constraints", str, where)
    for c in constraints:
        _parse_expression(c)
    scenario = _values(doc, "scenario", str, where)
    bad = [c for c in scenario if c not in CANDIDATE_COLUMNS]
    if bad:
        raise InputError(f"{where}: scenario columns {bad} are not configuration columns")
    options = doc.get("backend_options") or {}
    if not isinstance(options, dict):
        raise InputError(f"{where}: backend_options is a mapping")
    space = CampaignSpace(
        name=str(doc.get("name", "space")), kind=kind, engine=str(doc.get("engine") or ""),
        models=_values(doc, "models", str, where), gpus=_values(doc, "gpus", str, where),
        num_gpus=_values(doc, "num_gpus", _positive_int, where), layouts=groups["layouts"],
        workloads=_values(doc, "workloads", str, where), requests=_values(doc, "requests", _positive_int, where),
        concurrency=_values(doc, "concurrency", _nonneg_int, where),
        request_rate=_values(doc, "request_rate", _nonneg_float, where), engine_knobs=groups["engine_knobs"],
        step=groups["step"], constraints=constraints, scenario=scenario, objective=str(doc.get("objective") or ""),
        backend_options=dict(options))
    _resolve_names(space, where)
    return space


def _resolve_names(space: CampaignSpace, where: str) -> None:
    """Fail early on model, GPU or workload names the catalog does not know."""
    from features.catalog import resolve_gpu, resolve_model, resolve_workload

    for m in space.models:
        resolve_model(m)
    for g in space.gpus:
        resolve_gpu(g)
    for w in space.workloads:
        resolve_workload(w)


def load_space(path: str | Path) -> CampaignSpace:
    """Read a YAML or JSON space file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"space file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        doc = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"space file {str(p)!r} is not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: "
                         f"{first}") from None
    return parse_space(doc, where=f"space file {str(p)!r}")


# --- constraints: a small, safe expression language over configuration columns ------------------------------------

_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
           ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power}
_CMPOPS = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
           ast.Eq: np.equal, ast.NotEq: np.not_equal}
_FUNCS = {"min": np.minimum, "max": np.maximum, "abs": np.abs, "log2": np.log2}


def _parse_expression(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise InputError(f"constraint {text!r} is not a valid expression: {e.msg}") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Constant,
                               ast.List, ast.Tuple, ast.Load, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.In,
                               ast.NotIn, ast.Call)) or type(node) in _BINOPS or type(node) in _CMPOPS
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            ok = False
        if not ok:
            raise InputError(f"constraint {text!r} uses {type(node).__name__}, which constraints do not allow "
                             "(arithmetic, comparisons, and/or/not, in [...], min/max/abs/log2 only)")
    return tree


def _column_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    s = frame[name]
    if str(s.dtype) in ("Int64", "Float64", "boolean") or s.dtype.kind in "fiub":
        return s.to_numpy(dtype=float, na_value=np.nan)
    return s.to_numpy(dtype=object, na_value=None)


def evaluate_constraint(text: str, frame: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows of `frame` that satisfy the constraint expression `text` (vectorised)."""
    tree = _parse_expression(text)
    n = len(frame)

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in ("true", "True"):
                return True
            if node.id in ("false", "False"):
                return False
            if node.id not in frame.columns:
                raise InputError(f"constraint {text!r} names {node.id!r}, which is not a configuration column")
            return _column_values(frame, node.id)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            return np.logical_not(v) if isinstance(node.op, ast.Not) else (-np.asarray(v) if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](np.asarray(ev(node.left), dtype=float), np.asarray(ev(node.right), dtype=float))
        if isinstance(node, ast.BoolOp):
            vals = [np.asarray(ev(v), dtype=bool) for v in node.values]
            return np.logical_and.reduce(vals) if isinstance(node.op, ast.And) else np.logical_or.reduce(vals)
        if isinstance(node, ast.Call):
            return _FUNCS[node.func.id](*[np.asarray(ev(a), dtype=float) for a in node.args])
        if isinstance(node, ast.Compare):
            left, out = ev(node.left), np.ones(n, dtype=bool)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(right, list):
                        raise InputError(f"constraint {text!r}: `in` needs a list, e.g. tp in [1, 2, 4]")
                    res = pd.Series(np.broadcast_to(np.asarray(left, dtype=object), (n,))).isin(right).to_numpy()
                    res = ~res if isinstance(op, ast.NotIn) else res
                else:
                    with np.errstate(invalid="ignore"):
                        res = _CMPOPS[type(op)](left, right)
                out &= np.broadcast_to(np.asarray(res, dtype=bool), (n,))
                left = right
            return out
        raise InputError(f"constraint {text!r}: unsupported expression")  # pragma: no cover - rejected at parse

    try:
        result = ev(tree)
    except (TypeError, ValueError) as e:
        raise InputError(f"constraint {text!r} cannot be evaluated: {e}") from None
    return np.broadcast_to(np.asarray(result, dtype=bool), (n,)).copy()


def apply_constraints(frame: pd.DataFrame, constraints) -> np.ndarray:
    """Rows satisfying every constraint (all rows when there is none)."""
    mask = np.ones(len(frame), dtype=bool)
    for c in constraints:
        mask &= evaluate_constraint(c, frame)
    return mask


# --- enumeration ------------------------------------------------------------------------------------------------

def _layouts_for(space: CampaignSpace, model, gpu, n: int):
    from features.layouts import enumerate_layouts, structural_reason

    allowed = space.layouts
    for lay in enumerate_layouts(model, gpu, n, include_moe_variants=True):
        if any(a in allowed and getattr(lay, a) not in allowed[a] for a in LAYOUT_AXES):
            continue
        if structural_reason(model, lay, gpu):
            continue
        yield lay


def _knob_grid(space: CampaignSpace, native_dtype: str) -> list[dict]:
    from features.specs import EngineConfig

    base = EngineConfig()
    axes = {a: space.engine_knobs.get(a) or (getattr(base, a) if a != "weight_dtype" else native_dtype,)
            for a in ENGINE_AXES}
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def enumerate_space(space: CampaignSpace) -> pd.DataFrame:
    """Every valid, memory-feasible configuration of the space (schema configuration columns), constraints applied."""
    if space.kind == "step":
        frame = _enumerate_steps(space)
    else:
        frame = _enumerate_serving(space)
    if frame.empty:
        raise InputError(f"space {space.name!r} has no valid, memory-feasible configuration")
    frame = frame[apply_constraints(frame, space.constraints)].reset_index(drop=True)
    if frame.empty:
        raise InputError(f"space {space.name!r}: the constraints leave no configuration")
    return frame


def engine_name(space: CampaignSpace) -> str:
    """The engine enumerated configurations run on (the space's, else vllm for serving and torch for steps)."""
    return space.engine or ("vllm" if space.kind == "serving" else "torch")


def _enumerate_serving(space: CampaignSpace) -> pd.DataFrame:
    from features.catalog import resolve_gpu, resolve_model, resolve_workload
    from features.layouts import memory_reason
    from features.specs import EngineConfig

    if not space.models or not space.gpus:
        raise InputError(f"space {space.name!r} must name models and gpus")
    workloads = [resolve_workload(w) for w in (space.workloads or ("reasoning",))]
    requests = space.requests or (0,)
    concurrency = space.concurrency or (0,)
    rates = space.request_rate or (0.0,)
    if requests == (0,) and concurrency == (0,) and rates == (0.0,):
        raise InputError(f"space {space.name!r}: give requests (closed-batch sizes), concurrency or request_rate")
    rows: list[dict] = []
    for m_name, g_name in itertools.product(space.models, space.gpus):
        model, gpu = resolve_model(m_name), resolve_gpu(g_name)
        counts = space.num_gpus or tuple(sorted({2 ** k for k in range(0, 4)} | {gpu.gpus_per_node}))
        knobs = _knob_grid(space, model.native_dtype)
        fits: dict[tuple, bool] = {}
        for n in counts:
            for lay in _layouts_for(space, model, gpu, n):
                for w, nreq, conc, rate, knob in itertools.product(workloads, requests, concurrency, rates, knobs):
                    engine = EngineConfig(engine=engine_name(space), **knob)
                    need = int(math.ceil(w.isl.mean + w.osl.mean))
                    key = (lay, knob["weight_dtype"], knob["kv_cache_dtype"], knob["gpu_memory_utilization"],
                           knob["block_size"], need)
                    if key not in fits:
                        fits[key] = not memory_reason(model, gpu, lay, engine, min_tokens=need)
                    if not fits[key]:
                        continue
                    rows.append({
                        "kind": "serving", "engine": engine_name(space), "model": model.name,
                        "weight_dtype": engine.weight_dtype, "kv_dtype": engine.kv_dtype, "gpu": gpu.name,
                        "num_gpus": lay.num_gpus, "gpus_per_node": gpu.gpus_per_node, "tp": lay.tp, "pp": lay.pp,
                        "dp": lay.dp, "ep": lay.ep, "attention_dp": bool(lay.attention_dp),
                        "isl": w.isl.mean, "osl": w.osl.mean, "isl_dist": w.isl.spec(), "osl_dist": w.osl.spec(),
                        "num_requests": nreq or None, "concurrency": conc, "request_rate": rate,
                        "max_num_seqs": engine.max_num_seqs, "max_num_batched_tokens": engine.max_num_batched_tokens,
                        "gpu_memory_utilization": engine.gpu_memory_utilization, "block_size": engine.block_size,
                    })
                    if len(rows) > MAX_CANDIDATES:
                        raise InputError(f"space {space.name!r} has more than {MAX_CANDIDATES:,} configurations; "
                                         "narrow it")
    return conform(pd.DataFrame(rows))[list(CANDIDATE_COLUMNS)] if rows else pd.DataFrame(columns=CANDIDATE_COLUMNS)


def _enumerate_steps(space: CampaignSpace) -> pd.DataFrame:
    """Decoder-step shapes (torch backend): model x TP shard x decode batch x context, and prefill chunks of `tokens`
    after `prior` cached tokens (context = prior + tokens)."""
    from features.catalog import resolve_gpu, resolve_model
    from features.layouts import structural_reason
    from features.specs import Layout

    if not space.models or not space.gpus:
        raise InputError(f"space {space.name!r} must name models and gpus")
    tps = space.layouts.get("tp", (1,))
    phases = space.step.get("phase", ("decode",))
    batches = space.step.get("batch", (1,))
    contexts = space.step.get("context", (512,))
    tokens = space.step.get("tokens", (256,))
    priors = space.step.get("prior", (0,))
    dtypes = space.engine_knobs.get("weight_dtype", ())
    from collect.backends.torch_step import fits_memory
    from features.specs import dtype_bytes

    rows = []
    for m_name, g_name, tp in itertools.product(space.models, space.gpus, tps):
        model, gpu = resolve_model(m_name), resolve_gpu(g_name)
        if structural_reason(model, Layout(tp=tp)) or model.is_moe:  # a shard runs on one device: no node limit
            continue
        for dtype in dtypes or (model.native_dtype,):
            for phase in phases:
                shapes = ([(b, c, b) for b in batches for c in contexts] if phase == "decode"
                          else [(1, p + t, t) for t in tokens for p in priors])
                for batch, context, tok in shapes:
                    if not fits_memory(model, tp, batch, context, int(dtype_bytes(dtype)), gpu.memory_gb * 1e9):
                        continue  # the whole model shard plus this KV cache exceed the device
                    rows.append({"kind": "step", "engine": engine_name(space), "model": model.name, "weight_dtype": dtype,
                                 "kv_dtype": dtype, "gpu": gpu.name, "tp": tp, "phase": phase, "batch": batch,
                                 "context": float(context), "tokens": float(tok)})
    return conform(pd.DataFrame(rows))[list(CANDIDATE_COLUMNS)] if rows else pd.DataFrame(columns=CANDIDATE_COLUMNS)


# --- a recorded pool, narrowed by a space ---------------------------------------------------------------------------

def pool_candidates(frame: pd.DataFrame) -> pd.DataFrame:
    """The distinct configurations of a measurement frame with catalog names (`ReplayBackend.frame`): candidate
    columns only, no targets, no provenance."""
    cand = _candidate_columns(frame)
    keys = pd.Series(config_hashes(cand))
    return cand.loc[~keys.duplicated().to_numpy()].reset_index(drop=True)


def _candidate_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A measurement frame's rows as conformed candidate columns (catalog names), in row order."""
    return conform(frame.reset_index(drop=True))[list(CANDIDATE_COLUMNS)]


def answerable(candidates: pd.DataFrame, frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """The pool configurations a replay can answer for `target`: those left out ran (status ok) in every pool row
    without recording it (e.g. aiconfigurator's disaggregated rows with no client concurrency: TTFT and TPOT, no
    throughput), so replaying them would spend a run that measures nothing the campaign asked for. Configurations
    with failed rows stay: a failure is an answer. Only whether the target was recorded is read, never its value."""
    if target not in frame.columns or not len(candidates):
        return candidates
    status_ok = frame["status"].astype("string").fillna("ok").eq("ok").to_numpy(bool) if "status" in frame.columns \
        else np.ones(len(frame), dtype=bool)
    recorded = pd.to_numeric(frame[target], errors="coerce").notna().to_numpy(bool)
    hashes = np.asarray(config_hashes(_candidate_columns(frame)), dtype=object)
    answers = set(hashes[recorded | ~status_ok])
    keep = np.isin(np.asarray(config_hashes(candidates), dtype=object), list(answers))
    return candidates.loc[keep].reset_index(drop=True)


def narrow_pool(candidates: pd.DataFrame, space: CampaignSpace) -> pd.DataFrame:
    """The pool configurations inside the space: every axis the space names, then its constraints."""
    from features.catalog import resolve_gpu, resolve_model, resolve_workload

    mask = np.ones(len(candidates), dtype=bool)
    mask &= (candidates["kind"] == space.kind).fillna(False).to_numpy(dtype=bool)

    def keep(col: str, values) -> None:
        nonlocal mask
        if values:
            mask &= candidates[col].astype(object).isin(list(values)).to_numpy()

    keep("engine", [space.engine] if space.engine else [])
    keep("model", [resolve_model(m).name for m in space.models])
    keep("gpu", [resolve_gpu(g).name for g in space.gpus])
    keep("num_gpus", space.num_gpus)
    for axis, values in space.layouts.items():
        keep(axis, values)
    keep("num_requests", space.requests)
    keep("concurrency", space.concurrency)
    keep("request_rate", space.request_rate)
    for axis, values in space.engine_knobs.items():
        if axis == "kv_cache_dtype":  # pools record the resolved KV dtype; `auto` matches any
            keep("kv_dtype", [] if "auto" in values else values)
        else:
            keep(axis, values)
    for axis, values in space.step.items():
        if axis == "prior":  # a prefill chunk's cached context before it: context - tokens
            prior = candidates["context"].to_numpy(float) - candidates["tokens"].to_numpy(float)
            mask &= (candidates["phase"] != "prefill").fillna(True).to_numpy(bool) | np.isin(prior, list(values))
        elif axis == "context":  # decode contexts (a prefill row's context is its prior plus its tokens)
            mask &= (candidates["phase"] == "prefill").fillna(False).to_numpy(bool) | \
                candidates["context"].astype(object).isin(list(values)).to_numpy()
        else:
            keep(axis, values)
    if space.workloads:
        ws = [resolve_workload(w) for w in space.workloads]
        by_dist = candidates["isl_dist"].astype(object) + "|" + candidates["osl_dist"].astype(object)
        by_mean = list(zip(candidates["isl"].to_numpy(float), candidates["osl"].to_numpy(float)))
        specs = {f"{w.isl.spec()}|{w.osl.spec()}" for w in ws}
        means = {(w.isl.mean, w.osl.mean) for w in ws}
        mask &= np.array([(d in specs) or (m in means) for d, m in zip(by_dist.fillna(""), by_mean)], dtype=bool)
    out = candidates[mask].reset_index(drop=True)
    return out[apply_constraints(out, space.constraints)].reset_index(drop=True)


# --- identity, encoding, design ------------------------------------------------------------------------------------

def config_hashes(frame: pd.DataFrame) -> list[str]:
    """A 16-hex-digit id per row over its candidate columns (conformed; empty values as empty fields)."""
    conf = conform(frame.reset_index(drop=True))[list(CANDIDATE_COLUMNS)]
    parts = []
    for c in CANDIDATE_COLUMNS:
        s = conf[c]
        if str(s.dtype) in ("Int64", "float64", "Float64"):
            v = s.to_numpy(dtype=float, na_value=np.nan)
            txt = np.where(np.isnan(v), "", np.char.mod("%.10g", np.nan_to_num(v)))
        else:
            txt = s.astype(object).where(s.notna(), "").astype(str).to_numpy()
        parts.append(txt.astype(object))
    joined = ["\x1f".join(p) for p in zip(*parts)] if parts and len(conf) else []
    return [hashlib.blake2b(j.encode(), digest_size=8).hexdigest() for j in joined]


def encode(frame: pd.DataFrame) -> np.ndarray:
    """Configurations as points in [0, 1]^d: sizes on a log scale, models by log parameters (and MoE), GPUs by log
    bandwidth and memory, other categories by code; constant dimensions are dropped."""
    from features.catalog import resolve_gpu, resolve_model
    from features.memory import total_params

    cols: list[np.ndarray] = []
    for c in NUMERIC_ENCODED:
        if c in frame.columns:
            v = pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            cols.append(np.log2(1.0 + np.where(np.isnan(v), 0.0, np.maximum(v, 0.0))))
    if "attention_dp" in frame.columns:
        cols.append(frame["attention_dp"].astype("boolean").fillna(False).to_numpy(dtype=float))
    if "model" in frame.columns:
        names = frame["model"].astype(object).where(frame["model"].notna(), "")
        facts = {}
        for m in pd.unique(names):
            try:
                spec = resolve_model(m)
                facts[m] = (math.log2(max(float(total_params(spec)), 1.0)), float(spec.is_moe))
            except (InputError, OSError, ValueError):
                facts[m] = (0.0, 0.0)
        cols.append(np.array([facts[m][0] for m in names]))
        cols.append(np.array([facts[m][1] for m in names]))
    if "gpu" in frame.columns:
        names = frame["gpu"].astype(object).where(frame["gpu"].notna(), "")
        facts = {}
        for g in pd.unique(names):
            try:
                spec = resolve_gpu(g)
                facts[g] = (math.log2(spec.hbm_bandwidth_gbps), math.log2(spec.memory_gb))
            except (InputError, OSError, ValueError):
                facts[g] = (0.0, 0.0)
        cols.append(np.array([facts[g][0] for g in names]))
        cols.append(np.array([facts[g][1] for g in names]))
    for c in CATEGORY_ENCODED:
        if c in frame.columns:
            codes, _ = pd.factorize(frame[c].astype(object).where(frame[c].notna(), ""), sort=True)
            cols.append(codes.astype(float))
    if not cols:
        return np.zeros((len(frame), 0))
    X = np.column_stack(cols)
    lo, hi = X.min(axis=0), X.max(axis=0)
    keep = hi > lo
    return (X[:, keep] - lo[keep]) / (hi[keep] - lo[keep])


def marginal_ranks(X: np.ndarray) -> np.ndarray:
    """Each column replaced by its mid-rank empirical CDF over the rows (values in (0, 1); ties share a value)."""
    from scipy.stats import rankdata

    if X.size == 0:
        return X.copy()
    return np.column_stack([(rankdata(X[:, j], method="average") - 0.5) / len(X) for j in range(X.shape[1])])


def initial_design(X: np.ndarray, n: int, seed: int = 0, method: str = "sobol",
                   exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of `n` rows of `X` (encoded configurations) spread over the valid set: each point of a scrambled Sobol
    (or Latin-hypercube) sample, read through the valid set's marginal distributions, takes the nearest row not yet
    taken (so the design is spread like the valid set, not piled on the cube's corners). `exclude` marks rows that
    may not be taken."""
    from scipy.stats import qmc

    m_rows = len(X)
    free = np.ones(m_rows, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    n = int(min(n, free.sum()))
    if n <= 0:
        return np.zeros(0, dtype=int)
    d = X.shape[1]
    if d == 0:
        return np.random.default_rng(seed).choice(np.flatnonzero(free), n, replace=False)
    if method == "sobol":
        points = qmc.Sobol(d, scramble=True, seed=seed).random_base2(max(0, math.ceil(math.log2(n))))[:n]
    elif method == "lhs":
        points = qmc.LatinHypercube(d, seed=seed).random(n)
    else:
        raise InputError(f"unknown design method {method!r} (sobol or lhs)")
    U = marginal_ranks(X)  # the sample's uniform marginals follow the valid set's own distribution
    chosen: list[int] = []
    for p in points:
        dist = np.where(free, ((U - p) ** 2).sum(axis=1), np.inf)
        i = int(np.argmin(dist))
        chosen.append(i)
        free[i] = False
    return np.asarray(chosen, dtype=int)
