"""`layoutcast collect --backend torch` runs real forward passes and writes rows to a store as they finish."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_collect_torch_cli_writes_store_rows(tmp_path):
    store = tmp_path / "m.sqlite"
    r = subprocess.run([sys.executable, "-m", "predictor", "collect", "--backend", "torch", "--model", "tiny-llama",
                        "--device", "cpu", "--measure", "step", "--batches", "1,2", "--contexts", "32",
                        "--prefill-tokens", "16", "--layers-timed", "2", "--replays", "3", "--warmup", "1",
                        "--store", str(store), "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    from collect.store import Store

    rows = Store(str(store)).read(kind="step")
    assert len(rows) == 3  # two decode batches, one prefill chunk
    assert set(rows["phase"]) == {"decode", "prefill"}
    assert (rows["layer_ms"] > 0).all() and (rows["source"] == "torch-probe").all()
