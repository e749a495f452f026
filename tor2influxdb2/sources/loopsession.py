"""What every source's session shares with the poll loop: ending a poll, closing its socket."""

from __future__ import annotations

import socket
from typing import Callable


class LoopSession:
    """Base of the sessions the poll loop drives (see poller.EventLoop): a socket the loop watches,
    a deadline, and ``on_done(session, samples, failure)``, called exactly once per poll."""

    loop = None
    sock: socket.socket | None = None
    on_done: Callable | None = None
    deadline = 0.0

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
