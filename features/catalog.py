"""Catalogs of models, GPUs and workload presets, and name resolution (catalog name, HF id, or config.json)."""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import fields
from pathlib import Path

import yaml

from features.errors import InputError, UnknownNameError
from features.specs import GPUSpec, LengthDist, ModelSpec, Workload

DATA_DIR = Path(os.environ.get("LAYOUTCAST_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))
CATALOG_DIR = DATA_DIR / "catalog"


def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


@functools.lru_cache(maxsize=None)
def model_catalog() -> dict[str, ModelSpec]:
    """All catalog models by name (data/catalog/models.yaml)."""
    raw = yaml.safe_load((CATALOG_DIR / "models.yaml").read_text())
    allowed = {f.name for f in fields(ModelSpec)}
    out: dict[str, ModelSpec] = {}
    for name, facts in raw.items():
        facts = dict(facts)
        facts.pop("aliases", None)
        unknown = set(facts) - allowed
        if unknown:
            raise ValueError(f"models.yaml entry {name}: unknown fields {sorted(unknown)}")
        out[name] = ModelSpec(name=name, **facts)
    return out


@functools.lru_cache(maxsize=None)
def _model_aliases() -> dict[str, str]:
    raw = yaml.safe_load((CATALOG_DIR / "models.yaml").read_text())
    aliases: dict[str, str] = {}
    for name, facts in raw.items():
        aliases[_norm(name)] = name
        if facts.get("hf_id"):
            aliases[_norm(facts["hf_id"].split("/")[-1])] = name
        for a in facts.get("aliases", []) or []:
            aliases[_norm(a.split("/")[-1])] = name
    return aliases


@functools.lru_cache(maxsize=None)
def gpu_catalog() -> dict[str, GPUSpec]:
    """All catalog GPUs by name (data/catalog/gpus.yaml)."""
    raw = yaml.safe_load((CATALOG_DIR / "gpus.yaml").read_text())
    out = {}
    for name, facts in raw.items():
        facts = dict(facts)
        facts["aliases"] = tuple(facts.get("aliases", ()) or ())
        out[name] = GPUSpec(name=name, **facts)
    return out


def resolve_model(name_or_path: str) -> ModelSpec:
    """A catalog name, an HF id whose last component matches one (case-insensitive), or a config.json path (or a
    directory holding one). A bare name that is in the catalog is the catalog's; `./name` reads a local directory."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise InputError("model name is empty")
    if not name_or_path.endswith(".json") and "/" not in name_or_path and os.sep not in name_or_path:
        # a bare name: the catalog's (no file-system lookups on the hot path); `./name` reads a local model directory
        found = _model_aliases().get(_norm(name_or_path))
        if found is not None:
            return model_catalog()[found]
    p = Path(name_or_path)
    if name_or_path.endswith(".json") or (p.exists() and p.is_file()) or (p.is_dir() and (p / "config.json").exists()):
        if p.is_dir():
            p = p / "config.json"
        return load_hf_config(p)
    key = _norm(name_or_path.split("/")[-1])
    aliases = _model_aliases()
    if key in aliases:
        return model_catalog()[aliases[key]]
    raise UnknownNameError("model", name_or_path, list(model_catalog()))


@functools.lru_cache(maxsize=None)
def _gpu_aliases() -> dict[str, str]:
    """Normalised GPU name or alias -> catalog name (the first GPU in catalog order that has it)."""
    out: dict[str, str] = {}
    for spec in gpu_catalog().values():
        for label in (spec.name, *spec.aliases):
            out.setdefault(_norm(label), spec.name)
    return out


def resolve_gpu(name: str) -> GPUSpec:
    """A catalog GPU name or one of its aliases."""
    cat = gpu_catalog()
    found = _gpu_aliases().get(_norm(str(name)))
    if found is not None:
        return cat[found]
    known = list(cat) + [a for s in cat.values() for a in s.aliases]
    raise UnknownNameError("GPU", str(name), known)


def model_names() -> list[str]:
    return sorted(model_catalog())


def gpu_names() -> list[str]:
    return sorted(gpu_catalog())


# --- workloads -------------------------------------------------------------------------------------------------

WORKLOAD_PRESETS: dict[str, Workload] = {
    "reasoning": Workload(
        "reasoning",
        isl=LengthDist("lognormal", median=100, sigma=0.5, max_tokens=2048),
        osl=LengthDist("lognormal", median=4500, sigma=0.8, max_tokens=32768),
    ),
    "chat": Workload(
        "chat",
        isl=LengthDist("lognormal", median=500, sigma=0.6, max_tokens=8192),
        osl=LengthDist("lognormal", median=300, sigma=0.6, max_tokens=4096),
    ),
}


def resolve_workload(spec: str | Workload, isl: int | None = None, osl: int | None = None) -> Workload:
    """`reasoning`, `chat`, `fixed:ISL/OSL`, or explicit `isl`/`osl` (fixed lengths)."""
    if isinstance(spec, Workload):
        return spec
    if isl is not None or osl is not None:
        if not isl or not osl or isl < 1 or osl < 1:
            raise InputError("--isl and --osl must both be given as positive token counts")
        return Workload(f"fixed:{isl}/{osl}", LengthDist("fixed", isl), LengthDist("fixed", osl))
    if spec is None:
        spec = "reasoning"
    s = str(spec).strip().lower()
    if s in WORKLOAD_PRESETS:
        return WORKLOAD_PRESETS[s]
    m = re.fullmatch(r"fixed:(\d+)/(\d+)", s)
    if m:
        i, o = int(m.group(1)), int(m.group(2))
        if i < 1 or o < 1:
            raise InputError(f"workload {spec!r}: lengths must be positive")
        return Workload(f"fixed:{i}/{o}", LengthDist("fixed", i), LengthDist("fixed", o))
    raise UnknownNameError("workload", str(spec), list(WORKLOAD_PRESETS) + ["fixed:ISL/OSL"])


def parse_length_dist(spec: str) -> LengthDist:
    """Inverse of `LengthDist.spec()`: `fixed:N` or `lognormal:median:sigma:max`."""
    parts = str(spec).split(":")
    if parts[0] == "fixed" and len(parts) == 2:
        return LengthDist("fixed", float(parts[1]))
    if parts[0] == "lognormal" and len(parts) == 4:
        return LengthDist("lognormal", float(parts[1]), float(parts[2]), int(parts[3]))
    raise InputError(f"malformed length distribution {spec!r}")


# --- HF config.json ---------------------------------------------------------------------------------------------

_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "bf16", "float8_e4m3fn": "fp8"}


def load_hf_config(path: str | Path) -> ModelSpec:
    """Parse a Hugging Face `config.json` (Llama, Qwen2/2.5/3, Qwen3-MoE, Mixtral, DeepSeek-V3, gpt-oss, ...)."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"model config {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"model config {str(path)!r} is a directory without a config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"model config {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise InputError(f"model config {str(path)!r} is not a JSON object")
    fallback = path.parent.name if path.name == "config.json" else path.stem
    name = cfg.get("_name_or_path") or fallback
    return model_from_hf_config(cfg, name=_norm(str(name).split("/")[-1]) or "custom")


def _hf_int(cfg: dict, name: str, *keys: str, default: int | None = None) -> int:
    """First present, non-null key of `keys` as an int; InputError naming the key when absent or not a number."""
    for k in keys:
        v = cfg.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
            raise InputError(f"model config {name!r}: {k!r} must be an integer, got {v!r}")
        return int(v)
    if default is None:
        raise InputError(f"model config {name!r} lacks {keys[0]!r}")
    return default


def _hf_weight_dtype(cfg: dict) -> str:
    """Released weight dtype: `torch_dtype`, overridden by `quantization_config` (fp8, mxfp4/nvfp4, int4)."""
    dtype = _DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), "bf16")
    q = cfg.get("quantization_config") or {}
    if not isinstance(q, dict):
        return dtype
    method = str(q.get("quant_method", "")).lower()
    algo = str(q.get("quant_algo", "")).lower()
    if method == "fp8" or "fp8" in algo:
        dtype = "fp8"
    if method in ("mxfp4", "nvfp4") or "fp4" in algo:
        dtype = "fp4"
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        for g in groups.values() if isinstance(groups, dict) else []:
            w = (g or {}).get("weights") or {}
            bits, kind = w.get("num_bits"), str(w.get("type", "int"))
            if bits == 4:
                dtype = "int4" if kind == "int" else "fp4"
            elif bits == 8:
                dtype = "int8" if kind == "int" else "fp8"
            break
    if str(cfg.get("expert_dtype", "")).lower() == "fp4":  # DeepSeek-V4: MXFP4 experts hold most of the bytes
        dtype = "fp4"
    return dtype


def _linear_attention_state_tokens(cfg: dict, kv_heads: int, head_dim: int) -> int:
    """Tokens of full-attention KV (K+V) holding as many elements as one Gated-DeltaNet layer's constant state."""
    v_heads = int(cfg.get("linear_num_value_heads") or 0)
    k_heads = int(cfg.get("linear_num_key_heads") or 0)
    k_dim = int(cfg.get("linear_key_head_dim") or 0)
    v_dim = int(cfg.get("linear_value_head_dim") or 0)
    conv = int(cfg.get("linear_conv_kernel_dim") or 0)
    state = v_heads * k_dim * v_dim + (2 * k_heads * k_dim + v_heads * v_dim) * max(conv - 1, 0)
    return max(1, round(state / (2 * kv_heads * head_dim)))


def _hf_sliding_layers(cfg: dict, arch: str, layers: int, kv_heads: int, head_dim: int) -> tuple[int, int]:
    """(window tokens, number of layers whose per-sequence KV is bounded by it) for windowed/hybrid attention."""
    window = cfg.get("sliding_window")
    window = int(window) if isinstance(window, (int, float)) and not isinstance(window, bool) and window > 0 else 0
    max_pos = cfg.get("max_position_embeddings")
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        types = [str(t) for t in layer_types[:layers]]
        n_slide = sum("sliding" in t or "chunked" in t for t in types) if window else 0
        n_linear = sum("linear" in t for t in types)
        lin_window = _linear_attention_state_tokens(cfg, kv_heads, head_dim) if n_linear else 0
        if not n_slide + n_linear:
            return 0, 0
        total = n_slide * window + n_linear * lin_window  # one window holding the same total bytes
        return max(1, round(total / (n_slide + n_linear))), n_slide + n_linear
    if cfg.get("full_attention_interval") and cfg.get("linear_num_value_heads"):  # Qwen3-Next without layer_types
        n_linear = layers - layers // int(cfg["full_attention_interval"])
        return _linear_attention_state_tokens(cfg, kv_heads, head_dim), n_linear
    if arch.startswith("llama4") and cfg.get("attention_chunk_size"):  # chunked local attention on RoPE layers
        flags = cfg.get("no_rope_layers")
        if isinstance(flags, list) and flags:
            n_chunked = sum(1 for f in flags[:layers] if f)
        else:
            interval = int(cfg.get("no_rope_layer_interval") or 4)
            n_chunked = layers - layers // interval
        return int(cfg["attention_chunk_size"]), n_chunked
    ratios = cfg.get("compress_ratios")
    if isinstance(ratios, list) and ratios and window:  # DeepSeek-V4: windowed + compressed-history attention
        r = [float(x) for x in ratios[:layers]]
        entry = head_dim  # one shared K=V entry per kept token
        idx = int(cfg.get("index_head_dim") or 0)
        elems = sum(entry / x + (idx / x if x <= 4 else 0) for x in r if x > 0)
        n_full = min(layers, max(1, round(elems / (2 * kv_heads * head_dim))))
        return window, layers - n_full
    if not window or (isinstance(max_pos, int) and window >= max_pos):
        return 0, 0
    if cfg.get("use_sliding_window") is False:
        return 0, 0
    if arch == "gpt_oss" or arch == "gemma2":
        return window, layers // 2
    if cfg.get("sliding_window_pattern"):
        return window, layers - layers // int(cfg["sliding_window_pattern"])
    if cfg.get("use_sliding_window") and cfg.get("max_window_layers") is not None:
        return window, max(0, layers - int(cfg["max_window_layers"]))
    return window, layers


_PLAIN_MLP_ARCHS = {"gptj", "opt", "bloom", "falcon", "RefinedWeb", "phi", "gpt2", "gpt_neox", "gpt_bigcode"}


def model_from_hf_config(cfg: dict, name: str = "custom") -> ModelSpec:
    """Build a ModelSpec from a config dict; raises InputError naming the missing or malformed key."""
    top_arch = cfg.get("model_type")
    if isinstance(cfg.get("text_config"), dict) and "hidden_size" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    arch = str(top_arch or cfg.get("model_type") or "llama")

    hidden = _hf_int(cfg, name, "hidden_size", "n_embd", "n_embed", "d_model")
    heads = _hf_int(cfg, name, "num_attention_heads", "n_head")
    layers = _hf_int(cfg, name, "num_hidden_layers", "n_layer")
    vocab = _hf_int(cfg, name, "vocab_size")
    if heads <= 0:
        raise InputError(f"model config {name!r}: num_attention_heads must be positive")
    per_layer_kv = cfg.get("num_key_value_heads_per_layer")  # DeciLM variable GQA: vLLM serves the maximum
    if isinstance(per_layer_kv, list) and per_layer_kv:
        kv_heads = int(max(per_layer_kv))
    elif cfg.get("multi_query") and not cfg.get("new_decoder_architecture"):
        kv_heads = 1
    else:
        kv_heads = _hf_int(cfg, name, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=heads)

    kv_lora = _hf_int(cfg, name, "kv_lora_rank", default=0)
    rope_hd = _hf_int(cfg, name, "qk_rope_head_dim", default=0)
    nope_hd = _hf_int(cfg, name, "qk_nope_head_dim", default=0)
    if kv_lora > 0 and nope_hd + rope_hd > 0:
        head_dim = nope_hd + rope_hd  # MLA: the q.k dot-product width (HF's head_dim there is the rope part)
    else:
        head_dim = _hf_int(cfg, name, "head_dim", "kv_channels", default=hidden // heads)

    n_exp = _hf_int(cfg, name, "num_local_experts", "n_routed_experts", "num_experts", default=0)
    topk = _hf_int(cfg, name, "num_experts_per_tok", "experts_per_token", "moe_topk", default=2 if n_exp else 0)
    dense_inter = _hf_int(cfg, name, "intermediate_size_mlp", "intermediate_size", "ffn_dim", "n_inner",
                          "ffn_hidden_size", default=0)
    if arch == "qwen" and dense_inter:  # Qwen v1 reports gate+up together
        dense_inter //= 2
    moe_inter = _hf_int(cfg, name, "moe_intermediate_size", default=0)
    if n_exp and not moe_inter:  # Mixtral / gpt-oss / MiniMax / Llama-4 give the expert width as intermediate_size
        moe_inter = _hf_int(cfg, name, "intermediate_size", default=dense_inter)
    inter = dense_inter or (moe_inter if n_exp else 4 * hidden)

    shared = _hf_int(cfg, name, "n_shared_experts", "num_shared_experts", default=0)
    if not shared and (cfg.get("shared_expert_intermediate_size") or arch.startswith("llama4")):
        shared = 1
    first_dense = _hf_int(cfg, name, "first_k_dense_replace", default=0)
    step = _hf_int(cfg, name, "interleave_moe_layer_step", default=1)
    if n_exp and step > 1:  # Llama-4 Maverick: MoE on every `step`-th layer (counted as leading dense layers)
        first_dense = layers - layers // step
    mlp_only = cfg.get("mlp_only_layers")
    if n_exp and not first_dense and isinstance(mlp_only, list):
        first_dense = len(mlp_only)

    sliding, n_sliding = _hf_sliding_layers(cfg, arch, layers, kv_heads, head_dim)
    spec = ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        architecture=arch,
        ffn_matrices=2 if arch in _PLAIN_MLP_ARCHS and not cfg.get("use_gated_mlp") else 3,
        native_dtype=_hf_weight_dtype(cfg),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        num_experts=n_exp,
        experts_per_token=topk if n_exp else 0,
        num_shared_experts=shared if n_exp else 0,
        moe_intermediate_size=moe_inter if n_exp else 0,
        first_k_dense_layers=first_dense if n_exp else 0,
        kv_lora_rank=kv_lora,
        q_lora_rank=_hf_int(cfg, name, "q_lora_rank", default=0),
        qk_rope_head_dim=rope_hd,
        qk_nope_head_dim=nope_hd,
        v_head_dim=_hf_int(cfg, name, "v_head_dim", default=0),
        sliding_window=sliding,
        num_sliding_layers=n_sliding,
    )
    validate_model(spec)
    return spec


def validate_model(m: ModelSpec) -> None:
    """Reject configs that cannot describe a transformer (zero or inconsistent sizes)."""
    for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size"):
        if getattr(m, f) <= 0:
            raise InputError(f"model {m.name!r}: {f} must be positive")
    if m.num_heads % m.num_kv_heads:
        raise InputError(f"model {m.name!r}: {m.num_heads} heads not divisible by {m.num_kv_heads} KV heads")
    if m.is_moe and not (0 < m.experts_per_token <= m.num_experts):
        raise InputError(f"model {m.name!r}: top-k {m.experts_per_token} invalid for {m.num_experts} experts")
    if m.is_moe and m.moe_intermediate_size <= 0:
        raise InputError(f"model {m.name!r}: a MoE model needs a positive moe_intermediate_size")
    if m.is_moe and not (0 <= m.first_k_dense_layers < m.num_layers):
        raise InputError(f"model {m.name!r}: first_k_dense_layers {m.first_k_dense_layers} "
                         f"must be below {m.num_layers} layers")
    if not (0 <= m.num_sliding_layers <= m.num_layers) or (m.num_sliding_layers > 0 and m.sliding_window <= 0):
        raise InputError(f"model {m.name!r}: {m.num_sliding_layers} sliding-window layers need a positive window "
                         f"and at most {m.num_layers} layers")
