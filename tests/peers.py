"""Test peers on 127.0.0.1: a recording TCP proxy in front of a real tor, and peers that misbehave."""

from __future__ import annotations

import socket
import threading
from typing import Callable


def pipe(src: socket.socket, dst: socket.socket, record: Callable[[bytes], None] | None = None) -> None:
    """Copy what src sends to dst until either side ends, then shut both down; `record` sees each piece."""
    try:
        while data := src.recv(65536):
            if record is not None:
                record(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def pump(a: socket.socket, b: socket.socket, join: float = 5.0) -> None:
    """Both directions between a and b until the connection ends (b to a in a thread of its own)."""
    other = threading.Thread(target=pipe, args=(b, a), daemon=True)
    other.start()
    pipe(a, b)
    other.join(join)


def recv_exact(s: socket.socket, n: int, what: str = "the peer") -> bytes:
    """Exactly n bytes from s; ConnectionError when it closes first."""
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"{what}: connection closed")
        buf += chunk
    return buf


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 between the daemon and a tor that records what the daemon sends.
    mode "silent": accept and never answer; mode "dribble": answer one byte every `interval` s."""

    def __init__(self, target_port: int | None = None, mode: str = "forward", interval: float = 0.2):
        self.target_port, self.mode, self.interval = target_port, mode, interval
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(50)
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()
        self.accepted = 0
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(client)
            if self.mode == "forward":
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self.conns.append(upstream)
                threading.Thread(target=pipe, args=(client, upstream, self.sent.extend), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
            elif self.mode == "dribble":
                threading.Thread(target=self._dribble, args=(client,), daemon=True).start()
            elif self.mode == "hangup":
                client.close()
            else:  # silent: read whatever comes, never answer, close when the client does
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()

    def _swallow(self, client):
        try:
            while client.recv(4096):
                pass
        except OSError:
            pass
        client.close()
        self.conns.remove(client)

    def _dribble(self, client):
        try:
            client.recv(1024)
            while not self.stopped.wait(self.interval):
                client.sendall(b"2")
        except OSError:
            pass

    def commands(self) -> list[str]:
        return [line for line in self.sent.decode(errors="replace").split("\r\n") if line]

    def close(self):
        self.stopped.set()
        self.listener.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
