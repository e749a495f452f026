"""The InfluxDB sink: the v2 write API over urllib3, and the delivery thread.

:class:`InfluxWriter` sends lines in one ``POST /api/v2/write?org=&bucket=&precision=ms``
(gzip, ``Authorization: Token``), exactly what influxdb-client sends, through urllib3, the
client's own HTTP layer, used directly: every request is bounded for real (a guard shuts the
socket down at the deadline, whatever the server dribbles), only ``204 No Content`` (InfluxDB's
answer to an accepted write) counts as delivered, redirects are never followed (the token would
go along), and TLS and proxies are urllib3's. (influxdb-client 1.50 ignores a request timeout
given to write(), takes any 2xx as success, and its import alone costs 14 MiB.)

:class:`Delivery` is the thread that sends the buffer oldest first and applies the retry
policy by :class:`~tor2influxdb2.errors.Reason`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
import urllib.parse
import weakref
import zlib
from typing import Callable

from .. import __version__
from ..errors import Failure, Reason, WriteError
from ..redact import clip
from .buffer import Batch

LOG = logging.getLogger("tor2influxdb2")
MAX_LINES_PER_REQUEST = 5000
MAX_ERROR_BODY = 64 * 1024


class _Guard:
    """The sockets of one writer's connections, so a request can be cut at its deadline."""

    def __init__(self):
        self.sockets: weakref.WeakSet = weakref.WeakSet()
        self.fired = False

    def opened(self, sock) -> None:
        self.sockets.add(sock)

    def abort(self) -> None:
        import socket
        self.fired = True
        for sock in list(self.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _tracked_pools(manager, guard: _Guard) -> None:
    """Make every connection the manager opens report its socket to `guard`."""
    pools = {}
    for scheme, pool_cls in manager.pool_classes_by_scheme.items():
        conn_cls = pool_cls.ConnectionCls

        class Connection(conn_cls):  # type: ignore[misc, valid-type]
            def _new_conn(self):
                sock = super()._new_conn()
                guard.opened(sock)
                return sock

        pools[scheme] = type(f"Tracked{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": Connection})
    manager.pool_classes_by_scheme = pools


class InfluxWriter:
    """Sends lines to InfluxDB's write API; write() returns when InfluxDB answered 204 and raises
    WriteError otherwise. One connection, kept alive, for the process's life."""

    def __init__(self, url: str, org: str, bucket: str, token: str, timeout: float,
                 connect_timeout: float | None = None, ssl_context=None, proxy=None):
        """`timeout` bounds the wait for InfluxDB's answer, `connect_timeout` the connection (TCP, TLS
        and, through Tor, building the circuit to an onion service); a request never takes longer
        than both together."""
        import certifi
        import urllib3
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else min(timeout, 10.0)
        query = urllib.parse.urlencode({"org": org, "bucket": bucket, "precision": "ms"})
        self.url = f"{url}/api/v2/write?{query}"
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "text/plain; charset=utf-8",
                        "Content-Encoding": "gzip", "Accept": "application/json",
                        "User-Agent": f"tor2influxdb2/{__version__}"}
        if ssl_context is not None:
            options = {"ssl_context": ssl_context}
        else:
            options = {"cert_reqs": "CERT_REQUIRED", "ca_certs": certifi.where()}
        self.guard = _Guard()
        if proxy is not None:
            self.manager = proxy.manager(options)
        else:
            self.manager = urllib3.PoolManager(num_pools=2, maxsize=1, **options)
        _tracked_pools(self.manager, self.guard)
        self.requests = 0

    def write(self, lines: list[str], timeout: float | None = None) -> None:
        """One request with every line; bounded by `timeout` (default INFLUX_TIMEOUT) in all."""
        import urllib3
        limit = self.timeout + self.connect_timeout if timeout is None else min(timeout,
                                                                               self.timeout + self.connect_timeout)
        body = gzip_lines(lines)
        self.requests += 1
        guard = self.guard
        guard.fired = False
        timer = threading.Timer(limit, guard.abort)
        timer.daemon = True
        timer.start()
        try:
            response = self.manager.request(
                "POST", self.url, body=body, headers=self.headers, retries=False, redirect=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=min(self.connect_timeout, limit), read=min(self.timeout, limit)))
            status = response.status
            headers = dict(response.headers)
            if status == 204:
                response.release_conn()
                text = b""
            else:  # read a bounded part of the answer, then drop the connection
                try:
                    text = response.read(MAX_ERROR_BODY, decode_content=True)
                finally:
                    response.close()
        except Exception as exc:  # urllib3: refused, reset, timeout, DNS, TLS, proxy...
            if guard.fired:
                raise WriteError(Failure(Reason.HTTP_TRANSIENT, f"no answer from InfluxDB within {limit:g} s")) \
                    from None
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise WriteError(Failure(Reason.HTTP_TRANSIENT, f"no answer from InfluxDB within "
                                                                f"{min(self.timeout, limit):g} s")) from None
            raise classify_exception(exc) from None
        finally:
            timer.cancel()
        if status == 204:
            return
        raise classify_status(status, headers, text)

    def close(self) -> None:
        try:
            self.manager.clear()
        except Exception:  # noqa: BLE001
            pass


GZIP_LEVEL = 1  # line protocol compresses to ~14 % at level 1 and ~12 % at 5, for half the CPU


def gzip_lines(lines: list[str], piece: int = 256) -> bytes:
    """The lines joined by newlines, gzip-compressed (GZIP_LEVEL), a few hundred lines at a time: a
    5,000-line request never exists as one text and one byte string beside its compressed body."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip header and trailer
    out = []
    for start in range(0, len(lines), piece):
        text = "\n".join(lines[start:start + piece])
        out.append(compressor.compress((("\n" + text) if start else text).encode("utf-8")))
    out.append(compressor.flush())
    return b"".join(out)


def classify_status(status: int, headers: dict, body: bytes) -> WriteError:
    """A WriteError for any answer but 204, with the reason that decides the retry policy."""
    message = server_message(body, headers)
    retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    text = f"InfluxDB answered {status}: {message}"
    if status in (401, 403, 404):
        return WriteError(Failure(Reason.HTTP_CONFIG, text), status)
    if status in (400, 422):
        return WriteError(Failure(Reason.HTTP_BAD_DATA, text), status)
    if status == 413:
        return WriteError(Failure(Reason.HTTP_TOO_LARGE, text), status)
    if status == 429 or 500 <= status <= 599:
        return WriteError(Failure(Reason.HTTP_TRANSIENT, text), status, retry_after)
    kind = (headers.get("Content-Type") or headers.get("content-type") or "no content type").split(";")[0]
    if 300 <= status <= 399:
        hint = "a redirect, which is not followed (set INFLUX_URL to the final address)"
    else:
        hint = f"{kind}, not InfluxDB's 204 for a write: is INFLUX_URL a proxy, a login page or another server?"
    return WriteError(Failure(Reason.NOT_INFLUX, f"InfluxDB answered {status}: {hint}"), status)


def server_message(body: bytes, headers: dict) -> str:
    text = body.decode("utf-8", "replace") if body else ""
    if text:
        try:
            parsed = json.loads(text)
            if isinstance(parsed, dict) and parsed.get("message"):
                return clip(parsed["message"])
        except ValueError:
            pass
        return clip(text)
    return "no message"


def classify_exception(exc: BaseException) -> WriteError:
    """A WriteError for a request that got no answer, from the innermost cause urllib3 wraps."""
    import socket
    import ssl
    import urllib3.exceptions as e
    from .transport import socks_failure
    # (urllib3's NewConnectionError is a subclass of ConnectTimeoutError, whatever its cause)
    causes = [c for c in _chain(exc) if not isinstance(c, e.NewConnectionError)]
    socks_errors = [c for c in causes if "socks" in type(c).__module__]
    for cause in sorted(socks_errors, key=lambda c: type(c).__name__ == "GeneralProxyError"):
        failure = socks_failure(cause)
        if failure is not None:
            return WriteError(failure)
    if any(isinstance(c, (ssl.SSLError, ssl.CertificateError, e.SSLError)) for c in causes):
        return WriteError(Failure(Reason.TLS, f"TLS failed: {_ssl_reason(exc)}"))
    if isinstance(exc, e.ProxyError) and not any(isinstance(c, ConnectionRefusedError) for c in causes):
        return WriteError(Failure(Reason.HTTP_TRANSIENT, f"the proxy failed: {clip(_innermost(exc), 160)}"))
    for kinds, text in (((ConnectionRefusedError,), "connection refused"),
                        ((socket.gaierror, e.NameResolutionError), "cannot resolve host"),
                        ((ConnectionResetError, BrokenPipeError), "connection reset"),
                        ((socket.timeout, TimeoutError, e.ConnectTimeoutError, e.ReadTimeoutError), "timed out"),
                        ((e.ProtocolError,), "connection closed without an answer")):
        if any(isinstance(c, kinds) for c in causes):
            return WriteError(Failure(Reason.HTTP_TRANSIENT, f"cannot reach InfluxDB: {text}"))
    inner = _innermost(exc)
    return WriteError(Failure(Reason.HTTP_TRANSIENT, f"cannot reach InfluxDB: {clip(inner, 160)}"))


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, the ones urllib3 wraps in .reason, and their __cause__/__context__."""
    seen, todo = [], [exc]
    while todo and len(seen) < 20:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        for nxt in (getattr(item, "reason", None), getattr(item, "socket_err", None), item.__cause__,
                    item.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return seen


def _innermost(exc: BaseException) -> BaseException:
    seen = exc
    while getattr(seen, "reason", None) is not None and isinstance(seen.reason, BaseException):
        seen = seen.reason
    return seen


_TLS_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate (INFLUX_CLIENT_CERT/KEY)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (a client certificate required?)",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust this client certificate",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS there (is INFLUX_URL http?)",
}


def _ssl_reason(exc: BaseException) -> str:
    import ssl
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return clip(f"certificate verify failed: {cause.verify_message}", 160)
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLError):
            reason = getattr(cause, "reason", None) or ""
            if reason in _TLS_ALERTS:
                return _TLS_ALERTS[reason]
            if isinstance(cause, ssl.SSLEOFError) or "EOF occurred" in str(cause):
                return "the server closed the TLS connection (it may refuse this client certificate)"
            return clip(reason or cause, 160)
    return clip(_innermost(exc), 160)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None.
    Capped at an hour: a server cannot park the daemon forever."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(3600.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    try:
        return min(3600.0, max(0.0, when.timestamp() - now()))
    except (OverflowError, OSError, ValueError):
        return None


#: Reasons that mean "fix the configuration": points kept, unhealthy at once, retried every 30 s.
CONFIG_REASONS = frozenset({Reason.HTTP_CONFIG, Reason.NOT_INFLUX, Reason.TLS, Reason.PROXY})


class Delivery:
    """The delivery thread: sends the buffer to InfluxDB oldest first, at most
    MAX_LINES_PER_REQUEST lines a request, and removes lines only once InfluxDB accepted them.

    Retry policy by reason: transient (down, timeout, 429, 5xx) -> backoff from 1 s doubling to
    60 s (or the server's Retry-After); configuration (401/403/404, TLS, not InfluxDB) -> points
    kept, retried every 30 s, logged once per change; bad data (400/422) -> the batch is split to
    find the refused lines, which alone are dropped and logged; 413 -> the batch size is halved."""

    CONFIG_RETRY = 30.0
    MAX_BACKOFF = 60.0

    def __init__(self, writer: InfluxWriter, buffer, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic, batch_lines: int = MAX_LINES_PER_REQUEST):
        self.writer, self.buffer, self.stop_event, self.clock = writer, buffer, stop, clock
        self.batch_lines = batch_lines
        self.wake = threading.Event()
        self.failing_since: float | None = None
        self.last_failure: Failure | None = None
        self.backoff = 0.0
        self.retry_at = 0.0
        self._dropped_full = 0
        self._dropped_logged_at = -1e9
        self._degraded_logged_at = -1e9
        self.thread = threading.Thread(target=self._loop, name="delivery", daemon=True)

    @property
    def last_error(self) -> str | None:
        return None if self.last_failure is None else self.last_failure.message

    @property
    def config_problem(self) -> Failure | None:
        """The current failure when it is a configuration problem (unhealthy at once)."""
        failure = self.last_failure
        return failure if failure is not None and failure.reason in CONFIG_REASONS else None

    # -- called from the main loop
    def start(self) -> None:
        self.thread.start()

    def submit(self, lines: list[str], collected_ms: list[int]) -> None:
        dropped = self.buffer.append(lines, collected_ms)
        if dropped:
            self._dropped_full += dropped
            now = self.clock()
            if now - self._dropped_logged_at >= 60:
                LOG.warning("buffer full (%d points or its memory bound): dropped the %d oldest points",
                            self.buffer.max_points, self._dropped_full)
                self._dropped_full, self._dropped_logged_at = 0, now
        self.wake.set()

    def waiting(self) -> tuple[int, float | None]:
        """(points waiting, age in seconds of the oldest, or None)."""
        count = len(self.buffer)
        oldest = self.buffer.oldest_ms() if count else None
        return count, (None if oldest is None else max(0.0, time.time() - oldest / 1000))

    # -- the thread
    def _loop(self) -> None:
        while not self.stop_event.is_set():
            wait = max(0.0, self.retry_at - self.clock())
            if wait > 0 or len(self.buffer) == 0:
                self.wake.wait(wait if wait > 0 else None)
                self.wake.clear()
                if self.stop_event.is_set() or self.retry_at > self.clock():
                    continue
            try:
                self.deliver_once()
            except Exception as exc:  # e.g. a disk error under BUFFER_DIR: keep the thread alive
                LOG.error("delivery: unexpected error: %s; retrying in 5 s", clip(exc))
                LOG.debug("delivery: unexpected error", exc_info=True)
                self.retry_at = self.clock() + 5

    def deliver_once(self, timeout: float | None = None) -> bool:
        """Send one batch from the head of the buffer. True when it (or part of it) was delivered."""
        batch = self.buffer.head(self.batch_lines)
        if batch is None:
            return False
        try:
            self.writer.write(batch.lines, timeout)
        except WriteError as failure:
            return self._failed(batch, failure, timeout)
        self._accepted(batch)
        return True

    def _accepted(self, batch: Batch) -> None:
        self.buffer.remove(batch)
        if self.failing_since is not None:
            LOG.info("InfluxDB accepts writes again after %.0f s", self.clock() - self.failing_since)
        self.failing_since, self.last_failure, self.backoff, self.retry_at = None, None, 0.0, 0.0

    def _failed(self, batch: Batch, error: WriteError, timeout: float | None) -> bool:
        now = self.clock()
        reason = error.reason
        if reason == Reason.HTTP_BAD_DATA or (reason == Reason.HTTP_TOO_LARGE and len(batch.ids) == 1):
            return self._split(batch, error, timeout)
        if reason == Reason.HTTP_TOO_LARGE and len(batch.ids) > 1:
            self.batch_lines = max(1, len(batch.ids) // 2)
            LOG.warning("%s; sending at most %d lines per request", error.failure, self.batch_lines)
            return False
        if self.failing_since is None:
            self.failing_since = now
        if reason in CONFIG_REASONS:
            delay = self.CONFIG_RETRY
        else:
            self.backoff = min(self.MAX_BACKOFF, self.backoff * 2 if self.backoff else 1.0)
            # the server's Retry-After, but never at once: "0" or a past date would mean a request
            # after request as fast as it answers
            delay = max(1.0, error.retry_after) if error.retry_after is not None else self.backoff
        self.retry_at = now + delay
        if error.failure != self.last_failure:
            hint = ""
            if reason == Reason.HTTP_CONFIG:
                hint = " (check INFLUX_TOKEN, INFLUX_ORGANIZATION and INFLUX_BUCKET)"
            LOG.error("write failed: %s%s; points are kept, next try in %.0f s", error.failure, hint, delay)
        self.last_failure = error.failure
        self._log_degraded(now)
        return False

    def _split(self, batch: Batch, error: WriteError, timeout: float | None) -> bool:
        """Find the lines InfluxDB refuses by bisection; deliver the rest, drop only those."""
        if len(batch.ids) == 1:
            LOG.error("dropping a point InfluxDB refuses: %s; the line was: %s", error.failure,
                      clip(batch.lines[0], 400))
            self.buffer.remove(batch)
            return False
        middle = len(batch.ids) // 2
        delivered = False
        for part in (Batch(batch.ids[:middle], batch.lines[:middle], batch.source),
                     Batch(batch.ids[middle:], batch.lines[middle:], batch.source)):
            try:
                self.writer.write(part.lines, timeout)
            except WriteError as sub:
                if sub.reason == Reason.HTTP_BAD_DATA:
                    delivered |= self._split(part, sub, timeout)
                    continue
                return self._failed(part, sub, timeout) or delivered
            self._accepted(part)
            delivered = True
        return delivered

    def _log_degraded(self, now: float) -> None:
        if now - self._degraded_logged_at < 60:
            return
        count, age = self.waiting()
        if count:
            LOG.warning("%d points waiting for InfluxDB, the oldest for %.0f s (buffer: %s)",
                        count, age or 0, "disk" if self.buffer.durable else "memory")
            self._degraded_logged_at = now

    def finish(self, budget: float) -> None:
        """At shutdown: one last delivery attempt bounded to `budget` seconds."""
        end = self.clock() + budget
        self.wake.set()
        if self.thread.ident is not None:
            self.thread.join(max(0.0, min(0.5, end - self.clock())))
        while len(self.buffer) and not self.thread.is_alive():
            left = end - self.clock()
            if left < 0.2 or not self.deliver_once(timeout=left):
                break
        count = len(self.buffer)
        if count:
            where = "kept in BUFFER_DIR for the next start" if self.buffer.durable else "lost (no BUFFER_DIR)"
            LOG.warning("stopping with %d points not delivered: %s", count, where)
