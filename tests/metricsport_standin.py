"""A stand-in for tor's MetricsPort: a small HTTP server on 127.0.0.1 (or a unix socket) whose
answer to each connection a test or a bench chooses (a function of the server and the socket).

:func:`tor_like` answers as tor does (src/feature/metrics/metrics.c): ``HTTP/1.0 200 OK``, Date,
``Content-Type: text/plain; charset=utf-8``, Content-Length, the page. Standard library only.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path


class StandIn:
    """A server on 127.0.0.1 (or a unix socket) answering each connection with `behave(conn)`
    in a thread of its own. Keeps every request it read and counts connections."""

    def __init__(self, behave, unix_path: Path | None = None, family=socket.AF_INET, host="127.0.0.1"):
        self.behave = behave
        self.requests: list[bytes] = []
        self.connections = 0
        self.stop_event = threading.Event()
        if unix_path is not None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(str(unix_path))
        else:
            self.listener = socket.socket(family, socket.SOCK_STREAM)
            self.listener.bind((host, 0))
            self.port = self.listener.getsockname()[1]
        self.listener.listen(socket.SOMAXCONN)  # as tor listens: a daemon connects up to 128 at once
        self.listener.settimeout(0.2)
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stop_event.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn):
        with conn:
            conn.settimeout(10)
            try:
                self.behave(self, conn)
            except OSError:
                pass  # the session hung up (as it must, e.g. after too much)

    def read_request(self, conn) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        self.requests.append(data)
        return data

    def hold(self, conn):
        """Keep the connection open until the test ends (or the peer closes)."""
        conn.settimeout(0.1)
        while not self.stop_event.is_set():
            try:
                if conn.recv(4096) == b"":
                    return
            except socket.timeout:
                continue

    def close(self):
        self.stop_event.set()
        self.listener.close()
        for t in self.threads:
            t.join(5)


def tor_like(body: bytes, keep_open: bool = True):
    """What tor's MetricsPort sends (src/feature/metrics/metrics.c)."""
    def behave(server, conn):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nDate: Tue, 01 Dec 2026 20:00:00 GMT\r\n"
                     b"Content-Type: text/plain; charset=utf-8\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        if keep_open:
            server.hold(conn)
    return behave
