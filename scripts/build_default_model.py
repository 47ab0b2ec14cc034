"""Rebuild the bundled default model `predictor/default_model.joblib`, reproducibly.

Trains the residual models on every measurement layoutcast has: the project's own (`data/`) and, where present,
the shared data sets (`../shared/data`, through the importers). Same data and seed give a byte-identical file
(no timestamps in its metadata). Run from the repository root:

    .venv/bin/python scripts/build_default_model.py [--shared ../shared/data] [--out predictor/default_model.joblib]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "predictor" / "default_model.joblib"
MAX_BYTES = 5_000_000  # small enough to commit
SKIP_DIRS = ("catalog", "gpu_probe")  # catalogs are not measurements; the probe goes through its importer


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def project_measurements(data_dir: Path) -> list[pd.DataFrame]:
    """The project's own measurements: the GPU probe (via its importer) and every schema CSV/Parquet under data/."""
    from collect.importers import run_import
    from features.schema import conform

    frames = []
    if (data_dir / "gpu_probe").is_dir():
        frames.append(run_import("gpu-probe", data_dir / "gpu_probe")[0])
    for path in sorted(data_dir.rglob("*")):
        if path.suffix.lower() not in (".csv", ".parquet") or any(p in SKIP_DIRS for p in path.relative_to(data_dir).parts):
            continue
        df = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path, low_memory=False)
        if "kind" in df.columns:  # schema frames only (other CSVs under data/ are inputs, not measurements)
            frames.append(conform(df))
            _log(f"  {path.relative_to(data_dir)}: {len(df)} rows")
    return frames


def shared_measurements(shared: Path) -> list[pd.DataFrame]:
    """Every shared data set, through the importers (each source at its folder under `shared`)."""
    from collect.importers import SHARED_PATHS, run_import

    frames = []
    for source, rel in SHARED_PATHS.items():
        if (shared / rel).exists():
            t0 = time.perf_counter()
            frame, report = run_import(source, shared / rel)
            frames.append(frame)
            _log(f"  {source}: {len(frame)} rows ({time.perf_counter() - t0:.1f} s)")
    return frames


def load_training_data(shared: Path | None = DEFAULT_SHARED, data_dir: Path = REPO / "data") -> pd.DataFrame:
    """All measurements, de-duplicated over the schema columns, in a deterministic order."""
    from features.schema import COLUMNS, conform

    _log("reading measurements")
    frames = project_measurements(data_dir)
    if shared is not None and Path(shared).is_dir():
        frames += shared_measurements(Path(shared))
    else:
        _log(f"  no shared data at {shared}: training on the project's own measurements only")
    frame = conform(pd.concat([f for f in frames if len(f)], ignore_index=True))
    cols = [c for c in COLUMNS if c in frame.columns]
    before = len(frame)
    frame = frame.drop_duplicates(subset=cols).reset_index(drop=True)
    _log(f"  {len(frame)} rows ({before - len(frame)} duplicates dropped)")
    return frame


def physics_by_kind(frame: pd.DataFrame) -> pd.DataFrame:
    """The physics frame of each kind separately; a kind the physics cannot frame is left out with a warning."""
    from features.errors import InputError
    from train.frames import physics

    parts = []
    for kind, part in frame.groupby("kind", sort=True):
        try:
            parts.append(physics(part.reset_index(drop=True)))
        except InputError as e:
            _log(f"  WARNING: {len(part)} {kind} rows left out: physics_frame cannot frame them ({e})")
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="shared data folder (default ../shared/data)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune", type=int, default=0, help="Optuna trials before the final fit (default 0)")
    args = ap.parse_args(argv)

    from train.artifact import save_artifact
    from train.pipeline import train_model

    t0 = time.perf_counter()
    frame = physics_by_kind(load_training_data(args.shared))
    _log("training")
    model, meta = train_model(frame, seed=args.seed, tune_trials=args.tune, progress=lambda m: _log(f"  {m}"))
    meta["built_by"] = "scripts/build_default_model.py"
    save_artifact(model, args.out, meta)
    size = args.out.stat().st_size
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()[:16]
    _log(f"wrote {args.out} ({size / 1e6:.2f} MB, sha256 {digest}...) in {time.perf_counter() - t0:.0f} s; "
         f"targets {', '.join(meta['targets'])}; data fingerprint {meta['data_fingerprint'][:16]}...")
    if size > MAX_BYTES:
        _log(f"ERROR: {args.out} is {size / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB limit for a committed file")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
