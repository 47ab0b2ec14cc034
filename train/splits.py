"""Grouped cross-validation folds: leave models out, leave GPUs out, leave layouts out, or random."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from features.columns import columns_of
from features.errors import InputError

SPLITS = ("random", "model", "gpu", "layout")
LAYOUT_COLUMNS = ("tp", "pp", "dp", "ep", "attention_dp")


def layout_code(frame: pd.DataFrame) -> np.ndarray:
    """One int64 per row naming its parallel layout (tp, pp, dp, ep < 1000 each; attention-DP as a flag); fast."""
    cols = columns_of(frame)  # a pandas frame or a column table
    if cols.n == 1:  # a single scenario: plain numbers
        return np.array([_one_layout_code(cols)], dtype=np.int64)
    code = np.zeros(cols.n, dtype=np.int64)
    for i, col in enumerate(LAYOUT_COLUMNS):
        default = 0.0 if col == "attention_dp" else 1.0
        if col not in cols:
            vals = np.full(cols.n, default)
        else:
            raw = cols[col]
            try:
                vals = np.asarray(raw, dtype=float)
            except (TypeError, ValueError):
                text = pd.Series(raw, dtype="string").str.lower().replace({"true": "1", "false": "0"})
                vals = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            vals = np.where(np.isnan(vals), default, vals)
        code += np.clip(vals, 0, 999).astype(np.int64) * (1000**i)
    return code


def _one_layout_code(cols) -> int:
    """`layout_code` of a one-row table, read as the vectorised path reads it."""
    code = 0
    for i, col in enumerate(LAYOUT_COLUMNS):
        default = 0.0 if col == "attention_dp" else 1.0
        v = cols[col][0] if col in cols else default
        if isinstance(v, str):
            v = {"true": "1", "false": "0"}.get(v.lower(), v)
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = math.nan
        if math.isnan(v):
            v = default
        code += int(min(max(v, 0.0), 999.0)) * (1000**i)
    return code


def layout_label(code: int) -> str:
    """Readable form of a `layout_code`, e.g. `TP2xPP1xDP4xEP1` (`xADP` under attention-DP)."""
    tp, pp, dp, ep, adp = (int(code) // 1000**i % 1000 for i in range(5))
    return f"TP{tp}xPP{pp}xDP{dp}xEP{ep}" + ("xADP" if adp else "")


def group_key(frame: pd.DataFrame, split: str) -> pd.Series:
    """The group each row belongs to under `split` (rows of one group are always held out together)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if split == "random":
        return pd.Series(np.arange(len(frame)).astype(str), index=frame.index)
    if split == "layout":
        return pd.Series([layout_label(c) for c in layout_code(frame)], index=frame.index)
    return frame[split].astype("string").fillna("?")


def split_folds(
    frame: pd.DataFrame, split: str, n_folds: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Positional (train, test) index pairs; groups are dealt to folds by a seeded shuffle, balanced by size.

    With fewer groups than `n_folds` every group is its own fold (leave one group out); with a single group
    there is nothing to hold out and the list is empty.
    """
    keys = group_key(frame, split).to_numpy()
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if len(uniq) < 2 or len(frame) < 2:
        return []
    k = min(n_folds, len(uniq))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    if split != "random":  # greedy largest-first into the lightest fold keeps folds similar in size
        order = order[np.argsort(-counts[order], kind="stable")]
    fold_of_group = np.empty(len(uniq), dtype=int)
    load = np.zeros(k)
    for i, g in enumerate(order):
        f = i % k if split == "random" else int(np.argmin(load))
        fold_of_group[g] = f
        load[f] += counts[g]
    fold = fold_of_group[inverse]
    pos = np.arange(len(frame))
    return [(pos[fold != f], pos[fold == f]) for f in range(k) if (fold == f).any() and (fold != f).any()]
