"""Why the winner of a search wins: its capacity, bandwidth and communication terms beside the runner-up's.

Step terms are normalised to GPU-milliseconds per output token (term × GPUs per replica / running batch), so
layouts of different sizes compare on one scale: their sum is roughly GPUs / throughput.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TERM_LABELS = {"weights": "weight streaming (HBM bandwidth)", "kv_cache": "KV-cache streaming (HBM bandwidth)",
               "compute": "tensor-core compute", "communication": "communication (all-reduce, all-to-all, PP)",
               "latency": "kernel and engine latency"}
METRICS = [  # (label, column, digits)
    ("objective", None, 1), ("output tok/s", "pred_output_throughput", 0), ("tok/s per GPU", "throughput_per_gpu", 1),
    ("TPOT ms", "pred_tpot_ms", 2), ("TTFT ms", "pred_ttft_ms", 1), ("makespan s", "pred_makespan_s", 1),
    ("KV capacity tokens / replica", "pred_kv_capacity_tokens", 0),
    ("sequences the KV cache holds", "batch_limit_kv", 0), ("running batch / replica", "steady_batch", 0),
    ("max_num_seqs", "max_num_seqs", 0), ("weights GB / GPU", "weight_gb_per_gpu", 1),
    ("HBM bandwidth use", "hbm_bw_util", 2), ("KV transfer ms / request", "term_kv_transfer_ms", 3),
]


def gpus_per_replica(r: pd.Series) -> float:
    """GPUs behind one running batch: an attention replica (aggregated, decode pool) or the dominant mix member."""
    tp, pp = float(r["tp"]), float(r["pp"])
    if r["mode"] == "mixed":
        a, b = r["dp"] * tp * pp, r["b_dp"] * r["b_tp"] * r["b_pp"]
        return tp * pp if a >= b else float(r["b_tp"] * r["b_pp"])
    return tp * pp / (tp if bool(r["attention_dp"]) else 1.0)


def per_token_terms(r: pd.Series) -> dict[str, float]:
    """Each step term in GPU-ms per output token."""
    scale = gpus_per_replica(r) / max(float(r["steady_batch"]), 1.0)
    return {k: float(r[f"term_{k}_ms"]) * scale for k in TERM_LABELS}


def _runner_up(ranked: pd.DataFrame, best_layout: str) -> pd.Series | None:
    pool = ranked[ranked["meets_slo"]] if ranked["meets_slo"].any() else ranked[ranked["feasible"]]
    other = pool[pool["layout"] != best_layout]
    return other.iloc[0] if len(other) else None


def _fmt(v, digits: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "-" if not np.isfinite(f) else f"{f:,.{digits}f}"


def explain_result(result) -> dict:
    """Winner vs runner-up: metrics and per-token terms side by side, and the reasons in words."""
    ranked = result.ranked
    if result.best is None or ranked.empty:
        return {"why": [result.message or "no winner to explain"], "table": []}
    w = ranked.iloc[0]
    r = _runner_up(ranked, w["layout"])
    from predictor.search import OBJECTIVES

    col, direction = OBJECTIVES[result.objective]
    table = []
    for label, c, d in METRICS:
        c = c or col
        if c not in ranked.columns:
            continue
        table.append({"metric": label if label != "objective" else f"objective ({result.objective})",
                      "winner": _val(w[c]), "runner_up": _val(r[c]) if r is not None else None})
    wt = per_token_terms(w)
    rt = per_token_terms(r) if r is not None else {}
    for k, label in TERM_LABELS.items():
        table.append({"metric": f"{label}, GPU-ms per output token", "winner": wt[k], "runner_up": rt.get(k)})
    for c in ("regime", "bottleneck", "mode"):
        table.append({"metric": c, "winner": str(w[c]), "runner_up": str(r[c]) if r is not None else None})
    why = _reasons(w, r, col, direction, wt, rt)
    return {"winner": str(w["layout"]), "runner_up": None if r is None else str(r["layout"]), "table": table, "why": why}


def _val(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if np.isfinite(v) else None
    return v if not isinstance(v, np.bool_) else bool(v)


def _reasons(w: pd.Series, r: pd.Series | None, col: str, direction: str, wt: dict, rt: dict) -> list[str]:
    wl = w["layout"]
    out = [f"{wl} is {w['regime']}-bound ({w['bottleneck']})."]
    if r is None:
        out.append("no other layout was feasible (or met the SLO) to compare with.")
        return out
    rl = r["layout"]
    a, b = float(w[col]), float(r[col])
    if np.isfinite(a) and np.isfinite(b) and b:
        gain = (a / b - 1.0) if direction == "maximize" else (1.0 - a / b)
        out.append(f"it beats the runner-up {rl} by {gain:.1%} on {col.replace('pred_', '')} "
                   f"({_fmt(a, 1)} vs {_fmt(b, 1)}); {rl} is {r['regime']}-bound ({r['bottleneck']}).")
    # capacity: how many sequences each replica's KV cache holds, and the batch it therefore runs
    wb, rb = float(w["batch_limit_kv"]), float(r["batch_limit_kv"])
    if r["regime"] == "capacity" or w["regime"] == "capacity" or (min(wb, rb) > 0 and max(wb, rb) / min(wb, rb) > 1.2):
        out.append(f"capacity: a {wl} replica's KV cache holds {_fmt(w['pred_kv_capacity_tokens'], 0)} tokens "
                   f"({_fmt(wb, 0)} sequences at the mean context) and runs {_fmt(w['steady_batch'], 0)} at once; "
                   f"{rl}: {_fmt(r['pred_kv_capacity_tokens'], 0)} tokens ({_fmt(rb, 0)} sequences), running "
                   f"{_fmt(r['steady_batch'], 0)}.")
    # per-token terms: where the winner spends less GPU time per output token
    diffs = sorted(((rt[k] - wt[k], k) for k in TERM_LABELS if np.isfinite(rt.get(k, np.nan)) and np.isfinite(wt[k])),
                   reverse=True)
    for d, k in diffs[:2]:
        if abs(d) <= 1e-9:
            continue
        verb = "saves" if d > 0 else "spends more on"
        out.append(f"{TERM_LABELS[k]}: {wl} {verb} {abs(d):.3f} GPU-ms per output token "
                   f"({wt[k]:.3f} vs {rt[k]:.3f}).")
    comm_w, comm_r = wt["communication"], rt.get("communication", 0.0)
    total_w = sum(wt.values())
    if total_w > 0 and comm_w / total_w > 0.1:
        out.append(f"communication is {comm_w / total_w:.0%} of {wl}'s per-token time ({comm_w:.3f} vs {comm_r:.3f} "
                   f"GPU-ms for {rl}).")
    if w["mode"] == "disaggregated":
        out.append(f"disaggregated: decode steps carry no prompt tokens; each prompt's KV crosses to the decode pool "
                   f"in {float(w['term_kv_transfer_ms']):.2f} ms (part of TTFT).")
    if w["mode"] == "mixed":
        out.append("mixed replicas: the router splits the load in proportion to what each replica type sustains.")
    return out


def explain_lines(ex: dict) -> list[list[str]]:
    """The explanation table as rows of strings (metric, winner, runner-up) for a terminal."""
    rows = []
    for t in ex.get("table", []):
        digits = 3 if "GPU-ms" in t["metric"] or "transfer" in t["metric"] else (2 if "TPOT" in t["metric"] or "HBM" in t["metric"] else 1)
        rows.append([t["metric"], _fmt(t["winner"], digits), _fmt(t["runner_up"], digits) if t["runner_up"] is not None else "-"])
    return rows
