"""A small SOCKS5 server on 127.0.0.1 for the proxy tests: it records the address each client asks
for (a domain name stays a name: socks5h), checks username/password if told to, and either answers
a scripted reply code (tor's extended errors 0xF0-0xF7 included) or connects to a target of the test."""

from __future__ import annotations

import socket
import struct
import threading

from peers import pump, recv_exact


class SocksStandin:
    def __init__(self, reply: int = 0, target: tuple[str, int] | None = None, credentials=None):
        self.reply, self.target, self.credentials = reply, target, credentials
        self.asked: list[tuple[str, int, int]] = []  # (address, port, address type)
        self.logins: list[tuple[str, str]] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                _, count = recv_exact(conn, 2)
                methods = recv_exact(conn, count)
                if self.credentials is not None:
                    if 2 not in methods:
                        conn.sendall(b"\x05\xff")
                        return
                    conn.sendall(b"\x05\x02")
                    _, ulen = recv_exact(conn, 2)
                    user = recv_exact(conn, ulen).decode()
                    plen = recv_exact(conn, 1)[0]
                    password = recv_exact(conn, plen).decode()
                    self.logins.append((user, password))
                    ok = (user, password) == self.credentials
                    conn.sendall(b"\x01\x00" if ok else b"\x01\x01")
                    if not ok:
                        return
                else:
                    conn.sendall(b"\x05\x00")
                _, _, _, kind = recv_exact(conn, 4)
                if kind == 3:
                    address = recv_exact(conn, recv_exact(conn, 1)[0]).decode()
                elif kind == 1:
                    address = socket.inet_ntoa(recv_exact(conn, 4))
                else:
                    address = socket.inet_ntop(socket.AF_INET6, recv_exact(conn, 16))
                port = struct.unpack(">H", recv_exact(conn, 2))[0]
                self.asked.append((address, port, kind))
                if self.reply or self.target is None:
                    conn.sendall(bytes([5, self.reply or 1, 0, 1, 0, 0, 0, 0, 0, 0]))
                    return
                upstream = socket.create_connection(self.target, timeout=10)
                conn.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", self.port))
                pump(conn, upstream)
            except (OSError, ConnectionError):
                return

    def close(self):
        self.stop.set()
        self.listener.close()
