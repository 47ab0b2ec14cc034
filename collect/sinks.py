"""Where measurement rows go as each run finishes: a CSV file, the measurement store, or both.

A sink is any callable taking a frame of schema rows. Writing every finished run at once means an interrupted
collection keeps all the rows it finished.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from features.schema import COLUMNS, conform

RowSink = Callable[[pd.DataFrame], None]


class CsvSink:
    """Appends schema rows to a CSV file (header once, flushed to disk per frame)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows_written = 0

    def __call__(self, df: pd.DataFrame) -> None:
        frame = conform(df)[list(COLUMNS)]
        header = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as fh:
            frame.to_csv(fh, header=header, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows_written += len(frame)


class StoreSink:
    """Appends schema rows to the measurement store (`collect.store.Store`), one transaction per frame."""

    def __init__(self, store_or_url: Any = None):
        from collect.store import Store

        self.store = store_or_url if hasattr(store_or_url, "append") else Store(store_or_url)
        self.rows_written = 0

    def __call__(self, df: pd.DataFrame) -> None:
        self.store.append(df)
        self.rows_written += len(df)


def make_sink(csv_path: str | os.PathLike | None = None, store: Any = None) -> RowSink | None:
    """One sink writing to a CSV file and/or a store (a Store, an URL, or a sink callable); None when neither."""
    sinks: list[RowSink] = []
    if csv_path:
        sinks.append(CsvSink(csv_path))
    if store is not None:
        sinks.append(store if callable(store) and not hasattr(store, "append") else StoreSink(store))
    if not sinks:
        return None

    def sink(df: pd.DataFrame) -> None:
        for s in sinks:
            s(df)

    return sink
