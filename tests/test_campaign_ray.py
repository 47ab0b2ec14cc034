"""The Ray dispatch path against a real local Ray instance: replay runs as Ray tasks writing to a shared store."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from collect.campaign import Campaign, CampaignSettings, parse_budget
from collect.dispatch import BackendSpec, RayDispatcher, load_pool, make_dispatcher
from collect.sampler import config_hashes, pool_candidates
from collect.store import Store

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[default]')")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DLI = SHARED / "public" / "nvidia_dli_nim_genaiperf"


@pytest.mark.skipif(not (DLI / "trt_llm_0_9_0_dli.csv").is_file(), reason="shared data (../shared/data) is absent")
def test_ray_dispatch_runs_tasks_and_records_failures(tmp_path):
    from collect.backends.replay import ReplayBackend

    frame = load_pool(f"dli:{DLI}")
    frame = frame[(frame["model"] == "llama-2-7b") & (frame["gpu"] == "h200")]
    pool_file = tmp_path / "pool.csv"
    frame.to_csv(pool_file, index=False)  # the pool Ray workers read (each worker process loads it once)
    cand = pool_candidates(ReplayBackend(frame).frame).iloc[:5].copy()
    missing = cand.iloc[:1].copy()
    missing["num_requests"] = missing["max_num_seqs"] = 999  # not in the pool: the task records an error
    candidates = pd.concat([cand, missing], ignore_index=True)
    store_url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    store = Store(store_url)
    spec = BackendSpec.make("replay", pool=str(pool_file))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        dispatcher = make_dispatcher(spec, store, workers=2, ray_address="auto")
        assert isinstance(dispatcher, RayDispatcher) and not dispatcher._owns  # joined the running instance
        settings = CampaignSettings(backend="replay", strategy="random", budget=parse_budget(6), batch=6, seed=0)
        res = Campaign(settings, candidates, dispatcher, store, progress=False).run()
        dispatcher.close()
    finally:
        ray.shutdown()
    runs = res.runs
    assert len(runs) == 6 and (runs["state"] == "done").all()
    workers = {w.split(":")[-1] for w in runs["worker"]}
    assert str(os.getpid()) not in workers  # measured in Ray worker processes, not in the driver
    failed = runs[runs["config_hash"].isin(config_hashes(missing))]
    assert failed["status"].tolist() == ["error"]
    stored = store.read()
    reason = stored.loc[stored["run_id"] == failed["run_id"].iloc[0], "detail"].iloc[0]
    assert "ReplayUnavailable" in reason
    assert len(stored) == int(runs["n_rows"].sum())  # the tasks wrote their rows to the shared store themselves
    assert set(stored["run_id"]) == set(runs["run_id"])
