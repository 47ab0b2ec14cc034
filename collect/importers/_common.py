"""Shared parts of the importers: the import report, checked file readers, catalog name resolution, detail JSON."""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.catalog import resolve_gpu, resolve_model
from features.errors import InputError
from features.schema import conform


@dataclass
class ImportReport:
    """What an importer did with its input: every record read is kept, a duplicate, or left out with a reason."""

    source: str
    path: str
    rows_read: int = 0
    rows_kept: int = 0
    duplicates: int = 0
    left_out: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: int = 0

    def leave_out(self, reason: str, n: int) -> None:
        """Count `n` records left out for `reason` (nothing is dropped without a line in the report)."""
        if n:
            self.left_out[reason] = self.left_out.get(reason, 0) + int(n)

    @property
    def rows_left_out(self) -> int:
        return sum(self.left_out.values())

    def check_balance(self) -> None:
        """Every record read is accounted for: kept + duplicates + left out."""
        if self.rows_read != self.rows_kept + self.duplicates + self.rows_left_out:
            raise AssertionError(f"{self.source}: report does not balance: read {self.rows_read} != kept "
                                 f"{self.rows_kept} + duplicates {self.duplicates} + left out {self.rows_left_out}")

    def as_dict(self) -> dict:
        return {"source": self.source, "path": self.path, "files": self.files, "rows_read": self.rows_read,
                "rows_kept": self.rows_kept, "duplicates": self.duplicates, "left_out": dict(self.left_out),
                "notes": list(self.notes)}


def require_path(path: str | Path, what: str, is_dir: bool | None = None) -> Path:
    """`path` as a Path that exists (a folder when `is_dir`, a file when not), else InputError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what}: no such file or folder: {str(p)!r}")
    if is_dir is True and not p.is_dir():
        raise InputError(f"{what}: {str(p)!r} is not a folder")
    if is_dir is False and not p.is_file():
        raise InputError(f"{what}: {str(p)!r} is not a file")
    return p


def _check_record_lengths(path: Path, optional_trailing: int = 0, sep: str = ",") -> None:
    """Every CSV record has as many fields as the header, or omits at most `optional_trailing` trailing ones
    (a truncated or malformed file fails here)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter=sep)
            header = next(reader, None)
            if not header:
                raise InputError(f"{str(path)!r} is empty")
            n = len(header)
            for rec in reader:
                if rec and not (n - optional_trailing <= len(rec) <= n) and any(x.strip() for x in rec):
                    raise InputError(f"{str(path)!r} line {reader.line_num}: {len(rec)} fields where the header has "
                                     f"{n} (file truncated or malformed)")
    except UnicodeDecodeError as e:
        raise InputError(f"{str(path)!r} is not a UTF-8 text file: {e}") from None
    except csv.Error as e:
        raise InputError(f"{str(path)!r} is not a readable CSV file: {e}") from None


def read_csv_checked(path: Path, required: list[str] | tuple[str, ...] = (),
                     optional_trailing: int = 0) -> pd.DataFrame:
    """A CSV file as a frame, or one InputError: missing, empty, malformed, truncated, or lacking a column.

    `optional_trailing`: how many trailing fields a record may leave out (files whose last columns are optional).
    """
    _check_record_lengths(path, optional_trailing)
    try:
        df = pd.read_csv(path, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{str(path)!r} is not a readable CSV file: {str(e).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    check_columns(df, required, path)
    return df


def read_parquet_checked(path: Path, required: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """A parquet file as a frame, or one InputError when it cannot be read or lacks a column."""
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for corrupt files (ArrowInvalid, OSError, ...)
        raise InputError(f"{str(path)!r} is not a readable parquet file: {str(e).splitlines()[0]}") from None
    check_columns(df, required, path)
    return df


def check_columns(df: pd.DataFrame, required, path: Path) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{str(path)!r} lacks column(s) {missing}: not the expected file format")


def require_values(df: pd.DataFrame, columns, path: Path) -> None:
    """Columns that every record must fill: an empty one means a malformed or truncated file."""
    for c in columns:
        bad = df[c].isna()
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise InputError(f"{str(path)!r} line {line}: required field {c!r} is empty (file truncated or malformed)")


def numeric(df: pd.DataFrame, columns, path: Path) -> None:
    """Convert columns to numbers in place; a non-numeric value is one InputError naming the line."""
    for c in columns:
        conv = pd.to_numeric(df[c], errors="coerce")
        bad = conv.isna() & df[c].notna() & (df[c].astype(str).str.strip() != "")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{str(path)!r} line {i + 2}: {c!r} = {df[c].iloc[i]!r} is not a number")
        df[c] = conv


class NameResolver:
    """Catalog names for model and GPU spellings, remembering every name the catalog does not know."""

    _QUANT_SUFFIX = re.compile(r"[-_](fp8|nvfp4|fp4|mxfp4|int4|int8|awq|gptq|w4a16|w8a8|fp8-dynamic|bf16)$", re.I)

    def __init__(self) -> None:
        self._models: dict[str, str | None] = {}
        self._gpus: dict[str, str | None] = {}

    def model(self, name) -> str | None:
        """The catalog name of a model spelling (a quantisation suffix like `-FP8` is tried without), or None."""
        if name is None or (isinstance(name, float) and math.isnan(name)) or name is pd.NA:
            return None
        name = str(name).strip()
        if name not in self._models:
            self._models[name] = None
            for candidate in (name, self._QUANT_SUFFIX.sub("", name)):
                try:
                    self._models[name] = resolve_model(candidate).name
                    break
                except InputError:
                    continue
        return self._models[name]

    def gpu(self, name) -> str | None:
        """The catalog name of a GPU spelling, or None."""
        if name is None or (isinstance(name, float) and math.isnan(name)) or name is pd.NA:
            return None
        name = str(name).strip()
        if name not in self._gpus:
            try:
                self._gpus[name] = resolve_gpu(name).name
            except InputError:
                self._gpus[name] = None
        return self._gpus[name]

    def map_models(self, s: pd.Series) -> pd.Series:
        uniq = {v: self.model(v) for v in pd.unique(s.dropna())}
        return s.map(uniq).astype("string")

    def map_gpus(self, s: pd.Series) -> pd.Series:
        uniq = {v: self.gpu(v) for v in pd.unique(s.dropna())}
        return s.map(uniq).astype("string")

    def unknown(self) -> tuple[list[str], list[str]]:
        return (sorted(k for k, v in self._models.items() if v is None),
                sorted(k for k, v in self._gpus.items() if v is None))

    def raise_if_unknown(self, source: str) -> None:
        """Stop the import with the list of names to add to data/catalog when any name did not resolve."""
        models, gpus = self.unknown()
        if models or gpus:
            parts = []
            if models:
                parts.append(f"models {models}")
            if gpus:
                parts.append(f"GPUs {gpus}")
            raise InputError(f"{source}: names not in the catalog (add aliases to data/catalog/*.yaml): "
                             + "; ".join(parts))


_DTYPE_NAMES = {
    "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16", "half": "fp16", "mixed": "fp16",
    "fp8": "fp8", "float8": "fp8", "fp8_block": "fp8", "fp8_e4m3": "fp8", "fp8_e4m3fn": "fp8", "e4m3": "fp8",
    "fp4": "fp4", "nvfp4": "fp4", "mxfp4": "fp4", "int4": "int4", "int4_wo": "int4", "int8": "int8",
    "fp32": "fp32", "float32": "fp32", "float": "fp32",
    "w4a16_mxfp4": "fp4", "w4a8_mxfp4_mxfp8": "fp4", "int8_wo": "int8", "sq": "int8", "fp8_fp4": "fp4",
}


def dtype_name(value) -> str | None:
    """A schema dtype name (`bf16`, `fp16`, `fp8`, `fp4`, `int4`, `int8`) for a source's spelling, else None."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return _DTYPE_NAMES.get(str(value).strip().lower())


def _clean(v):
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return None
        f = float(v)
        return int(f) if f.is_integer() and abs(f) < 2**53 else f
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def detail_json(records: list[dict]) -> list[str | None]:
    """Canonical JSON (sorted keys, no empty values) per record; None where a record has nothing to say."""
    out = []
    for rec in records:
        clean = {k: c for k, v in rec.items() if (c := _clean(v)) is not None}
        out.append(json.dumps(clean, sort_keys=True, separators=(",", ":")) if clean else None)
    return out


def detail_from_columns(df: pd.DataFrame, columns: dict[str, str], constant: dict | None = None) -> list[str | None]:
    """Detail JSON built from source columns (`{source column: detail key}`) plus constant entries."""
    cols = [c for c in columns if c in df.columns]
    keys = [columns[c] for c in cols]
    values = [df[c].tolist() for c in cols]
    const = constant or {}
    return detail_json([{**const, **dict(zip(keys, row))} for row in zip(*values)] if cols else [dict(const)] * len(df))


def row_keys(df: pd.DataFrame) -> pd.Series:
    """One string per row joining every column's value (missing as empty): a grouping key over several columns."""
    parts = [df[c].astype(object).where(df[c].notna(), "").astype(str) for c in df.columns]
    return parts[0].str.cat(parts[1:], sep="\x1f") if len(parts) > 1 else parts[0]


def with_progress(items: list, enabled: bool, what: str):
    """Iterate `items`, showing a rich progress bar on stderr when `enabled` (long imports)."""
    if not enabled:
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def drop_duplicate_rows(frame: pd.DataFrame, report: ImportReport) -> pd.DataFrame:
    """`frame` (schema rows) without repeats of identical rows, which are counted in `report.duplicates`."""
    from collect.store import content_hashes

    if not len(frame):
        return frame
    dup = pd.Series(content_hashes(frame)).duplicated().to_numpy()
    report.duplicates += int(dup.sum())
    return frame.loc[~dup].reset_index(drop=True)


def finish(frame: pd.DataFrame, report: ImportReport, final: bool = True) -> pd.DataFrame:
    """Conform to the schema and collapse identical rows (counted as duplicates); add the rows kept to the report
    and, for the last (or only) part of an import, check that every record read is accounted for."""
    out = drop_duplicate_rows(conform(frame.reset_index(drop=True)), report)
    report.rows_kept += len(out)
    if final:
        report.check_balance()
    return out
