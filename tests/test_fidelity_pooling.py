"""Pooling and archiving of the scheduler-fidelity benchmark's real sessions (data/vllm_cpu/fidelity_sessions/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repo root: benchmarks/ is not installed

from benchmarks.scheduler_fidelity import (analyse, archive_results, fit_step_time, pooled_calibration,  # noqa: E402
                                           pooled_floor, read_result, simulate_run)

SESSIONS = REPO / "data" / "vllm_cpu" / "fidelity_sessions"
NEW, OLD = SESSIONS / "s8_2026-12-07T0208", SESSIONS / "s6_2026-11-26T1615"  # sweeps 2/3/4/8 and 2/4/8/16
NAME = "result_tiny-llama_tp1.json"


def test_archive_rounds_to_a_tenth_of_a_microsecond_and_reads_back(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    raw = {"error": None, "engine_start_s": 2.123456789, "traceback": "dropped",
           "runs": [[{"steps": [[0.0, 0.00300381234, 1.0]], "makespan_s": 4.9125421999}]]}
    (work / "result_tiny-llama_tp1.json").write_text(json.dumps(raw))
    (work / "plan_tiny-llama_tp1.json").write_text("{}")  # not a result: not archived
    kept = archive_results(work, tmp_path / "archive")
    assert [p.name for p in kept] == ["result_tiny-llama_tp1.json.xz"]
    back = read_result(tmp_path / "archive" / "result_tiny-llama_tp1.json")
    assert back == {"error": None, "engine_start_s": 2.1234568,
                    "runs": [[{"steps": [[0.0, 0.0030038, 1.0]], "makespan_s": 4.9125422}]]}


@pytest.mark.skipif(not (NEW / (NAME + ".xz")).exists(), reason="archived fidelity sessions absent")
def test_pooled_setting_is_calibrated_on_the_sessions_that_ran_it():
    """A setting only the newer session ran (max_num_seqs 3) is simulated with that session's calibration floor; a
    setting both ran (2) with the floor over both sessions' calibrations, which is at least as fast."""
    res = read_result(NEW / NAME)
    eng = {"engine": "tiny-llama TP1", "tp": 1, "runs": []}
    analyse(eng, res)
    assert [r["max_num_seqs"] for r in eng["runs"]] == [2, 3, 4, 8]
    pooled_floor(eng, res, [OLD], NAME)
    rows = {r["max_num_seqs"]: r for r in eng["pooled"]["runs"]}
    assert rows[3]["sessions"] == 1 and rows[2]["sessions"] == rows[4]["sessions"] == rows[8]["sessions"] == 2
    own = fit_step_time(pooled_calibration(res["calibration"]))
    run3 = next(reps[0] for reps in res["runs"] if reps[0]["max_num_seqs"] == 3)
    assert rows[3]["sim_pooled_floor_makespan_s"] == pytest.approx(
        simulate_run(run3, own, res["usable_blocks"], timeline=False).makespan_s, rel=1e-12)
    both = fit_step_time(pooled_calibration(res["calibration"] + read_result(OLD / NAME)["calibration"]))
    run2 = next(reps[0] for reps in res["runs"] if reps[0]["max_num_seqs"] == 2)
    sim_both = simulate_run(run2, both, res["usable_blocks"], timeline=False).makespan_s
    assert rows[2]["sim_pooled_floor_makespan_s"] == pytest.approx(sim_both, rel=1e-12)
    assert sim_both <= simulate_run(run2, own, res["usable_blocks"], timeline=False).makespan_s * 1.02
    assert {tuple(f["sessions"]) for f in eng["pooled"]["fits"]} == {(0,), (0, 1)}
    assert np.isfinite([r["err"] for r in rows.values()]).all()
