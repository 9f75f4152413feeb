"""Footprint of `boxtel run --simulate` at default rates (BRIEF §7: RSS <= 35 MB, CPU <= 0.5 % of a core).

Baseline, measured in the same run: a bare Python process holding one paho MQTT connection to the same
broker and doing nothing else -- the floor any Python MQTT agent starts from.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import tomllib

from agent.devbroker import Broker
from bench.common import ROOT, env_seconds, measure_process, python, scratch, verdict
from drivers import REGISTRY, driver_class
from drivers.gpio_sim import CYCLE_S
from tests.support import toml_dumps

RSS_TARGET_MB = 35.0
CPU_TARGET_PCT = 0.5

_BASELINE = """
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline", protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", int(sys.argv[1]), keepalive=60)
c.loop_start()
threading.Event().wait()
"""


def default_rate_config(folder, port: int) -> str:
    """The drivers of config/simulate.toml with only their required keys (pins, names): every rate at
    its default, not the demo's fast settings."""
    demo = tomllib.loads((ROOT / "config" / "simulate.toml").read_text())
    data = {
        "simulate": True,
        "box": {"id": "bench-001", "state_dir": str(folder / "state")},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "diagnostics": {"socket": str(folder / "control.sock")},
    }
    for section in REGISTRY:
        if section in demo:
            required = _required_keys(driver_class(section).Config)
            tables = demo[section]
            required |= _REQUIRED_BY_SOURCE.get(section, set())
            if isinstance(tables, list):
                data[section] = [{k: v for k, v in t.items() if k in required} for t in tables]
            else:
                data[section] = {k: v for k, v in tables.items() if k in required}
    path = folder / "bench.toml"
    path.write_text(toml_dumps(data))
    return str(path)


# Keys a section's validate() requires for its default source, though the schema gives them a default
# (the generator's `running` is required with source = "gpio" only).
_REQUIRED_BY_SOURCE = {"generator": {"running"}}


def _required_keys(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def main() -> int:
    # Two windows of one scenario cycle (drivers/gpio_sim.CYCLE_S): its first minute plays every kind of
    # event (doors, generator, tank, a chattering wire) -- far busier than a real box -- the second is
    # steady state. The verdict takes the busier one.
    seconds = env_seconds("BENCH_FOOTPRINT_S", CYCLE_S / 2)
    folder = scratch("footprint")
    with Broker(folder / "broker") as broker:
        config = default_rate_config(folder, broker.port)
        agent = subprocess.Popen([python(), "-m", "agent", "run", "-c", config],
                                 stdout=subprocess.DEVNULL, stderr=open(folder / "agent.log", "wb"))
        baseline = subprocess.Popen([python(), "-c", _BASELINE, str(broker.port)])
        try:
            # let both settle (imports, first samples) before measuring
            subprocess.run(["sleep", "5"], check=True)
            windows = [measure_process(agent.pid, seconds), measure_process(agent.pid, seconds)]
            base_figures = measure_process(baseline.pid, min(seconds, 20.0))
            died = agent.poll()
        finally:
            for process in (agent, baseline):
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
    if died is not None:  # a dead agent measures 0 MB: never a pass
        print(f"FAIL: the agent exited ({died}) during the run; see {folder / 'agent.log'}")
        return 1
    peak_rss = max(w["peak_rss_mb"] for w in windows)
    worst_cpu = max(w["cpu_pct"] for w in windows)
    rss_ok = peak_rss <= RSS_TARGET_MB
    cpu_ok = worst_cpu <= CPU_TARGET_PCT
    for name, figures in zip(("scenario's busy minute", "steady state"), windows, strict=True):
        print(f"agent    {name} ({figures['wall_s']:.0f} s): CPU {figures['cpu_pct']:.3f} % of one core, "
              f"RSS {figures['rss_mb']:.1f} MB (peak {figures['peak_rss_mb']:.1f} MB)")
    print(f"baseline (bare paho connection): CPU {base_figures['cpu_pct']:.3f} %, RSS {base_figures['rss_mb']:.1f} MB")
    print(f"ratio agent/baseline: RSS x{peak_rss / base_figures['rss_mb']:.2f}")
    print(f"target RSS <= {RSS_TARGET_MB} MB: {verdict(rss_ok)}; "
          f"CPU <= {CPU_TARGET_PCT} % (the busier window, {worst_cpu:.3f} %): {verdict(cpu_ok)}")
    print(f"(log: {folder / 'agent.log'})")
    return 0 if rss_ok and cpu_ok else 1
