"""One scrape of one tor's MetricsPort: a state machine the poll loop drives, never blocking.

Each scrape opens a new connection (tor's MetricsPort answers one request per connection):
resolve the name if it is one (in the loop's resolver), connect (TCP or a unix socket), send one
``GET <path> HTTP/1.0``, read the answer to its Content-Length or to EOF, read its header
(:func:`parse_header`: the status line and the few fields that matter, strictly; a chunked body,
which tor does not send, is decoded by the stdlib's http.client), then the page
(:class:`~.parse.PageParser`). Everything a peer controls is
bounded: the header (:data:`MAX_HEADER`), the body (:data:`MAX_BODY`; more fails with
Reason.TOO_LARGE before it is read), the series of a page (parse.MAX_SERIES), and the time (the
scrape's deadline). Every failure is a typed :class:`~tor2influxdb2.errors.Failure` with a short,
clipped message.

The interface is the poll loop's (that of the control-port session): ``busy``, ``deadline``,
``sock``, ``start``, ``handle``, ``expire``, ``resolved``, ``close``, ``_fail``.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import re
import socket
import time
from typing import Callable

from ..loopsession import CONNECTING, LoopSession
from ... import __version__
from ...errors import Failure, Reason, SourceError, os_failure
from ...redact import clip
from .address import MetricsAddress
from .parse import DEFAULT_SELECTION, FamilySelection, PageParser

MAX_HEADER = 16 * 1024
MAX_BODY = 8 * 1024 * 1024
RECV = 256 * 1024
#: A chunked answer is recognised as complete only this often before EOF (each try decodes it).
CHUNKED_TRIES = 16
PROMETHEUS_TYPES = ("text/plain", "application/openmetrics-text")

PREFIX = "MetricsPort: "

CLOSED, RESOLVING, SENDING, READING = "closed", "resolving", "sending", "reading"

STATUS_RE = re.compile(r"HTTP/[0-9]\.[0-9][ \t]+([0-9]{3})(?:[ \t]+(.*))?")
FIELD_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
NOT_HTTP = "the answer is not HTTP: is this tor's MetricsPort?"


def _fail_with(reason: Reason, text: str) -> SourceError:
    return SourceError(Failure(reason, PREFIX + text))


class Header:
    """An HTTP response header: ``status``, ``reason`` and ``fields`` (lower-case name -> value;
    a field sent twice keeps its first value, as http.client reads them)."""

    __slots__ = ("status", "reason", "fields")

    def __init__(self, status: int, reason: str, fields: dict[str, str]):
        self.status, self.reason, self.fields = status, reason, fields


def parse_header(raw: bytes) -> Header:
    """The header of an answer (its bytes up to the blank line, excluded). SourceError(PROTOCOL)
    for anything that is not an HTTP/1.x status line and ``name: value`` lines (a folded line
    continues the previous value), and for two different Content-Lengths."""
    lines = raw.decode("latin-1").split("\n")
    match = STATUS_RE.fullmatch(lines[0].rstrip("\r"))
    if match is None:
        raise _fail_with(Reason.PROTOCOL, f"{NOT_HTTP} (bad status line)")
    fields: dict[str, str] = {}
    folding = None  # the name whose value a folded line continues (None: the line before was a repeat)
    for line in lines[1:]:
        line = line.rstrip("\r")
        if line[:1] in (" ", "\t"):
            if folding is not None:
                fields[folding] = f"{fields[folding]} {line.strip()}"
            continue
        name, colon, value = line.partition(":")
        name = name.lower()
        if not colon or not FIELD_NAME_RE.fullmatch(name):
            raise _fail_with(Reason.PROTOCOL, f"{NOT_HTTP} (a malformed header line)")
        value = value.strip()
        if name in fields:
            if name == "content-length" and fields[name] != value:
                raise _fail_with(Reason.PROTOCOL, "two different Content-Length fields")
            folding = None
        else:
            fields[name] = value
            folding = name
    return Header(int(match.group(1)), match.group(2) or "", fields)


class _Received:
    """What http.client reads a response from: the bytes already received."""

    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, mode: str, *args, **kwargs):
        return io.BytesIO(self.data)


class MetricsSession(LoopSession):
    """Scrapes of one tor's MetricsPort (see the module's docstring). ``tags()`` gives the
    common tags, (key, value) pairs as model.make_tags makes them, at the end of each scrape.
    When a scrape ends, ``on_done(session, samples, failure)`` is called exactly once."""

    failure_prefix = PREFIX

    def __init__(self, address: MetricsAddress, families: FamilySelection = DEFAULT_SELECTION,
                 onion_label: str = "hash", timeout: float = 5.0, loop=None,
                 tags: Callable[[], tuple] = tuple):
        self.address, self.timeout, self.loop, self.tags = address, timeout, loop, tags
        self.parser = PageParser(families, onion_label)
        self.state = CLOSED
        self.sock: socket.socket | None = None
        self.deadline = 0.0
        self.on_done: Callable | None = None
        self._reset()
        self.request = (f"GET {address.path} HTTP/1.0\r\nHost: {address.host_header}\r\n"
                        f"User-Agent: tor2influxdb2/{__version__}\r\nAccept: text/plain\r\n"
                        "Connection: close\r\n\r\n").encode("ascii", "replace")

    def _reset(self) -> None:
        self.out = b""
        self.buffer = bytearray()
        self.header_end = -1
        self.headed = False  # the header is read
        self.length: int | None = None
        self.chunked = False
        self.chunked_tries = 0
        self.time_ms = 0

    # ------------------------------------------------------------------ what the loop calls
    def start(self, now: float, on_done: Callable) -> None:
        """Begin a scrape that must end by now + timeout."""
        self.on_done = on_done
        self.deadline = now + self.timeout
        self.loop.schedule(self)
        self._close_socket()
        self._reset()
        address = self.address
        if address.socket_path is not None:
            self._open(socket.AF_UNIX, address.socket_path)
            return
        try:
            ip = ipaddress.ip_address(address.host)
        except ValueError:
            self.state = RESOLVING
            self.loop.resolve(address.host, address.port, self)
            return
        self._open(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (address.host, address.port))

    def handle(self, readable: bool, writable: bool) -> None:
        try:
            if writable and self.sock is not None:
                if self.state == CONNECTING:
                    self._connected()
                elif self.state == SENDING:
                    self._flush()
            if readable and self.sock is not None and self.state in (SENDING, READING):
                self._read()
        except SourceError as exc:
            self._fail(exc.failure)
        except OSError as exc:
            self._fail(os_failure(exc, PREFIX))

    def expire(self, now: float) -> None:
        if self.busy and now >= self.deadline:
            if self.state in (RESOLVING, CONNECTING):
                what = "no connection"
            elif not self.headed:
                what = "no answer"
            else:
                what = f"answer incomplete ({len(self.buffer) - self.header_end} bytes)"
            self._fail(Failure(Reason.TIMEOUT, f"{PREFIX}{what} within {self.timeout:g} s"))

    def resolved(self, infos: list | None, error: Failure | None) -> None:
        if self.state != RESOLVING or not self.busy:
            return
        if error is not None:
            self._fail(Failure(error.reason, PREFIX + error.message))
        elif not infos:
            self._fail(Failure(Reason.RESOLVE, PREFIX + "cannot resolve host (no address)"))
        else:
            family, addr = infos[0]
            self._open(family, addr)

    def close(self) -> None:
        """Close the connection; a scrape in progress ends with 'stopping'."""
        self._fail(Failure(Reason.STOPPING, "stopping"), retry=False)

    # ------------------------------------------------------------------ connecting and asking
    def _connected(self) -> None:
        self._raise_connect_error()
        self.state = SENDING
        self.out = self.request
        self._flush()

    def _flush(self) -> None:
        sent = self.sock.send(self.out)
        self.out = self.out[sent:]
        if self.out:
            self.loop.watch(self, read=True, write=True)
        else:
            self.state = READING
            self.loop.watch(self, read=True, write=False)

    # ------------------------------------------------------------------ reading the answer
    def _read(self) -> None:
        # at most one byte past the limits, counted from where the body starts once the header is read
        start = self.header_end if self.headed else MAX_HEADER
        room = start + MAX_BODY + 1 - len(self.buffer)
        if room <= 0:  # never recv(0), which reads as EOF (a truncated page), nor recv(<0)
            raise _fail_with(Reason.TOO_LARGE, f"the page is larger than {MAX_BODY // 1024 // 1024} MiB")
        try:
            data = self.sock.recv(min(RECV, room))
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self._eof()
            return
        self.buffer += data
        if not self.headed:
            self._header()
            if not self.headed:
                return
        body = len(self.buffer) - self.header_end
        if body > MAX_BODY:
            raise _fail_with(Reason.TOO_LARGE, f"the page is larger than {MAX_BODY // 1024 // 1024} MiB")
        if self.length is not None and body >= self.length:
            self._complete()
        elif self.chunked and self.buffer.endswith(b"\n0\r\n\r\n") and self.chunked_tries < CHUNKED_TRIES:
            self.chunked_tries += 1
            self._complete(quiet=True)

    def _header(self) -> None:
        buffer = self.buffer
        end, size = buffer.find(b"\r\n\r\n", 0, MAX_HEADER + 4), 4  # never searched in a page's body
        bare = buffer.find(b"\n\n", 0, end + 2 if end >= 0 else MAX_HEADER + 2)
        if bare >= 0 and (end < 0 or bare < end):
            end, size = bare, 2
        if end < 0:
            if len(buffer) > MAX_HEADER:
                raise _fail_with(Reason.TOO_LARGE, f"the HTTP header is larger than {MAX_HEADER // 1024} KiB")
            if not buffer.startswith(b"HTTP/"[:len(buffer)]):
                raise _fail_with(Reason.PROTOCOL, NOT_HTTP)
            return
        self.header_end = end + size
        self.time_ms = time.time_ns() // 1_000_000
        header = parse_header(bytes(buffer[:end]))
        if header.status != 200:
            hint = " (tor serves only /metrics)" if header.status == 404 else ""
            raise _fail_with(Reason.PROTOCOL, f"HTTP {header.status} {clip(header.reason, 60)}{hint}")
        fields = header.fields
        content_type = (fields.get("content-type") or "text/plain").split(";")[0].strip().lower()
        if content_type not in PROMETHEUS_TYPES:
            raise _fail_with(Reason.PROTOCOL, f"the page is not Prometheus text (Content-Type "
                                              f"{clip(content_type, 60)})")
        encoding = (fields.get("content-encoding") or "identity").lower()
        if encoding != "identity":
            raise _fail_with(Reason.PROTOCOL, f"the page is compressed ({clip(encoding, 30)}), which this "
                                              "daemon does not ask for")
        self.chunked = fields.get("transfer-encoding", "").lower() == "chunked"
        length = fields.get("content-length")
        if not self.chunked and length is not None:
            if not length.isdigit() or not length.isascii():
                raise _fail_with(Reason.PROTOCOL, f"a bad Content-Length ({clip(length, 30)})")
            if len(length) > 12 or int(length) > MAX_BODY:
                raise _fail_with(Reason.TOO_LARGE, f"the page is larger than {MAX_BODY // 1024 // 1024} MiB "
                                                   f"({clip(length, 30)} bytes announced)")
            self.length = int(length)
        self.headed = True

    def _eof(self) -> None:
        if not self.headed:
            if not self.buffer:
                raise _fail_with(Reason.CLOSED, "closed the connection without answering (does "
                                                "MetricsPortPolicy accept this daemon's address?)")
            self._header()
            if not self.headed:
                raise _fail_with(Reason.PROTOCOL, "the connection closed within the HTTP header")
        body = len(self.buffer) - self.header_end
        if self.length is not None and body < self.length:
            raise _fail_with(Reason.CLOSED, f"the connection closed mid-page ({body} of {self.length} bytes)")
        self._complete()

    def _complete(self, quiet: bool = False) -> None:
        """The answer is complete (or, `quiet`, may be): parse it and end the scrape."""
        if self.chunked:
            response = http.client.HTTPResponse(_Received(bytes(self.buffer)))
            try:
                response.begin()
                body = response.read(MAX_BODY + 1)
            except (http.client.IncompleteRead, http.client.HTTPException, ValueError):
                if quiet:
                    return
                raise _fail_with(Reason.PROTOCOL, "the chunked page is malformed or incomplete") from None
            if len(body) > MAX_BODY:
                raise _fail_with(Reason.TOO_LARGE, f"the page is larger than {MAX_BODY // 1024 // 1024} MiB")
        else:
            end = self.header_end + self.length if self.length is not None else len(self.buffer)
            body = bytes(memoryview(self.buffer)[self.header_end:end])
        self._close_socket()
        self.buffer = bytearray()
        try:
            samples = self.parser.parse(body, tuple(self.tags()), self.time_ms)
        except SourceError as exc:
            failure = exc.failure
            if not failure.message.startswith(PREFIX):
                failure = Failure(failure.reason, PREFIX + failure.message)
            self._done(None, failure)
            return
        self._done(samples, None)

    # ------------------------------------------------------------------ ending
    def _fail(self, failure: Failure, retry: bool = False) -> None:
        """End the scrape with `failure` (`retry` is the loop's interface: a scrape never retries)."""
        self._close_socket()
        self.buffer = bytearray()
        if self.busy:
            self._done(None, failure)

    def _done(self, samples, failure) -> None:
        self.state = CLOSED
        super()._done(samples, failure)

    def _close_socket(self) -> None:
        self._drop_socket()
        self.state = CLOSED
