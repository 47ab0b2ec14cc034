"""The single predict (a scenario as a column table, no pandas) gives the numbers predict_frame gives for the same
scenario row, with the learned models on, over a spread of models (dense, MoE, MLA), GPUs, layouts (TP, PP, DP,
EP, attention-DP), workloads, arrival modes and engine knobs."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from features.catalog import resolve_gpu, resolve_model, resolve_workload
from features.errors import InfeasibleError
from features.specs import EngineConfig, Layout
from predictor import Predictor
from predictor.api import scenario_row

# (model, gpu, layout, workload, arrival (requests, concurrency, rate), engine knobs, isl/osl)
CASES = [
    ("qwen2.5-32b", "h200", Layout(2, 1, 4), "reasoning", (0, 64, 0.0), {}, None),
    ("llama-3.1-8b", "h100", Layout(1, 1, 8), "chat", (0, 16, 0.0), {}, None),
    ("llama-3.1-70b", "h200", Layout(4, 2, 1), "chat", (0, 256, 0.0), {}, None),  # PP
    ("llama-3.1-70b", "a100-80g", Layout(8, 1, 1), "fixed:2048/512", (500, 0, 0.0), {}, None),  # closed batch
    ("llama-3.1-8b", "l40s", Layout(2, 1, 2), "chat", (0, 0, 4.0), {}, None),  # open loop (request rate)
    ("mixtral-8x7b", "h100", Layout(4, 1, 2, 8), "reasoning", (0, 32, 0.0), {}, None),  # MoE, EP across DP
    ("qwen3-30b-a3b", "b200", Layout(2, 1, 2, 4, True), "chat", (0, 128, 0.0), {}, None),  # attention-DP
    ("deepseek-r1", "h200", Layout(8, 1, 1, 8), "reasoning", (0, 64, 0.0), {}, None),  # MLA + MoE
    ("deepseek-r1", "b200", Layout(8, 2, 1), "chat", (1000, 256, 0.0), {"max_num_seqs": 128}, None),
    ("gpt-oss-120b", "h100", Layout(4, 1, 2, 2), "reasoning", (0, 64, 0.0), {}, None),
    ("qwen2.5-32b", "mi300x", Layout(1, 1, 1), "chat", (0, 8, 0.0), {"weight_dtype": "fp8"}, None),
    ("llama-3.1-8b", "h200", Layout(1, 1, 1), "chat", (0, 32, 0.0),
     {"kv_cache_dtype": "fp8", "max_num_batched_tokens": 2048, "gpu_memory_utilization": 0.8}, (3000, 200)),
    ("llama-3.1-8b", "h100", Layout(2, 1, 1), "chat", (0, 64, 0.0), {"num_gpu_blocks_override": 4000}, None),
]


def _frame_answer(p: Predictor, model, gpu, layout, workload, arrival, knobs, lengths) -> pd.Series:
    """predict_frame on the scenario row the single predict describes (the same row-building steps)."""
    spec = resolve_model(model)
    isl, osl = lengths or (None, None)
    wl = resolve_workload(workload, isl, osl).with_arrival(*arrival)
    engine = replace(EngineConfig(), **knobs)
    engine = replace(engine, weight_dtype=engine.weight_dtype or spec.native_dtype)
    row = scenario_row(model, resolve_gpu(gpu).name, layout, wl, engine)
    # beside a second row, so the frame takes the vectorised paths (one row takes the single-scenario ones)
    other = {**row, "concurrency": 3, "num_requests": 0, "request_rate": 0.0}
    return p.predict_frame(pd.DataFrame([row, other])).iloc[0]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    p = Predictor.load()
    assert p.learned is not None, "the bundled default model (physics + learned) is expected"
    return p


def test_single_predict_matches_predict_frame(predictor):
    compared = 0
    for model, gpu, layout, workload, arrival, knobs, lengths in CASES:
        isl, osl = lengths or (None, None)
        try:
            single = Predictor(predictor.calibration, predictor.learned).predict(
                model, gpu, layout.tp, layout.pp, layout.dp, layout.ep, layout.attention_dp, workload,
                num_requests=arrival[0], concurrency=arrival[1], request_rate=arrival[2], isl=isl, osl=osl,
                simulate=False, **knobs)
        except InfeasibleError:
            continue
        row = _frame_answer(predictor, model, gpu, layout, workload, arrival, knobs, lengths)
        case = f"{model} {gpu} {layout.label()} {workload} {arrival} {knobs}"
        for t in ("output_throughput", "total_throughput", "request_throughput", "ttft_ms", "tpot_ms", "ttft_p99_ms",
                  "tpot_p99_ms", "makespan_s", "kv_capacity_tokens"):
            want = float(row[f"pred_{t}"])
            if not math.isfinite(want):
                assert t not in single.targets, (case, t)
                continue
            for key, col in (("value", f"pred_{t}"), ("lo", f"pred_{t}_lo"), ("hi", f"pred_{t}_hi")):
                assert single.targets[t][key] == pytest.approx(float(row[col]), rel=1e-9, nan_ok=True), (case, t, key)
        assert single.regime == row["regime"] and single.bottleneck == row["bottleneck"], case
        assert single.kv_capacity_tokens == pytest.approx(float(row["phys_kv_capacity_tokens"]), rel=1e-12), case
        assert single.steady_batch == pytest.approx(float(row["f_batch"]), rel=1e-12), case
        for k, v in single.explanation.items():
            col = {"hbm_bandwidth_utilisation": "f_hbm_bw_util", "batch_limit_kv": "f_batch_limit_kv"}.get(k)
            if k == "weight_gb_per_gpu":
                assert v == pytest.approx(float(row["f_weight_bytes_per_gpu"]) / 1e9, rel=1e-12), case
            elif col is not None:
                assert v == pytest.approx(float(row[col]), rel=1e-12, nan_ok=True), (case, k)
            else:
                assert v == pytest.approx(float(row["f_term_" + k[: -len("_ms")] + "_ms"]), rel=1e-12), (case, k)
        compared += 1
    assert compared >= len(CASES) - 2, f"only {compared} of {len(CASES)} cases were feasible"


def test_single_predict_learned_correction_is_applied(predictor):
    """The fast path goes through the learned layer: its answer differs from the physics-only predictor's."""
    cfg = dict(model="qwen2.5-32b", gpu="h200", tp=2, dp=4, concurrency=64, simulate=False)
    learned = Predictor(predictor.calibration, predictor.learned).predict(**cfg)
    physics = Predictor(predictor.calibration).predict(**cfg)
    assert learned.source == "physics+learned"
    diffs = [not np.isclose(learned.targets[t]["value"], physics.targets[t]["value"], rtol=1e-6)
             for t in learned.targets if t in physics.targets]
    assert any(diffs)
