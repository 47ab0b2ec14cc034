"""The measurement store: an append-only SQL table of schema rows (an SQLite file by default, or any SQLAlchemy URL).

Every schema column is a real SQL column, plus an autoincrement `id` and a unique `content_hash` over the row's
provenance, configuration, targets and detail, so appending the same measurement twice stores it once. Each
`append` is one transaction: a crash leaves none or all of a batch. Concurrent writers do not lose rows: SQLite runs
in WAL mode with a busy timeout, `BEGIN IMMEDIATE` write transactions and retries; PostgreSQL uses
`INSERT ... ON CONFLICT DO NOTHING`.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from features.errors import InputError
from features.schema import COLUMNS, KINDS, SCHEMA_VERSION, STATUSES, conform

STORE_ENV = "LAYOUTCAST_STORE"
DEFAULT_STORE_PATH = Path("~/.layoutcast/measurements.sqlite")
TABLE_NAME = "measurements"
META_TABLE_NAME = "layoutcast_meta"
# per (kind, source) and column: whether any value / any empty cell was stored, and the value when it is always the
# same: reads fetch only the columns that vary and fill the constant and empty ones without touching the rows
STATS_TABLE_NAME = "layoutcast_column_stats"

# Columns the content hash covers: provenance that makes a measurement distinct, configuration, targets, detail.
# `measured_at`, `derived` and `run_id` are left out so re-importing a file, or the same value recorded under
# another run label, is a duplicate.
_HASH_EXCLUDED = ("measured_at", "derived", "run_id")
HASH_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in _HASH_EXCLUDED)
_STRING_COLUMNS = tuple(c for c, t in COLUMNS.items() if t == "string")
_NUMERIC_COLUMNS = tuple(c for c, t in COLUMNS.items() if t != "string")
FILTER_COLUMNS = ("kind", "model", "gpu", "engine", "source", "status")
_INDEXED_COLUMNS = ("kind", "model", "gpu")  # plus (source, kind) below
_SQLITE_BATCH_ROWS = 20_000
_WRITE_ATTEMPTS = 8


@dataclass
class _Prepared:
    """One frame ready to insert: DB-API records, their column names, and their column statistics."""

    records: list[tuple]
    names: list[str]
    stats: list[dict]


@dataclass(frozen=True)
class AppendResult:
    """What one `Store.append` did: rows newly stored and rows already present (identical content)."""

    inserted: int
    duplicates: int


def default_store_url() -> str:
    """`$LAYOUTCAST_STORE` if set, else the SQLite file `~/.layoutcast/measurements.sqlite` (as a URL)."""
    text = (os.environ.get(STORE_ENV) or str(DEFAULT_STORE_PATH)).strip()
    return text if "://" in text else f"sqlite:///{Path(text).expanduser().resolve()}"


def normalize_url(url_or_path: str | os.PathLike, create: bool = True) -> str:
    """An SQLAlchemy URL as given, or a filesystem path turned into an `sqlite:///` URL; an SQLite file's folder is
    created when `create`, else the file must exist."""
    text = str(url_or_path).strip()
    if not text:
        raise InputError("store URL is empty")
    if "://" in text:
        try:
            url = sa.engine.make_url(text)
        except (sa.exc.ArgumentError, ValueError) as e:
            raise InputError(f"malformed store URL {text!r}: {e}") from None
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            _sqlite_file(Path(url.database).expanduser(), create)
        return text
    path = Path(text).expanduser().resolve()
    _sqlite_file(path, create)
    return f"sqlite:///{path}"


def _sqlite_file(path: Path, create: bool) -> None:
    if path.is_dir():
        raise InputError(f"store path {str(path)!r} is a directory, not an SQLite file")
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise InputError(f"no measurement store at {str(path)!r}")


def driver_url(url: str) -> sa.engine.URL:
    """The SQLAlchemy URL with a PostgreSQL driver that is installed (`postgresql://` means psycopg 3 in
    SQLAlchemy 2.1; fall back to psycopg2 when only that one is present)."""
    import importlib.util

    u = sa.engine.make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            u = u.set(drivername="postgresql+psycopg2")
        elif u.drivername == "postgres":
            u = u.set(drivername="postgresql")
    return u


def _sql_type(dtype: str) -> sa.types.TypeEngine:
    return {
        "string": sa.Text(),
        "float64": sa.Double(),
        "Int64": sa.BigInteger(),
        "boolean": sa.Boolean(create_constraint=False),
    }[dtype]


def _build_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table, sa.Table]:
    id_type = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY = rowid
    columns = [sa.Column("id", id_type, primary_key=True, autoincrement=True)]
    columns += [sa.Column(name, _sql_type(dtype), nullable=True) for name, dtype in COLUMNS.items()]
    columns.append(sa.Column("content_hash", sa.String(32), nullable=False))
    table = sa.Table(
        TABLE_NAME,
        metadata,
        *columns,
        sa.Index(f"ux_{TABLE_NAME}_content_hash", "content_hash", unique=True),
        *[sa.Index(f"ix_{TABLE_NAME}_{c}", c) for c in _INDEXED_COLUMNS],
        sa.Index(f"ix_{TABLE_NAME}_source_kind", "source", "kind"),
    )
    meta = sa.Table(
        META_TABLE_NAME,
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    stats = sa.Table(
        STATS_TABLE_NAME,
        metadata,
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("source", sa.String(200), primary_key=True),  # '' stands for an empty source
        sa.Column("column_name", sa.String(64), primary_key=True),
        sa.Column("has_value", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("has_null", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("multi", sa.Boolean(create_constraint=False), nullable=False),  # more than one distinct value
        sa.Column("value", sa.Text(), nullable=True),  # the first value seen (encoded), when has_value
    )
    return table, meta, stats


def _encode(value, dtype: str) -> str:
    """A stored value as exact text (floats by repr, which round-trips), for the column statistics."""
    if dtype == "float64":
        return repr(float(value))
    if dtype == "Int64":
        return str(int(value))
    if dtype == "boolean":
        return "1" if bool(value) else "0"
    return str(value)


def _decode(text: str, dtype: str):
    if dtype == "float64":
        return float(text)
    if dtype == "Int64":
        return int(text)
    if dtype == "boolean":
        return text == "1"
    return text


def _column_stats(rows: pd.DataFrame) -> list[dict]:
    """Per (kind, source) group and schema column of a conformed frame: has_value, has_null, multi, value."""
    key = rows["kind"].astype(object) + "\x1f" + rows["source"].astype(object).where(rows["source"].notna(), "")
    out = []
    for k, idx in key.groupby(key, sort=False).indices.items():
        kind, source = k.split("\x1f", 1)
        sub = rows.iloc[idx]
        for col, dtype in COLUMNS.items():
            s = sub[col]
            present = s.notna().to_numpy()
            has_value = bool(present.any())
            values = s[present]
            first = values.iloc[0] if has_value else None
            multi = bool(has_value and (values != first).any())
            out.append({"kind": kind, "source": source, "column_name": col, "has_value": has_value,
                        "has_null": bool(not present.all()), "multi": multi,
                        "value": _encode(first, dtype) if has_value else None})
    return out


def content_hashes(frame: pd.DataFrame) -> list[str]:
    """128-bit hex digest per row of a conformed frame over `HASH_COLUMNS` (stable across runs and platforms)."""
    n = len(frame)
    if n == 0:
        return []
    numeric = np.empty((n, len(_NUMERIC_COLUMNS)), dtype="<f8")
    for j, col in enumerate(_NUMERIC_COLUMNS):
        if col not in HASH_COLUMNS:
            numeric[:, j] = np.nan
            continue
        s = frame[col]
        if str(s.dtype) == "boolean":
            s = s.astype("Float64")
        numeric[:, j] = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(na_value=np.nan)
    numeric[np.isnan(numeric)] = np.nan  # one NaN bit pattern
    numeric[numeric == 0.0] = 0.0  # -0.0 and 0.0 hash alike
    row_bytes = np.ascontiguousarray(numeric).view(f"V{8 * numeric.shape[1]}").ravel()
    str_cols = [c for c in _STRING_COLUMNS if c in HASH_COLUMNS]
    joined = frame[str_cols[0]].astype("object").where(frame[str_cols[0]].notna(), "\x00").astype(str)
    others = [frame[c].astype("object").where(frame[c].notna(), "\x00").astype(str) for c in str_cols[1:]]
    joined = joined.str.cat(others, sep="\x1f")
    blake = hashlib.blake2b
    return [blake(b.tobytes() + s.encode("utf-8"), digest_size=16).hexdigest() for b, s in zip(row_bytes, joined)]


def _python_columns(frame: pd.DataFrame, columns: list[str]) -> list[list]:
    """Each named schema column as a list of plain Python values, None for missing (what DB-API drivers accept)."""
    out = []
    for col in columns:
        dtype, s = COLUMNS[col], frame[col]
        if dtype == "float64":
            v = s.to_numpy(dtype="float64", na_value=np.nan)
            obj = v.astype(object)
            obj[np.isnan(v)] = None
            out.append(obj.tolist())
        elif dtype == "Int64":
            mask = s.isna().to_numpy()
            vals = s.to_numpy(dtype="float64", na_value=0).astype(np.int64).astype(object)
            vals[mask] = None
            out.append(vals.tolist())
        elif dtype == "boolean":
            mask = s.isna().to_numpy()
            vals = s.fillna(False).to_numpy(dtype=bool).astype(object)
            vals[mask] = None
            out.append(vals.tolist())
        else:
            out.append(s.astype(object).where(s.notna(), None).tolist())
    return out


def _is_lock_error(exc: BaseException) -> bool:
    msg = str(getattr(exc, "orig", exc)).lower()
    return any(w in msg for w in ("database is locked", "database table is locked", "busy", "deadlock detected",
                                  "could not serialize", "could not obtain lock"))


class Store:
    """An append-only measurement store; `Store()` opens the default SQLite file, `Store(url)` any SQLAlchemy URL."""

    def __init__(self, url: str | os.PathLike | None = None, *, create: bool = True, busy_timeout_s: float = 60.0):
        """`create=False`: an SQLite store must already exist (for commands that only read)."""
        self.url = normalize_url(url if url is not None else default_store_url(), create=create)
        self._busy_timeout_s = busy_timeout_s
        self.engine: Engine = self._make_engine()
        self.dialect = self.engine.dialect.name
        self._metadata = sa.MetaData()
        self.table, self.meta_table, self.stats_table = _build_tables(self._metadata)
        self._open()

    # --- connection set-up ----------------------------------------------------------------------------------

    def _make_engine(self) -> Engine:
        url = driver_url(self.url)
        kwargs: dict = {"future": True}
        if url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": self._busy_timeout_s, "check_same_thread": False}
            in_memory = not url.database or url.database == ":memory:"
            # a file: a fresh connection per use (safe across threads and forks); in memory: one shared connection
            kwargs["poolclass"] = sa.pool.StaticPool if in_memory else sa.pool.NullPool
        else:
            kwargs["pool_pre_ping"] = True
        try:
            engine = sa.create_engine(url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
            raise InputError(f"cannot open store {self.url!r}: {e}") from None
        if engine.dialect.name == "sqlite":
            busy_ms = int(self._busy_timeout_s * 1000)

            @event.listens_for(engine, "connect")
            def _sqlite_connect(dbapi_conn, _record):  # pragma: no cover - exercised via every SQLite test
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own handling is unsafe)
                cur = dbapi_conn.cursor()
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")
                cur.close()

            @event.listens_for(engine, "begin")
            def _sqlite_begin(conn):  # pragma: no cover - exercised via every SQLite test
                mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
                conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (SQLite: BEGIN IMMEDIATE, so writers queue on the lock instead of deadlocking)."""
        with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                yield conn

    def _retrying(self, fn, what: str):
        """Run `fn()` (one whole transaction), retrying on lock contention with jittered backoff."""
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                return fn()
            except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.InternalError) as e:
                if attempt == _WRITE_ATTEMPTS - 1 or not (_is_lock_error(e) or isinstance(e, sa.exc.IntegrityError)):
                    raise
                time.sleep(min(5.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError(f"unreachable: {what}")  # pragma: no cover

    def _open(self) -> None:
        """Create the tables on first use; refuse a store written with another schema version."""
        try:
            self._retrying(self._create_or_check, "open")
        except InputError:
            self.engine.dispose()
            raise
        except sa.exc.DatabaseError as e:
            self.engine.dispose()
            raise InputError(f"cannot open store {self._safe_url()}: {str(getattr(e, 'orig', e)).strip()}") from None

    def _create_or_check(self) -> None:
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7286423510)")  # serialise first-time creation
            insp = sa.inspect(conn)
            names = set(insp.get_table_names())
            if TABLE_NAME in names and META_TABLE_NAME not in names:
                raise InputError(f"store {self._safe_url()} has a {TABLE_NAME!r} table but no {META_TABLE_NAME!r}: "
                                 "not a layoutcast store")
            if META_TABLE_NAME in names:
                m = self.meta_table
                row = conn.execute(sa.select(m.c.value).where(m.c.key == "schema_version")).first()
                found = row[0] if row else None
                if found != str(SCHEMA_VERSION):
                    raise InputError(f"store {self._safe_url()} has measurement schema version {found}; "
                                     f"this layoutcast reads version {SCHEMA_VERSION} (use a new store)")
                if TABLE_NAME in names and STATS_TABLE_NAME in names:
                    return
            self._metadata.create_all(conn, checkfirst=True)
            if META_TABLE_NAME not in names:
                conn.execute(self.meta_table.insert(), [
                    {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                    {"key": "created_at", "value": pd.Timestamp.now(tz="UTC").isoformat()},
                ])
            elif TABLE_NAME in names and STATS_TABLE_NAME not in names:
                self._backfill_stats(conn)

    def _backfill_stats(self, conn: Connection) -> None:
        """Compute the column statistics of a store written before they were kept (one grouped scan)."""
        t = self.table
        src = sa.func.coalesce(t.c.source, "")
        aggs = [sa.func.count()]
        for c, dtype in COLUMNS.items():
            low = sa.func.min(sa.cast(t.c[c], sa.Integer) if dtype == "boolean" else t.c[c])  # PG has no min(bool)
            aggs += [sa.func.count(t.c[c]), sa.func.count(sa.distinct(t.c[c])), low]
        entries = []
        for r in conn.execute(sa.select(t.c.kind, src, *aggs).group_by(t.c.kind, src)):
            kind, source, total = r[0], r[1], r[2]
            for i, (col, dtype) in enumerate(COLUMNS.items()):
                n, distinct, low = r[3 + 3 * i: 6 + 3 * i]
                entries.append({"kind": kind, "source": source, "column_name": col, "has_value": n > 0,
                                "has_null": n < total, "multi": distinct > 1,
                                "value": _encode(low, dtype) if n > 0 else None})
        self._merge_stats(conn, entries)

    def _merge_stats(self, conn: Connection, entries: list[dict]) -> None:
        """Fold new column statistics into the stored ones with one atomic upsert per entry (order-free merge,
        so concurrent writers cannot lose an update)."""
        if not entries:
            return
        t = self.stats_table
        if self.dialect in ("sqlite", "postgresql"):
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            ins = dialect_insert(t)
            new = ins.excluded
            stmt = ins.on_conflict_do_update(
                index_elements=["kind", "source", "column_name"],
                set_={
                    "multi": sa.or_(t.c.multi, new.multi,
                                    sa.and_(t.c.has_value, new.has_value, t.c.value.is_distinct_from(new.value))),
                    "value": sa.case((t.c.has_value, t.c.value), else_=new.value),
                    "has_value": sa.or_(t.c.has_value, new.has_value),
                    "has_null": sa.or_(t.c.has_null, new.has_null),
                })
            conn.execute(stmt, entries)
            return
        # any other database: read, merge and write in this transaction
        old = {(r.kind, r.source, r.column_name): r for r in conn.execute(sa.select(t))}
        for e in entries:
            o = old.get((e["kind"], e["source"], e["column_name"]))
            if o is None:
                conn.execute(t.insert(), [e])
                continue
            merged = {"multi": o.multi or e["multi"] or (o.has_value and e["has_value"] and o.value != e["value"]),
                      "value": o.value if o.has_value else e["value"], "has_value": o.has_value or e["has_value"],
                      "has_null": o.has_null or e["has_null"]}
            conn.execute(t.update().where(t.c.kind == e["kind"], t.c.source == e["source"],
                                          t.c.column_name == e["column_name"]).values(**merged))

    def _safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._safe_url()!r})"

    # --- writing --------------------------------------------------------------------------------------------

    def append(self, frames: pd.DataFrame | Iterable[pd.DataFrame], progress: bool = False) -> AppendResult:
        """Store measurement rows in one transaction; rows identical to stored ones are skipped (duplicates).

        `frames` is one frame, or an iterable of frames streamed into the same transaction (each is prepared only
        when reached, so memory holds one at a time; an error from the iterable rolls the whole append back).
        """
        if isinstance(frames, pd.DataFrame):
            prepared = self._prepare(frames)
            if prepared is None:
                return AppendResult(0, 0)
            total = len(prepared.records)
            inserted = self._retrying(lambda: self._insert_all(iter([prepared]), progress, total), "append")
            return AppendResult(inserted=inserted, duplicates=total - inserted)
        if not isinstance(frames, Iterable) or isinstance(frames, (str, bytes)):
            raise InputError(f"store.append needs a DataFrame or an iterable of them, not {type(frames).__name__}")
        seen = [0]

        def prepared_stream() -> Iterator[_Prepared]:
            for frame in frames:
                p = self._prepare(frame)
                if p is not None:
                    seen[0] += len(p.records)
                    yield p

        inserted = self._insert_all(prepared_stream(), progress, None)  # a stream cannot be replayed: no retry
        return AppendResult(inserted=inserted, duplicates=seen[0] - inserted)

    def _prepare(self, frame: pd.DataFrame) -> "_Prepared | None":
        """Validated rows as DB-API records (non-empty columns + content hash) and their column statistics."""
        rows = self._validated(frame)
        if len(rows) == 0:
            return None
        hashes = content_hashes(rows)
        filled = [c for c in COLUMNS if rows[c].notna().any()]  # all-empty columns are left to default NULL
        return _Prepared(records=list(zip(*_python_columns(rows, filled), hashes)), names=filled + ["content_hash"],
                         stats=_column_stats(rows))

    def _validated(self, frame: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(frame, pd.DataFrame):
            raise InputError(f"store.append needs a DataFrame, not {type(frame).__name__}")
        if len(frame) and "kind" not in frame.columns:
            raise InputError("measurement frame has no 'kind' column")
        try:
            rows = conform(frame.reset_index(drop=True))
        except ValueError as e:
            raise InputError(f"measurement frame does not fit the schema: {e}") from None
        bad_kind = sorted(set(rows["kind"].dropna()) - set(KINDS)) + (["<empty>"] if rows["kind"].isna().any() else [])
        if bad_kind:
            raise InputError(f"measurement rows with invalid kind {bad_kind} (expected one of {list(KINDS)})")
        bad_status = sorted(set(rows["status"].dropna()) - set(STATUSES))
        if bad_status:
            raise InputError(f"measurement rows with invalid status {bad_status} (expected one of {list(STATUSES)})")
        return rows[list(COLUMNS)]

    def _insert_all(self, prepared: Iterator["_Prepared"], progress: bool, total: int | None) -> int:
        """Insert every prepared frame in one write transaction; the number of rows newly stored."""
        from rich.console import Console
        from rich.progress import Progress

        inserted = 0
        with self._write() as conn, Progress(console=Console(stderr=True), transient=True,
                                                      disable=not progress) as bar:
            task = bar.add_task("storing rows", total=total)
            for p in prepared:
                self._merge_stats(conn, p.stats)
                for i in range(0, len(p.records), _SQLITE_BATCH_ROWS):
                    batch = p.records[i:i + _SQLITE_BATCH_ROWS]
                    inserted += self._insert_batch(conn, batch, p.names)
                    bar.advance(task, len(batch))
        return inserted

    def _insert_batch(self, conn: Connection, batch: list[tuple], names: list[str]) -> int:
        if self.dialect == "sqlite":
            sql = (f"INSERT OR IGNORE INTO {TABLE_NAME} ({', '.join(names)}) "
                   f"VALUES ({', '.join('?' * len(names))})")
            before = conn.exec_driver_sql("SELECT total_changes()").scalar_one()
            conn.exec_driver_sql(sql, batch)
            return int(conn.exec_driver_sql("SELECT total_changes()").scalar_one() - before)
        dicts = [dict(zip(names, r)) for r in batch]
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = (pg_insert(self.table).on_conflict_do_nothing(index_elements=["content_hash"])
                    .returning(self.table.c.id))
            return len(conn.execute(stmt, dicts).fetchall())
        # any other database: skip hashes already present, insert the rest (a racing duplicate raises and retries)
        present = self._present_hashes(conn, [d["content_hash"] for d in dicts])
        fresh = [d for d in dicts if d["content_hash"] not in present]
        if fresh:
            conn.execute(self.table.insert(), fresh)
        return len(fresh)

    def _present_hashes(self, conn: Connection, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(hashes), 500):
            chunk = hashes[i:i + 500]
            h = self.table.c.content_hash
            found.update(conn.execute(sa.select(h).where(h.in_(chunk))).scalars())
        return found

    # --- reading --------------------------------------------------------------------------------------------

    def _where(self, filters: dict) -> list:
        clauses = []
        for col, value in filters.items():
            if col not in FILTER_COLUMNS:
                raise InputError(f"unknown store filter {col!r} (use {', '.join(FILTER_COLUMNS)})")
            if value is None:
                continue
            values = [value] if isinstance(value, str) else list(value)
            if col == "model":
                values = [_catalog_name("model", v) for v in values]
            elif col == "gpu":
                values = [_catalog_name("gpu", v) for v in values]
            clauses.append(self.table.c[col].in_(values))
        return clauses

    def read(self, *, kind=None, model=None, gpu=None, engine=None, source=None, status=None,
             limit: int | None = None) -> pd.DataFrame:
        """Stored rows (oldest first) as a schema frame; each filter is a value or a list of values."""
        where = self._where(dict(kind=kind, model=model, gpu=gpu, engine=engine, source=source, status=status))
        with self.engine.connect() as conn:
            varying, constant = self._column_plan(conn, kind, source)
            cols = [self.table.c[c] for c in varying] or [self.table.c.id]
            stmt = sa.select(*cols).where(*where).order_by(self.table.c.id)
            if limit is not None:
                stmt = stmt.limit(int(limit))
            result = conn.execute(stmt)
            rows = result.cursor.fetchall()  # plain DB-API tuples: no per-row Row objects for 100k-row reads
            result.close()
        if not rows:
            return _frame_from_columns({}, {}, 0)
        table = np.array(rows, dtype=object)  # one C-level transpose instead of zip(*rows)
        return _frame_from_columns({c: table[:, j] for j, c in enumerate(varying)}, constant, len(rows))

    def _column_plan(self, conn: Connection, kind, source) -> tuple[list[str], dict]:
        """(columns to fetch, {column: value} of columns that hold one value in every matching row).

        From the column statistics of the (kind, source) groups the filters select: a column empty in all of them
        is neither fetched nor filled; one with the same value everywhere (no empty cell) is filled, not fetched.
        """
        t = self.stats_table
        stmt = sa.select(t.c.kind, t.c.source, t.c.column_name, t.c.has_value, t.c.has_null, t.c.multi, t.c.value)
        if kind is not None:
            stmt = stmt.where(t.c.kind.in_([kind] if isinstance(kind, str) else list(kind)))
        if source is not None:
            stmt = stmt.where(t.c.source.in_([source] if isinstance(source, str) else list(source)))
        per_col: dict[str, list] = {}
        for r in conn.execute(stmt):
            per_col.setdefault(r.column_name, []).append(r)
        varying, constant = [], {}
        for col, dtype in COLUMNS.items():
            groups = per_col.get(col, [])
            if not any(g.has_value for g in groups):
                continue
            values = {g.value for g in groups}
            if all(g.has_value and not g.has_null and not g.multi for g in groups) and len(values) == 1:
                constant[col] = _decode(values.pop(), dtype)
            else:
                varying.append(col)
        return varying, constant

    def count(self, **filters) -> int:
        """Number of stored rows matching the filters (same keywords as `read`)."""
        stmt = sa.select(sa.func.count()).select_from(self.table).where(*self._where(filters))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def summary(self, **filters) -> dict[str, pd.DataFrame]:
        """Row counts by source, engine, GPU, model, kind, status and layout, each a frame sorted by count."""
        where = self._where(filters)
        out: dict[str, pd.DataFrame] = {}
        n = sa.func.count().label("rows")
        with self.engine.connect() as conn:
            for col in ("source", "engine", "gpu", "model", "kind", "status"):
                c = self.table.c[col]
                res = conn.execute(sa.select(c, n).where(*where).group_by(c)).fetchall()
                df = pd.DataFrame(res, columns=[col, "rows"])
                df[col] = df[col].fillna("(none)")
                out[col] = df.sort_values(["rows", col], ascending=[False, True], ignore_index=True)
            lay = [self.table.c[c] for c in ("tp", "pp", "dp", "ep", "attention_dp")]
            res = conn.execute(sa.select(*lay, n).where(*where).group_by(*lay)).fetchall()
        lay_df = pd.DataFrame(res, columns=["tp", "pp", "dp", "ep", "attention_dp", "rows"])
        parts = lay_df[["tp", "pp", "dp", "ep", "attention_dp"]].itertuples(index=False)
        lay_df["layout"] = [_layout_label(*r) for r in parts]
        lay_df = lay_df.groupby("layout", as_index=False)["rows"].sum()
        out["layout"] = lay_df.sort_values(["rows", "layout"], ascending=[False, True], ignore_index=True)
        return out


def _inferred_text_dtype():
    """The dtype pandas gives a column of Python strings (what `conform` returns for text columns)."""
    return pd.DataFrame({"x": np.array(["a", None], dtype=object)})["x"].dtype


_TEXT_DTYPE = _inferred_text_dtype()


def _text_array(vals: np.ndarray):
    """A text column as `conform` would type it, built straight from Arrow (all-empty columns stay object)."""
    import pyarrow as pa

    arr = pa.array(vals, type=pa.large_string(), from_pandas=True)
    if arr.null_count == len(arr):
        return np.asarray(vals, dtype=object)
    if isinstance(_TEXT_DTYPE, pd.StringDtype) and _TEXT_DTYPE.storage == "pyarrow":
        return pd.arrays.ArrowStringArray(pa.chunked_array([arr]), dtype=_TEXT_DTYPE)
    return pd.array(np.asarray(vals, dtype=object), dtype=_TEXT_DTYPE)


def _full(value, dtype: str, n: int):
    """A column of `n` copies of one value (None: empty), typed as `conform` types the column."""
    if dtype == "float64":
        return np.full(n, np.nan if value is None else value, dtype=float)
    if dtype == "string":
        filled = np.full(n, value, dtype=object)
        return filled if value is None else _text_array(filled)
    if value is None:
        return pd.array([pd.NA] * n, dtype=dtype)
    data = np.full(n, value, dtype=np.int64 if dtype == "Int64" else bool)
    cls = pd.arrays.IntegerArray if dtype == "Int64" else pd.arrays.BooleanArray
    return cls(data, np.zeros(n, dtype=bool))


def _frame_from_columns(values: dict[str, np.ndarray], constant: dict, n: int) -> pd.DataFrame:
    """A schema frame, typed exactly as `conform` types it, from fetched columns and constant columns.

    Built directly (not through `conform`) because this is the hot path of 100,000-row reads; every stored row was
    conformed on the way in, so defaults and `num_gpus` are already filled. Other columns are empty.
    """
    import pyarrow as pa

    data = {}
    for col, dtype in COLUMNS.items():
        vals = values.get(col)
        if vals is None:
            data[col] = _full(constant.get(col), dtype, n)
        elif dtype == "boolean":
            data[col] = pd.array([None if v is None else bool(v) for v in vals], dtype="boolean")
        elif dtype == "float64":
            data[col] = pa.array(vals, type=pa.float64(), from_pandas=True).to_numpy(zero_copy_only=False)
        elif dtype == "Int64":
            data[col] = pa.array(vals, type=pa.int64()).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get).array
        else:
            data[col] = _text_array(vals)
    return pd.DataFrame(data, index=pd.RangeIndex(n))


def _layout_label(tp, pp, dp, ep, attention_dp) -> str:
    from features.specs import Layout

    def num(v):
        return 1 if v is None or pd.isna(v) else int(v)

    return Layout(num(tp), num(pp), num(dp), num(ep), bool(attention_dp) if attention_dp is not None else False).label()


def _catalog_name(what: str, name: str) -> str:
    """The catalog name for a filter value when the catalog knows it, else the value as given."""
    from features.catalog import resolve_gpu, resolve_model

    try:
        return (resolve_model if what == "model" else resolve_gpu)(name).name
    except (InputError, OSError, TypeError):
        return name

