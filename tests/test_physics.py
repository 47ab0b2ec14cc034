"""The physics model against hand-computed values and invariants (property-based)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.calibration import default_calibration
from features.catalog import model_catalog, resolve_gpu, resolve_model
from features.layouts import enumerate_layouts, infeasible_reason, structural_reason
from features.memory import (CUDA_GRAPH_BYTES, NON_TORCH_BYTES, activation_bytes_per_gpu, kv_bytes_per_token,
                             kv_bytes_per_token_per_gpu, kv_capacity_tokens, total_params, weight_bytes_per_gpu)
from features.serving import EngineArrays, estimate_serving
from features.specs import EngineConfig, Layout
from features.steptime import gemm_ms, replica_step_ms

CAL = default_calibration()
H200 = resolve_gpu("h200")


def test_kv_bytes_per_token_llama_8b_bf16():
    # 32 layers x 2 (K,V) x 8 KV heads x 128 head dim x 2 bytes
    assert kv_bytes_per_token(resolve_model("llama-3.1-8b"), "bf16") == 131_072


def test_kv_bytes_per_token_deepseek_r1_mla():
    # latent cache: 61 layers x (kv_lora_rank 512 + rope 64) x bytes; shared by K and V
    m = resolve_model("deepseek-r1")
    assert kv_bytes_per_token(m, "bf16") == 61 * 576 * 2 == 70_272
    assert kv_bytes_per_token(m, "fp8") == 35_136
    # MLA's latent cache is replicated on every TP rank
    assert kv_bytes_per_token_per_gpu(m, Layout(tp=8), "fp8") == kv_bytes_per_token(m, "fp8")


def test_weights_per_gpu_llama_405b_tp8():
    m = resolve_model("llama-3.1-405b")
    h, heads, kvh, hd, ffn, vocab, layers = 16384, 128, 8, 128, 53248, 128256, 126
    assert total_params(m) == layers * (h * heads * hd * 2 + h * kvh * hd * 2 + 3 * h * ffn) + 2 * vocab * h
    # per GPU at TP 8: Q and O split 8 ways, one KV head per GPU, FFN split, embedding and LM head vocab-parallel
    per_layer = (h * heads * hd * 2) / 8 + h * 1 * hd * 2 + 3 * h * ffn / 8
    expected = (layers * per_layer + 2 * vocab * h / 8) * 2
    assert weight_bytes_per_gpu(m, Layout(tp=8), "bf16") == pytest.approx(expected)
    assert expected == pytest.approx(101.46e9, rel=1e-3)
    assert weight_bytes_per_gpu(m, Layout(tp=8), "fp8") == pytest.approx(expected / 2)


def test_kv_capacity_qwen_32b_one_h200_vs_tp8():
    m = resolve_model("qwen2.5-32b")
    e = EngineConfig()
    for tp, kv_heads_per_gpu in ((1, 8), (8, 1)):
        layout = Layout(tp=tp)
        free = (141e9 * 0.9 - weight_bytes_per_gpu(m, layout, "bf16") - activation_bytes_per_gpu(m, layout, e)
                - CUDA_GRAPH_BYTES - NON_TORCH_BYTES)
        per_token = 64 * 2 * kv_heads_per_gpu * 128 * 2
        expected = np.floor(np.floor(free / per_token) / 16) * 16
        assert kv_capacity_tokens(m, H200, layout, e) == expected
    one = kv_capacity_tokens(m, H200, Layout(tp=1), e)
    eight = kv_capacity_tokens(m, H200, Layout(tp=8), e)
    assert 150_000 < one < 300_000
    # TP 8 splits both weights and KV heads: far more than 8x the tokens of one GPU
    assert eight > 8 * one


def test_layout_rules_explain_infeasibility():
    m = resolve_model("qwen2.5-32b")  # 40 heads, 8 KV heads, 64 layers
    assert "attention heads" in structural_reason(m, Layout(tp=16), None) or "heads" in structural_reason(m, Layout(tp=3), None)
    assert "PP 128 exceeds" in structural_reason(m, Layout(pp=128), None)
    assert "EP needs" in structural_reason(m, Layout(ep=2, dp=2), None)
    big = resolve_model("llama-3.1-405b")
    assert "weights need" in infeasible_reason(big, H200, Layout(tp=1), EngineConfig())
    assert infeasible_reason(big, H200, Layout(tp=8), EngineConfig(weight_dtype="fp8")) == ""
    moe = resolve_model("deepseek-r1")
    assert "spans nodes" in structural_reason(moe, Layout(tp=16), H200)


def test_enumerate_layouts_covers_products():
    m = resolve_model("mixtral-8x7b")
    layouts = enumerate_layouts(m, H200, 8)
    assert all(l.num_gpus == 8 for l in layouts)
    assert {(l.tp, l.pp, l.dp) for l in layouts} >= {(1, 1, 8), (2, 1, 4), (4, 2, 1), (8, 1, 1), (1, 8, 1)}
    assert any(l.ep == 8 for l in layouts) and any(l.attention_dp for l in layouts)


def test_gemm_calibration_tracks_probe_gemms():
    import pandas as pd

    from features.catalog import DATA_DIR

    g = pd.read_csv(DATA_DIR / "gpu_probe" / "h200_step.csv").query("kind == 'gemm'")
    pred = gemm_ms(g["m"].to_numpy(), g["n"].to_numpy(), g["k"].to_numpy(), H200, CAL)
    ape = np.abs(pred / g["ms_median"].to_numpy() - 1)
    assert np.median(ape) < 0.08


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(model_catalog())), st.floats(40, 200), st.floats(1.05, 2.0))
def test_more_memory_never_lowers_capacity(name, mem_gb, factor):
    m = resolve_model(name)
    small = dataclasses.replace(H200, memory_gb=mem_gb)
    big = dataclasses.replace(H200, memory_gb=mem_gb * factor)
    for layout in (Layout(tp=1), Layout(tp=2), Layout(tp=8)):
        assert kv_capacity_tokens(m, big, layout, EngineConfig()) >= kv_capacity_tokens(m, small, layout, EngineConfig())


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["llama-3.1-8b", "qwen2.5-32b", "llama-3.1-70b", "mixtral-8x7b", "deepseek-r1", "qwen3-30b-a3b"]),
       st.sampled_from([1, 2, 4, 8]), st.integers(1, 511), st.integers(1, 512), st.integers(128, 16384))
def test_larger_batch_never_lowers_decode_throughput(name, tp, b1, extra, ctx):
    m = resolve_model(name)
    layout = Layout(tp=tp)
    b2 = b1 + extra
    t1 = replica_step_ms(m, H200, layout, CAL, b1, b1 * ctx)
    t2 = replica_step_ms(m, H200, layout, CAL, b2, b2 * ctx)
    assert b2 / t2 >= b1 / t1 * (1 - 1e-9)
    assert t2 >= t1  # a step with more sequences never takes less time


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["llama-3.1-8b", "qwen2.5-14b", "qwen2.5-32b"]), st.sampled_from([(1, 8), (2, 4), (8, 1)]),
       st.integers(10, 3000), st.integers(64, 2048), st.integers(64, 16384))
def test_steady_state_makespan_at_least_longest_decode(name, td, n, isl, osl):
    m = resolve_model(name)
    tp, dp = td
    e = estimate_serving(m, H200, Layout(tp=tp, dp=dp), EngineArrays(), CAL, isl, osl, num_requests=n)
    alone = replica_step_ms(m, H200, Layout(tp=tp, dp=dp), CAL, 1, isl + osl / 2)
    assert e.makespan_s >= osl * alone / 1e3 * (1 - 1e-9)
    assert e.output_throughput > 0 and e.tpot_ms > 0


def test_fixed_concurrency_ttft_blends_the_opening_burst_with_the_steady_state():
    """A run of concurrency c and n > c requests: 1 in n/c requests meets the opening burst, the rest only their own
    prompt beside the running decodes, so the mean TTFT falls with n towards the steady TTFT (n <= c: all burst)."""
    m, layout, eng = resolve_model("qwen2.5-32b"), Layout(tp=2), EngineArrays.from_config(EngineConfig())
    def run(n):
        return estimate_serving(m, H200, layout, eng, CAL, 4096.0, 512.0, num_requests=n, concurrency=64)
    burst, short, long = run(0), run(64), run(64 * 50)
    assert short.ttft_ms == pytest.approx(burst.ttft_ms) and short.ttft_p99_ms == pytest.approx(burst.ttft_p99_ms)
    ttfts = [run(64 * k).ttft_ms for k in (2, 5, 50, 500)]
    assert all(a > b for a, b in zip([burst.ttft_ms, *ttfts], ttfts))
    steady = run(64 * 10**6).ttft_ms  # the burst's share vanishes
    assert long.ttft_ms == pytest.approx(steady + (burst.ttft_ms - steady) / 50, rel=1e-4)
    assert steady < burst.ttft_ms / 5  # 64 prompts of 4,096 tokens queue behind each other only in the burst
    assert long.ttft_p99_ms < burst.ttft_p99_ms and run(64 * 200).ttft_p99_ms < long.ttft_p99_ms
    # the decode side does not depend on how many requests the run has beyond its concurrency
    assert long.tpot_ms == pytest.approx(run(128).tpot_ms) and long.output_throughput == pytest.approx(
        run(128).output_throughput)


def test_regimes_match_the_study_story():
    """8B under DP is bandwidth bound; 32B on one H200 is capacity bound on a reasoning batch."""
    wl = dict(isl=113, osl=6124, num_requests=2000, osl_median=4500, osl_sigma=0.8, osl_max=32768)
    e8 = estimate_serving(resolve_model("llama-3.1-8b"), H200, Layout(dp=8), EngineArrays(), CAL, **wl)
    assert e8.regime == "bandwidth"
    e32 = estimate_serving(resolve_model("qwen2.5-32b"), H200, Layout(dp=8), EngineArrays(), CAL, **wl)
    assert e32.regime == "capacity" and e32.bottleneck == "kv_cache_capacity"


@pytest.mark.parametrize("name,tp,conc,isl,osl", [("llama-3.1-70b", 4, 4, 8192, 1024), ("llama-3.1-70b", 4, 32, 8192, 1024),
                                                 ("qwen2.5-32b", 2, 16, 1024, 1024)])
def test_steady_ttft_agrees_with_the_request_level_simulation(name, tp, conc, isl, osl):
    """50 x concurrency requests of fixed lengths (aiconfigurator's benchmark) with the whole prompt in one chunk:
    the estimate's blend of burst and steady TTFT stays within 25% of the scheduler simulation of every request,
    while the opening burst alone is far above it (the estimate before the blend)."""
    from features.closed_batch import simulate_deployment
    from features.specs import LengthDist, Workload

    m, layout = resolve_model(name), Layout(tp=tp)
    eng = EngineConfig(max_num_seqs=conc, max_num_batched_tokens=conc + isl + 1500)
    n = 50 * conc
    wl = Workload("bench", LengthDist("fixed", isl), LengthDist("fixed", osl), n, conc)
    sim = simulate_deployment(m, H200, layout, eng, wl, n, CAL)
    arrays = EngineArrays.from_config(eng)
    est = estimate_serving(m, H200, layout, arrays, CAL, float(isl), float(osl), num_requests=n, concurrency=conc)
    burst = estimate_serving(m, H200, layout, arrays, CAL, float(isl), float(osl), num_requests=0, concurrency=conc)
    assert abs(est.ttft_ms / (sim.ttft_mean_s * 1e3) - 1) < 0.25
    assert burst.ttft_ms > 1.5 * sim.ttft_mean_s * 1e3


@pytest.mark.parametrize("name,tp,conc", [("llama-3.1-8b", 1, 64), ("qwen2.5-32b", 2, 16)])
def test_refilled_tpot_charges_a_partial_last_chunk_its_share(name, tp, conc):
    """8,192-token prompts under vLLM's default 8,192-token budget: beside the running decodes a prompt takes one
    full chunk and a sliver. The steady TPOT charges the sliver its share of a chunk's compute and agrees with the
    request-level simulation within 10% (charging a whole second chunk put it 30-40% above)."""
    from features.closed_batch import simulate_deployment
    from features.specs import LengthDist, Workload

    m, layout, eng = resolve_model(name), Layout(tp=tp), EngineConfig(max_num_seqs=conc)
    n = 20 * conc
    sim = simulate_deployment(m, H200, layout, eng, Workload("long", LengthDist("fixed", 8192), LengthDist("fixed", 1024),
                                                             n, conc), n, CAL)
    est = estimate_serving(m, H200, layout, EngineArrays.from_config(eng), CAL, 8192.0, 1024.0, num_requests=n,
                           concurrency=conc)
    assert abs(est.tpot_ms / (sim.tpot_mean_s * 1e3) - 1) < 0.10


def test_moe_tp_over_attention_dp_ranks_exchanges_tokens():
    # Qwen3-235B as vLLM runs DP2 without EP (attention per rank, experts sharded over both): the MoE layers gather
    # the two ranks' tokens and reduce-scatter back, the traffic of an all-reduce of the group's tokens per MoE layer
    from features import comm
    from features.steptime import stage_step_terms

    m = resolve_model("qwen3-235b-a22b")
    dep = stage_step_terms(m, H200, Layout(tp=2, attention_dp=True), CAL, 8.0, 8 * 2000.0, weight_dtype="fp8")
    group_bytes = 8 * 2 * m.hidden_size * 2.0  # 8 tokens a rank, 2 ranks, bf16 activations
    per_layer = comm.allreduce_ms(group_bytes, 2, H200, CAL) * m.num_moe_layers / m.num_layers
    assert dep.comm_ms > 0
    assert np.isclose(dep.comm_ms, m.num_layers * per_layer)  # attention TP 1: no attention all-reduce
    # with EP the exchange is the all-to-all instead, and a dense model has nothing to exchange
    ep = stage_step_terms(m, H200, Layout(tp=2, ep=2, attention_dp=True), CAL, 8.0, 8 * 2000.0, weight_dtype="fp8")
    assert not np.isclose(ep.comm_ms, dep.comm_ms)
    dense = stage_step_terms(resolve_model("qwen3-32b"), H200, Layout(tp=2, attention_dp=True), CAL, 8.0, 16000.0)
    assert dense.comm_ms == 0
