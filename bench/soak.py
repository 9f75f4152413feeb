"""Memory flat for months (BRIEF §7): `boxtel run --simulate` at the demo's rates for `BENCH_SOAK_S`
(default 600 s) while its broker is stopped and started every 30 s.

RSS, threads and open fds are sampled every 15 s. After a warm-up (`BENCH_SOAK_WARMUP_S`, default one
scenario cycle) the RSS slope (least squares) is projected over the whole window: more than +2 MB fails,
and so does a thread or fd count that keeps climbing (the second half's peak above the first half's).
"""

from __future__ import annotations

import signal
import subprocess
import time
import tomllib

import psutil

from agent.devbroker import Broker
from bench.common import ROOT, env_seconds, python, scratch, verdict
from drivers.gpio_sim import CYCLE_S
from tests.support import toml_dumps

GROWTH_TARGET_MB = 2.0
SAMPLE_S = 15.0
BROKER_TOGGLE_S = 30.0
_COUNT_SLACK = 2  # threads/fds: paho's network thread and socket come and go with the link


def demo_config(folder, port: int) -> str:
    """config/simulate.toml (the demo's rates) with its own state dir, socket and broker port."""
    data = tomllib.loads((ROOT / "config" / "simulate.toml").read_text())
    data["box"]["state_dir"] = str(folder / "state")
    data["mqtt"].update(host="127.0.0.1", port=port)
    data["diagnostics"]["socket"] = str(folder / "control.sock")
    path = folder / "soak.toml"
    path.write_text(toml_dumps(data))
    return str(path)


def slope_per_s(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) pairs."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 0.0 if var == 0 else sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


def main() -> int:
    window_s = env_seconds("BENCH_SOAK_S", 600.0)
    warmup_s = min(env_seconds("BENCH_SOAK_WARMUP_S", CYCLE_S), window_s / 2)
    folder = scratch("soak")
    broker = Broker(folder / "broker").start()
    config = demo_config(folder, broker.port)
    log_path = folder / "agent.log"
    agent = subprocess.Popen([python(), "-m", "agent", "run", "-c", config],
                             stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    process = psutil.Process(agent.pid)
    samples: list[tuple[float, float, int, int]] = []  # t, RSS MB, threads, fds
    outages = 0
    try:
        start = time.monotonic()
        next_sample = start
        next_toggle = start + BROKER_TOGGLE_S
        while (now := time.monotonic()) - start < warmup_s + window_s:
            if agent.poll() is not None:
                print(f"the agent exited ({agent.returncode}); log: {log_path}")
                return 1
            if now >= next_toggle:
                if broker.process is None:
                    broker.start()
                else:
                    broker.stop()
                    outages += 1
                next_toggle += BROKER_TOGGLE_S
            if now >= next_sample:
                with process.oneshot():
                    samples.append((now - start, process.memory_info().rss / 2**20,
                                    process.num_threads(), process.num_fds()))
                next_sample += SAMPLE_S
            time.sleep(max(0.0, min(next_sample, next_toggle) - time.monotonic()))
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        broker.stop()
    steady = [s for s in samples if s[0] >= warmup_s]
    slope = slope_per_s([(t, rss) for t, rss, _, _ in steady])
    growth = slope * window_s
    half = len(steady) // 2
    first, second = steady[:half], steady[half:]
    threads_ok = max(s[2] for s in second) <= max(s[2] for s in first) + _COUNT_SLACK
    fds_ok = max(s[3] for s in second) <= max(s[3] for s in first) + _COUNT_SLACK
    growth_ok = growth <= GROWTH_TARGET_MB
    connects = log_path.read_text(errors="replace").count("connected to ")
    print(f"soak: {window_s:.0f} s after {warmup_s:.0f} s warm-up, demo rates on simulated hardware, "
          f"broker stopped {outages} times ({BROKER_TOGGLE_S:.0f} s down / {BROKER_TOGGLE_S:.0f} s up), "
          f"{connects} connects")
    print(f"RSS  start {steady[0][1]:.2f} MB, end {steady[-1][1]:.2f} MB, peak {max(s[1] for s in steady):.2f} MB; "
          f"slope {slope * 60:+.4f} MB/min = {growth:+.2f} MB over the window")
    quarters = [steady[min(len(steady) - 1, i * len(steady) // 4)][1] for i in range(4)] + [steady[-1][1]]
    print("RSS at each quarter of the window: " + " -> ".join(f"{q:.2f}" for q in quarters) + " MB")
    print(f"threads {min(s[2] for s in steady)}..{max(s[2] for s in steady)}, "
          f"fds {min(s[3] for s in steady)}..{max(s[3] for s in steady)} ({len(steady)} samples)")
    print(f"target RSS growth <= +{GROWTH_TARGET_MB} MB over the window: {verdict(growth_ok)}; "
          f"threads flat: {verdict(threads_ok)}; fds flat: {verdict(fds_ok)}")
    print(f"(log: {log_path})")
    return 0 if growth_ok and threads_ok and fds_ok else 1
