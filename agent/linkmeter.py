"""Bytes the box's MQTT connections put on the link, as the kernel counted them (Linux `TCP_INFO`).

`tcpi_bytes_acked` / `tcpi_bytes_received` are the TCP payload both ways (the TLS stream, handshakes
included); `tcpi_segs_out` / `tcpi_segs_in` count segments, each carrying about 52 bytes of IPv4 and TCP
headers (with timestamps) that a carrier bills too. Read from paho's socket through its public
`on_socket_open` / `on_socket_close` callbacks (the latter runs just before paho closes the socket, so a
connection's last bytes are counted), and whenever the core asks. No kernel figures (not Linux, an old
kernel): the meter says so (`available` is False) and counts nothing.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

SEGMENT_HEADERS_B = 52  # IPv4 20 + TCP 20 + timestamps option 12
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_FIELDS = struct.Struct("=QQII")  # bytes_acked, bytes_received, segs_out, segs_in
_OFFSET = 120  # of tcpi_bytes_acked in struct tcp_info (linux/tcp.h, since 4.1/4.2)


class LinkMeter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Any = None
        self._closed = (0, 0)  # sent, received by connections that have ended
        self._current = (0, 0)
        self.available = _TCP_INFO is not None

    def opened(self, sock: Any) -> None:
        with self._lock:
            self._sock, self._current = sock, (0, 0)

    def closed(self, sock: Any) -> None:
        with self._lock:
            if sock is not self._sock:
                return
            self._sample_locked()
            self._closed = (self._closed[0] + self._current[0], self._closed[1] + self._current[1])
            self._sock, self._current = None, (0, 0)

    def totals(self) -> tuple[int, int]:
        """(sent, received) bytes on the wire since the agent started, headers included."""
        with self._lock:
            self._sample_locked()
            return self._closed[0] + self._current[0], self._closed[1] + self._current[1]

    def _sample_locked(self) -> None:
        if self._sock is None or not self.available:
            return
        try:
            raw = self._sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
        except (OSError, ValueError):
            return  # closed under us: the figures of the last sample stand
        if len(raw) < _OFFSET + _FIELDS.size:
            self.available = False
            return
        acked, received, segs_out, segs_in = _FIELDS.unpack_from(raw, _OFFSET)
        self._current = (acked + SEGMENT_HEADERS_B * segs_out, received + SEGMENT_HEADERS_B * segs_in)
