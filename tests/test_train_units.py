"""Unit tests of train's pure parts: splits, conformal offsets, metrics, artifact save/load and its failures."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from features.errors import InputError
from train import artifact as art
from train.intervals import IntervalCalibration, conformal_offsets
from train.metrics import layout_ranking, target_report
from train.splits import group_key, layout_code, layout_label, split_folds


def _frame(n=60):
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "kind": "serving",
        "model": rng.choice(["a", "b", "c", "d", "e"], n),
        "gpu": rng.choice(["h100-sxm", "h200", "a100-80g"], n),
        "tp": rng.choice([1, 2, 4, 8], n), "pp": 1, "dp": rng.choice([1, 2], n), "ep": 1, "attention_dp": False,
    })


@pytest.mark.parametrize("split", ["model", "gpu", "layout"])
def test_grouped_folds_never_split_a_group(split):
    df = _frame()
    folds = split_folds(df, split, n_folds=3, seed=1)
    keys = group_key(df, split).to_numpy()
    assert folds
    seen_test = np.zeros(len(df), dtype=int)
    for tr, te in folds:
        assert not set(keys[tr]) & set(keys[te])
        seen_test[te] += 1
    assert (seen_test == 1).all()  # every row is held out exactly once


def test_folds_deterministic_and_single_group_gives_none():
    df = _frame()
    a = split_folds(df, "random", 4, seed=3)
    b = split_folds(df, "random", 4, seed=3)
    assert all((x[1] == y[1]).all() for x, y in zip(a, b))
    assert split_folds(df.assign(gpu="h200"), "gpu", 3) == []
    with pytest.raises(InputError):
        split_folds(df, "vendor")


def test_layout_code_roundtrip():
    df = pd.DataFrame({"tp": [2, 8], "pp": [1, 2], "dp": [4, 1], "ep": [1, 8], "attention_dp": [False, True]})
    assert [layout_label(c) for c in layout_code(df)] == ["TP2xPP1xDP4xEP1", "TP8xPP2xDP1xEP8xADP"]
    # missing layout columns mean the defaults (1, False)
    assert layout_label(layout_code(pd.DataFrame({"tp": [4]}))[0]) == "TP4xPP1xDP1xEP1"


def test_conformal_offsets_cover_and_bracket_zero():
    rng = np.random.default_rng(0)
    calib = rng.normal(0.1, 0.2, 2000)
    lo, hi = conformal_offsets(calib, 0.8)
    fresh = rng.normal(0.1, 0.2, 20000)
    cover = np.mean((fresh >= lo) & (fresh <= hi))
    assert 0.77 < cover < 0.84
    assert lo <= 0 <= hi
    # all-positive residuals: the interval still contains the point (lower offset 0)
    lo2, hi2 = conformal_offsets(np.abs(calib) + 0.5, 0.8)
    assert lo2 == 0.0 and hi2 > 0.5
    assert all(math.isnan(v) for v in conformal_offsets(np.array([]), 0.8))


def test_calibration_widens_for_unseen_model():
    cal = IntervalCalibration(0.8, {"random": (-0.05, 0.05), "model": (-0.3, 0.4)},
                              {"model": frozenset({"a"}), "gpu": frozenset({"h200"}), "layout": frozenset()})
    df = pd.DataFrame({"model": ["a", "z"], "gpu": ["h200", "h200"], "tp": [1, 1]})
    cal.seen["layout"] = frozenset(layout_code(df).tolist())
    lo, hi = cal.bounds(df)
    assert (lo[0], hi[0]) == (-0.05, 0.05)
    assert (lo[1], hi[1]) == (-0.3, 0.4)


def test_metrics_by_hand():
    df = pd.DataFrame({
        "kind": "serving", "model": "m", "gpu": "g", "isl": 100.0, "osl": 1000.0,
        "tp": [1, 2, 4], "pp": 1, "dp": 1, "ep": 1, "num_gpus": [1, 2, 4],
        "tpot_ms": [30.0, 20.0, 10.0],
        "pred_tpot_ms": [33.0, 18.0, 12.0], "pred_tpot_ms_lo": [25.0, 17.0, 11.0], "pred_tpot_ms_hi": [40.0, 19.0, 13.0],
    })
    r = target_report(df, "tpot_ms")
    assert r["n"] == 3
    assert r["median_ape"] == pytest.approx(0.1)  # errors 10%, 10%, 20%
    assert r["coverage"] == pytest.approx(1 / 3)  # only the first interval holds its truth
    assert r["spearman_mean"] == pytest.approx(1.0)
    assert r["regret_mean"] == 0.0 and r["best_pick_rate"] == 1.0
    # a wrong pick: the prediction ranks TP1 best, measured best is TP4 (10 ms): regret (30-10)/10
    bad = df.assign(pred_tpot_ms=[5.0, 20.0, 30.0])
    rank = layout_ranking(bad, "tpot_ms")
    assert rank["regret_mean"] == pytest.approx(2.0)
    assert rank["spearman_mean"] == pytest.approx(-1.0)


def test_throughput_regret_is_per_gpu():
    df = pd.DataFrame({"kind": "serving", "model": "m", "gpu": "g", "tp": [1, 8], "num_gpus": [1, 8],
                       "output_throughput": [1000.0, 4000.0], "pred_output_throughput": [900.0, 5000.0]})
    # per GPU: 1000 vs 500 measured; the prediction says 900 vs 625, picks TP1: no regret
    assert layout_ranking(df, "output_throughput")["regret_mean"] == 0.0


class _Tiny:
    """A picklable stand-in model object for artifact plumbing tests (the real models are tested elsewhere)."""

    family = "physics"
    learners_: dict = {}
    calibration_: dict = {"layer_ms": None}
    feature_names: dict = {"step": ["f_x"]}

    def get_params(self):
        return {"seed": 0}

    def predict_arrays(self, frame):
        return {}


def test_artifact_roundtrip_and_metadata(tmp_path):
    path = tmp_path / "m.joblib"
    frame = pd.DataFrame({"kind": ["step"], "model": ["llama-3.1-8b"], "layer_ms": [0.5]})
    meta = art.save_artifact(_Tiny(), path, {"metrics": {"layer_ms": {"n": 1}},
                                             "data_fingerprint": art.data_fingerprint(frame)})
    assert meta["schema_version"] == art.SCHEMA_VERSION and meta["versions"]["xgboost"]
    loaded = art.load_artifact(path)
    assert isinstance(loaded, _Tiny)
    assert loaded.metadata_["metrics"] == {"layer_ms": {"n": 1}}
    assert art.read_metadata(path)["data_fingerprint"] == art.data_fingerprint(frame.iloc[::-1])  # order-free
    assert art.data_fingerprint(frame) != art.data_fingerprint(frame.assign(layer_ms=0.6))


def test_corrupted_artifact_fails_with_one_line(tmp_path):
    path = tmp_path / "m.joblib"
    art.save_artifact(_Tiny(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        art.load_artifact(path)
    assert "corrupted" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="corrupted"):
        art.load_artifact(tmp_path / "junk.joblib")
    joblib.dump({"something": "else"}, tmp_path / "other.joblib")
    with pytest.raises(InputError, match="not a layoutcast model"):
        art.load_artifact(tmp_path / "other.joblib")
    with pytest.raises(InputError, match="does not exist"):
        art.load_artifact(tmp_path / "missing.joblib")


@pytest.mark.parametrize("key,value,words", [
    ("artifact_version", 999, "format version 999"),
    ("schema_version", -1, "measurement schema -1"),
    ("features_version", "old", "physics features version old"),
])
def test_incompatible_artifact_fails_clearly(tmp_path, key, value, words):
    path = tmp_path / "m.joblib"
    meta = art.artifact_metadata(_Tiny())
    meta[key] = value
    joblib.dump({"meta": meta, "model": pickle.dumps(_Tiny())}, path)
    with pytest.raises(InputError) as e:
        art.load_artifact(path)
    assert words in str(e.value) and "retrain" in str(e.value)


DEFAULT_ARTIFACT = Path(__file__).resolve().parents[1] / "predictor" / "default_model.joblib"


@pytest.mark.skipif(not DEFAULT_ARTIFACT.is_file(), reason="predictor/default_model.joblib not built yet")
def test_bundled_default_model_is_current():
    """The bundled artifact loads and matches today's physics (else: rerun scripts/build_default_model.py)."""
    model = art.load_artifact(DEFAULT_ARTIFACT)
    meta = model.metadata_
    assert DEFAULT_ARTIFACT.stat().st_size < 5_000_000
    assert meta["family"] == "residual-xgb" and "output_throughput" in meta["targets"]
    frame = pd.DataFrame({"kind": "serving", "model": "qwen2.5-32b", "gpu": "h200", "tp": [1, 2, 4, 8],
                          "isl": 100.0, "osl": 4500.0, "num_requests": 2000})
    out = model.predict(frame)
    for t in ("output_throughput", "tpot_ms", "ttft_ms"):
        assert np.isfinite(out[f"pred_{t}"]).all() and (out[f"pred_{t}"] > 0).all()


def test_shrink_trusts_corrections_only_where_they_carry_over():
    from train.intervals import best_shrink

    rng = np.random.default_rng(0)
    y = rng.normal(0, 0.3, 500)
    assert best_shrink(y, y + rng.normal(0, 0.02, 500)) == 1.0  # a correction that holds out of fold: kept
    assert best_shrink(y, rng.normal(0, 0.5, 500)) == 0.0  # one that does not: physics alone
    assert best_shrink(y, 0.97 * y) == 1.0  # a small gain is not worth giving up trust


def test_novelty_no_grouping_could_calibrate_gets_physics_and_prior_width():
    cal = IntervalCalibration(0.8, {"random": (-0.02, 0.02), "model": (-0.1, 0.1)},
                              {"model": frozenset({"a"}), "gpu": frozenset({"h200"}), "layout": frozenset()},
                              shrink={"random": 1.0, "model": 0.3}, uncalibrated=("gpu",))
    df = pd.DataFrame({"model": ["a", "a"], "gpu": ["h200", "b300"], "tp": [1, 1]})
    cal.seen["layout"] = frozenset(layout_code(df).tolist())
    trust, lo, hi = cal.terms(df)
    assert (trust[0], lo[0], hi[0]) == (1.0, -0.02, 0.02)
    assert trust[1] == 0.0 and lo[1] == pytest.approx(-math.log(2)) and hi[1] == pytest.approx(math.log(2))


def test_transferred_novelty_keeps_the_correction_and_widens_in_quadrature():
    cal = IntervalCalibration(0.8, {"random": (-0.02, 0.02), "model": (-0.03, 0.04)},
                              {"model": frozenset({"a"}), "gpu": frozenset({"h200"}), "layout": frozenset()},
                              shrink={"random": 1.0, "model": 0.9}, uncalibrated=("gpu",), transfer=("gpu",),
                              group_shift={"model": 0.03})
    df = pd.DataFrame({"model": ["a", "a"], "gpu": ["h200", "h100-sxm"], "tp": [1, 1]})
    cal.seen["layout"] = frozenset(layout_code(df).tolist())
    trust, lo, hi = cal.terms(df)
    assert (trust[0], lo[0], hi[0]) == (1.0, -0.02, 0.02)  # seen GPU: random-fold width, full trust
    # unseen GPU: least trust of the calibrated groupings, widest offsets widened by the largest group shift
    assert trust[1] == 0.9
    assert lo[1] == pytest.approx(-math.hypot(0.03, 0.03)) and hi[1] == pytest.approx(math.hypot(0.04, 0.03))


def test_largest_group_shift():
    from train.intervals import largest_group_shift

    resid = np.array([0.1] * 5 + [-0.3] * 5 + [5.0] * 2)
    groups = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 2)
    assert largest_group_shift(resid, groups) == pytest.approx(0.3)  # group c has too few rows to count
    assert largest_group_shift(resid[:0], groups[:0]) == 0.0


def test_balanced_subsample_keeps_small_sources_whole():
    from train.residual import balanced_subsample

    idx = np.arange(10_050)
    groups = np.array(["big"] * 10_000 + ["small"] * 50, dtype=object)
    keep = balanced_subsample(idx, groups, 1000, seed=0)
    assert len(keep) == 1000 and set(range(10_000, 10_050)) <= set(keep.tolist())
    np.testing.assert_array_equal(keep, balanced_subsample(idx, groups, 1000, seed=0))


def test_offsets_per_source_and_unseen_data_sets():
    from train.intervals import stratum_offsets

    rng = np.random.default_rng(0)
    resid = np.concatenate([rng.normal(0, 0.02, 400), rng.normal(0, 0.4, 400)])
    src = np.array(["probe"] * 400 + ["engine"] * 400, dtype=object)
    by_src = stratum_offsets(resid, src, 0.8)
    assert by_src["probe"][1] < 0.05 < 0.4 < by_src["engine"][1]  # each source its own width
    assert "tiny" not in stratum_offsets(resid[:10], np.array(["tiny"] * 10, dtype=object), 0.8)  # too few: pooled
    cal = IntervalCalibration(0.8, {"random": conformal_offsets(resid, 0.8)}, strata={"random": by_src},
                              seen_strata=frozenset({"probe", "engine"}))
    df = pd.DataFrame({"source": ["probe", "engine", "other-data-set", "prediction"]})
    lo, hi = cal.bounds(df)
    assert (lo[0], hi[0]) == pytest.approx(by_src["probe"]) and (lo[1], hi[1]) == pytest.approx(by_src["engine"])
    assert hi[2] >= math.log(2) and lo[2] <= -math.log(2)  # a data set training never saw: at least the prior
    assert (lo[3], hi[3]) == pytest.approx(cal.offsets["random"])  # a query row: the pooled width


def test_few_held_out_groups_widen_by_a_random_effects_bound():
    from scipy.stats import t as student_t

    from train.intervals import group_shift_bounds, min_groups_for, stratum_offsets

    assert min_groups_for(0.8) == 4 and min_groups_for(0.9) == 9 and min_groups_for(0.5) == 2
    rng = np.random.default_rng(1)
    resid = np.concatenate([rng.normal(0.5, 0.05, 200), rng.normal(-0.1, 0.05, 200)])
    src = np.array(["s"] * 400, dtype=object)
    plain = stratum_offsets(resid, src, 0.8)["s"]
    two_groups = np.array(["a"] * 200 + ["b"] * 200, dtype=object)
    two = stratum_offsets(resid, src, 0.8, groups=two_groups)["s"]
    # two group shifts (0.5, -0.1): a new group's shift is predicted as mean 0.2 +- t(1) sd sqrt(1 + 1/2), far wider
    # than the row quantile, which only spans the two groups seen; the within-group spread adds in quadrature
    half = student_t.ppf(0.9, 1) * np.std([0.5, -0.1], ddof=1) * math.sqrt(1.5)
    assert two[1] == pytest.approx(0.2 + half, abs=0.03) and two[0] == pytest.approx(0.2 - half, abs=0.03)
    assert two[0] < plain[0] and two[1] > plain[1]
    assert group_shift_bounds(resid, two_groups, 0.8) == pytest.approx(two, abs=1e-12)
    one = stratum_offsets(resid[:200], src[:200], 0.8, groups=two_groups[:200])["s"]
    assert one[1] == pytest.approx(math.hypot(stratum_offsets(resid[:200], src[:200], 0.8)["s"][1], 0.5), abs=0.02)
    many = stratum_offsets(resid, src, 0.8, groups=np.array(list("abcd") * 100, dtype=object))["s"]
    assert many == plain  # enough groups for a group-level quantile: their spread is in the row quantile already
    unknown = stratum_offsets(resid, src, 0.8, groups=np.array([None] * 400, dtype=object))["s"]
    assert unknown == plain  # groups predicted without their source in training do not count


def test_held_out_rows_of_a_source_missing_from_their_fold_do_not_calibrate():
    """A group held out together with its whole data source measures a new data set, not a new GPU of a known one:
    its residuals are left out, and a grouping with nothing else left is uncalibrated (rows novel along it get the
    physics answer and the physics width at prediction time)."""
    from train.intervals import HeldOut, calibrate_held_out

    rng = np.random.default_rng(2)
    n = 300
    labels = np.array(["h100"] * n + ["h200"] * n + ["b300"] * n, dtype=object)
    strata = np.array(["probe"] * (2 * n) + ["engine"] * n, dtype=object)
    truth = np.concatenate([rng.normal(0, 0.02, 2 * n), rng.normal(0, 0.02, n)])
    preds = np.concatenate([truth[: 2 * n] + rng.normal(0, 0.01, 2 * n), rng.normal(2.0, 0.5, n)])  # engine: wild
    in_train = np.array([True] * (2 * n) + [False] * n)
    made = calibrate_held_out({"gpu": HeldOut(truth, preds, labels, strata, in_train)}, 0.8)
    assert made.uncalibrated == () and made.shrink["gpu"] == 1.0
    assert "engine" not in made.strata["gpu"] and made.offsets["gpu"][1] < 0.05  # the wild rows do not count
    assert made.group_shift["gpu"] < 0.05
    alone = calibrate_held_out({"gpu": HeldOut(truth[2 * n:], preds[2 * n:], labels[2 * n:], strata[2 * n:],
                                               in_train[2 * n:])}, 0.8)
    assert alone.uncalibrated == ("gpu",) and "gpu" not in alone.offsets


def test_physics_only_rows_get_the_physics_error_width():
    cal = IntervalCalibration(0.8, {"random": (-0.02, 0.02), "model": (-0.1, 0.1)},
                              {"model": frozenset({"a"}), "gpu": frozenset({"h200"}), "layout": frozenset()},
                              shrink={"random": 1.0, "model": 0.3}, uncalibrated=("gpu",),
                              physics_offsets={"*": (-0.2, 0.3), "probe": (-0.05, 0.06)},
                              seen_strata=frozenset({"probe", "other"}))
    df = pd.DataFrame({"model": ["a", "a", "a"], "gpu": ["b300", "b300", "h200"], "tp": 1,
                       "source": ["probe", "other", "probe"]})
    cal.seen["layout"] = frozenset(layout_code(df).tolist())
    trust, lo, hi = cal.terms(df)
    assert trust[0] == trust[1] == 0.0
    assert (lo[0], hi[0]) == (-0.05, 0.06) and (lo[1], hi[1]) == (-0.2, 0.3)  # its source's, else the pooled
    assert (trust[2], lo[2], hi[2]) == (1.0, -0.02, 0.02)


def test_feature_space_leaves_out_excluded_numeric_and_categorical_columns():
    """`exclude` drops numeric columns by name and categorical ones as `cat_<column>`; unknown categories
    (a prediction's source) read as missing."""
    from train.frames import FeatureSpace

    frame = pd.DataFrame({"f_tp": [1, 2, 4], "f_batch": [8.0, 16.0, 32.0], "source": ["a", "b", "a"],
                          "engine": ["vllm", "trtllm", "vllm"]})
    full = FeatureSpace.from_frame(frame)
    assert full.names == ["f_tp", "f_batch", "cat_engine", "cat_source", "log_phys"]
    space = FeatureSpace.from_frame(frame, exclude=("f_tp", "cat_source"))
    assert space.names == ["f_batch", "cat_engine", "log_phys"]
    X = full.matrix(pd.DataFrame({"f_tp": [8], "f_batch": [64.0], "source": ["prediction"], "engine": ["vllm"]}))
    assert X[0, 2] == full.categories["engine"]["vllm"] and np.isnan(X[0, 3])
