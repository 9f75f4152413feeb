"""The control socket: local diagnostics for `boxtel status`, `watch`, `pins` and `doctor`.

A Unix socket in the runtime dir (never a network port), mode 0660 with a configurable group, served by
one small thread with a selector. The protocol is JSON lines: a request is one object `{"cmd": ...}`,
the answer one object with `"ok"`:

    {"cmd": "status"}               -> {"ok": true, "status": {...Agent.snapshot()...}}
    {"cmd": "pins"}                 -> {"ok": true, "pins": [{"input", "pin", "raw", "state", "edges_per_s"}]}
    {"cmd": "probe", "what": "gps"} -> {"ok": true, "gps": {...GPS driver status()...}}  (alias "doctor-gps")
    {"cmd": "watch"}                -> {"ok": true, "watching": true}, then one line per accepted message:
                                       {"type": "reading"|"event", "stream", "seq", "payload"} and
                                       {"type": "dropped", "count": n} when this client fell behind.

The core never waits for a client: what it accepts goes into a bounded queue per watching client, and a
client too slow to read loses lines (counted, and told so) rather than slowing the core.
"""

from __future__ import annotations

import collections
import contextlib
import grp
import json
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent import untrusted
from agent.errors import ConfigError, UnavailableError

log = logging.getLogger("boxtel.control")

MAX_CLIENTS = 8  # a technician or two; more is a runaway script (or clients that connect and never ask)
WATCH_QUEUE = 1000  # lines held for one slow watcher before they are dropped
MAX_REQUEST_BYTES = 4096
CORE_ANSWER_S = 5.0  # the core answers a status request within this, or it is reported stuck
_SEND_CHUNK = 64 * 1024


class ControlError(Exception):
    pass


class AgentNotRunning(UnavailableError):
    """No agent answers on the socket (missing, or refused: a stale file from a killed agent), and
    none holds the state dir (or the caller did not say which)."""


class AgentNotAnswering(UnavailableError):
    """An agent holds the state dir, but its control socket does not answer (gone, or its thread died)."""

    REMEDY = ("its socket was removed or its diagnostics failed (the agent's log says why: journalctl -u boxtel "
              "-e); systemctl restart boxtel brings them back")

    def __init__(self, summary: str):
        self.summary = summary
        super().__init__(f"{summary}: {self.REMEDY}")


# -- the server (inside the agent) -------------------------------------------------------------------
class ControlServer:
    def __init__(self, agent: Any, path: str, group: str = ""):
        self.agent = agent
        self.path = path
        self.group = group
        self.clients = 0
        self.watch_dropped = 0  # lines dropped for slow watchers since start
        self._lock = threading.Lock()
        self._watchers: list[_Client] = []
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file we made
        self._wake_r = self._wake_w = -1
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the socket and serve it; a problem is logged and the agent runs on without it."""
        try:
            self._bind()
        except (ControlError, OSError) as err:
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            log.error("control socket %s unavailable (%s): boxtel status/watch/pins will not work", self.path, why)
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.debug("control socket at %s", self.path)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=2.0)
        self._thread = None
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:  # never remove another agent's socket
                os.unlink(self.path)
        except OSError:
            pass
        with self._lock:
            self._watchers.clear()  # nothing more to feed; and never write to a closed (reused) fd
            wake_fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in wake_fds:
            os.close(fd)

    def snapshot(self) -> dict[str, Any]:
        return {"clients": self.clients, "watchers": len(self._watchers), "watch_dropped": self.watch_dropped}

    # -- called by the core's thread ---------------------------------------------------------------
    def feed(self, kind: str, stream: str, payload: dict[str, Any], seq: int) -> None:
        """A reading or event was accepted (it has its seq): hand it to every watcher, never waiting."""
        if not self._watchers:
            return
        item = (kind, stream, payload, seq)
        wake = False
        with self._lock:
            for client in self._watchers:
                if len(client.queue) >= WATCH_QUEUE:
                    client.dropped += 1
                    self.watch_dropped += 1
                    continue
                client.queue.append(item)
                wake = wake or len(client.queue) == 1
            if wake:
                self._wake()

    # -- binding -----------------------------------------------------------------------------------
    def _bind(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        # Made under a temporary name and renamed into place once listening, with its mode and group:
        # a client never finds a socket that refuses it or one with the wrong permissions.
        building = f"{self.path}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(building)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(building)
            listener.listen(64)  # a burst of clients queues here; beyond it, connect() waits (EAGAIN)
            os.chmod(building, 0o660)
            self._chgrp(building)
            os.replace(building, self.path)
        except OSError:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(building)
            raise
        listener.setblocking(False)
        st = os.lstat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._listener = listener

    def _chgrp(self, path: str) -> None:
        if not self.group:
            return
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            log.warning(
                "diagnostics.group %r does not exist: the control socket keeps group %s; create the group "
                "(groupadd %s) or fix diagnostics.group", self.group, _group_name(os.getegid()), self.group,
            )
            return
        try:
            os.chown(path, -1, gid)
        except OSError as err:
            # EPERM: the agent's user is not in the group. EINVAL: a user namespace (PrivateUsers=yes)
            # that does not map the group. Either way the socket stays usable by the agent's own group.
            log.warning(
                "cannot give the control socket to group %s (%s): members of group %s can use it; "
                "see docs/diagnostics.md", self.group, err.strerror, _group_name(os.getegid()),
            )

    # -- the control thread ------------------------------------------------------------------------
    def _serve(self) -> None:
        assert self._selector is not None and self._listener is not None
        try:
            while not self._stopping.is_set():
                for key, events in self._selector.select():
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj == self._wake_r:
                        self._drain_wake()
                    elif not key.data.closed:  # closed earlier in this round (room made for a newcomer)
                        self._service_guarded(key.data, events)
        except Exception:  # noqa: BLE001 - diagnostics must never take the agent down
            # The watchdog sees the thread gone (alive()) and stops pinging: systemd restarts the agent.
            log.exception("control socket thread failed; diagnostics are off until restart")
        finally:
            for key in list(self._selector.get_map().values()):
                if isinstance(key.data, _Client):
                    self._close(key.data)
            self._selector.close()
            self._listener.close()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        client = _Client(sock)
        if self.clients >= MAX_CLIENTS:
            self._make_room()
        self.clients += 1
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _make_room(self) -> None:
        """All slots taken: the newcomer is served and the client idle longest goes (a watcher only when
        every slot watches), so clients that connect and never ask cannot lock a technician out."""
        clients = [key.data for key in self._selector.get_map().values() if isinstance(key.data, _Client)]
        if not clients:
            return
        victim = min(clients, key=lambda c: (c.watching, c.active))
        victim.send_now({"ok": False, "error": f"closed: more than {MAX_CLIENTS} diagnostics clients at once, "
                         "and this one was idle longest"})
        self._close(victim)

    def alive(self) -> str | None:
        """For the systemd watchdog: None while the control thread serves (or never started: a socket
        that could not be bound is logged, and a restart would not bind it either)."""
        if self._thread is not None and not self._thread.is_alive() and not self._stopping.is_set():
            return "the control socket thread is not running"
        return None

    def _service_guarded(self, client: _Client, events: int) -> None:
        """The one guard around a client's requests: whatever goes wrong costs that client, never the
        thread. (Answers are guarded on their own, in `_answer`; this is for the plumbing around them.)"""
        try:
            self._service(client, events)
        except Exception as err:  # noqa: BLE001 - one client must not end diagnostics for everyone
            log.exception("control socket: serving a client failed")
            client.send_now({"ok": False, "error": f"internal error: {type(err).__name__} (see the agent's log)"})
            self._close(client)

    def _service(self, client: _Client, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = client.sock.recv(MAX_REQUEST_BYTES)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                # The client is done sending (`echo '{"cmd":"status"}' | socat - UNIX-CONNECT:...` half-
                # closes): answer what it asked, then close. A watcher that hangs up is gone.
                client.eof = True
                if client.inbuf and not client.inbuf.endswith(b"\n"):
                    client.inbuf += b"\n"  # the last request needs no newline
                if client.watching:
                    self._close(client)
                    return
            elif data:
                client.inbuf += data
        if events & selectors.EVENT_WRITE or client.outbuf:
            if not self._flush(client):
                self._close(client)
                return
        # One request at a time: the next is read only once the answer to the last has been sent.
        while not client.outbuf and not client.watching and b"\n" in client.inbuf:
            line, _, rest = bytes(client.inbuf).partition(b"\n")
            client.inbuf = bytearray(rest)
            client.active = time.monotonic()
            client.write(self._answer(client, line))
            if not self._flush(client):
                self._close(client)
                return
        if len(client.inbuf) > MAX_REQUEST_BYTES:
            client.send_now({"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"})
            self._close(client)
            return
        if client.eof and not client.outbuf and (client.watching or b"\n" not in client.inbuf):
            self._close(client)
            return
        self._update_interest(client)

    def _answer(self, client: _Client, line: bytes) -> dict[str, Any]:
        """The answer to one request line; never raises (a bug is logged and answered as an error)."""
        try:
            request = untrusted.flat_object(line, max_bytes=MAX_REQUEST_BYTES)
            cmd = request["cmd"]
        except (ValueError, KeyError):
            return {"ok": False, "error": 'bad request: expected one JSON object per line, e.g. {"cmd": "status"}'}
        try:
            return self._command(client, request, cmd)
        except Exception as err:  # noqa: BLE001 - a bug answering one request must not end diagnostics
            log.exception("control socket: answering %s failed", untrusted.printable(cmd))
            return {"ok": False, "error": f"internal error answering {untrusted.printable(cmd)}: "
                    f"{type(err).__name__} (see the agent's log)"}

    def _command(self, client: _Client, request: dict[str, Any], cmd: Any) -> dict[str, Any]:
        try:
            if cmd == "status":
                return {"ok": True, "status": self._status()}
            if cmd == "pins":
                return {"ok": True, "pins": self._pins()}
            if cmd == "doctor-gps" or (cmd == "probe" and request.get("what") == "gps"):
                return self._probe_gps()
            if cmd == "probe":
                return {"ok": False, "error": f"cannot probe '{untrusted.printable(request.get('what'))}' "
                        "(what: gps)"}
            if cmd == "watch":
                client.watching = True
                with self._lock:
                    self._watchers.append(client)
                return {"ok": True, "watching": True}
        except ControlError as err:
            return {"ok": False, "error": str(err)}
        known = "status, watch, pins, probe (what: gps)"
        return {"ok": False, "error": f"unknown command '{untrusted.printable(cmd)}' (known: {known})"}

    def _status(self) -> dict[str, Any]:
        try:
            snapshot = self.agent.call_in_core(self.agent.snapshot, CORE_ANSWER_S, self._stopping)
        except Exception as err:  # noqa: BLE001 - logged by the core; the technician gets one line
            raise ControlError(f"the agent could not take a snapshot: {err}") from None
        if snapshot is None:
            raise ControlError(f"the agent's core did not answer within {CORE_ANSWER_S:.0f} s (stuck?)")
        snapshot["service"] = service_info()
        snapshot["control"] = self.snapshot()
        return snapshot

    def _pins(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for driver in self.agent.drivers:
            try:
                rows.extend(driver.pins())
            except Exception as err:  # noqa: BLE001 - one driver's bug must not hide the others' pins
                log.exception("pins() of %s failed", driver.ctx.name)
                rows.append({"input": driver.ctx.name, "pin": None, "raw": None, "state": f"error: {err}",
                             "edges_per_s": None})
        return rows

    def _probe_gps(self) -> dict[str, Any]:
        for driver in self.agent.drivers:
            if driver.section == "gps":
                return {"ok": True, "gps": driver.status()}
        return {"ok": False, "error": "no GPS driver is running in the agent"}

    def _flush(self, client: _Client) -> bool:
        """Send what is buffered, refilling from the watch queue; False when the client is gone."""
        while True:
            if not client.outbuf and client.watching:
                self._refill(client)
            if not client.outbuf:
                return True
            try:
                sent = client.sock.send(client.outbuf[:_SEND_CHUNK])
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            del client.outbuf[:sent]

    def _refill(self, client: _Client) -> None:
        with self._lock:
            items = [client.queue.popleft() for _ in range(min(len(client.queue), 200))]
            dropped, client.dropped = client.dropped, 0
        if dropped:
            client.write({"type": "dropped", "count": dropped})
        for kind, stream, payload, seq in items:
            client.write({"type": kind, "stream": stream, "seq": seq, "payload": payload})

    def _update_interest(self, client: _Client) -> None:
        want = 0 if client.eof else selectors.EVENT_READ  # at EOF a socket is always "readable"
        if client.outbuf or client.queue or client.dropped:
            want |= selectors.EVENT_WRITE
        if want != client.interest:
            client.interest = want
            self._selector.modify(client.sock, want, client)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            waiting = [c for c in self._watchers if c.queue or c.dropped]
        for client in waiting:
            self._update_interest(client)

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe already means "wake up"

    def _close(self, client: _Client) -> None:
        if client.closed:
            return  # the guard may close a client its own code already closed
        client.closed = True
        with self._lock:
            if client in self._watchers:
                self._watchers.remove(client)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        self.clients -= 1


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.watching = False
        self.queue: collections.deque = collections.deque()
        self.dropped = 0  # not yet reported to this client
        self.eof = False  # the client has stopped sending
        self.interest = selectors.EVENT_READ
        self.closed = False
        self.active = time.monotonic()  # connected, or last asked something: the longest idle makes room

    def write(self, message: dict[str, Any]) -> None:
        self.outbuf += _line(message)

    def send_now(self, message: dict[str, Any]) -> None:
        try:
            self.sock.send(_line(message))
        except OSError:
            pass


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def _remove_stale(path: str) -> None:
    """A socket file left by a killed agent refuses connections: remove it. A live one is not ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket (diagnostics.socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        log.info("removed stale control socket %s (left by an agent that did not stop cleanly)", path)
        return
    finally:
        probe.close()
    raise ControlError("another boxtel agent is serving it")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def service_info() -> dict[str, Any]:
    """How the agent runs: under systemd (it sets INVOCATION_ID), with notify and the watchdog?"""
    from agent.sdnotify import watchdog_interval_s

    ping_s = watchdog_interval_s()
    return {
        "systemd": bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET")),
        "notify": bool(os.environ.get("NOTIFY_SOCKET")),
        "watchdog_s": None if ping_s is None else ping_s * 2,  # WatchdogSec; the agent pings twice as often
        "pid": os.getpid(),
    }


# -- the client side (boxtel status / watch / pins / doctor) -----------------------------------------
def socket_path(config_path: str) -> str:
    """The socket named by the config, read leniently: a technician who may not read the agent's secret
    files (so cannot fully validate the config) still finds the agent."""
    from agent.config import DiagnosticsSettings

    return _lenient(config_path, "diagnostics", "socket", DiagnosticsSettings)


def state_dir_path(config_path: str) -> str:
    """The state dir named by the config, read as leniently: its lock tells whether an agent runs when
    the socket does not answer."""
    from agent.config import BoxSettings

    return _lenient(config_path, "box", "state_dir", BoxSettings, id="x")  # any valid id: not read here


def _lenient(config_path: str, section: str, key: str, cls: type, **required: Any) -> Any:
    """`section.key` validated alone (the rest of the file may be wrong or unreadable), else its default."""
    from agent.config import parse_toml
    from agent.schema import build

    try:
        with open(config_path, "rb") as handle:
            table = parse_toml(handle.read(), file=config_path).get(section, {})
        picked = {key: table[key]} if isinstance(table, dict) and key in table else {}
        return getattr(build(cls, {**required, **picked}, where=section, base_dir=Path(config_path).resolve().parent,
                             file=config_path), key)
    except (OSError, ConfigError):
        return getattr(cls(**required), key)


def connect(path: str, timeout_s: float = 10.0, *, state_dir: str | None = None) -> socket.socket:
    """Connect to the agent's socket; when nothing answers, the state dir's lock says whether an agent
    is there at all (so a dead diagnostics thread is never reported as "no agent is running")."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                sock.connect(path)
                break
            except BlockingIOError:  # EAGAIN: the agent's accept queue is full (a burst of clients)
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        sock.close()
        raise _nobody_answers(path, state_dir) from None
    except PermissionError:
        sock.close()
        raise UnavailableError(
            f"permission denied on {path}: ask to be added to the socket's group (diagnostics.group), "
            "or use sudo"
        ) from None
    except OSError as err:
        sock.close()
        raise UnavailableError(f"cannot reach the agent on {path}: {err.strerror or err}") from None
    return sock


def _nobody_answers(path: str, state_dir: str | None) -> UnavailableError:
    from agent import statelock

    if state_dir is None:
        return AgentNotRunning(f"no boxtel agent is running (nothing answers on {path})")
    try:
        pid = statelock.holder(Path(state_dir))
    except OSError as err:
        return UnavailableError(
            f"nothing answers on {path}, and the state dir {state_dir} cannot tell whether an agent runs "
            f"({err.strerror or err}): try with sudo"
        )
    if pid is None:
        return AgentNotRunning(f"no boxtel agent is running (nothing answers on {path}, "
                               f"nothing holds the state dir {state_dir})")
    return AgentNotAnswering(f"the agent ({f'pid {pid}' if pid else 'pid unknown'}) holds the state dir "
                             f"{state_dir} but its control socket {path} does not answer")


def request(path: str, cmd: str, timeout_s: float = 10.0, *, state_dir: str | None = None,
            **fields: Any) -> dict[str, Any]:
    """One request, one answer; raises UnavailableError (exit 69) when the agent cannot answer."""
    with connect(path, timeout_s, state_dir=state_dir) as sock:
        try:
            sock.sendall(_line({"cmd": cmd, **fields}))
            answer = _read_line(sock.makefile("rb"))
        except OSError as err:
            raise UnavailableError(f"the agent did not answer on {path}: {err.strerror or err}") from None
    if answer is None:
        raise UnavailableError(f"the agent closed the connection on {path} without an answer")
    if not answer.get("ok"):
        raise UnavailableError(f"the agent says: {answer.get('error', 'unknown error')}")
    return answer


def watch(path: str, *, state_dir: str | None = None) -> Iterator[dict[str, Any]]:
    """Every reading and event the agent accepts, as it accepts them, until the agent stops. Connects
    before returning, so a missing agent raises here and the agent counts the watcher at once."""
    sock = connect(path, state_dir=state_dir)
    try:
        sock.sendall(_line({"cmd": "watch"}))
        sock.settimeout(None)
        lines = sock.makefile("rb")
        first = _read_line(lines)
    except BaseException:
        sock.close()
        raise
    if first is None or not first.get("ok"):
        sock.close()
        raise UnavailableError(f"the agent refused to stream: {(first or {}).get('error', 'no answer')}")
    return _follow(sock, lines)


def _follow(sock: socket.socket, lines: Any) -> Iterator[dict[str, Any]]:
    with sock:
        while (message := _read_line(lines)) is not None:
            yield message


def _read_line(stream: Any) -> dict[str, Any] | None:
    raw = stream.readline()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise UnavailableError("the agent sent something that is not JSON") from None
