"""The torch step/op backend really runs on CPU: shapes, bytes and FLOPs by hand, layer math, sinks, collectives."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from collect.backends import torch_step as ts
from collect.backends.torch_collectives import COLLECTIVES, measure_collectives
from collect.sinks import CsvSink, make_sink
from features.errors import InputError
from features.schema import COLUMNS
from features.specs import ModelSpec

REPO = Path(__file__).resolve().parents[1]

# hand-checkable shapes: hidden 64, 4 heads, 2 KV heads, head dim 16, FFN 128, vocab 256
TINY = ModelSpec(name="tiny-test", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                 intermediate_size=128, vocab_size=256)
# every token goes to all 4 experts, so routing is deterministic: 2 local experts under EP 2, 3 tokens each
TINY_MOE = ModelSpec(name="tiny-moe-test", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                     intermediate_size=128, vocab_size=256, num_experts=4, experts_per_token=4, num_shared_experts=1,
                     moe_intermediate_size=32)
SMALL_GRID = ts.StepGrid(batches=(1, 2), contexts=(8, 16), prefill_tokens=(8,), prefill_prior=(0, 8))


def catalog_model(name: str, fallback: ModelSpec) -> ModelSpec:
    """The catalog's tiny entry when the catalog has it, else a spec built here."""
    from features.catalog import resolve_model

    try:
        return resolve_model(name)
    except (InputError, OSError):
        return fallback


@pytest.fixture(scope="module")
def backend() -> ts.TorchStepBackend:
    return ts.TorchStepBackend("cpu", "fp32", layers_timed=2, warmup=1, replays=2, progress=False, strict=True)


def details(df: pd.DataFrame) -> list[dict]:
    return [json.loads(d) for d in df["detail"]]


def assert_ok_rows(df: pd.DataFrame, target: str) -> None:
    assert len(df) > 0
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert (df["status"] == "ok").all()
    assert (df["source"] == "torch-probe").all() and (df["engine"] == "torch").all()
    assert (df["engine_version"] == torch.__version__).all()
    assert (df["gpu"] == "cpu").all()
    values = df[target].to_numpy(dtype=float)
    assert np.isfinite(values).all() and (values > 0).all(), values


# --- shapes, bytes, FLOPs by hand -----------------------------------------------------------------------------------


def test_layer_shard_bytes_and_flops_by_hand():
    s1 = ts.shard_layer(TINY, 1)
    assert (s1.heads, s1.kv_heads, s1.ffn, s1.qkv_out, s1.vocab) == (4, 2, 128, 128, 256)
    # QKV 64x128 + O 64x64 + gate-up 64x256 + down 128x64
    assert s1.weight_params == 8192 + 4096 + 16384 + 8192 == 36864
    assert ts.layer_weight_bytes(s1, 4) == 147456
    assert ts.kv_bytes(s1, batch=2, context=8, elem_bytes=4) == 2 * 2 * 8 * 32 * 4 == 4096
    assert ts.decode_flops(s1, batch=2, context=8) == 2 * 36864 * 2 + 4 * 2 * 4 * 8 * 16 == 151552
    assert ts.prefill_flops(s1, tokens=8) == 2 * 36864 * 8 + 2 * 4 * 16 * 8 * 8 == 598016
    assert ts.prefill_flops(s1, tokens=8, prior=8) == 2 * 36864 * 8 + 2 * 4 * 16 * 8 * 24 == 614400


def test_tp_halves_qkv_and_ffn_and_replicates_kv_heads():
    s1, s2, s4 = (ts.shard_layer(TINY, tp) for tp in (1, 2, 4))
    assert (s2.heads, s2.kv_heads, s2.ffn, s2.qkv_out) == (2, 1, 64, 64)
    assert s2.weight_params * 2 == s1.weight_params
    assert not s2.kv_replicated
    # 2 KV heads over 4 ranks: each rank keeps one KV head (replicated), its single query head uses it
    assert (s4.heads, s4.kv_heads, s4.group, s4.qkv_out, s4.kv_replicated) == (1, 1, 1, 48, True)
    for bad_tp in (3, 8):
        with pytest.raises(InputError):
            ts.shard_layer(TINY, bad_tp)


def test_built_stack_has_sharded_weight_shapes():
    shapes = {}
    for tp in (1, 2, 4):
        stack = ts.DecoderStack(ts.shard_layer(TINY, tp), 1, "cpu", torch.float32)
        layer = stack.layers[0]
        shapes[tp] = {k: tuple(v.shape) for k, v in layer.items()}
        caches = stack.new_caches(batch=2, capacity=8)
        assert tuple(caches[0][0].shape) == (2, stack.shard.kv_heads, 8, 16)
        assert abs(float(layer["wqkv"].std()) - 0.02) < 0.004  # random weights scaled by 0.02
    assert shapes[1]["wqkv"] == (64, 128) and shapes[2]["wqkv"] == (64, 64) and shapes[4]["wqkv"] == (64, 48)
    assert shapes[1]["wgu"] == (64, 256) and shapes[2]["wgu"] == (64, 128)
    assert shapes[1]["wdown"] == (128, 64) and shapes[2]["wdown"] == (64, 64)
    assert shapes[1]["wo"] == (64, 64) and shapes[2]["wo"] == (32, 64)


def test_plain_mlp_shard_weights_and_ffn_by_hand(backend):
    """A 2-matrix MLP model (phi-2 style: up, GELU, down) is built and counted without a gate; head dim 80 runs."""
    plain = ModelSpec(**{**TINY.__dict__, "name": "tiny-plain", "ffn_matrices": 2})
    s1, s2 = ts.shard_layer(plain, 1), ts.shard_layer(plain, 2)
    assert (s1.ffn_matrices, s1.ffn_in, s2.ffn_in) == (2, 128, 64)
    # QKV 64x128 + O 64x64 + up 64x128 + down 128x64
    assert s1.weight_params == 8192 + 4096 + 8192 + 8192 == 28672
    assert ts.step_includes(s1)[-4:-1] == ["up_gemm", "gelu_tanh", "down_gemm"]
    assert ts.step_includes(ts.shard_layer(TINY, 1))[-4:-1] == ["gate_up_gemm", "silu_mul", "down_gemm"]
    stack = ts.DecoderStack(s1, 1, "cpu", torch.float32, seed=3)
    layer = stack.layers[0]
    assert tuple(layer["wgu"].shape) == (64, 128) and tuple(layer["wdown"].shape) == (128, 64)
    x = stack.random(5, 64)
    h = torch.nn.functional.rms_norm(x, (64,), layer["ln2"], stack.eps)
    ref = x + torch.nn.functional.gelu(h @ layer["wgu"], approximate="tanh") @ layer["wdown"]
    torch.testing.assert_close(stack._ffn(x, layer), ref)
    assert ts.model_op_grid(plain, 1, (2,), (8,)).gemm[2].n == 128  # the up GEMM, not a fused gate-up
    hd80 = ModelSpec(**{**plain.__dict__, "name": "tiny-hd80", "hidden_size": 160, "num_heads": 2, "num_kv_heads": 2,
                        "head_dim": 80})
    df = backend.measure_model(hd80, 1, ts.StepGrid(batches=(2,), contexts=(16,), prefill_tokens=(8,)))
    assert_ok_rows(df, "layer_ms")
    detail = json.loads(df["detail"].iloc[0]) if isinstance(df["detail"].iloc[0], str) else df["detail"].iloc[0]
    assert detail["ffn_matrices"] == 2 and detail["head_dim"] == 80 and detail["includes"][-3:-1] == ["gelu_tanh", "down_gemm"]


def test_moe_shard_routing_bytes_and_flops_by_hand():
    s = ts.shard_moe(TINY_MOE, ep=2)
    assert (s.local_experts, s.expert_ffn, s.shared_ffn, s.expert_params) == (2, 32, 32, 3 * 64 * 32)
    r = ts.route_uniform(3, s, seed=1)
    assert r.counts == (3, 3) and r.padded == (16, 16)
    assert (r.routed, r.rows, r.active_experts) == (6, 32, 2)
    assert ts.moe_weight_bytes(s, r, 4) == (2 * 6144 + 6144) * 4 == 73728
    assert ts.moe_flops(s, r, batch=3) == 2 * 6144 * 6 + 2 * 6144 * 3 == 110592
    # top-2 of 8 experts over all ranks: every token picks 2 distinct experts
    wide = ts.shard_moe(ModelSpec(**{**TINY_MOE.__dict__, "num_experts": 8, "experts_per_token": 2}), ep=1)
    r8 = ts.route_uniform(50, wide, seed=3)
    assert r8.routed == 100 and all(p % 16 == 0 and p >= c for p, c in zip(r8.padded, r8.counts))
    with pytest.raises(InputError):
        ts.shard_moe(TINY_MOE, ep=3)
    with pytest.raises(InputError):
        ts.shard_moe(TINY, ep=1)


def test_memory_fit_rule_by_hand(backend):
    # shard: 3 layers x 147,456 B + embedding and lm_head 2 x 64 x 256 x 4 B = 573,440 B; KV per layer at B1 C1000:
    # 2 x 1000 x 32 x 4 = 256,000 B, x 3 layers = 768,000 B -> 1,341,440 B needed
    assert ts.model_shard_bytes(TINY, 1, 4) == 573440
    assert ts.fits_memory(TINY, 1, 1, 1000, 4, memory_bytes=1.5e6)  # 1.35e6 available
    assert not ts.fits_memory(TINY, 1, 1, 2000, 4, memory_bytes=1.5e6)
    small = ts.TorchStepBackend("cpu", "fp32", layers_timed=1, warmup=0, replays=1, memory_bytes=1.5e6,
                                progress=False, strict=True)
    df = small.measure_model(TINY, 1, ts.StepGrid(batches=(1,), contexts=(1000, 2000), prefill_tokens=()))
    assert df["context"].tolist() == [1000.0]
    assert any("context 2000" in s for s in small.skipped)


def test_mla_and_moe_models_are_refused_for_dense_steps(backend):
    mla = ModelSpec(**{**TINY.__dict__, "name": "mla-test", "kv_lora_rank": 64, "qk_rope_head_dim": 16})
    with pytest.raises(InputError, match="MLA"):
        ts.shard_layer(mla, 1)
    with pytest.raises(InputError, match="measure_moe"):
        backend.measure_model(TINY_MOE, 1, SMALL_GRID)


# --- the layer math is right (RoPE positions, KV append, GQA) -------------------------------------------------------


def test_rope_scores_depend_only_on_relative_position():
    table = ts.rope_cache(64, 16, "cpu", torch.float32)
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)

    def score(m: int, n: int) -> float:
        qm = ts.apply_rope(q, table.index_select(0, torch.tensor([m])))
        kn = ts.apply_rope(k, table.index_select(0, torch.tensor([n])))
        return float((qm * kn).sum())

    assert score(10, 7) == pytest.approx(score(40, 37), rel=1e-4, abs=1e-5)
    assert abs(score(10, 7) - score(10, 9)) > 1e-4  # and the rotation does something


def test_decode_and_chunked_prefill_match_full_prefill():
    stack = ts.DecoderStack(ts.shard_layer(TINY, 1), 3, "cpu", torch.float32, seed=7)
    x = stack.random(6, 64)
    full_state = stack.prefill_state(6, 0)
    full = stack.prefill(x, full_state)
    # prefill 5 tokens, then decode the 6th at context 6: its KV goes to slot 5, attention covers all 6
    caches = stack.new_caches(1, 6)
    stack.prefill(x[:5], stack.prefill_state(5, 0, caches=caches))
    dec_state = stack.decode_state(1, 6, caches=caches)
    last = stack.decode(x[5:6], dec_state)
    torch.testing.assert_close(last, full[5:6], rtol=1e-4, atol=1e-4)
    # chunked prefill: 3 tokens, then 3 more after 3 cached
    caches = stack.new_caches(1, 6)
    first = stack.prefill(x[:3], stack.prefill_state(3, 0, caches=caches))
    second = stack.prefill(x[3:], stack.prefill_state(3, 3, caches=caches))
    torch.testing.assert_close(torch.cat((first, second)), full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(caches[2][0], full_state.caches[2][0], rtol=1e-4, atol=1e-4)


def test_moe_grouped_mm_and_loop_agree_with_reference():
    s = ts.shard_moe(ModelSpec(**{**TINY_MOE.__dict__, "experts_per_token": 2}), ep=2)
    routing = ts.route_uniform(9, s, seed=5)
    outs = {}
    for impl in ("loop", "grouped_mm"):
        if impl == "grouped_mm" and not ts.grouped_mm_available("cpu", "fp32"):
            continue
        block = ts.MoEBlock(s, "cpu", torch.float32, impl, seed=2)
        gen = torch.Generator().manual_seed(0)
        xr, xt = torch.randn(routing.rows, 64, generator=gen), torch.randn(9, 64, generator=gen)
        outs[impl] = block.forward(xr, xt, routing, block.offsets(routing))
    block = ts.MoEBlock(s, "cpu", torch.float32, "loop", seed=2)
    start, ref = 0, []
    for e, rows in enumerate(routing.padded):
        gu = xr[start : start + rows] @ block.w_gate_up[e]
        ref.append((torch.nn.functional.silu(gu[:, :32]) * gu[:, 32:]) @ block.w_down[e])
        start += rows
    for routed, shared in outs.values():
        torch.testing.assert_close(routed, torch.cat(ref), rtol=1e-4, atol=1e-5)
        assert shared.shape == (9, 64)


# --- measurements give rows -----------------------------------------------------------------------------------------


def test_measure_model_decode_and_prefill_rows(backend):
    df = backend.measure_model(TINY, 2, SMALL_GRID)
    assert_ok_rows(df, "layer_ms")
    assert (df["kind"] == "step").all() and (df["tp"] == 2).all() and (df["model"] == "tiny-test").all()
    decode, prefill = df[df["phase"] == "decode"], df[df["phase"] == "prefill"]
    assert sorted(zip(decode["batch"], decode["context"])) == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert (decode["tokens"] == decode["batch"]).all()
    assert np.isfinite(decode["lm_head_ms"]).all() and (decode["lm_head_ms"] > 0).all()
    assert prefill["lm_head_ms"].isna().all()
    assert sorted(zip(prefill["tokens"], prefill["context"])) == [(8, 8), (8, 16)]
    for row, d in zip(df.itertuples(), details(df)):
        assert d["weight_bytes_layer"] == 18432 * 4 and d["layers_timed"] == 2 and d["graph"] is False
        assert "rope" in d["includes"] and "kv_append" in d["includes"]
        assert d["ms_min"] <= row.layer_ms <= d["ms_max"]
        if row.phase == "decode" and row.batch == 2 and row.context == 8:
            assert d["flops_layer"] == 2 * 18432 * 2 + 4 * 2 * 2 * 8 * 16 == 75776
            assert d["kv_bytes_layer"] == 2 * 2 * 8 * 16 * 4 == 2048
            assert d["lm_head_weight_bytes"] == 64 * 128 * 4
        if row.phase == "prefill" and row.context == 16:
            assert d["prior_context"] == 8 and d["flops_layer"] == 2 * 18432 * 8 + 2 * 2 * 16 * 8 * 24


def test_measure_ops_rows_with_shapes_bytes_and_flops(backend):
    grid = ts.OpGrid(gemm=(ts.GemmShape(4, 32, 16),), attn=(ts.AttnShape(2, 8, 2, 2, 16),),
                     kv_append=(ts.KvAppendShape(2, 8, 2, 16),), rope=(ts.RopeShape(3, 4, 2, 16, 32),),
                     copy_elements=(1000,))
    df = backend.measure_ops(grid, model="tiny-test", tp=1)
    assert_ok_rows(df, "op_ms")
    assert df["op"].tolist() == ["gemm", "attn_decode", "kv_append", "rope", "copy"]
    d = dict(zip(df["op"], details(df)))
    assert (d["gemm"]["m"], d["gemm"]["n"], d["gemm"]["k"]) == (4, 32, 16)
    assert d["gemm"]["flops_layer"] == 2 * 4 * 32 * 16 and d["gemm"]["weight_bytes_layer"] == 16 * 32 * 4
    assert d["gemm"]["copies"] == math.ceil(ts.GEMM_CACHE_DEFEAT_BYTES_CPU / 2048) or d["gemm"]["copies"] == 64
    assert d["attn_decode"]["kv_bytes_layer"] == 2 * 2 * 8 * 2 * 16 * 4
    assert d["attn_decode"]["flops_layer"] == 4 * 2 * 4 * 8 * 16
    assert d["kv_append"]["kv_bytes_layer"] == 2 * 2 * 2 * 16 * 4
    assert d["copy"]["weight_bytes_layer"] == 2 * 1000 * 4
    assert (df["model"] == "tiny-test").all()


def test_measure_moe_rows_both_implementations(backend):
    for impl in ("loop", "grouped_mm"):
        df = backend.measure_moe(TINY_MOE, ep=2, batches=(3,), impl=impl)
        assert_ok_rows(df, "op_ms")
        assert df["op"].tolist() == ["moe_ffn"] and df["ep"].tolist() == [2] and df["tokens"].tolist() == [32]
        d = details(df)[0]
        assert d["impl"] == impl and d["routed_assignments"] == 6 and d["active_experts"] == 2
        assert d["weight_bytes_layer"] == 73728 and d["flops_layer"] == 110592


def test_catalog_tiny_models_run(backend):
    dense = catalog_model("tiny-llama", TINY)
    moe = catalog_model("tiny-moe", ModelSpec(**{**TINY_MOE.__dict__, "experts_per_token": 2}))
    assert_ok_rows(backend.measure_model(dense, 1, ts.StepGrid(batches=(2,), contexts=(32,), prefill_tokens=(16,))),
                   "layer_ms")
    assert_ok_rows(backend.measure_moe(moe, 1, batches=(1, 8)), "op_ms")


def test_time_budget_stops_before_starting(backend):
    b = ts.TorchStepBackend("cpu", "fp32", layers_timed=1, warmup=0, replays=1, progress=False, time_budget_s=0)
    assert len(b.measure_model(TINY, 1, SMALL_GRID)) == 0
    assert b.stopped_early


# --- sinks ----------------------------------------------------------------------------------------------------------


def test_csv_sink_keeps_rows_of_an_interrupted_collection(backend, tmp_path):
    path = tmp_path / "rows.csv"
    sink = CsvSink(path)
    seen = []

    def on_row(df):
        sink(df)
        seen.append(df)
        if len(seen) == 3:
            raise RuntimeError("interrupted after 3 measurements")

    with pytest.raises(RuntimeError, match="interrupted"):
        backend.measure_model(TINY, 1, SMALL_GRID, on_row=on_row)
    rows = pd.read_csv(path)
    assert len(rows) == 3 and list(rows.columns) == list(COLUMNS)
    assert (rows["layer_ms"] > 0).all()
    # a new sink on the same file appends without a second header
    CsvSink(path)(seen[0])
    assert len(pd.read_csv(path)) == 4


def test_store_sink_appends_each_measurement(backend, tmp_path):
    store_mod = pytest.importorskip("collect.store", reason="collect.store not written yet")
    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    sink = make_sink(tmp_path / "rows.csv", url)
    df = backend.measure_ops(ts.OpGrid(gemm=(ts.GemmShape(2, 16, 16), ts.GemmShape(4, 16, 16))), on_row=sink)
    assert len(df) == 2
    assert store_mod.Store(url).count(kind="op") == 2
    assert len(pd.read_csv(tmp_path / "rows.csv")) == 2


# --- collectives ----------------------------------------------------------------------------------------------------


def test_collectives_gloo_two_processes():
    got = []
    df = measure_collectives(2, (1024, 8192), "gloo", iters=3, warmup=1, progress=False, on_row=got.append)
    assert len(got) == 6 and len(df) == 6
    assert_ok_rows(df, "op_ms")
    assert sorted(set(df["op"])) == sorted(COLLECTIVES)
    assert (df["num_gpus"] == 2).all()
    sizes = {(op, d["message_bytes"]) for op, d in zip(df["op"], details(df))}
    assert sizes == {(op, size) for op in COLLECTIVES for size in (1024, 8192)}
    assert all(d["world_size"] == 2 and d["backend"] == "gloo" and d["busbw_gbps"] > 0 for d in details(df))
    with pytest.raises(InputError):
        measure_collectives(1, (1024,))


# --- CLI helpers and the GPU script's CPU path ----------------------------------------------------------------------


def tiny_model_arg(tmp_path: Path) -> str:
    """`tiny-llama` when the catalog has it, else a config.json describing TINY."""
    if catalog_model("tiny-llama", TINY) is not TINY:
        return "tiny-llama"
    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "num_hidden_layers": 3, "vocab_size": 256, "intermediate_size": 128}
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    return str(path)


def test_collect_torch_from_cli_arguments(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")  # an option the collect command already has is reused, not redefined
    ts.add_torch_arguments(parser)
    csv = tmp_path / "out.csv"
    args = parser.parse_args(["--model", tiny_model_arg(tmp_path), "--device", "cpu", "--tp", "1,2",
                              "--batches", "1", "--contexts", "16", "--prefill-tokens", "8", "--layers-timed", "1",
                              "--replays", "1", "--warmup", "0", "--csv", str(csv)])
    df = ts.collect_torch(args, store=None)
    assert len(df) == 4 and sorted(df["tp"].tolist()) == [1, 1, 2, 2]
    assert len(pd.read_csv(csv)) == 4
    with pytest.raises(InputError):
        ts.collect_torch({"measure": "steps", "model": "tiny-llama"})


def test_gpu_collect_script_cpu_path(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts" / "gpu_collect.py"), "--device", "cpu", "--models",
           tiny_model_arg(tmp_path), "--time-budget-s", "10", "--phases", "ops,dense", "--tps", "1,2",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.read_csv(out / "torch_probe.csv")
    meta = json.loads((out / "device.json").read_text())
    assert meta["finished"] and meta["gpu"] == "cpu" and meta["device"]["torch"] == torch.__version__
    assert set(rows["kind"]) == {"step", "op"} and (rows["status"] == "ok").all()
    assert sum(meta["rows"].values()) == len(rows)


def test_gpu_names_map_to_catalog():
    assert ts.catalog_gpu_name("NVIDIA H200") == "h200"
    assert ts.catalog_gpu_name("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert ts.catalog_gpu_name("NVIDIA H100 PCIe") == "h100-pcie"
    assert ts.catalog_gpu_name("NVIDIA A100-SXM4-40GB") == "a100-40g"
    assert ts.catalog_gpu_name("NVIDIA A100-SXM4-80GB") == "a100-80g"
    assert ts.catalog_gpu_name("NVIDIA GH200 480GB") == "gh200"
    try:
        from features.catalog import gpu_catalog

        known = set(gpu_catalog())
    except OSError:
        pytest.skip("GPU catalog not written yet")
    for name in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S"):
        assert ts.catalog_gpu_name(name) in known
