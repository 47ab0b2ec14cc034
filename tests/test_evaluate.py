"""`layoutcast train` and `layoutcast evaluate` end to end on a small real CSV (shared H200 step times)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from predictor.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "gpu_probe").is_dir(), reason="../shared/data is absent (outside the workspace)")


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    from collect.importers.gpu_probe import import_gpu_probe

    df, _ = import_gpu_probe(SHARED / "gpu_probe")
    path = tmp_path_factory.mktemp("data") / "steps.csv"
    df[df["kind"] == "step"].sample(200, random_state=0).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_path(data_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m.joblib"
    assert main(["train", "--data", str(data_csv), "--out", str(out)]) == 0
    return out


def test_train_writes_artifact_with_metadata(model_path, data_csv, capsys):
    from train.artifact import read_metadata

    meta = read_metadata(model_path)
    assert meta["family"] == "residual-xgb" and meta["n_rows"] == 200
    assert set(meta["targets"]) == {"layer_ms", "lm_head_ms"}
    assert meta["metrics"]["layer_ms"]["n"] > 100 and len(meta["data_fingerprint"]) == 64
    assert "f_term_weights_ms" in meta["features"]["step"]
    out = model_path.with_name("tuned.joblib")
    capsys.readouterr()
    assert main(["train", "--data", str(data_csv), "--out", str(out), "--tune", "2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tuning"]["trials"] == 2 and doc["artifact"] == str(out)


def test_evaluate_json_is_one_document(model_path, data_csv, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_path), "--data", str(data_csv), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    r = doc["targets"]["layer_ms"]
    assert doc["split"] == "none" and r["n"] == 200
    assert r["median_ape"] < 0.05 and 0.0 <= r["coverage"] <= 1.0


def test_evaluate_grouped_split_with_plot(model_path, data_csv, tmp_path, capsys):
    png = tmp_path / "eval.png"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_path), "--data", str(data_csv), "--split", "model",
                 "--folds", "3", "--plot", str(png), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["split"] == "model" and doc["targets"]["layer_ms"]["n"] == 200
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate", "--model", str(model_path), "--data", str(data_csv), "--split", "gpu"]) == 2  # one GPU
    assert "needs at least two groups" in capsys.readouterr().err


def test_human_output_is_a_table(model_path, data_csv, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_path), "--data", str(data_csv)]) == 0
    assert "layer_ms" in capsys.readouterr().out


def test_bad_inputs_fail_with_one_line(model_path, data_csv, tmp_path, capsys):
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(model_path.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["evaluate", "--model", str(broken), "--data", str(data_csv)]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and err.count("\n") == 1
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("model,gpu\nx,y\n")
    assert main(["train", "--data", str(bad_csv)]) == 2
    assert "not in the measurement schema" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "no measurements" in capsys.readouterr().err
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"kind": ["step"], "model": ["no-such-model"], "gpu": ["h200"], "layer_ms": [1.0]}).to_csv(unknown)
    assert main(["train", "--data", str(unknown)]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_module_runs_as_a_process(model_path, data_csv):
    proc = subprocess.run([sys.executable, "-m", "predictor", "evaluate", "--model", str(model_path), "--data",
                           str(data_csv), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["targets"]["lm_head_ms"]["n"] > 0


def test_train_reads_a_store(data_csv, tmp_path, capsys):
    from collect.store import Store

    url = f"sqlite:///{tmp_path / 'm.sqlite'}"
    with Store(url) as store:
        store.append(pd.read_csv(data_csv).iloc[:120])
    out = tmp_path / "from_store.joblib"
    capsys.readouterr()
    assert main(["train", "--store", url, "--data", str(data_csv), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_rows"] == 200  # the store's 120 rows are the file's too: counted once


def test_benchmark_checks_and_sampling():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ is not installed
    from benchmarks.accuracy import balanced_sample, checks, markdown_summary

    df = pd.DataFrame({"source": ["a"] * 10 + ["b"] * 1000, "x": range(1010)})
    picked = balanced_sample(df, 100, seed=0)
    assert len(picked) == 100 and (picked["source"] == "a").sum() == 10
    rows = [
        {"kind": "serving", "split": "model", "family": "residual-xgb", "target": "output_throughput", "n": 900,
         "median_ape": 0.15, "p90_ape": 0.5, "coverage": 0.8},
        {"kind": "serving", "split": "model", "family": "physics", "target": "output_throughput", "n": 900,
         "median_ape": 0.10, "p90_ape": 0.4, "coverage": 0.95},
    ]
    verdict = checks(rows)
    assert verdict["serving_leave_model_out_output_throughput"]["pass"]
    assert not verdict["residual_beats_physics_and_descriptor"]["pass"]  # physics is better here: reported
    assert verdict["coverage_70_90"]["pass"]
    md = markdown_summary({"results": rows, "checks": verdict})
    assert "| serving | model | output_throughput | 900 | 15.0% / 50.0% | 80.0% | 10.0% |" in md
    few = [dict(r, n=5) for r in rows]  # under the judging threshold
    assert checks(few)["not_judged_too_few_rows"] == ["serving/output_throughput (5 rows)"]


def test_benchmark_step_check_uses_the_torch_probe_pair_both_ways():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.accuracy import PAIR_KIND, checks, markdown_summary

    def cell(kind, split, ape):
        return {"kind": kind, "split": split, "family": "residual-xgb", "target": "layer_ms", "n": 1000,
                "median_ape": ape, "p90_ape": 2 * ape, "coverage": 0.8}

    pooled = cell("step", "gpu", 0.26)  # fpm engine iterations and probes pooled: another quantity
    one_way = [pooled, cell(PAIR_KIND, "gpu h200->h100-sxm", 0.02)]
    assert not checks(one_way)["step_leave_gpu_out_layer_ms"]["pass"]  # both directions are needed
    both = one_way + [cell(PAIR_KIND, "gpu h100-sxm->h200", 0.05)]
    verdict = checks(both)
    step = verdict["step_leave_gpu_out_layer_ms"]
    assert step["pass"] and step["median_ape"] == 0.05  # the worse direction is judged
    assert step["by_direction"] == {"h200->h100-sxm": 0.02, "h100-sxm->h200": 0.05}
    assert "pass" not in verdict["step_all_sources_leave_gpu_out_layer_ms"]
    md = markdown_summary({"results": both, "checks": verdict})
    assert "PASS `step_leave_gpu_out_layer_ms`: median 5.0%" in md and "not judged `step_all_sources" in md
    assert not checks(both[:-1] + [cell(PAIR_KIND, "gpu h100-sxm->h200", 0.09)])["step_leave_gpu_out_layer_ms"]["pass"]
