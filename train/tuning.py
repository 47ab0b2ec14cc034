"""Optuna tuning of a family's hyperparameters on grouped folds (TPE, median pruning, fixed seed, trial budget)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import optuna
import pandas as pd

from train.evaluate import usable_rows
from train.residual import FrameModel, ResidualModel
from train.splits import split_folds
from train.targets import ALL_TARGETS, pred_cols


def suggest_xgb(trial: optuna.Trial, monotone: bool = True) -> dict:
    """XGBoost search space; tree counts stay small enough for 100,000-row predictions under a second."""
    p = {
        "n_estimators": trial.suggest_int("n_estimators", 20, 120, step=10),
        "max_depth": trial.suggest_int("max_depth", 2, 8),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.4, log=True),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 30.0, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 30.0, log=True),
    }
    if monotone:
        p["monotone_phys"] = trial.suggest_categorical("monotone_phys", [0, 1])
    p["source_balance"] = trial.suggest_categorical("source_balance", [0.0, 0.5, 1.0])
    return p


SEARCH_SPACES: dict[str, Callable[[optuna.Trial], dict]] = {
    "residual-xgb": suggest_xgb,
    "descriptor-xgb": lambda t: suggest_xgb(t, monotone=False),
    "residual-rf": lambda t: {
        "n_estimators": t.suggest_int("n_estimators", 50, 300, step=50),
        "min_samples_leaf": t.suggest_int("min_samples_leaf", 1, 20, log=True),
        "max_features": t.suggest_float("max_features", 0.2, 1.0),
    },
    "residual-knn": lambda t: {"n_neighbors": t.suggest_int("n_neighbors", 1, 30, log=True)},
    "residual-mlp": lambda t: {
        "hidden": t.suggest_categorical("hidden", [32, 64, 128]),
        "learning_rate": t.suggest_float("learning_rate", 3e-4, 1e-2, log=True),
        "weight_decay": t.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    },
}


def fold_loss(preds: dict[str, np.ndarray], test: pd.DataFrame) -> float:
    """Mean over targets of (median + 90th-percentile) absolute log error / 2: what the report ranks by."""
    losses = []
    for t in ALL_TARGETS:
        p = pred_cols(t)[0]
        if p not in preds or t not in test.columns:
            continue
        meas = pd.to_numeric(test[t], errors="coerce").to_numpy(float)
        ok = np.isfinite(meas) & (meas > 0) & np.isfinite(preds[p]) & (preds[p] > 0)
        if ok.sum() < 3:
            continue
        e = np.abs(np.log(preds[p][ok]) - np.log(meas[ok]))
        losses.append(0.5 * (np.median(e) + np.quantile(e, 0.9)))
    return float(np.mean(losses)) if losses else float("nan")


def tune(model: FrameModel, frame: pd.DataFrame, n_trials: int, split: str = "model", n_folds: int = 3,
         seed: int = 0, progress: Callable[[int, float], None] | None = None) -> tuple[dict, optuna.Study]:
    """Search `model`'s family's hyperparameters; returns the best ones (the current ones are trial 0).

    Each trial fits on grouped folds without interval calibration (calibration does not change the point
    prediction) and reports the running mean loss after each fold, so the median pruner stops poor trials early.
    """
    space = SEARCH_SPACES.get(model.family)
    if space is None or n_trials < 1:
        return dict(model.hyper), None
    framed = model.prepare(frame)
    framed = framed[usable_rows(framed)].reset_index(drop=True)
    folds = split_folds(framed, split, n_folds, seed) or split_folds(framed, "random", n_folds, seed)
    if not folds:
        return dict(model.hyper), None

    def objective(trial: optuna.Trial) -> float:
        params = space(trial)
        losses = []
        for k, (tr, te) in enumerate(folds):
            fitted = model.clone(calibration=(), **params).fit(framed.iloc[tr])
            test = framed.iloc[te]
            loss = fold_loss(fitted.predict_arrays(test), test)
            if np.isfinite(loss):
                losses.append(loss)
            trial.report(float(np.mean(losses)) if losses else float("inf"), k)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(losses)) if losses else float("inf")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    current = {k: v for k, v in model.get_params().items() if k in _param_names(space)}
    study.enqueue_trial(current)

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if progress:
            progress(trial.number + 1, study.best_value)

    study.optimize(objective, n_trials=n_trials, callbacks=[callback])
    return {**current, **study.best_params}, study


def _param_names(space: Callable[[optuna.Trial], dict]) -> set[str]:
    """Names a search space suggests (found by sampling it once on a throwaway trial)."""
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return set(space(probe.ask()))


__all__ = ["ResidualModel", "SEARCH_SPACES", "fold_loss", "tune"]
