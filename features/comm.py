"""Communication physics: TP all-reduce, EP all-to-all, PP send/receive, as latency + size / bandwidth.

Collective constants (latency, bus bandwidth as a fraction of the link) are fitted on measured NCCL and custom
all-reduce timings (aiconfigurator op data) per GPU count; links come from the GPU catalog, and a group that spans
nodes uses the inter-node bandwidth.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from features.calibration import Calibration
from features.elementwise import PLAIN, any_, maximum, where
from features.specs import GPUSpec

_DEFAULT = {"all_reduce": (0.008, 0.75), "all_gather": (0.008, 0.75), "alltoall": (0.010, 0.6), "p2p": (0.006, 0.8)}


@dataclass(frozen=True)
class _CollectiveTable:
    """One collective's measured constants as arrays (group sizes ascending), built once per calibration."""

    sizes: np.ndarray
    log2_sizes: np.ndarray
    alpha_ms: np.ndarray
    bus_bw_frac: np.ndarray
    by_group: dict = field(default_factory=dict)  # group size (float) -> (alpha_ms, bus_bw_frac), for scalar n


_TABLES: dict[tuple[int, str], tuple[weakref.ref, _CollectiveTable | None]] = {}


def _table(cal: Calibration, op: str) -> _CollectiveTable | None:
    """The measured table of `op` in `cal` (None: not measured, built-in defaults apply). Cached per calibration
    object: a Calibration is frozen, and its collectives table is never modified after it is built."""
    key = (id(cal), op)
    hit = _TABLES.get(key)
    if hit is not None and hit[0]() is cal:
        return hit[1]
    table = cal.collectives.get(op, {})
    out = None
    if table:
        sizes = np.array(sorted(int(k) for k in table))
        out = _CollectiveTable(sizes, np.log2(sizes), np.array([table[str(s)][0] for s in sizes]),
                               np.array([table[str(s)][1] for s in sizes]))
    if len(_TABLES) > 256:  # calibrations come and go (fits): forget the dead ones (safe beside other threads)
        for k, (ref, _) in list(_TABLES.items()):
            if ref() is None:
                _TABLES.pop(k, None)
    _TABLES[key] = (weakref.ref(cal), out)
    return out


def _constants(cal: Calibration, op: str, n):
    """(alpha_ms, bus_bw_frac) arrays for a collective over `n` GPUs (nearest measured group size); numbers for
    a plain number `n`."""
    t = _table(cal, op)
    if isinstance(n, PLAIN):
        if t is None:
            return _DEFAULT[op]
        hit = t.by_group.get(float(n))
        if hit is not None:
            return hit
    n = np.asarray(n)
    if t is None:
        a, f = _DEFAULT[op]
        return np.full(n.shape, a, dtype=float), np.full(n.shape, f, dtype=float)
    if not n.ndim:  # one group size: computed once per size
        key = float(n)
        if key not in t.by_group:
            idx = int(np.abs(np.log2(max(int(n), 1)) - t.log2_sizes).argmin())
            alpha = t.alpha_ms[idx] * np.maximum(1.0, np.log2(np.maximum(n, 2)) / t.log2_sizes[idx])
            t.by_group[key] = (alpha, t.bus_bw_frac[idx])
        return t.by_group[key]
    idx = np.abs(np.log2(np.maximum(n, 1))[..., None] - t.log2_sizes[None, :]).argmin(-1)
    # latency grows with group size beyond the measured range (ring/tree steps)
    alpha = t.alpha_ms[idx] * np.maximum(1.0, np.log2(np.maximum(n, 2)) / t.log2_sizes[idx])
    return alpha, t.bus_bw_frac[idx]


def link_bandwidth_gbps(gpu: GPUSpec, group_size, gpus_per_node=None):
    """Per-GPU bandwidth of a group: NVLink/fabric inside a node, the NIC when the group spans nodes."""
    per_node = gpu.gpus_per_node if gpus_per_node is None else gpus_per_node
    return where(_rows(group_size) > per_node, gpu.internode_bandwidth_gbps, gpu.link_bandwidth_gbps)


def ep_group_gpus_per_node(gpu: GPUSpec, layout):
    """GPUs of one EP group that fit in a node. vLLM orders ranks (DP, PP, TP), so an EP group that spans DP ranks
    takes TP-sized blocks `tp × pp` GPUs apart: it spans `ep × pp` GPUs and leaves the node once that exceeds
    `gpus_per_node` (an EP group inside TP is contiguous)."""
    spans_dp = _rows(layout.ep) > _rows(layout.tp)
    return where(spans_dp, gpu.gpus_per_node / maximum(_rows(layout.pp), 1), gpu.gpus_per_node)


def _rows(v):
    """A plain number as it is, anything else as an array (`np.asarray`)."""
    return v if isinstance(v, PLAIN) else np.asarray(v)


def _single_gpu_groups(message_bytes, n, gpu: GPUSpec, gpus_per_node=None):
    """Zeros shaped like a collective's time when no row has a group of more than one GPU (nothing to exchange),
    else None: the collectives below skip their arithmetic, whose answer `np.where(n > 1, ...)` would discard."""
    if any_(n > 1):
        return None
    per_node = gpu.gpus_per_node if gpus_per_node is None else gpus_per_node
    return np.zeros(np.broadcast_shapes(np.shape(message_bytes), np.shape(n), np.shape(per_node),
                                        np.shape(gpu.internode_bandwidth_gbps), np.shape(gpu.link_bandwidth_gbps)))


def allreduce_ms(message_bytes, n, gpu: GPUSpec, cal: Calibration, gpus_per_node=None):
    """Ring all-reduce of `message_bytes` over `n` GPUs: alpha + 2(n−1)/n × bytes / bus bandwidth; 0 when n = 1."""
    n = _rows(n)
    none = _single_gpu_groups(message_bytes, n, gpu, gpus_per_node)
    if none is not None:
        return none
    alpha, frac = _constants(cal, "all_reduce", n)
    bw = link_bandwidth_gbps(gpu, n, gpus_per_node) * 1e9 * frac
    t = alpha + 2 * (n - 1) / maximum(n, 1) * np.asarray(message_bytes) / bw * 1e3
    return where(n > 1, t, 0.0)


def allgather_ms(message_bytes, n, gpu: GPUSpec, cal: Calibration, gpus_per_node=None):
    """All-gather of a `message_bytes` result over `n` GPUs: alpha + (n−1)/n × bytes / bus bandwidth."""
    n = _rows(n)
    none = _single_gpu_groups(message_bytes, n, gpu, gpus_per_node)
    if none is not None:
        return none
    alpha, frac = _constants(cal, "all_gather", n)
    bw = link_bandwidth_gbps(gpu, n, gpus_per_node) * 1e9 * frac
    t = alpha + (n - 1) / maximum(n, 1) * np.asarray(message_bytes) / bw * 1e3
    return where(n > 1, t, 0.0)


def alltoall_ms(message_bytes, n, gpu: GPUSpec, cal: Calibration, gpus_per_node=None):
    """All-to-all where each GPU sends `message_bytes` in total: alpha + (n−1)/n × bytes / bus bandwidth."""
    n = _rows(n)
    none = _single_gpu_groups(message_bytes, n, gpu, gpus_per_node)
    if none is not None:
        return none
    alpha, frac = _constants(cal, "alltoall", n)
    bw = link_bandwidth_gbps(gpu, n, gpus_per_node) * 1e9 * frac
    t = alpha + (n - 1) / maximum(n, 1) * np.asarray(message_bytes) / bw * 1e3
    return where(n > 1, t, 0.0)


def p2p_ms(message_bytes, gpu: GPUSpec, cal: Calibration, crosses_node=False):
    """One pipeline-stage hand-off (send/receive of activations) between neighbouring stages."""
    alpha, frac = _DEFAULT["p2p"]
    bw = where(crosses_node, gpu.internode_bandwidth_gbps, gpu.link_bandwidth_gbps) * 1e9 * frac
    return alpha + np.asarray(message_bytes) / bw * 1e3
