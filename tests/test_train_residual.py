"""The residual model and its baselines on a small real data set (the shared H200 GPU-probe step times)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from train.baselines import FAMILIES, PhysicsOnly
from train.evaluate import cross_validate, report
from train.frames import physics
from train.residual import ResidualModel
from train.targets import pred_cols

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "gpu_probe").is_dir(), reason="../shared/data is absent (outside the workspace)")
FAST = dict(n_estimators=40, learning_rate=0.15, inner_folds=2)


@pytest.fixture(scope="module")
def steps() -> pd.DataFrame:
    from collect.importers.gpu_probe import import_gpu_probe

    df, _ = import_gpu_probe(SHARED / "gpu_probe")
    return physics(df[df["kind"] == "step"].reset_index(drop=True))


@pytest.fixture(scope="module")
def fitted(steps) -> ResidualModel:
    return ResidualModel(seed=3, **FAST).fit(steps)


def test_training_is_deterministic_for_a_seed(steps, fitted):
    sub = steps.sample(150, random_state=1)
    a = ResidualModel(seed=3, **FAST).fit(sub).predict_arrays(steps)
    b = ResidualModel(seed=3, **FAST).fit(sub).predict_arrays(steps)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_predictions_finite_positive_and_inside_intervals(steps, fitted):
    out = fitted.predict(steps)
    assert len(out) == len(steps) and (out.index == steps.index).all()
    for t in ("layer_ms", "lm_head_ms"):
        p, lo, hi = (out[c].to_numpy() for c in pred_cols(t))
        has = np.isfinite(out[f"phys_{t}"].to_numpy(float))
        assert has.sum() > 200
        assert np.isfinite(p[has]).all() and (p[has] > 0).all()
        assert (lo[has] <= p[has]).all() and (p[has] <= hi[has]).all() and (lo[has] > 0).all()


def test_small_batch_fast_path_matches_xgboost(steps, fitted):
    few = steps.iloc[:7]
    fast = fitted.predict_arrays(few)  # compiled forest (a few rows)
    slow = fitted.predict_arrays(pd.concat([few] * 20))  # XGBoost inplace_predict (many rows)
    for k, v in fast.items():
        np.testing.assert_allclose(v, slow[k][:7], rtol=1e-5, equal_nan=True)


def test_learning_improves_on_physics_in_sample(steps, fitted):
    out = fitted.predict(steps)
    meas = out["layer_ms"].to_numpy(float)
    err_model = np.median(np.abs(out["pred_layer_ms"] / meas - 1))
    err_phys = np.median(np.abs(out["phys_layer_ms"] / meas - 1))
    assert err_model < err_phys / 2


def test_zero_data_gives_the_physics_answer(fitted):
    serving = pd.DataFrame({"kind": "serving", "model": "llama-3.1-8b", "gpu": "h200", "tp": [1, 2], "isl": 100.0,
                            "osl": 1000.0, "num_requests": 200})
    out = fitted.predict(serving)  # the model saw step rows only: serving targets are pure physics
    np.testing.assert_allclose(out["pred_output_throughput"], out["phys_output_throughput"], rtol=1e-12)
    assert (out["pred_output_throughput_lo"] < out["pred_output_throughput"]).all()
    untrained = ResidualModel().fit(serving.assign(status="error"))
    assert not untrained.learners_
    np.testing.assert_allclose(untrained.predict(serving)["pred_tpot_ms"], out["phys_tpot_ms"], rtol=1e-12)


def test_monotone_in_the_physics_answer(steps, fitted):
    row = steps[steps["phase"] == "decode"].iloc[[10]]
    scaled = pd.concat([row] * 20, ignore_index=True)
    scaled["phys_layer_ms"] = row["phys_layer_ms"].iloc[0] * np.geomspace(0.3, 3.0, 20)
    pred = fitted.predict(scaled)["pred_layer_ms"].to_numpy()
    assert (np.diff(pred) >= -1e-12).all()


def test_leave_model_out_error_and_coverage(steps):
    preds = cross_validate(ResidualModel(seed=0, **FAST), steps, "model", n_folds=3)
    r = report(preds)["layer_ms"]
    assert r["n"] == int(steps["layer_ms"].notna().sum())
    assert r["median_ape"] < 0.08
    assert 0.6 <= r["coverage"] <= 0.97


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_runs_in_the_harness(steps, family):
    params = {"n_estimators": 30} if family in ("residual-xgb", "descriptor-xgb", "residual-rf") else {}
    if family == "residual-mlp":
        params = {"epochs": 40}
    model = FAMILIES[family](seed=0, inner_folds=2, calibration=("random",), **params)
    preds = cross_validate(model, steps.sample(160, random_state=0), "random", n_folds=2)
    r = report(preds)
    assert r["layer_ms"]["n"] == 160
    assert np.isfinite(preds["pred_layer_ms"]).all() and (preds["pred_layer_ms"] > 0).all()


def test_physics_only_is_the_physics(steps):
    out = PhysicsOnly().fit(steps).predict(steps)
    np.testing.assert_allclose(out["pred_layer_ms"], out["phys_layer_ms"])


def test_descriptor_model_calibrates_on_unclipped_log_values(steps):
    from train.baselines import DescriptorXGB

    big = steps.assign(layer_ms=steps["layer_ms"] * 1e6, phys_layer_ms=steps["phys_layer_ms"] * 1e6)
    model = DescriptorXGB(seed=0, n_estimators=40, calibration=("random",), inner_folds=2).fit(big)
    lo, hi = model.calibration_["layer_ms"].offsets["random"]
    assert -1.0 < lo <= 0.0 <= hi < 1.0  # log(1e6 x ms) is ~14: clipping at +-7 would blow these up
    out = model.predict(big)
    assert np.median(np.abs(out["pred_layer_ms"] / big["layer_ms"] - 1)) < 0.2


def test_gpus_each_measured_by_one_source_leave_gpu_novelty_uncalibrated(steps):
    """Two data sets, each on its own GPU: every fold that holds a GPU out holds its whole source out too, which says
    how far a new data set is off, not a new GPU of a known one. Those residuals do not calibrate the GPU grouping,
    so a row of a known source on a new GPU gets the physics answer with the physics answer's own width."""
    other = steps.assign(source="engine", gpu="b300", layer_ms=steps["layer_ms"] * 3.0,
                         lm_head_ms=steps["lm_head_ms"] * 3.0)
    model = ResidualModel(seed=0, calibration=("random", "model", "gpu"), **FAST).fit(pd.concat([steps, other],
                                                                                               ignore_index=True))
    cal = model.calibration_["layer_ms"]
    assert "gpu" in cal.uncalibrated and "gpu" not in cal.offsets
    query = steps.iloc[:20].assign(gpu="h100-sxm")  # a known source on a GPU no training row came from
    out = model.predict(query)
    np.testing.assert_allclose(out["pred_layer_ms"], out["phys_layer_ms"])
    lo, hi = cal.physics_offsets[str(steps["source"].iloc[0])]
    np.testing.assert_allclose(out["pred_layer_ms_lo"], out["phys_layer_ms"] * np.exp(lo))
    np.testing.assert_allclose(out["pred_layer_ms_hi"], out["phys_layer_ms"] * np.exp(hi))
