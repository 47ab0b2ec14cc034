"""Distributed search: several workers share Optuna studies through RDB storage — a real PostgreSQL server
(LAYOUTCAST_TEST_PG_URL, started by scripts/test.sh via scripts/pg_server.sh) and SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import optuna
import pytest

from features.errors import InputError
from predictor import Predictor, search

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("LAYOUTCAST_TEST_PG_URL", "")
MODES = ("aggregated", "mixed", "disaggregated")
QUESTION = ["--model", "llama-3.1-8b", "--gpu", "h200", "--gpus", "8", "--workload", "chat", "--concurrency", "128",
            "--slo-tpot-ms", "40", "--refine", "0"]
warnings.filterwarnings("ignore", category=RuntimeWarning)


@pytest.fixture
def fresh_pg_url():
    """A new, empty database on the test PostgreSQL server (dropped afterwards), so Optuna's tables do not exist yet."""
    import sqlalchemy as sa

    db = f"lc_search_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + db
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    admin.dispose()


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    out = []
    for m in MODES:
        study = optuna.load_study(study_name=f"{name}/{m}", storage=url)
        out += study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return out


def _check_shared(url: str, name: str, total: int, workers: int) -> None:
    trials = _trials(url, name)
    assert len(trials) == total
    assert len({t.user_attrs["worker"] for t in trials}) == workers
    # a worker that joins with no budget of its own reports over everything the others scored
    res = search("llama-3.1-8b", "h200", 8, workload="chat", concurrency=128, slo={"tpot_ms": 40.0}, trials=0,
                 storage=url, study_name=name, refine_top=0, predictor=Predictor.load())
    layouts = set(res.ranked["layout"])
    from predictor.space import candidate_space

    space = candidate_space("llama-3.1-8b", "h200", 8)
    scored = {space.at[t.user_attrs["candidate"], "layout"] for t in trials}
    assert scored <= layouts
    # workers avoid each other's layouts: the studies hold (nearly) as many distinct layouts as trials
    assert len(scored) >= 0.8 * len(trials)
    assert res.best is not None and res.best["meets_slo"]
    best_value = min(t.value for t in trials if all(v <= 0 for v in t.constraints.values()))
    assert res.best["pred_output_throughput"] == pytest.approx(-best_value, rel=1e-9)
    # a different question on the same study name is refused, in one line
    with pytest.raises(InputError, match="created for a different search"):
        search("llama-3.1-8b", "h200", 8, workload="chat", concurrency=128, slo={"tpot_ms": 20.0}, trials=1,
               storage=url, study_name=name, refine_top=0, predictor=Predictor.load())


@pytest.mark.skipif(not PG_URL, reason="no PostgreSQL: set LAYOUTCAST_TEST_PG_URL (scripts/test.sh starts one with "
                                       "scripts/pg_server.sh)")
def test_two_workers_share_a_postgresql_study(fresh_pg_url):
    """Two workers started together on an empty database: both survive the race to create Optuna's tables."""
    name = f"lc-test-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "predictor", "search", *QUESTION, "--trials", "9", "--storage", fresh_pg_url,
           "--study-name", name, "--json"]
    procs = [subprocess.Popen(cmd + ["--seed", str(k)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        doc = json.loads(out)
        assert doc["study_name"] == name and "optuna-tpe" in doc["method"] and doc["best"]
    _check_shared(fresh_pg_url, name, total=18, workers=2)


def test_workers_share_an_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    name = "lc-sqlite"
    for seed in range(2):  # two workers, one after the other (SQLite serialises writers anyway)
        res = search("llama-3.1-8b", "h200", 8, workload="chat", concurrency=128, slo={"tpot_ms": 40.0}, trials=6,
                     seed=seed, storage=url, study_name=name, refine_top=0, predictor=Predictor.load())
        assert res.study_name == name and f"{6 * (seed + 1)} trials" in res.method
    _check_shared(url, name, total=12, workers=1)  # one process: one worker id


def test_bad_storage_is_one_clear_error():
    with pytest.raises(InputError, match="cannot open Optuna storage"):
        search("llama-3.1-8b", "h200", 8, trials=2, storage="nosuchdb://nowhere", predictor=Predictor())
