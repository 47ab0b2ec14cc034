"""Physics terms that carry step times from one GPU to another: absolute per-thread-block attention rate,
bandwidth-scaled saturated attention, RoPE / KV-append kernels, and calibration on one GPU's torch-probe rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from features.calibrate import probe_rows_from_schema
from features.calibration import Calibration
from features.catalog import resolve_gpu, resolve_model
from features.frame import physics_frame
from features.specs import Layout
from features.steptime import decode_attention_ms, rope_kv_append_ms, stage_step_terms

CAL = Calibration()
H100, H200 = resolve_gpu("h100-sxm"), resolve_gpu("h200")
LLAMA = resolve_model("llama-3.1-8b")


def test_small_batch_attention_does_not_scale_with_hbm_bandwidth():
    # one sequence under SDPA: 8 thread blocks, each latency-bound; H100 and H200 (same SMs) take the same time
    t100, _ = decode_attention_ms(1, 4096, LLAMA, Layout(), H100, CAL, split_kv=0.0)
    t200, _ = decode_attention_ms(1, 4096, LLAMA, Layout(), H200, CAL, split_kv=0.0)
    assert np.isclose(t100, t200)


def test_split_kv_fills_the_gpu_with_one_long_sequence():
    # a serving engine cuts one 16k-token sequence into 32 splits per KV head: 256 blocks saturate HBM, so the
    # time follows the datasheet bandwidth and is far below SDPA's 8 latency-bound blocks
    sdpa, _ = decode_attention_ms(1, 16384, LLAMA, Layout(), H200, CAL, split_kv=0.0)
    split200, _ = decode_attention_ms(1, 16384, LLAMA, Layout(), H200, CAL)
    split100, _ = decode_attention_ms(1, 16384, LLAMA, Layout(), H100, CAL)
    assert split200 < sdpa / 5
    assert np.isclose((split100 - CAL.attn_floor_ms) / (split200 - CAL.attn_floor_ms), 4800 / 3350)
    # a short context is not split: 200 tokens are one block per KV head, as under SDPA
    short_sdpa, _ = decode_attention_ms(1, 200, LLAMA, Layout(), H200, CAL, split_kv=0.0)
    assert np.isclose(decode_attention_ms(1, 200, LLAMA, Layout(), H200, CAL)[0], short_sdpa)
    # per row: the flag picks the kernel of each row
    both, _ = decode_attention_ms(np.array([1.0, 1.0]), np.array([16384.0, 16384.0]), LLAMA, Layout(), H200, CAL,
                                  split_kv=np.array([0.0, 1.0]))
    assert np.allclose(both, [sdpa, split200])


def test_step_rows_split_kv_by_source():
    # the same decode step measured by the GPU probe (SDPA) and by a vLLM engine (fpm): only the engine's splits
    rows = pd.DataFrame({"kind": "step", "source": ["gpu-probe", "fpm"], "model": "llama-3.1-8b", "gpu": "h200",
                         "tp": 1, "phase": "decode", "batch": 1, "context": 32768})
    layer = physics_frame(rows)["phys_layer_ms"].to_numpy(float)
    assert layer[1] < 0.5 * layer[0]


def test_large_batch_attention_scales_with_hbm_bandwidth():
    # 256 sequences saturate HBM: the time ratio approaches the datasheet bandwidth ratio 4800 / 3350
    t100, kv100 = decode_attention_ms(256, 256 * 16384, LLAMA, Layout(), H100, CAL, split_kv=0.0)
    t200, kv200 = decode_attention_ms(256, 256 * 16384, LLAMA, Layout(), H200, CAL, split_kv=0.0)
    assert np.isclose(kv100 / kv200, 4800 / 3350)
    assert 1.35 < t100 / t200 < 4800 / 3350


def test_attention_per_unit_rate_is_absolute():
    fast = dataclasses.replace(CAL, attn_unit_gbps=2 * CAL.attn_unit_gbps)
    t1, _ = decode_attention_ms(1, 65536, LLAMA, Layout(), H200, CAL, split_kv=0.0)
    t2, _ = decode_attention_ms(1, 65536, LLAMA, Layout(), H200, fast, split_kv=0.0)
    # bandwidth-limited part halves; the floor stays
    assert np.isclose(t2 - CAL.attn_floor_ms, (t1 - CAL.attn_floor_ms) / 2)


def test_rope_kv_append_floor_bytes_and_zero():
    t = rope_kv_append_ms(np.array([0.0, 1.0, 1e6]), LLAMA, Layout(), H200, CAL)
    assert t[0] == 0.0
    assert np.isclose(t[1], 2 * CAL.rope_kv_floor_ms, rtol=3e-3)  # one token: two kernel floors
    # a million tokens: RoPE over 40 heads x 128 (read + write, rope_traffic times) plus K/V append of 8 heads
    per_token = 2 * 40 * 128 * 2 * CAL.rope_traffic + 2 * 2 * 8 * 128 * 2
    expect = 2 * CAL.rope_kv_floor_ms + 1e6 * per_token / (CAL.gemm_bw_frac * 4800e9) * 1e3
    assert np.isclose(t[2], expect)
    # TP shards heads: fewer bytes per GPU
    assert rope_kv_append_ms(1e6, LLAMA, Layout(tp=4), H200, CAL) < t[2]


def test_rope_kv_counts_in_layer_time_only_when_asked():
    with_rope = stage_step_terms(LLAMA, H200, Layout(), CAL, 8, 8 * 1024, include_comm=False, include_lm_head=False,
                                 include_overhead=False, rope_kv=1.0)
    without = stage_step_terms(LLAMA, H200, Layout(), CAL, 8, 8 * 1024, include_comm=False, include_lm_head=False,
                               include_overhead=False)  # engine steps: fused kernels inside the small-kernel term
    assert np.isclose(with_rope.layer_ms - without.layer_ms, rope_kv_append_ms(8, LLAMA, Layout(), H200, CAL))


def test_physics_frame_adds_rope_for_torch_backend_rows_only():
    # 256 tokens of context: one split-KV block per sequence, so the engine row (fpm) differs from the probe's only
    # in what the RoPE / KV-append kernels add
    row = {"kind": "step", "model": "llama-3.1-8b", "gpu": "h200", "tp": 1, "phase": "decode", "batch": 8,
           "context": 256, "tokens": 8, "layer_ms": 0.1}
    f = physics_frame(pd.DataFrame([{**row, "source": s} for s in ("gpu-probe", "torch-probe", "fpm")]), CAL)
    diff = f["phys_layer_ms"].iloc[1] - f["phys_layer_ms"].iloc[0]
    assert np.isclose(diff, rope_kv_append_ms(8, LLAMA, Layout(), H200, CAL))
    assert f["phys_layer_ms"].iloc[2] == f["phys_layer_ms"].iloc[0]


def test_step_features_are_gpu_relative():
    rows = [{"kind": "step", "model": "llama-3.1-8b", "gpu": g, "tp": 1, "phase": "decode", "batch": 1,
             "context": 1024, "tokens": 1, "layer_ms": 0.1, "source": "torch-probe"} for g in ("h100-sxm", "h200")]
    f = physics_frame(pd.DataFrame(rows), CAL)
    for c in ("f_step_intensity_vs_ridge", "f_step_weights_frac", "f_step_floor_frac"):
        assert f[c].notna().all()
    # same shape on both cards: arithmetic intensity over each card's ridge point (bf16 peak / HBM bandwidth)
    r = f["f_step_intensity_vs_ridge"]
    assert np.isclose(r.iloc[0] / r.iloc[1], 3350 / 4800, rtol=0.05)  # KV bytes are counted at attention rates
    assert ((f["f_step_weights_frac"] > 0) & (f["f_step_weights_frac"] < 1)).all()


def test_probe_rows_from_schema_converts_torch_probe_rows():
    detail = '{"m": 1, "n": 4096, "k": 4096}'
    frame = pd.DataFrame([
        {"kind": "step", "status": "ok", "phase": "decode", "model": "llama-3.1-8b", "tp": 2, "batch": 4,
         "context": 1024, "tokens": 4, "layer_ms": 0.2, "op": None, "op_ms": np.nan, "detail": "{}"},
        {"kind": "step", "status": "ok", "phase": "prefill", "model": "llama-3.1-8b", "tp": 1, "batch": 1,
         "context": 512, "tokens": 512, "layer_ms": 0.5, "op": None, "op_ms": np.nan, "detail": "{}"},
        {"kind": "op", "status": "ok", "phase": None, "model": None, "tp": 1, "batch": np.nan, "context": np.nan,
         "tokens": np.nan, "layer_ms": np.nan, "op": "gemm", "op_ms": 0.01, "detail": detail},
        {"kind": "op", "status": "ok", "phase": None, "model": None, "tp": 1, "batch": 1, "context": 4096,
         "tokens": 1, "layer_ms": np.nan, "op": "kv_append", "op_ms": 0.012, "detail": '{"bytes_moved": 8192}'},
    ])
    rows, rope = probe_rows_from_schema(frame)
    assert sorted(rows["kind"]) == ["decode", "gemm", "prefill"]
    assert (rows.loc[rows["kind"] != "gemm", "rope_kv"] == 1).all()
    assert rows.loc[rows["kind"] == "prefill", "context"].item() == 512
    assert rows.loc[rows["kind"] == "gemm", ["m", "n", "k"]].to_numpy().tolist() == [[1, 4096, 4096]]
    assert rope.to_dict("records") == [{"op": "kv_append", "bytes_moved": 8192, "ms_median": 0.012}]


def test_serving_rows_split_kv_by_engine_version():
    # TensorRT-LLM before 0.12 split decode attention only when built with multi-block mode (off by default): the DLI
    # sweep's 0.9 engines decode a long context with one block per sequence and KV head, later ones (and vLLM) split
    from features.frame import engine_splits_kv

    assert engine_splits_kv(np.array(["trtllm", "trtllm", "trtllm", "vllm", "trtllm"], dtype=object),
                            np.array(["0.9.0", "0.12.0", "1.0", "0.5.0", ""], dtype=object)).tolist() == [0, 1, 1, 1, 1]
    rows = pd.DataFrame({"kind": "serving", "model": "llama-3.1-8b", "gpu": "h200", "tp": 1, "isl": 8192, "osl": 1024,
                         "concurrency": 1, "engine": ["trtllm", "trtllm", "vllm"],
                         "engine_version": ["0.9.0", "0.14.0", "0.12.0"]})
    tpot = physics_frame(rows, CAL)["phys_tpot_ms"].to_numpy(float)
    assert tpot[0] > 1.05 * tpot[1]  # one sequence at 8k context: unsplit attention is latency-bound
    assert np.isclose(tpot[1], tpot[2])
