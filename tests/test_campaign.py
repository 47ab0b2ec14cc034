"""Active-learning campaigns with the replay backend on real recorded data (the TRT-LLM 0.9 DLI sweep): determinism,
resumption after a SIGKILL, failed runs, budgets, diverse batches, the CLI and its outputs; acquisition units."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collect.acquisition import (Prediction, chance_to_solve, expected_improvement, hypothesis_weights, kernel_lengthscale,
                                 per_run_value, physics_ranking_weight, relative_variance, resolve_objective,
                                 scenario_centrality, search_scores, select_batch, uncertainty_scores,
                                 variance_reduction_batch)
from collect.campaign import Campaign, CampaignSettings, PoolEvaluator, parse_budget, scenario_ids
from collect.dispatch import BackendSpec, Job, SerialDispatcher, install_backend, load_pool, measure_job
from collect.ledger import Ledger
from collect.sampler import CANDIDATE_COLUMNS, answerable, config_hashes, encode, pool_candidates
from collect.store import Store
from features.errors import InputError
from features.schema import conform

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DLI = SHARED / "public" / "nvidia_dli_nim_genaiperf"
needs_data = pytest.mark.skipif(not (DLI / "trt_llm_0_9_0_dli.csv").is_file(),
                                reason="shared data (../shared/data/public/nvidia_dli_nim_genaiperf) is absent")
SCENARIO = ("model", "gpu", "weight_dtype", "isl", "osl")
FAST = {"calibration": ("random", "layout")}  # fewer calibration refits: keeps these tests quick


@pytest.fixture(scope="module")
def pool():
    """The DLI sweep's Llama-2-7B rows on H100 and H200 (about 300 configurations, failed runs included)."""
    from collect.backends.replay import ReplayBackend

    frame = load_pool(f"dli:{DLI}")
    frame = frame[(frame["model"] == "llama-2-7b") & frame["gpu"].isin(["h100-sxm", "h200"])]
    return ReplayBackend(frame)


def _campaign(pool, store, strategy="uncertainty", budget="12", batch=4, seed=0, evaluator=False, candidates=None,
              **kw):
    spec = BackendSpec.make("replay", pool="dli-llama-2-7b-subset")
    install_backend(spec, pool)
    cand = pool_candidates(pool.frame) if candidates is None else candidates
    settings = CampaignSettings(backend="replay", strategy=strategy, budget=parse_budget(budget), batch=batch,
                                seed=seed, scenario=SCENARIO, model_params=FAST, **kw)
    ev = PoolEvaluator(pool.frame, resolve_objective("throughput", "serving"), SCENARIO,
                       ("output_throughput", "ttft_ms", "tpot_ms")) if evaluator else None
    return Campaign(settings, cand, SerialDispatcher(spec, store), store, evaluator=ev, progress=False)


@needs_data
@pytest.mark.parametrize("strategy", ["random", "uncertainty", "search"])
def test_replay_campaigns_are_deterministic_for_a_seed(pool, strategy):
    a = _campaign(pool, Store("sqlite://"), strategy).run()
    b = _campaign(pool, Store("sqlite://"), strategy).run()
    assert len(a.runs) == 12 and a.runs["config_hash"].is_unique
    assert a.runs["config_hash"].tolist() == b.runs["config_hash"].tolist()
    assert a.campaign_id == b.campaign_id
    c = _campaign(pool, Store("sqlite://"), strategy, seed=1).run()
    assert c.runs["config_hash"].tolist() != a.runs["config_hash"].tolist()
    assert c.campaign_id != a.campaign_id


@needs_data
def test_learner_sees_only_what_was_measured(pool):
    store = Store("sqlite://")
    camp = _campaign(pool, store, "uncertainty", budget="16", evaluator=True)
    assert not set(camp.cand.columns) & {"output_throughput", "ttft_ms", "tpot_ms", "makespan_s", "status"}
    res = camp.run()
    measured = res.measured
    ok = measured[(measured["status"] == "ok") & measured["output_throughput"].notna()]
    assert res.surrogate.model.fit_report_["output_throughput"]["n"] == len(ok)
    # every measured row is the pool's own row for a configuration the campaign chose, and nothing else
    assert set(config_hashes(measured)) <= set(res.runs["config_hash"])
    assert len(store.read()) == len(measured)
    last = res.curve[-1]
    assert last.runs == 16 and set(last.heldout) == {"output_throughput", "ttft_ms", "tpot_ms"}
    assert 0 < last.heldout["output_throughput"] < 0.5
    assert res.curve[0].runs == 0 and res.curve[0].heldout  # physics alone before any run


@needs_data
def test_resume_continues_the_same_sequence(pool, tmp_path):
    whole = _campaign(pool, Store("sqlite://"), "uncertainty", budget="16").run()
    store = Store(tmp_path / "s.sqlite")
    first = _campaign(pool, store, "uncertainty", budget="8").run()
    assert len(first.runs) == 8
    rest = _campaign(pool, store, "uncertainty", budget="16").run()  # the same campaign id: resumed, budget raised
    assert rest.campaign_id == first.campaign_id
    assert rest.runs["config_hash"].tolist() == whole.runs["config_hash"].tolist()
    assert len(store.read()) == len(whole.measured)


@needs_data
def test_planned_run_whose_rows_were_stored_is_not_measured_again(pool, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    camp = _campaign(pool, store, "random", budget="4", batch=4)
    camp.ledger.register(camp.campaign_id, camp._stored_settings())
    picks = camp._choose(camp.ledger.run_rows(camp.campaign_id), camp._fit(None), 4.0, 0)
    camp.ledger.plan(camp.campaign_id, picks)  # planned, then "killed" after the first run's rows were stored:
    first = picks[0]
    measure_job(camp.dispatcher.spec, Job(first["config_hash"], first["config"], first["run_id"]), store)
    before = len(store.read())
    res = camp.run()
    runs = res.runs.set_index("config_hash")
    assert (runs["state"] == "done").all() and len(runs) == 4
    assert runs.loc[first["config_hash"], "worker"] == "recovered from the store"
    assert runs.loc[first["config_hash"], "n_rows"] == before
    assert len(store.read()) == int(runs["n_rows"].sum())


@needs_data
def test_failed_runs_are_recorded_and_the_campaign_goes_on(pool):
    cand = pool_candidates(pool.frame).iloc[:6].copy()
    missing = cand.iloc[:2].copy()
    missing["max_num_seqs"] = missing["num_requests"] = 777  # never recorded: the replay backend cannot answer it
    store = Store("sqlite://")
    res = _campaign(pool, store, "random", budget="8", batch=8, candidates=pd.concat([cand, missing])).run()
    assert len(res.runs) == 8 and (res.runs["state"] == "done").all()
    errors = res.runs[res.runs["config_hash"].isin(config_hashes(missing))]
    assert (errors["status"] == "error").all() and len(errors) == 2
    stored = store.read(status="error")
    reasons = [json.loads(d)["reason"] for d in stored["detail"] if "campaign_run" in json.loads(d)]
    assert len(reasons) == 2 and all("ReplayUnavailable" in r for r in reasons)


@needs_data
def test_gpu_hour_budget_and_diverse_batches(pool):
    res = _campaign(pool, Store("sqlite://"), "uncertainty", budget="0.5gpu-h", batch=4).run()
    cost = res.runs["cost_gpu_h"].to_numpy(float)
    assert 0 < cost.sum() <= 0.5 + 1e-9 and len(res.runs) >= 4
    search = _campaign(pool, Store("sqlite://"), "search", budget="12", batch=4).run()
    for _, batch in search.runs.groupby("iteration"):
        scen = ["|".join(str(c[k]) for k in SCENARIO) for c in batch["config"]]
        assert len(set(scen)) == len(scen)  # one configuration per scenario per batch


@needs_data
def test_parallel_local_workers_share_a_store_file(pool, tmp_path):
    from collect.dispatch import ProcessDispatcher

    frame = pool.frame[pool.frame["gpu"] == "h200"]
    pool_file = tmp_path / "pool.csv"
    frame.to_csv(pool_file, index=False)  # what each worker process loads
    store = Store(tmp_path / "s.sqlite")
    spec = BackendSpec.make("replay", pool=str(pool_file))
    dispatcher = ProcessDispatcher(spec, store.url, workers=2)
    try:
        settings = CampaignSettings(backend="replay", strategy="random", budget=parse_budget(6), batch=6, seed=0)
        res = Campaign(settings, pool_candidates(pool.frame[pool.frame["gpu"] == "h200"]), dispatcher, store,
                       progress=False).run()
    finally:
        dispatcher.close()
    assert len(res.runs) == 6 and (res.runs["state"] == "done").all()
    assert str(os.getpid()) not in {w.split(":")[-1] for w in res.runs["worker"]}
    assert len(store.read()) == int(res.runs["n_rows"].sum())


def test_parse_budget():
    assert parse_budget("40").unit == "runs" and parse_budget(40).amount == 40
    b = parse_budget("2.5gpu-h")
    assert b.unit == "gpu_hours" and b.amount == 2.5
    assert parse_budget("3 GPU-hours").unit == "gpu_hours"
    for bad in ("", "0", "-3", "2.5", "ten", "4gpu-days"):
        with pytest.raises(InputError):
            parse_budget(bad)


def test_acquisition_units():
    mu, sigma = np.array([0.0, 0.1, -0.1, 0.0]), np.array([0.1, 0.1, 0.1, 0.3])
    ei = expected_improvement(mu, sigma, np.zeros(4))
    assert ei[1] > ei[0] > ei[2] and ei[3] > ei[0] and (ei >= 0).all()
    pred = Prediction(log_point={"tpot_ms": np.zeros(4)}, log_lo={"tpot_ms": np.full(4, -0.2)},
                      log_hi={"tpot_ms": np.array([0.2, 0.4, 0.2, 0.2])},
                      log_spread={"tpot_ms": np.array([0.1, 0.1, 0.3, 0.1])}, p_ok=np.array([1.0, 1.0, 1.0, 0.2]))
    s = uncertainty_scores(pred, ("tpot_ms",))
    assert s[1] > s[0] and s[2] > s[0] and s[3] < s[0]
    per_cost = uncertainty_scores(pred, ("tpot_ms",), cost=np.array([1.0, 10.0, 1.0, 1.0]))
    assert per_cost[1] < per_cost[0]  # cost-aware: twice as uncertain is not worth ten times the GPU-hours
    # search: scenario "a" has a clear favourite and no measurement; "b" already measured its best; "c" measured a
    # poor configuration and has a much better one untried
    mu = np.array([1.0, 0.5, 0.0, 0.9, 0.85, 0.2, 1.0])
    group = np.array(["a", "a", "a", "b", "b", "c", "c"], dtype=object)
    inc = np.array([np.nan, np.nan, np.nan, 1.0, 1.0, 0.2, 0.2])
    p = chance_to_solve(mu, np.full(7, 0.05), np.ones(7), group, inc, np.log(0.97), seed=0, samples=400)
    assert p[0] > 0.95 and p[1] < 0.05 and p[2] < 0.05
    assert p[3] < 0.05 and p[4] < 0.05  # nothing to gain where the measured incumbent is best
    assert p[6] > 0.95
    failing = chance_to_solve(mu, np.full(7, 0.05), np.r_[0.1, np.ones(6)], group, inc, np.log(0.97), samples=400)
    assert failing[0] < 0.2 and failing[1] > 0.5  # a favourite that will probably not run gives way
    X = np.array([[0.0, 0.0], [0.0, 0.001], [1.0, 1.0], [0.5, 0.5]])
    scores = np.array([1.0, 0.99, 0.5, 0.4])
    assert select_batch(scores, X, 2, np.ones(4, bool)) == [0, 2]  # the near-copy of 0 is skipped
    assert select_batch(scores, X, 2, np.array([False, True, True, True])) == [1, 2]
    assert select_batch(scores, X, 3, np.ones(4, bool), cost=np.array([1.0, 1.0, 1.0, 5.0]), budget_left=2.0) == [0, 2]
    groups = np.array(["a", "a", "a", "b"], dtype=object)
    assert select_batch(scores, np.zeros((4, 0)), 2, np.ones(4, bool), groups=groups) == [0, 3]


def test_variance_reduction_batch_is_representative_and_diverse():
    rng = np.random.default_rng(0)
    dense = rng.normal(0.2, 0.01, size=(60, 2))  # a dense cluster, a sparse one, and one far outlier
    sparse = rng.normal(0.8, 0.01, size=(6, 2))
    X = np.vstack([dense, sparse, [[5.0, 5.0]]])
    ell = kernel_lengthscale(X, share=0.05)
    assert 0 < ell < 1
    var = np.ones(len(X))
    var[-1] = 3.0  # the outlier is the most uncertain row, but explains nothing else
    picks = variance_reduction_batch(var, X, 2, np.ones(len(X), bool), ell=0.1)
    assert picks[0] < 60 and 60 <= picks[1] < 66  # the dense cluster first, then the other cluster, not a near-copy
    # what is measured already explains its neighbourhood: the next pick goes elsewhere
    measured = np.zeros(len(X), bool)
    measured[:60] = True
    picks = variance_reduction_batch(var, X, 1, ~measured, measured=measured, ell=0.1)
    assert 60 <= picks[0] < 66
    # a candidate that will probably fail teaches little; cost-aware: the budget bounds the batch
    p_ok = np.ones(len(X))
    p_ok[60:66] = 0.01
    assert variance_reduction_batch(var, X, 1, ~measured, measured=measured, ell=0.1, p_ok=p_ok) == [66]
    cost = np.full(len(X), 2.0)
    assert len(variance_reduction_batch(var, X, 5, np.ones(len(X), bool), cost=cost, budget_left=4.0, ell=0.1)) == 2
    assert variance_reduction_batch(var, X, 3, np.zeros(len(X), bool)) == []


def test_relative_variance_and_physics_mixture_in_search():
    pred = Prediction(log_point={"tpot_ms": np.zeros(3)}, log_lo={"tpot_ms": np.full(3, -0.2)},
                      log_hi={"tpot_ms": np.array([0.2, 0.4, np.nan])}, p_ok=np.ones(3))
    v = relative_variance(pred, ("tpot_ms",))
    assert v[1] > v[0] and v[2] == v.max()
    # one scenario: the learned model favours row 0 (measured already), physics favours row 2
    obj = resolve_objective("throughput", "serving")
    n = 3
    pred = Prediction(log_point={"output_throughput": np.log([110.0, 100.0, 100.0])},
                      log_lo={"output_throughput": np.full(n, -0.05)}, log_hi={"output_throughput": np.full(n, 0.05)},
                      p_ok=np.ones(n))
    scen = np.array(["s"] * n, dtype=object)
    inc = {"s": float(np.log(110.0))}
    log_phys = np.log([100.0, 100.0, 130.0])
    plain = search_scores(pred, obj, np.ones(n), scen, inc, log_physics=log_phys, physics_weight=0.0)
    mixed = search_scores(pred, obj, np.ones(n), scen, inc, log_physics=log_phys, physics_weight=0.5)
    assert mixed[2] > plain[2] + 0.2 and mixed[2] > mixed[1]
    # conditioning on measured errors: the model over-predicted the measured row 0 by 20%, so the untried rows of
    # the scenario are probably over-predicted too, and a second try there is less likely to beat the incumbent
    inc_low = {"s": float(np.log(110.0 * 0.8))}
    measured_u = np.array([np.log(110.0 * 0.8), np.nan, np.nan])
    raw = search_scores(pred, obj, np.ones(n), scen, inc_low)
    cond = search_scores(pred, obj, np.ones(n), scen, inc_low, measured_utility=measured_u)
    assert cond[1] < raw[1] and cond[2] < raw[2]
    inc_high = {"s": float(np.log(110.0 * 1.2))}  # under-predicted: the others are probably better than they look
    measured_u = np.array([np.log(110.0 * 1.2), np.nan, np.nan])
    assert (search_scores(pred, obj, np.ones(n), scen, inc_high, measured_utility=measured_u)[1]
            > search_scores(pred, obj, np.ones(n), scen, inc_high)[1])
    with pytest.raises(InputError):
        CampaignSettings(backend="replay", physics_weight=1.5)
    with pytest.raises(InputError):
        CampaignSettings(backend="replay", acquisition="nope")


@needs_data
def test_variance_acquisition_and_recommended_layouts(pool):
    res = _campaign(pool, Store("sqlite://"), "uncertainty", budget="12", evaluator=True, acquisition="variance").run()
    assert len(res.runs) == 12 and res.runs["config_hash"].is_unique
    last = res.curve[-1].best
    assert 0.0 <= last["recommended_within_3pct"] <= 1.0
    first = _campaign(pool, Store("sqlite://"), "random", budget="4").run()
    again = _campaign(pool, Store("sqlite://"), "uncertainty", budget="4").run()
    assert set(first.runs["config_hash"]) == set(again.runs["config_hash"])  # random starts from the same design


@needs_data
def test_search_weighs_the_physics_ranking_by_out_of_scenario_evidence(pool):
    obj = resolve_objective("throughput", "serving")
    assert physics_ranking_weight(None, None, obj, np.zeros(0)) == 0.5  # no evidence: the prior
    camp = _campaign(pool, Store("sqlite://"), "search", budget="16", evaluator=True)
    res = camp.run()
    assert len(res.runs) == 16 and 0.0 <= camp.last_physics_weight <= 1.0
    fixed = _campaign(pool, Store("sqlite://"), "search", budget="8", physics_weight=0.0).run()
    assert len(fixed.runs) == 8
    # the weight is the physics' share of the pairs where exactly one ranking is right: a surrogate fitted on the
    # measured rows gives a number in [0, 1], the prior when a scenario never has two measured configurations
    measured = camp._load_measured(res.runs[res.runs["state"] == "done"])
    sur = camp._fit(measured)
    scen = np.array([str(i) for i in range(len(measured))], dtype=object)  # every row its own scenario: no pairs
    assert physics_ranking_weight(sur, measured, obj, scen) == 0.5
    from collect.campaign import scenario_ids

    w = physics_ranking_weight(sur, measured, obj, scenario_ids(measured, SCENARIO))
    assert 0.0 <= w <= 1.0


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "predictor", "campaign", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    cases = [
        ["--backend", "replay", "--budget", "4"],  # no pool
        ["--backend", "vllm", "--budget", "4"],  # no space
        ["--backend", "replay", "--pool", str(tmp_path / "none.csv"), "--budget", "4"],
        ["--backend", "replay", "--pool", "x.csv", "--budget", "four"],
    ]
    for args in cases:
        p = _cli(*args, "--store", str(tmp_path / "s.sqlite"))
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, (args, err)
        assert err.strip().count("\n") == 0 and err.startswith("layoutcast: error:"), err


@needs_data
def test_cli_writes_outputs_and_survives_sigkill(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("engine: trtllm\nmodels: [llama-2-7b]\ngpus: [h100-sxm, h200]\n"
                     "scenario: [model, gpu, weight_dtype, isl, osl]\n")
    args = ["--backend", "replay", "--pool", f"dli:{DLI}", "--space", str(space), "--budget", "12", "--batch", "3",
            "--strategy", "uncertainty", "--seed", "5", "--quiet"]
    store = tmp_path / "killed.sqlite"
    p = _cli(*args, "--store", str(store), start_new_session=True)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
        try:
            with Store(store) as s:
                led = Ledger(s)
                ids = led.campaign_ids()
                done = int((led.run_rows(ids[0])["state"] == "done").sum()) if ids else 0
        except Exception:  # noqa: BLE001 - the store may be mid-creation
            continue
        if done >= 4:
            break
    assert p.poll() is None, "the campaign finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    p = _cli(*args, "--store", str(store), "--out", str(tmp_path / "out"))
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    with Store(store) as s:
        led = Ledger(s)
        runs = led.run_rows(led.campaign_ids()[0])
        stored = s.read()
    assert len(runs) == 12 and runs["config_hash"].is_unique and (runs["state"] == "done").all()
    assert len(stored) == int(runs["n_rows"].sum())  # no run repeated, none lost
    assert stored["run_id"].nunique() == 12
    ref = tmp_path / "whole.sqlite"
    p = _cli(*args, "--store", str(ref))
    p.communicate(timeout=600)
    with Store(ref) as s:
        led = Ledger(s)
        whole = led.run_rows(led.campaign_ids()[0])
    assert whole["config_hash"].tolist() == runs["config_hash"].tolist()  # the kill changed nothing it chose
    files = {f.name for f in (tmp_path / "out").iterdir()}
    assert {"measured.csv", "runs.csv", "model.joblib", "learning_curve.png", "campaign.json"} <= files
    from train.artifact import load_artifact

    model = load_artifact(tmp_path / "out" / "model.joblib")
    assert model.metadata_["campaign"]["runs"] == 12
    measured = pd.read_csv(tmp_path / "out" / "measured.csv")
    assert len(measured) == len(stored)
    summary = json.loads((tmp_path / "out" / "campaign.json").read_text())
    assert summary["runs"] == 12 and summary["final"]["heldout"]["output_throughput"] < 0.5


def test_torch_step_campaign_on_cpu(tmp_path):
    pytest.importorskip("torch")
    from collect.sampler import enumerate_space, load_space

    space = load_space(REPO / "data" / "campaigns" / "tiny-llama-steps.yaml")
    spec = BackendSpec.make("torch", device="cpu")
    store = Store(tmp_path / "s.sqlite")
    settings = CampaignSettings(backend="torch", strategy="search", budget=parse_budget(3), batch=3, seed=0)
    res = Campaign(settings, enumerate_space(space), SerialDispatcher(spec, store), store, progress=False).run()
    assert len(res.runs) == 3 and (res.runs["status"] == "ok").all()
    rows = store.read(kind="step")
    assert len(rows) == 3 and (rows["layer_ms"] > 0).all() and (rows["source"] == "torch-probe").all()
    assert set(rows["run_id"]) == set(res.runs["run_id"])
    scen = {(c["phase"], c["batch"], c["context"], c["tokens"]) for c in res.runs["config"]}
    assert len(scen) == 3  # search spreads its first batch over three shapes (scenarios), one TP choice each


def _feasibility_frame(n_ok: int, n_failed: int, fits: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """Measured rows on a 1-d configuration axis (batch): the small batches ran, the large ones failed."""
    batch = np.arange(n_ok + n_failed, dtype=float)
    frame = pd.DataFrame({"status": ["ok"] * n_ok + ["oom"] * n_failed, "f_feasible": float(fits), "batch": batch})
    return frame, batch[:, None] / max(len(batch), 1)


def test_feasibility_model_physics_prior_until_failures_are_seen():
    from collect.acquisition import PRIOR_OK_FEASIBLE, PRIOR_OK_INFEASIBLE, FeasibilityModel

    cand = pd.DataFrame({"f_feasible": [1.0, 0.0, np.nan]})
    empty = FeasibilityModel().fit(cand.iloc[0:0].assign(status=pd.Series(dtype=str)), None)
    p = empty.p_ok(cand, np.zeros((3, 1)))
    assert p[0] == pytest.approx(PRIOR_OK_FEASIBLE) and p[1] == pytest.approx(PRIOR_OK_INFEASIBLE)
    assert p[2] == pytest.approx(PRIOR_OK_FEASIBLE)  # unknown physics verdict: treated as fitting
    # one failure among physics-feasible runs: no classifier yet, the feasible rate moves down from its prior
    frame, enc = _feasibility_frame(5, 1)
    m = FeasibilityModel().fit(frame, enc)
    assert m.classifier is None and m.weight == 0.0
    assert m.p_ok(cand, np.zeros((3, 1)))[0] < PRIOR_OK_FEASIBLE
    assert m.p_ok(cand, np.zeros((3, 1)))[1] == pytest.approx(PRIOR_OK_INFEASIBLE)


def test_feasibility_model_learns_where_runs_fail():
    from collect.acquisition import FeasibilityModel

    frame, enc = _feasibility_frame(12, 8)  # batches 0..11 ran, 12..19 failed (all physics-feasible)
    m = FeasibilityModel(seed=0).fit(frame, enc)
    assert m.classifier is not None and 0.5 < m.weight < 1.0
    probe = pd.DataFrame({"f_feasible": [1.0, 1.0]})
    p_small, p_large = m.p_ok(probe, np.array([[2.0], [18.0]]) / 20)
    assert p_small > 0.7 > 0.3 > p_large
    assert np.all((0.0 <= m.predict_proba(probe, np.array([[2.0], [18.0]]) / 20)) & (m.predict_proba(
        probe, np.array([[2.0], [18.0]]) / 20) <= 1.0))


def test_recommendation_never_goes_to_a_configuration_likely_to_fail():
    from collect.acquisition import recommend

    scen = np.array(["a", "a", "a", "b", "b", "c", "c"], dtype=object)
    u_pred = np.array([3.0, 2.0, 1.0, 5.0, 4.0, 1.0, 2.0])
    measured = np.array([False, False, True, False, False, True, False])
    u_meas = np.array([np.nan, np.nan, 0.5, np.nan, np.nan, np.nan, np.nan])  # c's measured one failed
    p_ok = np.array([0.2, 0.9, 1.0, 0.1, 0.3, 1.0, 0.1])
    first = recommend(scen, u_pred, u_meas, measured, p_ok)
    assert first["a"] == 2  # the best measured one that ran
    assert first["b"] == 4  # nothing measured, every candidate likely to fail: the one most likely to run
    assert first["c"] == 6  # the measured one failed: never recommended
    mixed = recommend(scen, u_pred, u_meas, measured, p_ok, measured_first=False)
    assert mixed["a"] == 1  # the predicted best (0) is likely to fail; the next prediction overrules the measurement
    assert recommend(scen, u_pred, u_meas, measured, None, measured_first=False)["a"] == 0


@needs_data
def test_search_learns_feasibility_from_measured_statuses_only(pool):
    camp = _campaign(pool, Store("sqlite://"), "search", budget="24", batch=8, evaluator=True)
    res = camp.run()
    measured = res.measured
    feas = res.surrogate.feasibility
    assert feas is not None
    n_runs_ok = int((res.runs["status"] == "ok").sum())
    assert feas.n_ok + feas.n_failed == len(measured) and feas.n_failed == int((measured["status"] != "ok").sum())
    assert n_runs_ok <= feas.n_ok  # counted over the measured rows, failed runs included
    p = res.surrogate.predict(camp.cand_phys, camp.X).p_ok
    assert p.shape == (len(camp.cand),) and np.all((p >= 0) & (p <= 1))
    last = res.curve[-1].best
    assert 0.0 <= last["recommended_within_3pct"] <= 1.0 and 0.0 <= last["model_pick_within_3pct"] <= 1.0


def test_ridge_boost_learner_carries_a_trend_trees_cut_into_steps():
    import pickle

    from train.learners import RidgeBoostLearner, XGBLearner

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (40, 3))
    X[3, 1] = np.nan  # a missing value counts as the column mean in the linear part
    y = 2.0 * X[:, 0] + 0.05 * rng.standard_normal(40)
    grid = np.column_stack([np.linspace(0.02, 0.98, 50), np.full(50, 0.5), np.full(50, 0.5)])
    truth = 2.0 * grid[:, 0]
    trees = XGBLearner(n_estimators=60, max_depth=6, learning_rate=0.15, seed=1).fit(X, y)
    both = RidgeBoostLearner(3.0, XGBLearner(n_estimators=60, max_depth=6, learning_rate=0.15, seed=1)).fit(X, y)
    assert np.abs(both.predict(grid) - truth).mean() < np.abs(trees.predict(grid) - truth).mean()
    again = pickle.loads(pickle.dumps(both))
    assert np.allclose(again.predict(grid), both.predict(grid))
    # a trend against the trees' monotone constraint is dropped: here the target falls with a column held increasing
    bound = RidgeBoostLearner(3.0, XGBLearner(n_estimators=10, monotone=(0, 0, 1), seed=1)).fit(X, -2.0 * X[:, 2])
    assert bound._coef[2] == 0.0


def test_gaussian_process_learner_carries_a_smooth_correction_and_folds_keep_its_kernel():
    import pickle

    from train.learners import GaussianProcessLearner, XGBLearner

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(0, 1, 40), rng.uniform(0, 1, 40), np.full(40, 7.0)])  # a constant column
    X[5, 1] = np.nan  # missing: the column's median
    y = np.sin(3.0 * X[:, 0]) + 0.02 * rng.standard_normal(40)
    grid = np.column_stack([np.linspace(0.02, 0.98, 50), np.full(50, 0.5), np.full(50, 7.0)])
    truth = np.sin(3.0 * grid[:, 0])
    gp = GaussianProcessLearner(seed=1).fit(X, y)
    trees = XGBLearner(n_estimators=60, max_depth=6, learning_rate=0.15, seed=1).fit(X, y)
    assert np.abs(gp.predict(grid) - truth).mean() < 0.5 * np.abs(trees.predict(grid) - truth).mean()
    assert list(gp._keep) == [0, 1]  # the constant column is dropped
    tuned = gp.kernel_.theta
    assert not np.allclose(tuned, gp._kernel(2).theta)  # the marginal likelihood moved the kernel off its start
    fold = gp.frozen(seed=2).fit(X[:30], y[:30])
    assert np.allclose(fold.kernel_.theta, tuned)  # a fold refits the weights under the full fit's kernel
    assert not np.allclose(fold.predict(grid), gp.predict(grid))
    again = pickle.loads(pickle.dumps(gp))
    assert np.allclose(again.predict(grid), gp.predict(grid))
    capped = GaussianProcessLearner(max_rows=20).fit(X, y)
    assert len(capped._model.X_train_) == 20


@needs_data
def test_campaign_surrogate_blends_a_gaussian_process_with_trees_over_a_monotone_ridge_trend(pool):
    from collect.acquisition import GP_WEIGHT, Surrogate
    from train.frames import physics
    from train.learners import AveragedLearner, GaussianProcessLearner, RidgeBoostLearner, XGBLearner

    rows = physics(pool.frame[pool.frame["status"].astype("string").fillna("ok").eq("ok")].reset_index(drop=True))
    sur = Surrogate(("output_throughput",), members=0, model_params=FAST).fit(rows)
    learner = sur.model.learners_["output_throughput"]
    assert isinstance(learner, AveragedLearner) and learner.weights == (1.0 - GP_WEIGHT, GP_WEIGHT)
    blend, gp = learner.members
    assert isinstance(gp, GaussianProcessLearner) and gp.kernel is None and gp.kernel_ is not None
    assert isinstance(blend, AveragedLearner) and isinstance(blend.members[1], RidgeBoostLearner)
    ridge = blend.members[1]
    assert ridge._coef[-1] >= 0.0  # the trend never runs against the monotone constraint in the physics answer
    pred = sur.model.predict_arrays(rows)["pred_output_throughput"]
    assert np.isfinite(pred).all() and (pred > 0).all()
    # cross-validation folds (interval calibration) keep the kernel the full fit tuned
    fold = sur.model.fold_learner(learner, len(sur.model.spaces_["serving"].names), seed=5)
    assert fold.members[1].kernel is gp.kernel_
    no_gp = Surrogate(("output_throughput",), members=0, model_params={**FAST, "gp_weight": 0.0}).fit(rows)
    plain = no_gp.model.learners_["output_throughput"]
    assert isinstance(plain, AveragedLearner) and plain.weights is None  # gp_weight 0: the trees' blend alone
    trees = Surrogate(("output_throughput",), members=0,
                      model_params={**FAST, "ridge_alpha": 0.0, "gp_weight": 0.0}).fit(rows)
    assert type(trees.model.learners_["output_throughput"]) is XGBLearner  # and ridge_alpha 0: trees alone


@needs_data
def test_search_surrogate_keeps_trees_alone_unless_asked(pool):
    from train.learners import GaussianProcessLearner

    def has_gp(camp):
        res = camp.run()
        learner = camp._fit(camp._load_measured(res.runs[res.runs["state"] == "done"])).model.learners_[
            "output_throughput"]
        return any(isinstance(m, GaussianProcessLearner) for m in getattr(learner, "members", ()))

    assert has_gp(_campaign(pool, Store("sqlite://"), "uncertainty", budget="12"))
    assert not has_gp(_campaign(pool, Store("sqlite://"), "search", budget="12"))  # STRATEGY_MODEL_PARAMS
    asked = _campaign(pool, Store("sqlite://"), "search", budget="12")
    asked.settings = replace(asked.settings, model_params={**FAST, "gp_weight": 0.5})
    assert has_gp(asked)


def _memory_frame(batches, osl, gpu="h100-sxm", mem_gb=80.0, status=None) -> pd.DataFrame:
    """Serving rows with the physics' memory terms: a 7B-like model (14 GB of weights, 0.5 MB of KV per token)."""
    n = len(batches)
    return pd.DataFrame({"kind": "serving", "engine": "trtllm", "model": "m", "gpu": gpu, "weight_dtype": "fp16",
                         "kv_dtype": "fp16", "tp": 1, "pp": 1, "dp": 1, "ep": 1, "attention_dp": False,
                         "isl": 128.0, "osl": float(osl), "max_num_seqs": np.asarray(batches, dtype=float),
                         "num_requests": np.asarray(batches, dtype=float), "f_weight_bytes_per_gpu": 14e9,
                         "f_gpu_mem_gb": mem_gb, "f_kv_bytes_per_token": 5e5, "f_kv_heads": 32.0, "f_feasible": 1.0,
                         "status": status if status is not None else ["ok"] * n})


def test_memory_demand_from_the_physics_memory_terms():
    from collect.acquisition import memory_demand

    d = memory_demand(_memory_frame([100.0], osl=872))  # 14 GB + 100 x 1000 tokens x 0.5 MB = 64 GB of 80
    assert d[0] == pytest.approx(np.log(64.0 / 80.0))
    tp2 = _memory_frame([100.0], osl=872).assign(tp=2)  # KV heads split over TP: half the KV per GPU
    assert memory_demand(tp2)[0] == pytest.approx(np.log((14.0 + 25.0) / 80.0))
    assert memory_demand(_memory_frame([100.0], osl=872).assign(kind="step")) is None
    assert memory_demand(pd.DataFrame({"f_feasible": [1.0]})) is None  # no memory terms: no demand


def test_memory_model_learns_a_layout_threshold_from_a_few_failures():
    from collect.acquisition import PRIOR_OK_FEASIBLE, FeasibilityModel

    probe = pd.concat([_memory_frame([2.0, 512.0], osl=4096),  # another workload of the same model, GPU and layout
                       _memory_frame([2.0, 512.0], osl=4096, gpu="h200", mem_gb=141.0)], ignore_index=True)
    enc = np.zeros((len(probe), 1))
    # before any failure: the physics verdict alone, no slope in the KV demand (a paged cache may only queue)
    prior = FeasibilityModel().fit(probe.iloc[0:0], None).p_ok(probe, enc)
    assert np.allclose(prior, prior[0]) and prior[0] == pytest.approx(PRIOR_OK_FEASIBLE, abs=0.03)
    batches = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]  # at OSL 2048: 128 runs (61 GB), 256 fails (145 GB)
    measured = _memory_frame(batches, osl=2048, status=["ok"] * 8 + ["oom"])
    m = FeasibilityModel().fit(measured, None)  # no encoding: the memory model alone (no classifier)
    p = m.p_ok(probe, enc)
    assert m.classifier is None
    assert p[0] > 0.8 > 0.5 > p[1]  # batch 512 at OSL 4096 needs far more than the batch that failed
    assert p[3] > p[1]  # the larger GPU keeps more headroom
    # an engine error is no memory failure: it lowers the other-failure rate, not the memory threshold
    err = FeasibilityModel().fit(_memory_frame(batches, osl=2048, status=["ok"] * 8 + ["error"]), None)
    assert err.other_ok < 0.98 and err.p_ok(probe, enc)[1] > p[1]


@needs_data
def test_search_batches_take_each_scenarios_best_without_a_distance_discount(pool, monkeypatch):
    import collect.campaign as campaign_module

    seen = []
    real = campaign_module.select_batch

    def spy(scores, X, k, available, *args, **kw):
        picks = real(scores, X, k, available, *args, **kw)
        if kw.get("groups") is not None:
            seen.append((X.shape[1], scores, kw["groups"], picks, available))
        return picks

    monkeypatch.setattr(campaign_module, "select_batch", spy)
    _campaign(pool, Store("sqlite://"), "search", budget="12", batch=4).run()
    assert seen and all(dims == 0 for dims, *_ in seen)  # no encoding: no discount between scenarios
    for _, scores, groups, picks, available in seen:  # each pick is its scenario's best-scored available candidate
        for i in picks:
            mine = available & (groups == groups[i]) & np.isfinite(scores)
            assert scores[i] == pytest.approx(scores[mine].max())


@needs_data
def test_uncertainty_spreads_over_scenarios_not_yet_measured(pool):
    """After the space-filling first batch, `uncertainty` measures one configuration per scenario not measured yet
    while enough of them remain; without `cover_scenarios` nothing keeps it from measuring a scenario twice."""
    cand = pool_candidates(pool.frame)
    scen = scenario_ids(cand, SCENARIO)
    of = dict(zip(config_hashes(cand), scen))
    assert len(set(scen)) >= 12

    def scenarios_after_design(**kw):
        res = _campaign(pool, Store("sqlite://"), "uncertainty", budget="12", batch=4, **kw).run()
        runs = res.runs.sort_values("seq")
        first = set(runs.loc[runs["iteration"] == runs["iteration"].min(), "config_hash"])
        later = [of[h] for h in runs.loc[~runs["config_hash"].isin(first), "config_hash"]]
        return [of[h] for h in first], later

    design, later = scenarios_after_design()
    assert len(later) == 8 and len(set(later)) == 8 and not set(later) & set(design)
    design_off, later_off = scenarios_after_design(cover_scenarios=False)
    assert design_off == design  # the same space-filling start either way
    assert len(set(design_off + later_off)) < len(design_off + later_off)  # the plain subsample repeats a scenario


def test_scenario_centrality_peaks_at_each_scenarios_middle_configuration():
    """Each configuration's typicality is measured from its own scenario's centroid: the middle one of a scenario is
    the most typical, its ends equally less so, a scenario of one configuration is fully typical, and the chance of
    running and the cost scale what measuring it is worth."""
    X = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [5.0, 5.0], [9.0, 1.0], [9.0, 3.0]])
    scen = np.array(["a", "a", "a", "b", "c", "c"], dtype=object)
    c = scenario_centrality(X, scen)
    assert c[1] == pytest.approx(1.0) and c[3] == pytest.approx(1.0)  # a's middle, b's only configuration
    assert c[0] == pytest.approx(c[2]) and c[0] < 1.0
    assert c[4] == pytest.approx(c[5]) and c[4] == pytest.approx(c[0])  # both one unit from their centroid
    far = scenario_centrality(np.array([[0.0], [1.0], [2.0], [0.0], [10.0]]), np.array(list("aaabb"), dtype=object))
    assert far[4] < far[0] < far[1]  # five units out is less typical than one
    assert np.all(scenario_centrality(np.zeros((3, 0)), np.array(list("abc"), dtype=object)) == 1.0)
    v = per_run_value(c, np.array([1.0, 0.5, 1.0, 1.0, 1.0, 1.0]), cost=np.array([1.0, 1.0, 4.0, 1.0, 1.0, 1.0]))
    assert v[1] == pytest.approx(0.5) and v[2] == pytest.approx(c[2] / 4.0) and v[0] == pytest.approx(c[0])


@needs_data
def test_uncertainty_measures_a_typical_configuration_of_each_new_scenario(pool):
    """While it covers scenarios not measured yet, `uncertainty` measures typical configurations of them (nearest
    their scenario's centroid), not their widest intervals; with `typical_first` off it picks by width."""
    cand = pool_candidates(pool.frame)
    typical = dict(zip(config_hashes(cand), scenario_centrality(encode(cand), scenario_ids(cand, SCENARIO))))

    def picks_after_design(**kw):
        res = _campaign(pool, Store("sqlite://"), "uncertainty", budget="16", batch=4, **kw).run()
        runs = res.runs.sort_values("seq")
        later = runs.loc[runs["iteration"] > runs["iteration"].min(), "config_hash"]
        return np.array([typical[h] for h in later])

    on, off = picks_after_design(), picks_after_design(typical_first=False)
    assert len(on) == len(off) == 12
    assert on.mean() > off.mean() + 0.15  # seeds 0-2: 0.86-0.91 vs 0.56-0.70
    assert np.median(on) > 0.8


def test_physics_hypothesis_loses_weight_where_its_ranking_missed_a_measurement():
    """Per scenario, the physics-ranking hypothesis keeps its prior weight until a measurement tells the two apart:
    it drops where physics missed the measured value by several spreads and rises where the learned model did."""
    scen = pd.Series(["a", "a", "b", "b", "c", "c"], dtype=object)
    sigma = np.full(6, 0.1)
    learned = np.log([100.0, 90.0, 100.0, 90.0, 70.0, 90.0])
    physics = np.log([140.0, 80.0, 100.0, 90.0, 100.0, 120.0])
    # a: physics over-predicted the measured row by 40%; b: both agree; c: the learned model under-predicted by 30%
    measured = np.log([100.0, np.nan, 100.0, np.nan, 100.0, np.nan])
    w = hypothesis_weights(learned, physics, measured, sigma, scen, 0.5)
    assert w[0] == w[1] and w[0] < 0.05  # a: 3.4 spreads off for physics
    assert w[2] == pytest.approx(0.5) and w[3] == w[2]  # b: no evidence either way
    assert w[4] > 0.95 and w[5] == w[4]  # c: 3.6 spreads off for the learned model
    assert np.all(hypothesis_weights(learned, physics, None, sigma, scen, 0.3) == 0.3)
    assert np.allclose(hypothesis_weights(learned, physics, np.full(6, np.nan), sigma, scen, 0.3), 0.3)


@needs_data
def test_replay_offers_only_configurations_the_pool_can_answer(pool):
    """A configuration whose pool rows all ran without recording the objective's target is no candidate (a replayed
    run would measure nothing asked for); one that failed stays (a failure is an answer); values are never read."""
    frame = pool.frame.reset_index(drop=True).copy()
    cand = pool_candidates(frame)
    hashes = np.asarray(config_hashes(conform(frame)[list(CANDIDATE_COLUMNS)]), dtype=object)
    ok = frame["status"].astype("string").fillna("ok").eq("ok").to_numpy(bool)
    silent, failed = hashes[ok][0], hashes[ok][-1]
    frame.loc[hashes == silent, "output_throughput"] = np.nan
    frame.loc[hashes == failed, ["status", "output_throughput"]] = ["oom", np.nan]
    kept = answerable(cand, frame, "output_throughput")
    kept_hashes = set(config_hashes(kept))
    assert silent not in kept_hashes and failed in kept_hashes
    assert len(kept) == len(cand) - 1
    assert len(answerable(cand, frame, "no_such_target")) == len(cand)
