"""Campaign bookkeeping in the measurement store's database: which campaign exists, which runs it planned and finished.

Two tables beside the measurements (same SQLite file or PostgreSQL database, so a campaign resumes from wherever its
store is): `layoutcast_campaigns` (campaign id, its settings as JSON) and `layoutcast_campaign_runs` (one row per
configuration a campaign chose: its config hash, selection order, `planned` or `done`, the run id stamped on its
measurement rows, the rows' content hashes, its status and estimated cost). A run is planned (committed) before it
is dispatched and marked done after its rows are stored, so a campaign killed at any moment resumes by finishing the
planned runs without re-measuring the done ones; a planned run whose rows did reach the store (killed between the
two writes) is recognised by its run id and not measured again.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from features.errors import InputError
from features.schema import COLUMNS, conform

CAMPAIGNS_TABLE = "layoutcast_campaigns"
RUNS_TABLE = "layoutcast_campaign_runs"
RUN_FIELDS = ("campaign_id", "config_hash", "seq", "iteration", "state", "run_id", "status", "n_rows", "row_hashes",
              "cost_gpu_h", "score", "config", "planned_at", "finished_at", "worker")
_ATTEMPTS = 8


def _now() -> str:
    return pd.Timestamp.now(tz="UTC").isoformat()


def _tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    campaigns = sa.Table(
        CAMPAIGNS_TABLE, metadata,
        sa.Column("campaign_id", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("settings", sa.Text(), nullable=False),
    )
    runs = sa.Table(
        RUNS_TABLE, metadata,
        sa.Column("campaign_id", sa.String(200), primary_key=True),
        sa.Column("config_hash", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("iteration", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16)),
        sa.Column("n_rows", sa.Integer()),
        sa.Column("row_hashes", sa.Text()),
        sa.Column("cost_gpu_h", sa.Double()),
        sa.Column("score", sa.Double()),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("planned_at", sa.String(40)),
        sa.Column("finished_at", sa.String(40)),
        sa.Column("worker", sa.String(200)),
    )
    return campaigns, runs


def _retry(fn):
    """Run one transaction, retrying on lock contention (several campaign workers on one SQLite file)."""
    for attempt in range(_ATTEMPTS):
        try:
            return fn()
        except (sa.exc.OperationalError, sa.exc.InternalError) as e:
            msg = str(getattr(e, "orig", e)).lower()
            if attempt == _ATTEMPTS - 1 or not any(w in msg for w in ("locked", "busy", "deadlock", "serialize")):
                raise
            time.sleep(min(5.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


class Ledger:
    """The campaign tables of one store (`collect.store.Store`)."""

    def __init__(self, store):
        self.store = store
        self.engine = store.engine
        self._metadata = sa.MetaData()
        self.campaigns, self.runs_table = _tables(self._metadata)
        _retry(lambda: self._metadata.create_all(self.engine, checkfirst=True))

    def register(self, campaign_id: str, settings: dict, check_keys: Iterable[str] = ()) -> dict:
        """Record a new campaign, or return the stored settings of an existing one after checking `check_keys`
        agree (a resumed campaign must be the same campaign)."""
        c = self.campaigns

        def tx():
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(c.c.settings).where(c.c.campaign_id == campaign_id)).first()
                if row is None:
                    conn.execute(c.insert().values(campaign_id=campaign_id, created_at=_now(),
                                                   settings=json.dumps(settings, sort_keys=True, default=str)))
                    return settings
                return json.loads(row[0])

        stored = _retry(tx)
        for key in check_keys:
            if json.dumps(stored.get(key), sort_keys=True, default=str) != json.dumps(settings.get(key), sort_keys=True, default=str):
                raise InputError(f"campaign {campaign_id!r} exists in this store with {key} = {stored.get(key)!r}, not "
                                 f"{settings.get(key)!r}; use another --campaign id or the original settings")
        return stored

    def run_rows(self, campaign_id: str) -> pd.DataFrame:
        """Every run of a campaign, in selection order (`config` and `row_hashes` decoded)."""
        r = self.runs_table
        with self.engine.connect() as conn:
            res = conn.execute(sa.select(*[r.c[f] for f in RUN_FIELDS]).where(r.c.campaign_id == campaign_id)
                               .order_by(r.c.seq)).fetchall()
        df = pd.DataFrame([tuple(r) for r in res], columns=list(RUN_FIELDS), dtype=object)
        df["config"] = [json.loads(v) for v in df["config"]]
        df["row_hashes"] = [json.loads(v) if isinstance(v, str) and v else [] for v in df["row_hashes"]]
        for col in ("seq", "iteration"):
            df[col] = df[col].astype("int64")
        for col in ("n_rows", "cost_gpu_h", "score"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        return df

    def plan(self, campaign_id: str, runs: list[dict]) -> None:
        """Commit a batch of runs as `planned` before any of them is dispatched."""
        if not runs:
            return
        now = _now()
        rows = [{"campaign_id": campaign_id, "config_hash": r["config_hash"], "seq": int(r["seq"]),
                 "iteration": int(r["iteration"]), "state": "planned", "run_id": r["run_id"], "status": None,
                 "n_rows": None, "row_hashes": None, "cost_gpu_h": _float(r.get("cost_gpu_h")),
                 "score": _float(r.get("score")), "config": json.dumps(r["config"], sort_keys=True, default=str),
                 "planned_at": now, "finished_at": None, "worker": None} for r in runs]

        def tx():
            with self.engine.begin() as conn:
                conn.execute(self.runs_table.insert(), rows)

        _retry(tx)

    def finish(self, campaign_id: str, config_hash: str, status: str, row_hashes: list[str], worker: str = "") -> None:
        """Mark a run done with its outcome (its rows are already in the store)."""
        r = self.runs_table

        def tx():
            with self.engine.begin() as conn:
                conn.execute(r.update().where((r.c.campaign_id == campaign_id) & (r.c.config_hash == config_hash))
                             .values(state="done", status=status, n_rows=len(row_hashes),
                                     row_hashes=json.dumps(list(row_hashes)), finished_at=_now(), worker=worker[:200]))

        _retry(tx)

    def rows_by_run_id(self, run_id: str) -> pd.DataFrame:
        """Stored measurement rows stamped with `run_id` (a planned run whose rows reached the store)."""
        t = self.store.table
        return self._read(sa.select(t).where(t.c.run_id == run_id).order_by(t.c.id))

    def rows_by_hash(self, hashes: list[str]) -> pd.DataFrame:
        """Stored measurement rows by content hash, in the order given (schema frame with `content_hash`)."""
        t = self.store.table
        parts = [self._read(sa.select(t).where(t.c.content_hash.in_(hashes[i:i + 500])))
                 for i in range(0, len(hashes), 500)]
        parts = [p for p in parts if len(p)]
        if not parts:
            return self._read(None)
        df = pd.concat(parts, ignore_index=True)
        order = {h: i for i, h in enumerate(hashes)}
        return df.iloc[np.argsort([order.get(h, len(order)) for h in df["content_hash"]], kind="stable")] \
            .reset_index(drop=True)

    def _read(self, stmt) -> pd.DataFrame:
        if stmt is None:
            return conform(pd.DataFrame(columns=list(COLUMNS))).assign(content_hash=pd.Series(dtype=object))
        with self.engine.connect() as conn:
            res = conn.execute(stmt)
            rows, names = res.fetchall(), list(res.keys())
        df = pd.DataFrame(rows, columns=names)
        hashes = df["content_hash"].astype(object) if len(df) else pd.Series(dtype=object)
        out = conform(df.drop(columns=[c for c in ("id", "content_hash") if c in df.columns]))[list(COLUMNS)]
        out["content_hash"] = hashes.to_numpy()
        return out

    def campaign_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(self.campaigns.c.campaign_id))]


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None
