"""Model and GPU catalogs: facts, name resolution, HF config.json parsing, and coverage of the shared data sets."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from features import catalog
from features.catalog import (CATALOG_DIR, load_hf_config, model_catalog, resolve_gpu, resolve_model,
                              validate_model)
from features.errors import InputError, UnknownNameError
from features.specs import DTYPE_BYTES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf_configs"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data sets not present at {SHARED}")

REQUIRED_MODELS = """
llama-3.1-8b llama-3.1-70b llama-3.1-405b llama-3.3-70b llama-3-8b llama-3-70b llama-2-7b llama-2-13b llama-2-70b
llama-7b codellama-34b mistral-7b mixtral-8x7b mixtral-8x22b llama-4-scout llama-4-maverick qwen2-7b qwen2-72b
qwen1.5-7b qwen-72b qwen2.5-7b qwen2.5-14b qwen2.5-32b qwen2.5-72b qwen3-8b qwen3-32b qwen3-30b-a3b qwen3-235b-a22b
qwen3.5-397b-a17b qwen3.6-35b-a3b deepseek-r1-distill-llama-8b deepseek-r1-distill-qwen-14b
deepseek-r1-distill-qwen-32b deepseek-r1-distill-llama-70b deepseek-r1 deepseek-v3 deepseek-v3.1 deepseek-v4-flash
gpt-oss-120b gpt-oss-20b minimax-m2.5 kimi-k2.5 glm-5 gpt-j-6b falcon-180b decilm-7b aquila-7b bloom-7b1 opt-6.7b
internlm-20b phi-2 tiny-llama tiny-moe
""".split()
REQUIRED_GPUS = """
a100-40g a100-80g a100-pcie-80g h100-sxm h100-pcie h100-nvl h200 gh200 b200 b300 gb200 gb300 l40s l40 mi250 mi300x
rtx-6000-pro intel-max-1550 gaudi2 sn40l cpu
""".split()
# fields an HF config cannot know (or that only the catalog documents)
_NOT_IN_HF_CONFIG = {"name", "hf_id", "notes"}


def _norm(s: str) -> str:
    return re.sub(r"[\s_]+", "-", s.strip().lower())


# --- the catalogs themselves -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fname", ["models.yaml", "gpus.yaml"])
def test_catalog_files_say_where_facts_come_from(fname):
    head = (CATALOG_DIR / fname).read_text().split("\n", 12)
    assert any(line.startswith("#") and "come from" in line for line in head), f"{fname} lacks its provenance header"


def test_every_required_model_is_in_the_catalog_and_valid():
    cat = model_catalog()
    missing = sorted(set(REQUIRED_MODELS) - set(cat))
    assert not missing, f"catalog lacks {missing}"
    for name, m in cat.items():
        validate_model(m)
        assert m.native_dtype in DTYPE_BYTES, name
        assert m.architecture, name
        assert m.intermediate_size > 0, name
        assert 0 <= m.num_sliding_layers <= m.num_layers, name
        if not name.startswith("tiny-"):
            assert "/" in m.hf_id, f"{name} needs its canonical HF id"


def test_every_required_gpu_is_in_the_catalog_with_sane_rates():
    cat = catalog.gpu_catalog()
    missing = sorted(set(REQUIRED_GPUS) - set(cat))
    assert not missing, f"catalog lacks {missing}"
    for name, g in cat.items():
        assert g.memory_gb > 0 and g.hbm_bandwidth_gbps > 0 and g.bf16_tflops > 0, name
        assert g.link_bandwidth_gbps > 0 and g.gpus_per_node >= 1 and g.internode_bandwidth_gbps > 0, name
        assert g.fp8_tflops == 0 or g.fp8_tflops >= g.bf16_tflops, name
        assert g.fp4_tflops == 0 or (g.fp8_tflops > 0 and g.fp4_tflops >= g.fp8_tflops), name
        assert g.notes, f"{name} should say what its figures are"


def test_gpu_datasheet_anchors():
    """A few datasheet numbers the physics leans on (dense rates, one-direction links)."""
    h100, h200, b200, l40s = (resolve_gpu(n) for n in ("h100-sxm", "h200", "b200", "l40s"))
    assert (h100.memory_gb, h100.hbm_bandwidth_gbps, h100.bf16_tflops, h100.fp8_tflops) == (80, 3350, 989, 1979)
    assert h100.link_bandwidth_gbps == 450 and h200.link_bandwidth_gbps == 450 and b200.link_bandwidth_gbps == 900
    assert (h200.memory_gb, h200.hbm_bandwidth_gbps) == (141, 4800)
    assert b200.fp4_tflops == 2 * b200.fp8_tflops == 4 * b200.bf16_tflops
    assert resolve_gpu("a100-80g").fp8_tflops == 0 and resolve_gpu("h100").fp4_tflops == 0
    assert l40s.link_bandwidth_gbps == 32  # no NVLink: PCIe Gen4 x16
    assert resolve_gpu("cpu").hbm_bandwidth_gbps < 100


@pytest.mark.parametrize("fname", ["models.yaml", "gpus.yaml"])
def test_names_and_aliases_are_unambiguous(fname):
    raw = yaml.safe_load((CATALOG_DIR / fname).read_text())
    owner: dict[str, str] = {}
    for name, facts in raw.items():
        keys = {_norm(name)}
        if facts.get("hf_id"):
            keys.add(_norm(facts["hf_id"].split("/")[-1]))
        keys |= {_norm(a.split("/")[-1]) if fname == "models.yaml" else _norm(a) for a in facts.get("aliases") or []}
        for k in keys:
            assert owner.setdefault(k, name) == name, f"{k!r} names both {owner[k]} and {name}"


def test_deepseek_mla_moe_facts():
    for name in ("deepseek-v3", "deepseek-r1", "deepseek-v3.1"):
        m = resolve_model(name)
        mla = (m.kv_lora_rank, m.q_lora_rank, m.qk_rope_head_dim, m.qk_nope_head_dim, m.v_head_dim)
        assert mla == (512, 1536, 64, 128, 128)
        assert (m.num_layers, m.first_k_dense_layers, m.num_moe_layers) == (61, 3, 58)
        assert (m.num_experts, m.experts_per_token, m.num_shared_experts) == (256, 8, 1)
        assert (m.moe_intermediate_size, m.intermediate_size, m.hidden_size, m.num_heads) == (2048, 18432, 7168, 128)
        assert m.native_dtype == "fp8" and m.is_mla and m.is_moe


def test_sliding_window_and_tiny_models():
    oss = resolve_model("gpt-oss-120b")
    assert (oss.sliding_window, oss.num_sliding_layers, oss.num_full_attention_layers) == (128, 18, 18)
    assert resolve_model("gpt-oss-20b").num_sliding_layers == 12
    t = resolve_model("tiny-llama")
    assert (t.architecture, t.num_layers, t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim,
            t.intermediate_size, t.vocab_size) == ("llama", 2, 128, 4, 2, 32, 256, 1024)
    moe = resolve_model("tiny-moe")
    assert (moe.architecture, moe.num_layers, moe.hidden_size, moe.num_heads, moe.num_kv_heads, moe.head_dim,
            moe.num_experts, moe.experts_per_token, moe.moe_intermediate_size, moe.vocab_size) == \
        ("qwen3_moe", 2, 128, 4, 2, 32, 8, 2, 64, 1024)
    assert moe.num_moe_layers == 2


# --- name resolution -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling, expected", [
    ("llama-3.1-8b", "llama-3.1-8b"),
    ("LLAMA-3.1-8B", "llama-3.1-8b"),
    ("meta-llama/Llama-3.1-8B", "llama-3.1-8b"),
    ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
    ("nvidia/Llama-3.1-8B-Instruct-FP8", "llama-3.1-8b"),
    ("LLaMA v3.1 70B", "llama-3.1-70b"),
    ("Llama 3.1 70B", "llama-3.1-70b"),
    ("meta-llama/Meta-Llama-3-70B", "llama-3-70b"),
    ("LLaMA v2 7B", "llama-2-7b"),
    ("Mixtral 8x7B", "mixtral-8x7b"),
    ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b"),
    ("nvidia/DeepSeek-R1-NVFP4", "deepseek-r1"),
    ("deepseek-ai/deepseek-r1-distill-qwen-32b", "deepseek-r1-distill-qwen-32b"),
    ("qwen2.5-7b", "qwen2.5-7b"),
    ("llama3.1-405b", "llama-3.1-405b"),
    ("huggyllama/llama-7b", "llama-7b"),
    ("qwen3_30b_a3b", "qwen3-30b-a3b"),
])
def test_resolve_model_by_name_hf_id_and_case(spelling, expected):
    assert resolve_model(spelling).name == expected


@pytest.mark.parametrize("spelling, expected", [
    ("h100", "h100-sxm"), ("H100_SXM", "h100-sxm"), ("H100 80GB HBM3", "h100-sxm"), ("Nvidia H100 GPU", "h100-sxm"),
    ("h200_sxm", "h200"), ("H200 141GB", "h200"), ("NVIDIA H200", "h200"), ("GH200 120GB", "gh200"),
    ("b200_sxm", "b200"), ("b300_sxm", "b300"), ("RTX6000ProBW", "rtx-6000-pro"), ("Intel PVC GPU", "intel-max-1550"),
    ("Intel Max 1550", "intel-max-1550"), ("Habana Gaudi2", "gaudi2"), ("SambaNova SN40L", "sn40l"), ("CPU", "cpu"),
])
def test_resolve_gpu_aliases(spelling, expected):
    assert resolve_gpu(spelling).name == expected


def test_unknown_names_suggest_close_ones():
    with pytest.raises(UnknownNameError) as e:
        resolve_model("llama-3.1-8")
    assert "llama-3.1-8b" in e.value.suggestions and isinstance(e.value, InputError)
    assert "did you mean" in str(e.value)
    with pytest.raises(UnknownNameError) as e:
        resolve_gpu("h200x")
    assert "h200" in e.value.suggestions
    with pytest.raises(InputError):
        resolve_model("  ")


def test_resolve_model_from_config_path_and_directory(tmp_path):
    cfg = json.loads((FIXTURES / "qwen3-32b.json").read_text())
    d = tmp_path / "Qwen3-32B"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    by_dir, by_file = resolve_model(str(d)), resolve_model(str(d / "config.json"))
    assert by_dir == by_file and by_dir.name == "qwen3-32b"
    assert resolve_model(str(FIXTURES / "qwen3-32b.json")).name == "qwen3-32b"


# --- HF config.json parsing ------------------------------------------------------------------------------------

FIXTURE_NAMES = ["llama-3.1-8b", "qwen2.5-32b", "qwen3-32b", "qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v3",
                 "gpt-oss-120b", "qwen3.5-397b-a17b", "llama-4-maverick"]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_hf_config_gives_the_catalog_facts(name):
    parsed, ref = load_hf_config(FIXTURES / f"{name}.json"), model_catalog()[name]
    assert parsed.name == name
    diffs = {f.name: (getattr(parsed, f.name), getattr(ref, f.name)) for f in dataclasses.fields(ref)
             if f.name not in _NOT_IN_HF_CONFIG and getattr(parsed, f.name) != getattr(ref, f.name)}
    assert not diffs, f"config.json vs catalog (parsed, catalog): {diffs}"


def test_hf_config_architecture_specifics():
    ds = load_hf_config(FIXTURES / "deepseek-v3.json")
    assert ds.head_dim == 192 and ds.native_dtype == "fp8" and ds.num_moe_layers == 58
    oss = load_hf_config(FIXTURES / "gpt-oss-120b.json")
    assert (oss.native_dtype, oss.num_sliding_layers, oss.sliding_window, oss.experts_per_token) == ("fp4", 18, 128, 4)
    q25 = load_hf_config(FIXTURES / "qwen2.5-32b.json")
    assert q25.num_sliding_layers == 0  # use_sliding_window false: the 131072 window is inert
    mix = load_hf_config(FIXTURES / "mixtral-8x7b.json")
    assert mix.moe_intermediate_size == mix.intermediate_size == 14336 and mix.num_shared_experts == 0
    q35 = load_hf_config(FIXTURES / "qwen3.5-397b-a17b.json")
    assert (q35.architecture, q35.num_full_attention_layers, q35.num_shared_experts) == ("qwen3_5_moe", 15, 1)


def test_mistral_v01_window_applies_to_every_layer():
    cfg = {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
           "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 32000, "sliding_window": 4096,
           "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}
    m = catalog.model_from_hf_config(cfg, name="mistral-7b")
    ref = resolve_model("mistral-7b")
    assert (m.sliding_window, m.num_sliding_layers) == (ref.sliding_window, ref.num_sliding_layers) == (4096, 32)


def test_malformed_config_json_raises_input_error(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_hf_config(bad)
    bad.write_text("[1, 2, 3]")
    with pytest.raises(InputError, match="not a JSON object"):
        load_hf_config(bad)
    cfg = json.loads((FIXTURES / "llama-3.1-8b.json").read_text())
    bad.write_text(json.dumps({k: v for k, v in cfg.items() if k != "hidden_size"}))
    with pytest.raises(InputError, match="hidden_size"):
        load_hf_config(bad)
    bad.write_text(json.dumps({**cfg, "num_hidden_layers": "thirty-two"}))
    with pytest.raises(InputError, match="num_hidden_layers"):
        load_hf_config(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_hf_config(tmp_path / "missing.json")
    with pytest.raises(InputError):
        resolve_model(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("change, message", [
    ({"num_layers": 0}, "num_layers"),
    ({"num_kv_heads": 5}, "not divisible"),
    ({"head_dim": -1}, "head_dim"),
    ({"num_experts": 4, "experts_per_token": 8, "moe_intermediate_size": 64}, "top-k"),
    ({"num_experts": 8, "experts_per_token": 2, "moe_intermediate_size": 0}, "moe_intermediate_size"),
    ({"num_experts": 8, "experts_per_token": 2, "moe_intermediate_size": 64, "first_k_dense_layers": 2},
     "first_k_dense"),
    ({"num_sliding_layers": 3, "sliding_window": 16}, "sliding"),
    ({"num_sliding_layers": 1, "sliding_window": 0}, "sliding"),
])
def test_validate_model_rejects_bad_configs(change, message):
    bad = dataclasses.replace(resolve_model("tiny-llama"), **change)
    with pytest.raises(InputError, match=message):
        validate_model(bad)


def test_bad_hf_config_values_are_rejected():
    cfg = json.loads((FIXTURES / "qwen3-30b-a3b.json").read_text())
    with pytest.raises(InputError, match="not divisible"):
        catalog.model_from_hf_config({**cfg, "num_key_value_heads": 5}, name="x")
    with pytest.raises(InputError, match="top-k"):
        catalog.model_from_hf_config({**cfg, "num_experts_per_tok": 500}, name="x")


# --- coverage of the shared data sets --------------------------------------------------------------------------

def _csv_values(path: Path, *columns: str) -> set[str]:
    df = pd.read_csv(path, low_memory=False, usecols=lambda c: c in columns)
    return {str(v) for c in df.columns for v in df[c].dropna().unique()}


def _shared_model_strings() -> set[str]:
    pub = SHARED / "public"
    names = set()
    names |= _csv_values(pub / "trtllm_perf_overview" / "trtllm_perf_overview_throughput.csv", "model", "hf_model")
    names |= _csv_values(pub / "nvidia_dli_nim_genaiperf" / "trt_llm_0_9_0_dli.csv", "Model", "Custom Model Name")
    names |= _csv_values(pub / "nvidia_dli_nim_genaiperf" / "nim.csv", "task_inputs-model", "input_config-model")
    for f in ("silicon_sample_e2e.csv", "silicon_refs_subset.csv"):
        names |= _csv_values(pub / "aiconfigurator" / f, "model_path")
    for f in sorted((pub / "llm_inference_bench").glob("*.csv")):
        names |= _csv_values(f, "Model", "model_name", "speculative model")
    for mlp in (pub / "vidur_profiling" / "compute").glob("*/*/*/mlp.csv"):
        names.add(f"{mlp.parent.parent.name}/{mlp.parent.name}")
    for f in sorted((SHARED / "gpu_probe").glob("*.csv")):
        names |= _csv_values(f, "model")
    for meta in (pub / "aiconfigurator" / "fpm_golden_runs_vllm").rglob("vllm_metadata.json"):
        names.add(json.loads(meta.read_text())["requested"]["deployment_config"]["model"])
    return names


def _shared_gpu_strings() -> set[str]:
    pub = SHARED / "public"
    names = set()
    names |= _csv_values(pub / "trtllm_perf_overview" / "trtllm_perf_overview_throughput.csv", "gpu")
    names |= _csv_values(pub / "nvidia_dli_nim_genaiperf" / "trt_llm_0_9_0_dli.csv", "GPU")
    names |= _csv_values(pub / "nvidia_dli_nim_genaiperf" / "nim.csv", "task_inputs-GPU")
    for f in ("silicon_sample_e2e.csv", "silicon_refs_subset.csv"):
        names |= _csv_values(pub / "aiconfigurator" / f, "system")
    names |= {p.name for p in (pub / "aiconfigurator" / "op_perf").iterdir() if p.is_dir()}
    for f in sorted((pub / "llm_inference_bench").glob("*.csv")):
        names |= _csv_values(f, "Hardware")
    names |= {p.name for p in (pub / "vidur_profiling" / "compute").iterdir() if p.is_dir()}
    names |= {p.name for p in (pub / "vidur_profiling" / "network").iterdir() if p.is_dir()}
    for f in sorted((SHARED / "gpu_probe").glob("*.csv")):
        names |= _csv_values(f, "gpu")
    return names


@needs_shared
def test_every_model_string_in_the_shared_data_resolves():
    names = _shared_model_strings()
    assert len(names) > 80  # the scan found the data sets' columns
    unresolved = []
    for n in sorted(names):
        try:
            resolve_model(n)
        except UnknownNameError:
            unresolved.append(n)
    assert not unresolved, f"model strings with no catalog entry: {unresolved}"


@needs_shared
def test_every_gpu_string_in_the_shared_data_resolves():
    names = _shared_gpu_strings()
    assert len(names) > 25
    unresolved = []
    for n in sorted(names):
        try:
            resolve_gpu(n)
        except UnknownNameError:
            unresolved.append(n)
    assert not unresolved, f"GPU strings with no catalog entry: {unresolved}"


@needs_shared
def test_gpu_probe_shapes_match_the_catalog():
    """gpu_probe/README.md lists the shapes it timed: (layers, hidden, heads, kv, head_dim, FFN, vocab), MoE blocks."""
    text = (SHARED / "gpu_probe" / "README.md").read_text()
    dense = re.findall(r"([\w.\-]+) \((\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)", text)
    moe = re.findall(r"([\w.\-]+) \((\d+), (\d+), (\d+), (\d+), (\d+)\)", text)
    assert len(dense) >= 6 and len(moe) >= 4
    for name, *vals in dense:
        m = resolve_model(name)
        assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate_size,
                m.vocab_size) == tuple(map(int, vals)), name
    for name, *vals in moe:
        m = resolve_model(name)
        assert (m.hidden_size, m.moe_intermediate_size, m.num_experts, m.experts_per_token,
                m.num_shared_experts) == tuple(map(int, vals)), name


@needs_shared
def test_vidur_profiled_dimensions_match_the_catalog():
    """Vidur's per-model op profiles record heads, KV heads, hidden and FFN widths."""
    files = sorted((SHARED / "public" / "vidur_profiling" / "compute").glob("*/*/*/mlp.csv"))
    assert files
    for f in files:
        row = pd.read_csv(f, nrows=1).iloc[0]
        m = resolve_model(f"{f.parent.parent.name}/{f.parent.name}")
        assert (m.num_heads, m.num_kv_heads, m.hidden_size, m.intermediate_size) == \
            (row.n_head, row.n_kv_head, row.n_embd, row.n_expanded_embd), f
        assert row.vocab_size >= m.vocab_size and row.vocab_size - m.vocab_size < 1024, f  # Vidur pads Llama-2's vocab
