"""`layoutcast import SOURCE PATH`: map a shared data set into the measurement schema and append it to the store."""

from __future__ import annotations

import sys

from features.errors import InputError


def register(sub) -> None:
    from collect.importers import IMPORTERS, OPS_MODES

    p = sub.add_parser("import", help="import a measurement data set into the store",
                       description="Import a data set (" + ", ".join(IMPORTERS) + ") into the measurement store. "
                       "Every row read is kept, de-duplicated, or left out with its reason in the printed report.")
    p.add_argument("source", choices=list(IMPORTERS), metavar="SOURCE", help=" | ".join(IMPORTERS))
    p.add_argument("path", metavar="PATH", help="the data set's file or folder")
    p.add_argument("--store", default=None,
                   help="store URL or SQLite path (default $LAYOUTCAST_STORE or ~/.layoutcast/measurements.sqlite)")
    p.add_argument("--ops", choices=list(OPS_MODES), default=None,
                   help="aiconfigurator op_perf tables: sample (default: every comm row + a stable 1-in-20 sample of "
                        "the rest), comm, all, none")
    p.add_argument("--dry-run", action="store_true", help="map and report, but do not write to the store")
    p.add_argument("--json", action="store_true", help="print one JSON document (the report) and nothing else")
    p.set_defaults(func=run)


def run(args) -> int:
    from collect.importers import stream_import

    if args.ops is not None and args.source != "aiconfigurator":
        raise InputError("--ops applies to the aiconfigurator source only")
    progress = sys.stderr.isatty()
    stored = None
    store_url = None
    # names and the small files are checked before the first frame; the frames of one import then go into the
    # store as one transaction (a failure part-way leaves the store as it was), one frame in memory at a time
    frames, report = stream_import(args.source, args.path, ops=args.ops, progress=progress)
    if args.dry_run:
        for _ in frames:
            pass
    else:
        from collect.store import Store

        with Store(args.store) as store:
            result = store.append(frames, progress=progress)
            stored = {"inserted": result.inserted, "already_stored": result.duplicates}
            store_url = repr(store)
    doc = {**report.as_dict(), "store": store_url, "stored": stored}
    if args.json:
        from predictor.commands.common import print_json

        print_json(doc)
    else:
        _print_report(doc)
    return 0


def _print_report(doc: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"import {doc['source']}: {doc['path']}", show_header=True)
    t.add_column("rows")
    t.add_column("count", justify="right")
    t.add_row("read", f"{doc['rows_read']:,}")
    t.add_row("kept", f"{doc['rows_kept']:,}")
    t.add_row("de-duplicated (identical within the source)", f"{doc['duplicates']:,}")
    for reason, n in doc["left_out"].items():
        t.add_row(f"left out: {reason}", f"{n:,}")
    if doc["stored"] is not None:
        t.add_row("stored (new rows)", f"{doc['stored']['inserted']:,}")
        t.add_row("already in the store", f"{doc['stored']['already_stored']:,}")
    console = Console()
    console.print(t)
    for note in doc["notes"]:
        console.print(f"- {note}", highlight=False)
    console.print(f"store: {doc['store']}" if doc["store"] else "dry run: nothing written", highlight=False)
