"""A scriptable control port on 127.0.0.1, for answers a real tor cannot be made to give.

It speaks enough of the control protocol for the daemon's connection set-up (PROTOCOLINFO with
NULL or HASHEDPASSWORD authentication, AUTHENTICATE) and then answers each command line with
what the test scripted: `answers` maps a command prefix ("GETINFO", "GETINFO fingerprint") to
bytes, or to a function (command, connection) -> bytes | None that may also write to the
socket itself (to dribble, to send endlessly, to hang). Real tors are used everywhere else.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

PROTOCOLINFO_NULL = (b'250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n')
PROTOCOLINFO_PASSWORD = (b'250-PROTOCOLINFO 1\r\n250-AUTH METHODS=HASHEDPASSWORD\r\n'
                         b'250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n')


class FakeControlPort:
    def __init__(self, answers: dict[str, bytes | Callable] | None = None, password: str | None = None,
                 protocolinfo: bytes | None = None):
        self.answers = answers or {}
        self.password = password
        self.protocolinfo = protocolinfo or (PROTOCOLINFO_PASSWORD if password else PROTOCOLINFO_NULL)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.commands: list[str] = []
        self.accepted = 0
        self.stopped = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def entry(self, name: str) -> str:
        if self.password:
            return f"127.0.0.1:{self.port}:{self.password}:{name}"
        return f"127.0.0.1:{self.port}:{name}"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while not self.stopped.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    command = line.rstrip(b"\r").decode("utf-8", "replace")
                    self.commands.append(command)
                    answer = self._answer(command, conn)
                    if answer is False:
                        return
                    if answer:
                        conn.sendall(answer)
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, command: str, conn: socket.socket):
        if command.startswith("PROTOCOLINFO"):
            return self.answers.get("PROTOCOLINFO", self.protocolinfo)
        if command.startswith("AUTHENTICATE"):
            custom = self.answers.get("AUTHENTICATE")
            if custom is not None:
                return custom(command, conn) if callable(custom) else custom
            if self.password is None or command == f'AUTHENTICATE "{self.password}"':
                return b"250 OK\r\n"
            conn.sendall(b"515 Authentication failed: Password did not match HashedControlPassword value\r\n")
            return False
        best = max((p for p in self.answers if command.startswith(p)), key=len, default=None)
        if best is None:
            return b"510 Unrecognized command\r\n"
        answer = self.answers[best]
        return answer(command, conn) if callable(answer) else answer

    def close(self) -> None:
        self.stopped.set()
        try:
            self.listener.close()
        except OSError:
            pass
        for conn in self._conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass
