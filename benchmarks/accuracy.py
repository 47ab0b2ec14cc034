"""Accuracy of every model family on every target x grouped split, on the shared data sets.

For each kind of measurement (serving, step, op), each split (random folds; leave models, GPUs or layouts out)
and each family (the residual XGBoost model and the baselines: physics only, descriptor-only XGBoost, residual
random forest, k-nearest neighbours, torch MLP), held-out predictions come from grouped cross-validation and
are scored per target: median and 90th-percentile absolute percentage error, 80%-interval coverage, Spearman
rank correlation across the layouts of a scenario, and the regret of the layout a search would pick.
Prints the table, checks issue 5's targets, and writes benchmarks/results/accuracy.json.

Run: `.venv/bin/python -m benchmarks.accuracy [--kinds serving,step] [--families ...] [--max-rows N]`
(needs ../shared/data; the full run takes about an hour on two cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from benchmarks._common import REPO, SHARED_DATA, write_result
from train.baselines import FAMILIES
from train.evaluate import cross_validate, group_labels, report, usable_rows
from train.metrics import group_errors
from train.residual import CALIBRATION_GROUPINGS
from train.splits import SPLITS
from train.targets import PHYSICS_TARGETS

FAMILY_ORDER = ("residual-xgb", "physics", "descriptor-xgb", "residual-rf", "residual-knn", "residual-mlp")
# baselines are kept cheap (two cores): fewer trees/steps, and intervals calibrated on random folds and on the
# split's own grouping only; the residual model is run exactly as `layoutcast train` ships it
BASELINE_PARAMS = {"residual-rf": {"n_estimators": 60}, "residual-mlp": {"max_steps": 800}}
MIN_CELL_ROWS = 100  # a target with fewer held-out rows than this is listed, not judged (e.g. 37 rows of one CPU run)
TARGETS = {  # issue 5's "done when"
    "step_gpu_layer_ms_median_ape": 0.08,
    "serving_model_output_throughput_median_ape": 0.20,
    "coverage_low": 0.70,
    "coverage_high": 0.90,
}


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_default_model", REPO / "scripts" / "build_default_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def balanced_sample(frame: pd.DataFrame, max_rows: int, seed: int, by: str = "source") -> pd.DataFrame:
    """At most `max_rows` rows, shared evenly between the values of `by` (small sources are kept whole)."""
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    sizes = frame.groupby(by, sort=True).size().sort_values()
    quota, left, parts = {}, max_rows, len(sizes)
    for key, n in sizes.items():
        quota[key] = min(int(n), left // parts)
        left -= quota[key]
        parts -= 1
    picked = [g.sample(quota[key], random_state=seed) if len(g) > quota[key] else g
              for key, g in frame.groupby(by, sort=True)]
    return pd.concat(picked).sort_index().reset_index(drop=True)


def make(family: str, split: str, seed: int):
    """The model of `family` for one benchmark cell."""
    if family == "residual-xgb":
        return FAMILIES[family](seed=seed, calibration=CALIBRATION_GROUPINGS)
    calibration = ("random",) if split == "random" else ("random", split)
    return FAMILIES[family](seed=seed, calibration=calibration, inner_folds=2, **BASELINE_PARAMS.get(family, {}))


def by_group(preds: pd.DataFrame, split: str, targets) -> dict:
    """Median APE per held-out group (e.g. per GPU under leave-GPU-out), per target."""
    groups = group_labels(preds, split)
    out = {}
    for t in targets:
        if f"pred_{t}" in preds.columns and t in preds.columns:
            e = group_errors(preds, t, groups)
            if len(e):
                out[t] = {str(g): {"n": int(len(v)), "median_ape": float(v.median())}
                          for g, v in e.groupby("group")["ape"]}
    return out


def checks(results: list[dict]) -> dict:
    """Issue 5's targets against the results: pass/fail with the numbers and every exception."""
    def cell(kind, split, family, target):
        for r in results:
            if (r["kind"], r["split"], r["family"], r["target"]) == (kind, split, family, target):
                return r
        return None

    out = {}
    r = cell("step", "gpu", "residual-xgb", "layer_ms")
    out["step_leave_gpu_out_layer_ms"] = {"median_ape": r and r["median_ape"],
                                          "target": TARGETS["step_gpu_layer_ms_median_ape"],
                                          "pass": bool(r and r["median_ape"] <= TARGETS["step_gpu_layer_ms_median_ape"])}
    r = cell("serving", "model", "residual-xgb", "output_throughput")
    out["serving_leave_model_out_output_throughput"] = {
        "median_ape": r and r["median_ape"], "target": TARGETS["serving_model_output_throughput_median_ape"],
        "pass": bool(r and r["median_ape"] <= TARGETS["serving_model_output_throughput_median_ape"])}
    not_better, coverage_off, too_few = [], [], set()
    for r in results:
        if r["family"] != "residual-xgb":
            continue
        if r["n"] < MIN_CELL_ROWS:
            too_few.add(f"{r['kind']}/{r['target']} ({r['n']} rows)")
            continue
        for base in ("physics", "descriptor-xgb"):
            b = cell(r["kind"], r["split"], base, r["target"])
            if b and b["median_ape"] < r["median_ape"]:
                not_better.append({"kind": r["kind"], "split": r["split"], "target": r["target"], "baseline": base,
                                   "residual_median_ape": r["median_ape"], "baseline_median_ape": b["median_ape"]})
        cov = r.get("coverage")
        if cov is not None and not (TARGETS["coverage_low"] <= cov <= TARGETS["coverage_high"]):
            coverage_off.append({"kind": r["kind"], "split": r["split"], "target": r["target"], "coverage": cov})
    out["residual_beats_physics_and_descriptor"] = {"pass": not not_better, "exceptions": not_better}
    out["coverage_70_90"] = {"pass": not coverage_off, "exceptions": coverage_off}
    out["not_judged_too_few_rows"] = sorted(too_few)
    return out


def print_table(console: Console, results: list[dict]) -> None:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    frame = pd.DataFrame(results)
    for (kind, split), cells in frame.groupby(["kind", "split"], sort=False):
        t = Table(title=f"{kind} rows, split {split} (held-out; APE and coverage in %)")
        for c in ("target", "family", "n", "median APE", "p90 APE", "cover", "Spearman", "regret"):
            t.add_column(c, justify="left" if c in ("target", "family") else "right")
        for _, r in cells.iterrows():
            t.add_row(r["target"], r["family"], str(r["n"]), pct(r["median_ape"]), pct(r["p90_ape"]),
                      pct(r.get("coverage")), "-" if pd.isna(r.get("spearman_mean")) else f"{r['spearman_mean']:.2f}",
                      pct(None if pd.isna(r.get("regret_mean")) else r["regret_mean"]))
        console.print(t)


def markdown_summary(payload: dict) -> str:
    """A README-ready summary: per kind, split and target, the residual model against the baselines."""
    results = pd.DataFrame(payload["results"])
    lines = ["| kind | split | target | n | residual-xgb median / p90 APE | coverage | physics | descriptor-xgb | "
             "best other baseline | Spearman | regret |", "|" + "---|" * 11]

    def pct(v):
        return "-" if v is None or pd.isna(v) else f"{100 * v:.1f}%"

    for (kind, split, target), cell in results.groupby(["kind", "split", "target"], sort=False):
        fam = cell.set_index("family")
        if "residual-xgb" not in fam.index:
            continue
        r = fam.loc["residual-xgb"]
        others = fam.drop(index=[f for f in ("residual-xgb", "physics", "descriptor-xgb") if f in fam.index])
        best = others["median_ape"].idxmin() if len(others) else None
        best_txt = f"{best} {pct(others.loc[best, 'median_ape'])}" if best else "-"
        rho = "-" if pd.isna(r.get("spearman_mean")) else f"{r['spearman_mean']:.2f}"
        lines.append(
            f"| {kind} | {split} | {target} | {int(r['n'])} | {pct(r['median_ape'])} / {pct(r['p90_ape'])} | "
            f"{pct(r.get('coverage'))} | {pct(fam['median_ape'].get('physics'))} | "
            f"{pct(fam['median_ape'].get('descriptor-xgb'))} | {best_txt} | {rho} | {pct(r.get('regret_mean'))} |")
    checks_md = []
    for name, c in payload["checks"].items():
        if not isinstance(c, dict):
            if c:
                checks_md.append(f"- not judged (fewer than {MIN_CELL_ROWS} held-out rows): {', '.join(c)}")
            continue
        checks_md.append(f"- {'PASS' if c['pass'] else 'FAIL'} `{name}`" + (
            f": median {pct(c['median_ape'])} (target {pct(c['target'])})" if "median_ape" in c
            else f": {len(c['exceptions'])} exceptions"))
        for e in c.get("exceptions", []):
            checks_md.append("  - " + ", ".join(f"{k} {pct(v) if isinstance(v, float) else v}" for k, v in e.items()))
    skipped = [f"- skipped: {s}" for s in payload.get("skipped", [])]
    return "\n".join(["Median / 90th-percentile absolute percentage error on held-out rows (APE), 80%-interval "
                      "coverage, Spearman across the layouts of a scenario and regret of the picked layout.", "",
                      *lines, "", *checks_md, *skipped]) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="accuracy of every family x target x split")
    ap.add_argument("--kinds", default="serving,step,op")
    ap.add_argument("--splits", default=",".join(SPLITS))
    ap.add_argument("--families", default=",".join(FAMILY_ORDER))
    ap.add_argument("--max-rows", type=int, default=12000, help="rows per kind (balanced over sources)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="accuracy", help="result file name under benchmarks/results")
    ap.add_argument("--summarize", action="store_true",
                    help="only rewrite results/NAME.md from an existing results/NAME.json")
    args = ap.parse_args(argv)
    if args.summarize:
        import json

        from benchmarks._common import RESULTS

        payload = json.loads((RESULTS / f"{args.name}.json").read_text())
        payload["checks"] = checks(payload["results"])
        (RESULTS / f"{args.name}.md").write_text(markdown_summary(payload))
        print(f"wrote {RESULTS / f'{args.name}.md'}")
        return payload
    if not SHARED_DATA.is_dir():
        sys.exit(f"shared data not found at {SHARED_DATA}")
    console = Console(width=130)
    err = Console(stderr=True)
    builder = _load_builder()
    data = builder.load_training_data(SHARED_DATA)
    framed = builder.physics_by_kind(data)
    framed = framed[usable_rows(framed)]
    results, skipped, timings = [], [], {}
    for kind in args.kinds.split(","):
        rows = framed[framed["kind"] == kind]
        if not len(rows):
            skipped.append({"kind": kind, "why": "no usable rows (or physics_frame could not frame them)"})
            continue
        rows = balanced_sample(rows, args.max_rows, args.seed)
        for split in args.splits.split(","):
            for family in args.families.split(","):
                t0 = time.perf_counter()
                err.print(f"{kind} / {split} / {family} on {len(rows)} rows ...")
                preds = cross_validate(make(family, split, args.seed), rows, split, args.folds, args.seed)
                if not len(preds):
                    skipped.append({"kind": kind, "split": split, "why": "a single group: nothing to hold out"})
                    break
                rep = report(preds, PHYSICS_TARGETS[kind])
                groups = by_group(preds, split, rep) if family in ("residual-xgb", "physics") else {}
                for target, r in rep.items():
                    results.append({"kind": kind, "split": split, "family": family, "target": target,
                                    **{k: v for k, v in r.items()}, "by_group": groups.get(target)})
                timings[f"{kind}/{split}/{family}"] = time.perf_counter() - t0
    print_table(console, [{k: v for k, v in r.items() if k != "by_group"} for r in results])
    verdict = checks(results)
    for name, c in verdict.items():
        if not isinstance(c, dict):
            console.print(f"not judged (fewer than {MIN_CELL_ROWS} held-out rows): {', '.join(c) or 'none'}")
            continue
        extra = f" ({len(c['exceptions'])} exceptions)" if "exceptions" in c else f" (median {c['median_ape']})"
        console.print(f"{'PASS' if c['pass'] else 'FAIL'} {name}{extra}")
    payload = {"settings": vars(args), "rows_per_kind": framed["kind"].value_counts().to_dict(),
               "sources": sorted(framed["source"].dropna().astype(str).unique().tolist()),
               "baseline_params": BASELINE_PARAMS, "checks": verdict, "skipped": skipped,
               "seconds": timings, "results": results}
    path = write_result(args.name, payload)
    path.with_suffix(".md").write_text(markdown_summary(payload))
    console.print(f"wrote {path} and {path.with_suffix('.md').name}")
    return payload


if __name__ == "__main__":
    main()
