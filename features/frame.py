"""Feature frames: the physics model applied to every row of a measurement frame, vectorised.

`physics_frame(df)` adds `phys_<target>` (the physics answer for the row's kind), numeric `f_*` features
(descriptors and every physics term) and `regime` / `bottleneck`. Specs become "columnar" (fields are per-row
numpy arrays), so the same physics functions run once over all rows. The work happens in `physics_columns`, on a
column table of plain numpy arrays (`features.columns`): a frame is wrapped into one, a single scenario is one.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import fields

import numpy as np
import pandas as pd

from features import comm
from features.calibration import Calibration, default_calibration
from features.catalog import parse_length_dist, resolve_gpu, resolve_model
from features.columns import ChainColumns, Columns, FrameColumns, RowSubset, columns_of, float_array
from features.memory import active_params_per_token, kv_bytes_per_token, layers_per_stage, total_params
from features.schema import OP_TARGETS, SERVING_TARGETS, STEP_TARGETS, conform_arrays
from features.serving import EngineArrays, estimate_serving
from features.specs import EngineConfig, GPUSpec, Layout, ModelSpec, Workload
from features.steptime import decode_attention_ms, gemm_ms, stage_step_terms

# step rows measured by layoutcast's torch backend: its decoder layers run RoPE (unfused) and the KV append as
# separate kernels, which the physics adds (`rope_kv_append_ms`); the GPU probe ran neither, and engines (fpm
# iterations, serving) fuse them into kernels the fitted small-kernel term already covers
ROPE_KV_SOURCES = ("torch-probe", "layoutcast-campaign-torch")
# rows whose decode attention ran PyTorch SDPA (one thread block per sequence and KV head: the GPU probe and the
# torch backend); every other source's engine splits long contexts over blocks (`steptime.kv_splits`)
SDPA_SOURCES = ("gpu-probe", "torch-probe", "layoutcast-campaign-torch")
# TensorRT-LLM split decode attention over blocks ("multi-block mode") only when an engine was built with it before
# 0.12, when the option moved to the runtime and became the default
TRTLLM_MULTI_BLOCK_DEFAULT_FROM = (0, 12)


def _engine_splits_kv_one(engine, version) -> float:
    """`engine_splits_kv` of one (engine, version) pair."""
    if str(engine).lower() != "trtllm" or version is None or version != version:
        return 1.0
    parts = re.findall(r"\d+", str(version))[:2]
    return 0.0 if len(parts) == 2 and (int(parts[0]), int(parts[1])) < TRTLLM_MULTI_BLOCK_DEFAULT_FROM else 1.0


def engine_splits_kv(engine: np.ndarray, engine_version: np.ndarray) -> np.ndarray:
    """1.0 per serving row whose engine's decode attention splits long contexts over thread blocks (vLLM, SGLang,
    TensorRT-LLM from 0.12, unknown versions), 0.0 for TensorRT-LLM before 0.12 (e.g. the DLI sweep's 0.9); each
    distinct (engine, version) pair is read once."""
    pairs = list(zip(engine, engine_version))
    answer = {p: _engine_splits_kv_one(*p) for p in set(pairs)}
    return np.array([answer[p] for p in pairs], dtype=float)


def _sdpa_split_kv(cols) -> np.ndarray:
    """`split_kv` per step or op row: 0 where the source ran PyTorch SDPA (`SDPA_SOURCES`), else 1."""
    return 1.0 - np.isin(_text(cols, "source"), list(SDPA_SOURCES)).astype(float)


MODEL_NUMERIC = [f.name for f in fields(ModelSpec) if f.type in ("int", "bool")]
GPU_NUMERIC = [f.name for f in fields(GPUSpec) if f.type in ("float", "int")]


def _names(names) -> np.ndarray:
    """Names as an object array with '' where missing (a pandas Series or a column array)."""
    if isinstance(names, pd.Series):
        return names.to_numpy(dtype=object, na_value="")
    v = np.asarray(names, dtype=object)
    missing = pd.isna(v)
    return np.where(missing, "", v) if missing.any() else v


def columnar_model(names) -> ModelSpec:
    """A ModelSpec whose numeric fields are arrays aligned with `names` (catalog names, HF ids or config paths)."""
    return _columnar(names, resolve_model, ModelSpec, MODEL_NUMERIC)[0]


def columnar_gpu(names) -> GPUSpec:
    """A GPUSpec whose numeric fields are arrays aligned with `names`."""
    return _columnar(names, resolve_gpu, GPUSpec, GPU_NUMERIC)[0]


def _columnar(names, resolve, spec_type, numeric: list[str]) -> tuple:
    """(columnar spec of `names`, each row's code of its distinct name): the codes key rows by spec."""
    codes, uniques = _factorize(_names(names), sentinel=False)
    specs = [resolve(u) for u in uniques]
    return spec_type(name="<columnar>", **_spec_fields(specs, numeric, codes)), codes


def _spec_fields(specs: list, names: list[str], codes: np.ndarray) -> dict[str, np.ndarray]:
    """Per field, the specs' values aligned with `codes` (one table of all fields, indexed once per field)."""
    table = np.array([[getattr(s, f) for f in names] for s in specs], dtype=float)
    if len(specs) == 1:  # one spec (a single scenario, a sweep of one model): no indexing needed
        return {f: np.full(len(codes), table[0, j]) for j, f in enumerate(names)}
    return {f: table[codes, j] for j, f in enumerate(names)}


def _factorize(v: np.ndarray, sentinel: bool = True) -> tuple[np.ndarray, list]:
    """pd.factorize, with a shortcut for one row (a single scenario)."""
    if len(v) == 1:
        x = v[0]
        if sentinel and (x is None or (isinstance(x, float) and x != x)):
            return np.array([-1]), []
        return np.zeros(1, dtype=np.intp), [x]
    codes, uniques = pd.factorize(v, use_na_sentinel=sentinel)
    return codes, list(uniques)


def _rows(cols: Columns) -> int:
    return cols.n


def _num(cols: Columns, col: str, default: float) -> np.ndarray:
    """A numeric column as float64 with `default` where missing (or where the column is absent)."""
    if col not in cols:
        return np.full(_rows(cols), float(default))
    x = float_array(cols[col])
    return np.where(np.isnan(x), default, x)


def _distinct(cols: Columns, col: str) -> tuple[np.ndarray, list[str]]:
    """(codes, distinct values as text) of a text column; missing rows get code -1, so a table of one entry per
    distinct value with the missing-row default appended is indexed by the codes directly."""
    if col not in cols:
        return np.full(_rows(cols), -1), []
    codes, uniques = _factorize(np.asarray(cols[col], dtype=object))
    return codes, [str(u) for u in uniques]


def _text(cols: Columns, col: str, default: str = "", lower: bool = False) -> np.ndarray:
    """A text column as an object array with `default` where missing (optionally lower-cased); each distinct value
    is handled once, so it stays cheap on 100,000 rows."""
    codes, uniques = _distinct(cols, col)
    vals = [u.lower() for u in uniques] if lower else uniques
    return np.array(vals + [default], dtype=object)[codes]


def _dtype_bytes(name: str | None, default: str) -> float:
    """Bytes per element of a dtype name as a frame's dtype column reads it (missing/`auto` = `default`)."""
    from features.specs import DTYPE_BYTES

    if name is None:
        return DTYPE_BYTES[default]
    aliases = {"fp8_e4m3": "fp8", "auto": default, "mixed": "fp16"}
    key = str(name).lower()
    return DTYPE_BYTES.get(aliases.get(key, key), DTYPE_BYTES[default])


def _dtype_col(df: Columns, col: str, default: str) -> np.ndarray:
    """Bytes per element of a dtype-name column (missing/`auto` = `default`); maps each distinct name once."""
    codes, uniques = _distinct(df, col)
    table = np.array([_dtype_bytes(u, default) for u in uniques] + [_dtype_bytes(None, default)], dtype=float)
    return table[codes]  # code -1 (missing) picks the appended default


def _layout(df: Columns) -> Layout:
    adp = _num(df, "attention_dp", 0.0) != 0
    return Layout(tp=_num(df, "tp", 1).astype(int), pp=_num(df, "pp", 1).astype(int), dp=_num(df, "dp", 1).astype(int),
                  ep=_num(df, "ep", 1).astype(int), attention_dp=adp)


ENGINE_KV_SIZING = ("num_gpu_blocks_override", "kv_cache_memory_bytes")


def engine_kv_sizing(df: Columns | pd.DataFrame) -> dict[str, np.ndarray]:
    """Per row, the engine's explicit KV sizing it was run with: `num_gpu_blocks_override` and
    `kv_cache_memory_bytes` (0 where not set). Taken from columns of those names when a frame has them, otherwise
    from `detail.engine_config` (the effective config real vLLM runs record; vLLM-CPU's `VLLM_CPU_KVCACHE_SPACE`
    shows there as kv_cache_memory_bytes). Only inputs of the engine, never the KV size it reported."""
    df = columns_of(df)
    out = {k: _num(df, k, 0.0) for k in ENGINE_KV_SIZING}
    from_detail = [k for k in ENGINE_KV_SIZING if k not in df]
    if "detail" not in df or not from_detail:
        return out
    det = _text(df, "detail")
    has = np.array(['"engine_config"' in d for d in det], dtype=bool)
    for i in np.flatnonzero(has):
        try:
            eff = json.loads(det[i]).get("engine_config") or {}
        except (ValueError, AttributeError):
            continue
        for k in from_detail:
            try:
                out[k][i] = max(float(eff.get(k) or 0.0), 0.0)
            except (TypeError, ValueError):
                pass
    return out


def _length_params(df: Columns, mean_col: str, dist_col: str):
    """(mean, median, sigma, max) per row from the mean column and the distribution spec string."""
    mean = _num(df, mean_col, np.nan)
    median, sigma, top = mean.copy(), np.zeros(_rows(df)), mean.copy()
    codes, uniques = _distinct(df, dist_col)
    for j, spec in enumerate(uniques):
        if spec and spec.startswith("lognormal"):
            d = parse_length_dist(spec)
            idx = codes == j
            median[idx], sigma[idx], top[idx] = d.median, d.sigma, d.max_tokens
    return mean, median, sigma, top


PHYS_COLUMNS = tuple(f"phys_{t}" for t in SERVING_TARGETS + STEP_TARGETS + OP_TARGETS)


def physics_frame(df: pd.DataFrame, cal: Calibration | None = None) -> pd.DataFrame:
    """Return `df` (conformed to the schema) with phys_* targets, f_* features, regime and bottleneck."""
    return PhysicsParts.of(df, cal).frame()


class PhysicsParts:
    """A frame's physics before it is assembled into one frame: the conformed input (`kept`, without the columns
    the physics replaces), the input as a column table (`inputs`), and the new columns in their final order
    (`new`: phys_*, f_*, regime and bottleneck as object arrays). `physics_frame` is `PhysicsParts.of(df).frame()`;
    `Predictor.predict_frame` adds its predictions first and builds the frame once."""

    def __init__(self, kept: pd.DataFrame, inputs: Columns, new: dict[str, np.ndarray]):
        self.kept, self.inputs, self.new = kept, inputs, new

    @classmethod
    def of(cls, df: pd.DataFrame, cal: Calibration | None = None) -> "PhysicsParts":
        cal = cal or default_calibration()
        arrays = conform_arrays(df)
        n = len(df)
        rest = df[[c for c in df.columns if c not in arrays]].reset_index(drop=True)
        out = pd.concat([pd.DataFrame(arrays), rest], axis=1) if len(rest.columns) else pd.DataFrame(arrays)
        inputs = ChainColumns(Columns({c: _plain_array(v) for c, v in arrays.items()}, n), FrameColumns(rest))
        phys = physics_columns(inputs, cal) if n else {"regime": np.full(0, None, dtype=object),
                                                        "bottleneck": np.full(0, None, dtype=object)}
        regime, bottleneck = phys.pop("regime"), phys.pop("bottleneck")
        # every phys_ column exists (NaN where the row's kind has no such answer): those the input already had keep
        # their place, the others come first among the new columns, then the features and answers in their order
        nan_columns = {c: np.full(n, np.nan) for c in PHYS_COLUMNS if c not in phys}
        kept = out.drop(columns=[c for c in phys if c in out.columns])
        for c in [c for c in nan_columns if c in kept.columns]:
            kept[c] = nan_columns.pop(c)
        new = {**nan_columns, **phys}
        for c, v in (("regime", regime), ("bottleneck", bottleneck)):
            if c in kept.columns:  # re-framing a physics frame: the column keeps its place
                kept[c] = pd.array(v, dtype="string")
            else:
                new[c] = v
        return cls(kept, inputs, new)

    def table(self) -> Columns:
        """The input and the physics as one column table (the physics wins where both have a column)."""
        return ChainColumns(Columns(self.new, self.inputs.n), self.inputs)

    def frame(self, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """The physics frame, with `extra` columns (predictions) after the physics ones, replacing any of that name."""
        extra = extra or {}
        kept = self.kept.drop(columns=[c for c in extra if c in self.kept.columns])
        new = {c: v for c, v in self.new.items() if c not in extra}
        for c in ("regime", "bottleneck"):
            if c in new:
                new[c] = pd.array(new[c], dtype="string")
        return pd.concat([kept, pd.DataFrame({**new, **extra}, index=kept.index)], axis=1)


def _plain_array(v) -> np.ndarray:
    """A conformed column as numpy (Int64/boolean arrays as float with NaN; text as objects)."""
    return v if isinstance(v, np.ndarray) else v.to_numpy(dtype=float, na_value=np.nan)


def physics_columns(cols: Columns, cal: Calibration | None = None) -> dict[str, np.ndarray]:
    """The physics of every row of a conformed column table: the f_* features, the phys_* answers of each row's kind
    (NaN for other kinds' targets) and `regime` / `bottleneck` (object arrays), one array per name."""
    cal = cal or default_calibration()
    n = cols.n
    model, model_codes = _columnar(cols["model"], resolve_model, ModelSpec, MODEL_NUMERIC)
    gpu, gpu_codes = _columnar(cols["gpu"], resolve_gpu, GPUSpec, GPU_NUMERIC)
    layout = _layout(cols)
    wdt = _dtype_col(cols, "weight_dtype", "bf16")
    kv_auto = _text(cols, "kv_dtype", "auto", lower=True) == "auto"
    kdt = np.asarray(np.where(kv_auto, np.where(wdt <= 1.0, 2.0, wdt), _dtype_col(cols, "kv_dtype", "bf16")))
    out: dict[str, np.ndarray] = _descriptor_features(model, gpu, layout, wdt, kdt)
    kind = _text(cols, "kind")
    # what the rows' physics depends on besides their kind's own input columns (`KIND_PHYSICS`)
    spec_keys = [model_codes, gpu_codes, layout.tp, layout.pp, layout.dp, layout.ep, layout.attention_dp, wdt, kdt]

    regime = np.full(n, None, dtype=object)
    bottleneck = np.full(n, None, dtype=object)
    for name, (fn, inputs) in KIND_PHYSICS.items():
        mask = kind == name
        if not mask.any():
            continue
        idx = np.flatnonzero(mask) if not mask.all() else None
        rows = idx if idx is not None else np.arange(n)
        rep, inverse = _representatives(cols, rows, spec_keys, inputs)
        if rep is None and idx is None:  # every row of one kind, none repeated (the usual single scenario)
            out.update(fn(cols, mask, model, gpu, layout, wdt, kdt, cal, regime, bottleneck))
            continue
        rep = rows if rep is None else rows[rep]
        r, b = np.full(len(rep), None, dtype=object), np.full(len(rep), None, dtype=object)
        part = fn(RowSubset(cols, rep), np.ones(len(rep), dtype=bool), _take(model, rep), _take(gpu, rep),
                  _take(layout, rep), wdt[rep], kdt[rep], cal, r, b)
        spread = (lambda v: v) if inverse is None else (lambda v: np.broadcast_to(v, (len(rep),))[inverse])
        regime[rows], bottleneck[rows] = spread(r), spread(b)
        for k, v in part.items():
            col = out.setdefault(k, np.full(n, np.nan))
            col[rows] = spread(v)
    out["regime"] = regime
    out["bottleneck"] = bottleneck
    return out


def scenario_physics(model: ModelSpec, gpu: GPUSpec, layout: Layout, engine: EngineConfig, wl: Workload,
                     cal: Calibration | None = None) -> dict[str, np.ndarray]:
    """`physics_columns` of the serving row that describes one scenario (`predictor.api.scenario_row`), as 1-element
    arrays, computed from its resolved specs rather than from a column table: the single `predict` path, where
    reading and resolving the row's own columns would cost more than its physics."""
    cal = cal or default_calibration()
    # plain numbers throughout (the physics broadcasts them like one-row columns, with less numpy work per term)
    wdt = _dtype_bytes(engine.weight_dtype, "bf16")
    kv_name = engine.kv_dtype
    kv_auto = kv_name is None or str(kv_name).lower() == "auto"
    kdt = (2.0 if wdt <= 1.0 else wdt) if kv_auto else _dtype_bytes(kv_name, "bf16")
    out = _descriptor_features(model, gpu, layout, wdt, kdt)

    def lengths(dist) -> tuple[float, ...]:  # (mean, median, sigma, max) as `_length_params` reads the row
        mean = float(dist.mean)
        if dist.kind != "lognormal":
            return mean, mean, 0.0, mean
        d = parse_length_dist(dist.spec())  # the row carries the spec text: read it back the same way
        return mean, float(d.median), float(d.sigma), float(d.max_tokens)

    isl = lengths(wl.isl)[0]
    osl, osl_med, osl_sig, osl_max = lengths(wl.osl)
    arrays = EngineArrays(
        weight_dtype=wdt, kv_dtype=kdt, max_num_seqs=float(engine.max_num_seqs),
        max_num_batched_tokens=float(engine.max_num_batched_tokens),
        gpu_memory_utilization=float(engine.gpu_memory_utilization), block_size=float(engine.block_size),
        num_gpu_blocks_override=float(int(engine.num_gpu_blocks_override or 0)),
        kv_cache_memory_bytes=float(engine.kv_cache_memory_gb or 0.0) * 1e9)
    regime, bottleneck = np.full(1, None, dtype=object), np.full(1, None, dtype=object)
    out.update(_serving_columns(model, gpu, layout, arrays, cal, isl, osl, float(wl.num_requests),
                                float(wl.concurrency), float(wl.request_rate), osl_med, osl_sig, osl_max,
                                np.ones(1, dtype=bool), regime, bottleneck))
    out["regime"], out["bottleneck"] = regime, bottleneck
    return out


DISTINCT_MIN_ROWS = 256  # fewer rows of a kind: computed row by row (finding repeats would not pay)
DISTINCT_MAX_SHARE = 0.7  # more distinct configurations than this share of the rows: computed row by row


def _representatives(cols: Columns, rows: np.ndarray, spec_keys: list[np.ndarray], inputs: tuple[str, ...] | None
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(positions in `rows` of one row per distinct configuration, each row's configuration number), or
    (None, None) where the rows are computed one by one.

    A kind's physics is a function of the spec keys and its input columns only, elementwise, so rows that agree on
    all of them get the same answer: a sweep repeating configurations (100,000 rows over a few thousand distinct
    deployments) computes each once and spreads the answers back, exactly. `inputs` None: not applicable."""
    if inputs is None or len(rows) < DISTINCT_MIN_ROWS:
        return None, None
    whole = len(rows) == cols.n
    keys = [k if whole else k[rows] for k in spec_keys]
    keys += [cols[c] if whole else cols[c][rows] for c in inputs if c in cols]
    inverse, count = _combination_codes(keys, len(rows))
    if count > DISTINCT_MAX_SHARE * len(rows):
        return None, None
    first = np.full(count, len(rows), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(rows)))
    return first, inverse


def _combination_codes(keys: list[np.ndarray], n: int) -> tuple[np.ndarray, int]:
    """(code of each row's combination of `keys` values, number of distinct combinations); NaN and None are
    values of their own."""
    code, size = np.zeros(n, dtype=np.int64), 1
    for k in keys:
        c, uniques = pd.factorize(np.asarray(k), use_na_sentinel=False)
        if len(uniques) <= 1:
            continue
        if size * len(uniques) >= 2**62:  # renumber the combinations so far before the code overflows
            code, seen = pd.factorize(code)
            size = len(seen)
        code, size = code * len(uniques) + c, size * len(uniques)
    code, seen = pd.factorize(code)
    return code, len(seen)


def _take(spec, idx):
    """The rows `idx` of a columnar spec (array fields indexed, scalars kept)."""
    from dataclasses import replace

    changes = {f.name: np.asarray(getattr(spec, f.name))[idx] for f in fields(spec)
               if isinstance(getattr(spec, f.name), np.ndarray) and np.asarray(getattr(spec, f.name)).ndim == 1}
    return replace(spec, **changes)


def _descriptor_features(model, gpu, layout, wdt, kdt) -> dict[str, np.ndarray]:
    """Model, GPU and layout descriptors per row (one row for a single spec of plain numbers)."""
    if isinstance(model.num_layers, (int, float)) and isinstance(layout.tp, (int, float)):
        # one scenario: the descriptors as one row of plain numbers, made into 1-element columns at once
        values = _descriptor_values(model, gpu, layout, wdt, kdt, 1.0)
        table = np.array([float(v) for v in values.values()])
        return {name: table[j:j + 1] for j, name in enumerate(values)}
    return _descriptor_values(model, gpu, layout, wdt, kdt, np.ones(len(np.atleast_1d(model.num_layers))))


@functools.lru_cache(maxsize=1024)
def _model_sizes(model: ModelSpec, kdt: float) -> tuple[float, float, float]:
    """(parameters, active parameters per token, KV bytes per token) of one catalog model: facts of its spec,
    worked out once per spec and KV dtype."""
    return float(total_params(model)), float(active_params_per_token(model)), float(kv_bytes_per_token(model, kdt))


def _descriptor_values(model, gpu, layout, wdt, kdt, ones) -> dict:
    """The descriptors, each times `ones` (per-row arrays, or 1.0 for plain numbers)."""
    if isinstance(ones, float):  # one spec of plain numbers
        params, active, kv_per_token = _model_sizes(model, float(kdt))
    else:
        params, active, kv_per_token = total_params(model), active_params_per_token(model), kv_bytes_per_token(model, kdt)
    return {
        "f_params_b": params / 1e9 * ones,
        "f_active_params_b": active / 1e9 * ones,
        "f_layers": model.num_layers * ones,
        "f_hidden": model.hidden_size * ones,
        "f_heads": model.num_heads * ones,
        "f_kv_heads": model.num_kv_heads * ones,
        "f_experts": model.num_experts * ones,
        "f_topk": model.experts_per_token * ones,
        "f_mla": (model.kv_lora_rank > 0) * ones,
        "f_kv_bytes_per_token": kv_per_token * ones,
        "f_weight_bytes_per_elem": wdt * ones,
        "f_gpu_mem_gb": gpu.memory_gb * ones,
        "f_gpu_hbm_gbps": gpu.hbm_bandwidth_gbps * ones,
        "f_gpu_bf16_tflops": gpu.bf16_tflops * ones,
        "f_gpu_fp8_tflops": gpu.fp8_tflops * ones,
        "f_gpu_link_gbps": gpu.link_bandwidth_gbps * ones,
        "f_tp": layout.tp * ones,
        "f_pp": layout.pp * ones,
        "f_dp": layout.dp * ones,
        "f_ep": layout.ep * ones,
        "f_attention_dp": np.asarray(layout.attention_dp, dtype=float) * ones,
        "f_num_gpus": layout.num_gpus * ones,
    }


def _masked(mask: np.ndarray):
    """v -> a float column of the rows: v (a scalar or per-row array) where `mask`, NaN elsewhere."""
    n = len(mask)
    if mask.all():  # every row (the usual case): a plain copy, no masking
        def whole(v) -> np.ndarray:
            if n == 1 and isinstance(v, (int, float)):  # one scenario's plain number
                return np.array([v], dtype=float)
            out = np.empty(n)
            out[:] = v
            return out
        return whole
    return lambda v: np.where(mask, np.broadcast_to(np.asarray(v, dtype=float), (n,)), np.nan)


def _serving_physics(out, mask, model, gpu, layout, wdt, kdt, cal, regime, bottleneck) -> dict[str, np.ndarray]:
    n = _rows(out)
    isl, _, _, _ = _length_params(out, "isl", "isl_dist")
    osl, osl_med, osl_sig, osl_max = _length_params(out, "osl", "osl_dist")
    engine = EngineArrays(
        weight_dtype=wdt, kv_dtype=kdt,
        max_num_seqs=_num(out, "max_num_seqs", 256), max_num_batched_tokens=_num(out, "max_num_batched_tokens", 8192),
        gpu_memory_utilization=_num(out, "gpu_memory_utilization", 0.9), block_size=_num(out, "block_size", 16),
        split_kv=engine_splits_kv(_text(out, "engine"), _text(out, "engine_version")), **engine_kv_sizing(out))
    isl = np.where(np.isnan(isl), 1024, isl)
    osl = np.where(np.isnan(osl), 1024, osl)
    return _serving_columns(model, gpu, layout, engine, cal, isl, osl, _num(out, "num_requests", 0),
                            _num(out, "concurrency", 0), _num(out, "request_rate", 0),
                            np.where(np.isnan(osl_med), osl, osl_med), osl_sig, np.where(np.isnan(osl_max), osl, osl_max),
                            mask, regime, bottleneck)


def _serving_columns(model, gpu, layout, engine: EngineArrays, cal, isl, osl, num_requests, concurrency, request_rate,
                     osl_median, osl_sigma, osl_max, mask, regime, bottleneck) -> dict[str, np.ndarray]:
    """`estimate_serving` of the rows in `mask` as phys_* / f_* columns (regime and bottleneck written in place)."""
    n = len(mask)
    e = estimate_serving(model, gpu, layout, engine, cal, isl, osl, num_requests, concurrency, request_rate,
                         osl_median, osl_sigma, osl_max)

    m = _masked(mask)

    cols = {
        "phys_output_throughput": m(e.output_throughput), "phys_total_throughput": m(e.total_throughput),
        "phys_request_throughput": m(e.request_throughput), "phys_ttft_ms": m(e.ttft_ms), "phys_tpot_ms": m(e.tpot_ms),
        "phys_ttft_p99_ms": m(e.ttft_p99_ms), "phys_tpot_p99_ms": m(e.tpot_p99_ms), "phys_makespan_s": m(e.makespan_s),
        "phys_kv_capacity_tokens": m(e.kv_capacity_tokens),
        "f_isl": m(isl), "f_osl": m(osl), "f_kv_capacity_tokens": m(e.kv_capacity_tokens),
        "f_weight_bytes_per_gpu": m(e.weight_bytes_per_gpu), "f_batch": m(e.batch), "f_batch_limit_kv": m(e.batch_limit_kv),
        "f_demand_per_replica": m(e.demand_per_replica), "f_prefill_ms": m(e.prefill_ms), "f_hbm_bw_util": m(e.hbm_bw_util),
        "f_feasible": m(e.feasible),
    }
    for k, v in e.terms.items():
        cols[f"f_term_{k}_ms"] = m(v)
    if n == 1 and isinstance(e.regime, str):  # one scenario: its labels as they are
        regime[0], bottleneck[0] = e.regime, e.bottleneck
    else:
        regime[mask] = np.broadcast_to(e.regime, (n,))[mask]
        bottleneck[mask] = np.broadcast_to(e.bottleneck, (n,))[mask]
    return cols


def _step_physics(out, mask, model, gpu, layout, wdt, kdt, cal, regime, bottleneck) -> dict[str, np.ndarray]:
    n = _rows(out)
    phase = _text(out, "phase", "decode")
    decode = phase == "decode"
    batch = _num(out, "batch", 1)
    ctx = _num(out, "context", 0)
    tokens = _num(out, "tokens", np.nan)
    tokens = np.where(np.isnan(tokens), np.where(decode, batch, ctx), tokens)
    d = np.where(decode, batch, 0.0)
    kv = np.where(decode, batch * ctx, 0.0)
    T = np.where(decode, 0.0, tokens)
    prefix = np.where(decode, 0.0, np.maximum(ctx - tokens, 0.0))
    rope_kv = np.isin(_text(out, "source"), list(ROPE_KV_SOURCES)).astype(float)
    t = stage_step_terms(model, gpu, layout, cal, d, kv, T, prefix, wdt, kdt, include_comm=False,
                         include_lm_head=False, include_overhead=False, rope_kv=rope_kv, split_kv=_sdpa_split_kv(out))
    lm = gemm_ms(np.maximum(d, 1), model.vocab_size / layout.tp, model.hidden_size, gpu, cal)

    m = _masked(mask)

    terms = {"weights": t.weight_read_ms, "kv_cache": t.kv_read_ms, "compute": t.compute_ms}
    stack = np.vstack([np.broadcast_to(v, (n,)) for v in terms.values()])
    top = np.array(list(terms))[np.argmax(stack, axis=0)]
    regime[mask] = np.where(top == "compute", "compute", "bandwidth")[mask]
    bottleneck[mask] = np.where(top == "compute", "tensor_core_compute",
                                np.where(top == "weights", "weight_bandwidth", "kv_bandwidth"))[mask]
    # GPU-relative features (they carry between GPUs, unlike absolute times): arithmetic intensity of the layer
    # over the card's ridge point, and the share of the layer's time in weight streaming, KV streaming, compute
    # and kernel latency floors
    n_layers = np.maximum(1, layers_per_stage(model, layout))
    layer = np.maximum(t.layer_ms, 1e-9)
    w_ms, c_ms, kv_ms = t.weight_read_ms / n_layers, t.compute_ms / n_layers, t.kv_read_ms / n_layers
    hbm, peak = gpu.hbm_bandwidth_gbps * 1e9, gpu.bf16_tflops * 1e12
    intensity = (c_ms * cal.gemm_rate_frac * peak) / np.maximum((w_ms + kv_ms) * cal.gemm_bw_frac * hbm, 1e-9)
    floors = 4 * cal.gemm_floor_ms + cal.attn_floor_ms + cal.layer_misc_ms + 2 * cal.rope_kv_floor_ms * rope_kv
    rel = {"f_step_intensity_vs_ridge": m(intensity / (peak / hbm)), "f_step_weights_frac": m(w_ms / layer),
           "f_step_kv_frac": m(kv_ms / layer), "f_step_compute_frac": m(c_ms / layer),
           "f_step_floor_frac": m(floors / layer)}
    return {**rel, "phys_layer_ms": m(t.layer_ms), "phys_lm_head_ms": m(lm), "f_step_batch": m(batch), "f_step_context": m(ctx),
            "f_step_tokens": m(tokens), "f_term_weights_ms": m(t.weight_read_ms / np.maximum(1, model.num_layers)),
            "f_term_kv_cache_ms": m(t.kv_read_ms), "f_term_compute_ms": m(t.compute_ms)}


def _op_physics(out, mask, model_unused, gpu, layout_unused, wdt, kdt_unused, cal, regime, bottleneck) -> dict[str, np.ndarray]:
    """op rows: GEMM (m, n, k in detail), decode attention, collectives (message_bytes, world_size)."""
    n = _rows(out)
    op = _text(out, "op", lower=True)
    detail = _text(out, "detail", "{}")
    parsed = [json.loads(s) if m and s.startswith("{") else {} for s, m in zip(detail, mask)]

    def field(*keys, default=np.nan):
        vals = np.full(n, default, dtype=float)
        for i, d in enumerate(parsed):
            for k in keys:
                if k in d and d[k] is not None:
                    try:
                        vals[i] = float(d[k])
                    except (TypeError, ValueError):
                        pass
                    break
        return vals

    phys = np.full(n, np.nan)
    mm, nn, kk = field("m"), field("n"), field("k")
    is_gemm = mask & (op == "gemm") & ~np.isnan(mm)
    phys = np.where(is_gemm, gemm_ms(np.nan_to_num(mm), np.nan_to_num(nn), np.nan_to_num(kk), gpu, cal, wdt), phys)
    size = field("message_bytes", "message_size_bytes")
    world = field("world_size", "num_gpus", default=np.nan)
    world = np.where(np.isnan(world), _num(out, "num_gpus", 1), world)
    for name, fn in (("allreduce", comm.allreduce_ms), ("all_reduce", comm.allreduce_ms), ("allgather", comm.allgather_ms),
                     ("all_gather", comm.allgather_ms), ("alltoall", comm.alltoall_ms)):
        sel = mask & (op == name) & ~np.isnan(size)
        if sel.any():
            phys = np.where(sel, fn(np.nan_to_num(size), world, gpu, cal), phys)
    sel = mask & np.isin(op, ["attn_decode", "attn"])
    if sel.any():
        heads = field("num_heads", default=32)
        kvh = field("num_kv_heads", "kv_heads", default=8)
        hd = field("head_dim", default=128)
        spec = ModelSpec("op", 1, 1, np.nan_to_num(heads, nan=32), np.nan_to_num(kvh, nan=8), np.nan_to_num(hd, nan=128), 1, 1)
        b = _num(out, "batch", 1)
        ctx = _num(out, "context", 0)
        t, _ = decode_attention_ms(b, b * ctx, spec, Layout(), gpu, cal, split_kv=_sdpa_split_kv(out))
        phys = np.where(sel, t, phys)
    return {"phys_op_ms": np.where(mask, phys, np.nan)}


# per kind: its physics, and the input columns it reads besides the model, GPU, layout and dtypes (rows agreeing on
# all of them get the same answer and are computed once; None: every row computed)
KIND_PHYSICS = {
    "serving": (_serving_physics, ("engine", "engine_version", "isl", "osl", "isl_dist", "osl_dist", "max_num_seqs",
                                   "max_num_batched_tokens",
                                   "gpu_memory_utilization", "block_size", "num_requests", "concurrency",
                                   "request_rate", *ENGINE_KV_SIZING, "detail")),
    "step": (_step_physics, ("phase", "batch", "context", "tokens", "source")),
    "op": (_op_physics, None),
}
