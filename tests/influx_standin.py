"""A small, faithful InfluxDB 2 stand-in HTTP server for the test suite.

No real InfluxDB 2 can run on the test machine, so the daemon's InfluxDB side is
exercised against this server instead.  It binds 127.0.0.1 only, uses nothing
but the standard library, and answers the way InfluxDB OSS 2.7 answers:

* ``POST /api/v2/write`` - the checks run in the order of InfluxDB's write
  handler (http/write_handler.go): token (401), precision (400), bucket given
  (404), gzip header, organization (404), bucket (404), write permission (403),
  body read (413 / 400), line protocol parse (400, nothing stored), field type
  conflicts (422 partial write: the other points ARE stored, like InfluxDB).
* ``GET|HEAD /health`` - 200 and the body of http/health.go.
* ``GET|HEAD /ping`` - 204 with the X-Influxdb-Build / X-Influxdb-Version headers.
* anything else - 404 ``{"code":"not found","message":"path not found"}``.

Every error answer is the JSON InfluxDB writes in
kit/transport/http/error_handler.go (WriteErrorResponse): a compact
``{"code":...,"message":...}`` object encoded like Go's json.Marshal, with
``Content-Type: application/json; charset=utf-8`` and the
``X-Platform-Error-Code: <code>`` header.  The code strings are the constants
of kit/platform/errors/errors.go, mapped to statuses by influxDBErrorToStatusCode.
Where each message comes from is noted next to it below.

Programmable behaviour (thread-safe, may change while a client is writing):
``answer()``, ``script()``, ``hang()``, ``release()``, ``reject_line()``,
``max_lines()``, ``deny_write()``, ``set_field_type()``.  Programmed answers are
given *before* any of the real checks, i.e. they model the server's state.

The token is never logged or printed; ``Request.__repr__`` redacts the
Authorization header so that a failing assertion does not show it either.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import math
import select
import socket
import socketserver
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["InfluxStandin", "Answer", "Request", "Point", "HANG", "ERROR_CODES", "ENVOY_503_TEXT"]

INFLUXDB_VERSION = "v2.7.12"
# The X-Influxdb-Build / X-Influxdb-Version pair is what a real v2.7.12 sends on
# every answer (seen in a captured 422 response: 'X-Influxdb-Build': 'OSS',
# 'X-Influxdb-Version': 'v2.7.12', 'X-Platform-Error-Code': 'unprocessable entity').
INFLUXDB_BUILD = "OSS"
INFLUXDB_COMMIT = "0000000000"  # placeholder: any commit string the real /health carries

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

# HTTP status -> InfluxDB error code: kit/platform/errors/errors.go constants as
# mapped in kit/transport/http/error_handler.go (influxDBErrorToStatusCode).
ERROR_CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request too large",
    422: "unprocessable entity",
    429: "too many requests",
    500: "internal error",
    501: "not implemented",
    503: "unavailable",
}

# What InfluxDB Cloud's Envoy front answers as a 503 (text/plain, no JSON), as
# reported in influxdata/influxdb-client-python issue #326.  Use it with
# answer(503, body=ENVOY_503_TEXT, content_type="text/plain").
ENVOY_503_TEXT = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"

# models/points.go: MinNanoTime / MaxNanoTime and ErrTimeOutOfRange.
MIN_NANO_TIME = -(2**63) + 2
MAX_NANO_TIME = 2**63 - 2
PRECISION_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
MAX_KEY_LENGTH = 65535

HANG = "hang"
_DEFAULT = object()


# ----------------------------------------------------------------------------- records

@dataclasses.dataclass(frozen=True)
class Answer:
    """One programmed answer to a write request.

    status 204 means "process the write normally" (all the real checks apply).
    message replaces the default JSON message of that status; body (bytes) and
    content_type replace the whole JSON body (e.g. ENVOY_503_TEXT).
    retry_after (seconds, int or str) is sent as the Retry-After header.  An
    Answer built directly sends none unless given; answer(), and int or dict
    items of script(), default it to 1 for 429 and 503.
    """
    status: int
    message: str | None = None
    retry_after: int | str | None = None
    body: bytes | None = None
    content_type: str | None = None


@dataclasses.dataclass
class Request:
    """One HTTP request the stand-in received (headers as sent, token included)."""
    received: float                      # time.time() when the request was read
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes                      # as sent on the wire
    body: bytes                          # gunzipped when Content-Encoding: gzip (else raw)
    status: int | None = None            # None: never answered (hung / dropped)
    response_body: bytes = b""
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    answered: float | None = None        # time.time() of the answer
    hung: bool = False

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header, looked up case-insensitively."""
        lname = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lname:
                return value
        return default

    @property
    def is_write(self) -> bool:
        return self.method == "POST" and self.path == "/api/v2/write"

    @property
    def lines(self) -> list[str]:
        """The line-protocol lines of the (decompressed) body."""
        return split_lines(self.body.decode("utf-8", "replace"))

    def json(self):
        """The answer body parsed as JSON (error answers)."""
        return json.loads(self.response_body)

    def __repr__(self) -> str:
        headers = {k: ("<redacted>" if k.lower() == "authorization" else v)
                   for k, v in self.headers.items()}
        return (f"Request({self.method} {self.path} query={self.query!r} status={self.status!r} "
                f"hung={self.hung} headers={headers!r} body={self.body[:200]!r})")


@dataclasses.dataclass(frozen=True)
class Point:
    """One accepted point. line is the line as sent with its timestamp in ns."""
    measurement: str
    tags: dict[str, str]
    fields: dict[str, object]
    field_types: dict[str, str]          # "float" | "integer" | "unsigned" | "string" | "boolean"
    time_ns: int
    line: str
    sent_line: str = ""                  # the line exactly as the client sent it


# ------------------------------------------------------------------ line protocol parser
#
# A port of the scanner of InfluxDB's models/points.go (ParsePointsWithPrecision,
# scanKey, scanTags, scanFields, scanNumber, scanBoolean, scanTime, scanLine), so
# that a malformed line is refused with the same reason InfluxDB gives.  Each
# failed line becomes "unable to parse '<line>': <reason>"; several are joined
# with "\n", exactly like ParsePointsWithPrecision.

class LineError(ValueError):
    """A line InfluxDB would not parse; str() is InfluxDB's reason."""


def _skip_ws(buf: str, i: int) -> int:
    while i < len(buf) and buf[i] in " \t\x00":
        i += 1
    return i


def _scan_line(buf: str, i: int) -> tuple[int, str]:
    start, n = i, len(buf)
    quoted = fields = False
    equals = commas = 0
    while i < n:
        c = buf[i]
        if c == "\\":
            i += 2
            continue
        if c == " ":
            fields = True
        if fields:
            if not quoted and c == "=":
                i += 1
                equals += 1
                continue
            if not quoted and c == ",":
                i += 1
                commas += 1
                continue
            if c == '"' and equals > commas:
                i += 1
                quoted = not quoted
                continue
        if c == "\n" and not quoted:
            break
        i += 1
    return i, buf[start:i]


def split_lines(text: str) -> list[str]:
    """The point lines of a body, as InfluxDB splits it (comments and blanks skipped)."""
    out, pos = [], 0
    while pos < len(text):
        pos, block = _scan_line(text, pos)
        pos += 1
        if not block:
            continue
        start = _skip_ws(block, 0)
        if start >= len(block) or block[start] == "#":
            continue
        if block.endswith("\n"):
            block = block[:-1]
        out.append(block[start:])
    return out


def _scan_tags_key(buf: str, i: int) -> int:
    n = len(buf)
    if i >= n or buf[i] in " ,=":
        raise LineError("missing tag key")
    while True:
        i += 1
        if i >= n or (buf[i] in " ," and buf[i - 1] != "\\"):
            raise LineError("missing tag value")
        if buf[i] == "=" and buf[i - 1] != "\\":
            return i + 1


def _scan_tags_value(buf: str, i: int) -> tuple[str, int]:
    n = len(buf)
    if i >= n or buf[i] in ", ":
        raise LineError("missing tag value")
    while True:
        i += 1
        if i >= n:
            raise LineError("missing fields")
        if buf[i] == "=" and buf[i - 1] != "\\":
            raise LineError("invalid tag format")
        if buf[i] == "," and buf[i - 1] != "\\":
            return "key", i + 1
        if buf[i] == " " and buf[i - 1] != "\\":
            return "fields", i


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str, chars: str) -> str:
    for c in chars:
        text = text.replace("\\" + c, c)
    return text


def _scan_key(buf: str, i: int) -> tuple[int, str]:
    start = _skip_ws(buf, i)
    i, n = start, len(buf)
    if i >= n or buf[i] == ",":
        raise LineError("missing measurement")
    while True:  # scanMeasurement
        i += 1
        if i >= n:
            raise LineError("missing fields")
        if buf[i - 1] == "\\":
            continue
        if buf[i] == ",":
            state, i = "key", i + 1
            break
        if buf[i] == " ":
            state = "fields"
            break
    if state == "key":  # scanTags
        while state != "fields":
            if state == "key":
                i = _scan_tags_key(buf, i)
                state = "value"
            else:
                state, i = _scan_tags_value(buf, i)
        tag_keys = [_split_unescaped(t, "=")[0] for t in _split_unescaped(buf[start:i], ",")[1:]]
        if len(set(tag_keys)) != len(tag_keys):
            raise LineError("duplicate tags")
    return i, buf[start:i]


def _is_numeric(c: str) -> bool:
    return "0" <= c <= "9" or c == "."


def _go_quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _scan_number(buf: str, i: int) -> int:
    start, n = i, len(buf)
    is_int = is_uint = decimal = scientific = False
    if i < n and buf[i] == "-":
        i += 1
        if i == n:
            raise LineError("invalid number")
    while i < n:
        c = buf[i]
        if c in ", ":
            break
        if c in "iu" and i > start and not (is_int or is_uint):
            is_int, is_uint = c == "i", c == "u"
            i += 1
            continue
        if c == ".":
            if decimal:
                raise LineError("invalid number")
            decimal = True
        if i > start and c in "eE":
            scientific = True
            i += 1
            continue
        if c in "+-" and buf[i - 1] in "eE":
            i += 1
            continue
        if i + 2 < n and c in "Nn":
            raise LineError("invalid number")
        if not _is_numeric(c):
            raise LineError("invalid number")
        i += 1
    if (is_int or is_uint) and (decimal or scientific):
        raise LineError("invalid number")
    digits = i - start - (1 if is_int or is_uint else 0) - (1 if decimal else 0) \
        - (1 if buf[start] == "-" else 0)
    if digits == 0:
        raise LineError("invalid number")
    if is_int or is_uint:
        if buf[i - 1] != ("i" if is_int else "u"):
            raise LineError("invalid number")
        text = buf[start:i - 1]
        if is_int and not -(2**63) <= int(text) <= 2**63 - 1:
            raise LineError(f"unable to parse integer {text}: strconv.ParseInt: parsing "
                            f"{_go_quote(text)}: value out of range")
        if is_uint and text.startswith("-"):
            raise LineError(f"unable to parse unsigned {text}: strconv.ParseUint: parsing "
                            f"{_go_quote(text)}: invalid syntax")
        if is_uint and int(text) > 2**64 - 1:
            raise LineError(f"unable to parse unsigned {text}: strconv.ParseUint: parsing "
                            f"{_go_quote(text)}: value out of range")
    else:
        try:
            value = float(buf[start:i])
        except ValueError:
            raise LineError("invalid float") from None
        if math.isinf(value):
            raise LineError("invalid float")
    return i


def _scan_boolean(buf: str, i: int) -> int:
    start, n = i, len(buf)
    if i < n and buf[i] not in "tfTF":
        raise LineError("invalid boolean")
    i += 1
    while i < n and buf[i] not in ", ":
        i += 1
    word = buf[start:i]
    if len(word) == 1 or word in ("true", "false", "TRUE", "True", "FALSE", "False"):
        return i
    raise LineError("invalid boolean")


def _scan_fields(buf: str, i: int) -> tuple[int, str]:
    start = _skip_ws(buf, i)
    i, n = start, len(buf)
    quoted = False
    equals = commas = 0
    while i < n:
        c = buf[i]
        if c == "\\" and i + 1 < n:
            i += 2
            continue
        if c == '"' and equals > commas:
            quoted = not quoted
            i += 1
            continue
        if c == "=" and not quoted:
            equals += 1
            if buf[i - 1] in " ," and buf[i - 2] != "\\":
                raise LineError("missing field key")
            if i + 1 >= n or buf[i + 1] in ", ":
                raise LineError("missing field value")
            nxt = buf[i + 1]
            if _is_numeric(nxt) or nxt in "-Nn":
                i = _scan_number(buf, i + 1)
                continue
            if nxt != '"':
                i = _scan_boolean(buf, i + 1)
                continue
        if c == "," and not quoted:
            commas += 1
        if c == " " and not quoted:
            break
        i += 1
    if quoted:
        raise LineError("unbalanced quotes")
    if equals == 0 or commas != equals - 1:
        raise LineError("invalid field format")
    return i, buf[start:i]


def _scan_time(buf: str, i: int) -> tuple[int, str]:
    start = _skip_ws(buf, i)
    i = start
    while i < len(buf):
        c = buf[i]
        if c in "\n ":
            break
        if i == start and c == "-":
            i += 1
            continue
        if not "0" <= c <= "9":
            raise LineError("bad timestamp")
        i += 1
    return i, buf[start:i]


def _split_fields(fields: str) -> list[tuple[str, str]]:
    out, i, n = [], 0, len(fields)
    while i < n:
        j = i
        while j < n and not (fields[j] == "=" and (j == 0 or fields[j - 1] != "\\")):
            j += 1
        k, quoted = j + 1, False
        while k < n:
            if fields[k] == "\\" and k + 1 < n and fields[k + 1] in '"\\':
                k += 2
                continue
            if fields[k] == '"':
                quoted = not quoted
                k += 1
                continue
            if fields[k] == "," and not quoted:
                break
            k += 1
        out.append((_unescape(fields[i:j], ", ="), fields[j + 1:k]))
        i = k + 1
    return out


def _field_value(raw: str) -> tuple[str, object]:
    if raw.startswith('"'):
        return "string", raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if raw.endswith("i"):
        return "integer", int(raw[:-1])
    if raw.endswith("u"):
        return "unsigned", int(raw[:-1])
    if raw[0] in "tTfF":
        return "boolean", raw[0] in "tT"
    return "float", float(raw)


def parse_point(line: str, default_ns: int, precision: str = "ns") -> Point:
    """Parse one line like InfluxDB; raise LineError(reason) when it would refuse it."""
    pos, key = _scan_key(line, 0)
    if not key:
        raise LineError("missing measurement")
    if len(key) > MAX_KEY_LENGTH:
        raise LineError(f"max key length exceeded: {len(key)} > {MAX_KEY_LENGTH}")
    pos, fields = _scan_fields(line, pos)
    if not fields:
        raise LineError("missing fields")
    pos, ts = _scan_time(line, pos)
    if ts:
        try:
            value = int(ts)
        except ValueError:
            raise LineError(f"strconv.ParseInt: parsing {_go_quote(ts)}: invalid syntax") from None
        if not -(2**63) <= value <= 2**63 - 1:
            raise LineError(f"strconv.ParseInt: parsing {_go_quote(ts)}: value out of range")
        time_ns = value * PRECISION_NS[precision]
        if not MIN_NANO_TIME <= time_ns <= MAX_NANO_TIME:
            raise LineError(f"time outside range {MIN_NANO_TIME} - {MAX_NANO_TIME}")
        if line[pos:].strip(" "):
            raise LineError("point is invalid")
    else:
        time_ns = default_ns
    parts = _split_unescaped(key, ",")
    tags = {}
    for tag in parts[1:]:
        kv = _split_unescaped(tag, "=")
        tkey, tvalue = kv[0], "=".join(kv[1:])
        tags[_unescape(tkey, ", =")] = _unescape(tvalue, ", =")
    values, types = {}, {}
    for fkey, raw in _split_fields(fields):
        types[fkey], values[fkey] = _field_value(raw)
    return Point(measurement=_unescape(parts[0], ", "), tags=tags, fields=values,
                 field_types=types, time_ns=time_ns, line=f"{key} {fields} {time_ns}",
                 sent_line=line)


# ----------------------------------------------------------------------------- helpers

def go_json(obj) -> bytes:
    """JSON as Go's encoding/json.Marshal writes it (compact, HTML characters escaped)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text.encode("utf-8")


def _type_conflict_reason(measurement: str, field: str, got: str, existing: str) -> str:
    # tsdb/field_validator.go (ValidateAndCreateFields):
    #   "%s: input field \"%s\" on measurement \"%s\" is type %s, already exists as type %s"
    # with ErrFieldTypeConflict = "field type conflict"; type names are influxql.DataType's.
    return (f'field type conflict: input field "{field}" on measurement "{measurement}" '
            f"is type {got}, already exists as type {existing}")


def _partial_write_message(reason: str, dropped: int) -> str:
    # http/write_handler.go: a tsdb.PartialWriteError is answered 422 with
    # Msg "failure writing points to database" and Err the PartialWriteError, whose
    # Error() is "partial write: %s dropped=%d" (tsdb/shard.go); errors.Error joins
    # Msg and Err with ": " (kit/platform/errors/errors.go).
    return f"failure writing points to database: partial write: {reason} dropped={dropped}"


def _other_type(kind: str) -> str:
    return "integer" if kind != "integer" else "float"


class _Reply(Exception):
    """Raised inside the write pipeline to answer with (status, message)."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


# ------------------------------------------------------------------------------ server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, like the real server and urllib3's pool

    def log_message(self, format, *args):  # never log (the token must not leak)
        pass

    def _dispatch(self):
        self.server.standin._handle(self)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, standin: "InfluxStandin"):
        self.standin = standin
        self.conns: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        self.track = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self._serve_conn, args=(request, client_address),
                                  name="influx-standin-conn", daemon=True)
        with self.track:
            self.conns.add(request)
            self.threads.add(thread)
        thread.start()

    def _serve_conn(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass
        finally:
            self.shutdown_request(request)
            with self.track:
                self.conns.discard(request)
                self.threads.discard(threading.current_thread())

    def handle_error(self, request, client_address):
        pass

    def drop_connections(self, timeout: float) -> None:
        with self.track:
            conns, threads = list(self.conns), list(self.threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class InfluxStandin:
    """An InfluxDB 2 stand-in on 127.0.0.1 (see the module docstring)."""

    def __init__(self, port: int = 0, token: str = "test-token", org: str = "test-org",
                 bucket: str = "test-bucket", org_id: str = "0123456789abcdef",
                 bucket_id: str = "fedcba9876543210", version: str = INFLUXDB_VERSION):
        self._port = port
        self._token = token
        from leakcheck import secret  # the suite's secret check: this token must never be shown
        secret(token)
        self.org, self.bucket, self.org_id, self.bucket_id = org, bucket, org_id, bucket_id
        self.version = version
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._release_epoch = 0
        self._hanging = 0
        self._requests: list[Request] = []
        self._points: list[Point] = []
        self._write_count = 0
        self._standing: Answer | str = Answer(204)
        self._hang_all = False
        self._script: collections.deque = collections.deque()
        self._poison: list[tuple[Callable[[str], bool], int, str | None]] = []
        self._max_lines: int | None = None
        self._can_write = True
        self._field_types: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        state = "running" if self._server else "stopped"
        return f"<InfluxStandin {self.url} {state} org={self.org!r} bucket={self.bucket!r}>"

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "InfluxStandin":
        """Listen on 127.0.0.1 (the same port as before after a stop()); returns self."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        with self._cond:
            self._stopping = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="influx-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every open connection (hung ones too), promptly.

        Data (accepted points, requests, field types) and the programmed behaviour
        are kept, so start() again brings "the same InfluxDB" back on the same port.
        """
        server = self._server
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        server.drop_connections(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> "InfluxStandin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------- programmable behaviour
    def answer(self, status: int = 204, message: str | None = None, retry_after=_DEFAULT,
               body: bytes | None = None, content_type: str | None = None) -> None:
        """Every following write gets this answer (204 = process normally).

        Also drops any pending script() and releases hung requests (their
        connections are closed without an answer).  retry_after defaults to 1
        for 429 and 503 and to no header otherwise; pass None to omit it.
        """
        with self._cond:
            self._standing = self._make_answer(status, message, retry_after, body, content_type)
            self._hang_all = False
            self._script.clear()
            self._release_locked()

    def script(self, answers: Iterable) -> None:
        """Queue answers, consumed one per write request, then back to the standing answer.

        Items: an int status, HANG ("hang"), an Answer, or a dict of Answer's fields.
        """
        items = [self._normalise(a) for a in answers]
        with self._cond:
            self._script.extend(items)

    def hang(self) -> None:
        """From now on read every request (any path) but never answer it, until
        answer(), release() or stop()."""
        with self._cond:
            self._hang_all = True

    def release(self) -> None:
        """Stop hanging: hung requests get their connection closed without an answer."""
        with self._cond:
            self._hang_all = False
            if self._standing == HANG:
                self._standing = Answer(204)
            self._release_locked()

    def reject_line(self, match: str | Callable[[str], bool] | None, status: int = 422,
                    reason: str | None = None) -> None:
        """Poison lines: a write holding a line that matches (substring or predicate)
        is answered `status` (422 or 400) naming that line, and nothing of it is stored.

        422 body: the partial-write field type conflict InfluxDB gives, on the
        line's measurement and first field (or "partial write: <reason>" if given).
        400 body: "unable to parse '<line>': <reason>" (reason defaults to
        "invalid field format").  reject_line(None) removes all poisons.
        """
        if status not in (400, 422):
            raise ValueError("reject_line status must be 400 or 422")
        with self._cond:
            if match is None:
                self._poison.clear()
                return
            pred = match if callable(match) else (lambda line, s=match: s in line)
            self._poison.append((pred, status, reason))

    def max_lines(self, n: int | None) -> None:
        """Writes with more than n lines are answered 413 (None: no limit)."""
        with self._cond:
            self._max_lines = n

    def deny_write(self, denied: bool = True) -> None:
        """The token loses (or regains) write permission on the bucket: 403."""
        with self._cond:
            self._can_write = not denied

    def set_field_type(self, measurement: str, field: str, kind: str) -> None:
        """Pretend the bucket already holds `field` of `measurement` with this type
        ("float", "integer", "unsigned", "string", "boolean")."""
        with self._cond:
            self._field_types[(measurement, field)] = kind

    def clear(self, schema: bool = False) -> None:
        """Forget requests and accepted points (and the field types if schema)."""
        with self._cond:
            self._requests.clear()
            self._points.clear()
            self._write_count = 0
            if schema:
                self._field_types.clear()

    # ------------------------------------------------------------------- inspection
    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def write_requests(self) -> int:
        """How many POST /api/v2/write requests were received (any outcome)."""
        with self._lock:
            return self._write_count

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.is_write]

    def accepted_lines(self) -> list[str]:
        """Every stored line, in arrival order, timestamp normalised to ns."""
        with self._lock:
            return [p.line for p in self._points]

    def accepted_points(self) -> list[Point]:
        with self._lock:
            return list(self._points)

    @property
    def field_types(self) -> dict[tuple[str, str], str]:
        with self._lock:
            return dict(self._field_types)

    @property
    def hanging(self) -> int:
        """Requests being held unanswered right now."""
        with self._lock:
            return self._hanging

    @property
    def open_connections(self) -> int:
        server = self._server
        if server is None:
            return 0
        with server.track:
            return len(server.conns)

    def wait_for_writes(self, n: int, timeout: float = 10.0) -> list[Request]:
        """Block until n write requests were received *and* answered (or hung)."""
        def done():
            w = [r for r in self._requests if r.is_write and (r.status is not None or r.hung)]
            return w if len(w) >= n else None
        return self._wait(done, timeout, f"{n} write requests")

    def wait_for_lines(self, n: int, timeout: float = 10.0) -> list[str]:
        """Block until at least n lines are stored; return them."""
        def done():
            return [p.line for p in self._points] if len(self._points) >= n else None
        return self._wait(done, timeout, f"{n} accepted lines")

    def _wait(self, predicate, timeout, what):
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
        if not result:
            raise AssertionError(f"InfluxStandin: timed out after {timeout}s waiting for {what}; "
                                 f"requests: {self.requests!r}")
        return result

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _make_answer(status, message=None, retry_after=_DEFAULT, body=None, content_type=None):
        if retry_after is _DEFAULT:
            retry_after = 1 if status in (429, 503) else None
        return Answer(status, message, retry_after, body, content_type)

    def _normalise(self, item):
        if item == HANG:
            return HANG
        if isinstance(item, Answer):
            return item
        if isinstance(item, int):
            return self._make_answer(item)
        if isinstance(item, dict):
            return self._make_answer(**item)
        raise TypeError(f"not an answer: {item!r}")

    def _release_locked(self):
        self._release_epoch += 1
        self._cond.notify_all()

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length > 0 else b""

    def _handle(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            raw = self._read_body(h)
        except (OSError, ValueError):
            h.close_connection = True
            return
        req = Request(received=time.time(), method=h.command, path=split.path, query=query,
                      headers=dict(h.headers.items()), raw_body=raw, body=raw)
        with self._cond:
            self._requests.append(req)
            if req.is_write:
                self._write_count += 1
            hang_all = self._hang_all
            self._cond.notify_all()
        if hang_all:
            return self._hold(h, req)
        try:
            if split.path == "/api/v2/write":
                if h.command != "POST":
                    # httprouter's method-not-allowed answer goes through the same error handler
                    return self._send_error(h, req, 405, "allow: POST, OPTIONS", extra={"Allow": "POST, OPTIONS"})
                return self._write(h, req)
            if split.path == "/health" and h.command in ("GET", "HEAD"):
                # http/health.go (HealthHandler): fmt.Fprintln of this exact text.
                body = ('{"name":"influxdb", "message":"ready for queries and writes", "status":"pass", '
                        f'"checks":[], "version": "{self.version}", "commit": "{INFLUXDB_COMMIT}"}}\n')
                return self._send(h, req, 200, body.encode(), {"Content-Type": JSON_CONTENT_TYPE})
            if split.path == "/ping" and h.command in ("GET", "HEAD"):
                # http/ping_handler.go: 204 with X-Influxdb-Build / X-Influxdb-Version.
                return self._send(h, req, 204)
            # the API router's not-found answer
            return self._send_error(h, req, 404, "path not found")
        except Exception as exc:  # a stand-in bug must not look like a network fault
            return self._send_error(h, req, 500, f"influx stand-in failure: {exc!r}")

    def _hold(self, h: _Handler, req: Request) -> None:
        """Never answer: wait until released, stopped, or the client goes away."""
        with self._cond:
            epoch = self._release_epoch
            self._hanging += 1
            req.hung = True
            self._cond.notify_all()
        try:
            while True:
                with self._cond:
                    if self._stopping or self._release_epoch != epoch:
                        break
                    self._cond.wait(0.05)
                if self._client_gone(h.connection):
                    break
        finally:
            with self._cond:
                self._hanging -= 1
                self._cond.notify_all()
        h.close_connection = True

    @staticmethod
    def _client_gone(conn: socket.socket) -> bool:
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _write(self, h: _Handler, req: Request) -> None:
        with self._cond:
            spec = self._script.popleft() if self._script else self._standing
        if spec == HANG:
            return self._hold(h, req)
        if spec.status != 204:
            return self._send_programmed(h, req, spec)
        try:
            points, dropped, reason = self._process_write(req)
        except _Reply as reply:
            return self._send_error(h, req, reply.status, reply.message, code=reply.code)
        if dropped:
            return self._send_error(h, req, 422, _partial_write_message(reason, dropped))
        return self._send(h, req, 204)

    def _process_write(self, req: Request):
        # Order of http/write_handler.go handleWrite, after the authentication middleware.
        auth = req.header("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme != "Token" or token != self._token:
            # http/errors.go UnauthorizedError: Code EUnauthorized, Msg "unauthorized access"
            raise _Reply(401, "unauthorized access")
        precision = req.query.get("precision") or "ns"
        if precision not in PRECISION_NS:
            # http/write_handler.go msgInvalidPrecision (EInvalid)
            raise _Reply(400, "invalid precision; valid precision units are ns, us, ms, and s")
        bucket = req.query.get("bucket", "")
        if not bucket:
            # http/write_handler.go decodeWriteRequest: ENotFound "bucket not found"
            raise _Reply(404, "bucket not found")
        gzipped = (req.header("Content-Encoding") or "") in ("gzip", "x-gzip")
        if gzipped and not req.raw_body.startswith(b"\x1f\x8b"):
            # points.BatchReadCloser returns gzip.NewReader's plain Go error; the
            # error handler answers non-influxdb errors as EInternal with
            # "An internal error has occurred" (kit/transport/http/error_handler.go).
            raise _Reply(500, "An internal error has occurred")
        org = req.query.get("org", "")
        if not org:
            # tenant ErrOrgNotFound
            raise _Reply(404, "organization not found")
        if org not in (self.org, self.org_id):
            # tenant/error_org.go OrgNotFoundByName
            raise _Reply(404, f'organization name "{org}" not found')
        if bucket not in (self.bucket, self.bucket_id):
            # tenant/error_bucket.go ErrBucketNotFoundByName: fmt.Sprintf("bucket %q not found", n)
            raise _Reply(404, f"bucket {_go_quote(bucket)} not found")
        with self._lock:
            can_write, max_lines = self._can_write, self._max_lines
            poisons = list(self._poison)
        if not can_write:
            # http/write_handler.go checkBucketWritePermissions: EForbidden
            raise _Reply(403, "insufficient permissions for write")
        body = req.raw_body
        if gzipped:
            try:
                body = gzip.decompress(body)
            except EOFError:
                # http/points/points_parser.go: EInternal, Msg "unable to read data"
                raise _Reply(500, "unable to read data: unexpected EOF") from None
            except (OSError, zlib.error):
                # gzip.ErrChecksum / ErrHeader are EInvalid there
                raise _Reply(400, "unable to read data: gzip: invalid checksum") from None
            req.body = body
        text = body.decode("utf-8", "replace")
        lines = split_lines(text)
        if max_lines is not None and len(lines) > max_lines:
            # http/points/points_parser.go: ErrMaxBatchSizeExceeded ("points batch is
            # too large") under Msg "unable to read data", code ETooLarge -> 413
            raise _Reply(413, "unable to read data: points batch is too large")
        if not body:
            # http/points/points_parser.go msgWritingRequiresPoints (EInvalid)
            raise _Reply(400, "writing requires points")
        precision_ns = PRECISION_NS[precision]
        now = time.time_ns()
        default_ns = now - now % precision_ns   # point.SetPrecision truncates time.Now()
        points, failed = [], []
        for line in lines:
            try:
                points.append(parse_point(line, default_ns, precision))
            except LineError as exc:
                # models/points.go ParsePointsWithPrecision: "unable to parse '%s': %v",
                # joined by "\n"; the write handler answers EInvalid with Msg "" -> 400
                failed.append(f"unable to parse '{line}': {exc}")
        if failed:
            raise _Reply(400, "\n".join(failed))
        self._check_poison(points, poisons)
        accepted, dropped, reason = [], 0, ""
        with self._cond:
            for point in points:
                conflict = None
                for field, kind in point.field_types.items():
                    existing = self._field_types.get((point.measurement, field))
                    if existing is not None and existing != kind:
                        conflict = _type_conflict_reason(point.measurement, field, kind, existing)
                        break
                if conflict:
                    dropped += 1
                    reason = reason or conflict   # only the first reason is kept (tsdb/shard.go)
                    continue
                for field, kind in point.field_types.items():
                    self._field_types[(point.measurement, field)] = kind
                accepted.append(point)
            self._points.extend(accepted)
            self._cond.notify_all()
        return accepted, dropped, reason

    @staticmethod
    def _check_poison(points: list[Point], poisons) -> None:
        hits = []
        for point in points:
            for pred, status, reason in poisons:
                if pred(point.sent_line):
                    hits.append((point, status, reason))
                    break
        if not hits:
            return
        if hits[0][1] == 400:
            raise _Reply(400, "\n".join(
                f"unable to parse '{p.sent_line}': {r or 'invalid field format'}" for p, _, r in hits))
        point, _, reason = hits[0]
        if reason is None:
            field, kind = next(iter(point.field_types.items()))
            reason = _type_conflict_reason(point.measurement, field, kind, _other_type(kind))
        raise _Reply(422, _partial_write_message(reason, len(hits)))

    # -------------------------------------------------------------------- answering
    def _send_programmed(self, h, req, spec: Answer) -> None:
        extra = {}
        if spec.retry_after is not None:
            extra["Retry-After"] = str(spec.retry_after)
        if spec.body is not None:
            headers = {"Content-Type": spec.content_type or "text/plain; charset=utf-8", **extra}
            return self._send(h, req, spec.status, spec.body, headers)
        message = spec.message if spec.message is not None else self._default_message(spec.status, req)
        return self._send_error(h, req, spec.status, message, extra=extra)

    def _default_message(self, status: int, req: Request) -> str:
        lines = req.lines
        first = lines[0] if lines else ""
        if status == 400:
            return f"unable to parse '{first}': invalid field format" if first else "writing requires points"
        if status == 401:
            return "unauthorized access"
        if status == 403:
            return "insufficient permissions for write"
        if status == 404:
            return f"bucket {_go_quote(req.query.get('bucket', ''))} not found"
        if status == 413:
            return "unable to read data: points batch is too large"
        if status == 422:
            try:
                point = parse_point(first, 0)
                field, kind = next(iter(point.field_types.items()))
                reason = _type_conflict_reason(point.measurement, field, kind, _other_type(kind))
            except (LineError, StopIteration, ValueError):
                reason = _type_conflict_reason("m", "value", "float", "integer")
            return _partial_write_message(reason, 1)
        if status == 429:
            # InfluxDB Cloud's write quota answer (docs "Exceeded limited_write plan
            # limit"; influxdb-client-python tests use the same JSON body).
            return "org 04014de4ed590000 has exceeded limited_write plan limit"
        if status == 500:
            # http/write_handler.go: EInternal "unexpected error writing points to
            # database" + the storage error (docs: "[shard <#>] fcntl: too many open files").
            return "unexpected error writing points to database: [shard 1] fcntl: too many open files"
        if status == 503:
            # code "unavailable" is the real 503 mapping; OSS has no fixed write-503 text.
            return "service unavailable"
        return f"stand-in programmed status {status}"

    def _send_error(self, h, req, status: int, message: str, code: str | None = None,
                    extra: dict | None = None) -> None:
        code = code or ERROR_CODES.get(status, "internal error")
        headers = {"Content-Type": JSON_CONTENT_TYPE, "X-Platform-Error-Code": code, **(extra or {})}
        self._send(h, req, status, go_json({"code": code, "message": message}), headers)

    def _send(self, h, req, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        headers = {"X-Influxdb-Build": INFLUXDB_BUILD, "X-Influxdb-Version": self.version,
                   **(headers or {})}
        with self._cond:  # recorded first: a client that has its answer sees the record
            req.status, req.response_body, req.response_headers = status, body, headers
            req.answered = time.time()
            self._cond.notify_all()
        try:
            h.send_response_only(status)
            h.send_header("Date", h.date_time_string())
            for key, value in headers.items():
                h.send_header(key, value)
            if status != 204 and not 100 <= status < 200:
                h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if h.command != "HEAD" and status != 204:
                h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            h.close_connection = True
