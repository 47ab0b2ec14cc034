"""Layout search: SLO filtering, an SLO nothing meets, Optuna against exhaustive, the Pareto front, --explain,
closed-batch refinement of every mode, and the CLI flags."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from features.catalog import resolve_workload
from features.errors import InputError
from predictor import Predictor, search
from predictor.refine import refine
from predictor.scoring import SearchContext, score_candidates
from predictor.space import candidate_space

warnings.filterwarnings("ignore", category=RuntimeWarning)


@pytest.fixture(scope="module")
def p():
    return Predictor()


@pytest.fixture(scope="module")
def chat_slo(p):
    return search("qwen2.5-32b", "h200", 8, workload="chat", concurrency=256, slo={"tpot_ms": 25.0, "ttft_ms": 3000.0},
                  exhaustive=True, predictor=p)


def test_slo_filtering(chat_slo):
    r = chat_slo.ranked
    ok = r[r["meets_slo"]]
    assert len(ok) and (~r["meets_slo"] & r["feasible"]).any()  # the SLO bites
    worst_tpot = np.fmax(ok["pred_tpot_ms"], ok.get("worst_tpot_ms", ok["pred_tpot_ms"]).fillna(0))
    assert (worst_tpot <= 25.0).all() and (ok["pred_ttft_ms"] <= 3000.0).all()
    # the best is the highest throughput that meets the SLO, and every SLO-meeting row ranks first
    assert chat_slo.best["pred_output_throughput"] == pytest.approx(ok["pred_output_throughput"].max())
    assert r["meets_slo"].iloc[: len(ok)].all()
    assert chat_slo.best["pred_tpot_ms"] <= 25.0 and chat_slo.message == ""
    # each prediction carries its interval and the limit that binds
    assert (ok["pred_output_throughput_lo"] <= ok["pred_output_throughput"]).all()
    assert ok["regime"].notna().all() and ok["bottleneck"].notna().all()


def test_slo_nothing_meets_names_the_closest(p):
    res = search("qwen2.5-32b", "h200", 8, workload="chat", concurrency=64, slo={"tpot_ms": 1.0}, exhaustive=True,
                 predictor=p)
    assert res.best is None
    assert res.message.startswith("no configuration meets the SLO; closest:")
    feas = res.ranked[res.ranked["feasible"]]
    closest = feas.loc[feas["pred_tpot_ms"].idxmin()]
    assert f"closest: {closest['layout']} " in res.message and "tpot_ms" in res.message and "(limit 1)" in res.message


def test_no_feasible_layout_says_why(p):
    res = search("llama-3.1-405b", "h200", 2, exhaustive=True, predictor=p, weight_dtype="bf16")
    assert res.best is None and res.message.startswith("no feasible layout:") and "weights need" in res.message


def test_optuna_within_two_percent_of_exhaustive_and_visits_less(p):
    kw = dict(model="llama-3.1-70b", gpu="h200", num_gpus=32, workload="reasoning", predictor=p, refine_top=0)
    ex = search(exhaustive=True, **kw)
    op = search(trials=30, seed=1, **kw)
    assert op.method.startswith("optuna-tpe") and op.evaluated < ex.evaluated
    assert op.best["pred_output_throughput"] >= 0.98 * ex.best["pred_output_throughput"]
    # only visited candidates are ranked, and the same seed gives the same search
    again = search(trials=30, seed=1, **kw)
    assert again.best["layout"] == op.best["layout"] and again.evaluated == op.evaluated


def test_pareto_search_front_is_not_dominated(p):
    res = search("llama-3.1-8b", "h200", 8, workload="chat", concurrency=512, secondary="tpot", trials=60, seed=0,
                 predictor=p, knobs={"max_num_seqs": [32, 128, 512]})
    assert res.method.startswith("optuna-nsgaii")
    front = res.pareto
    assert len(front) >= 2
    pts = res.ranked[res.ranked["feasible"]][["throughput_per_gpu", "pred_tpot_ms"]].to_numpy(dtype=float)
    for tput, tpot in front[["throughput_per_gpu", "pred_tpot_ms"]].to_numpy(dtype=float):
        dominated = (pts[:, 0] >= tput) & (pts[:, 1] <= tpot) & ((pts[:, 0] > tput) | (pts[:, 1] < tpot))
        assert not dominated.any()
    assert front["pred_tpot_ms"].is_monotonic_increasing and front["throughput_per_gpu"].is_monotonic_increasing


def test_explain_sets_winner_beside_runner_up(p):
    res = search("qwen2.5-32b", "h200", 8, workload="reasoning", exhaustive=True, predictor=p,
                 modes=("aggregated",))
    ex = res.explain()
    assert ex["winner"] == res.best["layout"] and ex["runner_up"] and ex["runner_up"] != ex["winner"]
    metrics = {row["metric"] for row in ex["table"]}
    assert {"KV capacity tokens / replica", "HBM bandwidth use"} <= metrics
    assert any("communication" in m for m in metrics) and any("weight streaming" in m for m in metrics)
    text = " ".join(ex["why"])
    assert "beats the runner-up" in text and "capacity:" in text  # DP replicas of a 32B model fill their caches
    doc = res.to_dict(explain=True)
    assert doc["explain"]["winner"] == ex["winner"]
    json.dumps(doc)


def test_closed_batch_refinement_of_every_mode(p):
    wl = resolve_workload("reasoning").with_arrival(200)
    ctx = SearchContext("llama-3.1-8b", "h200", wl, "bf16")
    space = candidate_space("llama-3.1-8b", "h200", 4)
    picks = space[space["layout"].isin(["TP2xDP2", "1xTP2 + 2xTP1", "P 1xTP1 | D TP1xDP3"])]
    assert set(picks["mode"]) == {"aggregated", "mixed", "disaggregated"}
    scored = picks.drop(columns=["reason"]).join(score_candidates(p, ctx, picks))
    for _, row in scored.iterrows():
        t = refine(p, ctx, row, seed=0)
        assert t["makespan_s"]["value"] > 0 and np.isfinite(t["makespan_s"]["value"]), row["layout"]
        assert t["output_throughput"]["value"] * t["makespan_s"]["value"] == pytest.approx(
            wl.sample(200, 0)[1].sum(), rel=0.02), row["layout"]
        assert t["preemptions"]["value"] >= 0
        if row["mode"] == "disaggregated":  # every request waits for its prefill and the KV transfer
            assert t["ttft_ms"]["value"] > row["term_prefill_ms"] + row["term_kv_transfer_ms"]
    res = search("llama-3.1-8b", "h200", 4, objective="makespan", num_requests=200, exhaustive=True, predictor=p,
                 refine_top=3)
    sim = res.ranked[res.ranked["simulated"]]
    assert len(sim) >= 3 and res.best["simulated"] and res.best["pred_makespan_s"] > 0


def test_mix_split_shares_one_batch():
    from predictor.refine import split_by_share

    for n, share in ((2000, 0.5), (2000, 0.37), (7, 0.9), (5, 0.0), (5, 1.0)):
        member = split_by_share(n, share)
        assert len(member) == n and set(member.tolist()) <= {0, 1}
        assert (member == 0).sum() == int(np.floor(n * share + 0.5))


def test_closed_batch_trapped_mix_does_not_outrank_aggregated_winner():
    """Issue 7 follow-up: 32B on 8xH200, reasoning closed batch, every mode. Capacity-trapped mixes (members of
    TP1/TP2 replicas that preempt thousands of times) must not outrank the aggregated winner once every mode's
    leaders are simulated with the same scheduler, the same learned speed correction and one shared batch."""
    p = Predictor.load()
    res = search("deepseek-r1-distill-qwen-32b", "h200", 8, workload="reasoning", objective="makespan",
                 num_requests=2000, exhaustive=True, predictor=p, refine_top=3)
    r = res.ranked[res.ranked["feasible"] & res.ranked["simulated"]]
    assert set(r["mode"]) == {"aggregated", "mixed", "disaggregated"}  # every mode's leaders were simulated
    agg = r[r["mode"] == "aggregated"]
    best_agg = agg["pred_makespan_s"].min()
    trapped = r[(r["mode"] != "aggregated") & (r["preemptions"] > 0)]
    assert len(trapped) and (trapped["pred_makespan_s"] >= best_agg).all(), trapped[["layout", "pred_makespan_s"]]
    assert res.best["mode"] == "aggregated" or res.best.get("preemptions", 0) == 0


def test_multinode_search_picks_layouts_within_nodes(p):
    res = search("llama-3.1-70b", "h200", 32, trials=40, predictor=p, modes=("aggregated", "disaggregated"))
    assert res.best is not None and res.best["tp"] <= 8
    inf = res.ranked[~res.ranked["feasible"]]
    assert inf["reason"].str.contains("spans nodes").any()  # TP16/TP32 listed with their reason


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (same code path as `layoutcast`, without a second interpreter's imports)."""
    from predictor.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_explain_pareto_modes_json(tmp_path, capsys):
    png = tmp_path / "front.png"
    code, out, err = run_cli(capsys, "search", "--model", "llama-3.1-8b", "--gpu", "h100", "--gpus", "8", "--workload",
                             "chat", "--concurrency", "256", "--pareto", "ttft", "--trials", "40", "--explain", "--json",
                             "--plot", str(png))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["secondary"] == "ttft" and doc["pareto"] and doc["explain"]["why"]
    assert {row["mode"] for row in doc["ranked"]} <= {"aggregated", "mixed", "disaggregated"}
    assert png.exists() and png.stat().st_size > 10_000
    code, out, err = run_cli(capsys, "search", "--model", "llama-3.1-8b", "--gpu", "h100", "--gpus", "8", "--modes",
                             "aggregated", "--explain")
    assert code == 0, err
    assert "why " in out and "wins" in out and "disaggregated" not in out


@pytest.mark.parametrize("args,needle", [
    (("--modes", "pooled"), "unknown search mode"),
    (("--study-name", "x"), "--study-name needs --storage"),
    (("--slo-tpot-ms", "-1"), "must be positive"),
    (("--storage", "nosuchdb://x"), "cannot open Optuna storage"),
    (("--pareto", "tpot", "--objective", "bogus"), "invalid choice"),
])
def test_cli_bad_search_input_is_one_line(args, needle, capsys):
    try:
        code, out, err = run_cli(capsys, "search", "--model", "llama-3.1-8b", "--gpu", "h100", "--gpus", "8", *args)
    except SystemExit as e:  # argparse: usage errors
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


def test_closed_batch_contenders_are_averaged_over_common_draws(p):
    """Simulated candidates within the tie margin of the leader are re-simulated on further sampled batches (the
    same for each) and keep the mean; with a margin of zero only the leader's first batch counts."""
    kw = dict(workload="reasoning", objective="makespan", num_requests=120, exhaustive=True, predictor=p,
              modes=("aggregated",), refine_top=3)
    one = [search("llama-3.1-8b", "h100", 2, seed=s, draws=1, **kw).ranked for s in (4, 5, 6)]
    both = search("llama-3.1-8b", "h100", 2, seed=4, draws=3, tie_margin=0.99, **kw).ranked
    sim = both[both["simulated"]]
    assert len(sim) >= 2 and (sim["sim_draws"] == 3).all()
    for _, row in sim.iterrows():
        singles = [r.loc[r["layout"] == row["layout"], "pred_makespan_s"].iloc[0] for r in one]
        assert row["pred_makespan_s"] == pytest.approx(np.mean(singles), rel=1e-9)
    lone = search("llama-3.1-8b", "h100", 2, seed=4, draws=3, tie_margin=0.0, **kw).ranked
    assert (lone.loc[lone["simulated"], "sim_draws"] == 1).all()
    with pytest.raises(InputError):
        search("llama-3.1-8b", "h100", 2, draws=0, **kw)
