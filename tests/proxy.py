"""A loopback TCP proxy between the agent and a broker that can pass, black-hole or cut the link.

- `pass`: bytes flow both ways.
- `blackhole`: connections stay open but every byte is swallowed, both ways, and new connections are
  accepted and swallowed too: a half-open link (a satellite modem that lost its carrier), which only
  keep-alive can notice (the broker closing its end is not passed on either). A connection that lost bytes is dead: it is closed when the link passes again.
- `cut`: every connection is closed and new ones are closed at once (link down, modem rebooting).

One thread with a selector; `close()` stops it and closes every socket.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading

PASS = "pass"
BLACKHOLE = "blackhole"
CUT = "cut"


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket | None):
        self.client = client
        self.upstream = upstream
        self.dead = upstream is None

    def other(self, sock: socket.socket) -> socket.socket | None:
        return self.upstream if sock is self.client else self.client


class LinkProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.mode = PASS
        self.accepted = 0
        self.swallowed_bytes = 0
        self.up_bytes = 0  # client -> broker, forwarded (bench/wire counts the link's cost with these)
        self.down_bytes = 0
        self.up_chunks = 0  # reads forwarded, ~ TCP segments on a loopback link
        self.down_chunks = 0
        self.client_closes = 0  # connections the client side ended (e.g. gave a silent link up)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pairs: dict[socket.socket, _Pair] = {}
        self._lock = threading.Lock()
        self._pending_mode: str | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="link-proxy", daemon=True)
        self._thread.start()

    def set_mode(self, mode: str) -> None:
        """Switch the link; returns once the proxy thread has applied it."""
        assert mode in (PASS, BLACKHOLE, CUT)
        applied = threading.Event()
        with self._lock:
            self._pending_mode = mode
            self._applied = applied
        os.write(self._wake_w, b"m")
        if not applied.wait(5):
            raise AssertionError("proxy did not apply the mode change")

    def close(self) -> None:
        self._closing = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)

    # -- the proxy thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._closing:
                for key, _ in self._selector.select(timeout=1.0):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        os.read(self._wake_r, 64)
                        self._apply_mode()
                    else:
                        self._forward(key.fileobj)
        finally:
            for sock in list(self._pairs):
                self._drop(sock)
            self._selector.close()
            self._listener.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _apply_mode(self) -> None:
        with self._lock:
            mode, applied, self._pending_mode = self._pending_mode, getattr(self, "_applied", None), None
        if mode is None:
            return
        self.mode = mode
        if mode == CUT:
            for sock in list(self._pairs):
                self._drop(sock)
        elif mode == PASS:
            for sock, pair in list(self._pairs.items()):
                if pair.dead:
                    self._drop(sock)
        if applied is not None:
            applied.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        if self.mode == CUT:
            client.close()
            return
        upstream = None
        if self.mode == PASS:
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                return
        pair = _Pair(client, upstream)
        for sock in (client, upstream):
            if sock is not None:
                sock.setblocking(True)
                self._pairs[sock] = pair
                self._selector.register(sock, selectors.EVENT_READ, "data")

    def _forward(self, sock: socket.socket) -> None:
        pair = self._pairs.get(sock)
        if pair is None:
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            if sock is pair.client:
                self.client_closes += 1
            elif self.mode == BLACKHOLE:
                # The broker gave the silent client up (1.5 keep-alives): across a black hole the client
                # cannot hear that; it has to notice the silence itself.
                self._selector.unregister(sock)
                del self._pairs[sock]
                sock.close()
                pair.upstream, pair.dead = None, True
                return
            self._drop(sock)
            return
        other = pair.other(sock)
        if self.mode != PASS or pair.dead or other is None:
            self.swallowed_bytes += len(data)
            pair.dead = True
            return
        if sock is pair.client:
            self.up_bytes += len(data)
            self.up_chunks += 1
        else:
            self.down_bytes += len(data)
            self.down_chunks += 1
        try:
            other.sendall(data)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        pair = self._pairs.get(sock)
        if pair is None:
            return
        for member in (pair.client, pair.upstream):
            if member is not None and member in self._pairs:
                del self._pairs[member]
                self._selector.unregister(member)
                member.close()
