"""What every source's session shares with the poll loop: connecting, ending a poll, closing its socket."""

from __future__ import annotations

import errno
import os
import socket
from typing import Callable

from ..errors import os_failure

CONNECTING = "connecting"


class LoopSession:
    """Base of the sessions the poll loop drives (see poller.EventLoop): a socket the loop watches,
    a deadline, and ``on_done(session, samples, failure)``, called exactly once per poll."""

    loop = None
    sock: socket.socket | None = None
    on_done: Callable | None = None
    deadline = 0.0
    failure_prefix = ""  # before the text of a socket failure ("MetricsPort: ")

    def _open(self, family: int, addr, nodelay: bool = False) -> None:
        """Start a non-blocking connect to `addr` (state CONNECTING, the loop watching for writable,
        then the subclass's _connected), or fail the poll with what the OS said."""
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self._fail(os_failure(exc, self.failure_prefix))
            return
        self.sock = sock  # from here _fail closes it
        try:
            sock.setblocking(False)
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
        except OSError as exc:  # an address connect() refuses outright (a unix path too long, ...)
            self._fail(os_failure(exc, self.failure_prefix))
            return
        if err in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.state = CONNECTING
            self.loop.watch(self, read=False, write=True)
        else:
            self._fail(os_failure(err, self.failure_prefix))

    def _raise_connect_error(self) -> None:
        """OSError when the non-blocking connect failed (the socket turned writable with an error)."""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))

    @property
    def busy(self) -> bool:
        return self.on_done is not None

    def _done(self, samples, failure) -> None:
        callback, self.on_done = self.on_done, None
        self.loop.unschedule(self)
        if callback is not None:
            callback(self, samples, failure)

    def _drop_socket(self) -> None:
        """Stop watching the socket and close it (the loop must forget it before it is closed)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            self.loop.unwatch(self, sock)
            try:
                sock.close()
            except OSError:
                pass
