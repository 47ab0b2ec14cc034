"""Grouped cross-validation of any model family and the accuracy report over its held-out predictions."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from train.frames import target_rows
from train.metrics import target_report
from train.residual import FrameModel
from train.splits import group_key, split_folds
from train.targets import ALL_TARGETS, pred_cols


def usable_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows with at least one target measured and answered by physics (every family is scored on these)."""
    return np.logical_or.reduce([target_rows(frame, t) for t in ALL_TARGETS])


def cross_validate(model: FrameModel, frame: pd.DataFrame, split: str, n_folds: int = 5, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Held-out predictions for every usable row: each fold is predicted by a copy of `model` fitted on the rest.

    Returns the usable rows with `pred_*` columns and `fold`; empty when the split has a single group.
    """
    framed = model.prepare(frame)
    framed = framed[usable_rows(framed)].reset_index(drop=True)
    folds = split_folds(framed, split, n_folds, seed)
    parts = []
    for k, (tr, te) in enumerate(folds):
        fitted = model.clone(seed=model.seed).fit(framed.iloc[tr])
        test = framed.iloc[te]
        preds = fitted.predict_arrays(test)
        parts.append(pd.concat([test, pd.DataFrame(preds, index=test.index).assign(fold=k)], axis=1))
        if progress:
            progress(k + 1, len(folds))
    if not parts:
        return framed.iloc[0:0].assign(fold=pd.Series(dtype=int))
    return pd.concat(parts).sort_index()


def report(preds: pd.DataFrame, targets: tuple[str, ...] = ALL_TARGETS) -> dict[str, dict]:
    """Per target: n, median and p90 APE, coverage, Spearman across layouts, regret (targets with predictions)."""
    out = {}
    for t in targets:
        if pred_cols(t)[0] in preds.columns:
            r = target_report(preds, t)
            if r.get("n"):
                out[t] = r
    return out


def group_labels(preds: pd.DataFrame, split: str) -> pd.Series:
    """What to group errors by for a split (random: by model)."""
    return group_key(preds, "model" if split in ("random", "none") else split)
