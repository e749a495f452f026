#!/usr/bin/env python3
"""tor2influxdb2: poll the control ports of Tor daemons and write their statistics to InfluxDB 2.

Read this file top to bottom; it is laid out in the order the data flows:

1. Settings       every environment variable, parsed once, all problems reported together
2. Tor polling    one kept-open, authenticated control connection per tor, polled concurrently
3. Points         tor's answers turned into the measurements traffic / connections / handshakes
4. Writing        a buffer (memory or SQLite) and a writer thread with a retry policy per answer
5. Health         the health file Docker's HEALTHCHECK reads, and its watchdog
6. Main loop      a fixed-rate schedule on a monotonic clock, signals, start and stop

The Tor control protocol is spoken by stem and InfluxDB's write API by influxdb-client;
this file only decides what to ask, when, and what to do with the answers.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import email.utils
import ipaddress
import itertools
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Callable, Iterable, Mapping

import stem
import stem.connection
import stem.response
import stem.socket
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

__version__ = "2.0.0"

LOG = logging.getLogger("tor2influxdb2")


# =============================================================================================
# 1. Settings
# =============================================================================================

DEFAULT_PERIOD = 10
DEFAULT_TOR_TIMEOUT = 5.0
DEFAULT_INFLUX_PORT = 8086
DEFAULT_INFLUX_TIMEOUT = 10.0
DEFAULT_HEALTHCHECK_FILE = "/healthcheck"
# 24 h of 50 hosts polled every 10 s, 3 points each (issue: "enough for 24 h of 50 hosts at 10 s")
DEFAULT_BUFFER_MAX_POINTS = 24 * 3600 // 10 * 50 * 3

TRUE_WORDS = {"true", "yes", "1", "on"}
FALSE_WORDS = {"false", "no", "0", "off"}
# A DNS name or compose service name: labels of letters, digits, '-' and '_', dot-separated.
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")


class ConfigError(Exception):
    """The configuration is unusable. `problems` holds one human-readable line per problem;
    none of them contains a password or a token."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class TorHost:
    """One entry of TOR_HOSTS: where a tor's control port is, how to log in, and its `host` tag.

    Exactly one of (address, port) and socket_path is set. The password is kept out of repr()."""

    name: str
    address: str | None = None  # IPv4/IPv6 literal (no brackets) or DNS name, resolved at each connect
    port: int | None = None
    socket_path: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def where(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        if ":" in (self.address or ""):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    def describe(self) -> str:
        """One line for the start-up log; the password is shown as ****."""
        auth = "password ****" if self.password else "cookie or no auth"
        return f"{self.name} at {self.where} ({auth})"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the daemon was told, validated. Built only by config_from_env()."""

    tor_hosts: tuple[TorHost, ...]
    test_mode: bool = False
    period: int = DEFAULT_PERIOD
    tor_timeout: float = DEFAULT_TOR_TIMEOUT
    influx_url: str | None = None
    influx_org: str | None = None
    influx_bucket: str | None = None
    influx_token: str | None = dataclasses.field(default=None, repr=False)
    influx_timeout: float = DEFAULT_INFLUX_TIMEOUT
    service_tag: str = "tor"
    send_version_tag: bool = True
    verbose: bool = False
    healthcheck_file: str = DEFAULT_HEALTHCHECK_FILE
    buffer_dir: str | None = None
    buffer_max_points: int = DEFAULT_BUFFER_MAX_POINTS

    def secrets(self) -> list[str]:
        """Every secret the logs must never show."""
        found = [h.password for h in self.tor_hosts if h.password]
        if self.influx_token:
            found.append(self.influx_token)
        return found


def parse_tor_host(entry: str) -> TorHost:
    """Parse one TOR_HOSTS entry; raise ValueError with a message that never quotes the password.

    Forms: HOST:PORT:NAME, HOST:PORT:PASSWORD:NAME (the password is everything between PORT and
    the last ':', so it may contain ':'), [IPv6]:PORT[:PASSWORD]:NAME, unix:PATH[:PASSWORD]:NAME.
    An empty password (HOST:PORT::NAME) means no password, as if it were left out."""
    if entry.startswith("unix:"):
        path, sep, rest = entry[5:].partition(":")
        if not path.startswith("/"):
            raise ValueError("a unix socket path must be absolute (unix:/path/to/control.sock:NAME)")
        if not sep:
            raise ValueError("expected unix:PATH:NAME or unix:PATH:PASSWORD:NAME (no name given)")
        password, _, name = rest.rpartition(":")
        return TorHost(name=_check_name(name), socket_path=path, password=password or None)

    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ValueError("an IPv6 address opened with '[' has no ']'")
        address, rest = entry[1:close], entry[close + 1:]
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ValueError(f"[{address}] is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError("expected [IPv6]:PORT:NAME or [IPv6]:PORT:PASSWORD:NAME")
        rest = rest[1:]
    else:
        address, sep, rest = entry.partition(":")
        if _looks_like_bare_ipv6(entry):
            raise ValueError("an IPv6 address must be written in brackets, e.g. [::1]:9051:NAME")
        if not address:
            raise ValueError("the host is empty")
        if not sep:
            raise ValueError("expected HOST:PORT:NAME or HOST:PORT:PASSWORD:NAME")
        if not _is_ipv4(address) and not HOSTNAME_RE.match(address):
            raise ValueError(f"host {address!r} is neither an IPv4 address nor a DNS name")

    port_text, sep, rest = rest.partition(":")
    if not sep:
        raise ValueError("expected HOST:PORT:NAME or HOST:PORT:PASSWORD:NAME (too few fields)")
    port = _parse_port(port_text)
    password, _, name = rest.rpartition(":")
    return TorHost(name=_check_name(name), address=address, port=port, password=password or None)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def _looks_like_bare_ipv6(entry: str) -> bool:
    """True for an IPv6 address written without brackets (its second field is then no port)."""
    parts = entry.split(":")
    if len(parts) > 1 and parts[1].strip().isdigit():
        return False
    for k in range(3, len(parts)):
        try:
            ipaddress.IPv6Address(":".join(parts[:k]))
            return True
        except ValueError:
            pass
    return False


def _parse_port(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("the name (the host tag, last field) is empty")
    return name


def parse_tor_hosts(entries: Iterable[tuple[str, str]]) -> tuple[list[TorHost], list[str]]:
    """Parse (label, text) pairs, e.g. ("TOR_HOSTS entry 2", "10.0.0.2:9051:pw:relay2").

    Returns the hosts and a list of problems (bad entries, duplicate names); never raises."""
    hosts, problems, seen = [], [], {}
    for label, text in entries:
        try:
            host = parse_tor_host(text.strip())
        except ValueError as exc:
            problems.append(f"{label}: {exc}")
            continue
        if host.name in seen:
            problems.append(f"{label}: name {host.name!r} is already used by {seen[host.name]}")
            continue
        seen[host.name] = label
        hosts.append(host)
    return hosts, problems


def _parse_bool(env: Mapping[str, str], name: str, default: bool, problems: list[str]) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    problems.append(f"{name}: {env[name]!r} is not true or false")
    return default


def _read_secret_file(env: Mapping[str, str], name: str, problems: list[str]) -> str | None:
    """Content of the file named by env[name] (Docker secrets), or None if unset."""
    path = env.get(name, "").strip()
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{name}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return None


def _influx_url(env: Mapping[str, str], problems: list[str]) -> str | None:
    """The base URL of InfluxDB from INFLUX_URL, or from INFLUX_HOST (+ INFLUX_PORT)."""
    url, host, port = (env.get(k, "").strip() for k in ("INFLUX_URL", "INFLUX_HOST", "INFLUX_PORT"))
    port_number = None
    if port:
        try:
            port_number = _parse_port(port)
        except ValueError as exc:
            problems.append(f"INFLUX_PORT: {exc}")
    if url and host:
        problems.append("INFLUX_URL and INFLUX_HOST are both set: set one of them")
        return None
    if not url and not host:
        return None
    text = url or host
    if "://" not in text:
        text = "http://" + text  # a bare host name means http, as in the original
    try:
        parts = urllib.parse.urlsplit(text)
        parts_port = parts.port
    except ValueError as exc:
        problems.append(f"{'INFLUX_URL' if url else 'INFLUX_HOST'}: not a valid URL ({exc})")
        return None
    variable = "INFLUX_URL" if url else "INFLUX_HOST"
    if parts.scheme not in ("http", "https"):
        problems.append(f"{variable}: scheme must be http or https, not {parts.scheme!r}")
        return None
    if not parts.hostname:
        problems.append(f"{variable}: no host name in {text!r}")
        return None
    if parts.username or parts.password:
        problems.append(f"{variable}: must not contain credentials (use INFLUX_TOKEN or INFLUX_TOKEN_FILE)")
        return None
    if parts_port and port_number and parts_port != port_number:
        problems.append(f"INFLUX_PORT: {port_number} contradicts the port {parts_port} in {variable}")
    final_port = parts_port or port_number or (DEFAULT_INFLUX_PORT if not url else None)
    netloc = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if final_port:
        netloc += f":{final_port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _parse_number(env, name, default, problems, *, integer, minimum):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or value != value:  # value != value: NaN
        kind = "an integer" if integer else "a number"
        problems.append(f"{name}: {raw!r} is not {kind} >= {minimum}")
        return default
    return value


def config_from_env(env: Mapping[str, str], test_mode: bool = False) -> Settings:
    """Build Settings from environment variables, touching no network.

    Raises ConfigError listing EVERY problem found, one line each, naming the variable and the
    entry number; passwords and tokens never appear in it."""
    problems: list[str] = []

    tor_hosts_text = env.get("TOR_HOSTS", "")
    hosts_file_text = _read_secret_file(env, "TOR_HOSTS_FILE", problems)
    if tor_hosts_text.strip() and env.get("TOR_HOSTS_FILE", "").strip():
        problems.append("TOR_HOSTS and TOR_HOSTS_FILE are both set: set one of them")
        hosts = []
    elif hosts_file_text is not None:
        entries = [(f"TOR_HOSTS_FILE line {n}", line) for n, line in enumerate(hosts_file_text.splitlines(), 1)
                   if line.strip() and not line.strip().startswith("#")]
        hosts, host_problems = parse_tor_hosts(entries)
        problems += host_problems
        if not entries:
            problems.append("TOR_HOSTS_FILE: the file has no entries")
    elif tor_hosts_text.strip():
        entries = [(f"TOR_HOSTS entry {n}", e) for n, e in enumerate(tor_hosts_text.split(","), 1)]
        hosts, host_problems = parse_tor_hosts(entries)
        problems += host_problems
    else:
        hosts = []
        if not env.get("TOR_HOSTS_FILE", "").strip():
            problems.append("TOR_HOSTS: not set or empty (e.g. TOR_HOSTS=127.0.0.1:9051:PASSWORD:myrelay)")

    period = _parse_number(env, "RUN_EVERY_SECONDS", DEFAULT_PERIOD, problems, integer=True, minimum=1)
    timeout_default = min(DEFAULT_TOR_TIMEOUT, round(period * 0.8, 3))
    tor_timeout = _parse_number(env, "TOR_TIMEOUT", timeout_default, problems, integer=False, minimum=0.1)
    if env.get("TOR_TIMEOUT", "").strip() and tor_timeout >= period:
        problems.append(f"TOR_TIMEOUT: {tor_timeout:g} s must be below RUN_EVERY_SECONDS ({period} s)")
    influx_timeout = _parse_number(env, "INFLUX_TIMEOUT", DEFAULT_INFLUX_TIMEOUT, problems,
                                   integer=False, minimum=0.1)
    send_version = _parse_bool(env, "INFLUX_SEND_VERSION_TAG", True, problems)
    verbose = _parse_bool(env, "VERBOSE", False, problems)
    service_tag = env.get("INFLUX_SERVICE_TAG", "tor").strip()
    buffer_max = _parse_number(env, "BUFFER_MAX_POINTS", DEFAULT_BUFFER_MAX_POINTS, problems,
                               integer=True, minimum=1)

    url = _influx_url(env, problems)
    org = env.get("INFLUX_ORGANIZATION", "").strip() or None
    bucket = env.get("INFLUX_BUCKET", "").strip() or None
    token = env.get("INFLUX_TOKEN", "").strip() or None
    token_file = _read_secret_file(env, "INFLUX_TOKEN_FILE", problems)
    if token and env.get("INFLUX_TOKEN_FILE", "").strip():
        problems.append("INFLUX_TOKEN and INFLUX_TOKEN_FILE are both set: set one of them")
    elif token_file is not None:
        token = token_file.strip() or None
        if token is None:
            problems.append("INFLUX_TOKEN_FILE: the file is empty")
    if not test_mode:
        if url is None and not any(p.startswith(("INFLUX_URL", "INFLUX_HOST")) for p in problems):
            problems.append("INFLUX_HOST: not set (e.g. INFLUX_HOST=http://influxdb, or set INFLUX_URL)")
        if org is None:
            problems.append("INFLUX_ORGANIZATION: not set")
        if bucket is None:
            problems.append("INFLUX_BUCKET: not set")
        if token is None and not env.get("INFLUX_TOKEN_FILE", "").strip():
            problems.append("INFLUX_TOKEN: not set (or give INFLUX_TOKEN_FILE)")

    if problems:
        raise ConfigError(problems)
    return Settings(
        tor_hosts=tuple(hosts), test_mode=test_mode, period=period, tor_timeout=tor_timeout,
        influx_url=url, influx_org=org, influx_bucket=bucket, influx_token=token,
        influx_timeout=influx_timeout, service_tag=service_tag, send_version_tag=send_version,
        verbose=verbose, healthcheck_file=env.get("HEALTHCHECK_FILE", "").strip() or DEFAULT_HEALTHCHECK_FILE,
        buffer_dir=env.get("BUFFER_DIR", "").strip() or None, buffer_max_points=buffer_max)


# =============================================================================================
# 2. Tor polling
# =============================================================================================

# Everything is asked in ONE GETINFO. circuit-status / stream-status are counted by lines.
GETINFO_KEYS = (
    "version", "traffic/read", "traffic/written",
    "stats/ntor/requested", "stats/ntor/assigned", "stats/tap/requested", "stats/tap/assigned",
    "circuit-status", "stream-status",
)
LINE_COUNT_KEYS = {"circuit-status", "stream-status"}


class PollError(Exception):
    """Polling one tor failed; the message says why in a few words (never a password).
    `timed_out` is true when tor did not answer in time (as opposed to refusing or hanging up);
    `back_off` when trying again at once would only fail the same way, slowly or noisily
    (a timeout, wrong credentials)."""

    def __init__(self, message: str, timed_out: bool = False, back_off: bool | None = None):
        super().__init__(message)
        self.timed_out = timed_out
        self.back_off = timed_out if back_off is None else back_off


@dataclasses.dataclass(slots=True)
class TorStats:
    """What one tor answered at one poll. `values` maps GETINFO keys to integers (line counts for
    circuit-status/stream-status); a key the tor does not know is absent. `collected_ms` is the
    wall-clock time (ms since the epoch) at which the answer arrived."""

    host: TorHost
    version: str
    values: dict[str, int]
    collected_ms: int


class _DeadlineSocket:
    """Mixin for stem's ControlSocket subclasses: every socket stem opens (also when it reconnects by
    itself inside PROTOCOLINFO) gets a timeout equal to what is left until `deadline`."""

    deadline = 0.0
    raw = None  # the last socket made, so another thread can shut it down
    aborted = False  # set by abort(): stem must not reconnect by itself after it

    def set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        if self.raw is not None:
            self.raw.settimeout(self.remaining())

    def remaining(self) -> float:
        if self.aborted:
            raise stem.SocketError("timed out")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise stem.SocketError("timed out")
        return left

    def _connect(self) -> None:
        # stem wraps the socket in makefile('rwb') with two 8 KiB buffers; replies are a few hundred
        # bytes, and at 1,000 kept-open tors those buffers alone would be 16 MB of the daemon's memory
        # (the bench: 512-byte buffers cost no measurable CPU).
        old, self._socket_file = self._socket_file, self._socket.makefile(mode="rwb", buffering=512)
        old.close()
        super()._connect()

    def abort(self) -> None:
        """Unblock a reader in another thread at once (used when a poll overstays its deadline)."""
        self.aborted = True
        raw = self.raw
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class TimedControlPort(_DeadlineSocket, stem.socket.ControlPort):
    """stem's ControlPort for IPv4, IPv6 and DNS names (resolved at each connect), with timeouts."""

    def __init__(self, address: str, port: int):
        super().__init__(address=address, port=port, connect=False)

    def is_localhost(self) -> bool:
        return self.address in ("127.0.0.1", "::1", "localhost")

    def _make_socket(self):
        try:
            self.raw = socket.create_connection((self.address, self.port), timeout=self.remaining())
        except OSError as exc:
            raise stem.SocketError(_os_reason(exc)) from None
        return self.raw


class TimedControlSocketFile(_DeadlineSocket, stem.socket.ControlSocketFile):
    """stem's ControlSocketFile (a tor ControlSocket) with timeouts."""

    def __init__(self, path: str):
        super().__init__(path=path, connect=False)

    def _make_socket(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.remaining())
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise stem.SocketError(_os_reason(exc)) from None
        self.raw = sock
        return sock


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout) or "timed out" in str(exc):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror or exc})"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class TorConnection:
    """One tor: an authenticated control connection kept open across cycles.

    poll() connects and authenticates when there is no live connection (cookie, SAFECOOKIE,
    password or none, as tor offers, through stem.connection.authenticate), sends one GETINFO
    and returns TorStats, all within `timeout` seconds, or raises PollError and drops the
    connection so the next poll starts afresh. Thread-safe; abort() may be called from any thread."""

    def __init__(self, host: TorHost, timeout: float):
        self.host, self.timeout = host, timeout
        self.keys = GETINFO_KEYS  # a key this tor answers 552 for is dropped from its own copy
        self.command = "GETINFO " + " ".join(self.keys)
        self._sock: _DeadlineSocket | None = None
        self._lock = threading.Lock()
        self.connects = 0  # how many times a connection was opened (for tests and the bench)

    def poll(self) -> TorStats:
        """Connect and authenticate if needed, ask, and read the answer, within `timeout` seconds."""
        with self._lock:
            deadline = time.monotonic() + self.timeout
            return self._guarded(deadline, lambda: self._ask_and_read(deadline))

    def ask(self) -> float | None:
        """On a live connection, send the GETINFO now and return the deadline for its answer
        (read it with answer()); None when there is no live connection (use poll()).
        Sending all tors' questions at once lets their round trips overlap."""
        with self._lock:
            if not self._connected():
                return None
            deadline = time.monotonic() + self.timeout
            self._guarded(deadline, lambda: self._send(deadline))
            return deadline

    def answer(self, deadline: float) -> TorStats:
        """Read the answer to ask()."""
        with self._lock:
            return self._guarded(deadline, lambda: self._read(deadline))

    def _guarded(self, deadline: float, action: Callable[[], TorStats | None]):
        """Run `action`; turn every failure into PollError and drop the connection."""
        try:
            return action()
        except PollError:
            self._drop()
            raise
        except (stem.SocketClosed, stem.SocketError) as exc:
            self._drop()
            reason = str(exc) or "connection closed"
            if "timed out" in reason or time.monotonic() >= deadline:
                raise PollError(f"no answer within {self.timeout:g} s", timed_out=True) from None
            raise PollError(_short(reason)) from None
        except stem.connection.AuthenticationFailure as exc:
            self._drop()
            reason = str(exc)
            if "timed out" in reason or time.monotonic() >= deadline:
                raise PollError(f"no answer within {self.timeout:g} s", timed_out=True) from None
            if reason.startswith("socket connection failed") or _socket_trouble(exc):
                raise PollError(f"connection lost during authentication: {_short(reason)}") from None
            raise PollError(f"authentication failed: {_short(exc)}", back_off=True) from None
        except stem.ProtocolError as exc:
            self._drop()
            raise PollError(f"protocol error: {_short(exc)}") from None
        except stem.ControllerError as exc:
            self._drop()
            raise PollError(f"tor refused: {_short(exc)}") from None
        except BaseException:  # anything unforeseen: never reuse a connection in an unknown state
            self._drop()
            raise

    def _connected(self) -> bool:
        return self._sock is not None and self._sock.is_alive() and not self._sock.aborted

    def _ask_and_read(self, deadline: float) -> TorStats:
        if not self._connected():
            self._drop()
            if self.host.socket_path is not None:
                self._sock = TimedControlSocketFile(self.host.socket_path)
            else:
                self._sock = TimedControlPort(self.host.address, self.host.port)
            self._sock.set_deadline(deadline)
            self._sock.connect()
            self.connects += 1
            stem.connection.authenticate(self._sock, password=self.host.password)
        self._send(deadline)
        return self._read(deadline)

    def _send(self, deadline: float) -> None:
        self._sock.set_deadline(deadline)
        self._sock.send(self.command)

    def _read(self, deadline: float) -> TorStats:
        while True:
            self._sock.set_deadline(deadline)
            reply = self._sock.recv()
            collected_ms = time.time_ns() // 1_000_000
            try:
                stem.response.convert("GETINFO", reply)
            except stem.InvalidArguments as exc:  # 552: keys this tor does not know
                unknown = [k for k in exc.arguments if k in self.keys]
                if not unknown or "version" in unknown:
                    raise PollError(f"tor answered {exc.code}: {_short(exc.message)}") from None
                LOG.warning("%s: tor does not know %s; polling it without %s from now on",
                            self.host.name, ", ".join(unknown), "them" if len(unknown) > 1 else "it")
                self.keys = tuple(k for k in self.keys if k not in unknown)
                self.command = "GETINFO " + " ".join(self.keys)
                self._send(deadline)
                continue
            except stem.OperationFailed as exc:
                raise PollError(f"tor answered {exc.code}: {_short(exc.message)}") from None
            return self._stats(reply.entries, collected_ms)

    def _stats(self, entries: dict[str, bytes], collected_ms: int) -> TorStats:
        values = {}
        for key in self.keys:
            if key == "version":
                continue
            raw = entries.get(key)
            if raw is None:
                raise PollError(f"tor's answer lacks {key}")
            if key in LINE_COUNT_KEYS:
                values[key] = sum(1 for line in raw.splitlines() if line.strip())
            else:
                try:
                    values[key] = int(raw)
                except ValueError:
                    raise PollError(f"tor answered a non-integer for {key}") from None
        version = entries.get("version", b"").decode("utf-8", "replace").split(" ")[0]
        return TorStats(self.host, version, values, collected_ms)

    def abort(self) -> None:
        sock = self._sock
        if sock is not None:
            sock.abort()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.abort()
            sock.close()

    def close(self, timeout: float = 0.5) -> None:
        """Close the connection; a poll still stuck (e.g. in a DNS lookup) is left to end by itself."""
        self.abort()
        if self._lock.acquire(timeout=timeout):
            try:
                self._drop()
            finally:
                self._lock.release()


def _socket_trouble(exc: BaseException) -> bool:
    """True when stem's authentication error was caused by the connection, not by the credentials."""
    seen = exc.__context__
    while seen is not None:
        if isinstance(seen, stem.SocketError):
            return True
        seen = seen.__context__
    return False


def _short(exc: object, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclasses.dataclass(slots=True)
class PollResult:
    """The outcome of one host in one cycle: stats, or the error that stopped it."""

    host: TorHost
    stats: TorStats | None = None
    error: str | None = None
    back_off: bool = False  # the failure calls for waiting before the next try
    skipped: bool = False   # not polled this cycle (still busy, or waiting out its backoff)


class HostState:
    """Per-host bookkeeping of the Poller: in-flight flag, failures, backoff, what was logged."""

    __slots__ = ("conn", "busy", "started", "failures", "retry_at", "last_error", "logged_at")

    def __init__(self, conn: TorConnection):
        self.conn = conn
        self.busy = False
        self.started = 0.0
        self.failures = 0
        self.retry_at = 0.0
        self.last_error: str | None = None
        self.logged_at = 0.0


class Poller:
    """Polls every tor concurrently.

    poll_all() first sends the GETINFO on every kept-open connection (so all round trips overlap),
    then a bounded thread pool reads the answers, and connects and authenticates the tors that
    have no connection. It returns one PollResult per host, in TOR_HOSTS order, within the cycle
    budget: a host that fails or stays silent costs the others nothing. A tor that hung up on its
    kept connection (restarted since the last cycle) is reconnected at once, in the same cycle. A host whose poll timed out or failed to
    authenticate is retried with exponential backoff (one period, doubling, at most 60 s);
    a refused or closed connection is cheap and is retried every cycle."""

    MAX_WORKERS = 32
    MAX_BACKOFF = 60.0

    def __init__(self, hosts: Iterable[TorHost], timeout: float, period: float):
        self.timeout, self.period = timeout, period
        self.states = [HostState(TorConnection(h, timeout)) for h in hosts]
        workers = max(1, min(len(self.states), self.MAX_WORKERS))
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="poll")

    def poll_all(self, stop: threading.Event, budget: float | None = None) -> list[PollResult]:
        start = time.monotonic()
        budget_end = start + (budget if budget is not None else self.period)
        results: dict[int, PollResult] = {}
        running: dict[concurrent.futures.Future, int] = {}
        for index, state in enumerate(self.states):
            host = state.conn.host
            if state.busy:
                results[index] = PollResult(host, error="previous poll still running", skipped=True)
            elif state.retry_at > start:
                results[index] = PollResult(
                    host, error=f"{state.last_error} (next try in {state.retry_at - start:.0f} s)", skipped=True)
            else:
                try:
                    deadline = state.conn.ask()
                except PollError:  # the kept connection broke since the last cycle: reconnect now
                    deadline = None
                state.busy = True
                running[self.pool.submit(self._run, state, deadline)] = index
        pending = set(running)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.1)
            for future in done:
                results[running[future]] = self._outcome(future, running[future], stop)
            now = time.monotonic()
            if stop.is_set() or now >= budget_end:  # polls still queued at the end are not started
                for future in pending:
                    future.cancel()
            for future in pending:  # polls running get their own TOR_TIMEOUT, no more
                state = self.states[running[future]]
                overdue = state.started and now > state.started + self.timeout + 0.2
                if (stop.is_set() or overdue) and not future.done():
                    state.conn.abort()
            if stop.is_set() or now >= budget_end + self.timeout + 0.5:
                break  # only a poll stuck where nothing can interrupt it (a DNS lookup) is left
        for future in pending:
            results[running[future]] = self._outcome(future, running[future], stop)
        for index, state in enumerate(self.states):
            self._account(state, results[index], start)
        return [results[i] for i in range(len(self.states))]

    def _outcome(self, future: concurrent.futures.Future, index: int, stop: threading.Event) -> PollResult:
        state = self.states[index]
        if future.cancelled():  # never started: the cycle ran out of time before its turn
            state.busy = False
            reason = "stopping" if stop.is_set() else "not polled: the cycle ran out of time"
            return PollResult(state.conn.host, error=reason)
        if future.done():
            return future.result()
        return PollResult(state.conn.host, error="no answer, abandoned", back_off=True)

    def _run(self, state: HostState, deadline: float | None) -> PollResult:
        """In a worker: read the answer to a question already sent, or connect and poll."""
        state.started = time.monotonic() if deadline is None else deadline - self.timeout
        try:
            if deadline is None:
                return PollResult(state.conn.host, stats=state.conn.poll())
            try:
                return PollResult(state.conn.host, stats=state.conn.answer(deadline))
            except PollError as exc:
                if exc.timed_out:
                    raise
                # tor hung up on the kept connection (restarted since the last cycle?): one new try
                return PollResult(state.conn.host, stats=state.conn.poll())
        except PollError as exc:
            return PollResult(state.conn.host, error=str(exc), back_off=exc.back_off)
        except Exception as exc:  # a bug or an unexpected library error must not kill the pool
            LOG.debug("%s: unexpected error", state.conn.host.name, exc_info=True)
            return PollResult(state.conn.host, error=f"unexpected error: {_short(exc)}")
        finally:
            state.started = 0.0
            state.busy = False

    def _account(self, state: HostState, result: PollResult, cycle_start: float) -> None:
        """Update backoff and log state changes (one line per change, a reminder once a minute).
        The backoff counts from the start of the cycle, so "next try in 10 s" is the cycle 10 s on."""
        name, now = state.conn.host.name, time.monotonic()
        if result.stats is not None:
            if state.failures:
                LOG.info("%s: polled again after %d failed attempt(s)", name, state.failures)
            state.failures, state.retry_at, state.last_error = 0, 0.0, None
            return
        if result.skipped:
            return
        error = result.error or "unknown error"
        state.failures += 1
        if result.back_off:
            delay = min(self.period * 2 ** (state.failures - 1), self.MAX_BACKOFF)
            state.retry_at = cycle_start + delay - 0.5
            retry = f"; next try in {delay:.0f} s"
        else:
            retry = ""
        if error != state.last_error or now - state.logged_at >= 60:
            LOG.warning("%s (%s): %s%s", name, state.conn.host.where, error, retry)
            state.logged_at = now
        state.last_error = error

    def close(self, timeout: float = 0.5) -> None:
        """Abort every poll in flight and close every connection, within about `timeout` seconds."""
        for state in self.states:
            state.conn.abort()
        self.pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for state in self.states:
            state.conn.close(timeout=max(0.0, deadline - time.monotonic()))


# =============================================================================================
# 3. Points
# =============================================================================================

# measurement -> ((field, GETINFO key), ...): the original's measurements, fields and names.
MEASUREMENTS = {
    "traffic": (("read", "traffic/read"), ("written", "traffic/written")),
    "connections": (("circuits_active", "circuit-status"), ("streams_active", "stream-status")),
    "handshakes": (("ntor_requested", "stats/ntor/requested"), ("ntor_assigned", "stats/ntor/assigned"),
                   ("tap_requested", "stats/tap/requested"), ("tap_assigned", "stats/tap/assigned")),
}


def tags_for(stats: TorStats, service_tag: str, send_version_tag: bool) -> dict[str, str]:
    tags = {"host": stats.host.name}
    if send_version_tag and stats.version:
        tags["version"] = stats.version
    if service_tag:
        tags["service"] = service_tag
    return tags


def fields_for(stats: TorStats) -> dict[str, dict[str, int]]:
    """measurement -> {field: int}; a measurement whose keys tor did not know is left out."""
    out = {}
    for measurement, pairs in MEASUREMENTS.items():
        fields = {field: stats.values[key] for field, key in pairs if key in stats.values}
        if fields:
            out[measurement] = fields
    return out


def to_lines(stats: TorStats, service_tag: str, send_version_tag: bool) -> list[str]:
    """Line protocol for one poll, integer fields, stamped with the collection time (ms)."""
    tags = tags_for(stats, service_tag, send_version_tag)
    lines = []
    for measurement, fields in fields_for(stats).items():
        point = Point(measurement)
        for key, value in tags.items():
            point.tag(key, value)
        for field, value in fields.items():
            point.field(field, int(value))
        point.time(stats.collected_ms, WritePrecision.MS)
        lines.append(point.to_line_protocol())
    return lines


def test_report(stats: TorStats, service_tag: str, send_version_tag: bool) -> str:
    """The -t output for one host, in the original's layout."""
    fields = fields_for(stats)
    parts = [f"\nStats for host {stats.host.where}({stats.host.name}): ",
             "\nTags:", json.dumps(tags_for(stats, service_tag, send_version_tag), indent=4)]
    for measurement in MEASUREMENTS:
        parts += [f"\n{measurement.capitalize()} measurement:", json.dumps(fields.get(measurement, {}), indent=4)]
    return "\n".join(parts)


# =============================================================================================
# 4. Writing
# =============================================================================================

MAX_LINES_PER_REQUEST = 5000


@dataclasses.dataclass
class Batch:
    """Lines taken from the head of a buffer: `ids` identify them for removal, oldest first."""

    ids: list[int]
    lines: list[str]
    oldest_ms: int


class MemoryBuffer:
    """Points waiting for InfluxDB, in memory, oldest first, at most `max_points` (older ones dropped)."""

    durable = False

    def __init__(self, max_points: int):
        self.max_points = max_points
        self._items: collections.deque[tuple[int, int, str]] = collections.deque()
        self._next_id = 1
        self._lock = threading.Lock()

    def append(self, lines: list[str], collected_ms: list[int]) -> int:
        """Add lines (with their collection times); return how many old ones were dropped."""
        with self._lock:
            for line, ts in zip(lines, collected_ms):
                self._items.append((self._next_id, ts, line))
                self._next_id += 1
            dropped = max(0, len(self._items) - self.max_points)
            for _ in range(dropped):
                self._items.popleft()
            return dropped

    def head(self, limit: int) -> Batch | None:
        with self._lock:
            if not self._items:
                return None
            items = list(itertools.islice(self._items, limit))
        return Batch([i for i, _, _ in items], [line for _, _, line in items], min(ts for _, ts, _ in items))

    def remove(self, ids: list[int]) -> None:
        gone = set(ids)
        with self._lock:
            while self._items and self._items[0][0] in gone:  # the usual case: the head was delivered
                gone.discard(self._items.popleft()[0])
            if gone:  # lines from further in (a split batch)
                self._items = collections.deque(item for item in self._items if item[0] not in gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def oldest_ms(self) -> int | None:
        with self._lock:
            return self._items[0][1] if self._items else None

    def close(self) -> None:
        pass


class SqliteBuffer:
    """Points waiting for InfluxDB in an SQLite file (stdlib sqlite3, WAL): they survive kill -9 and
    restarts. A crash mid-write leaves at most one uncommitted transaction, which SQLite rolls back.
    At most `max_points` rows: past that the oldest are deleted."""

    durable = True
    FILE_NAME = "buffer.sqlite3"

    def __init__(self, directory: str, max_points: int):
        self.max_points = max_points
        self.path = os.path.join(directory, self.FILE_NAME)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA cache_size=-4000")  # ~4 MB page cache: memory stays bounded
        self._db.execute("CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                         " ts_ms INTEGER NOT NULL, line TEXT NOT NULL)")
        self._count = self._db.execute("SELECT count(*) FROM points").fetchone()[0]

    def append(self, lines: list[str], collected_ms: list[int]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO points (ts_ms, line) VALUES (?, ?)", zip(collected_ms, lines))
                count = self._count + len(lines)
                dropped = max(0, count - self.max_points)
                if dropped:
                    self._db.execute("DELETE FROM points WHERE id IN (SELECT id FROM points ORDER BY id LIMIT ?)",
                                     (dropped,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count = count - dropped
            return dropped

    def head(self, limit: int) -> Batch | None:
        with self._lock:
            rows = self._db.execute("SELECT id, ts_ms, line FROM points ORDER BY id LIMIT ?", (limit,)).fetchall()
        if not rows:
            return None
        return Batch([r[0] for r in rows], [r[2] for r in rows], min(r[1] for r in rows))

    def remove(self, ids: list[int]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            if ids == list(range(ids[0], ids[-1] + 1)):
                cur = self._db.execute("DELETE FROM points WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
            else:
                cur = self._db.executemany("DELETE FROM points WHERE id = ?", ((i,) for i in ids))
            self._db.execute("COMMIT")
            self._count -= cur.rowcount

    def __len__(self) -> int:
        return self._count

    def oldest_ms(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT ts_ms FROM points ORDER BY id LIMIT 1").fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_buffer(settings: Settings) -> MemoryBuffer | SqliteBuffer:
    """The durable buffer in BUFFER_DIR if that is usable, else memory (with one warning)."""
    if settings.buffer_dir:
        try:
            os.makedirs(settings.buffer_dir, exist_ok=True)
            buffer = SqliteBuffer(settings.buffer_dir, settings.buffer_max_points)
            LOG.info("buffer: %s (%d points waiting from before)", buffer.path, len(buffer))
            return buffer
        except (OSError, sqlite3.Error) as exc:
            LOG.warning("buffer: BUFFER_DIR %s is not writable (%s); keeping points in memory only, "
                        "they will not survive a restart", settings.buffer_dir, _short(exc))
    return MemoryBuffer(settings.buffer_max_points)


class WriteFailure(Exception):
    """A write request was not accepted. `kind` decides the retry policy:
    'transient' (down, timeout, 429, 5xx), 'config' (401/403/404), 'bad_data' (400/422),
    'too_large' (413). `retry_after` is the server's Retry-After in seconds, if any."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.status, self.retry_after = kind, status, retry_after


class InfluxWriter:
    """One InfluxDBClient for the process's life, SYNCHRONOUS write API: write() sends the lines
    in one request and returns on 204, or raises WriteFailure with the status and the server's
    message (never the token)."""

    def __init__(self, settings: Settings):
        self.bucket, self.org = settings.influx_bucket, settings.influx_org
        self.client = InfluxDBClient(url=settings.influx_url, token=settings.influx_token, org=settings.influx_org,
                                     timeout=int(settings.influx_timeout * 1000), enable_gzip=True)
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self.requests = 0

    def write(self, lines: list[str], timeout: float | None = None) -> None:
        self.requests += 1
        kwargs = {"_request_timeout": (timeout / 2, timeout / 2)} if timeout else {}
        try:
            self.api.write(bucket=self.bucket, org=self.org, record=lines,
                           write_precision=WritePrecision.MS, **kwargs)
        except ApiException as exc:
            raise classify_api_error(exc) from None
        except Exception as exc:  # urllib3: refused, reset, timeout, DNS...
            raise WriteFailure("transient", f"cannot reach InfluxDB: {_connection_reason(exc)}") from None

    def close(self) -> None:
        self.client.close()


def classify_api_error(exc: ApiException) -> WriteFailure:
    status = exc.status or 0
    message = _server_message(exc)
    retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
    text = f"InfluxDB answered {status}: {message}"
    if status in (401, 403, 404):
        return WriteFailure("config", text, status)
    if status in (400, 422):
        return WriteFailure("bad_data", text, status)
    if status == 413:
        return WriteFailure("too_large", text, status)
    return WriteFailure("transient", text, status, retry_after)


def _server_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if body:
        try:
            return _short(json.loads(body).get("message") or body)
        except (ValueError, AttributeError):
            return _short(body)
    return exc.reason or "no message"


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                           ("reset", "connection reset"),
                           ("Name or service not known", "cannot resolve host"),
                           ("Temporary failure in name resolution", "cannot resolve host"),
                           ("RemoteDisconnected", "connection closed without an answer"),
                           ("CERTIFICATE_VERIFY_FAILED", "TLS certificate not trusted")):
        if needle in text:
            return reason
    return _short(type(exc).__name__ + ": " + text, 160)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now())


class Delivery:
    """The writer thread: sends the buffer to InfluxDB oldest first, at most MAX_LINES_PER_REQUEST
    lines a request, and removes lines only once InfluxDB accepted them (204).

    Retry policy by answer: down/timeout/429/5xx -> backoff from 1 s doubling to 60 s (or the
    server's Retry-After); 401/403/404 -> configuration error, points kept, retried every 30 s,
    logged once per change of answer; 400/422 -> the batch is split to find the bad lines, which
    alone are dropped and logged; 413 -> the batch size is halved."""

    CONFIG_RETRY = 30.0
    MAX_BACKOFF = 60.0

    def __init__(self, writer: InfluxWriter, buffer, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic, batch_lines: int = MAX_LINES_PER_REQUEST):
        self.writer, self.buffer, self.stop_event, self.clock = writer, buffer, stop, clock
        self.batch_lines = batch_lines
        self.wake = threading.Event()
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.backoff = 0.0
        self.retry_at = 0.0
        self.delivered = 0
        self.dropped_bad = 0
        self._dropped_full = 0
        self._dropped_logged_at = -1e9
        self._degraded_logged_at = -1e9
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="writer", daemon=True)

    # -- called from the main loop
    def start(self) -> None:
        self.thread.start()

    def submit(self, lines: list[str], collected_ms: list[int]) -> None:
        dropped = self.buffer.append(lines, collected_ms)
        if dropped:
            self._dropped_full += dropped
            now = self.clock()
            if now - self._dropped_logged_at >= 60:
                LOG.warning("buffer full (%d points): dropped the %d oldest points", self.buffer.max_points,
                            self._dropped_full)
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
            except Exception as exc:  # e.g. the disk under BUFFER_DIR failing: keep the thread alive
                LOG.error("writer: unexpected error: %s; retrying in 5 s", _short(exc))
                LOG.debug("writer: unexpected error", exc_info=True)
                self.retry_at = self.clock() + 5

    def deliver_once(self, timeout: float | None = None) -> bool:
        """Send one batch from the head of the buffer. True when it (or part of it) was delivered."""
        batch = self.buffer.head(self.batch_lines)
        if batch is None:
            return False
        try:
            self.writer.write(batch.lines, timeout)
        except WriteFailure as failure:
            return self._failed(batch, failure, timeout)
        self._accepted(batch)
        return True

    def _accepted(self, batch: Batch) -> None:
        self.buffer.remove(batch.ids)
        self.delivered += len(batch.ids)
        if self.failing_since is not None:
            LOG.info("InfluxDB accepts writes again after %.0f s", self.clock() - self.failing_since)
        self.failing_since, self.last_error, self.backoff, self.retry_at = None, None, 0.0, 0.0

    def _failed(self, batch: Batch, failure: WriteFailure, timeout: float | None) -> bool:
        now = self.clock()
        if failure.kind == "bad_data" or (failure.kind == "too_large" and len(batch.ids) == 1):
            return self._split(batch, failure, timeout)
        if failure.kind == "too_large" and len(batch.ids) > 1:
            self.batch_lines = max(1, len(batch.ids) // 2)
            LOG.warning("%s; sending at most %d lines per request", failure, self.batch_lines)
            return False
        if self.failing_since is None:
            self.failing_since = now
        if failure.kind == "config":
            delay = self.CONFIG_RETRY
        else:
            self.backoff = min(self.MAX_BACKOFF, self.backoff * 2 if self.backoff else 1.0)
            delay = failure.retry_after if failure.retry_after is not None else self.backoff
        self.retry_at = now + delay
        text = str(failure)
        if text != self.last_error:
            hint = " (check INFLUX_TOKEN, INFLUX_ORGANIZATION and INFLUX_BUCKET)" if failure.kind == "config" else ""
            LOG.error("write failed: %s%s; points are kept, next try in %.0f s", text, hint, delay)
            self.last_error = text
        self._log_degraded(now)
        return False

    def _split(self, batch: Batch, failure: WriteFailure, timeout: float | None) -> bool:
        """Find the lines InfluxDB refuses by bisection; deliver the rest, drop only those."""
        if len(batch.ids) == 1:
            LOG.error("dropping a point InfluxDB refuses: %s; the line was: %s", failure, batch.lines[0])
            self.buffer.remove(batch.ids)
            self.dropped_bad += 1
            return False
        middle = len(batch.ids) // 2
        delivered = False
        for part in (Batch(batch.ids[:middle], batch.lines[:middle], batch.oldest_ms),
                     Batch(batch.ids[middle:], batch.lines[middle:], batch.oldest_ms)):
            try:
                self.writer.write(part.lines, timeout)
            except WriteFailure as sub:
                if sub.kind == "bad_data":
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
        self.thread.join(max(0.0, min(0.5, end - self.clock())))
        while len(self.buffer) and not self.thread.is_alive():
            left = end - self.clock()
            if left < 0.2 or not self.deliver_once(timeout=left):
                break
        count = len(self.buffer)
        if count:
            where = "kept in BUFFER_DIR for the next start" if self.buffer.durable else "lost (no BUFFER_DIR)"
            LOG.warning("stopping with %d points not delivered: %s", count, where)


# =============================================================================================
# 5. Health
# =============================================================================================

class HealthFile:
    """The file Docker's HEALTHCHECK reads: `OK <unix time>` when healthy, `FAILED <unix time>
    <reason>` otherwise. The failed form never contains the letters OK (old containers run
    `grep OK /healthcheck`). Every write is atomic: a temp file in the same directory, then rename."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time):
        self.path, self.clock = path, clock
        self._lock = threading.Lock()
        self.last_ok: bool | None = None

    def write(self, ok: bool, reason: str = "") -> None:
        now = int(self.clock())
        if ok:
            content = f"OK {now}\n"
        else:
            reason = " ".join(reason.split()).replace("OK", "ok")[:500]
            content = f"FAILED {now} {reason}\n"
        # Through a link (the image's /healthcheck -> /tmp/healthcheck) the file that is replaced
        # is the link's target, next to which the temp file must be made.
        target = os.path.realpath(self.path)
        with self._lock:
            fd, tmp = tempfile.mkstemp(prefix=".health-", dir=os.path.dirname(target))
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(content)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            self.last_ok = ok


class Watchdog:
    """A daemon thread that writes FAILED when no cycle has finished for `limit` seconds, so a hung
    main loop cannot stay healthy. Stops promptly when `stop` is set."""

    def __init__(self, health: HealthFile, limit: float, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic):
        self.health, self.limit, self.stop, self.clock = health, limit, stop, clock
        self.last_cycle = clock()
        self.thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def cycle_finished(self) -> None:
        self.last_cycle = self.clock()

    def start(self) -> None:
        self.thread.start()

    def check(self) -> bool:
        """Write FAILED if the main loop is late; True when it did."""
        late = self.clock() - self.last_cycle
        if late > self.limit:
            reason = f"no cycle finished for {late:.0f} s (the main loop is stuck)"
            if self.health.last_ok is not False:
                LOG.error("watchdog: %s", reason)
            self.health.write(False, reason)
            return True
        return False

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.check()
            except OSError as exc:
                LOG.error("watchdog: cannot write the health file: %s", exc)


def health_verdict(results: list[PollResult], waiting: int, oldest_age: float | None, limit: float,
                   delivery_error: str | None) -> tuple[bool, str]:
    """Healthy when every host answered this cycle and no point has waited longer than `limit` s."""
    failed = [r for r in results if r.error is not None]
    reasons = [f"host {r.host.name}: {r.error}" for r in failed[:5]]
    if len(failed) > 5:
        reasons.append(f"and {len(failed) - 5} more hosts")
    if waiting and oldest_age is not None and oldest_age > limit:
        reasons.append(f"{waiting} points waiting for InfluxDB for {oldest_age:.0f} s"
                       + (f" ({delivery_error})" if delivery_error else ""))
    return (not reasons, "; ".join(reasons))


# =============================================================================================
# 6. Main loop
# =============================================================================================

class Schedule:
    """Fixed-rate ticks on a monotonic clock: tick k is at start + k * period, so there is no
    drift; a cycle that overruns skips the ticks it missed instead of bursting to catch up."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic):
        self.period, self.clock = period, clock
        self.start = clock()
        self.tick = 0
        self.skipped = 0

    def next_delay(self) -> float:
        """Advance to the next tick in the future; return the seconds to wait for it."""
        now = self.clock()
        self.tick += 1
        due = self.start + self.tick * self.period
        if due <= now:
            missed = int((now - due) // self.period) + 1
            self.tick += missed
            self.skipped += missed
            LOG.warning("cycle overran the period of %g s: skipping %d tick(s)", self.period, missed)
            due = self.start + self.tick * self.period
        return due - now


class SecretFilter(logging.Filter):
    """Last line of defence: masks any password or token that would reach the log."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            for secret in self.secrets:
                message = message.replace(secret, "****")
                if record.exc_text:
                    record.exc_text = record.exc_text.replace(secret, "****")
            record.msg, record.args = message, None
        return True


def setup_logging(verbose: bool, secrets: Iterable[str] = (), stream=None) -> None:
    """One line per event on stderr: `<ISO time> <LEVEL> <message>`. Our debug lines with VERBOSE;
    other libraries only from WARNING; stem's TRACE (which shows AUTHENTICATE) never."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("stem").setLevel(logging.WARNING)
    logging.getLogger("influxdb_client").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)


def run_test_mode(settings: Settings, out=None) -> int:
    """-t: poll every host once, print what would be written, upload nothing. 0 if all answered."""
    out = out or sys.stdout
    poller = Poller(settings.tor_hosts, settings.tor_timeout, settings.period)
    try:
        results = poller.poll_all(threading.Event(), budget=settings.tor_timeout + 1)
    finally:
        poller.close()
    failed = 0
    for result in results:
        if result.stats is not None:
            print(test_report(result.stats, settings.service_tag, settings.send_version_tag), file=out)
        else:
            failed += 1
            print(f"\nStats for host {result.host.where}({result.host.name}): not available: {result.error}", file=out)
    out.flush()
    return 1 if failed else 0


def run(settings: Settings, stop: threading.Event, max_cycles: int | None = None) -> int:
    """The daemon: poll, buffer, deliver, report health, every period, until `stop` is set."""
    health = HealthFile(settings.healthcheck_file)
    try:
        health.write(False, "starting: no cycle finished yet")
    except OSError as exc:
        LOG.error("HEALTHCHECK_FILE: cannot write %s: %s", settings.healthcheck_file, exc.strerror or exc)
        return 2
    buffer = open_buffer(settings)
    writer = InfluxWriter(settings)
    delivery = Delivery(writer, buffer, stop)
    poller = Poller(settings.tor_hosts, settings.tor_timeout, settings.period)
    watchdog = Watchdog(health, 3 * settings.period, stop)
    schedule = Schedule(settings.period)
    delivery.start()
    watchdog.start()
    LOG.info("polling %d tor(s) every %d s, writing to %s (org %s, bucket %s)", len(settings.tor_hosts),
             settings.period, settings.influx_url, settings.influx_org, settings.influx_bucket)
    cycle = 0
    try:
        while not stop.is_set():
            cycle += 1
            started = time.monotonic()
            results = poller.poll_all(stop)
            lines, stamps = [], []
            for result in results:
                if result.stats is not None:
                    new = to_lines(result.stats, settings.service_tag, settings.send_version_tag)
                    lines += new
                    stamps += [result.stats.collected_ms] * len(new)
            if lines:
                delivery.submit(lines, stamps)
            waiting, age = delivery.waiting()
            ok, reason = health_verdict(results, waiting, age, 3 * settings.period, delivery.last_error)
            try:
                health.write(ok, reason)
            except OSError as exc:
                LOG.error("cannot write the health file %s: %s", settings.healthcheck_file, exc)
            watchdog.cycle_finished()
            good = sum(1 for r in results if r.stats is not None)
            LOG.debug("cycle %d done in %.3f s: %d/%d hosts ok, %d points, %d waiting", cycle,
                      time.monotonic() - started, good, len(results), len(lines), waiting)
            if max_cycles is not None and cycle >= max_cycles:
                break
            stop.wait(schedule.next_delay())
    finally:
        LOG.info("stopping")
        stop.set()
        poller.close()
        delivery.finish(budget=1.5)
        if not delivery.thread.is_alive():  # a writer stuck in a request keeps its handles
            writer.close()
            buffer.close()
        try:
            health.write(False, "stopped")
        except OSError:
            pass
    return 0


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tor_to_influxdb2.py",
        description="Poll Tor control ports and write their statistics to InfluxDB 2 "
                    "(configured by environment variables; see README.md).")
    parser.add_argument("-t", "--test", action="store_true",
                        help="poll every host once and print the measurements; upload nothing")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    try:
        settings = config_from_env(env, test_mode=args.test)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    setup_logging(settings.verbose, settings.secrets())
    LOG.info("tor2influxdb2 %s starting%s", __version__, " in test mode (-t): nothing is uploaded"
             if args.test else "")
    for host in settings.tor_hosts:
        LOG.info("tor host: %s", host.describe())
    if args.test:
        return run_test_mode(settings)

    stop = threading.Event()

    def on_signal(signum, _frame):
        LOG.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    status = run(settings, stop)
    # A poll stuck where nothing can interrupt it (a DNS lookup) would make the interpreter wait for
    # its thread at exit: leave at once instead, everything that matters is closed or on disk.
    stuck = [t for t in threading.enumerate() if t.name.startswith("poll") and t.is_alive()]
    for thread in stuck:
        thread.join(0.2)
    if any(t.is_alive() for t in stuck):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
