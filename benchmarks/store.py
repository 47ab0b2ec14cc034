"""Measurement store speed: import every shared data set into a fresh SQLite store, then read 100,000 rows by filter.

Targets (issue 3): the whole import (mapping + storing; aiconfigurator with its default `--ops sample`) < 2 minutes;
a filtered read of 100,000 rows < 1 s (measured on the widest rows, vLLM iteration steps, and on Vidur op rows).
Prints a table and writes benchmarks/results/store.json.
Run: `.venv/bin/python -m benchmarks.store` (needs ../shared/data).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks._common import SHARED_DATA, write_result
from collect.importers import SHARED_PATHS, stream_import
from collect.store import Store

IMPORT_TARGET_S = 120.0
READ_TARGET_S = 1.0
READ_ROWS = 100_000
READ_REPEATS = 5


def main() -> dict:
    if not SHARED_DATA.is_dir():
        sys.exit(f"shared data not found at {SHARED_DATA}")
    console = Console(width=120)
    per_source = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        t_all, c_all = time.perf_counter(), time.process_time()
        with Store(url) as store:
            for source, rel in SHARED_PATHS.items():
                t0 = time.perf_counter()
                frames, report = stream_import(source, SHARED_DATA / rel)
                result = store.append(frames)  # mapping and storing interleave for streamed sources
                per_source.append({"source": source, "rows_read": report.rows_read, "rows_kept": report.rows_kept,
                                   "inserted": result.inserted, "seconds": time.perf_counter() - t0})
            import_s, import_cpu_s = time.perf_counter() - t_all, time.process_time() - c_all
            total_rows = store.count()
            reads, read_cpu = [], []
            for _ in range(READ_REPEATS):
                t0, c0 = time.perf_counter(), time.process_time()
                df = store.read(kind="step", source="fpm", limit=READ_ROWS)
                reads.append(time.perf_counter() - t0)
                read_cpu.append(time.process_time() - c0)
            read_rows = len(df)
            op_reads = []
            for _ in range(READ_REPEATS):
                t0 = time.perf_counter()
                ops = store.read(kind="op", source="vidur", limit=READ_ROWS)
                op_reads.append(time.perf_counter() - t0)
            read_ops_s = sorted(op_reads)[len(op_reads) // 2]
        db_bytes = os.path.getsize(Path(tmp) / "bench.sqlite")
    read_s = sorted(reads)[len(reads) // 2]
    read_cpu_s = sorted(read_cpu)[len(read_cpu) // 2]
    t = Table(title="import of every shared data set into a fresh SQLite store")
    for c in ("source", "rows read", "rows kept", "stored", "import s"):
        t.add_column(c, justify="left" if c == "source" else "right")
    for r in per_source:
        t.add_row(r["source"], f"{r['rows_read']:,}", f"{r['rows_kept']:,}", f"{r['inserted']:,}",
                  f"{r['seconds']:.1f}")
    t.add_row("ALL", "", "", f"{total_rows:,}", f"{import_s:.1f}", style="bold")
    console.print(t)
    import_ok, read_ok = import_s < IMPORT_TARGET_S, read_s < READ_TARGET_S and read_rows == READ_ROWS
    read_cpu_ok = read_cpu_s < READ_TARGET_S
    console.print(f"import: {import_s:.1f} s wall ({import_cpu_s:.1f} s CPU) for {total_rows:,} rows "
                  f"(target < {IMPORT_TARGET_S:.0f} s): "
                  f"{'met' if import_ok else 'NOT met'}; store file {db_bytes / 1e6:.0f} MB")
    console.print(f"filtered read of {read_rows:,} rows (kind=step, source=fpm): median {read_s:.2f} s wall "
                  f"(best {min(reads):.2f} s), {read_cpu_s:.2f} s CPU, of "
                  f"{READ_REPEATS} (target < {READ_TARGET_S:.0f} s): {'met' if read_ok else 'NOT met'}; "
                  f"{len(ops):,} op rows (kind=op, source=vidur): median {read_ops_s:.2f} s")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load and load[0] > (os.cpu_count() or 1):
        console.print(f"note: load average {load[0]:.1f} on {os.cpu_count()} CPUs: wall times include waiting for "
                      "other processes; the CPU time shows the read's own cost")
    payload = {"per_source": per_source, "import_s": import_s, "import_cpu_s": import_cpu_s, "rows_stored": total_rows, "store_bytes": db_bytes,
               "read_rows": read_rows, "read_s_median": read_s, "read_s_all": reads, "read_cpu_s_median": read_cpu_s,
               "read_op_rows": len(ops), "read_op_s_median": read_ops_s, "load_average": load,
               "targets": {"import_s": IMPORT_TARGET_S, "read_s": READ_TARGET_S},
               "met": {"import": import_ok, "import_cpu": import_cpu_s < IMPORT_TARGET_S, "read": read_ok,
                       "read_cpu": read_cpu_ok}}
    path = write_result("store", payload)
    console.print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
