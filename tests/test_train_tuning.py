"""Optuna tuning: TPE with a fixed seed and median pruning over grouped folds, on real step data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from train.frames import physics
from train.residual import ResidualModel
from train.tuning import fold_loss, tune

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "gpu_probe").is_dir(), reason="../shared/data is absent (outside the workspace)")


@pytest.fixture(scope="module")
def steps():
    from collect.importers.gpu_probe import import_gpu_probe

    df, _ = import_gpu_probe(SHARED / "gpu_probe")
    return physics(df[df["kind"] == "step"].sample(180, random_state=0).reset_index(drop=True))


def test_tuning_is_reproducible_and_starts_from_current(steps):
    model = ResidualModel(seed=0, n_estimators=30)
    best_a, study_a = tune(model, steps, n_trials=6, split="model", n_folds=3, seed=5)
    best_b, study_b = tune(model, steps, n_trials=6, split="model", n_folds=3, seed=5)
    assert best_a == best_b
    assert len(study_a.trials) == 6
    assert study_a.trials[0].params["n_estimators"] == 30  # trial 0 is the model as given
    assert 20 <= best_a["n_estimators"] <= 120 and 2 <= best_a["max_depth"] <= 8
    assert study_a.best_value <= study_a.trials[0].value
    assert np.isfinite(study_a.best_value)
    assert isinstance(study_a.pruner, __import__("optuna").pruners.MedianPruner)


def test_fold_loss_is_zero_for_perfect_predictions(steps):
    preds = {"pred_layer_ms": steps["layer_ms"].to_numpy(float)}
    assert fold_loss(preds, steps) == 0.0
    preds = {"pred_layer_ms": 2 * steps["layer_ms"].to_numpy(float)}
    assert fold_loss(preds, steps) == pytest.approx(np.log(2))
