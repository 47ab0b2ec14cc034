"""The search space at cluster scale: multi-node layouts and links, replica mixes, disaggregated prefill/decode
candidates with their KV-transfer cost, engine knobs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.calibration import default_calibration
from features.catalog import resolve_gpu, resolve_model, resolve_workload
from features.comm import ep_group_gpus_per_node, link_bandwidth_gbps
from features.disagg import estimate_disaggregated, kv_transfer_bytes, kv_transfer_ms
from features.errors import InputError
from features.memory import kv_bytes_per_token
from features.serving import EngineArrays
from features.specs import Layout
from features.steptime import stage_step_terms
from predictor import Predictor
from predictor.scoring import SearchContext, score_candidates
from predictor.search import allocate_trials
from predictor.space import WIDE_KNOBS, candidate_space

CAL = default_calibration()


@pytest.fixture(scope="module")
def predictor():
    return Predictor()  # physics: the scoring logic under test, not a learned correction


def test_multinode_space_keeps_tp_in_a_node_and_spreads_pp_dp_across_nodes():
    space = candidate_space("llama-3.1-70b", "h200", 64, modes=("aggregated",))
    assert (space["tp"] * space["pp"] * space["dp"] == 64).all()
    ok = space[space["reason"] == ""]
    assert ok["tp"].max() == 8  # 8 GPUs per node
    assert {16, 32, 64} <= set(space.loc[space["tp"] > 8, "tp"])
    assert space.loc[space["tp"] > 8, "reason"].str.contains("spans nodes").all()
    assert (ok["pp"] * ok["tp"] > 8).any() and (ok["dp"] >= 8).any()  # pipelines and replicas across nodes
    assert {"TP8xPP8", "TP8xDP8", "TP4xPP2xDP8"} <= set(ok["layout"])


def test_links_switch_to_the_nic_across_nodes():
    gpu = resolve_gpu("h200")
    model = resolve_model("llama-3.1-70b")
    assert float(link_bandwidth_gbps(gpu, 8)) == gpu.link_bandwidth_gbps
    assert float(link_bandwidth_gbps(gpu, 16)) == gpu.internode_bandwidth_gbps
    # a pipeline of TP8 × PP2 hands activations from one node to the next; TP4 × PP2 stays inside one node
    cross = stage_step_terms(model, gpu, Layout(8, 2), CAL, 64, 64 * 2000)
    inside = stage_step_terms(model, gpu, Layout(4, 2), CAL, 64, 64 * 2000)
    assert float(cross.p2p_ms) > 2 * float(inside.p2p_ms)


def test_ep_group_placement_follows_rank_order():
    gpu = resolve_gpu("h200")
    # EP inside TP: contiguous; EP across DP ranks: blocks tp × pp apart, so PP2 doubles the span
    assert float(ep_group_gpus_per_node(gpu, Layout(8, 2, 4, 8, True))) == 8
    assert float(ep_group_gpus_per_node(gpu, Layout(1, 2, 32, 8))) == 4
    ds = resolve_model("deepseek-r1")
    one_node = stage_step_terms(ds, gpu, Layout(1, 1, 64, 8), CAL, 64, 64 * 4000, weight_dtype="fp8")
    two_nodes = stage_step_terms(ds, gpu, Layout(1, 2, 32, 8), CAL, 64, 64 * 4000, weight_dtype="fp8")
    assert float(two_nodes.comm_ms) > 2 * float(one_node.comm_ms)


def test_knob_grid_and_validation():
    space = candidate_space("qwen2.5-32b", "h200", 8, WIDE_KNOBS, modes=("aggregated",))
    per_layout = space.groupby("layout").size()
    assert (per_layout == 5 * 3 * 2 * 3).all()
    assert set(space["kv_cache_dtype"]) == {"auto", "fp8"} and set(space["gpu_memory_utilization"]) == {0.8, 0.9, 0.95}
    assert space["layout_id"].nunique() == len(per_layout)
    with pytest.raises(InputError, match="unknown engine knob"):
        candidate_space("qwen2.5-32b", "h200", 8, {"max_seqs": [1]})
    with pytest.raises(InputError, match="gpu_memory_utilization"):
        candidate_space("qwen2.5-32b", "h200", 8, {"gpu_memory_utilization": [1.5]})
    with pytest.raises(InputError, match="unknown search mode"):
        candidate_space("qwen2.5-32b", "h200", 8, modes=("pooled",))


def test_mixed_candidates_use_every_gpu_with_two_replica_types():
    space = candidate_space("qwen2.5-32b", "h200", 16, modes=("mixed",))
    assert len(space) > 10
    gpus = space["dp"] * space["tp"] * space["pp"] + space["b_dp"] * space["b_tp"] * space["b_pp"]
    assert (gpus == 16).all()
    assert ((space["tp"] != space["b_tp"]) | (space["pp"] != space["b_pp"])).all()
    assert "2xTP4 + 4xTP2" in set(space["layout"])


def test_disaggregated_candidates_and_kv_transfer_cost():
    space = candidate_space("llama-3.1-8b", "h200", 16, modes=("disaggregated",))
    assert len(space) and (space["mode"] == "disaggregated").all()
    gpus = space["dp"] * space["tp"] * space["pp"] + space["b_dp"] * space["b_tp"]
    assert (gpus == 16).all()
    assert "P 4xTP1 | D TP4xDP3" in set(space["layout"])
    model, gpu = resolve_model("llama-3.1-8b"), resolve_gpu("h200")
    # one prompt's KV: layers × 2 × KV heads × head_dim × bytes × tokens
    assert float(kv_transfer_bytes(model, 1000, "bf16")) == pytest.approx(1000 * float(kv_bytes_per_token(model, "bf16")))
    near = float(kv_transfer_ms(model, gpu, CAL, 1000, "bf16", 1, 4, False))
    far = float(kv_transfer_ms(model, gpu, CAL, 1000, "bf16", 1, 4, True))
    wide = float(kv_transfer_ms(model, gpu, CAL, 1000, "bf16", 4, 4, True))
    assert far > 5 * near  # NIC (50 GB/s) vs NVLink (450 GB/s per direction)
    assert wide < far / 2  # four GPU pairs move their shards in parallel
    assert far == pytest.approx(0.006 + 1000 * float(kv_bytes_per_token(model, "bf16")) / (50e9 * 0.8) * 1e3, rel=1e-6)


def test_disaggregated_decode_steps_carry_no_prompt_tokens():
    model, gpu = resolve_model("llama-3.1-70b"), resolve_gpu("h200")
    eng = EngineArrays(weight_dtype="bf16", kv_dtype="bf16")
    # long prompts: an aggregated TP4 replica's steps carry prefill chunks, a decode pool's do not
    from features.serving import estimate_serving

    agg = estimate_serving(model, gpu, Layout(4, 1, 2), eng, CAL, 8000, 500, concurrency=64)
    dis = estimate_disaggregated(model, gpu, Layout(4), 1, Layout(4, 1, 1), eng, CAL, 8000, 500, concurrency=64)
    assert float(dis.tpot_ms) < float(agg.tpot_ms)
    assert float(dis.kv_transfer_ms) > 0 and float(dis.ttft_ms) > float(dis.prefill_ms) + float(dis.kv_transfer_ms)
    # throughput is the least of what the prefill pool, the links and the decode pool sustain
    assert float(dis.request_throughput) <= min(float(dis.prefill_rate_per_s), float(dis.transfer_rate_per_s),
                                                float(dis.decode_rate_per_s)) * (1 + 1e-9)
    # a prefill pool too small for the load binds, and says so
    small = estimate_disaggregated(model, gpu, Layout(4), 1, Layout(4, 1, 6), eng, CAL, 8000, 500)
    assert small.bottleneck.item() == "prefill_pool" and small.regime.item() == "compute"
    assert float(small.request_throughput) == pytest.approx(float(small.prefill_rate_per_s), rel=1e-6)
    assert float(small.batch) < float(small.batch_limit_kv)  # the starved decode pool runs below its capacity


def test_scoring_every_mode_vectorised(predictor):
    wl = resolve_workload("chat").with_arrival(0, 256)
    space = candidate_space("qwen2.5-32b", "h200", 16, weight_dtype="bf16")
    scored = score_candidates(predictor, SearchContext("qwen2.5-32b", "h200", wl, "bf16"), space)
    assert len(scored) == len(space) and scored.index.equals(space.index)
    feas = scored[scored["feasible"]]
    for mode in ("aggregated", "mixed", "disaggregated"):
        sub = feas[space.loc[feas.index, "mode"] == mode]
        assert len(sub), mode
        assert (sub["pred_output_throughput_lo"] <= sub["pred_output_throughput"]).all()
        assert (sub["pred_output_throughput"] <= sub["pred_output_throughput_hi"]).all()
        assert sub["regime"].isin(["compute", "bandwidth", "capacity", "communication"]).all()
    dis = feas[space.loc[feas.index, "mode"] == "disaggregated"]
    assert (dis["term_kv_transfer_ms"] > 0).all()
    # a mix's throughput is its members' sum: 2xTP4 + 4xTP2 vs the TP4xDP2 and TP2xDP4 halves it is made of
    row = space.index[space["layout"] == "2xTP4 + 4xTP2"][0]
    eight = candidate_space("qwen2.5-32b", "h200", 8, modes=("aggregated",))
    halves = pd.DataFrame([eight.loc[eight["layout"] == "TP4xDP2"].iloc[0], eight.loc[eight["layout"] == "TP2xDP4"].iloc[0]])
    sat = SearchContext("qwen2.5-32b", "h200", resolve_workload("chat"), "bf16")
    s_mix = score_candidates(predictor, sat, space.loc[[row]])
    s_halves = score_candidates(predictor, sat, halves)
    assert s_mix["pred_output_throughput"].iloc[0] == pytest.approx(s_halves["pred_output_throughput"].sum(), rel=1e-9)


def test_infeasible_layouts_carry_their_reason(predictor):
    wl = resolve_workload("reasoning")
    space = candidate_space("llama-3.1-405b", "h200", 4, modes=("aggregated",), weight_dtype="bf16")
    scored = score_candidates(predictor, SearchContext("llama-3.1-405b", "h200", wl, "bf16"), space)
    assert not scored["feasible"].any()
    assert scored["reason"].str.contains("weights need").any()


def test_trial_budget_split_over_modes():
    assert allocate_trials({"a": 292, "m": 84, "d": 896}, 100) == {"a": 33, "m": 33, "d": 34}
    assert allocate_trials({"a": 5, "m": 100, "d": 100}, 100) == {"a": 5, "m": 47, "d": 48}
    assert allocate_trials({"a": 10, "m": 3}, 100) == {"a": 10, "m": 3}
    assert sum(allocate_trials({"a": 7, "m": 9, "d": 11}, 20).values()) == 20
    assert np.all(np.array(list(allocate_trials({"a": 1, "b": 50}, 30).values())) >= 1)
