"""Torch step/op backend: times sharded Llama-style decoder layers, GEMMs, attention, RoPE, KV append, MoE blocks.

Reproduces the method of the project's GPU probe (`shared/data/gpu_probe/README.md`) and adds RoPE and KV append to
the decode step: random weights scaled by 0.02, a stack of `layers_timed` distinct layers with the model's shapes
sharded for tensor parallelism (a gated SiLU FFN, or up-GELU-down for 2-matrix MLPs such as phi-2's), CUDA graphs +
CUDA events on a GPU (median of replays after warm-ups), wall-clock medians on a CPU. Every finished measurement
becomes one schema row (`features.schema`) handed to a sink at once, so an interrupted collection keeps what it
finished.

Units: `_bytes`, `_ms`, `flops` (floating-point operations, not a rate). torch is imported on first use, so that
importing this module (for its CLI helpers) stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import json
import math
import os
import platform
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from collect.sinks import CsvSink, RowSink, StoreSink, make_sink  # noqa: F401 - re-exported for backend users
from features.errors import InputError
from features.schema import conform
from features.specs import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

SOURCE = "torch-probe"
ENGINE = "torch"
GEMM_CACHE_DEFEAT_BYTES_GPU = 256 * 2**20  # distinct W copies exceed this so W never sits in L2 (probe: 256 MB)
GEMM_CACHE_DEFEAT_BYTES_CPU = 8 * 2**20
CPU_MEMORY_CAP_BYTES = 2 * 2**30  # the "device memory" a CPU run pretends to have (keeps test shapes small)
MEMORY_FRACTION = 0.9  # a configuration is measured only if model shard + KV fit in this share of memory
MOE_ROW_ALIGN = 16  # each expert's token group is padded to a multiple of this (grouped GEMM alignment)
DECODE_INCLUDES = ("rmsnorm", "qkv_gemm", "rope", "kv_append", "attention", "o_gemm", "residual", "rmsnorm",
                   "gate_up_gemm", "silu_mul", "down_gemm", "residual")
PLAIN_MLP_INCLUDES = ("rmsnorm", "qkv_gemm", "rope", "kv_append", "attention", "o_gemm", "residual", "rmsnorm",
                      "up_gemm", "gelu_tanh", "down_gemm", "residual")
MOE_INCLUDES = ("grouped_gate_up_gemm", "silu_mul", "grouped_down_gemm", "shared_expert")

_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# --- shapes, bytes and FLOPs (pure) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerShard:
    """One TP rank's share of a Llama-style decoder layer: heads, KV heads and FFN divided by `tp`."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int  # lm_head columns on this rank
    tp: int
    kv_replicated: bool  # the model has fewer KV heads than tp: each rank keeps one (replicated) KV head
    ffn_matrices: int = 3  # 3: gated FFN (gate, up, down; SiLU-mul); 2: plain MLP (up, GELU, down), as phi-2

    @property
    def ffn_in(self) -> int:
        """Output width of the FFN's first GEMM: gate and up fused (2 x ffn) when gated, up alone (ffn) otherwise."""
        return (self.ffn_matrices - 1) * self.ffn

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def qkv_out(self) -> int:
        return self.q_dim + 2 * self.kv_dim

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA group size)."""
        return self.heads // self.kv_heads

    @property
    def weight_params(self) -> int:
        """GEMM weights of one layer shard (QKV, O, gate-up or up, down); norm vectors are not counted, as in the probe."""
        return self.hidden * self.qkv_out + self.q_dim * self.hidden + self.ffn_matrices * self.hidden * self.ffn


def step_includes(shard: "LayerShard") -> list[str]:
    """What one timed decoder layer of `shard` runs, in order (the gated or the plain-MLP FFN)."""
    return list(PLAIN_MLP_INCLUDES if shard.ffn_matrices == 2 else DECODE_INCLUDES)


def shard_layer(model: ModelSpec, tp: int) -> LayerShard:
    """The TP shard of `model`'s decoder layer; InputError for MLA models or a tp that does not divide the shapes."""
    if tp < 1:
        raise InputError(f"tensor parallel degree must be >= 1, not {tp}")
    if model.is_mla:
        raise InputError(
            f"model {model.name!r} uses multi-head latent attention (MLA), which the torch step backend does not "
            "model; measure its MoE FFN block with measure_moe instead"
        )
    if model.num_heads % tp:
        raise InputError(f"tp {tp} does not divide the {model.num_heads} attention heads of {model.name!r}")
    if model.intermediate_size % tp:
        raise InputError(f"tp {tp} does not divide the FFN width {model.intermediate_size} of {model.name!r}")
    kv = model.num_kv_heads
    if kv >= tp:
        if kv % tp:
            raise InputError(f"tp {tp} does not divide the {kv} KV heads of {model.name!r}")
        kv_tp, replicated = kv // tp, False
    else:
        if tp % kv:
            raise InputError(f"the {kv} KV heads of {model.name!r} cannot be replicated evenly over tp {tp}")
        kv_tp, replicated = 1, True
    return LayerShard(
        hidden=model.hidden_size,
        heads=model.num_heads // tp,
        kv_heads=kv_tp,
        head_dim=model.head_dim,
        ffn=model.intermediate_size // tp,
        vocab=-(-model.vocab_size // tp),
        tp=tp,
        kv_replicated=replicated,
        ffn_matrices=model.ffn_matrices,
    )


def layer_weight_bytes(shard: LayerShard, elem_bytes: int) -> int:
    """Bytes of GEMM weights one layer shard reads per step."""
    return shard.weight_params * elem_bytes


def kv_bytes(shard: LayerShard, batch: int, context: int, elem_bytes: int) -> int:
    """Bytes of K and V one layer shard holds (and decode attention reads) for `batch` x `context` tokens."""
    return 2 * batch * context * shard.kv_dim * elem_bytes


def decode_flops(shard: LayerShard, batch: int, context: int) -> int:
    """FLOPs of one decode step of one layer shard: GEMMs (2 per weight per token) + attention (QK and PV)."""
    return 2 * shard.weight_params * batch + 4 * batch * shard.heads * context * shard.head_dim


def prefill_flops(shard: LayerShard, tokens: int, prior: int = 0) -> int:
    """FLOPs of a causal prefill chunk of `tokens` after `prior` cached tokens (causal half of QK/PV counted)."""
    return 2 * shard.weight_params * tokens + 2 * shard.heads * shard.head_dim * tokens * (2 * prior + tokens)


def lm_head_bytes(shard: LayerShard, elem_bytes: int) -> int:
    """Bytes of the lm_head shard W[h, vocab/tp]."""
    return shard.hidden * shard.vocab * elem_bytes


def model_shard_bytes(model: ModelSpec, tp: int, elem_bytes: int) -> int:
    """Weights one TP rank of a dense model holds: all layer shards + embedding and lm_head (vocab-parallel)."""
    shard = shard_layer(model, tp)
    vocab_matrices = 1 if model.tie_word_embeddings else 2
    return model.num_layers * layer_weight_bytes(shard, elem_bytes) + vocab_matrices * lm_head_bytes(shard, elem_bytes)


def fits_memory(model: ModelSpec, tp: int, batch: int, context: int, elem_bytes: int, memory_bytes: float,
                fraction: float = MEMORY_FRACTION) -> bool:
    """Whether the whole model shard plus KV for `batch` x `context` fits in `fraction` of the device memory."""
    shard = shard_layer(model, tp)
    need = model_shard_bytes(model, tp, elem_bytes) + model.num_layers * kv_bytes(shard, batch, context, elem_bytes)
    return need <= fraction * memory_bytes


@dataclass(frozen=True)
class MoEShard:
    """One rank's share of a MoE FFN block under expert parallelism `ep` (and optional TP `tp` inside experts)."""

    hidden: int
    expert_ffn: int  # per expert, divided by tp
    experts: int
    local_experts: int
    top_k: int
    shared_ffn: int  # total shared-expert width, divided by tp (0 = none)
    ep: int
    tp: int

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden * self.expert_ffn

    @property
    def shared_params(self) -> int:
        return 3 * self.hidden * self.shared_ffn


def shard_moe(model: ModelSpec, ep: int = 1, tp: int = 1) -> MoEShard:
    """The EP (x TP) shard of `model`'s MoE block; InputError for dense models or degrees that do not divide."""
    if not model.is_moe:
        raise InputError(f"model {model.name!r} has no experts; measure it with measure_model")
    if ep < 1 or tp < 1:
        raise InputError(f"ep and tp must be >= 1, not ep={ep} tp={tp}")
    if model.num_experts % ep:
        raise InputError(f"ep {ep} does not divide the {model.num_experts} experts of {model.name!r}")
    inter = model.moe_intermediate_size or model.intermediate_size
    if inter % tp:
        raise InputError(f"tp {tp} does not divide the expert FFN width {inter} of {model.name!r}")
    return MoEShard(
        hidden=model.hidden_size,
        expert_ffn=inter // tp,
        experts=model.num_experts,
        local_experts=model.num_experts // ep,
        top_k=model.experts_per_token,
        shared_ffn=model.num_shared_experts * inter // tp,
        ep=ep,
        tp=tp,
    )


@dataclass(frozen=True)
class Routing:
    """Tokens this rank's experts receive: per local expert, as routed and padded to `MOE_ROW_ALIGN`."""

    counts: tuple[int, ...]
    padded: tuple[int, ...]

    @property
    def routed(self) -> int:
        """Token-expert assignments that land on this rank."""
        return sum(self.counts)

    @property
    def rows(self) -> int:
        """Rows the grouped GEMMs run (the `tokens` column of a moe_ffn row)."""
        return sum(self.padded)

    @property
    def active_experts(self) -> int:
        """Local experts with at least one token (only their weights are read)."""
        return sum(1 for c in self.counts if c > 0)


def route_uniform(batch: int, shard: MoEShard, seed: int = 0) -> Routing:
    """Route each of `batch` tokens to top-k distinct experts uniformly at random; keep this rank's (the first E/ep)."""
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((batch, shard.experts)), axis=1)[:, : shard.top_k]
    counts = np.bincount(chosen.ravel(), minlength=shard.experts)[: shard.local_experts]
    padded = -(-counts // MOE_ROW_ALIGN) * MOE_ROW_ALIGN
    return Routing(tuple(int(c) for c in counts), tuple(int(p) for p in padded))


def moe_weight_bytes(shard: MoEShard, routing: Routing, elem_bytes: int) -> int:
    """Expert weights one MoE block reads: active local experts + shared experts."""
    return (routing.active_experts * shard.expert_params + shard.shared_params) * elem_bytes


def moe_flops(shard: MoEShard, routing: Routing, batch: int) -> int:
    """FLOPs of one MoE block: routed token-expert pairs (unpadded) + every token through the shared experts."""
    return 2 * shard.expert_params * routing.routed + 2 * shard.shared_params * batch


# --- op shapes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GemmShape:
    """x[m, k] @ W[k, n]."""

    m: int
    n: int
    k: int


@dataclass(frozen=True)
class AttnShape:
    """Decode attention: q[B, kv_heads, group, d] against contiguous K/V[B, kv_heads, context, d] (probe packing)."""

    batch: int
    context: int
    kv_heads: int = 8
    group: int = 4
    head_dim: int = 128


@dataclass(frozen=True)
class KvAppendShape:
    """Append one token's K and V for `batch` sequences into a [batch, kv_heads, context, d] cache (one layer)."""

    batch: int
    context: int
    kv_heads: int = 8
    head_dim: int = 128


@dataclass(frozen=True)
class RopeShape:
    """Rotary embedding of `tokens` rows of q (heads) and k (kv_heads) at positions below `context`."""

    tokens: int
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    context: int = 4096


@dataclass(frozen=True)
class OpGrid:
    """The op measurements to take."""

    gemm: tuple[GemmShape, ...] = ()
    attn: tuple[AttnShape, ...] = ()
    kv_append: tuple[KvAppendShape, ...] = ()
    rope: tuple[RopeShape, ...] = ()
    copy_elements: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.gemm) + len(self.attn) + len(self.kv_append) + len(self.rope) + len(self.copy_elements)


@dataclass(frozen=True)
class StepGrid:
    """Decode batch x context points and prefill chunks (`tokens` new after `prior` cached) of a step collection."""

    batches: tuple[int, ...] = (1, 8, 32, 128, 256)
    contexts: tuple[int, ...] = (1024, 4096, 16384, 32768)
    prefill_tokens: tuple[int, ...] = (512, 2048, 8192)
    prefill_prior: tuple[int, ...] = (0,)

    def points(self) -> list[tuple[str, int, int, int]]:
        """(phase, batch, tokens, context) in collection order: decode then prefill (context = prior + tokens)."""
        out = [("decode", b, b, c) for b in self.batches for c in self.contexts]
        out += [("prefill", 1, t, p + t) for t in self.prefill_tokens for p in self.prefill_prior]
        return out


PROBE_GEMM_NK = ((6144, 4096), (28672, 4096), (4096, 14336), (7168, 5120), (10240, 8192), (57344, 8192),
                 (8192, 28672), (16384, 16384), (4608, 3584), (7168, 2048))
PROBE_M = (1, 8, 32, 128, 512, 2048, 8192)


def probe_op_grid() -> OpGrid:
    """The GPU probe's op grid: 10 GEMM (n, k) shapes x 7 m, decode attention 4 batches x 4 contexts, one copy."""
    return OpGrid(
        gemm=tuple(GemmShape(m, n, k) for n, k in PROBE_GEMM_NK for m in PROBE_M),
        attn=tuple(AttnShape(b, c) for b in (1, 8, 32, 128) for c in (1024, 4096, 16384, 65536)),
        copy_elements=(2**28,),
    )


def model_op_grid(model: ModelSpec, tp: int, batches: Sequence[int], contexts: Sequence[int]) -> OpGrid:
    """The ops of `model`'s TP shard: its four layer GEMMs and lm_head at m = batches, attention, KV append, RoPE."""
    s = shard_layer(model, tp)
    nk = ((s.qkv_out, s.hidden), (s.hidden, s.q_dim), (s.ffn_in, s.hidden), (s.hidden, s.ffn), (s.vocab, s.hidden))
    return OpGrid(
        gemm=tuple(GemmShape(m, n, k) for n, k in nk for m in batches),
        attn=tuple(AttnShape(b, c, s.kv_heads, s.group, s.head_dim) for b in batches for c in contexts),
        kv_append=tuple(KvAppendShape(b, c, s.kv_heads, s.head_dim) for b in batches for c in contexts),
        rope=tuple(RopeShape(b, s.heads, s.kv_heads, s.head_dim, max(contexts)) for b in batches),
    )


def parse_int_list(value: str | Sequence[int] | int | None, what: str, allow_zero: bool = False) -> tuple[int, ...]:
    """`"1,8,32"` (or a sequence, or one int) as a tuple of ints > 0 (>= 0 with allow_zero); InputError otherwise."""
    if value is None:
        return ()
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [t for t in re.split(r"[,\s]+", value.strip()) if t]
    else:
        items = list(value)
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise InputError(f"{what}: {item!r} is not an integer") from None
        if not number.is_integer() or number < (0 if allow_zero else 1):
            raise InputError(f"{what}: {item!r} must be a {'non-negative' if allow_zero else 'positive'} integer")
        out.append(int(number))
    return tuple(out)


# --- device, dtype, provenance ----------------------------------------------------------------------------------


def torch_dtype(name: str):
    """The torch dtype of a project dtype name (`bf16`, `fp16`, `fp32`)."""
    import torch

    if name not in _DTYPE_NAMES:
        raise InputError(f"dtype {name!r} is not one of {sorted(_DTYPE_NAMES)}")
    return getattr(torch, _DTYPE_NAMES[name])


def _dtype_name(dtype) -> str:
    """The project name (`bf16`, ...) of a torch dtype."""
    names = {v: k for k, v in _DTYPE_NAMES.items()}
    key = str(dtype).removeprefix("torch.")
    if key not in names:
        raise InputError(f"dtype {dtype} is not one of {sorted(_DTYPE_NAMES)}")
    return names[key]


def resolve_device(device: str | None) -> str:
    """`cpu`, `cuda` or `cuda:N`; None = cuda when available else cpu; InputError when cuda is asked but absent."""
    import torch

    if device in (None, "", "auto"):
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' asked for, but torch sees no CUDA device")
        return device if ":" in device else f"cuda:{torch.cuda.current_device()}"
    raise InputError(f"device {device!r} is not cpu or cuda")


_GPU_PATTERNS = (  # (regex on the lower-cased device name, catalog name); first match wins
    (r"gh200", "gh200"), (r"gb200", "gb200"), (r"b200", "b200"), (r"h200", "h200"),
    (r"h100.*nvl", "h100-nvl"), (r"h100.*pcie", "h100-pcie"), (r"h100", "h100-sxm"),
    (r"a100.*pcie.*80|a100.*80.*pcie", "a100-pcie-80g"), (r"a100.*80", "a100-80g"), (r"a100", "a100-40g"),
    (r"l40s", "l40s"), (r"l40", "l40"), (r"mi300x", "mi300x"), (r"mi250", "mi250"),
    (r"rtx.*pro.*6000|rtx.*6000.*pro", "rtx-6000-pro"),
)


def catalog_gpu_name(device_name: str) -> str:
    """Catalog GPU name for a torch device name (`NVIDIA H200` -> `h200`); the lower-cased name when none maps."""
    low = device_name.lower()
    for pattern, name in _GPU_PATTERNS:
        if re.search(pattern, low):
            return name
    return re.sub(r"\s+", "-", low.strip()) or "unknown"


def _nvidia_smi(index: int) -> dict[str, str]:
    """Driver version, max clocks and power limit from nvidia-smi (empty when it is not there)."""
    keys = ("driver_version", "clocks.max.sm", "clocks.max.mem", "power.limit")
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(keys)}", "--format=csv,noheader,nounits", "-i", str(index)],
            capture_output=True, text=True, timeout=15, check=True,
        ).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    if not out:
        return {}
    vals = [v.strip() for v in out[0].split(",")]
    names = ("driver", "sm_clock_max_mhz", "mem_clock_max_mhz", "power_limit_w")
    return {n: v for n, v in zip(names, vals) if v and "N/A" not in v}


@functools.lru_cache(maxsize=None)
def device_info(device: str) -> dict[str, Any]:
    """Card, driver and library versions of a device, for provenance (JSON-serialisable)."""
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(
            device_name=props.name,
            total_memory_bytes=int(props.total_memory),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=int(props.multi_processor_count),
            gpu_count=int(torch.cuda.device_count()),
            cuda=torch.version.cuda,
            hip=getattr(torch.version, "hip", None),
            cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        )
        with contextlib.suppress(Exception):
            info["nccl"] = ".".join(str(v) for v in torch.cuda.nccl.version())
        info.update(_nvidia_smi(idx))
    else:
        info.update(
            device_name=_cpu_model_name(),
            cpu_count=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
        )
    return info


def _cpu_model_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor or machine string."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _row_device_detail(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("device_name", "driver", "cuda", "hip", "torch", "capability")
    return {k: info[k] for k in keys if info.get(k) is not None}


# --- timing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Median, min and max of timed replays of one callable."""

    median_ms: float
    min_ms: float
    max_ms: float
    replays: int
    warmup: int
    graph: bool

    def scaled(self, divisor: float) -> "Timing":
        """The same timing per unit when one replay runs `divisor` units (layers, GEMM copies)."""
        return Timing(self.median_ms / divisor, self.min_ms / divisor, self.max_ms / divisor, self.replays,
                      self.warmup, self.graph)


def _timing(ms: list[float], warmup: int, graph: bool) -> Timing:
    arr = np.asarray(ms, dtype=float)
    return Timing(float(np.median(arr)), float(arr.min()), float(arr.max()), len(ms), warmup, graph)


def time_callable(fn: Callable[[], Any], device: str, warmup: int = 3, replays: int = 10,
                  use_graph: bool = True) -> Timing:
    """Time `fn`: CUDA graph replays timed with CUDA events on a GPU (eager if capture fails), wall clock on CPU."""
    import torch

    if replays < 1:
        raise InputError(f"replays must be >= 1, not {replays}")
    with torch.inference_mode():
        if not device.startswith("cuda"):
            for _ in range(warmup):
                fn()
            ms = []
            for _ in range(replays):
                t0 = time.perf_counter()
                fn()
                ms.append((time.perf_counter() - t0) * 1e3)
            return _timing(ms, warmup, graph=False)
        run, graph = _cuda_runner(fn, use_graph)
        for _ in range(warmup):
            run()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
        for s, e in zip(starts, ends):
            s.record()
            run()
            e.record()
        torch.cuda.synchronize()
        ms = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        del graph
        return _timing(ms, warmup, graph=run is not fn)


def _cuda_runner(fn: Callable[[], Any], use_graph: bool):
    """(callable to time, graph or None): a CUDA graph of `fn` captured after one eager run on a side stream."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # allocator, cuBLAS handles and workspaces set up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    if not use_graph:
        return fn, None
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except RuntimeError:
        torch.cuda.synchronize()
        return fn, None
    return graph.replay, graph


# --- the decoder stack ------------------------------------------------------------------------------------------


def apply_rope(qk: "torch.Tensor", cos_sin: "torch.Tensor") -> "torch.Tensor":
    """Rotate-half (neox) RoPE of qk[N, heads, d] with cos_sin[N, 2, d] gathered at each row's position."""
    import torch

    half = qk.shape[-1] // 2
    cos, sin = cos_sin[:, 0:1], cos_sin[:, 1:2]
    rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
    return torch.addcmul(qk * cos, rotated, sin)


def rope_cache(positions: int, head_dim: int, device: str, dtype, theta: float = 10000.0) -> "torch.Tensor":
    """cos/sin table [positions, 2, head_dim] (both halves repeated), as vLLM's cos_sin_cache."""
    import torch

    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(positions, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return torch.stack((emb.cos(), emb.sin()), dim=1).to(dtype)


def _causal_attention(q, k, v, prior: int):
    """Causal GQA attention of q[1, H, T, d] over k/v[1, KV, prior+T, d], the query block aligned bottom-right."""
    import torch.nn.functional as F

    if prior == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    from torch.nn.attention.bias import causal_lower_right

    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]),
                                          enable_gqa=True)


@dataclass
class StepState:
    """Inputs of one timed step: hidden states, per-layer KV caches and the index tensors of the new tokens."""

    x: "torch.Tensor"
    caches: list[tuple["torch.Tensor", "torch.Tensor"]]
    positions: "torch.Tensor"
    slots: "torch.Tensor | None" = None  # decode: flat cache rows the new K/V go to
    prior: int = 0  # prefill: tokens already cached before the chunk


class DecoderStack:
    """`layers` distinct Llama-style decoder layer shards with random weights scaled by 0.02 (a timing fixture)."""

    def __init__(self, shard: LayerShard, layers: int, device: str, dtype, seed: int = 0, eps: float = 1e-5):
        import torch

        self.shard, self.device, self.dtype, self.eps = shard, device, dtype, eps
        self._gen = torch.Generator(device=device).manual_seed(seed)
        s = shard
        self.layers = [
            {
                "ln1": torch.ones(s.hidden, device=device, dtype=dtype),
                "wqkv": self._weight(s.hidden, s.qkv_out),
                "wo": self._weight(s.q_dim, s.hidden),
                "ln2": torch.ones(s.hidden, device=device, dtype=dtype),
                "wgu": self._weight(s.hidden, s.ffn_in),
                "wdown": self._weight(s.ffn, s.hidden),
            }
            for _ in range(layers)
        ]
        self._lm_head = None
        self._cos_sin = rope_cache(1, s.head_dim, device, dtype)

    def _weight(self, *shape: int) -> "torch.Tensor":
        import torch

        return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(0.0, 0.02, generator=self._gen)

    def random(self, *shape: int) -> "torch.Tensor":
        """A tensor of standard-normal activations on the stack's device and dtype."""
        import torch

        return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(0.0, 1.0, generator=self._gen)

    @property
    def lm_head(self) -> "torch.Tensor":
        """W[h, vocab/tp], built on first use."""
        if self._lm_head is None:
            self._lm_head = self._weight(self.shard.hidden, self.shard.vocab)
        return self._lm_head

    def cos_sin(self, positions: int) -> "torch.Tensor":
        """The RoPE table, grown to cover `positions` positions."""
        if self._cos_sin.shape[0] < positions:
            size = 1 << max(0, positions - 1).bit_length()
            self._cos_sin = rope_cache(size, self.shard.head_dim, self.device, self.dtype)
        return self._cos_sin

    def new_caches(self, batch: int, capacity: int) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
        """Per-layer K and V caches [batch, kv_heads, capacity, head_dim], filled with random values."""
        s = self.shard
        shape = (batch, s.kv_heads, capacity, s.head_dim)
        return [(self.random(*shape), self.random(*shape)) for _ in self.layers]

    def decode_state(self, batch: int, context: int, caches=None) -> StepState:
        """One new token per sequence at position context-1, its K/V appended to slot context-1 of each cache."""
        import torch

        s = self.shard
        caches = caches if caches is not None else self.new_caches(batch, context)
        capacity = caches[0][0].shape[2]
        if capacity != context:
            raise InputError(f"decode at context {context} needs caches of exactly {context} slots, not {capacity}")
        self.cos_sin(context)
        positions = torch.full((batch,), context - 1, device=self.device, dtype=torch.long)
        rows = torch.arange(batch * s.kv_heads, device=self.device, dtype=torch.long)
        slots = rows * context + (context - 1)
        return StepState(self.random(batch, s.hidden), caches, positions, slots=slots)

    def prefill_state(self, tokens: int, prior: int = 0, caches=None) -> StepState:
        """A chunk of `tokens` new tokens of one sequence after `prior` cached ones."""
        import torch

        caches = caches if caches is not None else self.new_caches(1, prior + tokens)
        self.cos_sin(prior + tokens)
        positions = torch.arange(prior, prior + tokens, device=self.device, dtype=torch.long)
        return StepState(self.random(tokens, self.shard.hidden), caches, positions, prior=prior)

    def _ffn(self, x, L):
        import torch.nn.functional as F

        h = F.rms_norm(x, (self.shard.hidden,), L["ln2"], self.eps)
        gu = h @ L["wgu"]
        if self.shard.ffn_matrices == 2:
            act = F.gelu(gu, approximate="tanh")
        else:
            act = F.silu(gu[:, : self.shard.ffn]) * gu[:, self.shard.ffn :]
        return x + act @ L["wdown"]

    def decode(self, x: "torch.Tensor", st: StepState) -> "torch.Tensor":
        """One decode step through every layer: x[B, h] -> x[B, h]; appends K/V at `st.slots`."""
        import torch.nn.functional as F

        s, B, d = self.shard, x.shape[0], self.shard.head_dim
        cos_sin = self._cos_sin
        for L, (kc, vc) in zip(self.layers, st.caches):
            h = F.rms_norm(x, (s.hidden,), L["ln1"], self.eps)
            qkv = h @ L["wqkv"]
            qk = apply_rope(qkv[:, : s.q_dim + s.kv_dim].view(B, s.heads + s.kv_heads, d),
                            cos_sin.index_select(0, st.positions))
            v = qkv[:, s.q_dim + s.kv_dim :].reshape(B * s.kv_heads, d)
            kc.view(-1, d).index_copy_(0, st.slots, qk[:, s.heads :].reshape(B * s.kv_heads, d))
            vc.view(-1, d).index_copy_(0, st.slots, v)
            q = qk[:, : s.heads].reshape(B, s.kv_heads, s.group, d)
            o = F.scaled_dot_product_attention(q, kc, vc)
            x = x + o.reshape(B, s.q_dim) @ L["wo"]
            x = self._ffn(x, L)
        return x

    def prefill(self, x: "torch.Tensor", st: StepState) -> "torch.Tensor":
        """A causal prefill chunk through every layer: x[T, h] -> x[T, h]; writes K/V at positions prior..prior+T-1."""
        import torch.nn.functional as F

        s, T, d, p = self.shard, x.shape[0], self.shard.head_dim, st.prior
        cos_sin = self._cos_sin
        for L, (kc, vc) in zip(self.layers, st.caches):
            h = F.rms_norm(x, (s.hidden,), L["ln1"], self.eps)
            qkv = h @ L["wqkv"]
            qk = apply_rope(qkv[:, : s.q_dim + s.kv_dim].view(T, s.heads + s.kv_heads, d),
                            cos_sin.index_select(0, st.positions))
            kc[0, :, p : p + T].copy_(qk[:, s.heads :].transpose(0, 1))
            vc[0, :, p : p + T].copy_(qkv[:, s.q_dim + s.kv_dim :].view(T, s.kv_heads, d).transpose(0, 1))
            q = qk[:, : s.heads].transpose(0, 1).unsqueeze(0)
            o = _causal_attention(q, kc[:, :, : p + T], vc[:, :, : p + T], p)
            x = x + o[0].transpose(0, 1).reshape(T, s.q_dim) @ L["wo"]
            x = self._ffn(x, L)
        return x


# --- MoE block --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def grouped_mm_available(device: str, dtype_name: str) -> bool:
    """Whether `torch._grouped_mm` runs (and agrees with a plain matmul) on this device and dtype."""
    import torch

    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        dt = torch_dtype(dtype_name)
        x = torch.randn(32, 16, device=device, dtype=dt)
        w = torch.randn(2, 16, 16, device=device, dtype=dt)
        offs = torch.tensor([16, 32], device=device, dtype=torch.int32)
        y = torch._grouped_mm(x, w, offs=offs)
        ref = torch.cat((x[:16] @ w[0], x[16:] @ w[1]))
        return bool(torch.allclose(y.float(), ref.float(), rtol=5e-2, atol=5e-2))
    except (RuntimeError, TypeError, NotImplementedError):
        return False


@functools.lru_cache(maxsize=None)
def grouped_mm_accepts_empty(device: str, dtype_name: str) -> bool:
    """Whether `torch._grouped_mm` runs with zero routed rows (a rank no token was routed to)."""
    import torch

    try:
        dt = torch_dtype(dtype_name)
        offs = torch.zeros(2, device=device, dtype=torch.int32)
        torch._grouped_mm(torch.empty(0, 16, device=device, dtype=dt), torch.randn(2, 16, 16, device=device, dtype=dt),
                          offs=offs)
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        return False


class MoEBlock:
    """One rank's MoE FFN block (local experts + shared experts) with random weights scaled by 0.02."""

    def __init__(self, shard: MoEShard, device: str, dtype, impl: str, seed: int = 0):
        import torch

        if impl not in ("grouped_mm", "loop"):
            raise InputError(f"MoE implementation {impl!r} is not grouped_mm or loop")
        self.shard, self.device, self.dtype, self.impl = shard, device, dtype, impl
        self._gen = torch.Generator(device=device).manual_seed(seed)
        s = shard
        self.w_gate_up = self._weight(s.local_experts, s.hidden, 2 * s.expert_ffn)
        self.w_down = self._weight(s.local_experts, s.expert_ffn, s.hidden)
        self.shared_gate_up = self._weight(s.hidden, 2 * s.shared_ffn) if s.shared_ffn else None
        self.shared_down = self._weight(s.shared_ffn, s.hidden) if s.shared_ffn else None

    def _weight(self, *shape: int):
        import torch

        return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(0.0, 0.02, generator=self._gen)

    def random(self, *shape: int):
        """Standard-normal activations on the block's device and dtype."""
        import torch

        return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(0.0, 1.0, generator=self._gen)

    def offsets(self, routing: Routing):
        """Cumulative end row of each local expert's group (int32, as `torch._grouped_mm` takes)."""
        import torch

        return torch.tensor(np.cumsum(routing.padded), device=self.device, dtype=torch.int32)

    def forward(self, x_routed, x_tokens, routing: Routing, offs) -> tuple[Any, Any]:
        """(routed rows through their experts, tokens through the shared experts); outputs are not combined."""
        import torch
        import torch.nn.functional as F

        f = self.shard.expert_ffn
        if x_routed.shape[0] == 0 and not (self.impl == "grouped_mm" and grouped_mm_accepts_empty(
                self.device, _dtype_name(self.dtype))):
            routed = x_routed.new_empty((0, self.shard.hidden))
        elif self.impl == "grouped_mm":
            gu = torch._grouped_mm(x_routed, self.w_gate_up, offs=offs)
            act = F.silu(gu[:, :f]) * gu[:, f:]
            routed = torch._grouped_mm(act, self.w_down, offs=offs)
        else:
            routed = torch.empty((x_routed.shape[0], self.shard.hidden), device=self.device, dtype=self.dtype)
            start = 0
            for e, rows in enumerate(routing.padded):
                if rows:
                    gu = x_routed[start : start + rows] @ self.w_gate_up[e]
                    act = F.silu(gu[:, :f]) * gu[:, f:]
                    torch.matmul(act, self.w_down[e], out=routed[start : start + rows])
                start += rows
        shared = None
        if self.shared_gate_up is not None:
            sf = self.shard.shared_ffn
            gu = x_tokens @ self.shared_gate_up
            shared = (F.silu(gu[:, :sf]) * gu[:, sf:]) @ self.shared_down
        return routed, shared


# --- provenance ---------------------------------------------------------------------------------------------------


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- progress ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr (plain when rich is missing); yields advance(label)."""
    if not enabled or total == 0:
        yield lambda label: None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:  # pragma: no cover - rich is a project dependency
        done = [0]

        def plain(label: str) -> None:
            done[0] += 1
            print(f"{description}: {done[0]}/{total} {label}", flush=True)

        yield plain
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[label]}"), console=Console(stderr=True))
    with progress:
        task = progress.add_task(description, total=total, label="")
        yield lambda label: progress.update(task, advance=1, label=label)


def _log(message: str) -> None:
    try:
        from rich.console import Console

        Console(stderr=True).print(message)
    except ImportError:  # pragma: no cover
        print(message, flush=True)


# --- the backend ------------------------------------------------------------------------------------------------


class TorchStepBackend:
    """Measures step and op times with torch on one device and turns each into a schema row."""

    def __init__(self, device: str | None = None, dtype: Any = None, *, layers_timed: int = 5,
                 warmup: int = 3, replays: int = 10, prefill_warmup: int = 2, prefill_replays: int = 5,
                 memory_bytes: float | None = None, memory_fraction: float = MEMORY_FRACTION,
                 use_graph: bool = True, time_budget_s: float | None = None, seed: int = 0,
                 progress: bool = True, strict: bool = False, run_id: str | None = None):
        import torch

        self.device = resolve_device(device)
        self.is_cuda = self.device.startswith("cuda")
        if dtype is not None and not isinstance(dtype, str):
            dtype = _dtype_name(dtype)  # a torch dtype
        self.dtype_name = dtype or ("bf16" if self.is_cuda else "fp32")
        self.dtype = torch_dtype(self.dtype_name)
        self.elem_bytes = int(torch.empty((), dtype=self.dtype).element_size())
        if layers_timed < 1 or warmup < 0 or replays < 1 or prefill_replays < 1 or prefill_warmup < 0:
            raise InputError("layers_timed, replays must be >= 1 and warm-ups >= 0")
        self.layers_timed, self.warmup, self.replays = layers_timed, warmup, replays
        self.prefill_warmup, self.prefill_replays = prefill_warmup, prefill_replays
        self.info = device_info(self.device)
        if memory_bytes is None:
            memory_bytes = self.info["total_memory_bytes"] if self.is_cuda else CPU_MEMORY_CAP_BYTES
        self.memory_bytes, self.memory_fraction = float(memory_bytes), memory_fraction
        self.use_graph, self.seed, self.progress, self.strict = use_graph, seed, progress, strict
        self.gpu = catalog_gpu_name(self.info["device_name"]) if self.is_cuda else "cpu"
        self.run_id = run_id or f"torch-{uuid.uuid4().hex[:12]}"
        self.deadline: float | None = None
        self.set_time_budget(time_budget_s)
        self.stopped_early = False
        self.skipped: list[str] = []

    # -- budget --
    def set_time_budget(self, seconds: float | None) -> None:
        """Stop starting new measurements `seconds` from now (None = no limit)."""
        self.deadline = None if seconds is None else time.monotonic() + max(0.0, float(seconds))

    def out_of_time(self) -> bool:
        """True (and remembered in `stopped_early`) once the time budget is spent."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.stopped_early = True
            return True
        return False

    # -- rows --
    def _row(self, kind: str, fields: dict[str, Any], detail: dict[str, Any]) -> dict[str, Any]:
        import torch

        row = {
            "kind": kind, "source": SOURCE, "engine": ENGINE, "engine_version": torch.__version__,
            "measured_at": _now_iso(), "status": "ok", "gpu": self.gpu, "weight_dtype": self.dtype_name,
            "kv_dtype": self.dtype_name, "run_id": self.run_id,
        }
        if self.is_cuda:
            row["gpus_per_node"] = self.info.get("gpu_count")
        row.update(fields)
        full = {**detail, "dtype": self.dtype_name, **_row_device_detail(self.info)}
        row["detail"] = json.dumps(full, sort_keys=True, default=_json_default)
        return row

    def _measure_point(self, kind: str, fields: dict[str, Any], label: str,
                       measure: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
                       on_row: RowSink | None) -> pd.DataFrame:
        """Run one measurement; a failure becomes an `oom`/`error` row (raised instead when strict)."""
        import torch

        try:
            targets, detail = measure()
            row = self._row(kind, {**fields, **targets}, detail)
        except (RuntimeError, MemoryError) as e:
            if self.strict:
                raise
            oom = isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or \
                "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower()
            _log(f"[red]{label}: {'out of memory' if oom else 'error'}: {str(e).splitlines()[0][:200]}[/red]")
            row = self._row(kind, {**fields, "status": "oom" if oom else "error"},
                            {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:500]}"})
            self._release(collect=True)
        finally:
            self._release()
        df = conform(pd.DataFrame([row]))
        if on_row is not None:
            on_row(df)
        return df

    def _release(self, collect: bool = False) -> None:
        """Hand cached device memory back between measurements (and collect garbage after a model or an error)."""
        import torch

        if collect:
            gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()

    def _time(self, fn: Callable[[], Any], prefill: bool = False) -> Timing:
        warmup, replays = (self.prefill_warmup, self.prefill_replays) if prefill else (self.warmup, self.replays)
        return time_callable(fn, self.device, warmup, replays, self.use_graph)

    def _skip(self, what: str) -> None:
        self.skipped.append(what)

    # -- decode and prefill steps --
    def measure_model(self, model: ModelSpec, tp: int = 1, grid: StepGrid | None = None,
                      on_row: RowSink | None = None) -> pd.DataFrame:
        """Decode and prefill step rows (per-layer ms, lm_head ms) of `model`'s TP shard over `grid`."""
        grid = grid or StepGrid()
        if model.is_moe:
            raise InputError(f"model {model.name!r} is a mixture of experts: measure_model times dense "
                             "Llama-style layers only; measure its expert FFN block with measure_moe")
        shard = shard_layer(model, tp)
        layers = min(self.layers_timed, model.num_layers)
        points = []
        for phase, batch, tokens, context in grid.points():
            if fits_memory(model, tp, batch, context, self.elem_bytes, self.memory_bytes, self.memory_fraction):
                points.append((phase, batch, tokens, context))
            else:
                self._skip(f"{model.name} tp{tp} {phase} batch {batch} context {context}: shard + KV exceed "
                           f"{self.memory_fraction:.0%} of {self.memory_bytes / 2**30:.1f} GiB")
        frames: list[pd.DataFrame] = []
        if not points or self.out_of_time():
            return _concat(frames)
        stack = DecoderStack(shard, layers, self.device, self.dtype, seed=self.seed)
        try:
            with _progress(f"{model.name} TP{tp}", len(points), self.progress) as advance:
                for phase, batch, tokens, context in points:
                    if self.out_of_time():
                        break
                    label = f"{phase} b{batch} ctx{context}"
                    fields = {"model": model.name, "tp": tp, "phase": phase, "batch": batch, "context": context,
                              "tokens": tokens}
                    if phase == "decode":
                        fn = functools.partial(self._decode_point, stack, batch, context, layers)
                    else:
                        fn = functools.partial(self._prefill_point, stack, tokens, context - tokens, layers)
                    frames.append(self._measure_point("step", fields, label, fn, on_row))
                    advance(label)
        finally:
            del stack
            self._release(collect=True)
        return _concat(frames)

    def _step_detail(self, shard: LayerShard, layers: int, t: Timing) -> dict[str, Any]:
        return {
            "layers_timed": layers, "ms_min": t.min_ms, "ms_max": t.max_ms, "replays": t.replays,
            "warmup": t.warmup, "graph": t.graph, "hidden": shard.hidden, "heads": shard.heads,
            "kv_heads": shard.kv_heads, "head_dim": shard.head_dim, "ffn": shard.ffn, "qkv_out": shard.qkv_out,
            "ffn_matrices": shard.ffn_matrices,
            "kv_replicated": shard.kv_replicated, "weight_bytes_layer": layer_weight_bytes(shard, self.elem_bytes),
        }

    def _decode_point(self, stack: DecoderStack, batch: int, context: int, layers: int):
        shard = stack.shard
        st = stack.decode_state(batch, context)
        t = self._time(lambda: stack.decode(st.x, st)).scaled(layers)
        del st
        self._release()
        xn = stack.random(batch, shard.hidden)
        w = stack.lm_head
        lm = self._time(lambda: xn @ w)
        detail = self._step_detail(shard, layers, t)
        detail.update(
            kv_bytes_layer=kv_bytes(shard, batch, context, self.elem_bytes),
            flops_layer=decode_flops(shard, batch, context),
            lm_head_weight_bytes=lm_head_bytes(shard, self.elem_bytes),
            lm_head_flops=2 * batch * shard.hidden * shard.vocab, lm_head_vocab=shard.vocab,
            lm_head_ms_min=lm.min_ms, lm_head_ms_max=lm.max_ms, includes=step_includes(shard),
            attention="sdpa, GQA packed as query length, non-causal, contiguous KV",
        )
        return {"layer_ms": t.median_ms, "lm_head_ms": lm.median_ms}, detail

    def _prefill_point(self, stack: DecoderStack, tokens: int, prior: int, layers: int):
        shard = stack.shard
        st = stack.prefill_state(tokens, prior)
        t = self._time(lambda: stack.prefill(st.x, st), prefill=True).scaled(layers)
        detail = self._step_detail(shard, layers, t)
        detail.update(
            prior_context=prior, kv_bytes_layer=kv_bytes(shard, 1, prior + tokens, self.elem_bytes),
            flops_layer=prefill_flops(shard, tokens, prior), includes=step_includes(shard),
            attention="sdpa causal (bottom-right aligned after prior), GQA",
        )
        return {"layer_ms": t.median_ms}, detail

    # -- ops --
    def measure_ops(self, grid: OpGrid | None = None, on_row: RowSink | None = None, *, model: str | None = None,
                    tp: int | None = None) -> pd.DataFrame:
        """Op rows (gemm, attn_decode, kv_append, rope, copy) over `grid` (default: the probe's op grid)."""
        grid = grid if grid is not None else (probe_op_grid() if self.is_cuda else cpu_op_grid())
        jobs: list[tuple[str, Any, Callable]] = []
        jobs += [("gemm", s, self._gemm_point) for s in grid.gemm]
        jobs += [("attn_decode", s, self._attn_point) for s in grid.attn]
        jobs += [("kv_append", s, self._kv_append_point) for s in grid.kv_append]
        jobs += [("rope", s, self._rope_point) for s in grid.rope]
        jobs += [("copy", n, self._copy_point) for n in grid.copy_elements]
        frames: list[pd.DataFrame] = []
        base = {"model": model, "tp": tp}
        with _progress("ops" + (f" {model} TP{tp}" if model else ""), len(jobs), self.progress) as advance:
            for op, shape, point in jobs:
                if self.out_of_time():
                    break
                need = _op_bytes(op, shape, self.elem_bytes, self.is_cuda)
                label = f"{op} {_shape_label(shape)}"
                if need > self.memory_fraction * self.memory_bytes:
                    self._skip(f"{label}: needs {need / 2**30:.1f} GiB")
                    advance(label)
                    continue
                fields = {**base, "op": op, **_op_fields(op, shape)}
                frames.append(self._measure_point("op", fields, label, functools.partial(point, shape), on_row))
                advance(label)
        return _concat(frames)

    def _gemm_point(self, s: GemmShape):
        import torch

        w_bytes = s.k * s.n * self.elem_bytes
        copies = gemm_copies(w_bytes, self.is_cuda)
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        ws = [torch.empty((s.k, s.n), device=self.device, dtype=self.dtype).normal_(0, 0.02, generator=gen)
              for _ in range(copies)]
        x = torch.empty((s.m, s.k), device=self.device, dtype=self.dtype).normal_(generator=gen)

        def run():
            for w in ws:
                x @ w

        t = self._time(run).scaled(copies)
        detail = {"m": s.m, "n": s.n, "k": s.k, "copies": copies, "weight_bytes_layer": w_bytes,
                  "flops_layer": 2 * s.m * s.n * s.k, **_timing_detail(t)}
        return {"op_ms": t.median_ms}, detail

    def _attn_point(self, s: AttnShape):
        import torch.nn.functional as F

        gen_stack = _Randn(self.device, self.dtype, self.seed)
        q = gen_stack(s.batch, s.kv_heads, s.group, s.head_dim)
        k = gen_stack(s.batch, s.kv_heads, s.context, s.head_dim)
        v = gen_stack(s.batch, s.kv_heads, s.context, s.head_dim)
        t = self._time(lambda: F.scaled_dot_product_attention(q, k, v))
        heads = s.kv_heads * s.group
        detail = {"kv_heads": s.kv_heads, "heads": heads, "head_dim": s.head_dim,
                  "kv_bytes_layer": 2 * s.batch * s.context * s.kv_heads * s.head_dim * self.elem_bytes,
                  "flops_layer": 4 * s.batch * heads * s.context * s.head_dim, **_timing_detail(t)}
        return {"op_ms": t.median_ms}, detail

    def _kv_append_point(self, s: KvAppendShape):
        import torch

        r = _Randn(self.device, self.dtype, self.seed)
        kc, vc = r(s.batch, s.kv_heads, s.context, s.head_dim), r(s.batch, s.kv_heads, s.context, s.head_dim)
        k, v = r(s.batch * s.kv_heads, s.head_dim), r(s.batch * s.kv_heads, s.head_dim)
        slots = torch.arange(s.batch * s.kv_heads, device=self.device) * s.context + (s.context - 1)

        def run():
            kc.view(-1, s.head_dim).index_copy_(0, slots, k)
            vc.view(-1, s.head_dim).index_copy_(0, slots, v)

        t = self._time(run)
        written = 2 * s.batch * s.kv_heads * s.head_dim * self.elem_bytes
        detail = {"kv_heads": s.kv_heads, "head_dim": s.head_dim, "kv_bytes_layer": written,
                  "bytes_moved": 2 * written, **_timing_detail(t)}
        return {"op_ms": t.median_ms}, detail

    def _rope_point(self, s: RopeShape):
        import torch

        r = _Randn(self.device, self.dtype, self.seed)
        qk = r(s.tokens, s.heads + s.kv_heads, s.head_dim)
        table = rope_cache(s.context, s.head_dim, self.device, self.dtype)
        positions = torch.randint(0, s.context, (s.tokens,), device=self.device,
                                  generator=torch.Generator(device=self.device).manual_seed(self.seed))
        t = self._time(lambda: apply_rope(qk, table.index_select(0, positions)))
        elems = s.tokens * (s.heads + s.kv_heads) * s.head_dim
        detail = {"heads": s.heads, "kv_heads": s.kv_heads, "head_dim": s.head_dim, "max_position": s.context,
                  "bytes_moved": (2 * elems + 2 * s.tokens * s.head_dim) * self.elem_bytes, **_timing_detail(t)}
        return {"op_ms": t.median_ms}, detail

    def _copy_point(self, n: int):
        import torch

        a = torch.empty(n, device=self.device, dtype=self.dtype).normal_()
        b = torch.empty_like(a)
        t = self._time(lambda: b.copy_(a))
        detail = {"m": n, "elements": n, "weight_bytes_layer": 2 * n * self.elem_bytes,
                  "bytes_moved": 2 * n * self.elem_bytes, **_timing_detail(t)}
        return {"op_ms": t.median_ms}, detail

    # -- MoE --
    def measure_moe(self, model: ModelSpec, ep: int = 1, batches: Sequence[int] = (1, 8, 32, 128, 512, 2048),  # probe
                    on_row: RowSink | None = None, *, tp: int = 1, impl: str | None = None) -> pd.DataFrame:
        """moe_ffn op rows: one MoE FFN block of `model` under EP degree `ep` for each batch of routed tokens."""
        shard = shard_moe(model, ep, tp)
        impl = impl or ("grouped_mm" if grouped_mm_available(self.device, self.dtype_name) else "loop")
        weights = (shard.local_experts * shard.expert_params + shard.shared_params) * self.elem_bytes
        frames: list[pd.DataFrame] = []
        if weights > self.memory_fraction * self.memory_bytes:
            self._skip(f"{model.name} moe ep{ep}: expert weights {weights / 2**30:.1f} GiB exceed memory")
            return _concat(frames)
        if self.out_of_time():
            return _concat(frames)
        block = MoEBlock(shard, self.device, self.dtype, impl, seed=self.seed)
        try:
            with _progress(f"{model.name} MoE EP{ep}", len(batches), self.progress) as advance:
                for batch in batches:
                    if self.out_of_time():
                        break
                    routing = route_uniform(batch, shard, seed=self.seed + batch)
                    fields = {"model": model.name, "tp": tp, "ep": ep, "op": "moe_ffn", "batch": batch,
                              "tokens": routing.rows}
                    label = f"moe_ffn b{batch} rows{routing.rows}"
                    fn = functools.partial(self._moe_point, block, routing, batch)
                    frames.append(self._measure_point("op", fields, label, fn, on_row))
                    advance(label)
        finally:
            del block
            self._release(collect=True)
        return _concat(frames)

    def _moe_point(self, block: MoEBlock, routing: Routing, batch: int):
        s = block.shard
        x_routed = block.random(routing.rows, s.hidden)
        x_tokens = block.random(batch, s.hidden)
        offs = block.offsets(routing)
        t = self._time(lambda: block.forward(x_routed, x_tokens, routing, offs))
        detail = {
            "impl": block.impl, "experts": s.experts, "local_experts": s.local_experts, "top_k": s.top_k,
            "expert_ffn": s.expert_ffn, "shared_ffn": s.shared_ffn, "hidden": s.hidden, "ep": s.ep,
            "routed_assignments": routing.routed, "active_experts": routing.active_experts,
            "weight_bytes_layer": moe_weight_bytes(s, routing, self.elem_bytes),
            "flops_layer": moe_flops(s, routing, batch), "includes": list(MOE_INCLUDES),
            "routing": "top-k distinct experts uniformly at random; rows padded per expert to 16", **_timing_detail(t),
        }
        return {"op_ms": t.median_ms}, detail


class _Randn:
    """Seeded standard-normal tensors on one device and dtype."""

    def __init__(self, device: str, dtype, seed: int):
        import torch

        self.device, self.dtype = device, dtype
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, *shape: int):
        import torch

        return torch.empty(shape, device=self.device, dtype=self.dtype).normal_(generator=self.gen)


def _timing_detail(t: Timing) -> dict[str, Any]:
    return {"ms_min": t.min_ms, "ms_max": t.max_ms, "replays": t.replays, "warmup": t.warmup, "graph": t.graph}


def _op_fields(op: str, shape: Any) -> dict[str, Any]:
    """Schema columns of an op row: batch, context, tokens where they mean something for the op."""
    if op == "gemm":
        return {"tokens": shape.m, "batch": shape.m}
    if op in ("attn_decode", "kv_append"):
        return {"batch": shape.batch, "context": shape.context, "tokens": shape.batch}
    if op == "rope":
        return {"tokens": shape.tokens, "batch": shape.tokens}
    return {}


def gemm_copies(weight_bytes: int, on_gpu: bool) -> int:
    """Distinct W copies one timed GEMM replay cycles through so W is not cache-resident (probe: over 256 MB on GPU)."""
    defeat = GEMM_CACHE_DEFEAT_BYTES_GPU if on_gpu else GEMM_CACHE_DEFEAT_BYTES_CPU
    return max(1, min(64, math.ceil(defeat / weight_bytes)))


def _op_bytes(op: str, shape: Any, elem_bytes: int, on_gpu: bool) -> int:
    """Device memory an op measurement allocates (inputs, outputs, weight copies), for the fit check."""
    if op == "gemm":
        w = shape.k * shape.n * elem_bytes
        copies = gemm_copies(w, on_gpu)
        return copies * w + (shape.m * shape.k + shape.m * shape.n) * elem_bytes
    if op in ("attn_decode", "kv_append"):
        return 2 * shape.batch * shape.context * shape.kv_heads * shape.head_dim * elem_bytes
    if op == "rope":
        return (3 * shape.tokens * (shape.heads + shape.kv_heads) + 2 * shape.context) * shape.head_dim * elem_bytes
    return 2 * int(shape) * elem_bytes


def _shape_label(shape: Any) -> str:
    if isinstance(shape, int):
        return f"n={shape}"
    return " ".join(f"{k}={v}" for k, v in shape.__dict__.items())


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return conform(pd.DataFrame({"kind": pd.Series(dtype="string")}))
    return pd.concat(frames, ignore_index=True)


# --- CLI helpers (the `layoutcast collect --backend torch` command wires these) ----------------------------------

MEASURE_KINDS = ("step", "ops", "moe", "collectives")
MOE_BATCHES = (1, 8, 32, 128, 512, 2048)  # tokens per MoE block, as in the GPU probe


def add_torch_arguments(parser) -> None:
    """Add the torch backend's flags to an argparse parser; flags the parser already has (--model, --tp) are reused."""
    have = set(getattr(parser, "_option_string_actions", {}))
    group = parser.add_argument_group("torch backend")

    def add(flag: str, **kw) -> None:
        if flag not in have:
            group.add_argument(flag, **kw)

    add("--model", action="append", help="catalog model name, HF id or config.json (repeat or comma-separate)")
    add("--tp", default="1", help="tensor parallel degree(s) of the shard, e.g. 1,2,4")
    add("--ep", default="1", help="expert parallel degree(s) of MoE blocks, e.g. 1,8")
    add("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add("--dtype", default=None, choices=sorted(_DTYPE_NAMES), help="bf16 on GPU, fp32 on CPU by default")
    add("--measure", default="step", help=f"comma list of {', '.join(MEASURE_KINDS)} (default step)")
    add("--batches", default=None, help="decode batches / GEMM m / MoE tokens, e.g. 1,8,32,128")
    add("--contexts", default=None, help="decode contexts in tokens, e.g. 1024,4096")
    add("--prefill-tokens", default=None, help="prefill chunk sizes in tokens, e.g. 512,2048")
    add("--prefill-prior", default="0", help="tokens already cached before each prefill chunk, e.g. 0,8192")
    add("--layers-timed", type=int, default=5, help="distinct decoder layers in the timed stack")
    add("--replays", type=int, default=10, help="timed replays per measurement (median reported)")
    add("--warmup", type=int, default=3, help="warm-up replays per measurement")
    add("--world-size", default="2", help="processes for collectives, e.g. 2,4,8")
    add("--collective-sizes", default=None, help="message sizes in bytes for collectives")
    add("--memory-gb", type=float, default=None, help="device memory to plan with (default: the card's; CPU 2 GiB)")
    add("--time-budget-s", type=float, default=None, help="stop starting measurements after this many seconds")
    add("--csv", default=None, help="also append rows to this CSV file as they complete")


def collect_torch(args: Any, store: Any = None) -> pd.DataFrame:
    """Run the torch backend from CLI args (Namespace or dict); rows go to `store` and/or `--csv` as they finish."""
    get = (lambda k, d=None: args.get(k, d)) if isinstance(args, dict) else (lambda k, d=None: getattr(args, k, d))
    from features.catalog import resolve_model

    from collect.backends.torch_collectives import default_message_sizes, measure_collectives

    measure = [m.strip() for m in str(get("measure", "step") or "step").split(",") if m.strip()]
    bad = sorted(set(measure) - set(MEASURE_KINDS))
    if bad:
        raise InputError(f"--measure {','.join(bad)}: expected some of {', '.join(MEASURE_KINDS)}")
    names = _names(get("model"))
    if any(m in measure for m in ("step", "moe")) and not names:
        raise InputError("--model is required for step and moe measurements")
    models = [resolve_model(n) for n in names]
    memory_gb = get("memory_gb")
    backend = TorchStepBackend(
        get("device"), get("dtype"), layers_timed=_int_or(get("layers_timed"), 5), replays=_int_or(get("replays"), 10),
        warmup=_int_or(get("warmup"), 3), memory_bytes=memory_gb * 2**30 if memory_gb else None,
        time_budget_s=get("time_budget_s"),
    )
    sink = make_sink(get("csv"), store)
    tps, eps = parse_int_list(get("tp", 1), "tp"), parse_int_list(get("ep", 1), "ep")
    default = StepGrid() if backend.is_cuda else cpu_step_grid()
    grid = StepGrid(
        batches=parse_int_list(get("batches"), "batches") or default.batches,
        contexts=parse_int_list(get("contexts"), "contexts") or default.contexts,
        prefill_tokens=parse_int_list(get("prefill_tokens"), "prefill tokens") or default.prefill_tokens,
        prefill_prior=parse_int_list(get("prefill_prior", "0"), "prefill prior", allow_zero=True) or (0,),
    )
    moe_batches = parse_int_list(get("batches"), "batches") or MOE_BATCHES
    frames = []
    for model in models:
        if model.is_moe and ("step" in measure or "ops" in measure):
            _log(f"[yellow]{model.name} is a mixture of experts: measure its expert block with --measure moe[/yellow]")
        if "step" in measure and not model.is_moe:
            for tp in tps:
                frames.append(backend.measure_model(model, tp, grid, on_row=sink))
        if "ops" in measure and not model.is_moe:
            for tp in tps:
                og = model_op_grid(model, tp, grid.batches, grid.contexts)
                frames.append(backend.measure_ops(og, on_row=sink, model=model.name, tp=tp))
        if "moe" in measure and model.is_moe:
            for ep in eps:
                frames.append(backend.measure_moe(model, ep, moe_batches, on_row=sink))
    if "ops" in measure and not models:
        frames.append(backend.measure_ops(probe_op_grid() if backend.is_cuda else cpu_op_grid(), on_row=sink))
    if "collectives" in measure:
        sizes = parse_int_list(get("collective_sizes"), "collective sizes") or default_message_sizes(backend.is_cuda)
        for ws in parse_int_list(get("world_size", 2), "world size"):
            frames.append(measure_collectives(ws, sizes, backend="nccl" if backend.is_cuda else "gloo",
                                              on_row=sink, dtype=backend.dtype_name))
    for line in backend.skipped:
        _log(f"[yellow]skipped {line}[/yellow]")
    return _concat([f for f in frames if len(f)])


def _int_or(value: Any, default: int) -> int:
    return default if value is None else int(value)


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def cpu_step_grid() -> StepGrid:
    """A step grid small enough for a CPU run (seconds per model)."""
    return StepGrid(batches=(1, 4), contexts=(128, 512), prefill_tokens=(64, 256), prefill_prior=(0,))


def cpu_op_grid() -> OpGrid:
    """An op grid small enough for a CPU run."""
    return OpGrid(
        gemm=tuple(GemmShape(m, n, k) for n, k in ((512, 256), (256, 1024)) for m in (1, 16, 128)),
        attn=tuple(AttnShape(b, c, 2, 4, 64) for b in (1, 4) for c in (256, 1024)),
        kv_append=tuple(KvAppendShape(b, 512, 2, 64) for b in (1, 4)),
        rope=tuple(RopeShape(t, 8, 2, 64, 1024) for t in (1, 64)),
        copy_elements=(2**20,),
    )
