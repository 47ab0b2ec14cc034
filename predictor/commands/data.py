"""`layoutcast data summary`: what the measurement store holds, counted by source, engine, GPU, model, kind, layout."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect the measurement store", description="Inspect the measurement store.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{summary}")
    s = dsub.add_parser("summary", help="row counts by source, engine, GPU, model, kind, status and layout",
                        description="Row counts of the measurement store by source, engine, GPU, model, kind, "
                                    "status and layout.")
    s.add_argument("--store", default=None,
                   help="store URL or SQLite path (default $LAYOUTCAST_STORE or ~/.layoutcast/measurements.sqlite)")
    s.add_argument("--json", action="store_true", help="print one JSON document and nothing else")
    s.set_defaults(func=run_summary)


def run_summary(args) -> int:
    from collect.store import Store

    with Store(args.store, create=False) as store:
        total = store.count()
        groups = store.summary()
        url = repr(store)
    if args.json:
        from predictor.commands.common import print_json

        by = {name: dict(zip(df[name].astype(str), df["rows"].astype(int))) for name, df in groups.items()}
        print_json({"store": url, "rows": total, "by": by})
        return 0
    from rich.columns import Columns
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{url}: {total:,} rows", highlight=False)
    tables = []
    for name, df in groups.items():
        t = Table(title=f"by {name}")
        t.add_column(name)
        t.add_column("rows", justify="right")
        for value, n in zip(df[name].astype(str), df["rows"]):
            t.add_row(value, f"{int(n):,}")
        tables.append(t)
    console.print(Columns(tables))
    return 0
