"""Shared by the benchmarks: a private broker, a scratch folder, and process sampling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def scratch(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"boxtel-bench-{name}-"))


def python() -> str:
    return sys.executable


def measure_process(pid: int, seconds: float) -> dict[str, float]:
    """CPU % of one core and RSS (peak and end) of process `pid` over `seconds`."""
    process = psutil.Process(pid)
    start_cpu = process.cpu_times()
    start = time.monotonic()
    peak_rss = process.memory_info().rss
    while time.monotonic() - start < seconds:
        time.sleep(1.0)
        peak_rss = max(peak_rss, process.memory_info().rss)
    end_cpu = process.cpu_times()
    wall = time.monotonic() - start
    busy = (end_cpu.user - start_cpu.user) + (end_cpu.system - start_cpu.system)
    return {
        "cpu_pct": 100.0 * busy / wall,
        "rss_mb": process.memory_info().rss / 2**20,
        "peak_rss_mb": peak_rss / 2**20,
        "wall_s": wall,
    }


def stop(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a process this benchmark started, by its pid: SIGTERM (the agent says goodbye), then SIGKILL."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def env_seconds(name: str, default: float) -> float:
    return float(os.environ.get(name, default))
