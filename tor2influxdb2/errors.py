"""Typed failures: an enum of reasons plus a message.

Health, logs and backoff read :class:`Reason`, never the text. Every message here has already
been through :func:`tor2influxdb2.redact.clip`: it is short, on one line, and holds no secret.

Exception tree::

    T2IError
     +- ConfigError      the configuration is unusable (all problems listed)
     +- SourceError      polling one tor (control port or MetricsPort) failed: .failure
     +- WriteError       a write request was not accepted: .failure, .status, .retry_after
     +- BufferUnusable   the durable buffer cannot be used (corrupt, foreign)
          +- BufferLocked  another daemon holds BUFFER_DIR
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import os

from .redact import clip


class Reason(enum.Enum):
    """Why something failed. ``back_off`` tells the poller to wait before the next try. Delivery
    retries HTTP_TRANSIENT with backoff; its other reasons (``sinks.influx.CONFIG_REASONS``) are
    configuration problems that keep the points and make the daemon unhealthy."""

    # -- polling a tor
    TIMEOUT = "timeout"              #: no complete answer within the time allowed
    REFUSED = "refused"              #: connection refused (nothing listens; tor restarting)
    CLOSED = "closed"                #: the peer closed or reset the connection
    UNREACHABLE = "unreachable"      #: no route, network down, address not available
    RESOLVE = "resolve"              #: the host name does not resolve
    AUTH = "auth"                    #: authentication impossible or refused
    PROTOCOL = "protocol"            #: the peer does not speak the expected protocol
    TOO_LARGE = "too_large"          #: the peer sent more than the daemon reads
    TOR_ERROR = "tor_error"          #: tor answered an error status to a question that must work
    NOT_POLLED = "not_polled"        #: the cycle ended before this tor's turn
    BACKING_OFF = "backing_off"      #: skipped: waiting out a backoff
    STOPPING = "stopping"            #: the daemon is stopping
    # -- delivering points
    HTTP_TRANSIENT = "http_transient"  #: down, timeout, 429, 5xx: retried with backoff
    HTTP_CONFIG = "http_config"      #: 401/403/404: token, organization or bucket wrong
    HTTP_BAD_DATA = "http_bad_data"  #: 400/422: the server refuses lines
    HTTP_TOO_LARGE = "http_too_large"  #: 413: the request is too large
    NOT_INFLUX = "not_influx"        #: an answer InfluxDB never gives to a write (200, a 3xx, HTML)
    TLS = "tls"                      #: TLS failed: certificate not trusted, wrong host name, ...
    PROXY = "proxy"                  #: the proxy refused: invalid onion address, bad credentials
    # -- anything else
    INTERNAL = "internal"            #: a bug: logged with its traceback at debug level

    @property
    def back_off(self) -> bool:
        return self in _BACK_OFF


_BACK_OFF = frozenset({Reason.TIMEOUT, Reason.AUTH, Reason.PROTOCOL, Reason.TOO_LARGE, Reason.TOR_ERROR,
                       Reason.INTERNAL})


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A reason and a short message for people (already redacted)."""

    reason: Reason
    message: str

    def __str__(self) -> str:
        return self.message


class T2IError(Exception):
    """Base of every exception this package raises on purpose."""


class ConfigError(T2IError):
    """The configuration is unusable. ``problems`` holds one line per problem, each naming the
    variable (and the entry); none contains a password, a token or a proxy credential."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class SourceError(T2IError):
    """Polling one source of one tor failed."""

    def __init__(self, failure: Failure):
        super().__init__(failure.message)
        self.failure = failure


class WriteError(T2IError):
    """A write request was not accepted. ``status`` is the HTTP status (None when no answer
    came), ``retry_after`` the server's Retry-After in seconds, if any."""

    def __init__(self, failure: Failure, status: int | None = None, retry_after: float | None = None):
        super().__init__(failure.message)
        self.failure, self.status, self.retry_after = failure, status, retry_after

    @property
    def reason(self) -> Reason:
        return self.failure.reason


class BufferUnusable(T2IError):
    """The durable buffer cannot be used (it is corrupt, of another layout, not a regular file)."""


class BufferLocked(BufferUnusable):
    """Another daemon holds the buffer's directory."""


_ERRNO_REASONS = {
    errno.ECONNREFUSED: (Reason.REFUSED, "connection refused"),
    errno.ENOENT: (Reason.REFUSED, "no such socket file"),
    errno.ECONNRESET: (Reason.CLOSED, "connection reset"),
    errno.EPIPE: (Reason.CLOSED, "connection closed"),
    errno.ENETUNREACH: (Reason.UNREACHABLE, "network unreachable"),
    errno.EHOSTUNREACH: (Reason.UNREACHABLE, "no route to host"),
    errno.EADDRNOTAVAIL: (Reason.UNREACHABLE, "address not available"),
    errno.ETIMEDOUT: (Reason.TIMEOUT, "connection timed out"),
    errno.EACCES: (Reason.REFUSED, "permission denied"),
    errno.EMFILE: (Reason.INTERNAL, "too many open files (raise the open-file limit: ulimit -n)"),
    errno.ENFILE: (Reason.INTERNAL, "too many open files in the system"),
}


def os_failure(err: int | OSError, prefix: str = "") -> Failure:
    """The failure a socket error (an OSError or an errno) means, its message after `prefix`."""
    code = err.errno if isinstance(err, OSError) else err
    reason, text = _ERRNO_REASONS.get(code, (Reason.CLOSED, None))
    if text is None:
        text = os.strerror(code) if code else clip(err)
    return Failure(reason, prefix + text)
