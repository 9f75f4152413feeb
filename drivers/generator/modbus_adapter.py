"""Every pymodbus call the project makes, in one file: its API changes between minor releases (3.10
renamed `slave=` to `device_id=`, 3.12 began replacing the server datastore), so an upgrade touches
this file only. pymodbus is pinned exactly in setup.cfg; this module is imported only when a Modbus
generator is configured or simulated, so a box without one never loads it (its RSS budget is thin).

The client side reads holding registers and nothing else: the agent never writes a controller
register (BRIEF §8) -- there is no write call here to reach for. The server side exists for the
simulator and the tests: a real pymodbus server that refuses and counts every write request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

# pymodbus logs every failed request at error level, with frame bytes: a controller that is off for a
# night would flood journald, and a reply is hostile input that is never logged raw. Our driver counts
# and reports failures itself.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

MAX_REGISTERS = 125  # the protocol's limit for one read (function 3)


class LinkError(Exception):
    """A failed read. `kind`: "timeout" (silence), "crc" (bytes came back but no valid frame: noise on
    the RS-485 pair, a wrong baud rate), "exception" (the controller refused the request: a register it
    does not have), "connect" (the port or host cannot be opened)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(kw_only=True)
class LinkSettings:
    transport: str  # "rtu" | "tcp"
    unit: int
    device: str = ""
    baud: int = 9600
    parity: str = "N"
    host: str = ""
    port: int = 502
    timeout_s: float = 1.0


class ControllerLink:
    """A sync pymodbus client that only reads holding registers."""

    def __init__(self, settings: LinkSettings):
        self.settings = settings
        self._received = 0  # bytes seen since the last request started (tells a garbled reply from silence)
        if settings.transport == "rtu":
            self._client = ModbusSerialClient(
                settings.device, framer=FramerType.RTU, baudrate=settings.baud, parity=settings.parity,
                bytesize=8, stopbits=1, timeout=settings.timeout_s, retries=0, trace_packet=self._trace,
            )
        else:
            self._client = ModbusTcpClient(
                settings.host, port=settings.port, timeout=settings.timeout_s, retries=0,
                trace_packet=self._trace, reconnect_delay=0.0,
            )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._received += len(data)
        return data

    def read(self, address: int, count: int) -> list[int]:
        """`count` holding registers from `address` (0-based protocol address), as 16-bit integers."""
        if not 1 <= count <= MAX_REGISTERS or not 0 <= address <= 0xFFFF - count + 1:
            raise ValueError(f"read of {count} registers at {address} is outside the protocol")
        self._received = 0
        try:
            if not self._client.connected and not self._client.connect():
                raise LinkError("connect", f"cannot open {self.where()}")
            reply = self._client.read_holding_registers(address, count=count, device_id=self.settings.unit)
        except LinkError:
            raise
        except ConnectionException:
            self.close()
            raise LinkError("connect", f"cannot open {self.where()}") from None
        except ModbusIOException:
            kind = "crc" if self._received and self.settings.transport == "rtu" else "timeout"
            if self.settings.transport == "tcp":
                self.close()  # a late reply must not be taken for the next request's
            raise LinkError(kind, f"no valid reply from {self.where()} ({'garbled' if kind == 'crc' else 'timeout'})") \
                from None
        except (ModbusException, OSError) as err:
            self.close()
            raise LinkError("connect", f"{self.where()}: {type(err).__name__}") from None
        if reply.isError():
            code = getattr(reply, "exception_code", 0)
            raise LinkError("exception", f"{self.where()} refused the read of {count} at {address} (code {code})")
        registers = list(getattr(reply, "registers", []) or [])
        if len(registers) != count:  # a short reply: never pad it, never shift what follows
            raise LinkError("crc", f"{self.where()} answered {len(registers)} registers for {count}")
        return [int(r) & 0xFFFF for r in registers]

    def where(self) -> str:
        s = self.settings
        return f"{s.device} unit {s.unit}" if s.transport == "rtu" else f"{s.host}:{s.port} unit {s.unit}"

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken link must not raise
            pass


# -- the server side, for the simulator and the tests ----------------------------------------------
_WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})


class RegisterServer:
    """A real pymodbus server (TCP on loopback, or RTU on a serial device such as a pty) answering
    holding-register reads from `registers(address) -> int`, on its own thread and event loop. Every
    write request is refused (ILLEGAL FUNCTION) and counted in `writes`."""

    def __init__(self, registers: Callable[[int], int], *, size: int, unit: int, tcp: tuple[str, int] | None = None,
                 device: str = "", baud: int = 9600, parity: str = "N"):
        self.registers = registers
        self.size = size
        self.unit = unit
        self.tcp = tcp
        self.device = device
        self.baud = baud
        self.parity = parity
        self.writes = 0
        self.reads = 0
        self.silent = False  # True: answer nothing (a controller switched off, a cut cable)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="modbus-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10.0):
            raise RuntimeError("the Modbus server did not start")
        if self._error is not None:
            raise RuntimeError(f"the Modbus server did not start: {self._error}")

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
        self._thread.join(5.0)

    @property
    def port(self) -> int:
        """The TCP port it listens on (an ephemeral one when asked for port 0)."""
        server = self._server.transport  # an asyncio Server
        return server.sockets[0].getsockname()[1]

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current: list[int], set_values: list | None) -> Any:
        from pymodbus.constants import ExcCodes

        if set_values is not None or function_code in _WRITE_CODES:
            self.writes += 1
            return ExcCodes.ILLEGAL_FUNCTION
        if self.silent:
            return ExcCodes.DEVICE_BUSY  # replaced below by no reply at all
        self.reads += 1
        for i in range(count):
            current[address - start_address + i] = self.registers(address + i) & 0xFFFF
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self.silent:
            return b""  # a switched-off controller: the request goes unanswered
        return data

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # noqa: BLE001 - reported to start()
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        # The server side is imported here, not at the top: a box polling a controller never loads it.
        from pymodbus.server import ModbusSerialServer, ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        self._loop = asyncio.get_running_loop()
        device = SimDevice(self.unit, simdata=[SimData(0, count=self.size, values=0, datatype=DataType.REGISTERS)],
                           action=self._action)
        if self.tcp is not None:
            self._server = ModbusTcpServer(device, address=self.tcp, trace_packet=self._trace_packet)
        else:
            self._server = ModbusSerialServer(device, port=self.device, baudrate=self.baud, parity=self.parity,
                                              trace_packet=self._trace_packet)
        await self._server.serve_forever(background=True)
        self._ready.set()
        await self._server.serving
