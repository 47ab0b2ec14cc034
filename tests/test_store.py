"""The measurement store on SQLite and (when LAYOUTCAST_TEST_PG_URL is set) a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import uuid

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

import collect.store as store_mod
from collect.store import AppendResult, Store, content_hashes, default_store_url, driver_url, normalize_url
from features.errors import InputError
from features.schema import COLUMNS, conform
from features.specs import Layout

PG_URL = os.environ.get("LAYOUTCAST_TEST_PG_URL")


def make_rows(n: int, seed: int = 0, source: str = "synthetic") -> pd.DataFrame:
    """`n` distinct measurement rows of all three kinds, with every dtype of the schema exercised."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["serving", "step", "op"])[np.arange(n) % 3]
    tp = rng.choice([1, 2, 4, 8], n)
    return pd.DataFrame({
        "kind": kinds, "source": source, "engine": rng.choice(["vllm", "trtllm", "torch"], n),
        "engine_version": "1.0", "measured_at": "2026-11-26T10:00:00", "status": rng.choice(["ok", "ok", "oom"], n),
        "model": rng.choice(["llama-3.1-8b", "qwen2.5-32b"], n), "weight_dtype": "bf16",
        "gpu": rng.choice(["h200", "h100-sxm"], n), "tp": tp, "dp": 8 // tp, "attention_dp": rng.random(n) < 0.2,
        "isl": rng.integers(64, 4096, n).astype(float), "osl": rng.integers(64, 8192, n).astype(float),
        "isl_dist": "fixed:128", "concurrency": rng.integers(0, 256, n),
        "request_rate": np.where(kinds == "serving", 1.5, np.nan), "batch": rng.integers(1, 512, n),
        "context": rng.random(n) * 1e4, "phase": np.where(kinds == "op", None, "decode"),
        "op": np.where(kinds == "op", "gemm", None),
        "output_throughput": np.where(kinds == "serving", rng.random(n) * 1e4, np.nan),
        "tpot_ms": np.where(kinds == "serving", rng.random(n) * 50, np.nan),
        "layer_ms": np.where(kinds == "step", rng.random(n), np.nan),
        "op_ms": np.where(kinds == "op", rng.random(n), np.nan),
        "detail": [f'{{"row":{i},"seed":{seed}}}' for i in range(n)],
        "run_id": f"test-{seed}",
    })


def _pg_database():
    """A fresh database on the test PostgreSQL server; yields its URL and drops it afterwards."""
    admin = sa.create_engine(driver_url(PG_URL), isolation_level="AUTOCOMMIT")
    name = f"lc_store_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'measurements.sqlite'}"
        return
    if not PG_URL:
        pytest.skip("LAYOUTCAST_TEST_PG_URL is not set (no PostgreSQL server to test against)")
    yield from _pg_database()


def test_round_trip_keeps_every_value_and_dtype(store_url):
    rows = make_rows(300)
    with Store(store_url) as s:
        assert s.append(rows) == AppendResult(inserted=300, duplicates=0)
        back = s.read()
    expected = conform(rows)[list(COLUMNS)]
    assert list(back.columns) == list(COLUMNS)
    assert back.dtypes.to_dict() == expected.dtypes.to_dict()
    pd.testing.assert_frame_equal(back, expected)
    pd.testing.assert_frame_equal(back, conform(back))  # reads come back in the schema


def test_identical_rows_are_stored_once(store_url):
    rows = make_rows(200, seed=1)
    with Store(store_url) as s:
        assert s.append(rows).inserted == 200
        assert s.append(rows) == AppendResult(inserted=0, duplicates=200)
        overlap = pd.concat([rows.iloc[150:], make_rows(100, seed=2)], ignore_index=True)
        assert s.append(overlap) == AppendResult(inserted=100, duplicates=50)
        assert s.count() == 300
        # a repeat measurement with another value is a new row; run_id/measured_at alone do not make one
        changed = rows.iloc[[0]].assign(tpot_ms=999.0, run_id="other", measured_at="2027-01-01")
        assert s.append(changed).inserted == 1
        assert s.append(rows.iloc[[1]].assign(run_id="other", measured_at="2027-01-01")).inserted == 0


def test_filters_count_and_summary(store_url):
    rows = make_rows(240, seed=3)
    with Store(store_url) as s:
        s.append(rows)
        h100 = s.read(gpu="h100")  # an alias resolves to the catalog name
        assert len(h100) == (rows["gpu"] == "h100-sxm").sum() and set(h100["gpu"]) == {"h100-sxm"}
        sel = s.read(kind=["serving", "op"], status="ok", engine="vllm")
        want = rows[rows["kind"].isin(["serving", "op"]) & (rows["status"] == "ok") & (rows["engine"] == "vllm")]
        assert len(sel) == len(want) == s.count(kind=["serving", "op"], status="ok", engine="vllm")
        assert s.read(source="nothing-here").empty and s.count(source="nothing-here") == 0
        assert len(s.read(limit=7)) == 7
        summary = s.summary()
        assert dict(zip(summary["kind"]["kind"], summary["kind"]["rows"])) == rows["kind"].value_counts().to_dict()
        assert summary["layout"]["rows"].sum() == 240
        want_layouts = pd.Series([Layout(int(t), 1, int(d), 1, bool(a)).label() for t, d, a in
                                  zip(rows["tp"], rows["dp"], rows["attention_dp"])]).value_counts().to_dict()
        assert dict(zip(summary["layout"]["layout"], summary["layout"]["rows"])) == want_layouts
        with pytest.raises(InputError, match="unknown store filter"):
            s.count(layout="TP8")


def test_bad_rows_raise_and_leave_the_store_unchanged(store_url):
    with Store(store_url) as s:
        s.append(make_rows(30, seed=4))
        with pytest.raises(InputError, match="invalid kind"):
            s.append(make_rows(5, seed=5).assign(kind="benchmark"))
        with pytest.raises(InputError, match="invalid status"):
            s.append(make_rows(5, seed=5).assign(status="crashed"))
        with pytest.raises(InputError, match="no 'kind'"):
            s.append(make_rows(5, seed=5).drop(columns="kind"))
        assert s.count() == 30


def test_a_failure_inside_append_stores_nothing(store_url, monkeypatch):
    """One append is one transaction: an error after some batches were written rolls all of them back."""
    monkeypatch.setattr(store_mod, "_SQLITE_BATCH_ROWS", 100)
    calls = {"n": 0}
    real = Store._insert_batch

    def failing(self, conn, batch, names):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash in the middle of a batch")
        return real(self, conn, batch, names)

    with Store(store_url) as s:
        s.append(make_rows(50, seed=6))
        monkeypatch.setattr(Store, "_insert_batch", failing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            s.append(make_rows(500, seed=7))
        monkeypatch.setattr(Store, "_insert_batch", real)
        assert s.count() == 50
        assert s.append(make_rows(500, seed=7)).inserted == 500


def _writer(url: str, seeds: list[int], start, done) -> None:
    """Child process: wait for the start signal, then append overlapping batches in several transactions."""
    start.wait(30)
    with Store(url) as s:
        for seed in seeds:
            s.append(make_rows(400, seed=seed))
    done.put(os.getpid())


def test_concurrent_writers_lose_no_rows(store_url):
    ctx = mp.get_context("fork")
    Store(store_url).close()  # create the schema first, as a campaign's first worker would
    start, done = ctx.Event(), ctx.Queue()
    seeds_a, seeds_b = [10, 11, 12, 13], [12, 13, 14, 15]  # seeds 12 and 13 are appended by both
    procs = [ctx.Process(target=_writer, args=(store_url, seeds, start, done)) for seeds in (seeds_a, seeds_b)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(store_url) as s:
        back = s.read()
    expected = pd.concat([make_rows(400, seed=k) for k in range(10, 16)], ignore_index=True)
    assert len(back) == len(expected) == 2400
    assert sorted(content_hashes(back)) == sorted(content_hashes(conform(expected)))


class _SignallingStore(Store):
    """A store that tells the parent when its first batch is written, while the transaction is still open."""

    started = None

    def _insert_batch(self, conn, batch, names):
        n = super()._insert_batch(conn, batch, names)
        self.started.set()
        return n


def _doomed_writer(url: str, started) -> None:
    store_mod._SQLITE_BATCH_ROWS = 200
    _SignallingStore.started = started
    s = _SignallingStore(url)
    s.append(make_rows(60_000, seed=99))  # many batches: the parent kills us before the commit


def test_killed_writer_leaves_none_or_all_of_its_batch(store_url):
    ctx = mp.get_context("fork")
    with Store(store_url) as s:
        s.append(make_rows(100, seed=20))
    started = ctx.Event()
    child = ctx.Process(target=_doomed_writer, args=(store_url, started))
    child.start()
    assert started.wait(120), "the writer never started its transaction"
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    with Store(store_url) as s:
        n = s.count()
        assert n in (100, 100 + 60_000)
        assert n == 100  # the kill came before the commit (many batches remained)
        assert len(s.read()) == n
        assert s.append(make_rows(50, seed=21)).inserted == 50  # still writable (locks released, WAL recovered)
        assert s.count() == 150


def test_schema_version_is_checked_on_open(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    Store(url).close()
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.exec_driver_sql("UPDATE layoutcast_meta SET value = '999' WHERE key = 'schema_version'")
    eng.dispose()
    with pytest.raises(InputError, match="schema version 999"):
        Store(url)


def test_files_that_are_not_stores_give_one_clear_error(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(InputError, match="cannot open store"):
        Store(str(garbage))
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE measurements (x INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(InputError, match="not a layoutcast store"):
        Store(str(foreign))
    with pytest.raises(InputError, match="malformed store URL"):
        normalize_url("postgresql://user@host:notaport/db")


def test_default_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYOUTCAST_STORE", str(tmp_path / "sub" / "env.sqlite"))
    assert default_store_url() == f"sqlite:///{tmp_path / 'sub' / 'env.sqlite'}"
    with Store() as s:
        s.append(make_rows(3))
    assert (tmp_path / "sub" / "env.sqlite").is_file()
    monkeypatch.delenv("LAYOUTCAST_STORE")
    assert default_store_url().endswith(".layoutcast/measurements.sqlite")


def test_content_hash_ignores_provenance_labels_but_not_values():
    rows = conform(make_rows(20, seed=30))
    base = content_hashes(rows)
    assert len(set(base)) == 20
    assert content_hashes(rows.assign(run_id="x", measured_at="2030-01-01", derived="op_ms")) == base
    bumped = rows.copy()
    bumped.loc[0, "batch"] = bumped.loc[0, "batch"] + 1
    assert content_hashes(bumped)[0] != base[0] and content_hashes(bumped)[1:] == base[1:]


def test_a_store_without_column_statistics_is_backfilled(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    rows = make_rows(60, seed=40)
    with Store(url) as s:
        s.append(rows)
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.exec_driver_sql(f"DROP TABLE {store_mod.STATS_TABLE_NAME}")
    eng.dispose()
    with Store(url) as s:
        pd.testing.assert_frame_equal(s.read(), conform(rows)[list(COLUMNS)])
        assert s.read(kind="op")["op_ms"].notna().all()


def test_reads_stay_exact_when_a_constant_column_starts_to_vary(store_url):
    """Columns with one value are filled from the column statistics: later appends must update them."""
    a = make_rows(90, seed=50).assign(engine="vllm", model="llama-3.1-8b", request_rate=2.5)
    b = make_rows(60, seed=51).assign(engine="trtllm", model=None, request_rate=np.nan)
    c = make_rows(30, seed=52).assign(source="other", engine="vllm")
    with Store(store_url) as s:
        s.append(a)
        pd.testing.assert_frame_equal(s.read(), conform(a)[list(COLUMNS)])
        s.append(b)
        s.append(c)
        both = conform(pd.concat([a, b, c], ignore_index=True))[list(COLUMNS)]
        pd.testing.assert_frame_equal(s.read(), both)
        ops = both[(both["source"] == "synthetic") & (both["kind"] == "op")].reset_index(drop=True)
        pd.testing.assert_frame_equal(s.read(source="synthetic", kind="op"), conform(ops))
        assert set(s.read(source="other")["engine"]) == {"vllm"}


def test_a_stream_of_frames_is_one_transaction(store_url):
    def frames(fail: bool):
        yield make_rows(100, seed=60)
        yield make_rows(100, seed=61)
        if fail:
            raise InputError("a malformed file part-way through an import")
        yield make_rows(100, seed=60).iloc[:50]  # repeats of the first frame

    with Store(store_url) as s:
        with pytest.raises(InputError, match="part-way"):
            s.append(frames(fail=True))
        assert s.count() == 0
        assert s.append(frames(fail=False)) == AppendResult(inserted=200, duplicates=50)
        assert s.append(iter([])) == AppendResult(0, 0)
        with pytest.raises(InputError, match="iterable"):
            s.append(42)
