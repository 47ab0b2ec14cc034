"""Writes a Hugging Face style model folder (`config.json` only) for a ModelSpec, so engines run it with dummy weights.

vLLM's `load_format="dummy"` builds the model from `config.json` and fills the weights with random values: no
download and no tokenizer (prompts are token ids). Only architectures vLLM implements from these facts are mapped.
"""

from __future__ import annotations

import json
from pathlib import Path

from features.errors import InputError
from features.specs import ModelSpec

# our architecture name -> (HF model_type, HF architectures class)
HF_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "mixtral": ("mixtral", "MixtralForCausalLM"),
    "deepseek_v3": ("deepseek_v3", "DeepseekV3ForCausalLM"),
}
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
MIN_POSITION_EMBEDDINGS = 4096


def hf_config_dict(model: ModelSpec, max_position_embeddings: int = MIN_POSITION_EMBEDDINGS,
                   dtype: str = "bf16") -> dict:
    """The `config.json` contents describing `model` (unquantized, `dtype` weights) for its HF architecture."""
    if model.architecture not in HF_ARCHITECTURES:
        raise InputError(f"model {model.name!r}: no dummy-weight config for architecture {model.architecture!r} "
                         f"(supported: {', '.join(sorted(HF_ARCHITECTURES))})")
    if model.ffn_matrices != 3:
        raise InputError(f"model {model.name!r}: only gated (3-matrix) FFNs can be written as {model.architecture}")
    if model.num_sliding_layers:
        raise InputError(f"model {model.name!r}: sliding-window layers are not written into dummy configs")
    model_type, arch_class = HF_ARCHITECTURES[model.architecture]
    cfg: dict = {
        "_name_or_path": model.name,
        "architectures": [arch_class],
        "model_type": model_type,
        "hidden_size": int(model.hidden_size),
        "intermediate_size": int(model.intermediate_size),
        "num_attention_heads": int(model.num_heads),
        "num_key_value_heads": int(model.num_kv_heads),
        "head_dim": int(model.head_dim),
        "num_hidden_layers": int(model.num_layers),
        "vocab_size": int(model.vocab_size),
        "max_position_embeddings": int(max(max_position_embeddings, MIN_POSITION_EMBEDDINGS)),
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": bool(model.tie_word_embeddings),
        "torch_dtype": _TORCH_DTYPES.get(dtype, "bfloat16"),
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_bias": model.architecture == "qwen2",
        "use_cache": True,
    }
    if model.architecture in ("qwen3_moe", "mixtral"):
        if not model.is_moe:
            raise InputError(f"model {model.name!r}: architecture {model.architecture} needs experts")
        cfg["num_experts_per_tok"] = int(model.experts_per_token)
        if model.architecture == "mixtral":
            cfg["num_local_experts"] = int(model.num_experts)
            cfg["intermediate_size"] = int(model.moe_intermediate_size or model.intermediate_size)
        else:
            cfg.update(num_experts=int(model.num_experts), moe_intermediate_size=int(model.moe_intermediate_size),
                       decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    if model.architecture == "deepseek_v3":
        cfg.update(
            n_routed_experts=int(model.num_experts), num_experts_per_tok=int(model.experts_per_token),
            n_shared_experts=int(model.num_shared_experts), moe_intermediate_size=int(model.moe_intermediate_size),
            first_k_dense_replace=int(model.first_k_dense_layers), kv_lora_rank=int(model.kv_lora_rank),
            q_lora_rank=int(model.q_lora_rank) or None, qk_rope_head_dim=int(model.qk_rope_head_dim),
            qk_nope_head_dim=int(model.qk_nope_head_dim), v_head_dim=int(model.v_head_dim), n_group=1, topk_group=1,
            topk_method="noaux_tc", scoring_func="sigmoid", routed_scaling_factor=1.0, norm_topk_prob=True,
            moe_layer_freq=1,
        )
    return cfg


def write_model_folder(model: ModelSpec, folder: str | Path, max_position_embeddings: int = MIN_POSITION_EMBEDDINGS,
                       dtype: str = "bf16") -> Path:
    """Write `folder/config.json` for `model` (and `generation_config.json`, which vLLM reads); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_config_dict(model, max_position_embeddings, dtype)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    return folder


def stable_model_folder(model: ModelSpec, root: str | Path, max_position_embeddings: int = MIN_POSITION_EMBEDDINGS,
                        dtype: str = "bf16") -> Path:
    """The model folder for `model` under `root`, named by a hash of its files' content and written once.

    The same config gets the same path on every run, so vLLM's torch.compile cache (keyed by, among others, the model
    path) is reused by later engine starts instead of compiling again. Written to a private folder and renamed into
    place, so concurrent runs never see a half-written folder."""
    import hashlib
    import os
    import shutil
    import tempfile

    text = json.dumps(hf_config_dict(model, max_position_embeddings, dtype), indent=2) + "\n"
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = Path(root) / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in model.name)}-{key}"
    config = folder / "config.json"
    if config.is_file() and config.read_text() == text and (folder / "generation_config.json").is_file():
        return folder
    Path(root).mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".writing-", dir=root))
    write_model_folder(model, private, max_position_embeddings, dtype)
    try:
        os.replace(private, folder)  # atomic; fails if another run put a (non-empty) folder there first
    except OSError:
        shutil.rmtree(private, ignore_errors=True)
        if not (config.is_file() and config.read_text() == text):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged folder from an interrupted older run
            write_model_folder(model, folder, max_position_embeddings, dtype)
    return folder
