"""`layoutcast evaluate`: accuracy of a trained model on measurements, as-is or under grouped cross-validation."""

from __future__ import annotations

import argparse
import json
import sys

from features.errors import InputError
from predictor.commands.train import load_measurements

SPLIT_CHOICES = ("random", "model", "gpu", "layout")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="error, interval coverage, layout ranking and regret of a model on measurements",
        description="Without --split the artifact predicts the given measurements as they are. With --split, models "
                    "with the artifact's family and hyperparameters are refitted on grouped folds of the data "
                    "(leave models, GPUs or layouts out, or random folds) and scored on the held-out rows.")
    p.add_argument("--model", required=True, help="artifact from `layoutcast train`")
    p.add_argument("--data", nargs="+", action="extend", metavar="FILE", help="schema CSV/Parquet files")
    p.add_argument("--store", help="measurement store URL or SQLite path (read in addition to --data)")
    p.add_argument("--split", choices=SPLIT_CHOICES, help="grouped cross-validation split (default: no refitting)")
    p.add_argument("--folds", type=int, default=5, help="folds for --split (fewer groups: leave one group out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document and nothing else")
    p.add_argument("--plot", metavar="FILE.png", help="write parity and error-by-group plots")
    p.set_defaults(func=run)


def evaluate_frame(model, frame, split: str | None, folds: int = 5, seed: int = 0, progress=None):
    """(held-out predictions, report dict): the artifact as-is, or refitted on grouped folds of `frame`."""
    from train.evaluate import cross_validate, report, usable_rows

    if split:
        preds = cross_validate(model, frame, split, n_folds=folds, seed=seed, progress=progress)
        if not len(preds):
            raise InputError(f"split {split!r} needs at least two groups in the data; it has one")
    else:
        framed = model.prepare(frame)
        framed = framed[usable_rows(framed)]
        if not len(framed):
            raise InputError("no usable measurements to evaluate (status ok, measured target, physics answer)")
        preds = model.predict(framed)
    return preds, report(preds)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from train.artifact import load_artifact
    from train.evaluate import group_labels

    if args.folds < 2:
        raise InputError("--folds must be at least 2")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise InputError(f"--plot {args.plot!r}: expected a .png file name")
    model = load_artifact(args.model)
    frame = load_measurements(args.store, args.data)
    err = Console(stderr=True)
    with err.status("evaluating ...") as status:
        preds, rep = evaluate_frame(model, frame, args.split, args.folds, args.seed,
                                    progress=lambda k, n: status.update(f"fold {k}/{n}"))
    doc = {"model": str(args.model), "family": model.family, "split": args.split or "none",
           "n_rows": int(len(preds)), "targets": rep}
    if args.plot:
        from train.plots import evaluation_figure

        evaluation_figure(preds, list(rep), group_labels(preds, args.split or "none"), args.plot,
                          title=f"{model.family}, split {args.split or 'none'}")
        doc["plot"] = args.plot
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    table = Table(title=f"{model.family} on {len(preds)} rows, split {args.split or 'none (as trained)'}")
    for col in ("target", "n", "median APE", "p90 APE", "80% cover", "Spearman", "regret", "best pick"):
        table.add_column(col, justify="left" if col == "target" else "right", no_wrap=col == "target")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    for t, r in rep.items():
        table.add_row(t, str(r["n"]), pct(r["median_ape"]), pct(r["p90_ape"]), pct(r.get("coverage")),
                      "-" if r.get("spearman_mean") is None else f"{r['spearman_mean']:.2f}",
                      pct(r.get("regret_mean")), pct(r.get("best_pick_rate")))
    Console().print(table)
    if args.plot:
        Console().print(f"wrote {args.plot}")
    return 0
