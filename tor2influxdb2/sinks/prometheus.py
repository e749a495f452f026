"""A Prometheus exposition sink: ``/metrics`` with the current state of every tor.

The daemon calls :meth:`PrometheusSink.update` once per cycle with one
:class:`~tor2influxdb2.model.TorStatus` per tor and its own figures; a scrape shows exactly that
cycle. A tor whose poll failed shows ``tor2influxdb2_up 0`` and none of its ``tor_*`` series (never
old values as if fresh); when the daemon stops calling update() for ``stale_after`` seconds, every
tor is shown down the same way.

What is shown (every series has ``host``, and ``service`` when set; the ``version`` tag is a label
of ``tor_version`` only):

* the names prometheus-tor_exporter users graph (``tor_read_bytes``, ``tor_flags{flag}``,
  ``tor_accounting_*`` ...), all gauges as there, and every other control-port field in the same
  style (:data:`CONTROL`);
* MetricsPort families under tor's own names, sample names exactly as tor writes them. Counters
  whose name ends in ``_total`` are typed counter, as tor types them. tor's few counters without
  that suffix (``tor_relay_traffic_bytes``, ``tor_bug_reached_count``) are typed *untyped*: a
  counter's samples are ``<name>_total`` to prometheus_client (its CounterMetricFamily and its
  parser add the suffix) and to OpenMetrics, so typing them counter would rename tor's series for
  those readers; untyped keeps the names, and rate()/increase() work on them unchanged;
* the daemon's health: ``tor2influxdb2_up``, ``tor2influxdb2_source_up{source}``,
  ``tor2influxdb2_last_poll_timestamp_seconds``, ``tor2influxdb2_last_update_timestamp_seconds``,
  ``tor2influxdb2_buffer_points``, ``tor2influxdb2_cycle_seconds`` (any number the daemon passes).

The text format (0.0.4, what tor's MetricsPort and prometheus_client serve) is written here, not by
prometheus_client's encoder: at 1,000 tors that encoder takes seconds per cycle, this writer keeps
each series' ``name{labels}`` text from one cycle to the next and only formats values
(tests/test_prometheus.py reads it with prometheus_client's parser and a real Prometheus). update() only
stores the cycle; the first scrape after it writes the text (and its gzip when asked), kept until
the next. bcrypt is imported only when the auth file holds a hash.

Configuration (:func:`config_from_env`): ``PROMETHEUS_LISTEN`` (``127.0.0.1:9099``, ``[::1]:9099``
or ``9099`` for 127.0.0.1:9099; unset: no endpoint), ``PROMETHEUS_BASIC_AUTH_FILE`` (lines
``user:password``, the password plain or a bcrypt hash), ``PROMETHEUS_TLS_CERT`` and
``PROMETHEUS_TLS_KEY`` (PEM; the key unencrypted).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import gzip
import hashlib
import hmac
import http.server
import importlib.util
import ipaddress
import logging
import math
import re
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from typing import Iterable, Mapping

from ..errors import ConfigError
from ..files import read_text
from ..model import Sample, TorStatus
from ..redact import REDACTOR, Redactor, clip
from ..targets import valid_port

LOG = logging.getLogger("tor2influxdb2")

VARIABLES = ("PROMETHEUS_LISTEN", "PROMETHEUS_BASIC_AUTH_FILE", "PROMETHEUS_TLS_CERT", "PROMETHEUS_TLS_KEY")
DEFAULT_HOST = "127.0.0.1"
#: The text format served (tor's MetricsPort and prometheus_client's generate_latest write it too).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: At most this many connections are served at once; more are closed at once.
MAX_CONNECTIONS = 16
#: A connection that sends nothing (or no whole request, or no TLS handshake) for this long is closed.
REQUEST_TIMEOUT = 10.0
#: gzip level of /metrics: 1 makes 36 MB (1,000 relays with their MetricsPort) 2.7 MB in 0.15 s; 6 takes 4x as long
#: for a fifth less.
GZIP_LEVEL = 1
MAX_AUTH_FILE = 1024 * 1024
MIN_PLAIN_PASSWORD = 8
#: bcrypt reads at most 72 bytes of a password (htpasswd -B and others cut there too).
BCRYPT_MAX = 72

BCRYPT_RE = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: Tags that are labels on every series; "version" is a label of tor_version only.
COMMON_LABELS = ("host", "service")


# ====================================================================== configuration

@dataclasses.dataclass(frozen=True)
class User:
    """One Basic-auth user: a bcrypt hash (bytes) or a plain password. repr shows neither."""

    name: str
    bcrypt_hash: bytes | None = dataclasses.field(default=None, repr=False)
    plain: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class PrometheusConfig:
    """Where and how /metrics is served. ``port`` 0 (tests only) takes a free port."""

    host: str = DEFAULT_HOST
    port: int = 9099
    users: tuple[User, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host.split("%")[0]).is_loopback

    @property
    def display(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: str) -> tuple[tuple[str, int] | None, str | None]:
    """PROMETHEUS_LISTEN as (host, port), or (None, problem). Only IP addresses (and
    "localhost", read as 127.0.0.1): what is bound is exactly what was written."""
    raw = value.strip()
    example = " (e.g. 127.0.0.1:9099, [::1]:9099, or 9099 for 127.0.0.1:9099)"
    shown = repr(raw if len(raw) <= 60 else raw[:57] + "...")
    if raw.isdigit():
        host, port_text = DEFAULT_HOST, raw
    elif raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            return None, f"PROMETHEUS_LISTEN: {shown} is not [IPv6 address]:port{example}"
    elif raw.count(":") > 1:
        return None, f"PROMETHEUS_LISTEN: {shown}: write an IPv6 address in brackets, like [::1]:9099"
    elif raw.startswith(":"):
        return None, (f"PROMETHEUS_LISTEN: {shown} has no address: write 0.0.0.0{raw} to listen on every "
                      f"IPv4 interface, or 127.0.0.1{raw} for this host only")
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
    else:
        return None, f"PROMETHEUS_LISTEN: {shown} has no port{example}"
    if host.lower() == "localhost":
        host = DEFAULT_HOST
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None, f"PROMETHEUS_LISTEN: {shown}: the address must be an IP address{example}"
    if isinstance(address, ipaddress.IPv4Address) and raw.startswith("["):
        return None, f"PROMETHEUS_LISTEN: {shown}: an IPv4 address is written without brackets"
    port = valid_port(port_text)
    if port is None:
        return None, f"PROMETHEUS_LISTEN: {shown}: the port must be a number from 1 to 65535"
    return (str(address) if "%" not in host else host, port), None


def parse_basic_auth(text: str, where: str = "PROMETHEUS_BASIC_AUTH_FILE",
                     redactor: Redactor = REDACTOR) -> tuple[tuple[User, ...], list[str]]:
    """Lines ``user:password`` (blank lines and lines starting with # are skipped). A password
    of the form ``$2b$...``/``$2y$...``/``$2a$...`` is a bcrypt hash, anything else plain text.
    Every password (and hash) is registered with the redactor before it is looked at; no problem
    quotes one."""
    users: dict[str, User] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, password = line.partition(":")
        # what may be a password is masked before anything is looked at: a line without ":" may be one
        # pasted alone, and one with a stray space may be one all the same
        redactor.add(password, password.strip(), line if not sep else None)
        at = f"{where}: line {number}"
        if not sep:
            problems.append(f"{at} is not user:password")
            continue
        if not name or name != name.strip() or not name.isprintable():
            problems.append(f"{at}: the user name is empty, has a control character or starts or ends with a space")
            continue
        if name in users:
            problems.append(f"{at}: user {name!r} is listed twice")
            continue
        if not password:
            problems.append(f"{at}: the password of {name!r} is empty")
        elif not password.isprintable():
            problems.append(f"{at}: the password of {name!r} contains a control character")
        elif password.startswith("$2"):
            if BCRYPT_RE.match(password):
                users[name] = User(name, bcrypt_hash=password.encode("ascii"))
            else:
                problems.append(f"{at}: the password of {name!r} starts like a bcrypt hash ($2b$, $2y$) but is "
                                "not one (a hash is $2b$<cost>$ and 53 characters)")
        elif password != password.strip():
            problems.append(f"{at}: the password of {name!r} starts or ends with a space")
        elif len(password) < MIN_PLAIN_PASSWORD:
            problems.append(f"{at}: the plain password of {name!r} is shorter than {MIN_PLAIN_PASSWORD} "
                            "characters (use a longer one, or a bcrypt hash)")
        else:
            users[name] = User(name, plain=password)
    if not users and not problems:
        problems.append(f"{where}: no user:password line")
    return tuple(users.values()), problems


def _read(path: str, name: str, problems: list[str], limit: int = MAX_AUTH_FILE) -> str | None:
    text, problem = read_text(path, name, limit)
    if problem:
        problems.append(problem)
    return text


def tls_context(cert: str, key: str, problems: list[str]) -> ssl.SSLContext | None:
    """A server context with the certificate chain and key, or None with the problem added."""
    for name, path in (("PROMETHEUS_TLS_CERT", cert), ("PROMETHEUS_TLS_KEY", key)):
        if _read(path, name, problems, 1024 * 1024) is None:
            return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=cert)  # only to tell "not a certificate" apart
    except ssl.SSLError:
        problems.append(f"PROMETHEUS_TLS_CERT: {cert} holds no PEM certificate")
        return None
    asked = []

    def no_passphrase():
        asked.append(True)
        return b""

    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if asked:
            problems.append(f"PROMETHEUS_TLS_KEY: {key} is encrypted with a passphrase: give an unencrypted key")
        else:
            problems.append(f"PROMETHEUS_TLS_KEY: {key} is not a PEM private key of the certificate in "
                            f"PROMETHEUS_TLS_CERT ({clip(exc.reason or exc, 80)})")
        return None
    return context


def config_from_env(env: Mapping[str, str], redactor: Redactor = REDACTOR) -> tuple[PrometheusConfig | None, list[str]]:
    """The endpoint's configuration, or None when PROMETHEUS_LISTEN is unset; and every problem,
    one line each (never raises, never quotes a password). Reads the auth file and checks the
    certificate and key; touches no network."""
    problems: list[str] = []
    get = lambda name: env.get(name, "").strip()  # noqa: E731
    listen = get("PROMETHEUS_LISTEN")
    if not listen:
        for name in VARIABLES[1:]:
            if get(name):
                problems.append(f"{name} is set but PROMETHEUS_LISTEN is not (set it to serve /metrics, "
                                "e.g. PROMETHEUS_LISTEN=127.0.0.1:9099)")
        return None, problems
    address, problem = parse_listen(listen)
    if problem:
        problems.append(problem)
    users: tuple[User, ...] = ()
    auth_file = get("PROMETHEUS_BASIC_AUTH_FILE")
    if auth_file:
        text = _read(auth_file, "PROMETHEUS_BASIC_AUTH_FILE", problems)
        if text is not None:
            users, more = parse_basic_auth(text, redactor=redactor)
            problems += more
            if any(u.bcrypt_hash for u in users) and importlib.util.find_spec("bcrypt") is None:
                problems.append("PROMETHEUS_BASIC_AUTH_FILE: bcrypt hashes need the bcrypt package "
                                "(pip install -r requirements.txt)")
    cert, key = get("PROMETHEUS_TLS_CERT"), get("PROMETHEUS_TLS_KEY")
    if bool(cert) != bool(key):
        problems.append("PROMETHEUS_TLS_CERT and PROMETHEUS_TLS_KEY: set both (a PEM certificate and its key) "
                        "or neither")
    elif cert:
        tls_context(cert, key, problems)
    if problems or address is None:
        return None, problems
    return PrometheusConfig(address[0], address[1], users, cert or None, key or None), problems


# ====================================================================== what is shown

@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where one control-port field goes: metric name, fixed extra labels, help text."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    help: str = ""


def _t(name, help_, **labels):
    return Target(name, tuple(labels.items()), help_)


#: Flags as tor writes them (dir-spec "known-flags"), by the lower-case name of their relay field.
TOR_FLAGS = ("Authority", "BadExit", "Exit", "Fast", "Guard", "HSDir", "MiddleOnly", "NoEdConsensus",
             "Running", "Stable", "StaleDesc", "Sybil", "V2Dir", "Valid")

#: (measurement, field) of the control-port source -> the series it is shown as. Every one a gauge.
CONTROL: dict[tuple[str, str], Target] = {
    ("traffic", "read"): _t("tor_read_bytes", "Tor received data counter (bytes since tor started)"),
    ("traffic", "written"): _t("tor_written_bytes", "Tor written data counter (bytes since tor started)"),
    ("connections", "circuits_active"): _t("tor_circuits_active", "Circuits this tor built itself"),
    ("connections", "streams_active"): _t("tor_streams_active", "This tor's own client streams"),
    **{("handshakes", f"{k}_{s}"): _t(f"tor_handshakes_{k}_{s}", f"{k} handshakes {s} (reset at each heartbeat)")
       for k in ("ntor", "tap") for s in ("requested", "assigned")},
    ("status", "uptime"): _t("tor_uptime", "Tor daemon uptime (seconds)"),
    ("status", "network_liveness"): _t("tor_network_liveness",
                                       "Indicates whether tor believes that the network is currently reachable"),
    ("status", "circuit_established"): _t("tor_circuit_established",
                                          "Indicates whether Tor is capable of establishing circuits"),
    ("status", "dormant"): _t("tor_dormant", "Indicates whether Tor is dormant (0 = active)"),
    ("status", "enough_dir_info"): _t("tor_enough_dir_info", "Whether tor has enough directory info to build circuits"),
    ("status", "bootstrap_progress"): _t("tor_bootstrap_progress", "Bootstrap progress (percent)"),
    ("status", "version_status"): _t("tor_version_status", "Tor version status as a label", ),
    ("status", "descriptor_limit"): _t("tor_descriptor_limit", "File descriptors tor may open"),
    ("relay", "consensus_weight"): _t("tor_consensus_weight", "Consensus weight (absent while not in the consensus)"),
    ("relay", "in_consensus"): _t("tor_in_consensus", "Whether the relay is in the consensus"),
    **{("relay", "flag_" + flag.lower()): _t("tor_flags", "Has a Tor flag", flag=flag) for flag in TOR_FLAGS},
    ("relay", "effective_rate"): _t("tor_effective_rate", "Shows Tor effective rate (bytes/s)"),
    ("relay", "effective_burst"): _t("tor_effective_burst_rate", "Shows Tor effective burst rate (bytes/s)"),
    ("relay", "reachable_or"): _t("tor_reachable", "Indicates whether our OR/Dir port is reachable", port="OR"),
    ("relay", "reachable_dir"): _t("tor_reachable", "Indicates whether our OR/Dir port is reachable", port="DIR"),
    ("accounting", "enabled"): _t("tor_accounting_enabled", "Whether accounting (AccountingMax) is enabled"),
    ("accounting", "read_bytes"): _t("tor_accounting_read_bytes", "Tor accounting read bytes"),
    ("accounting", "read_left"): _t("tor_accounting_left_read_bytes", "Tor accounting read bytes left"),
    ("accounting", "written_bytes"): _t("tor_accounting_write_bytes", "Tor accounting write bytes"),
    ("accounting", "written_left"): _t("tor_accounting_left_write_bytes", "Tor accounting write bytes left"),
    ("accounting", "interval_end"): _t("tor_accounting_interval_end_timestamp_seconds",
                                       "End of the accounting interval (Unix time)"),
    ("accounting", "hibernating"): _t("tor_accounting_hibernating", "Hibernation state as a label"),
    **{("guards", state): _t("tor_guards", "Entry guards by state", state=state)
       for state in ("up", "down", "never_connected", "unusable")},
    ("guards", "total"): _t("tor_guards_listed", "Entry guards listed, in any state"),
    **{("bandwidth", f"{d}_rate_{s}"): _t(f"tor_bandwidth_{d}_rate_{s}",
                                          f"{'Highest' if s == 'max' else 'Mean'} {d} bytes/s since the last poll")
       for d in ("read", "written") for s in ("max", "mean")},
    ("bandwidth", "seconds"): _t("tor_bandwidth_window_seconds", "Seconds the tor_bandwidth_* figures cover"),
}
#: String fields shown as `name{label="value"} 1`.
STRING_LABELS = {("status", "version_status"): "version_status", ("accounting", "hibernating"): "state"}
#: (measurement, read field, left field) -> the limit series (= read + left), as the exporter shows it.
LIMITS = {("accounting", "read_bytes", "read_left"): _t("tor_accounting_read_limit_bytes",
                                                        "Tor accounting read bytes limit"),
          ("accounting", "written_bytes", "written_left"): _t("tor_accounting_write_limit_bytes",
                                                              "Tor accounting write bytes limit")}
#: Tags shown as `name{tag="value"} 1`.
TAG_INFO = {"version": _t("tor_version", "Tor version as a label"),
            "fingerprint": _t("tor_fingerprint", "Tor fingerprint as a label"),
            "nickname": _t("tor_nickname", "Tor nickname as a label")}
#: Names a MetricsPort family may not take (the control-port series have them).
RESERVED = frozenset({t.name for t in CONTROL.values()} | {t.name for t in LIMITS.values()}
                     | {t.name for t in TAG_INFO.values()})
#: Help of the daemon's own series.
HEALTH_HELP = {
    "tor2influxdb2_up": "1 when this cycle's poll of that tor succeeded",
    "tor2influxdb2_source_up": "1 when that source of that tor answered this cycle",
    "tor2influxdb2_last_poll_timestamp_seconds": "Unix time of the last successful poll of that tor",
    "tor2influxdb2_last_update_timestamp_seconds": "Unix time the daemon last handed a cycle to this endpoint",
    "tor2influxdb2_buffer_points": "Points waiting for InfluxDB",
    "tor2influxdb2_cycle_seconds": "The daemon's cycle (seconds)",
}


class _Family:
    """One metric family being written: its header and its lines."""

    __slots__ = ("name", "type", "help", "lines")

    def __init__(self, name: str, type_: str, help_: str):
        self.name, self.type, self.help = name, type_, help_
        self.lines: list[str] = []

    def text(self) -> str:
        help_ = self.help.replace("\\", r"\\").replace("\n", r"\n")
        return f"# HELP {self.name} {help_}\n# TYPE {self.name} {self.type}\n" + "".join(self.lines)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r'\"').replace("\n", r"\n")


def _prefix(name: str, labels: Mapping[str, str]) -> str:
    """`name{a="x",b="y"} ` (labels sorted by name, as prometheus_client writes them)."""
    if not labels:
        return name + " "
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "} "


def _value(value) -> str | None:
    """A value as text: integers exactly (as tor writes them), floats in shortest round-trip form."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float:
        if math.isfinite(value):
            return repr(value)
        return "NaN" if value != value else ("+Inf" if value > 0 else "-Inf")
    if kind is bool:
        return "1" if value else "0"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return _value(int(value) if isinstance(value, int) else float(value))
    return None


def _bucket(field: str) -> tuple[float, str] | None:
    """(bound, le text) of a histogram bucket field: the bound as tor writes it ("1000", "+Inf")."""
    text = field[3:] if field.startswith("le_") else field
    try:
        bound = float(text)
    except ValueError:
        return None
    return None if math.isnan(bound) else (bound, text)


_SKIP = object()


class Renderer:
    """Writes one cycle's statuses as the text format (0.0.4).

    What it derives from a sample's measurement and tag set (the series' ``name{labels} `` text,
    its family) is kept from one render to the next, so a cycle costs little more than formatting
    values; once a third of what is kept is no longer used, all is dropped and made anew. Not
    thread-safe: the sink renders under a lock."""

    def __init__(self, redactor: Redactor = REDACTOR):
        self.redactor = redactor
        self._plans: dict = {}
        self._pattern = None
        self._warned: set[str] = set()
        fixed: dict[tuple[str, str], _Family] = {}
        for target in (*TAG_INFO.values(), *CONTROL.values(), *LIMITS.values()):
            fixed.setdefault((target.name, "gauge"), _Family(target.name, "gauge", target.help))
        self._fixed = frozenset(fixed)
        #: every family, by (name, type): a MetricsPort family may come as two types at once (tors of
        #: two versions); the one with more series is shown
        self._fams = fixed
        self._health = {name: _Family(name, "gauge", HEALTH_HELP[name]) for name in
                        ("tor2influxdb2_up", "tor2influxdb2_source_up", "tor2influxdb2_last_poll_timestamp_seconds")}

    def _warn(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            LOG.warning("prometheus: %s", clip(text))

    def render(self, statuses: Iterable[TorStatus], daemon: Mapping, updated: float | None, fresh: bool) -> str:
        pattern = getattr(self.redactor, "_pattern", None)
        if pattern is not self._pattern:  # a secret was registered since: nothing derived before is kept
            self._plans, self._pattern = {}, pattern
        plans, touched = self._plans, 0
        for fam in (*self._fams.values(), *self._health.values()):
            fam.lines = []
        seen: set[str] = set()
        up_lines = self._health["tor2influxdb2_up"].lines
        source_lines = self._health["tor2influxdb2_source_up"].lines
        last_lines = self._health["tor2influxdb2_last_poll_timestamp_seconds"].lines
        for status in statuses:
            tor = (status.name, status.service)
            base = plans.get(tor)
            if base is None:
                base = plans[tor] = self._base(status)
            touched += 1 + len(status.samples)
            labels = base["labels"]
            up = bool(status.up and fresh)
            up_lines.append(base["up"] + ("1\n" if up else "0\n"))
            for source, answered in sorted(status.sources.items()):
                prefix = base["sources"].get(source)
                if prefix is None:
                    prefix = base["sources"][source] = _prefix(
                        "tor2influxdb2_source_up", {**labels, "source": self.redactor.mask(source)})
                source_lines.append(prefix + ("1\n" if answered and fresh else "0\n"))
            if status.last_success is not None:
                last_lines.append(base["last"] + _value(float(status.last_success)) + "\n")
            if not up:
                continue
            for sample in status.samples:
                key = (tor, sample.measurement, sample.tags)
                entry = plans.get(key)
                if entry is None:
                    entry = plans[key] = self._entry(sample, labels)
                fields = sample.fields
                if entry[0] is not None:  # a MetricsPort counter or gauge: the hot path
                    fam, field, prefix = entry
                    value = fields.get(field)
                    if value is None:  # the field changed (a tor that types the family otherwise now)
                        entry = plans[key] = self._entry(sample, labels)
                        if entry[0] is None:
                            entry[1](self, sample, entry, labels, seen)
                            continue
                        fam, field, prefix = entry
                        value = fields[field]
                    text = _value(value)
                    if text is not None and prefix not in seen:
                        seen.add(prefix)
                        fam.lines.append(prefix + text + "\n")
                else:
                    entry[1](self, sample, entry, labels, seen)
        if len(plans) > touched * 1.5 + 1000:  # a third is no longer used: start afresh next cycle
            self._plans = {}
            self._fams = {k: f for k, f in self._fams.items() if f.lines or k in self._fixed}
        own = list(self._health.values())
        if updated is not None:
            fam = _Family("tor2influxdb2_last_update_timestamp_seconds", "gauge",
                          HEALTH_HELP["tor2influxdb2_last_update_timestamp_seconds"])
            fam.lines.append(f"{fam.name} {_value(float(updated))}\n")
            own.append(fam)
        taken = {f.name for f in own} | {name for name, _ in self._fams}
        for key, raw in daemon.items():
            name, value = f"tor2influxdb2_{key}", None if isinstance(raw, str) else _value(raw)
            if value is None or not METRIC_NAME_RE.match(name) or name in taken:
                continue
            fam = _Family(name, "gauge", HEALTH_HELP.get(name, f"The daemon's {key}"))
            fam.lines.append(f"{name} {value}\n")
            own.append(fam)
        chosen: dict[str, _Family] = {}
        for (name, typ), fam in self._fams.items():
            if fam.lines:
                other = chosen.get(name)
                if other is not None:
                    self._warn("type:" + name, f"family {name!r} comes as {other.type} and as {typ}: only the "
                               "type with more series is shown")
                if other is None or len(fam.lines) > len(other.lines):
                    chosen[name] = fam
        return "".join(f.text() for f in (*chosen.values(), *own))

    def _base(self, status: TorStatus) -> dict:
        labels = {"host": self.redactor.mask(status.name)}
        if status.service:
            labels["service"] = self.redactor.mask(status.service)
        return {"labels": labels, "up": _prefix("tor2influxdb2_up", labels), "sources": {},
                "last": _prefix("tor2influxdb2_last_poll_timestamp_seconds", labels)}

    def _family(self, name: str, typ: str, help_: str) -> _Family:
        fam = self._fams.get((name, typ))
        if fam is None:
            fam = self._fams[(name, typ)] = _Family(name, typ, help_)
        return fam

    def _entry(self, sample: Sample, labels: dict) -> tuple:
        """What to do with samples of this measurement and tag set: (family, field, prefix) for a
        MetricsPort counter or gauge, else (None, writer, state)."""
        name, fields = sample.measurement, sample.fields
        if not name.startswith("tor_"):
            return [None, Renderer._control, self._control_plan(sample, labels)]
        if name in RESERVED or not METRIC_NAME_RE.match(name):
            self._warn("name:" + name, f"MetricsPort family {name!r} not shown: "
                       + ("a control-port series has that name" if name in RESERVED else "not a metric name"))
            return [None, Renderer._nothing, None]
        if "counter" in fields or "gauge" in fields:
            field = "gauge" if "gauge" in fields else "counter"
            # a counter whose name lacks _total is served untyped: prometheus_client (and what parses
            # with it) reads a counter's samples as <name>_total, which would rename tor's series
            typ = "gauge" if field == "gauge" else ("counter" if name.endswith("_total") else "untyped")
            fam = self._family(name, typ, f"tor MetricsPort {field} {name}")
            return [fam, field, _prefix(name, self._mp_labels(sample, labels))]
        if "count" in fields and "sum" in fields:
            fam = self._family(name, "histogram", f"tor MetricsPort histogram {name}")
            return [None, Renderer._histogram, (fam, self._histogram_plan(sample, labels))]
        self._warn("fields:" + name, f"MetricsPort family {name!r} not shown: neither counter, gauge nor histogram")
        return [None, Renderer._nothing, None]

    def _nothing(self, sample, entry, labels, seen) -> None:
        pass

    # -- control-port samples
    def _control_plan(self, sample: Sample, labels: dict):
        info = []
        for tag, value in sample.tags:
            target = TAG_INFO.get(tag)
            if target is not None:
                info.append((self._fams[(target.name, "gauge")], _prefix(target.name, {**labels, tag: self.redactor.mask(value)})))
        return tuple(info), {}

    def _control(self, sample: Sample, entry, labels: dict, seen) -> None:
        info, fields_plan = entry[2]
        for fam, prefix in info:
            if prefix not in seen:
                seen.add(prefix)
                fam.lines.append(prefix + "1\n")
        fields = sample.fields
        for field, value in fields.items():
            plan = fields_plan.get(field)
            if plan is None:
                plan = fields_plan[field] = self._control_field(sample, field, labels)
            if plan is _SKIP:
                continue
            fam, prefix = plan
            if prefix is None:  # a string field: its value is a label
                if not isinstance(value, str):
                    continue
                plan = fields_plan.get((field, value))
                if plan is None:
                    label = STRING_LABELS[(sample.measurement, field)]
                    plan = fields_plan[(field, value)] = (
                        fam, _prefix(fam.name, {**labels, label: self.redactor.mask(value)}))
                fam, prefix = plan
                text = "1"
            else:
                text = None if isinstance(value, str) else _value(value)
                if text is None:
                    continue
            if prefix not in seen:
                seen.add(prefix)
                fam.lines.append(prefix + text + "\n")
        for (m, read, left), target in LIMITS.items():
            if m == sample.measurement and read in fields and left in fields:
                a, b = fields[read], fields[left]
                total = None if isinstance(a, str) or isinstance(b, str) else _value(a + b)
                prefix = fields_plan.get(target.name)
                if prefix is None:
                    prefix = fields_plan[target.name] = _prefix(target.name, labels)
                if total is not None and prefix not in seen:
                    seen.add(prefix)
                    self._fams[(target.name, "gauge")].lines.append(prefix + total + "\n")

    def _control_field(self, sample: Sample, field: str, labels: dict):
        key = (sample.measurement, field)
        if key in STRING_LABELS:
            return self._fams[(CONTROL[key].name, "gauge")], None
        target = CONTROL.get(key) or self._fallback(sample, field)
        if target is None:
            return _SKIP
        return self._family(target.name, "gauge", target.help), _prefix(target.name, {**labels, **dict(target.labels)})

    def _fallback(self, sample: Sample, field: str) -> Target | None:
        """A field no table names (a newer source): tor_<measurement>_<field>, its other tags as labels."""
        if sample.measurement == "relay" and field.startswith("flag_"):
            return _t("tor_flags", "Has a Tor flag", flag=field[5:])
        name = f"tor_{sample.measurement}_{field}"
        if not METRIC_NAME_RE.match(name):
            self._warn(name, f"cannot show field {field!r} of {sample.measurement!r}: not a metric name")
            return None
        labels = tuple((k, self.redactor.mask(v)) for k, v in sample.tags
                       if k not in COMMON_LABELS and k not in TAG_INFO and LABEL_NAME_RE.match(k))
        return Target(name, labels, f"{field} of the {sample.measurement} measurement")

    # -- MetricsPort samples
    def _mp_labels(self, sample: Sample, base: dict) -> dict:
        labels = dict(base)
        for k, v in sample.tags:
            if k not in COMMON_LABELS and k != "version" and LABEL_NAME_RE.match(k):
                labels[k] = self.redactor.mask(v)
        return labels

    def _histogram_plan(self, sample: Sample, base: dict) -> tuple[tuple[str, str], ...]:
        labels = self._mp_labels(sample, base)
        buckets = sorted(b + (f,) for f in sample.fields if f not in ("count", "sum") and (b := _bucket(f)))
        plan = [(field, _prefix(sample.measurement + "_bucket", {**labels, "le": le})) for _, le, field in buckets]
        plan += [(part, _prefix(f"{sample.measurement}_{part}", labels)) for part in ("sum", "count")]
        return tuple(plan)

    def _histogram(self, sample: Sample, entry, labels: dict, seen) -> None:
        fam, plan = entry[2]
        fields = sample.fields
        if len(plan) != len(fields) or any(f not in fields for f, _ in plan):  # its buckets changed
            fresh = self._entry(sample, labels)
            if fresh[2] is None:
                return
            entry[2] = fresh[2]
            fam, plan = fresh[2]
        lines = []
        for field, prefix in plan:
            text = _value(fields[field])
            if text is None:
                return
            lines.append(prefix + text + "\n")
        if plan[0][1] not in seen:
            seen.add(plan[0][1])
            fam.lines.extend(lines)


# ====================================================================== the server

class _Auth:
    """Checks Basic credentials. A password that passed once is remembered by its SHA-256 (a bcrypt
    check costs tens of milliseconds: each scrape must not pay it)."""

    def __init__(self, users: tuple[User, ...]):
        self.users = {u.name: u for u in users}
        self._good: set[bytes] = set()
        self._lock = threading.Lock()
        self._bcrypt = None
        if any(u.bcrypt_hash for u in users):
            import bcrypt  # noqa: PLC0415 - only when a hash is configured
            self._bcrypt = bcrypt
        self._dummy = next((u.bcrypt_hash for u in users if u.bcrypt_hash), None)

    def check(self, header: str | None) -> bool:
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        name, sep, password = decoded.partition(":")
        if not sep:
            return False
        secret = password.encode("utf-8")
        digest = hashlib.sha256(name.encode("utf-8") + b"\0" + secret).digest()
        with self._lock:
            if digest in self._good:
                return True
        user = self.users.get(name)
        if user is None or user.bcrypt_hash is None:
            expected = (user.plain if user else "\0unknown user").encode("utf-8")
            if self._dummy is not None and user is None:  # an unknown name costs what a hashed one does
                self._bcrypt.checkpw(secret[:BCRYPT_MAX], self._dummy)
            ok = hmac.compare_digest(secret, expected) and user is not None
        else:
            try:
                ok = self._bcrypt.checkpw(secret[:BCRYPT_MAX], user.bcrypt_hash)
            except ValueError:
                ok = False
        if ok:
            with self._lock:
                if len(self._good) > 256:
                    self._good.clear()
                self._good.add(digest)
        return ok


def _accepts_gzip(header: str | None) -> bool:
    for item in (header or "").lower().split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip() in ("gzip", "x-gzip"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "tor2influxdb2"
    sys_version = ""
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.0"

    def setup(self):
        self.request.settimeout(self.timeout)
        tls = self.server.tls
        if tls is not None:
            self.request = tls.wrap_socket(self.request, server_side=True)
            self.server.track(self.request)
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.server.tls is not None:
                self.server.untrack(self.request)
                self.request.close()

    def do_GET(self):  # noqa: N802 - http.server's names
        self._serve(body=True)

    def do_HEAD(self):  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        sink: PrometheusSink = self.server.sink
        if sink.auth is not None and not sink.auth.check(self.headers.get("Authorization")):
            self._reply(401, b"401 Unauthorized\n", "text/plain; charset=utf-8", body,
                        [("WWW-Authenticate", 'Basic realm="tor2influxdb2", charset="UTF-8"')])
            return
        path = urllib.parse.urlsplit(self.path).path
        if path == "/metrics":
            gz = _accepts_gzip(self.headers.get("Accept-Encoding"))
            try:
                data = sink.exposition(gzipped=gz)
            except Exception as exc:  # noqa: BLE001 - a bug must not show a traceback to the client
                LOG.error("prometheus: cannot make /metrics: %s", clip(exc))
                LOG.debug("prometheus: traceback", exc_info=True)
                self._reply(500, b"500 Internal Server Error\n", "text/plain; charset=utf-8", body)
                return
            self._reply(200, data, CONTENT_TYPE, body,
                        [("Content-Encoding", "gzip")] if gz else [])
        elif path == "/":
            self._reply(200, b'<html><body><a href="/metrics">/metrics</a></body></html>\n',
                        "text/html; charset=utf-8", body)
        else:
            self._reply(404, b"404 Not Found: the metrics are at /metrics\n", "text/plain; charset=utf-8", body)

    def _reply(self, code: int, data: bytes, content_type: str, body: bool, headers=()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """Errors http.server finds itself (bad request line, unknown method): a short text, no echo."""
        try:
            short = http.HTTPStatus(code).phrase
        except ValueError:
            short = "Error"
        self.close_connection = True
        self.request_version = "HTTP/1.0"  # a status line even when the request line was unreadable
        self.log_error("code %d", code)
        data = f"{code} {short}\n".encode("ascii")
        self.send_response(code, short)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        LOG.debug("prometheus: %s %s", self.client_address[0], clip(format % args))


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, config: PrometheusConfig, sink: "PrometheusSink", tls: ssl.SSLContext | None):
        info = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST | socket.AI_PASSIVE)[0]
        self.address_family = info[0]
        self.sink, self.tls = sink, tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: set = set()
        self._open_lock = threading.Lock()
        super().__init__(info[4], _Handler, bind_and_activate=False)
        try:
            if self.address_family == socket.AF_INET6:  # [::] means IPv6 only, as written
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise

    def server_bind(self):
        # HTTPServer.server_bind would look the address up in DNS (getfqdn): not here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def track(self, sock) -> None:
        with self._open_lock:
            self._open.add(sock)

    def untrack(self, sock) -> None:
        with self._open_lock:
            self._open.discard(sock)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            LOG.debug("prometheus: more than %d connections: one closed", MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        self.track(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.untrack(request)
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.untrack(request)
            self._slots.release()

    def handle_error(self, request, client_address):
        import sys
        exc = sys.exc_info()[1]
        LOG.debug("prometheus: a request from %s failed: %s: %s", client_address[0], type(exc).__name__, clip(exc))

    def close_all(self) -> None:
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class PrometheusSink:
    """The /metrics endpoint. ``start()`` binds and serves from a daemon thread; ``update()``
    takes one cycle; ``close()`` stops serving at once.

    stale_after: seconds without update() after which every tor is shown down (None: never).
    The daemon passes about three cycles (3 x RUN_EVERY_SECONDS)."""

    def __init__(self, config: PrometheusConfig, stale_after: float | None = None, redactor: Redactor = REDACTOR,
                 clock=time.monotonic, wall=time.time):
        self.config, self.stale_after = config, stale_after
        self.auth = _Auth(config.users) if config.users else None
        self._renderer = Renderer(redactor)
        self._clock, self._wall = clock, wall
        self._state: tuple[int, tuple[TorStatus, ...], dict, float | None, float | None] = (0, (), {}, None, None)
        self._cache: tuple | None = None
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- the daemon's side
    def start(self) -> None:
        """Bind PROMETHEUS_LISTEN and serve. Raises ConfigError (one line) when it cannot listen."""
        config = self.config
        tls = tls_context(config.tls_cert, config.tls_key, problems := []) if config.tls_cert else None
        if config.tls_cert and tls is None:
            raise ConfigError(problems)
        try:
            self._server = _Server(config, self, tls)
        except OSError as exc:
            raise ConfigError([f"PROMETHEUS_LISTEN: cannot listen on {config.display}: "
                               f"{exc.strerror or type(exc).__name__}"]) from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="prometheus", daemon=True)
        self._thread.start()
        scheme = "https" if tls else "http"
        LOG.info("prometheus: serving %s://%s/metrics%s", scheme, self.display,
                 " (Basic authentication)" if self.auth else "")
        if not config.loopback:
            LOG.warning("prometheus: PROMETHEUS_LISTEN %s is not a loopback address: /metrics is reachable from "
                        "other hosts%s", config.display,
                        "" if self.auth and tls else " (set PROMETHEUS_BASIC_AUTH_FILE and PROMETHEUS_TLS_CERT/KEY, "
                        "or a firewall)")

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self._server.server_address[1] if self._server else self.config.port

    @property
    def display(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def update(self, statuses: list[TorStatus], daemon: Mapping[str, object]) -> None:
        """Take this cycle: only stored here; the text is made by the next scrape."""
        generation = self._state[0] + 1
        self._state = (generation, tuple(statuses), dict(daemon), self._clock(), self._wall())

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_all()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    # -- the scrape's side
    def _fresh(self, updated: float | None) -> bool:
        return updated is not None and (self.stale_after is None or self._clock() - updated <= self.stale_after)

    def exposition(self, gzipped: bool = False) -> bytes:
        """The text of the current cycle (or its gzip): made by the first scrape after update() (or
        after the cycle went stale), then served as it is."""
        generation, statuses, daemon, updated, wall = self._state
        key = (generation, self._fresh(updated))
        cache = self._cache
        if cache is None or cache[0] != key:
            with self._lock:
                cache = self._cache
                if cache is None or cache[0] != key:
                    text = self._renderer.render(statuses, daemon, wall, key[1]).encode("utf-8")
                    cache = self._cache = [key, text, None]
        if not gzipped:
            return cache[1]
        if cache[2] is None:
            with self._lock:
                if cache[2] is None:
                    cache[2] = gzip.compress(cache[1], compresslevel=GZIP_LEVEL, mtime=0)
        return cache[2]

    def render(self) -> str:
        """The text a scrape gets now (for -t and tests)."""
        return self.exposition().decode("utf-8")
