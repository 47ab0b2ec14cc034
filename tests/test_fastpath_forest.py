"""The compiled forest (`train.fastpath.CompiledForest`, the small-batch path of the learned layer) walks XGBoost's
trees to XGBoost's own answers, missing values included, for several boosters at once, and the learned layer gives
the same predictions whether a frame takes the compiled path (few rows) or XGBoost's (many)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from train.fastpath import CompiledForest
from train.learners import XGBLearner
from train.residual import FAST_PATH_ROWS


def _fitted(seed: int, n_features: int = 6) -> XGBLearner:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, n_features)).astype(np.float32)
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values send rows down each split's default branch
    y = np.nan_to_num(X[:, 0]) * 2 - np.nan_to_num(X[:, 1]) ** 2 + rng.normal(scale=0.1, size=400)
    return XGBLearner(n_estimators=40, max_depth=5 + seed % 2, learning_rate=0.2, seed=seed).fit(X, y)


def test_compiled_forest_matches_xgboost_with_missing_values():
    learners = [_fitted(0), _fitted(1), _fitted(2)]
    forest = CompiledForest.from_boosters([lr._booster for lr in learners], n_base=6, per_booster_column=False)
    rng = np.random.default_rng(7)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    X[rng.random(X.shape) < 0.2] = np.nan
    got = forest.predict(X)
    for j, lr in enumerate(learners):
        want = lr._booster.inplace_predict(X)
        np.testing.assert_allclose(got[:, j], want, rtol=1e-5, atol=1e-5)
        for i in range(5):  # one row at a time: the single-prediction case
            np.testing.assert_allclose(forest.predict(X[i:i + 1])[0, j], want[i], rtol=1e-5, atol=1e-5)


def test_learned_layer_small_and_large_batches_agree():
    from benchmarks.speed import sweep_frame
    from predictor import Predictor

    p = Predictor.load()
    frame = sweep_frame(200, seed=3)
    frame = frame[frame["kind"] == "serving"].head(FAST_PATH_ROWS + 36).reset_index(drop=True)
    whole = p.predict_frame(frame)  # more rows than the compiled path takes: XGBoost
    parts = pd.concat([p.predict_frame(frame.iloc[i:i + 16]) for i in range(0, len(frame), 16)], ignore_index=True)
    cols = [c for c in whole.columns if c.startswith("pred_") and whole[c].notna().any()]
    assert len(cols) >= 9
    for c in cols:
        np.testing.assert_allclose(parts[c].to_numpy(float), whole[c].to_numpy(float), rtol=2e-5, equal_nan=True,
                                   err_msg=c)
