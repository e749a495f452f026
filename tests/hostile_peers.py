"""Hostile peers for the adversarial tier (marker ``hostile``), all on 127.0.0.1 only.

* :func:`hostile_control_port`: a control port that logs the daemon in and then misbehaves (an
  endless line, a 50 MB reply, garbage, binary, a reply to no question, bytes dribbled, silence),
  built on tests/fake_control.py's scriptable port. :func:`core_answer` is a well-formed answer to
  the daemon's core GETINFO, with any ``version`` text.
* :class:`ManyControlPort`: one asyncio thread serving thousands of control connections at once
  (no authentication, the core GETINFO answered), for the open-file limit and a big outage.
* :class:`HttpPeer`: an HTTP server that answers every request with what the test scripts (an HTML
  page, a redirect, a 201, an error body that echoes the request's ``Authorization`` header).
* :func:`memory_kib`: VmHWM / VmRSS of a process, from /proc.
* :func:`run_until`, :func:`assert_not_shown`: a daemon run for a few cycles; no secret in a text.

The secrets these peers echo are the tests' own fake ones; the peers never print or log them.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from fake_control import FakeControlPort

CORE_VALUES = {"traffic/read": 1000, "traffic/written": 2000, "stats/ntor/requested": 3, "stats/ntor/assigned": 2,
               "stats/tap/requested": 1, "stats/tap/assigned": 0}


def core_answer(version: bytes = b"0.4.9.11", circuits: int = 2, values: dict | None = None) -> bytes:
    """tor's answer to `GETINFO version traffic/read ... circuit-status stream-status`: `version`
    as given (any bytes that fit on a line), `circuits` lines of circuit-status, no stream."""
    values = {**CORE_VALUES, **(values or {})}
    out = [b"250-version=" + version]
    out += [f"250-{key}={value}".encode() for key, value in values.items()]
    out.append(b"250+circuit-status=")
    out += [f"{n} BUILT $AAAA~relay PURPOSE=GENERAL".encode() for n in range(1, circuits + 1)]
    out += [b".", b"250-stream-status=", b"250 OK"]
    return b"\r\n".join(out) + b"\r\n"


# ------------------------------------------------------------------ misbehaving control ports

def _endless_line(command, conn):
    """Answer the first GETINFO with a line that never ends (until the daemon hangs up)."""
    conn.sendall(b"250-version=")
    chunk = b"A" * 65536
    try:
        for _ in range(4096):  # at most 256 MiB, in case the daemon kept reading for ever
            conn.sendall(chunk)
    except OSError:
        pass
    return False


def _huge_reply(kept: bool):
    """A 50 MB answer in well-formed lines: `key=value` lines (which a reader would keep), or
    the lines of circuit-status (which the daemon only counts)."""
    line = b"250-x=" + b"v" * 1000 + b"\r\n" if kept else b"1 BUILT $" + b"A" * 990 + b"\r\n"

    def answer(command, conn):
        try:
            if not kept:
                conn.sendall(b"250+circuit-status=\r\n")
            block = line * 1000
            for _ in range(50):  # 50 x 1000 lines of ~1 KB = 50 MB
                conn.sendall(block)
            conn.sendall(b".\r\n250 OK\r\n" if not kept else b"250 OK\r\n")
        except OSError:
            pass
        return False
    return answer


def _dribble(command, conn):
    """A valid answer, one byte every 0.1 s."""
    stop = threading.Event()
    try:
        for byte in core_answer():
            if stop.wait(0.1):
                break
            conn.sendall(bytes([byte]))
    except OSError:
        pass
    return False


def _silence(command, conn):
    """Logged in, asked, never a byte (until the daemon hangs up)."""
    try:
        conn.settimeout(60)
        conn.recv(1)
    except OSError:
        pass
    return False


GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html><body>nope</body></html>\r\n"
BINARY = bytes((n * 37 + 11) % 256 for n in range(4096))  # every byte value, with \n among them

#: name -> keyword arguments of FakeControlPort: each behaves after (or instead of) the log-in.
BEHAVIOURS: dict[str, dict] = {
    "endless_line": {"answers": {"GETINFO": _endless_line}},
    "huge_kept_reply": {"answers": {"GETINFO": _huge_reply(kept=True)}},
    "huge_counted_reply": {"answers": {"GETINFO": _huge_reply(kept=False)}},
    "garbage": {"protocolinfo": GARBAGE},
    "binary": {"protocolinfo": BINARY},
    "reply_to_no_question": {"answers": {"AUTHENTICATE": b"250 OK\r\n250 OK\r\n", "GETINFO": core_answer()}},
    "dribble": {"answers": {"GETINFO": _dribble}},
    "hang_after_auth": {"answers": {"GETINFO": _silence}},
}


def hostile_control_port(behaviour: str) -> FakeControlPort:
    return FakeControlPort(**BEHAVIOURS[behaviour])


def echoing_control_port(password: str, echo: Callable[[str], bytes]) -> FakeControlPort:
    """A control port asking for a password that refuses the daemon's AUTHENTICATE with an error
    reply quoting it: `echo(command as received)` -> the text after '515 '."""
    def refuse(command, conn):
        conn.sendall(b"515 Authentication failed: " + echo(command) + b"\r\n")
        return False
    return FakeControlPort({"AUTHENTICATE": refuse}, password=password)


class UnixControlPort:
    """A control port on a unix socket that asks for a password and answers AUTHENTICATE with
    `answer(command)` (bytes), then hangs up."""

    def __init__(self, path: str, answer: Callable[[str], bytes]):
        from fake_control import PROTOCOLINFO_PASSWORD
        self.path, self.answer, self.protocolinfo = path, answer, PROTOCOLINFO_PASSWORD
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(16)
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            buf = b""
            try:
                while b"AUTHENTICATE" not in buf or not buf.endswith(b"\n"):
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                    if buf.startswith(b"PROTOCOLINFO") and buf.endswith(b"\n") and b"AUTHENTICATE" not in buf:
                        conn.sendall(self.protocolinfo)
                command = buf.split(b"\n")[-2].rstrip(b"\r").decode("utf-8", "replace")
                conn.sendall(self.answer(command))
            except OSError:
                pass

    def close(self):
        self.stopped.set()
        self.listener.close()


# ------------------------------------------------------------------ thousands of connections

class ManyControlPort:
    """A control port on 127.0.0.1 for thousands of connections at once: one asyncio loop in a
    thread, no authentication, every GETINFO answered with :func:`core_answer`. ``open`` is the
    number of connections open now, ``peak`` the most at once, ``polls`` the GETINFOs answered."""

    def __init__(self):
        self.open = self.peak = self.polls = self.accepted = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("ManyControlPort did not start")

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader, writer):
        from fake_control import PROTOCOLINFO_NULL
        self.open += 1
        self.accepted += 1
        self.peak = max(self.peak, self.open)
        answer = core_answer()
        try:
            while line := await reader.readline():
                if line.startswith(b"PROTOCOLINFO"):
                    writer.write(PROTOCOLINFO_NULL)
                elif line.startswith(b"AUTHENTICATE"):
                    writer.write(b"250 OK\r\n")
                elif line.startswith(b"GETINFO"):
                    self.polls += 1
                    writer.write(answer)
                else:
                    writer.write(b"510 Unrecognized command\r\n")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    def entries(self, count: int, prefix: str = "many") -> str:
        """TOR_HOSTS_FILE text: `count` entries, all at this port."""
        return "".join(f"127.0.0.1:{self.port}:{prefix}{n:05d}\n" for n in range(count))

    def close(self):
        async def shut():
            self._server.close()
        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# ------------------------------------------------------------------ HTTP

class HttpRequest:
    """One request an HttpPeer received. repr() never shows the Authorization header."""

    def __init__(self, method: str, path: str, headers: dict, body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    @property
    def lines(self) -> list[str]:
        data = gzip.decompress(self.body) if self.headers.get("Content-Encoding") == "gzip" else self.body
        return [line for line in data.decode().split("\n") if line]

    def __repr__(self) -> str:
        return f"<HttpRequest {self.method} {self.path} {len(self.body)} bytes>"


class HttpPeer:
    """An HTTP server on 127.0.0.1 that answers every request with `respond(request)` ->
    (status, headers, body) and records the requests (`requests`)."""

    def __init__(self, respond: Callable[[HttpRequest], tuple[int, dict, bytes]]):
        self.respond = respond
        self.requests: list[HttpRequest] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # never log: the headers hold the token
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = HttpRequest(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
                peer.requests.append(request)
                status, headers, body = peer.respond(request)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ measuring a process

def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/pid/limits")


# ------------------------------------------------------------------ running the daemon, judging output

def run_until(env: dict, line: str = r"cycle 2 done"):
    """Start the daemon, wait for a log line matching `line`, read its health file, stop it
    (asserting exit 0). (daemon, health file text)."""
    from support import Daemon
    daemon = Daemon(env).start()
    try:
        daemon.wait_for_line(line)
        health = open(env["HEALTHCHECK_FILE"]).read()
    finally:
        assert daemon.stop() == 0
    return daemon, health


def assert_not_shown(text: str, secret: str, *echoed: str) -> None:
    """Neither `secret`, in any form the daemon's redactor knows (repr, JSON, URL, hex, ...), nor
    the `echoed` forms a peer sent back, is in `text`."""
    from tor2influxdb2.redact import Redactor
    forms = Redactor()
    forms.add(secret)
    for form in echoed:
        forms.add_form(form)
    assert secret not in text and text not in forms, \
        f"a secret of {len(secret)} characters is shown in:\n{forms.mask(text)}"
