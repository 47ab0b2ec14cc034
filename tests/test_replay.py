"""The replay backend answers measurement requests from recorded rows, exactly and only for recorded configurations."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from collect.backends.replay import CANDIDATE_COLUMNS, ReplayBackend, ReplayUnavailable
from collect.importers import run_import
from collect.store import Store
from features.errors import InputError
from features.schema import TARGET_COLUMNS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def recorded() -> pd.DataFrame:
    """Serving rows of two layouts (one measured twice), an OOM label, and a step row of another engine."""
    base = {"kind": "serving", "source": "test", "engine": "vllm", "model": "qwen2.5-32b", "gpu": "h200",
            "weight_dtype": "bf16", "isl": 100.0, "osl": 4500.0, "num_requests": 2000}
    return pd.DataFrame([
        {**base, "tp": 2, "dp": 4, "output_throughput": 9000.0, "makespan_s": 1800.0, "run_id": "a"},
        {**base, "tp": 2, "dp": 4, "output_throughput": 9100.0, "makespan_s": 1790.0, "run_id": "b"},
        {**base, "tp": 8, "output_throughput": 7000.0, "makespan_s": 2100.0},
        {**base, "tp": 1, "dp": 8, "status": "oom"},
        {"kind": "step", "source": "test", "engine": "torch", "model": "qwen2.5-32b", "gpu": "h200", "tp": 2,
         "dp": 4, "phase": "decode", "batch": 64, "context": 4096.0, "layer_ms": 0.4},
    ])


def request(**over) -> dict:
    req = {"model": "qwen2.5-32b", "gpu": "h200", "weight_dtype": "bf16", "tp": 2, "dp": 4, "isl": 100,
           "osl": 4500, "num_requests": 2000}
    req.update(over)
    return req


def test_exact_match_returns_every_recorded_row_with_its_status():
    rb = ReplayBackend(recorded())
    rows = rb.measure(request())
    assert sorted(rows["output_throughput"]) == [9000.0, 9100.0]
    assert (rows["kind"] == "serving").all() and (rows["status"] == "ok").all()
    oom = rb.measure(request(tp=1, dp=8))
    assert list(oom["status"]) == ["oom"] and oom["output_throughput"].isna().all()
    assert rb(request(tp=8, dp=1))["makespan_s"].iloc[0] == 2100.0


def test_anything_not_recorded_is_unavailable():
    rb = ReplayBackend(recorded())
    for req in (request(tp=4, dp=2), request(osl=4501), request(num_requests=None), request(max_num_seqs=256),
                request(model="llama-3.1-8b")):
        with pytest.raises(ReplayUnavailable):
            rb.measure(req)
        assert rb.lookup(req) is None and not rb.available(req)


def test_kind_and_engine_narrow_and_names_resolve():
    rb = ReplayBackend(recorded())
    assert len(rb.measure(request(engine="vllm"))) == 2
    assert rb.lookup(request(engine="trtllm")) is None
    step = {"model": "Qwen/Qwen2.5-32B", "gpu": "NVIDIA H200", "tp": 2, "dp": 4, "phase": "decode", "batch": 64,
            "context": 4096}
    assert rb.measure(step)["layer_ms"].iloc[0] == 0.4
    assert rb.lookup({**step, "kind": "serving"}) is None
    one_row = pd.DataFrame([request(gpu="h200")])
    assert len(rb.measure(one_row)) == 2 and len(rb.measure(one_row.iloc[0])) == 2


def test_candidates_are_the_recorded_configurations_without_targets():
    frame = recorded()
    rb = ReplayBackend(frame)
    cand = rb.candidates()
    assert list(cand.columns) == list(CANDIDATE_COLUMNS)
    assert not set(cand.columns) & set(TARGET_COLUMNS)
    assert len(cand) == 4  # the repeated configuration is one candidate
    for _, c in cand.iterrows():
        assert rb.available(c.to_dict())
    assert sum(len(rb.measure(c.to_dict())) for _, c in cand.iterrows()) == len(frame)


def test_bad_requests_and_frames_are_input_errors():
    rb = ReplayBackend(recorded())
    with pytest.raises(InputError, match="one configuration"):
        rb.measure(pd.DataFrame([request(), request()]))
    with pytest.raises(InputError, match="outside the measurement schema"):
        rb.measure({**request(), "speed": 3})
    with pytest.raises(InputError):
        rb.measure(["not", "a", "config"])
    with pytest.raises(InputError, match="kind"):
        ReplayBackend(pd.DataFrame({"model": ["x"]}))


def test_replay_from_a_store(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with Store(url) as s:
        s.append(recorded())
    rb = ReplayBackend.from_store(url, kind="serving")
    assert len(rb) == 4 and len(rb.measure(request())) == 2
    with pytest.raises(InputError, match="no measurement store"):
        ReplayBackend.from_store(str(tmp_path / "absent.sqlite"))
    assert ReplayBackend.from_store(url).available({"model": "qwen2.5-32b", "gpu": "h200", "tp": 2, "dp": 4,
                                                   "phase": "decode", "batch": 64, "context": 4096})


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data sets not present at {SHARED}")
def test_replaying_a_real_sweep_answers_every_candidate():
    frame, _ = run_import("dli", SHARED / "public" / "nvidia_dli_nim_genaiperf")
    rb = ReplayBackend(frame)
    cand = rb.candidates()
    assert len(cand) == len(frame)  # every DLI row is its own configuration
    sample = cand.sample(40, random_state=0)
    for _, c in sample.iterrows():
        rows = rb.measure(c.to_dict())
        assert len(rows) == 1
    oom = frame[frame["status"] == "oom"].iloc[[0]]
    assert rb.measure(oom[list(CANDIDATE_COLUMNS)])["status"].iloc[0] == "oom"
    with pytest.raises(ReplayUnavailable):
        rb.measure({**cand.iloc[0].to_dict(), "tp": 3})
