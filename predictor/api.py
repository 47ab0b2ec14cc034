"""The library API: `Predictor` (load, predict_frame, predict) on top of physics and learned residual models."""

from __future__ import annotations

import functools
import math
import json
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from features.calibration import Calibration, default_calibration
from features.catalog import DATA_DIR, resolve_gpu, resolve_model, resolve_workload
from features.closed_batch import simulate_deployment
from features.errors import InputError
from features.columns import Columns, FrameColumns, float_array
from features.frame import PhysicsParts, physics_columns, physics_frame, scenario_physics
from features.layouts import check_layout, check_memory
from features.schema import OP_TARGETS, SERVING_TARGETS, STEP_TARGETS
from features.specs import EngineConfig, Layout, Workload

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "default_model.joblib"
PHYSICS_UNCERTAINTY_PATH = DATA_DIR / "physics_uncertainty.json"
ALL_TARGETS = SERVING_TARGETS + STEP_TARGETS + OP_TARGETS


@functools.lru_cache(maxsize=1)
def physics_uncertainty() -> dict:
    """Per target: the 10th and 90th percentiles of log(measured / physics) on held-out data (an 80% interval)."""
    if not PHYSICS_UNCERTAINTY_PATH.exists():
        return {}
    table = dict(json.loads(PHYSICS_UNCERTAINTY_PATH.read_text()).get("targets", {}))
    # p99 latencies share the spread of their means where no p99 was measured against the physics
    for p99, mean in (("ttft_p99_ms", "ttft_ms"), ("tpot_p99_ms", "tpot_ms")):
        if p99 not in table and mean in table:
            table[p99] = table[mean]
    return table


@dataclass
class Prediction:
    """One configuration's predicted performance with 80% intervals and the limit that binds."""

    model: str
    gpu: str
    layout: str
    tp: int
    pp: int
    dp: int
    ep: int
    attention_dp: bool
    num_gpus: int
    workload: str
    targets: dict  # target -> {"value", "lo", "hi"}
    regime: str
    bottleneck: str
    kv_capacity_tokens: float
    steady_batch: float
    makespan_s: float | None
    preemptions: float | None
    source: str  # "physics" or "physics+learned"
    simulated: bool
    explanation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


class Predictor:
    """Predicts serving, step and op targets for measurement frames; thread-safe (no mutable state after load)."""

    def __init__(self, calibration: Calibration | None = None, learned=None, metadata: dict | None = None):
        self.calibration = calibration or default_calibration()
        self.learned = learned
        self.metadata = metadata or {}
        self._cache_lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Predictor":
        """The bundled default (physics + residual models when the artifact exists), or a `layoutcast train` artifact."""
        if path is None:
            if DEFAULT_MODEL_PATH.exists():
                path = DEFAULT_MODEL_PATH
            else:
                return cls(metadata={"source": "physics"})
        from train.artifact import load_artifact  # train imports features only; predictor may import train

        learned = load_artifact(path)
        return cls(learned=learned, metadata={"source": "physics+learned", "artifact": str(path)})

    @property
    def source(self) -> str:
        return "physics+learned" if self.learned is not None else "physics"

    # --- vectorised --------------------------------------------------------------------------------------------
    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Add pred_<target>, pred_<target>_lo/_hi (80% interval), regime and bottleneck to any measurement frame."""
        if self.learned is not None and not _reads_physics_columns(self.learned):  # a family with its own columns
            base = self.learned.prepare(physics_frame(frame, self.calibration))
            new = final_predictions(FrameColumns(base), self.learned.predict_arrays(base))
            return pd.concat([base.drop(columns=[c for c in new if c in base.columns]),
                              pd.DataFrame(new, index=base.index)], axis=1)
        # the physics and the learned layer computed on numpy column tables; the frame is built once, at the end
        parts = PhysicsParts.of(frame, self.calibration)
        table = parts.table()
        learned = self.learned.predict_arrays(table) if self.learned is not None else {}
        return parts.frame(final_predictions(table, learned))

    def _predict_columns(self, cols: Columns, physics: dict[str, np.ndarray] | None = None,
                         targets: tuple[str, ...] = ALL_TARGETS) -> dict[str, np.ndarray]:
        """`predict_frame`'s pred_<target>, _lo, _hi of `targets` for a column table (a single scenario: no pandas
        on the way), on the physics the caller computed from the scenario's specs (`physics`) or on the table's own."""
        physics = physics if physics is not None else physics_columns(cols, self.calibration)
        phys = Columns({**cols, **physics}, cols.n)
        learned = self.learned.predict_arrays(phys) if self.learned is not None else {}
        return final_predictions(phys, learned, targets)

    # --- single configuration ----------------------------------------------------------------------------------
    def predict(self, model: str, gpu: str, tp: int = 1, pp: int = 1, dp: int = 1, ep: int = 1,
                attention_dp: bool = False, workload: str | Workload = "reasoning", num_requests: int = 0,
                concurrency: int = 0, request_rate: float = 0.0, isl: int | None = None, osl: int | None = None,
                engine: EngineConfig | None = None, simulate: bool | None = None, seed: int = 0, **engine_knobs) -> Prediction:
        """Predict one deployment. With a request count (closed batch) the request-level scheduler simulation
        gives makespan, preemptions and the tail; `simulate=False` keeps the steady-state answer only."""
        engine = engine or EngineConfig()
        if engine_knobs:
            try:
                engine = replace(engine, **engine_knobs)
            except TypeError as e:
                raise InputError(f"unknown engine setting: {e}") from None
        key = (model, gpu, tp, pp, dp, ep, attention_dp, workload if isinstance(workload, str) else id(workload),
               num_requests, concurrency, request_rate, isl, osl, engine, simulate, seed)
        return self._predict_cached(key, model, gpu, Layout(tp, pp, dp, ep, attention_dp), workload, num_requests,
                                    concurrency, request_rate, isl, osl, engine, simulate, seed)

    def _predict_cached(self, key, *args) -> Prediction:
        with self._cache_lock:
            cache = self.__dict__.setdefault("_predict_cache", {})
            hit = cache.get(key)
        if hit is not None:
            return hit
        result = self._predict_uncached(*args)
        with self._cache_lock:
            if len(cache) > 4096:
                cache.clear()
            cache[key] = result
        return result

    def _predict_uncached(self, model_name, gpu_name, layout: Layout, workload, num_requests, concurrency, request_rate,
                          isl, osl, engine: EngineConfig, simulate, seed) -> Prediction:
        model = resolve_model(model_name)
        gpu = resolve_gpu(gpu_name)
        wl = resolve_workload(workload, isl, osl).with_arrival(int(num_requests or 0), int(concurrency or 0),
                                                               float(request_rate or 0.0))
        for v, name in ((num_requests, "requests"), (concurrency, "concurrency"), (request_rate, "rate")):
            if v and v < 0:
                raise InputError(f"--{name} must be positive")
        if not engine.weight_dtype:
            engine = replace(engine, weight_dtype=model.native_dtype)
        min_tokens = int(min(wl.isl.max_tokens, wl.isl.median * 4)) + 1
        check_layout(model, gpu, layout, engine, min_tokens, memory=False)
        physics = scenario_physics(model, gpu, layout, engine, wl, self.calibration)
        # the memory check on the weights and KV capacity the physics just computed (the same functions and inputs)
        check_memory(model, gpu, layout, engine, min_tokens, physics["f_weight_bytes_per_gpu"][0],
                     physics["phys_kv_capacity_tokens"][0])
        row = scenario_row(model_name, gpu.name, layout, wl, engine)
        pred = self._predict_columns(scenario_columns(row), physics, SERVING_TARGETS)
        r = {c: v[0] for c, v in physics.items()}
        targets = {t: {"value": float(pred[f"pred_{t}"][0]), "lo": float(pred[f"pred_{t}_lo"][0]),
                       "hi": float(pred[f"pred_{t}_hi"][0])}
                   for t in SERVING_TARGETS if math.isfinite(pred[f"pred_{t}"][0])}
        makespan = targets.get("makespan_s", {}).get("value")
        preemptions = None
        simulated = False
        explanation = {k.replace("f_term_", "").replace("_ms", "") + "_ms": _f(r[k]) for k in r if k.startswith("f_term_")}
        explanation.update(hbm_bandwidth_utilisation=_f(r["f_hbm_bw_util"]), batch_limit_kv=_f(r["f_batch_limit_kv"]),
                           weight_gb_per_gpu=_f(r["f_weight_bytes_per_gpu"]) / 1e9)
        if simulate is None:
            simulate = wl.num_requests > 0
        if simulate and (wl.num_requests > 0 or wl.concurrency > 0 or wl.request_rate > 0):
            sim = simulate_deployment(model, gpu, layout, engine, wl, wl.num_requests or None, self.calibration, seed)
            simulated = True
            # the simulation runs on the physics step time; the learned correction of the step speed (its TPOT
            # ratio to physics) scales every time in it coherently, throughputs inversely; TTFT keeps its own ratio
            def ratio(t):
                ph = _f(r[f"phys_{t}"])
                return targets[t]["value"] / ph if t in targets and ph > 0 and np.isfinite(targets[t]["value"]) else 1.0

            speed = ratio("tpot_ms")
            scale = {"makespan_s": speed, "tpot_ms": speed, "tpot_p99_ms": speed, "ttft_ms": ratio("ttft_ms"),
                     "ttft_p99_ms": ratio("ttft_ms"), "output_throughput": 1 / speed, "total_throughput": 1 / speed,
                     "request_throughput": 1 / speed}
            sim_values = {
                "makespan_s": sim.makespan_s if wl.num_requests > 0 else np.nan,
                "output_throughput": sim.output_throughput, "total_throughput": sim.total_throughput,
                "request_throughput": sim.request_throughput, "ttft_ms": sim.ttft_mean_s * 1e3,
                "tpot_ms": sim.tpot_mean_s * 1e3, "ttft_p99_ms": sim.ttft_p99_s * 1e3, "tpot_p99_ms": sim.tpot_p99_s * 1e3,
            }
            for t, v in sim_values.items():
                if not np.isfinite(v):
                    continue
                old = targets.get(t, {"value": v, "lo": np.nan, "hi": np.nan})
                ratio_lo = old["lo"] / old["value"] if old.get("value") else np.nan
                ratio_hi = old["hi"] / old["value"] if old.get("value") else np.nan
                val = v * scale.get(t, 1.0)
                targets[t] = {"value": val, "lo": val * ratio_lo, "hi": val * ratio_hi}
            makespan = targets.get("makespan_s", {}).get("value")
            preemptions = float(sim.preemptions)
            targets["preemptions"] = {"value": preemptions, "lo": np.nan, "hi": np.nan}
            explanation.update(peak_running_batch=sim.peak_running, mean_running_batch=sim.mean_running,
                               full_cache_fraction=sim.full_cache_fraction)
        return Prediction(
            model=model.name if not str(model_name).endswith(".json") else str(model_name), gpu=gpu.name,
            layout=layout.label(), tp=layout.tp, pp=layout.pp, dp=layout.dp, ep=layout.ep,
            attention_dp=bool(layout.attention_dp), num_gpus=layout.num_gpus, workload=wl.name, targets=targets,
            regime=str(r["regime"]), bottleneck=str(r["bottleneck"]), kv_capacity_tokens=_f(r["phys_kv_capacity_tokens"]),
            steady_batch=_f(r["f_batch"]), makespan_s=makespan, preemptions=preemptions, source=self.source,
            simulated=simulated, explanation=explanation)


def _reads_physics_columns(learned) -> bool:
    """True when the learned model reads the physics frame as it is (its `prepare` adds no columns)."""
    from train.residual import FrameModel

    return type(learned).prepare is FrameModel.prepare


def final_predictions(phys: Columns, learned: dict[str, np.ndarray], targets: tuple[str, ...] = ALL_TARGETS
                      ) -> dict[str, np.ndarray]:
    """Each of `targets`' (every target's) pred_<target>, _lo, _hi: the learned one where a model for it was
    trained (`learned`, or a pred_ column the input already had), else the physics answer with its held-out 80%
    band (data/physics_uncertainty.json)."""
    unc = physics_uncertainty()
    n = phys.n
    if n == 1:
        return _final_prediction_of_one(phys, learned, targets)

    def column(col: str) -> np.ndarray:
        if col in learned:
            return np.asarray(learned[col], dtype=float)
        return float_array(phys[col]) if col in phys else np.full(n, np.nan)

    new = {}
    for t in targets:
        p = column(f"phys_{t}")
        lo_q, hi_q = unc.get(t, (np.nan, np.nan))
        base = {f"pred_{t}": p, f"pred_{t}_lo": p * np.exp(lo_q), f"pred_{t}_hi": p * np.exp(hi_q)}
        if f"pred_{t}" in learned or f"pred_{t}" in phys:
            use = np.isfinite(column(f"pred_{t}"))
            for col, fallback in base.items():
                new[col] = np.where(use, column(col), fallback)
        else:
            new.update(base)
    # a tail latency is never below its mean: separately learned p99 models (trained on far fewer rows) are
    # held to at least the mean's prediction and band
    for p99, mean in (("ttft_p99_ms", "ttft_ms"), ("tpot_p99_ms", "tpot_ms")):
        if p99 not in targets or mean not in targets:
            continue
        for suffix in ("", "_lo", "_hi"):
            a, b = new[f"pred_{p99}{suffix}"], new[f"pred_{mean}{suffix}"]
            new[f"pred_{p99}{suffix}"] = np.where(np.isfinite(a) & np.isfinite(b), np.maximum(a, b), a)
    return new


def _final_prediction_of_one(phys: Columns, learned: dict[str, np.ndarray], targets: tuple[str, ...]
                             ) -> dict[str, np.ndarray]:
    """`final_predictions` of a one-row table, worked out on plain floats (the same rules, a single scenario)."""

    def value(col: str) -> float:
        if col in learned:
            return float(learned[col][0])
        return _f(phys[col][0]) if col in phys else math.nan

    new: dict[str, float] = {}
    for t in targets:
        p = value(f"phys_{t}")
        lo_f, hi_f = _physics_band_factors(t)
        band = (p, p * lo_f, p * hi_f)
        if (f"pred_{t}" in learned or f"pred_{t}" in phys) and math.isfinite(value(f"pred_{t}")):
            band = (value(f"pred_{t}"), value(f"pred_{t}_lo"), value(f"pred_{t}_hi"))
        new[f"pred_{t}"], new[f"pred_{t}_lo"], new[f"pred_{t}_hi"] = band
    for p99, mean in (("ttft_p99_ms", "ttft_ms"), ("tpot_p99_ms", "tpot_ms")):
        if p99 not in targets or mean not in targets:
            continue
        for suffix in ("", "_lo", "_hi"):
            a, b = new[f"pred_{p99}{suffix}"], new[f"pred_{mean}{suffix}"]
            if math.isfinite(a) and math.isfinite(b):
                new[f"pred_{p99}{suffix}"] = max(a, b)
    table = np.array(list(new.values()), dtype=float)  # one array, each column a 1-element view of it
    return {c: table[j:j + 1] for j, c in enumerate(new)}


@functools.lru_cache(maxsize=None)
def _physics_band_factors(target: str) -> tuple[float, float]:
    """exp of the physics answer's held-out 80% band (`physics_uncertainty`) of `target`: (low, high) factors."""
    lo_q, hi_q = physics_uncertainty().get(target, (math.nan, math.nan))
    return math.exp(lo_q), math.exp(hi_q)


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def scenario_columns(row: dict) -> Columns:
    """A scenario row as a column table of one-element arrays, read as `conform` + `FrameColumns` read a frame of
    it (numbers and flags as float, text as objects, None where missing)."""
    arrays = {}
    for col, v in row.items():
        if v is None or isinstance(v, str):
            arrays[col] = np.array([v], dtype=object)
        else:
            arrays[col] = np.array([float(v)])
    return Columns(arrays, 1)


def scenario_row(model: str, gpu: str, layout: Layout, wl: Workload, engine: EngineConfig) -> dict:
    """A serving row of the measurement schema describing one configuration (no targets)."""
    return {
        "kind": "serving", "source": "prediction", "engine": engine.engine, "model": model, "gpu": gpu,
        "weight_dtype": engine.weight_dtype, "kv_dtype": engine.kv_dtype, "tp": layout.tp, "pp": layout.pp,
        "dp": layout.dp, "ep": layout.ep, "attention_dp": bool(layout.attention_dp), "num_gpus": layout.num_gpus,
        "isl": wl.isl.mean, "osl": wl.osl.mean, "isl_dist": wl.isl.spec(), "osl_dist": wl.osl.spec(),
        "num_requests": wl.num_requests, "concurrency": wl.concurrency, "request_rate": wl.request_rate,
        "max_num_seqs": engine.max_num_seqs, "max_num_batched_tokens": engine.max_num_batched_tokens,
        "gpu_memory_utilization": engine.gpu_memory_utilization, "block_size": engine.block_size,
        # the engine's explicit KV sizing, when asked for (0 = the engine sizes the cache from memory)
        "num_gpu_blocks_override": int(engine.num_gpu_blocks_override or 0),
        "kv_cache_memory_bytes": float(engine.kv_cache_memory_gb or 0.0) * 1e9,
    }
