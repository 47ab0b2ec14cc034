"""KV capacity physics honours the engine's explicit KV sizing (num_gpu_blocks_override, an explicit KV space such as
vLLM-CPU's VLLM_CPU_KVCACHE_SPACE) and the feature frame reads it from the rows' recorded engine config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.catalog import resolve_gpu, resolve_model
from features.frame import engine_kv_sizing, physics_frame
from features.memory import kv_bytes_per_token_per_gpu, kv_capacity_tokens
from features.serving import EngineArrays
from features.specs import EngineConfig, Layout

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
CPU = resolve_gpu("cpu")
TINY = resolve_model("tiny-llama")  # 2 layers x 2 (K, V) x 2 KV heads x head dim 32 x 2 bytes = 512 bytes per token


def test_block_override_is_exactly_blocks_times_block_size():
    e = EngineConfig(block_size=32, num_gpu_blocks_override=40)
    assert kv_capacity_tokens(TINY, CPU, Layout(), e) == 40 * 32
    assert kv_capacity_tokens(TINY, CPU, Layout(tp=2), e) == 40 * 32  # blocks are per replica, whatever the TP
    # the override wins over an explicit KV space, as in vLLM
    both = EngineConfig(block_size=32, num_gpu_blocks_override=40, kv_cache_memory_gb=1.0)
    assert kv_capacity_tokens(TINY, CPU, Layout(), both) == 1280


def test_explicit_kv_space_is_bytes_over_kv_bytes_per_token_in_whole_blocks():
    assert kv_bytes_per_token_per_gpu(TINY, Layout()) == 512
    e = EngineConfig(block_size=32)
    assert kv_capacity_tokens(TINY, CPU, Layout(), e, kv_cache_memory_bytes=GIB) == GIB // 512
    # TP 2: each rank holds half the KV heads in its own space, so the replica holds twice the tokens
    assert kv_capacity_tokens(TINY, CPU, Layout(tp=2), e, kv_cache_memory_bytes=GIB) == 2 * GIB // 512
    # rounded down to whole blocks: 100 blocks and a bit -> 100 blocks
    assert kv_capacity_tokens(TINY, CPU, Layout(), e, kv_cache_memory_bytes=100 * 32 * 512 + 700) == 3200
    # EngineConfig.kv_cache_memory_gb is in GB (1e9 bytes), as the backend passes it to vLLM
    gb = EngineConfig(block_size=16, kv_cache_memory_gb=2.0)
    assert kv_capacity_tokens(TINY, CPU, Layout(), gb) == (2_000_000_000 // (512 * 16)) * 16
    # no explicit sizing: the profiled-memory physics, unchanged
    assert kv_capacity_tokens(TINY, CPU, Layout(), e) == kv_capacity_tokens(TINY, CPU, Layout(), e,
                                                                            kv_cache_memory_bytes=0,
                                                                            num_gpu_blocks_override=0)
    assert kv_capacity_tokens(TINY, CPU, Layout(), e) > 10 * GIB // 512


def test_per_row_arrays_mix_the_three_sizings():
    e = EngineConfig(block_size=32)
    cap = kv_capacity_tokens(TINY, CPU, Layout(), e, num_gpu_blocks_override=np.array([40, 0, 0]),
                             kv_cache_memory_bytes=np.array([GIB, GIB, 0]))
    assert cap[0] == 1280 and cap[1] == GIB // 512 and cap[2] == kv_capacity_tokens(TINY, CPU, Layout(), e)
    assert EngineArrays.from_config(EngineConfig(kv_cache_memory_gb=1.5)).kv_cache_memory_bytes == 1.5e9


def _row(**engine_config) -> dict:
    return {"kind": "serving", "model": "tiny-llama", "gpu": "cpu", "tp": 1, "pp": 1, "dp": 1, "ep": 1,
            "isl": 32, "osl": 128, "num_requests": 8, "block_size": 32, "max_num_seqs": 64,
            "detail": json.dumps({"engine_config": engine_config}) if engine_config else None}


def test_frame_reads_the_recorded_engine_config_and_columns_win():
    df = pd.DataFrame([_row(num_gpu_blocks_override=40, kv_cache_memory_bytes=GIB, num_gpu_blocks=40),
                       _row(num_gpu_blocks_override=None, kv_cache_memory_bytes=GIB, num_gpu_blocks=65536),
                       _row(), {**_row(), "detail": "not json {\"engine_config\""}])
    sizing = engine_kv_sizing(df)
    assert sizing["num_gpu_blocks_override"].tolist() == [40, 0, 0, 0]
    assert sizing["kv_cache_memory_bytes"].tolist() == [GIB, GIB, 0, 0]
    cap = physics_frame(df)["phys_kv_capacity_tokens"].to_numpy()
    assert cap[0] == 1280 and cap[1] == GIB // 512 and cap[2] == cap[3] > GIB // 512
    cols = df.assign(num_gpu_blocks_override=[0, 10, 0, 0], kv_cache_memory_bytes=[0, 0, 0, 0])
    assert physics_frame(cols)["phys_kv_capacity_tokens"].iloc[1] == 320


def test_physics_kv_capacity_matches_every_real_vllm_cpu_row():
    rows = pd.read_csv(REPO / "data" / "vllm_cpu" / "measurements.csv")
    f = physics_frame(rows)
    assert len(f) >= 37
    np.testing.assert_array_equal(f["phys_kv_capacity_tokens"].to_numpy(), f["kv_capacity_tokens"].to_numpy())


@pytest.mark.parametrize("bad", [-5, float("nan")])
def test_nonsense_sizing_falls_back_to_the_physics(bad):
    e = EngineConfig(block_size=32)
    assert kv_capacity_tokens(TINY, CPU, Layout(), e, num_gpu_blocks_override=bad,
                              kv_cache_memory_bytes=bad) == kv_capacity_tokens(TINY, CPU, Layout(), e)


def test_predict_api_honours_explicit_kv_sizing():
    """Predictor.predict passes the engine's explicit KV sizing through to the physics."""
    from predictor import Predictor

    p = Predictor()
    base = p.predict("llama-3.1-8b", "h200", workload="chat", concurrency=64).kv_capacity_tokens
    blocks = p.predict("llama-3.1-8b", "h200", workload="chat", concurrency=64, num_gpu_blocks_override=100,
                       block_size=32).kv_capacity_tokens
    space = p.predict("llama-3.1-8b", "h200", workload="chat", concurrency=64, kv_cache_memory_gb=10.0).kv_capacity_tokens
    assert blocks == 3200
    # 10 GB over Llama-3.1-8B's 128 KiB per token (bf16, 8 KV heads x 128 x 32 layers x 2), whole blocks of 16
    assert space == (10e9 // (2 * 8 * 128 * 32 * 2)) // 16 * 16
    assert base > space > blocks
