"""Artifacts of real trained models: metadata, reproducible bytes, stale-physics detection, catalog-wide sanity."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from features.catalog import gpu_catalog, model_catalog, resolve_workload
from features.errors import InputError
from features.layouts import enumerate_layouts
from train.artifact import load_artifact, read_metadata, save_artifact
from train.pipeline import train_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "public").is_dir(), reason="../shared/data is absent (outside the workspace)")
FAST = {"n_estimators": 30, "inner_folds": 2}


@pytest.fixture(scope="module")
def measurements() -> pd.DataFrame:
    """Real serving (TensorRT-LLM perf tables) and step (GPU probe) rows."""
    from collect.importers import run_import

    serving, _ = run_import("trtllm-perf", SHARED / "public" / "trtllm_perf_overview")
    probe, _ = run_import("gpu-probe", SHARED / "gpu_probe")
    return pd.concat([serving.sample(500, random_state=0), probe[probe["kind"] == "step"].sample(200, random_state=0)],
                     ignore_index=True)


@pytest.fixture(scope="module")
def trained(measurements, tmp_path_factory):
    model, meta = train_model(measurements, seed=1, params=FAST)
    path = tmp_path_factory.mktemp("art") / "m.joblib"
    save_artifact(model, path, meta)
    return model, meta, path


def test_metadata_records_how_the_model_was_made(trained, measurements):
    model, meta, path = trained
    on_disk = read_metadata(path)
    assert on_disk["n_rows"] == meta["n_rows"] > 600
    assert {"output_throughput", "layer_ms"} <= set(on_disk["targets"])
    assert on_disk["hyperparameters"]["n_estimators"] == 30 and on_disk["family"] == "residual-xgb"
    assert on_disk["versions"]["xgboost"] and on_disk["sources"] == ["gpu-probe", "trtllm-perf"]
    assert on_disk["metrics"]["output_throughput"]["oof_model_median_ape"] > 0
    assert on_disk["physics_reference"]["rows"]


def test_same_data_and_seed_give_identical_bytes(trained, measurements, tmp_path):
    model, meta, path = trained
    again, meta2 = train_model(measurements.sample(frac=1.0, random_state=7), seed=1, params=FAST)
    save_artifact(again, tmp_path / "again.joblib", meta2)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (path, tmp_path / "again.joblib")]
    assert meta2["data_fingerprint"] == meta["data_fingerprint"]
    assert digest[0] == digest[1]


def test_loaded_model_predicts_like_the_trained_one(trained, measurements):
    model, _, path = trained
    loaded = load_artifact(path)
    a, b = model.predict_arrays(measurements), loaded.predict_arrays(measurements)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_artifact_from_another_physics_model_fails_clearly(trained, tmp_path):
    _, _, path = trained
    payload = joblib.load(path)
    ref = payload["meta"]["physics_reference"]
    col = "phys_output_throughput"
    ref["phys"][col] = [None if v is None else v * 1.05 for v in ref["phys"][col]]
    stale = tmp_path / "stale.joblib"
    joblib.dump(payload, stale)
    with pytest.raises(InputError) as e:
        load_artifact(stale)
    assert "another version of the physics model" in str(e.value) and "\n" not in str(e.value)
    assert load_artifact(stale, check_physics_model=False) is not None


def test_damaged_model_blob_fails_clearly(trained, tmp_path):
    _, _, path = trained
    payload = joblib.load(path)
    payload["model"] = payload["model"][: len(payload["model"]) // 3]
    joblib.dump(payload, tmp_path / "cut.joblib")
    with pytest.raises(InputError, match="corrupted or incompatible"):
        load_artifact(tmp_path / "cut.joblib")
    payload["model"] = pickle.dumps("not a model")
    joblib.dump(payload, tmp_path / "str.joblib")
    with pytest.raises(InputError):
        load_artifact(tmp_path / "str.joblib")


def test_finite_positive_on_every_catalog_model_gpu_and_valid_layout(trained):
    model = trained[0]
    wl = resolve_workload("reasoning")
    rows = []
    for m_name, spec in model_catalog().items():
        for g_name, gpu in gpu_catalog().items():
            for layout in enumerate_layouts(spec, gpu, gpu.gpus_per_node):
                rows.append({"kind": "serving", "model": m_name, "gpu": g_name, "tp": layout.tp, "pp": layout.pp,
                             "dp": layout.dp, "ep": layout.ep, "attention_dp": bool(layout.attention_dp),
                             "isl": wl.isl.mean, "osl": wl.osl.mean, "isl_dist": wl.isl.spec(),
                             "osl_dist": wl.osl.spec(), "num_requests": 1000})
    frame = pd.DataFrame(rows)
    assert len(frame) > 500
    out = model.predict(frame)
    for t in ("output_throughput", "ttft_ms", "tpot_ms", "makespan_s"):
        has_physics = np.isfinite(out[f"phys_{t}"].to_numpy(float))
        assert has_physics.mean() > 0.9
        for col in (f"pred_{t}", f"pred_{t}_lo", f"pred_{t}_hi"):
            v = out[col].to_numpy(float)[has_physics]
            assert np.isfinite(v).all() and (v > 0).all(), col
        assert (out[f"pred_{t}_lo"] <= out[f"pred_{t}"]).all() and (out[f"pred_{t}"] <= out[f"pred_{t}_hi"]).all()


def test_serving_correction_reads_layout_through_physics_and_no_source(trained, measurements):
    """The shipped serving correction reads neither the raw layout numbers (group identifiers, not descriptions)
    nor the data source (a prediction has none); step rows keep TP (the timed kernels' shard shape) and their
    source. Putting the layout numbers back is one class attribute away."""
    from train.residual import LAYOUT_DESCRIPTORS, ResidualModel

    names = trained[0].feature_names
    assert not set(LAYOUT_DESCRIPTORS) & set(names["serving"]) and "cat_source" not in names["serving"]
    assert "f_term_communication_ms" in names["serving"] or "f_weight_bytes_per_gpu" in names["serving"]
    assert "f_tp" in names["step"]
    model = ResidualModel(seed=1, **FAST)
    model.excluded_features = {"serving": ("cat_source",)}
    assert "f_tp" in model.fit(measurements).feature_names["serving"]
