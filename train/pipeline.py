"""Train an artifact-ready model from a measurement frame: physics features, optional Optuna tuning, fit, metadata."""

from __future__ import annotations

from typing import Callable

import pandas as pd

from features.errors import InputError
from train.artifact import artifact_metadata, canonical_order
from train.baselines import FAMILIES
from train.evaluate import usable_rows
from train.frames import physics
from train.residual import FrameModel
from train.tuning import tune


def make_model(family: str = "residual-xgb", **params) -> FrameModel:
    """An unfitted model of a named family (`residual-xgb`, `physics`, `descriptor-xgb`, `residual-rf`, ...)."""
    if family not in FAMILIES:
        raise InputError(f"unknown model family {family!r} (choose from {', '.join(FAMILIES)})")
    return FAMILIES[family](**params)


def subsample_per_kind(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows of each kind (a seeded sample), for quick tuning trials on large data."""
    parts = [g if len(g) <= max_rows else g.sample(max_rows, random_state=seed) for _, g in frame.groupby("kind")]
    return pd.concat(parts) if parts else frame


def train_model(frame: pd.DataFrame, family: str = "residual-xgb", seed: int = 0, tune_trials: int = 0,
                tune_split: str = "model", params: dict | None = None, tune_max_rows: int = 5000,
                progress: Callable[[str], None] | None = None) -> tuple[FrameModel, dict]:
    """Fit a model on every usable measurement of `frame`; returns it with the metadata an artifact records.

    With `tune_trials`, Optuna first searches the hyperparameters on grouped folds of at most `tune_max_rows`
    rows per kind; the final model is fitted on everything.
    """
    framed = physics(frame)
    usable = usable_rows(framed)
    if not usable.any():
        raise InputError("no usable measurements: need rows with status ok, a measured target and a physics answer")
    framed = canonical_order(framed[usable])
    model = make_model(family, seed=seed, **(params or {}))
    tuning = None
    if tune_trials:
        report = (lambda i, v: progress(f"tuning trial {i}/{tune_trials} best loss {v:.4f}")) if progress else None
        best, study = tune(model, subsample_per_kind(framed, tune_max_rows, seed), tune_trials, split=tune_split,
                           seed=seed, progress=report)
        model = model.clone(**best)
        if study is not None:
            tuning = {"trials": len(study.trials), "split": tune_split, "best_loss": study.best_value,
                      "best_params": study.best_params,
                      "pruned": sum(t.state.name == "PRUNED" for t in study.trials)}
    model.fit(framed, progress=(lambda t: progress(f"fitting {t}")) if progress else None)
    meta = artifact_metadata(model, frame=framed, metrics=model.fit_report_, tuning=tuning,
                             sources=sorted(framed["source"].dropna().astype(str).unique().tolist())
                             if "source" in framed.columns else [])
    return model, meta
