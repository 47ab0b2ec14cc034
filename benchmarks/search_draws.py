"""How stable is the closed-batch winner of a search when its contenders are averaged over more sampled batches?

A closed batch's makespan hangs on where its few longest requests land, so the winner on one sampled batch of the
`reasoning` workload can differ from the winner on another when candidates are a few percent apart. For the
study's dense models on 8xH200 (2,000 requests, objective makespan, bundled predictor), each setting of `draws`
runs the search with several seeds; the table gives how many distinct winners the seeds produced, how often the
most common winner won, how often the winner matches a reference search (`--reference-draws` batches, seed 1000),
and the search time. Writes benchmarks/results/search_draws.json.

    PYTHONPATH=. python -m benchmarks.search_draws [--seeds 5] [--draws 1,3] [--reference-draws 10]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from rich.console import Console
from rich.table import Table

from benchmarks._common import write_result
from predictor import Predictor, search

MODELS = ("deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-14b", "deepseek-r1-distill-qwen-32b")


def winner(p: Predictor, model: str, seed: int, draws: int) -> tuple[dict, float]:
    """(the best candidate's layout, mode, makespan and runner-up gap; seconds taken) of one search."""
    t0 = time.perf_counter()
    res = search(model, "h200", 8, workload="reasoning", objective="makespan", num_requests=2000, predictor=p,
                 seed=seed, draws=draws)
    seconds = time.perf_counter() - t0
    r = res.ranked[res.ranked["feasible"] & res.ranked["simulated"]]
    best, second = r.iloc[0], r.iloc[1]
    return {"layout": str(best["layout"]), "mode": str(best["mode"]), "makespan_s": float(best["pred_makespan_s"]),
            "preemptions": float(best["preemptions"]), "sim_draws": int(best["sim_draws"]),
            "gap_to_runner_up": float(second["pred_makespan_s"] / best["pred_makespan_s"] - 1.0)}, seconds


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--draws", default="1,3")
    ap.add_argument("--reference-draws", type=int, default=10)
    args = ap.parse_args(argv)
    p = Predictor.load()
    console = Console(stderr=True)
    settings = [int(d) for d in args.draws.split(",")]
    rows = []
    for model in MODELS:
        ref, ref_s = winner(p, model, 1000, args.reference_draws)
        console.print(f"{model}: reference ({args.reference_draws} batches) {ref['layout']} "
                      f"{ref['makespan_s']:,.0f} s, runner-up +{ref['gap_to_runner_up']:.1%} ({ref_s:.0f} s)")
        for draws in settings:
            runs = []
            for seed in range(args.seeds):
                w, s = winner(p, model, seed, draws)
                runs.append({**w, "seed": seed, "seconds": s})
                console.print(f"  draws {draws} seed {seed}: {w['layout']} ({w['mode']}) {w['makespan_s']:,.0f} s "
                              f"+{w['gap_to_runner_up']:.1%} [{s:.0f} s]")
            counts = Counter(r["layout"] for r in runs)
            rows.append({"model": model, "draws": draws, "seeds": args.seeds, "distinct_winners": len(counts),
                         "modal_winner": counts.most_common(1)[0][0],
                         "modal_share": counts.most_common(1)[0][1] / len(runs),
                         "matches_reference": sum(r["layout"] == ref["layout"] for r in runs) / len(runs),
                         "mean_seconds": sum(r["seconds"] for r in runs) / len(runs),
                         "reference": ref, "runs": runs})
    table = Table(title="closed-batch winner vs sampled batches (8xH200, reasoning, 2,000 requests, makespan)")
    for c in ("model", "draws", "distinct winners", "modal winner", "modal share", "matches reference", "s/search"):
        table.add_column(c, justify="left" if c in ("model", "modal winner") else "right")
    for r in rows:
        table.add_row(r["model"], str(r["draws"]), str(r["distinct_winners"]), r["modal_winner"],
                      f"{r['modal_share']:.0%}", f"{r['matches_reference']:.0%}", f"{r['mean_seconds']:.1f}")
    Console().print(table)
    result = {"settings": vars(args), "rows": rows}
    path = write_result("search_draws", result)
    console.print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
