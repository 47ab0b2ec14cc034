"""Child processes in their own process group, stopped as a group: engines leave no stray workers behind.

Engines (vLLM) start their own worker processes; starting the child with a new session puts all of them in one
process group, which `stop_group` ends with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def start_group(cmd: Sequence[str], env: dict[str, str], log_path: Path, cwd: str | None = None) -> subprocess.Popen:
    """Start `cmd` as the leader of a new process group, stdout and stderr appended to `log_path`."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, start_new_session=True)
    finally:
        log.close()  # the child holds its own descriptor


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """End the child's whole process group: SIGTERM, wait up to `grace_s`, then SIGKILL; reaps the leader."""
    pgid = proc.pid  # the leader of a new session: its pid is the group id
    if _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid):
            if proc.poll() is None:
                try:
                    proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.2)
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:  # pragma: no cover - a leader that survives SIGKILL
        pass


def wait_group(proc: subprocess.Popen, timeout_s: float) -> tuple[int | None, bool]:
    """Wait for the child to exit within `timeout_s`; returns (exit code, timed out). Always stops the group."""
    try:
        rc = proc.wait(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    stop_group(proc)
    return (proc.returncode if rc is None else rc), timed_out


def tail(path: Path, max_lines: int = 60) -> str:
    """The last `max_lines` lines of a text log ('' when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 200_000))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-max_lines:])
