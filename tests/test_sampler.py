"""The campaign space: parsing, constraints, valid/memory-feasible enumeration, pool narrowing, space-filling design."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collect.sampler import (CANDIDATE_COLUMNS, apply_constraints, config_hashes, encode, enumerate_space,
                             evaluate_constraint, initial_design, load_space, narrow_pool, parse_space, pool_candidates)
from features.catalog import resolve_gpu, resolve_model
from features.errors import InputError
from features.layouts import infeasible_reason
from features.specs import EngineConfig, Layout

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "data" / "campaigns"


def test_example_spaces_parse_and_enumerate():
    for f in sorted(SPACES.glob("*.yaml")):
        space = load_space(f)
        if space.models and (space.requests or space.concurrency or space.kind == "step"):  # else: narrows a pool
            cand = enumerate_space(space)
            assert len(cand) > 0 and list(cand.columns) == list(CANDIDATE_COLUMNS)
            assert len(set(config_hashes(cand))) == len(cand)


def test_enumeration_keeps_only_valid_memory_feasible_layouts():
    space = parse_space({"models": ["llama-3.1-70b", "qwen3-30b-a3b"], "gpus": ["h100-sxm"], "num_gpus": [1, 2, 4, 8],
                         "workloads": ["fixed:1024/1024"], "requests": [64]})
    cand = enumerate_space(space)
    for _, r in cand.iterrows():
        lay = Layout(int(r.tp), int(r.pp), int(r.dp), int(r.ep), bool(r.attention_dp))
        assert lay.num_gpus == r.num_gpus
        engine = EngineConfig(weight_dtype=r.weight_dtype, gpu_memory_utilization=r.gpu_memory_utilization)
        assert infeasible_reason(resolve_model(r.model), resolve_gpu(r.gpu), lay, engine, min_tokens=2048) == ""
    dense = cand[cand.model == "llama-3.1-70b"]
    assert (dense.num_gpus >= 2).all()  # 140 GB of bf16 weights never fit one 80 GB H100
    assert (dense.ep == 1).all() and not dense.attention_dp.any()  # EP and attention-DP only for the MoE model
    moe = cand[cand.model == "qwen3-30b-a3b"]
    assert (moe.ep > 1).any() and moe.attention_dp.any()
    # a layout the physics says does not fit is reported infeasible, and it is absent
    assert infeasible_reason(resolve_model("llama-3.1-70b"), resolve_gpu("h100-sxm"), Layout(tp=1), EngineConfig())


def test_layout_ranges_knobs_and_constraints_narrow_the_grid():
    doc = {"models": ["llama-3.1-8b"], "gpus": ["h200"], "num_gpus": [8], "layouts": {"tp": [1, 2, 4], "pp": [1]},
           "workloads": ["reasoning", "fixed:128/4096"], "requests": [256, 1024],
           "engine_knobs": {"max_num_seqs": [64, 256]}, "constraints": ["max_num_seqs <= num_requests / 4", "tp in [1, 4]"]}
    cand = enumerate_space(parse_space(doc))
    assert set(cand.tp) == {1, 4} and set(cand.pp) == {1}
    assert (cand.tp * cand.dp == 8).all()
    assert (cand.max_num_seqs <= cand.num_requests / 4).all()
    assert {(256, 64), (1024, 64), (1024, 256)} == set(zip(cand.num_requests, cand.max_num_seqs))
    assert set(cand.isl_dist) == {"lognormal:100:0.5:2048", "fixed:128"}


def test_constraint_language_is_vectorised_and_safe():
    frame = pd.DataFrame({"tp": [1, 2, 4, 8], "pp": [1, 2, 1, 1], "model": ["a", "b", "a", "c"]})
    assert evaluate_constraint("tp * pp <= 4", frame).tolist() == [True, True, True, False]
    assert evaluate_constraint("model in ['a', 'c'] and not tp == 8", frame).tolist() == [True, False, True, False]
    assert evaluate_constraint("max(tp, pp) >= 2 or model == 'a'", frame).tolist() == [True, True, True, True]
    assert apply_constraints(frame, []).all()
    for bad in ("__import__('os').system('true')", "tp.real > 1", "[x for x in tp]", "tp >"):
        with pytest.raises(InputError):
            evaluate_constraint(bad, frame)
    with pytest.raises(InputError, match="not a configuration column"):
        evaluate_constraint("nonsense > 1", frame)


@pytest.mark.parametrize("doc, message", [
    ({"models": ["llama-3.1-8b"], "gpus": ["h200"], "colour": "red"}, "unknown key"),
    ({"models": ["no-such-model"], "gpus": ["h200"]}, "no-such-model"),
    ({"models": ["llama-3.1-8b"], "gpus": ["h200"], "layouts": {"tp": [0]}}, "tp value"),
    ({"models": ["llama-3.1-8b"], "gpus": ["h200"], "layouts": {"xp": [1]}}, "unknown layouts axis"),
    ({"models": ["llama-3.1-8b"], "gpus": ["h200"], "constraints": ["tp >>> 2"]}, "not a valid expression"),
    ({"models": ["llama-3.1-8b"], "gpus": ["h200"], "engine_knobs": {"gpu_memory_utilization": [1.5]}}, "utilization"),
    ({"models": ["llama-3.1-8b"], "gpus": ["h200"], "scenario": ["colour"]}, "not configuration columns"),
    ({"kind": "ops"}, "kind must be"),
])
def test_bad_space_files_fail_with_one_clear_line(doc, message):
    with pytest.raises(InputError, match=message):
        parse_space(doc)


def test_space_with_nothing_feasible_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="no valid, memory-feasible"):
        enumerate_space(parse_space({"models": ["llama-3.1-405b"], "gpus": ["l40s"], "num_gpus": [1],
                                     "workloads": ["chat"], "requests": [8]}))
    bad = tmp_path / "space.yaml"
    bad.write_text("models: [llama-3.1-8b\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_space(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_space(tmp_path / "missing.json")


def test_step_spaces_list_shard_shapes():
    cand = enumerate_space(load_space(SPACES / "tiny-llama-steps.yaml"))
    assert set(cand.kind) == {"step"} and set(cand.tp) == {1, 2} and set(cand.phase) == {"decode", "prefill"}
    dec = cand[cand.phase == "decode"]
    assert (dec.tokens == dec.batch).all()
    pre = cand[cand.phase == "prefill"]
    assert (pre.context >= pre.tokens).all() and (pre.batch == 1).all() and set(pre.context - pre.tokens) == {0, 128}


def test_initial_design_is_deterministic_spread_and_respects_exclusions():
    space = parse_space({"models": ["llama-3.1-8b", "qwen2.5-32b", "llama-3.1-70b"], "gpus": ["h200", "h100-sxm"],
                         "num_gpus": [1, 2, 4, 8], "workloads": ["reasoning", "chat", "fixed:1024/8192"],
                         "requests": [128, 1024], "engine_knobs": {"max_num_seqs": [64, 256]}})
    cand = enumerate_space(space)
    X = encode(cand)
    assert X.min() >= 0 and X.max() <= 1 and X.shape[0] == len(cand)
    a, b = initial_design(X, 16, seed=3), initial_design(X, 16, seed=3)
    assert a.tolist() == b.tolist() and len(set(a)) == 16
    assert initial_design(X, 16, seed=4).tolist() != a.tolist()
    lhs = initial_design(X, 16, seed=3, method="lhs")
    assert len(set(lhs)) == 16

    def coverage(idx):  # mean distance from every valid configuration to its nearest design point
        return np.sqrt(((X[:, None] - X[idx][None]) ** 2).sum(-1)).min(axis=1).mean()

    rng = np.random.default_rng(0)
    random_cover = np.median([coverage(rng.choice(len(X), 16, replace=False)) for _ in range(60)])
    sobol_cover = np.mean([coverage(initial_design(X, 16, seed=s)) for s in range(5)])
    assert sobol_cover < random_cover  # space-filling: the valid set is covered more evenly than by random picks
    excluded = np.zeros(len(X), dtype=bool)
    excluded[a] = True
    c = initial_design(X, 16, seed=3, exclude=excluded)
    assert not set(c) & set(a)
    with pytest.raises(InputError):
        initial_design(X, 4, method="grid")


def test_pool_candidates_hide_targets_and_narrowing_applies_every_axis():
    rows = []
    for tp in (1, 2, 4, 8):
        for batch in (8, 64):
            for model in ("llama-2-7b", "llama-2-70b"):
                rows.append({"kind": "serving", "engine": "trtllm", "model": model, "gpu": "h100-sxm", "tp": tp,
                             "isl": 128.0, "osl": 2048.0, "isl_dist": "fixed:128", "osl_dist": "fixed:2048",
                             "num_requests": batch, "max_num_seqs": batch, "output_throughput": 100.0 * tp + batch})
    pool = pd.DataFrame(rows + rows[:3])  # repeated measurements of three configurations
    cand = pool_candidates(pool)
    assert len(cand) == 16
    assert "output_throughput" not in cand.columns and set(cand.columns) == set(CANDIDATE_COLUMNS)
    space = parse_space({"engine": "trtllm", "models": ["llama-2-70b"], "layouts": {"tp": [2, 4, 8]},
                         "workloads": ["fixed:128/2048"], "constraints": ["num_requests >= 64"]})
    narrowed = narrow_pool(cand, space)
    assert set(narrowed.model) == {"llama-2-70b"} and set(narrowed.tp) == {2, 4, 8} and set(narrowed.num_requests) == {64}
    assert narrow_pool(cand, parse_space({"engine": "vllm"})).empty
    assert narrow_pool(cand, parse_space({"workloads": ["fixed:1024/1024"]})).empty
