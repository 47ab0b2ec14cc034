"""The serving and step physics against frozen reference values computed by the code before its fast paths.

`features.steptime.stage_step_terms` and `features.serving.estimate_serving` skip terms no row uses, evaluate
several GEMM shapes in one pass and cache collective constants; none of that may change a number. The fixture
`tests/fixtures/physics_fastpaths.json` holds the answers of the original implementation (commit f5b69b9) for
~30 diverse scenarios (dense GQA, MoE with and without shared experts, MLA, sliding window, TP/PP/DP/EP and
attention-DP layouts, closed batch / concurrency / request rate, fp8/fp4 weights, the default and the fitted
calibration), direct step-time calls and a small mixed frame through `physics_frame` (columnar specs); every
value must match to rtol 1e-10 and every shape exactly. One deliberate physics change since: the TTFT of a
fixed-concurrency run with more requests than its concurrency blends the opening burst with the steady state
(session 9); only those TTFT values (`ttft_ms`, `ttft_p99_ms` of such cases) were taken from the new code. A second
(session 11): serving engines' decode attention splits long contexts over thread blocks (`steptime.kv_splits`). The
reference predates it, so every comparison here runs with `attn_max_splits=1` (one block per sequence and KV head,
the reference's attention), which leaves every other term as it was; split-KV has its own tests
(tests/test_physics_gpu_transfer.py).

Regenerate the fixture only from a trusted implementation: `PYTHONPATH=. python tests/test_physics_fastpaths.py`.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import steptime
from features.calibration import Calibration, default_calibration
from features.catalog import resolve_gpu, resolve_model
from features.frame import physics_frame
from features.serving import EngineArrays, ServingEstimate, estimate_serving
from features.specs import EngineConfig, Layout
from features.steptime import StepTerms, gemm_ms, gemm_terms, gemms_ms, replica_step_ms, stage_step_terms

FIXTURE = Path(__file__).parent / "fixtures" / "physics_fastpaths.json"
RTOL = 1e-10


def _a(v):
    return np.array([float(v)])


# name -> (model, gpu, layout, engine config, workload kwargs, calibration: "fitted" | "default")
SERVING = {
    "qwen32b-h200-tp2dp4-conc64": ("qwen2.5-32b", "h200", Layout(2, 1, 4), EngineConfig(), dict(conc=64), "fitted"),
    "r1-h200-tp8ep8-conc64": ("deepseek-r1", "h200", Layout(8, 1, 1, 8), EngineConfig(), dict(conc=64), "fitted"),
    "llama70b-h200-tp4pp2-conc64": ("llama-3.1-70b", "h200", Layout(4, 2, 1), EngineConfig(), dict(conc=64), "fitted"),
    "llama8b-h100-closed500": ("llama-3.1-8b", "h100-sxm", Layout(1), EngineConfig(), dict(nreq=500), "fitted"),
    "mixtral-h100-tp2ep2-rate5": ("mixtral-8x7b", "h100-sxm", Layout(2, 1, 1, 2), EngineConfig(), dict(rate=5.0), "fitted"),
    "qwen3moe-h200-adp-ep8": ("qwen3-30b-a3b", "h200", Layout(4, 1, 2, 8, True), EngineConfig(), dict(conc=256), "fitted"),
    "v3-h200-fp8-adp-ep16": ("deepseek-v3", "h200", Layout(8, 1, 2, 16, True), EngineConfig(weight_dtype="fp8"),
                             dict(conc=256), "fitted"),
    "gptoss120-h200-tp2-conc32": ("gpt-oss-120b", "h200", Layout(2), EngineConfig(), dict(conc=32), "fitted"),
    "gptoss20-h100-rate2": ("gpt-oss-20b", "h100-sxm", Layout(1), EngineConfig(), dict(rate=2.0), "fitted"),
    "scout-h100-tp4ep4-closed": ("llama-4-scout", "h100-sxm", Layout(4, 1, 1, 4), EngineConfig(), dict(nreq=64), "fitted"),
    "v4flash-h200-tp8ep8": ("deepseek-v4-flash", "h200", Layout(8, 1, 1, 8), EngineConfig(), dict(conc=16), "fitted"),
    "phi2-a100-closed": ("phi-2", "a100-80g", Layout(1), EngineConfig(), dict(nreq=200), "fitted"),
    "falcon180-h200-tp8pp2-crossnode": ("falcon-180b", "h200", Layout(8, 2), EngineConfig(), dict(conc=32), "fitted"),
    "llama405-h200-tp8pp2-fp8": ("llama-3.1-405b", "h200", Layout(8, 2), EngineConfig(weight_dtype="fp8"),
                                 dict(rate=1.0), "fitted"),
    "mistral-l40s-tp2dp2-sliding": ("mistral-7b", "l40s", Layout(2, 1, 2), EngineConfig(), dict(conc=8), "fitted"),
    "qwen72-mi300x-tp4dp2": ("qwen2.5-72b", "mi300x", Layout(4, 1, 2), EngineConfig(), dict(nreq=1000, conc=64), "fitted"),
    "kimi-b200-tp8ep8-fp8": ("kimi-k2.5", "b200", Layout(8, 1, 1, 8), EngineConfig(weight_dtype="fp8"), dict(conc=128),
                             "fitted"),
    "glm5-h200-adp-ep16": ("glm-5", "h200", Layout(8, 1, 2, 16, True), EngineConfig(weight_dtype="fp8"), dict(nreq=300),
                           "fitted"),
    "llama70-a100-40g-infeasible": ("llama-3.1-70b", "a100-40g", Layout(1), EngineConfig(), dict(conc=8), "fitted"),
    "qwen235-h200-tp4pp2-ep4": ("qwen3-235b-a22b", "h200", Layout(4, 2, 1, 4), EngineConfig(weight_dtype="fp8"),
                                dict(conc=64), "fitted"),
    "llama70-b200-fp4": ("llama-3.1-70b", "b200", Layout(2), EngineConfig(weight_dtype="fp4"), dict(conc=64), "fitted"),
    "qwen32-h200-closed-and-conc": ("qwen2.5-32b", "h200", Layout(1), EngineConfig(), dict(nreq=100, conc=16), "fitted"),
    "llama8-h200-lognormal": ("llama-3.1-8b", "h200", Layout(1), EngineConfig(),
                              dict(nreq=400, osl_median=300.0, osl_sigma=0.8, osl_max=8000.0), "fitted"),
    "llama8-h100-blocks-override": ("llama-3.1-8b", "h100-sxm", Layout(1), EngineConfig(num_gpu_blocks_override=2000),
                                    dict(conc=64), "fitted"),
    "tiny-cpu-kv-space": ("tiny-llama", "cpu", Layout(1), EngineConfig(kv_cache_memory_gb=4.0), dict(conc=4), "fitted"),
    "minimax-h200-tp4dp2-ep8-pp2": ("minimax-m2.5", "h200", Layout(4, 2, 2, 8), EngineConfig(weight_dtype="fp8"),
                                    dict(conc=64), "fitted"),
    "qwen397-h200-tp8ep8": ("qwen3.5-397b-a17b", "h200", Layout(8, 1, 1, 8), EngineConfig(weight_dtype="fp8"),
                            dict(rate=3.0), "fitted"),
    "tinymoe-h100-dp2ep2": ("tiny-moe", "h100-sxm", Layout(1, 1, 2, 2), EngineConfig(), dict(conc=16), "fitted"),
    "qwen32-default-cal-conc64": ("qwen2.5-32b", "h200", Layout(2, 1, 4), EngineConfig(), dict(conc=64), "default"),
    "r1-default-cal-rate": ("deepseek-r1", "h200", Layout(8, 1, 1, 8), EngineConfig(), dict(rate=4.0), "default"),
    "llama70-default-cal-pp": ("llama-3.1-70b", "h100-sxm", Layout(4, 2, 1), EngineConfig(), dict(nreq=256), "default"),
}

# multi-row (per-row workload arrays) and scalar-input serving calls
MULTI = {
    "qwen32-rows-mixed-arrival": ("qwen2.5-32b", "h200", Layout(2, 1, 2),
                                  dict(isl=[128, 1024, 4096, 100, 2048], osl=[128, 512, 256, 4500, 1024],
                                       nreq=[0, 200, 0, 0, 50], conc=[0, 0, 64, 8, 16], rate=[2.0, 0, 0, 0, 0])),
    "r1-rows-closed": ("deepseek-r1", "h200", Layout(8, 1, 1, 8),
                       dict(isl=[512, 2048, 8000], osl=[1024, 1024, 200], nreq=[100, 500, 1000], conc=[0, 0, 0],
                            rate=[0, 0, 0])),
    "llama70-scalars-pp": ("llama-3.1-70b", "h200", Layout(4, 2, 1),
                           dict(isl=1024.0, osl=512.0, nreq=0.0, conc=32.0, rate=0.0)),
}

STEP_FIELDS = [f.name for f in fields(StepTerms)]
SERVING_FIELDS = [f.name for f in fields(ServingEstimate) if f.name != "terms"]


def _unsplit(cal: Calibration) -> Calibration:
    """`cal` with split-KV attention off: the attention the frozen reference was computed with."""
    return replace(cal, attn_max_splits=1.0)


def _fitted() -> Calibration:
    return _unsplit(default_calibration())


def _default() -> Calibration:
    return _unsplit(Calibration())


def _cal(which: str) -> Calibration:
    return _fitted() if which == "fitted" else _default()


def _encode(v) -> dict:
    a = np.asarray(v)
    if a.dtype.kind in "USO":
        return {"shape": list(a.shape), "text": a.astype(str).ravel().tolist()}
    return {"shape": list(a.shape), "values": [None if np.isnan(x) else float(x) for x in a.astype(float).ravel()]}


def _serving_outputs(e: ServingEstimate) -> dict:
    out = {f: _encode(getattr(e, f)) for f in SERVING_FIELDS}
    out.update({f"terms.{k}": _encode(v) for k, v in e.terms.items()})
    return out


def _step_outputs(t: StepTerms) -> dict:
    out = {f: _encode(getattr(t, f)) for f in STEP_FIELDS}
    out["stage_ms"] = _encode(t.stage_ms)
    return out


def run_serving(name: str) -> dict:
    model, gpu, layout, engine, w, cal = SERVING[name]
    return _serving_outputs(estimate_serving(
        resolve_model(model), resolve_gpu(gpu), layout, EngineArrays.from_config(engine), _cal(cal), _a(w.get("isl", 100)),
        _a(w.get("osl", 4500)), _a(w.get("nreq", 0)), _a(w.get("conc", 0)), _a(w.get("rate", 0)),
        _a(w.get("osl_median", w.get("osl", 4500))), _a(w.get("osl_sigma", 0.0)), _a(w.get("osl_max", 32768))))


def run_multi(name: str) -> dict:
    model, gpu, layout, w = MULTI[name]
    arr = (lambda v: np.asarray(v, dtype=float)) if isinstance(w["isl"], list) else float
    e = estimate_serving(resolve_model(model), resolve_gpu(gpu), layout, EngineArrays.from_config(EngineConfig()),
                         _fitted(), arr(w["isl"]), arr(w["osl"]), arr(w["nreq"]), arr(w["conc"]),
                         arr(w["rate"]))
    return _serving_outputs(e)


def _step_cases() -> dict:
    """Direct step-time calls: scalars, stacked (k, 1) variants, per-row arrays, flags off, RoPE/KV append."""
    cal = _fitted()
    h200, h100 = resolve_gpu("h200"), resolve_gpu("h100-sxm")
    stacked = (np.array([[1.0], [0.0], [31.0], [0.0], [1.0], [64.0]]),
               np.array([[4600.0], [0.0], [150000.0], [0.0], [4600.0], [300000.0]]),
               np.array([[0.5], [100.0], [100.0], [8192.0], [0.0], [30.0]]))
    rows = (np.array([1.0, 8.0, 32.0, 128.0, 0.0]), np.array([1024.0, 8e3, 1.2e5, 5e5, 0.0]),
            np.array([0.0, 0.0, 512.0, 0.0, 2048.0]))
    cases = {
        "qwen32-scalar": lambda: stage_step_terms(resolve_model("qwen2.5-32b"), h200, Layout(2), cal, 16.0, 16 * 2048.0),
        "qwen32-stacked": lambda: stage_step_terms(resolve_model("qwen2.5-32b"), h200, Layout(2, 1, 4), cal, *stacked),
        "r1-stacked-ep": lambda: stage_step_terms(resolve_model("deepseek-r1"), h200, Layout(8, 1, 1, 8), cal, *stacked,
                                                  0.0, "fp8", "fp8"),
        "v3-rows-adp": lambda: stage_step_terms(resolve_model("deepseek-v3"), h200, Layout(8, 1, 2, 16, True), cal, *rows),
        "llama70-rows-pp": lambda: stage_step_terms(resolve_model("llama-3.1-70b"), h100, Layout(4, 2), cal, *rows,
                                                    np.array([0.0, 0.0, 100.0, 0.0, 4096.0])),
        "mixtral-rows-noflags": lambda: stage_step_terms(resolve_model("mixtral-8x7b"), h100, Layout(2, 1, 1, 2), cal, *rows,
                                                         include_comm=False, include_lm_head=False,
                                                         include_overhead=False),
        "llama8-rope-kv": lambda: stage_step_terms(resolve_model("llama-3.1-8b"), h200, Layout(1), cal, *rows,
                                                   rope_kv=np.array([1.0, 1.0, 0.0, 1.0, 1.0])),
        "r1-rope-kv-scalar": lambda: stage_step_terms(resolve_model("deepseek-r1"), h200, Layout(8), cal, 4.0, 4e4,
                                                      rope_kv=1.0),
        "gptoss-default-cal": lambda: stage_step_terms(resolve_model("gpt-oss-120b"), h200, Layout(2, 1, 1, 2),
                                                       _default(), *stacked),
        "moe-only-no-comm": lambda: stage_step_terms(resolve_model("qwen3-30b-a3b"), h200, Layout(1, 1, 1, 1), cal,
                                                     np.array([1.0, 8.0, 64.0]), 0 * np.array([1.0, 8.0, 64.0]),
                                                     include_comm=False, include_lm_head=False, include_overhead=False),
    }
    return cases


def run_step(name: str) -> dict:
    return _step_outputs(_step_cases()[name]())


def run_replica() -> dict:
    cal = _fitted()
    out = {}
    for name, model, gpu, layout in (("llama70-pp2", "llama-3.1-70b", "h200", Layout(4, 2)),
                                     ("r1-ep8", "deepseek-r1", "h200", Layout(8, 1, 1, 8))):
        out[name] = _encode(replica_step_ms(resolve_model(model), resolve_gpu(gpu), layout, cal,
                                            np.array([1.0, 16.0, 128.0]), np.array([1e3, 3e4, 5e5]),
                                            np.array([0.0, 256.0, 0.0])))
    return out


def mixed_frame() -> pd.DataFrame:
    """Serving and step rows over several models, GPUs and layouts (columnar specs: every field an array)."""
    serving = pd.DataFrame({
        "kind": "serving",
        "model": ["llama-3.1-8b", "qwen2.5-32b", "deepseek-r1", "mixtral-8x7b", "gpt-oss-120b", "llama-3.1-70b",
                  "qwen3-30b-a3b", "deepseek-v3", "phi-2", "llama-4-scout", "llama-3.1-70b", "qwen2.5-72b"],
        "gpu": ["h100-sxm", "h200", "h200", "a100-80g", "b200", "h200", "h200", "h200", "l40s", "h100-sxm", "mi300x", "h200"],
        "tp": [1, 2, 8, 2, 2, 4, 4, 8, 1, 4, 2, 8],
        "pp": [1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2],
        "dp": [1, 4, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1],
        "ep": [1, 1, 8, 2, 1, 1, 8, 16, 1, 4, 1, 1],
        "attention_dp": [False, False, False, False, False, False, True, True, False, False, False, False],
        "isl": [128, 100, 1024, 2048, 512, 4096, 256, 1000, 128, 700, 2048, 300],
        "osl": [128, 4500, 1024, 128, 8192, 256, 512, 1000, 64, 300, 1024, 300],
        "concurrency": [1, 64, 256, 0, 32, 8, 0, 128, 0, 16, 64, 0],
        "num_requests": [0, 0, 0, 500, 0, 0, 0, 0, 100, 200, 0, 0],
        "request_rate": [0, 0, 0, 0, 0, 0, 5.0, 0, 0, 0, 0, 2.0],
        "weight_dtype": ["bf16", "bf16", "fp8", "bf16", "fp4", "fp8", "bf16", "fp8", "bf16", "bf16", "bf16", "fp8"],
    })
    steps = pd.DataFrame({
        "kind": "step",
        "model": ["llama-3.1-8b", "qwen2.5-32b", "deepseek-r1", "mixtral-8x7b", "gpt-oss-20b", "llama-3.1-70b"],
        "gpu": ["h200", "h200", "h200", "h100-sxm", "h200", "h100-sxm"],
        "tp": [1, 2, 8, 2, 1, 4], "ep": [1, 1, 8, 1, 1, 1],
        "phase": ["decode", "prefill", "decode", "decode", "prefill", "decode"],
        "batch": [8, 1, 64, 32, 1, 128], "context": [1024, 4096, 8192, 2048, 2048, 16384],
        "tokens": [np.nan, 2048, np.nan, np.nan, 512, np.nan],
        "source": ["gpu-probe", "torch-probe", "gpu-probe", "torch-probe", "torch-probe", "fpm"],
    })
    return pd.concat([serving, steps], ignore_index=True)


def run_frame() -> dict:
    df = physics_frame(mixed_frame(), _fitted())
    cols = [c for c in df.columns if c.startswith(("phys_", "f_"))] + ["regime", "bottleneck"]
    out = {}
    for c in cols:
        v = df[c]
        out[c] = _encode(v.astype(str).to_numpy() if c in ("regime", "bottleneck") else v.to_numpy(dtype=float))
    return out


def compute_all() -> dict:
    return {
        "serving": {n: run_serving(n) for n in SERVING},
        "multi": {n: run_multi(n) for n in MULTI},
        "step": {n: run_step(n) for n in _step_cases()},
        "replica": run_replica(),
        "frame": run_frame(),
    }


def _assert_same(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(want), f"{where}: outputs {sorted(set(got) ^ set(want))}"
    for k, w in want.items():
        g = got[k]
        assert g["shape"] == w["shape"], f"{where}.{k}: shape {g['shape']} != {w['shape']}"
        if "text" in w:
            assert g["text"] == w["text"], f"{where}.{k}"
        else:
            gv = np.array([np.nan if x is None else x for x in g["values"]], dtype=float)
            wv = np.array([np.nan if x is None else x for x in w["values"]], dtype=float)
            np.testing.assert_allclose(gv, wv, rtol=RTOL, atol=0, equal_nan=True, err_msg=f"{where}.{k}")


@pytest.mark.parametrize("stacked", [True, False])
def test_gemms_ms_is_gemm_ms_per_shape(stacked, monkeypatch):
    """The stacked GEMM pass (and the one-at-a-time pass of many rows) gives each GEMM exactly what `gemm_ms` /
    `gemm_terms` give it alone (shapes of scalars and per-row arrays mixed, stacked step variants, per-row weight
    bytes)."""
    if not stacked:
        monkeypatch.setattr(steptime, "STACKED_GEMMS_MAX", 0)
    gpu, cal = resolve_gpu("h200"), _fitted()
    m = np.array([[1.0], [8.0], [0.0], [300.0]])
    rows = np.array([1.0, 2.0, 3.0])
    shapes = {"a": (5120.0, rows * 1000), "b": (100.0, 7), "c": (rows + 3, 9.0), "d": (rows * 64, rows * 128)}
    for wb, peak in ((2.0, 989.0), (np.array([2.0, 1.0, 0.5]), np.array([989.0, 1979.0, 1979.0]))):
        t, terms = gemms_ms(m, shapes, wb, gpu, cal, peak, terms_of=("a", "d"))
        assert set(t) == set(shapes) and set(terms) == {"a", "d"}
        for name, (n, k) in shapes.items():
            want = gemm_ms(m, n, k, gpu, cal, peak=peak, weight_bytes=wb)
            assert np.array_equal(t[name], np.broadcast_to(want, t[name].shape))
            if name in terms:
                for got, ref in zip(terms[name], gemm_terms(m, n, k, wb, gpu, cal, peak=peak)):
                    assert np.array_equal(got, np.broadcast_to(ref, got.shape))


def test_collective_constants_one_group_size_and_rows_agree():
    """The memoised constants of one group size are those of the per-row path (and survive a second lookup)."""
    from features.comm import _constants

    sizes = np.arange(1, 65)
    for cal in (_fitted(), _default()):
        for op in ("all_reduce", "all_gather", "alltoall"):
            alpha_rows, frac_rows = _constants(cal, op, sizes)
            for _ in range(2):
                for i, n in enumerate(sizes):
                    alpha, frac = _constants(cal, op, int(n))
                    assert alpha == alpha_rows[i] and frac == frac_rows[i]


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", list(SERVING))
def test_estimate_serving_matches_reference(name, reference):
    _assert_same(run_serving(name), reference["serving"][name], name)


@pytest.mark.parametrize("name", list(MULTI))
def test_estimate_serving_rows_match_reference(name, reference):
    want = reference["multi"][name]
    if not isinstance(MULTI[name][3]["isl"], list):
        # scalar arguments: the regime and bottleneck are one label each (shape (), as every other field); the
        # original code returned them as 1-element arrays (an artefact of np.vstack over 0-d terms), same text
        want = {k: dict(v, shape=[]) if k in ("regime", "bottleneck") else v for k, v in want.items()}
    _assert_same(run_multi(name), want, name)


@pytest.mark.parametrize("name", list(SERVING))
def test_estimate_serving_on_plain_numbers_is_the_one_row_answer(name):
    """One scenario given as plain Python floats (the single `predict`: its arithmetic runs on numbers, not
    arrays) gets exactly the numbers and labels of the same scenario given as 1-element arrays."""
    model, gpu, layout, engine, w, cal = SERVING[name]
    args = (w.get("isl", 100), w.get("osl", 4500), w.get("nreq", 0), w.get("conc", 0), w.get("rate", 0),
            w.get("osl_median", w.get("osl", 4500)), w.get("osl_sigma", 0.0), w.get("osl_max", 32768))
    e = EngineArrays.from_config(engine)
    knobs = dict(max_num_seqs=float(e.max_num_seqs), max_num_batched_tokens=float(e.max_num_batched_tokens),
                 gpu_memory_utilization=float(e.gpu_memory_utilization), block_size=float(e.block_size),
                 num_gpu_blocks_override=float(e.num_gpu_blocks_override),
                 kv_cache_memory_bytes=float(e.kv_cache_memory_bytes))
    specs = (resolve_model(model), resolve_gpu(gpu), layout)
    plain = estimate_serving(*specs, EngineArrays(e.weight_dtype, e.kv_dtype, **knobs), _cal(cal),
                             *(float(a) for a in args))
    rows = estimate_serving(*specs, EngineArrays(e.weight_dtype, e.kv_dtype, **{k: _a(v) for k, v in knobs.items()}),
                            _cal(cal), *(_a(a) for a in args))
    for f in SERVING_FIELDS + [f"terms.{k}" for k in plain.terms]:
        get = (lambda e: e.terms[f[6:]]) if f.startswith("terms.") else (lambda e: getattr(e, f))
        got, want = get(plain), get(rows)
        assert np.shape(got) == (), f"{name}.{f}: {type(got)} {np.shape(got)}"
        want = np.asarray(want).ravel()  # a 1-element array (a term of the specs only: a 0-d one)
        assert want.shape == (1,), f"{name}.{f}"
        if isinstance(got, str):
            assert got == want[0], f"{name}.{f}"
        else:
            assert np.array_equal(np.asarray(got, dtype=float), want.astype(float)[0], equal_nan=True), \
                f"{name}.{f}: {got!r} != {want[0]!r}"


@pytest.mark.parametrize("name", list(_step_cases()))
def test_stage_step_terms_match_reference(name, reference):
    _assert_same(run_step(name), reference["step"][name], name)


def test_replica_step_matches_reference(reference):
    _assert_same(run_replica(), reference["replica"], "replica")


def test_physics_frame_matches_reference(reference):
    _assert_same(run_frame(), reference["frame"], "frame")


def test_one_gemm_at_a_time_matches_reference(reference, monkeypatch):
    """Many rows evaluate the GEMMs one at a time instead of stacked: the same numbers."""
    monkeypatch.setattr(steptime, "STACKED_GEMMS_MAX", 0)
    _assert_same(run_frame(), reference["frame"], "frame")
    for name in ("r1-h200-tp8ep8-conc64", "v3-h200-fp8-adp-ep16", "llama405-h200-tp8pp2-fp8"):
        _assert_same(run_serving(name), reference["serving"][name], name)
    for name in ("v3-rows-adp", "llama8-rope-kv"):
        _assert_same(run_step(name), reference["step"][name], name)


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(compute_all(), separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1e3:.0f} kB)")
