"""Cost of polling a genset controller: CPU per poll cycle of the Modbus generator driver against a bare
pymodbus read loop of the same registers, measured in the same run; and the agent's footprint with a
Modbus generator configured.

The controller is a real pymodbus server (drivers/generator/modbus_sim.py) in a separate process, so
its CPU is not counted: TCP on loopback, and RTU over a pty pair. Ours: `ModbusGenerator.poll()` --
the reads, validation, alarms, fuel accounting and the reading on the bus. Baseline: the same
`read_holding_registers` calls on a bare pymodbus client, nothing else. The default poll is every 5 s,
so the figure that matters on a Pi is CPU per poll / 5 s.

The footprint: the agent (host driver, real host) polling the controller process at default rates,
against the same agent without a generator, in the same run; the difference is what a Modbus generator
costs a box. The import cost of the Modbus source alone is measured too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import env_seconds, measure_process, python, scratch

POLL_S = 5.0

_SERVE = """
import sys, threading, time, pathlib
from drivers.generator.modbus_adapter import RegisterServer
from drivers.generator.modbus_sim import REGISTERS, Genset, PtyPair, play
kind, transport, folder = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
genset = Genset(kind)
play(genset, 85.0)  # running down after the low-oil shutdown: two alarms active, every field set
if transport == "tcp":
    server = RegisterServer(genset.register, size=REGISTERS, unit=1, tcp=("127.0.0.1", 0)); server.start()
    print(server.port, flush=True)
else:
    pty = PtyPair(folder)
    server = RegisterServer(genset.register, size=REGISTERS, unit=1, device=pty.server_path, baud=115200)
    server.start()
    print(pty.client_path, flush=True)
threading.Event().wait()
"""

_IMPORT_COST = """
import json, psutil, sys
p = psutil.Process()
import agent.runtime, drivers.generator, drivers.generator.gpio_source
before = p.memory_info().rss
import drivers.generator.modbus_source, drivers.generator.modbus_adapter
print(json.dumps({"before_mb": before / 2**20, "after_mb": p.memory_info().rss / 2**20}))
"""


def main() -> int:
    polls = int(env_seconds("BOXTEL_BENCH_MODBUS_POLLS", 300))
    folder = Path(tempfile.mkdtemp(prefix="boxtel-bench-modbus-"))
    print(f"{polls} poll cycles per case; the controller is a pymodbus server in another process")
    for kind in ("dse", "comap"):
        for transport in ("tcp", "rtu"):
            _case(kind, transport, polls, folder)
    cost = json.loads(subprocess.run([python(), "-c", _IMPORT_COST], capture_output=True, text=True,
                                     check=True).stdout)
    print(f"import of the Modbus source (pymodbus client side): RSS {cost['before_mb']:.1f} -> "
          f"{cost['after_mb']:.1f} MB (+{cost['after_mb'] - cost['before_mb']:.1f} MB); a box without "
          "[generator] source = \"modbus\" never loads it")
    return _footprint()


def _case(kind: str, transport: str, polls: int, folder: Path) -> None:
    server = subprocess.Popen([python(), "-c", _SERVE, kind, transport, str(folder)], stdout=subprocess.PIPE,
                              text=True)
    try:
        where = server.stdout.readline().strip()
        driver, bus = _driver(kind, transport, where, folder)
        driver.open()
        blocks = driver.controller.blocks()
        regs: dict[int, int] = {}
        for address, count in blocks:
            regs.update(zip(range(address, address + count), driver.link.read(address, count), strict=True))
        blocks += driver.controller.more_blocks(regs)
        ours = _per_cycle(polls, lambda: (driver.poll(time.monotonic()), _drain(bus)))
        driver.stop()
        client = _bare_client(transport, where)
        bare = _per_cycle(polls, lambda: [client.read_holding_registers(a, count=n, device_id=1) for a, n in blocks])
        client.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    registers = sum(n for _, n in blocks)
    print(f"{kind:5} {transport}: {len(blocks)} reads, {registers} registers per poll")
    print(f"  bare pymodbus loop:  CPU {bare[0] * 1000:6.2f} ms per cycle, wall {bare[1] * 1000:6.2f} ms")
    print(f"  boxtel poll():       CPU {ours[0] * 1000:6.2f} ms per cycle, wall {ours[1] * 1000:6.2f} ms")
    print(f"  ratio: CPU x{ours[0] / bare[0]:.2f} of the bare loop; at one poll per {POLL_S:.0f} s: "
          f"{100 * ours[0] / POLL_S:.3f} % of a core")


def _driver(kind: str, transport: str, where: str, folder: Path):
    from agent.bus import Bus
    from agent.clock import Clock
    from agent.schema import build
    from drivers.base import DriverContext
    from drivers.generator import GeneratorDriver

    table = {"source": "modbus", "controller": kind, "transport": transport, "tank_litres": 400.0}
    table.update({"host": "127.0.0.1", "port": int(where)} if transport == "tcp" else {"device": where, "baud": 115200})
    config = build(GeneratorDriver.Config, table, where="generator", base_dir=folder, file="bench.toml")
    bus = Bus()
    state = folder / f"state-{kind}-{transport}"
    state.mkdir(exist_ok=True)
    ctx = DriverContext("generator", bus=bus, clock=Clock(lambda: False), state_dir=state, simulate=False)
    return GeneratorDriver(config, ctx), bus


def _bare_client(transport: str, where: str):
    # The baseline is pymodbus itself: this is the one place outside modbus_adapter.py that calls it.
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient

    if transport == "tcp":
        client = ModbusTcpClient("127.0.0.1", port=int(where), timeout=1.0, retries=0)
    else:
        client = ModbusSerialClient(where, baudrate=115200, timeout=1.0, retries=0)
    client.connect()
    return client


def _drain(bus) -> None:
    while bus.get_nowait() is not None:
        pass


def _per_cycle(cycles: int, work) -> tuple[float, float]:
    """(CPU s, wall s) per cycle, best of three runs."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(cycles):
            work()
        run = ((time.process_time() - cpu) / cycles, (time.perf_counter() - wall) / cycles)
        best = min(best, run)
    return best


def _footprint() -> int:
    """The agent polling a controller in another process (no simulation in the agent) against the same
    agent without a generator, in the same run: what configuring a Modbus generator costs a box."""
    from agent.devbroker import Broker
    from tests.support import toml_dumps

    seconds = env_seconds("BENCH_MODBUS_FOOTPRINT_S", 60.0)
    folder = scratch("modbus-footprint")
    server = subprocess.Popen([python(), "-c", _SERVE, "dse", "tcp", str(folder)], stdout=subprocess.PIPE, text=True)
    figures = {}
    try:
        port = int(server.stdout.readline())
        with Broker(folder / "broker") as broker:
            for name, generator in (("without a generator", None),
                                    ("with a Modbus generator", {"source": "modbus", "controller": "dse",
                                                                 "transport": "tcp", "host": "127.0.0.1",
                                                                 "port": port, "tank_litres": 400.0})):
                data = {"box": {"id": "bench-001", "state_dir": str(folder / "state")},
                        "mqtt": {"host": "127.0.0.1", "port": broker.port},
                        "diagnostics": {"socket": str(folder / "control.sock")}, "host": {}}
                if generator:
                    data["generator"] = generator
                path = folder / "bench.toml"
                path.write_text(toml_dumps(data))
                figures[name] = _measure_agent(path, folder, seconds)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
    for name, f in figures.items():
        print(f"agent (host driver only, real host) {name}: CPU {f['cpu_pct']:.3f} % of one core, "
              f"RSS {f['peak_rss_mb']:.1f} MB")
    delta = figures["with a Modbus generator"]["peak_rss_mb"] - figures["without a generator"]["peak_rss_mb"]
    print(f"a Modbus generator costs the agent +{delta:.1f} MB RSS; on the simulated box of bench/footprint "
          f"that is its figure + {delta:.1f} MB (the 35 MB target: bench/footprint)")
    return 0


def _measure_agent(path: Path, folder: Path, seconds: float) -> dict[str, float]:
    agent = subprocess.Popen([python(), "-m", "agent", "run", "-c", str(path)], stdout=subprocess.DEVNULL,
                             stderr=open(folder / "agent.log", "ab"))
    try:
        time.sleep(5)
        figures = measure_process(agent.pid, seconds)
        if agent.poll() is not None:
            raise SystemExit(f"the agent exited ({agent.returncode}); see {folder / 'agent.log'}")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
    return figures


if __name__ == "__main__":
    sys.exit(main())
