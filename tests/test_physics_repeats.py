"""Frames repeating configurations: the physics computed once per distinct configuration equals the row-by-row one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import features.frame as frame_mod
from features.frame import physics_columns
from features.columns import FrameColumns
from features.schema import conform


def mixed_frame(n: int, distinct: int, seed: int = 0) -> pd.DataFrame:
    """`n` serving, step and op rows repeating `distinct` configurations, every input column varied."""
    rng = np.random.default_rng(seed)
    base = _varied_rows(distinct, rng)
    return base.iloc[rng.integers(0, distinct, n)].reset_index(drop=True)


def _varied_rows(n: int, rng) -> pd.DataFrame:
    """Rows of every kind with each input column drawn from a few values."""
    pick = lambda *vals: rng.choice(np.array(vals, dtype=object), n)  # noqa: E731
    engine = json.dumps({"engine_config": {"num_gpu_blocks_override": 900}})
    return pd.DataFrame({
        "kind": pick("serving", "serving", "serving", "step", "op"),
        "source": pick(None, "torch-probe", "gpu-probe"),
        "model": pick("llama-3.1-8b", "deepseek-r1", "qwen3-30b-a3b", "mixtral-8x7b"),
        "gpu": pick("h100", "h200", "b200"), "tp": pick(1, 2, 8), "pp": pick(1, 1, 2), "dp": pick(1, 2),
        "ep": pick(1, 1, 2), "attention_dp": pick(False, True), "weight_dtype": pick("bf16", "fp8", None),
        "kv_dtype": pick("auto", "fp8", None), "isl": pick(128, 2048, np.nan), "osl": pick(0, 512, 4096),
        "isl_dist": pick(None, "lognormal:1800:0.6:8192"), "osl_dist": pick(None, "lognormal:400:0.9:4096"),
        "num_requests": pick(0, 0, 500), "concurrency": pick(0, 16, 256), "request_rate": pick(0.0, 0.0, 4.0),
        "max_num_seqs": pick(256, 64), "max_num_batched_tokens": pick(8192, 2048), "block_size": pick(16, 32),
        "gpu_memory_utilization": pick(0.9, 0.8), "detail": pick(None, engine, '{"m": 64, "n": 4096, "k": 4096}'),
        "op": pick("gemm", None), "phase": pick("decode", "prefill", None), "batch": pick(1, 32, 128),
        "context": pick(0, 1024, 8192), "tokens": pick(np.nan, 512),
    })


@pytest.mark.parametrize("n, distinct", [(1500, 200), (4000, 40000)])
def test_repeated_configurations_get_the_row_by_row_physics(monkeypatch, n, distinct):
    cols = FrameColumns(conform(mixed_frame(n, distinct)))
    computed = []
    representatives = frame_mod._representatives
    monkeypatch.setattr(frame_mod, "_representatives", lambda *a: computed.append(representatives(*a)) or computed[-1])
    shared = physics_columns(cols)
    assert any(rep is not None for rep, _ in computed) == (distinct < n / 2)  # repeats found where there are any
    monkeypatch.setattr(frame_mod, "DISTINCT_MIN_ROWS", 10**9)  # every row computed on its own
    alone = physics_columns(cols)
    assert shared.keys() == alone.keys()
    for k in alone:
        if alone[k].dtype == object:
            assert (shared[k] == alone[k]).all(), k
        else:
            np.testing.assert_array_equal(shared[k], alone[k], err_msg=k)


def test_distinct_rows_are_computed_once_each():
    rows = np.arange(1000)
    keys = [np.repeat([1.0, 2.0, np.nan, 2.0], 250), np.tile(np.array(["a", None], dtype=object), 500)]
    first, inverse = frame_mod._representatives(FrameColumns(pd.DataFrame(index=rows)), rows, keys, ())
    assert len(first) == 6  # (1, a), (1, None), (2, a), (2, None), (NaN, a), (NaN, None)
    for k in keys:  # every row's representative has its keys
        assert [str(v) for v in k[first][inverse]] == [str(v) for v in k]
