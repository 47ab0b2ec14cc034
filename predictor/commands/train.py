"""`layoutcast train`: fit the learned residual models on measurements and write a joblib artifact."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from features.errors import InputError
from features.schema import COLUMNS, conform


def read_data_file(path: str) -> pd.DataFrame:
    """A measurement frame from a schema CSV or Parquet file (one clear error when it is not one)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {path!r} does not exist")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        elif p.suffix.lower() in (".csv", ".gz"):
            df = pd.read_csv(p, low_memory=False)
        else:
            raise InputError(f"data file {path!r}: expected .csv or .parquet")
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser failure is a malformed file
        raise InputError(f"data file {path!r} is malformed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if "kind" not in df.columns:
        raise InputError(f"data file {path!r} is not in the measurement schema (no 'kind' column)")
    try:
        return conform(df)
    except ValueError as e:
        raise InputError(f"data file {path!r}: {e}") from None


def load_measurements(store: str | None, data: list[str] | None) -> pd.DataFrame:
    """Every measurement from `--store` (if given) and the `--data` files, as one schema frame."""
    frames = []
    if store:
        from collect.store import Store

        with Store(store) as s:
            frames.append(s.read())
    for path in data or []:
        frames.append(read_data_file(path))
    if not frames:
        raise InputError("no measurements given: pass --store URL and/or --data FILE")
    frames = [f for f in frames if len(f)]
    if not frames:
        raise InputError("the given store and files hold no measurements")
    frame = conform(pd.concat(frames, ignore_index=True))
    keys = [c for c in COLUMNS if c in frame.columns]
    return frame[~frame[keys].astype("string").fillna("").duplicated()].reset_index(drop=True)  # same row twice: once


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="fit the learned residual models on measurements; write an artifact",
                              description="Fit one physics-residual model per target on measurements from a store "
                                          "and/or schema files, calibrate 80%% intervals, write a joblib artifact.")
    p.add_argument("--store", help="measurement store URL or SQLite path")
    p.add_argument("--data", nargs="+", action="extend", metavar="FILE", help="schema CSV/Parquet files")
    p.add_argument("--out", default="model.joblib", help="artifact path (default model.joblib)")
    p.add_argument("--tune", type=int, default=0, metavar="TRIALS", help="Optuna trials for hyperparameters (0: none)")
    p.add_argument("--tune-split", default="model", choices=("random", "model", "gpu", "layout"),
                   help="grouped split the tuning scores on (default model)")
    p.add_argument("--family", default="residual-xgb",
                   help="model family: residual-xgb (default), physics, descriptor-xgb, residual-rf, residual-knn, residual-mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the artifact's metadata as one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from train.artifact import save_artifact
    from train.pipeline import train_model

    if args.tune < 0:
        raise InputError("--tune must be a non-negative number of trials")
    console = Console(stderr=True)
    frame = load_measurements(args.store, args.data)
    with console.status("training ...") as status:
        model, meta = train_model(frame, family=args.family, seed=args.seed, tune_trials=args.tune,
                                  tune_split=args.tune_split, progress=lambda msg: status.update(msg))
    meta = save_artifact(model, args.out, meta)
    if args.json:
        sys.stdout.write(json.dumps({"artifact": str(args.out), **meta}, default=str) + "\n")
        return 0
    console = Console()
    console.print(f"wrote {args.out}: {meta['family']} on {meta['n_rows']} rows, targets {', '.join(meta['targets'])}")
    for t, r in meta["metrics"].items():
        parts = [f"{k.replace('oof_', '').replace('_median_ape', '')} {100 * v:.1f}%"
                 for k, v in r.items() if k.endswith("median_ape")]
        console.print(f"  {t}: n={r['n']}, held-out median error " + ", ".join(parts))
    return 0
