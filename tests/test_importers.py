"""Importers of every shared data set: row counts and values checked against the raw files; bad files fail clearly."""

from __future__ import annotations

import csv
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collect.importers import IMPORTERS, SHARED_PATHS, run_import
from collect.importers.aiconfigurator import _stable_sample
from collect.store import Store
from features.catalog import gpu_names, model_names
from features.errors import InputError
from features.schema import COLUMNS
from predictor.cli import main as cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data sets not present at {SHARED}")
PUB = SHARED / "public"


@functools.lru_cache(maxsize=None)
def imported(source: str, **options):
    """One import per source and options for the whole test module (some take seconds)."""
    return run_import(source, SHARED / SHARED_PATHS[source], **options)


def raw_csv(path: Path) -> list[dict]:
    """The file read with the csv module, independently of the importers' pandas code."""
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if any((v or "").strip() for v in r.values())]


def detail(row) -> dict:
    return json.loads(row["detail"]) if isinstance(row["detail"], str) else {}


def close(a, b, rel=1e-9) -> bool:
    return abs(float(a) - float(b)) <= rel * max(abs(float(a)), abs(float(b)), 1e-12)


@needs_shared
@pytest.mark.parametrize("source", [s for s in IMPORTERS if s != "csv"])
def test_every_source_maps_into_the_schema_with_catalog_names(source):
    options = {"ops": "comm"} if source == "aiconfigurator" else {}
    df, report = imported(source, **options)
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(df) == report.rows_kept > 0
    assert report.rows_read == report.rows_kept + report.duplicates + sum(report.left_out.values())
    assert set(df["model"].dropna()) <= set(model_names())
    assert set(df["gpu"].dropna()) <= set(gpu_names())
    assert (df["source"] == source).all()
    assert df["engine"].notna().all() and df["kind"].isin(["serving", "step", "op"]).all()
    assert df["status"].isin(["ok", "oom", "error", "infeasible"]).all()
    ok = df[df["status"] == "ok"]
    target = {"serving": "ttft_ms", "step": "layer_ms", "op": "op_ms"}
    for kind, sub in ok.groupby("kind"):
        measured = sub[[c for c in ("output_throughput", "total_throughput", "ttft_ms", "makespan_s", target[kind])
                        if c in sub]].notna().any(axis=1)
        assert measured.all(), f"{source}: {kind} rows without any measured target"
    for d in df["detail"].dropna().head(200):
        json.loads(d)


@needs_shared
def test_gpu_probe_rows_match_the_csv():
    df, report = imported("gpu-probe")
    step = raw_csv(SHARED / "gpu_probe" / "h200_step.csv")
    moe = raw_csv(SHARED / "gpu_probe" / "h200_moe.csv")
    assert report.rows_read == len(step) + len(moe) == 539 and len(df) == 539
    assert (df["kind"] == "step").sum() == sum(r["kind"] in ("decode", "prefill") for r in step) == 356
    first = next(r for r in step if r["kind"] == "decode")
    row = df[(df["kind"] == "step") & (df["model"] == "llama-3.1-8b") & (df["tp"] == int(first["tp"]))
             & (df["batch"] == int(first["batch"])) & (df["context"] == float(first["context"]))].iloc[0]
    assert row["layer_ms"] == float(first["ms_median"]) and row["lm_head_ms"] == float(first["lm_head_ms"])
    assert row["gpu"] == "h200" and row["phase"] == "decode" and row["engine_version"] == first["torch"]
    gemm = df[df["op"] == "gemm"]
    assert len(gemm) == sum(r["kind"] == "gemm" for r in step)
    g = next(r for r in step if r["kind"] == "gemm")
    shape = {"m": int(g["m"]), "n": int(g["n"]), "k": int(g["k"])}
    hit = gemm[[detail(x) == {**detail(x), **shape} for _, x in gemm.iterrows()]]
    assert hit["op_ms"].iloc[0] == float(g["ms_median"])
    moe_rows = df[df["op"] == "moe_ffn"]
    assert len(moe_rows) == len(moe) and set(moe_rows["ep"]) == {1, 2, 4, 8}


@needs_shared
def test_trtllm_perf_counts_and_derived_values():
    df, _ = imported("trtllm-perf")
    raw = raw_csv(PUB / "trtllm_perf_overview" / "trtllm_perf_overview_throughput.csv")
    assert len(df) == len(raw) == 1130
    assert df["engine_version"].value_counts().to_dict() == {"0.14.0": 622, "1.0": 328, "0.20.0": 180}
    r0 = raw[0]
    row = df.iloc[0]
    assert row["output_throughput"] == float(r0["output_tok_s_total"]) and row["gpu"] == "h200"
    assert row["model"] == "llama-3-70b" and row["weight_dtype"] == "fp8"
    assert close(row["total_throughput"], row["output_throughput"] * (row["isl"] + row["osl"]) / row["osl"])
    assert (df["derived"] == "total_throughput,request_throughput").all()
    assert (df["num_gpus"] == df["tp"] * df["pp"]).all() and df["pp"].max() == 8


@needs_shared
def test_dli_keeps_failed_runs_as_feasibility_labels():
    df, report = imported("dli")
    raw = raw_csv(PUB / "nvidia_dli_nim_genaiperf" / "trt_llm_0_9_0_dli.csv")
    failed = [r for r in raw if not r["Throughput (tokens / sec)"].strip()]
    assert len(df) == len(raw) == 3449 and len(failed) == 659
    assert (df["status"] == "ok").sum() == 2790 and df["status"].isin(["oom", "error"]).sum() == 659
    # oom = above the largest successful batch of the same configuration
    cfg = ["model", "gpu", "weight_dtype", "tp", "isl", "osl"]
    max_ok = df[df["status"] == "ok"].groupby(cfg)["num_requests"].max()
    for _, r in df[df["status"] == "oom"].head(50).iterrows():
        assert r["num_requests"] > max_ok.loc[tuple(r[c] for c in cfg)]
    r0, row = raw[0], df.iloc[0]
    assert row["output_throughput"] == float(r0["Throughput (tokens / sec)"])
    assert row["ttft_ms"] == float(r0["1st Token Latency (ms)"])
    assert close(row["tpot_ms"], float(r0["Token-to-token Latency (ms)"]))
    assert close(row["makespan_s"], float(r0["Latency (ms)"]) / 1000)
    ok = df[df["status"] == "ok"]
    # the published throughput is batch x OSL / batch latency (checked on every valid row)
    assert np.allclose(ok["output_throughput"], ok["num_requests"] * ok["osl"] / ok["makespan_s"], rtol=1e-3)
    assert df[df["status"] != "ok"]["output_throughput"].isna().all()


@needs_shared
def test_nim_units_are_converted():
    df, _ = imported("nim")
    raw = raw_csv(PUB / "nvidia_dli_nim_genaiperf" / "nim.csv")
    assert len(df) == len(raw) == 787
    r0, row = raw[0], df.iloc[0]
    assert close(row["ttft_ms"], float(r0["time_to_first_token-avg"]) / 1e6)
    assert close(row["tpot_ms"], float(r0["inter_token_latency-avg"]) / 1e6)
    assert row["concurrency"] == int(r0["input_config-concurrency"]) and row["tp"] == int(r0["task_inputs-n_gpus"])
    assert set(df["model"]) == {"llama-3-8b", "llama-3-70b"} and set(df["gpu"]) == {"h100-sxm", "a100-80g"}


@needs_shared
def test_aiconfigurator_end_to_end_dedup_layouts_and_derived_throughput():
    df, report = imported("aiconfigurator", ops="comm")
    e2e = df[df["kind"] == "serving"]
    raw = pd.read_csv(PUB / "aiconfigurator" / "silicon_sample_e2e.csv")
    refs = pd.read_csv(PUB / "aiconfigurator" / "silicon_refs_subset.csv")
    # independent de-duplication on (configuration, TTFT, TPOT)
    conc = raw["silicon_data_source"].str.extract(r"silicon_concurrency=(\d+)")[0]
    key_cols = [c for c in raw.columns if c not in ("id", "silicon_data_source", "backend_version",
                                                    "silicon_ttft_ms", "silicon_tpot_ms")]
    keys = (raw[key_cols].astype(object).where(raw[key_cols].notna(), "").astype(str).agg("|".join, axis=1)
            + "|" + conc.fillna("") + "|" + raw["silicon_ttft_ms"].round(4).astype(str)
            + "|" + raw["silicon_tpot_ms"].round(4).astype(str))
    assert len(e2e) == keys.nunique() == 4374
    assert report.duplicates >= (len(raw) - keys.nunique()) + len(refs)
    assert e2e["detail"].str.contains('"anchor":true').sum() == refs["id"].nunique()
    # derived output throughput = concurrency x OSL / (TTFT + (OSL-1) x TPOT)
    row = e2e[e2e["run_id"] == "aiconfigurator:" + raw["id"].iloc[0]].iloc[0]
    r = raw.iloc[0]
    c = float(conc.iloc[0])
    assert row["concurrency"] == c
    request_s = (r["silicon_ttft_ms"] + (r["osl"] - 1) * r["silicon_tpot_ms"]) / 1000
    assert close(row["output_throughput"], c * r["osl"] / request_s)
    assert "output_throughput" in row["derived"]
    by_id = e2e.set_index(e2e["run_id"].str.removeprefix("aiconfigurator:"))
    agg = raw[raw["mode"] == "agg"]
    dep = agg[(agg["tp_size"] == 1) & (agg["attention_dp_size"] == 8) & (agg["moe_ep_size"] == 8)]
    dep = dep[dep["id"].isin(by_id.index)].iloc[0]
    d = by_id.loc[dep["id"]]
    assert (d["tp"], d["dp"], d["ep"], bool(d["attention_dp"]), d["num_gpus"]) == (8, 1, 8, True, 8)
    dpep = raw[(raw["backend"] == "vllm") & (raw["tp_size"] == 2) & (raw["attention_dp_size"] == 2)]
    dpep = dpep[dpep["id"].isin(by_id.index)].iloc[0]
    d = by_id.loc[dpep["id"]]
    assert (d["tp"], d["dp"], d["ep"], bool(d["attention_dp"]), d["num_gpus"]) == (2, 2, dpep["moe_ep_size"], False, 4)
    # attention-DP left empty while the MoE group spans more GPUs than tp (vLLM's DP attention with MoE TP over all
    # ranks): Qwen3-235B at tp 1, moe_tp 2 runs on 2 GPUs as DEP-2, not on one GPU
    implied = agg[(agg["backend"] == "vllm") & (agg["tp_size"] == 1) & agg["attention_dp_size"].isna()
                  & (agg["moe_tp_size"] == 2) & (agg["moe_ep_size"] == 1) & agg["id"].isin(by_id.index)].iloc[0]
    d = by_id.loc[implied["id"]]
    assert (d["tp"], d["dp"], bool(d["attention_dp"]), d["num_gpus"]) == (2, 1, True, 2)
    dis = raw[(raw["mode"] == "disagg") & raw["prefill_num_workers"].notna() & raw["id"].isin(by_id.index)].iloc[0]
    d = by_id.loc[dis["id"]]
    total = (dis["prefill_num_workers"] * dis["prefill_tp_size"] * max(dis["prefill_attention_dp_size"], 1)
             + dis["decode_num_workers"] * dis["decode_tp_size"] * max(dis["decode_attention_dp_size"], 1))
    assert d["num_gpus"] == total and json.loads(d["detail"])["mode"] == "disagg"
    # engine knobs of aiconfigurator's benchmark generator: max_num_seqs = batch_size per attention-DP rank, token
    # budget batch_size + ISL + 1500; disaggregated workers and every request count are left unset
    a = by_id.loc[dpep["id"]]
    assert (a["max_num_seqs"], a["max_num_batched_tokens"]) == (dpep["batch_size"], dpep["batch_size"] + dpep["isl"] + 1500)
    assert a["concurrency"] == dpep["batch_size"] * dpep["attention_dp_size"]
    assert "benchmark generator" in json.loads(a["detail"])["engine_knobs_from"]
    assert pd.isna(by_id.loc[dis["id"], "max_num_seqs"]) and pd.isna(by_id.loc[dis["id"], "max_num_batched_tokens"])
    assert "engine_knobs_from" not in json.loads(by_id.loc[dis["id"], "detail"])
    assert e2e["num_requests"].isna().all()


@needs_shared
def test_aiconfigurator_comm_ops_are_all_kept():
    df, report = imported("aiconfigurator", ops="comm")
    ops = df[df["kind"] == "op"]
    root = PUB / "aiconfigurator" / "op_perf"
    n_comm = sum(len(pd.read_parquet(f)) for f in root.glob("*/comm/*/*/*.parquet"))
    assert len(ops) == n_comm == 2016 + 1380
    assert set(ops["op"]) == {"allreduce", "allgather", "alltoall", "reducescatter"}
    nccl = ops[ops["engine"] == "nccl"]
    assert len(nccl) == 2016 and (nccl["num_gpus"] == nccl["tp"]).all()
    assert report.left_out == {"--ops comm: compute op tables not imported": report.rows_read - 5256 - len(ops)}


@needs_shared
def test_aiconfigurator_sample_mode_is_deterministic_and_keeps_comm(tmp_path):
    root = PUB / "aiconfigurator"
    gemm = pd.read_parquet(next(root.glob("op_perf/h200_sxm/gemm/vllm/*/gemm_perf.parquet")))
    keep = _stable_sample(gemm, 20)
    assert (keep == _stable_sample(gemm.copy(), 20)).all()
    assert 0.03 < keep.mean() < 0.07
    # a small aiconfigurator folder: e2e files plus the h200 gemm and comm tables
    sub = tmp_path / "aiconfigurator"
    for name in ("silicon_sample_e2e.csv", "silicon_refs_subset.csv"):
        (sub / name).parent.mkdir(parents=True, exist_ok=True)
        (sub / name).symlink_to(root / name)
    for fam in ("gemm", "comm"):
        for d in (root / "op_perf" / "h200_sxm" / fam).glob("*/*"):
            target = sub / "op_perf" / "h200_sxm" / fam / d.parent.name / d.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(d)
    a, ra = run_import("aiconfigurator", sub, ops="sample")
    b, _ = run_import("aiconfigurator", sub, ops="sample")
    pd.testing.assert_frame_equal(a, b)
    ops = a[a["kind"] == "op"]
    n_comm = sum(len(pd.read_parquet(f)) for f in (sub / "op_perf").glob("*/comm/*/*/*.parquet"))
    assert (ops["op"] != "gemm").sum() == n_comm
    n_gemm = sum(len(pd.read_parquet(f)) for f in (sub / "op_perf").glob("*/gemm/*/*/*.parquet"))
    assert (ops["op"] == "gemm").sum() + sum(v for k, v in ra.left_out.items() if "sample" in k) == n_gemm


@needs_shared
def test_fpm_runs_layouts_and_iteration_times():
    df, report = imported("fpm")
    root = PUB / "aiconfigurator" / "fpm_golden_runs_vllm"
    files = sorted(root.rglob("fpm_metrics_phase.csv"))
    assert len(files) == 23 and report.rows_read == sum(len(raw_csv(f)) for f in files) == 135_580
    assert len(df) == 135_580 and set(df["gpu"]) == {"b300"} and (df["kind"] == "step").all()
    case = "fpm_gap_qwen36_dp_ep_official_20260614_025420/tp1_dp_ep/tp1_ep4_past4096"
    rows = df[df["run_id"] == f"fpm:{case}"]
    assert len(rows) == len(raw_csv(root / case / "fpm_metrics_phase.csv"))
    assert set(zip(rows["tp"], rows["dp"], rows["ep"], rows["num_gpus"])) == {(1, 4, 4, 4)}
    first = raw_csv(root / case / "fpm_metrics_phase.csv")[0]
    r = rows.iloc[0]
    d = detail(r)
    assert d["iteration_ms"] == float(first["latency_ms"]) and close(r["layer_ms"] * d["num_layers"], d["iteration_ms"])
    assert r["batch"] == int(first["ctx_requests"]) + int(first["decode_requests"])
    assert set(df["phase"]) == {"prefill", "decode", "mixed"} and "b300" in d["gpu_note"]


@needs_shared
def test_llm_inference_bench_throughput_definition_and_left_out_rows():
    df, report = imported("llm-inference-bench")
    main = pd.read_csv(PUB / "llm_inference_bench" / "throughput_all_results.csv")
    assert report.left_out["llama.cpp: throughput definition differs (not input+output tokens/s)"] == \
        (main["Framework"] == "llama.cpp").sum() == 1570
    assert "llama.cpp" not in set(df["engine"])
    thr = df[df["total_throughput"].notna()]
    assert np.allclose(thr["output_throughput"], thr["total_throughput"] / 2)
    # Throughput = batch x 2 x length / latency on the vLLM / TRT-LLM / DeepSpeed rows
    ratio = thr["total_throughput"] / (thr["num_requests"] * 2 * thr["isl"] / thr["makespan_s"])
    assert ratio.between(0.98, 1.02).mean() > 0.98
    non_llamacpp_main = main[main["Framework"] != "llama.cpp"]
    from_main = (df["run_id"] == "llm-inference-bench:throughput_all_results").sum()
    assert from_main == len(non_llamacpp_main.drop_duplicates())
    assert ((df["pp"] == 2) & (df["tp"] == 2)).any() and (df["pp"] == 4).any()
    assert ((df["ep"] == 2) & (df["tp"] == 4)).any()
    assert report.left_out["heatmap_isl_osl_trtllm_llama3_8b.csv: GPU not stated in the file"] == 37
    assert {"mi300x", "mi250", "gaudi2", "intel-max-1550", "sn40l"} <= set(df["gpu"])


@needs_shared
def test_vidur_ops_match_the_profiles():
    df, report = imported("vidur")
    root = PUB / "vidur_profiling"
    mlp = root / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
    r0 = raw_csv(mlp)[0]
    rows = df[(df["run_id"] == "vidur:compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv") & (df["op"] == "attn_pre_proj")]
    hit = rows[(rows["tokens"] == float(r0["num_tokens"])) & (rows["tp"] == int(r0["num_tensor_parallel_workers"]))]
    assert float(r0["time_stats.attn_pre_proj.median"]) in set(hit["op_ms"])
    assert set(rows["model"]) == {"llama-2-7b"} and set(rows["gpu"]) == {"h100-sxm"}
    net = df[df["run_id"] == "vidur:network/h100_dgx/all_reduce.csv"]
    assert len(net) + 0 <= len(raw_csv(root / "network" / "h100_dgx" / "all_reduce.csv"))
    assert set(net["op"]) == {"allreduce"} and (net["num_gpus"] == net["tp"]).all()
    attn = df[df["run_id"] == "vidur:legacy_a100/attention.csv"]
    assert set(attn["phase"]) == {"prefill", "decode"} and set(attn["tp"]) == {2}
    assert report.rows_read == report.rows_kept + report.duplicates + sum(report.left_out.values())


# --- the csv source and bad input ------------------------------------------------------------------------------

def test_csv_source_round_trips_a_schema_file_and_validates(tmp_path):
    frame = pd.DataFrame({"kind": ["serving", "op"], "source": ["campaign", None], "engine": ["vllm", "torch"],
                          "model": ["Qwen/Qwen2.5-32B", None], "gpu": ["h100", "h200"], "tp": [2, 1],
                          "isl": [100, None], "osl": [4500, None], "op": [None, "gemm"],
                          "output_throughput": [1234.5, None], "op_ms": [None, 0.5],
                          "pred_output_throughput": [1000, 1]})
    f = tmp_path / "measured.csv"
    frame.to_csv(f, index=False)
    df, report = run_import("csv", f)
    assert df["model"].iloc[0] == "qwen2.5-32b" and pd.isna(df["model"].iloc[1])
    assert list(df["gpu"]) == ["h100-sxm", "h200"] and list(df["source"]) == ["campaign", "csv:measured"]
    assert df["output_throughput"].iloc[0] == 1234.5 and df["num_gpus"].iloc[0] == 2
    assert any("pred_output_throughput" in n for n in report.notes)
    for bad, msg in ((frame.assign(kind=["serving", "bench"]), "kind"),
                     (frame.assign(tp=["two", 1]), "is not a number"),
                     (frame.assign(model=["no-such-model-xyz", None]), "no-such-model-xyz"),
                     (frame.drop(columns="kind"), "lacks column")):
        bad.to_csv(f, index=False)
        with pytest.raises(InputError, match=msg):
            run_import("csv", f)


@needs_shared
def test_truncated_or_malformed_files_fail_cleanly_and_leave_the_store_unchanged(tmp_path, capsys):
    src = PUB / "trtllm_perf_overview" / "trtllm_perf_overview_throughput.csv"
    store = f"sqlite:///{tmp_path / 's.sqlite'}"
    assert cli(["import", "gpu-probe", str(SHARED / "gpu_probe"), "--store", store, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stored"]["inserted"] == 539
    text = src.read_text()
    truncated = tmp_path / "truncated.csv"
    truncated.write_text(text[: len(text) // 2 + 37])  # cut in the middle of a record
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 50)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b,c\n1,2,3\n")
    for path in (truncated, garbage, wrong, tmp_path / "missing.csv"):
        assert cli(["import", "trtllm-perf", str(path), "--store", store]) == 2
        err = capsys.readouterr().err
        assert err.startswith("layoutcast: error:") and err.count("\n") == 1
    nim = tmp_path / "nim.csv"
    raw = pd.read_csv(PUB / "nvidia_dli_nim_genaiperf" / "nim.csv")
    raw.loc[3, "task_inputs-model"] = "mystery-llm-9000"
    raw.loc[4, "task_inputs-GPU"] = "Quantum QPU"
    raw.to_csv(nim, index=False)
    with pytest.raises(InputError, match=r"mystery-llm-9000.*Quantum QPU"):
        run_import("nim", nim)
    bad_parquet = tmp_path / "aic"
    skip = shutil.ignore_patterns("fpm_golden_runs_vllm", "a100_sxm", "b200_sxm", "h100_sxm")
    shutil.copytree(PUB / "aiconfigurator", bad_parquet, ignore=skip)
    victim = next(bad_parquet.glob("op_perf/h200_sxm/comm/nccl/*/nccl_perf.parquet"))
    victim.write_bytes(victim.read_bytes()[:300])
    assert cli(["import", "aiconfigurator", str(bad_parquet), "--ops", "comm", "--store", store]) == 2
    assert "not a readable parquet file" in capsys.readouterr().err
    with Store(store) as s:
        assert s.count() == 539


@needs_shared
def test_cli_import_twice_stores_once_and_summary_counts(tmp_path, capsys):
    store = f"sqlite:///{tmp_path / 's.sqlite'}"
    path = str(PUB / "nvidia_dli_nim_genaiperf")
    assert cli(["import", "nim", path, "--store", store]) == 0
    out = capsys.readouterr().out
    assert "787" in out and "left out" not in out
    assert cli(["import", "nim", path, "--store", store, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stored"] == {"inserted": 0, "already_stored": 787}
    assert cli(["import", "dli", path, "--store", store, "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stored"] is None
    assert cli(["data", "summary", "--store", store, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 787 and summary["by"]["source"] == {"nim": 787}
    assert summary["by"]["gpu"] == {"h100-sxm": 523, "a100-80g": 264}
    assert sum(summary["by"]["layout"].values()) == 787
    assert cli(["data", "summary", "--store", store]) == 0
    assert "by layout" in capsys.readouterr().out
    assert cli(["import", "nim", path, "--ops", "all", "--store", store]) == 2
    assert cli(["data", "summary", "--store", str(tmp_path / "absent.sqlite")]) == 2
    assert not (tmp_path / "absent.sqlite").exists()
