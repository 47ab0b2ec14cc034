"""Importer for a CSV (or parquet) file already in the measurement schema, e.g. a campaign's `measured.csv`.

Columns are validated: `kind` is required, numeric columns must hold numbers, `kind`/`status` must be known values,
model and GPU names must resolve to catalog names (stored as the catalog name). Columns outside the schema
(predictions, features) are not stored and are listed in the report.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from collect.importers._common import (ImportReport, NameResolver, finish, numeric, read_csv_checked,
                                       read_parquet_checked, require_path)
from features.errors import InputError
from features.schema import COLUMNS, KINDS, STATUSES, TARGET_COLUMNS

SOURCE = "csv"


def _check_values(df: pd.DataFrame, col: str, allowed, f: Path) -> None:
    if col not in df.columns:
        return
    bad = df[col].notna() & ~df[col].astype(str).str.strip().isin(allowed)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise InputError(f"{str(f)!r} line {i + 2}: {col} {df[col].iloc[i]!r} is not one of {list(allowed)}")


def import_csv(path: str | Path) -> tuple[pd.DataFrame, ImportReport]:
    """Rows of a schema CSV/parquet file, validated and with names resolved to the catalog."""
    f = require_path(path, SOURCE, is_dir=False)
    is_parquet = f.suffix.lower() in (".parquet", ".pq")
    raw = read_parquet_checked(f, ["kind"]) if is_parquet else read_csv_checked(f, ["kind"])
    report = ImportReport(SOURCE, str(f), rows_read=len(raw), files=1)
    extra = [c for c in raw.columns if c not in COLUMNS]
    if extra:
        report.notes.append(f"columns outside the schema not stored: {', '.join(map(str, extra))}")
    raw = raw[[c for c in raw.columns if c in COLUMNS]].copy()
    if raw["kind"].isna().any():
        raise InputError(f"{str(f)!r} line {int(raw['kind'].isna().to_numpy().nonzero()[0][0]) + 2}: kind is empty")
    _check_values(raw, "kind", KINDS, f)
    _check_values(raw, "status", STATUSES, f)
    numeric(raw, [c for c, t in COLUMNS.items() if t in ("float64", "Int64") and c in raw.columns], f)
    if "derived" in raw.columns:
        for i, v in raw["derived"].items():
            names_ = [x.strip() for x in str(v).split(",") if x.strip()] if pd.notna(v) else []
            unknown = [x for x in names_ if x not in TARGET_COLUMNS]
            if unknown:
                raise InputError(f"{str(f)!r} line {i + 2}: derived names unknown targets {unknown}")
    names = NameResolver()
    if "model" in raw.columns:
        raw["model"] = raw["model"].where(raw["model"].isna(), names.map_models(raw["model"]))
    if "gpu" in raw.columns:
        raw["gpu"] = raw["gpu"].where(raw["gpu"].isna(), names.map_gpus(raw["gpu"]))
    names.raise_if_unknown(f"{SOURCE} {f.name}")
    if "source" not in raw.columns:
        raw["source"] = pd.NA
    raw["source"] = raw["source"].fillna(f"csv:{f.stem}")
    try:
        return finish(raw, report), report
    except ValueError as e:
        raise InputError(f"{str(f)!r} does not fit the measurement schema: {e}") from None
