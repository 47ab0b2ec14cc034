"""The single predict's physics (`features.frame.scenario_physics`, from the scenario's specs) is the physics a frame
row of the same scenario gets (`physics_columns`), and its weights per GPU and KV capacity are the ones the layout
memory check computes on its own, so `predict` may check memory on them; an infeasible layout still fails clearly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from features.catalog import model_names, resolve_gpu, resolve_model, resolve_workload
from features.errors import InfeasibleError
from features.frame import physics_columns, scenario_physics
from features.layouts import enumerate_layouts, structural_reason
from features.memory import kv_capacity_tokens, weight_bytes_per_gpu
from features.specs import EngineConfig, Layout
from predictor import Predictor
from predictor.api import scenario_columns, scenario_row

ENGINES = [EngineConfig(), EngineConfig(weight_dtype="fp8"), EngineConfig(kv_cache_dtype="fp8"),
           EngineConfig(gpu_memory_utilization=0.7, max_num_seqs=64, max_num_batched_tokens=2048, block_size=32),
           EngineConfig(num_gpu_blocks_override=500), EngineConfig(kv_cache_memory_gb=4.0)]
WORKLOADS = [("reasoning", (0, 64, 0.0)), ("chat", (1000, 0, 0.0)), ("fixed:2048/256", (0, 0, 3.0)),
             ("chat", (500, 128, 0.0))]


def _scenarios(limit_per_model: int = 3):
    """(model, gpu, layout, engine, workload) over every catalog model, a few GPUs, valid layouts and knobs."""
    rng = np.random.default_rng(0)
    for name in model_names():
        model = resolve_model(name)
        for gpu_name in ("h200", "a100-80g"):
            gpu = resolve_gpu(gpu_name)
            layouts = [lay for lay in enumerate_layouts(model, gpu, 8) if not structural_reason(model, lay, gpu)]
            for k in rng.permutation(len(layouts))[:limit_per_model]:
                engine = ENGINES[int(rng.integers(len(ENGINES)))]
                engine = replace(engine, weight_dtype=engine.weight_dtype or model.native_dtype)
                wl_name, arrival = WORKLOADS[int(rng.integers(len(WORKLOADS)))]
                yield name, model, gpu, layouts[int(k)], engine, resolve_workload(wl_name).with_arrival(*arrival)


def test_scenario_physics_is_the_frame_physics_and_the_memory_check():
    checked = 0
    for name, model, gpu, layout, engine, wl in _scenarios():
        fast = scenario_physics(model, gpu, layout, engine, wl)
        cols = scenario_columns(scenario_row(name, gpu.name, layout, wl, engine))
        frame = physics_columns(cols)
        case = (name, gpu.name, layout.label(), engine, wl.name)
        assert set(fast) == set(frame), case
        for col, want in frame.items():
            got = fast[col]
            if want.dtype == object:
                assert list(got) == list(want), (case, col)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True, err_msg=f"{case} {col}")
        assert fast["f_weight_bytes_per_gpu"][0] == pytest.approx(
            float(weight_bytes_per_gpu(model, layout, engine.weight_dtype)), rel=1e-12), case
        assert fast["phys_kv_capacity_tokens"][0] == pytest.approx(
            float(kv_capacity_tokens(model, gpu, layout, engine)), rel=1e-12, abs=1e-9), case
        checked += 1
    assert checked > 100


def test_infeasible_layout_fails_with_the_memory_reason():
    p = Predictor()
    with pytest.raises(InfeasibleError, match="weights need .* GB per GPU"):
        p.predict("llama-3.1-405b", "h100", tp=1, concurrency=8, simulate=False)
    with pytest.raises(InfeasibleError, match="tokens of KV cache remain"):
        p.predict("llama-3.1-70b", "h100", tp=2, concurrency=8, simulate=False, gpu_memory_utilization=0.92)
    with pytest.raises(InfeasibleError, match="does not divide"):
        p.predict("qwen2.5-32b", "h200", tp=3, concurrency=8, simulate=False)


def test_layout_code_of_one_row_is_the_vectorised_code():
    import pandas as pd

    from train.splits import layout_code

    frame = pd.DataFrame({"tp": [2, None, 4.0, 1500, 8], "pp": [1, 2, None, 1, 1], "dp": [4, 1, 2, 1, -3],
                          "ep": [1, 1, 8, None, 1], "attention_dp": ["true", None, "False", "1", "0"]})
    whole = layout_code(frame)
    assert len(set(whole.tolist())) == 5
    for i in range(len(frame)):
        assert layout_code(frame.iloc[[i]]).tolist() == [whole[i]], i
    assert layout_code(frame[["tp"]].iloc[[0]]).tolist() == layout_code(frame[["tp"]]).tolist()[:1]


def test_text_array_of_one_row_is_the_vectorised_reading():
    from features.columns import text_array

    for x in [None, np.nan, float("nan"), np.float32("nan"), "h200", "", 3.0]:
        one = text_array(np.array([x], dtype=object), missing="?")
        assert list(one) == list(text_array(np.array([x, "z"], dtype=object), missing="?")[:1]), x
    import pandas as pd

    for x in [pd.NA, pd.NaT]:
        assert list(text_array(np.array([x], dtype=object))) == [""]
