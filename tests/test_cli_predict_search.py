"""`layoutcast predict` / `search` as a user runs them: JSON contract, tables, plots, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "predictor", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_predict_json_has_every_target_with_interval():
    r = run_cli("predict", "--model", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "--gpu", "h200", "--tp", "2", "--dp", "4",
                "--workload", "reasoning", "--requests", "300", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"] == "deepseek-r1-distill-qwen-32b" and doc["num_gpus"] == 8
    for t in ("output_throughput", "ttft_ms", "tpot_ms", "makespan_s"):
        assert t in doc["targets"] and doc["targets"][t]["value"] > 0
        assert set(doc["targets"][t]) == {"value", "lo", "hi"}
    assert doc["regime"] in ("compute", "bandwidth", "capacity", "communication")
    assert doc["bottleneck"] and doc["kv_capacity_tokens"] > 0 and doc["steady_batch"] >= 1
    assert doc["makespan_s"] > 0


def test_predict_human_table_and_fixed_lengths():
    r = run_cli("predict", "--model", "llama-3.1-8b", "--gpu", "h100", "--isl", "1024", "--osl", "256", "--concurrency", "32")
    assert r.returncode == 0, r.stderr
    assert "TPOT" in r.stdout and "regime" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (("predict", "--model", "llama-3.1-8c", "--gpu", "h200"), "did you mean llama-3.1-8b"),
    (("predict", "--model", "llama-3.1-8b", "--gpu", "h300"), "unknown GPU 'h300'"),
    (("predict", "--model", "qwen2.5-32b", "--gpu", "h200", "--tp", "3"), "does not divide the 40 attention heads"),
    (("predict", "--model", "llama-3.1-405b", "--gpu", "h200", "--tp", "2"), "weights need"),
    (("predict", "--model", "llama-3.1-8b", "--gpu", "h200", "--workload", "fixed:0/5"), "workload"),
    (("search", "--model", "llama-3.1-8b", "--gpu", "h200", "--gpus", "0"), "at least 1"),
    (("predict", "--model", "llama-3.1-8b", "--gpu", "h200", "--tp", "-1"), "at least 1"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0]


def test_malformed_config_json(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{ not json")
    r = run_cli("predict", "--model", str(bad), "--gpu", "h200")
    assert r.returncode == 2 and "not valid JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    partial = tmp_path / "partial" / "config.json"
    partial.parent.mkdir()
    partial.write_text(json.dumps({"hidden_size": 128}))
    r = run_cli("predict", "--model", str(partial), "--gpu", "h200")
    assert r.returncode == 2 and "lacks" in r.stderr


def test_predict_from_config_json():
    cfg = REPO / "tests" / "fixtures" / "hf_configs" / "llama-3.1-8b.json"
    r = run_cli("predict", "--model", str(cfg), "--gpu", "a100-80g", "--concurrency", "16", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["targets"]["tpot_ms"]["value"] > 0


def test_search_json_plot_and_infeasible_reasons(tmp_path):
    png = tmp_path / "front.png"
    r = run_cli("search", "--model", "llama-3.1-70b", "--gpu", "h200", "--gpus", "8", "--exhaustive", "--json",
                "--plot", str(png))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["best"]["layout"] and doc["ranked"]
    assert any("weights need" in x["reason"] or "KV cache" in x["reason"] for x in doc["infeasible"])  # TP1 70B
    assert png.exists() and png.stat().st_size > 10_000
    assert doc["pareto"]


def test_search_slo_nothing_meets_names_closest():
    r = run_cli("search", "--model", "qwen2.5-32b", "--gpu", "h200", "--gpus", "8", "--slo-tpot-ms", "0.01", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["best"] is None and doc["message"].startswith("no configuration meets the SLO; closest:")
