"""Every environment variable, parsed once; every problem reported together.

:func:`config_from_env` touches no network and raises :class:`~tor2influxdb2.errors.ConfigError`
listing every problem, one line each, naming the variable and the entry. No message quotes a
password, a token, a proxy credential or a field of a TOR_HOSTS entry. Secrets are registered
with the redactor as soon as they are read, so nothing printed afterwards can show them.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import urllib.parse
from typing import Mapping

from .errors import ConfigError
from .files import read_text
from .redact import REDACTOR, Redactor
from .targets import HOSTNAME_RE, TorHost, check_tag_value, parse_tor_hosts, shard, valid_port
from .sources.control.metricsets import DEFAULT_SETS
from .sources.control.metricsets import SET_NAMES as CONTROL_SETS

#: The control port's sets, and the daemon's own figures (written by the daemon, not asked of a tor).
SET_NAMES = CONTROL_SETS + ("daemon",)

DEFAULT_PERIOD = 10
DEFAULT_TOR_TIMEOUT = 5.0
DEFAULT_INFLUX_PORT = 8086
DEFAULT_INFLUX_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT_PROXY = 30.0  # through Tor the connection includes building the rendezvous circuit
DEFAULT_HEALTHCHECK_FILE = "/healthcheck"
# 24 h of 50 hosts polled every 10 s, 3 points each
DEFAULT_BUFFER_MAX_POINTS = 24 * 3600 // 10 * 50 * 3
DEFAULT_BUFFER_MAX_MEMORY = 64 * 1024 * 1024

# Upper bounds: beyond them a value is a typo, and some would overflow or never time out.
MAX_PERIOD = 86400
MAX_TOR_TIMEOUT = 300.0
MAX_INFLUX_TIMEOUT = 600.0
MAX_BUFFER_POINTS = 100_000_000
MAX_BUFFER_MEMORY = 16 * 1024 ** 3

TRUE_WORDS = {"true", "yes", "1", "on"}
FALSE_WORDS = {"false", "no", "0", "off"}
INT_RE = re.compile(r"^[0-9]{1,12}$")
FLOAT_RE = re.compile(r"^(?:[0-9]{1,9}(?:\.[0-9]{0,6})?|\.[0-9]{1,6})$")
SIZE_RE = re.compile(r"^([0-9]{1,12})\s*([KMG]i?B?|B)?$", re.IGNORECASE)
COMMA_HINT = " (if a password contains ',', give the entries in TOR_HOSTS_FILE, one per line)"

#: Every variable the daemon reads; others with the same prefixes get a "did you mean" warning.
KNOWN = (
    "TOR_HOSTS", "TOR_HOSTS_FILE", "TOR_TIMEOUT", "INFLUX_HOST", "INFLUX_PORT", "INFLUX_URL",
    "INFLUX_ORGANIZATION", "INFLUX_BUCKET", "INFLUX_TOKEN", "INFLUX_TOKEN_FILE", "INFLUX_SERVICE_TAG",
    "INFLUX_SEND_VERSION_TAG", "INFLUX_TIMEOUT", "RUN_EVERY_SECONDS", "BUFFER_DIR", "BUFFER_MAX_POINTS",
    "BUFFER_MAX_MEMORY", "HEALTHCHECK_FILE", "VERBOSE", "METRIC_SETS", "SHARD", "SHARD_INDEX", "SHARD_COUNT",
    "TOR_METRICS_PORTS", "TOR_METRICS_PORTS_FILE", "METRICSPORT_FAMILIES", "ONION_LABEL",
    "INFLUX_CONNECT_TIMEOUT", "INFLUX_PROXY", "INFLUX_PROXY_FILE", "INFLUX_CA_CERT", "INFLUX_CLIENT_CERT",
    "INFLUX_CLIENT_KEY", "INFLUX_CLIENT_KEY_PASSWORD_FILE", "INFLUX_TLS_VERIFY",
    "PROMETHEUS_LISTEN", "PROMETHEUS_BASIC_AUTH_FILE", "PROMETHEUS_TLS_CERT", "PROMETHEUS_TLS_KEY",
)
PREFIXES = ("TOR_", "INFLUX", "BUFFER_", "HEALTHCHECK", "RUN_EVERY", "METRIC", "VERBOSE", "SHARD", "ONION", "PROMETHEUS")
MAX_SHARDS = 10_000
#: Names people type for a variable that has another name here.
ALIASES = {"INFLUX_ORG": "INFLUX_ORGANIZATION", "INFLUXDB_ORG": "INFLUX_ORGANIZATION",
           "INFLUX_ORG_ID": "INFLUX_ORGANIZATION", "INFLUXDB_TOKEN": "INFLUX_TOKEN",
           "INFLUX_API_TOKEN": "INFLUX_TOKEN", "INFLUXDB_URL": "INFLUX_URL", "INFLUXDB_HOST": "INFLUX_HOST",
           "INFLUXDB_BUCKET": "INFLUX_BUCKET", "TOR_HOST": "TOR_HOSTS", "TORHOSTS": "TOR_HOSTS"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the daemon was told, validated. Built only by config_from_env()."""

    tor_hosts: tuple[TorHost, ...]
    mode: str = "daemon"  # "daemon", "test" (-t)
    period: int = DEFAULT_PERIOD
    tor_timeout: float = DEFAULT_TOR_TIMEOUT
    influx_url: str | None = None
    influx_org: str | None = None
    influx_bucket: str | None = None
    influx_token: str | None = dataclasses.field(default=None, repr=False)
    influx_timeout: float = DEFAULT_INFLUX_TIMEOUT
    influx_connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    influx_tls: object = None    # a sinks.transport.TlsOptions
    influx_proxy: object = dataclasses.field(default=None, repr=False)  # a sinks.transport.Proxy
    service_tag: str = "tor"
    send_version_tag: bool = True
    verbose: bool = False
    healthcheck_file: str | None = DEFAULT_HEALTHCHECK_FILE
    buffer_dir: str | None = None
    buffer_max_points: int = DEFAULT_BUFFER_MAX_POINTS
    buffer_max_memory: int = DEFAULT_BUFFER_MAX_MEMORY
    metric_sets: tuple[str, ...] = DEFAULT_SETS
    metrics_ports: dict = dataclasses.field(default_factory=dict)  # TOR_HOSTS name -> MetricsAddress
    metricsport_families: object = None  # a metricsport FamilySelection (None: the default)
    onion_label: str = "hash"
    prometheus: object = None  # a sinks.prometheus.PrometheusConfig when PROMETHEUS_LISTEN is set
    shard: tuple[int, int] | None = None  # (index, count): this replica polls only its share
    all_tor_hosts: tuple[TorHost, ...] = ()  # every entry of TOR_HOSTS, also those of other replicas
    warnings: tuple[str, ...] = ()


class _Env:
    """The environment with the problem list; helpers append problems instead of raising."""

    def __init__(self, env: Mapping[str, str], redactor: Redactor):
        self.env, self.redactor = env, redactor
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def get(self, name: str) -> str:
        return self.env.get(name, "").strip()

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def missing(self, name: str, example: str) -> None:
        """Report a required variable as missing, naming what was perhaps meant instead."""
        others = {k.upper(): k for k in self.env if k not in KNOWN}  # tor_hosts is a typo of TOR_HOSTS too
        guesses = [k for u, k in others.items() if u == name or ALIASES.get(u) == name]
        guesses += [others[u] for u in difflib.get_close_matches(name, others, 3, 0.75) if others[u] not in guesses]
        hint = f" ({', '.join(guesses)} {'is' if len(guesses) == 1 else 'are'} set: did you mean {name}?)" \
            if guesses else ""
        self.problem(f"{name}: not set{hint}{example}")

    def flag(self, name: str, default: bool) -> bool:
        raw = self.get(name).lower()
        if not raw:
            return default
        if raw in TRUE_WORDS:
            return True
        if raw in FALSE_WORDS:
            return False
        self.problem(f"{name}: {_show(self.env[name])} is not true or false")
        return default

    def number(self, name: str, default, *, integer: bool, minimum, maximum):
        raw = self.get(name)
        if not raw:
            return default
        kind = "a whole number" if integer else "a number"
        if not (INT_RE if integer else FLOAT_RE).match(raw):
            self.problem(f"{name}: {_show(raw)} is not {kind} from {minimum:g} to {maximum:g}")
            return default
        value = int(raw) if integer else float(raw)
        if not math.isfinite(value) or not minimum <= value <= maximum:
            self.problem(f"{name}: {_show(raw)} is not {kind} from {minimum:g} to {maximum:g}")
            return default
        return value

    def size(self, name: str, default: int, maximum: int) -> int:
        raw = self.get(name)
        if not raw:
            return default
        match = SIZE_RE.match(raw)
        if not match:
            self.problem(f"{name}: {_show(raw)} is not a size (bytes, or with K, M or G: 64M)")
            return default
        unit = (match.group(2) or "B")[0].upper()
        value = int(match.group(1)) * {"B": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}[unit]
        if not 1024 * 1024 <= value <= maximum:
            self.problem(f"{name}: {_show(raw)} must be from 1M to {maximum // 1024 ** 3}G")
            return default
        return value

    def file_text(self, name: str) -> str | None:
        """Text of the file named by env[name] (Docker secrets), or None if unset. A UTF-8 byte
        order mark is dropped."""
        path = self.get(name)
        if not path:
            return None
        text, problem = read_text(path, name, 1024 * 1024)
        if problem:
            self.problem(problem)
        return text

    def secret(self, name: str, file_name: str, what: str, ascii_only: bool) -> str | None:
        """A secret from `name` or from the file named by `file_name`, validated: one trailing
        line break is dropped, anything else unprintable is refused. Never echoed."""
        value, from_file = self.env.get(name, ""), self.get(file_name)
        if value.strip() and from_file:
            self.problem(f"{name} and {file_name} are both set: set one of them")
            return None
        if from_file:
            text = self.file_text(file_name)
            if text is None:
                return None
            source = file_name
            value = text[:-1] if text.endswith("\n") else text
            value = value[:-1] if value.endswith("\r") else value
        else:
            source = name
            value = value.strip()
        if not value:
            if from_file:
                self.problem(f"{file_name}: the file is empty")
            return None
        self.redactor.add(value)
        if not value.isprintable():
            self.problem(f"{source}: the {what} contains a line break or another control character "
                         "(only one trailing line break is allowed)")
            return None
        if value != value.strip():
            self.problem(f"{source}: the {what} starts or ends with a space")
            return None
        if ascii_only and (not value.isascii() or " " in value):
            self.problem(f"{source}: the {what} contains a space or a non-ASCII character, which an HTTP "
                         "header cannot carry (copy it again from InfluxDB)")
            return None
        return value

    def unknown_variables(self) -> None:
        for key in sorted(self.env):
            upper = key.upper()
            if key in KNOWN or not upper.startswith(PREFIXES) or not self.env[key].strip():
                continue
            guess = ALIASES.get(upper) or (upper if upper in KNOWN else None) \
                or next(iter(difflib.get_close_matches(upper, KNOWN, 1, 0.75)), None)
            self.warnings.append(f"{key} is set but tor2influxdb2 does not read it"
                                 + (f" (did you mean {guess}?)" if guess else ""))


def _show(raw: str) -> str:
    """A non-secret value quoted for a message, shortened and printable."""
    text = raw if len(raw) <= 40 else raw[:37] + "..."
    return repr(text)


def _tor_hosts(e: _Env) -> list[TorHost]:
    text, file_name = e.env.get("TOR_HOSTS", ""), e.get("TOR_HOSTS_FILE")
    if text.strip() and file_name:
        e.problem("TOR_HOSTS and TOR_HOSTS_FILE are both set: set one of them")
        return []
    if file_name:
        content = e.file_text("TOR_HOSTS_FILE")
        if content is None:
            return []
        entries = [(f"TOR_HOSTS_FILE line {n}", line) for n, line in enumerate(content.splitlines(), 1)
                   if line.strip() and not line.strip().startswith("#")]
        _register_passwords(e, [t for _, t in entries])
        if not entries:
            e.problem("TOR_HOSTS_FILE: the file has no entries")
            return []
        hosts, problems = parse_tor_hosts(entries)
    elif text.strip():
        # Empty entries (a trailing comma, ",,") are skipped; numbering follows the text.
        entries = [(f"TOR_HOSTS entry {n}", part) for n, part in enumerate(text.split(","), 1) if part.strip()]
        _register_passwords(e, [t for _, t in entries])
        hosts, problems = parse_tor_hosts(entries, COMMA_HINT)
    else:
        e.missing("TOR_HOSTS", " (e.g. TOR_HOSTS_FILE=/run/secrets/tor_hosts with lines HOST:PORT:PASSWORD:NAME)")
        return []
    e.problems += problems
    return hosts


def _register_passwords(e: _Env, texts: list[str]) -> None:
    """Mask anything in an entry that may be a password, before any message about it is made:
    the fields between the port and the name (also of entries that fail to parse)."""
    for text in texts:
        fields = text.strip().split(":")
        start = 2  # HOST:PORT:... and unix:PATH:... alike (a PATH holds no ':')
        if text.strip().startswith("["):
            fields = text.strip().split("]", 1)[-1].split(":")
            start = 2
        middle = ":".join(fields[start:-1])
        if middle:
            e.redactor.add(middle)


def _influx_url(e: _Env) -> str | None:
    """The base URL of InfluxDB from INFLUX_URL, or from INFLUX_HOST (+ INFLUX_PORT)."""
    url, host, port = e.get("INFLUX_URL"), e.get("INFLUX_HOST"), e.get("INFLUX_PORT")
    port_number = valid_port(port) if port else None
    if port and port_number is None:
        e.problem(f"INFLUX_PORT: {_show(port)} is not a number from 1 to 65535")
    if url and host:
        e.problem("INFLUX_URL and INFLUX_HOST are both set: set one of them")
        return None
    if not url and not host:
        return None
    variable, text = ("INFLUX_URL", url) if url else ("INFLUX_HOST", host)
    if "://" not in text:
        if "/" in text or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:(?![0-9]+$)", text):
            e.problem(f"{variable}: not a host name or URL: a scheme must be followed by '://' "
                      "(e.g. http://influxdb:8086)")
            return None
        text = "http://" + text  # a bare host name means http, as in the original
    try:
        parts = urllib.parse.urlsplit(text)
        parts_port = parts.port
    except ValueError:
        e.problem(f"{variable}: not a valid URL (check the port and the brackets of an IPv6 address)")
        return None
    if parts_port == 0:
        e.problem(f"{variable}: port 0 is no port (a number from 1 to 65535, or none for the default)")
        return None
    if parts.scheme not in ("http", "https"):
        e.problem(f"{variable}: the scheme must be http or https")
        return None
    if parts.username is not None or parts.password is not None:
        e.redactor.add(parts.password, parts.username)
        e.problem(f"{variable}: must not contain credentials (use INFLUX_TOKEN or INFLUX_TOKEN_FILE)")
        return None
    hostname = parts.hostname or ""
    if not hostname:
        e.problem(f"{variable}: no host name in it")
        return None
    if not _valid_host(hostname):
        e.problem(f"{variable}: the host is neither a DNS name nor an IP address (a space or a typo?)")
        return None
    if parts.query or parts.fragment or not parts.path.isprintable() or " " in parts.path:
        e.problem(f"{variable}: must be the server's base URL, without query, fragment or spaces")
        return None
    if re.search(r"/api/v2(/write)?/*$", parts.path):
        e.problem(f"{variable}: must be the server's base URL: leave out {parts.path.rstrip('/')} "
                  "(the daemon adds /api/v2/write)")
        return None
    if parts_port and port_number and parts_port != port_number:
        e.problem(f"INFLUX_PORT: {port_number} contradicts the port {parts_port} in {variable}")
    final_port = parts_port or port_number or (DEFAULT_INFLUX_PORT if not url else None)
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    if final_port:
        netloc += f":{final_port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _valid_host(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return bool(HOSTNAME_RE.match(name))


def _metric_sets(e: _Env) -> tuple[str, ...]:
    raw = e.get("METRIC_SETS")
    if not raw:
        return DEFAULT_SETS
    chosen: list[str] = []
    for word in (w.strip().lower() for w in raw.split(",")):
        if not word:
            continue
        if word == "all":
            chosen += [s for s in SET_NAMES if s not in chosen]
        elif word in SET_NAMES:
            if word not in chosen:
                chosen.append(word)
        else:
            e.problem(f"METRIC_SETS: {_show(word)} is not a metric set; the sets are "
                      f"{', '.join(SET_NAMES)} (or all)")
    return tuple(s for s in SET_NAMES if s in chosen) or DEFAULT_SETS


def _shard(e: _Env) -> tuple[int, int] | None:
    """SHARD=INDEX/COUNT, or SHARD_INDEX + SHARD_COUNT; INDEX counts from 0 (a StatefulSet's pod index)."""
    both, index, count = e.get("SHARD"), e.get("SHARD_INDEX"), e.get("SHARD_COUNT")
    if both and (index or count):
        e.problem("SHARD and SHARD_INDEX/SHARD_COUNT are both set: set one form")
        return None
    if both:
        index, _, count = both.partition("/")
        where = "SHARD"
    elif index or count:
        where = "SHARD_INDEX/SHARD_COUNT"
        if not (index and count):
            e.problem("SHARD_INDEX and SHARD_COUNT must be set together")
            return None
    else:
        return None
    index, count = index.strip(), count.strip()
    if not (INT_RE.match(index) and INT_RE.match(count)) or not 1 <= int(count) <= MAX_SHARDS \
            or not 0 <= int(index) < int(count):
        e.problem(f"{where}: {_show(e.get('SHARD') or f'{index}/{count}')} is not INDEX/COUNT with "
                  f"0 <= INDEX < COUNT <= {MAX_SHARDS} (e.g. SHARD=0/5 .. 4/5)")
        return None
    return int(index), int(count)


def _metrics_ports(e: _Env, hosts: list[TorHost]):
    """TOR_METRICS_PORTS / TOR_METRICS_PORTS_FILE, METRICSPORT_FAMILIES, ONION_LABEL."""
    from .sources import metricsport
    text, file_name = e.env.get("TOR_METRICS_PORTS", ""), e.get("TOR_METRICS_PORTS_FILE")
    pairs = []
    if text.strip() and file_name:
        e.problem("TOR_METRICS_PORTS and TOR_METRICS_PORTS_FILE are both set: set one of them")
    elif file_name:
        content = e.file_text("TOR_METRICS_PORTS_FILE")
        pairs = metricsport.split_file(content) if content is not None else []
    elif text.strip():
        pairs = metricsport.split_pairs(text)
    labels = {h.name: h.label for h in hosts}  # a duplicate is named by its TOR_HOSTS entry, never by its name
    addresses, problems = metricsport.parse_metrics_ports(pairs, labels) if pairs else ({}, [])
    families, family_problems = metricsport.parse_families(e.env.get("METRICSPORT_FAMILIES"))
    onion_label, label_problems = metricsport.parse_onion_label(e.env.get("ONION_LABEL"))
    e.problems += problems + family_problems + label_problems
    return addresses, families, onion_label


def _transport(e: _Env, url: str | None):
    """INFLUX_PROXY(_FILE), INFLUX_CA_CERT, INFLUX_CLIENT_CERT/KEY(+_PASSWORD_FILE), INFLUX_TLS_VERIFY."""
    from .sinks.transport import TlsOptions, make_ssl_context, parse_proxy
    proxy = None
    proxy_url = e.secret("INFLUX_PROXY", "INFLUX_PROXY_FILE", "proxy URL", ascii_only=True)
    if proxy_url:
        proxy, problem = parse_proxy(proxy_url, redactor=e.redactor)
        if problem:
            e.problem(problem)
    key_password = e.secret("", "INFLUX_CLIENT_KEY_PASSWORD_FILE", "key password", ascii_only=False)
    files = {name: e.get(name) or None for name in ("INFLUX_CA_CERT", "INFLUX_CLIENT_CERT", "INFLUX_CLIENT_KEY")}
    verify = e.flag("INFLUX_TLS_VERIFY", True)
    tls = TlsOptions(files["INFLUX_CA_CERT"], files["INFLUX_CLIENT_CERT"], files["INFLUX_CLIENT_KEY"], key_password,
                     verify)
    try:
        make_ssl_context(tls)
    except ValueError as exc:
        e.problem(str(exc))
    https = bool(url and url.startswith("https://"))
    if url and not https and (any(files.values()) or not verify):
        e.warnings.append("INFLUX_CA_CERT/INFLUX_CLIENT_*/INFLUX_TLS_VERIFY are set but INFLUX_URL is http: "
                          "they take effect only with https")
    if https and not verify:
        e.warnings.append("INFLUX_TLS_VERIFY=false: InfluxDB's certificate is not checked, anyone on the path "
                          "can read the token and the points (use INFLUX_CA_CERT with your own CA instead)")
    return tls, proxy


def _healthcheck_file(e: _Env) -> str:
    path = e.get("HEALTHCHECK_FILE") or DEFAULT_HEALTHCHECK_FILE
    if not path.isprintable():
        e.problem("HEALTHCHECK_FILE: the path contains a control character")
    return path


def config_from_env(env: Mapping[str, str], mode: str = "daemon", redactor: Redactor = REDACTOR) -> Settings:
    """Build Settings from environment variables, touching no network.

    mode: "daemon" (needs TOR_HOSTS and InfluxDB), "test" (-t: TOR_HOSTS only), "line-protocol"
    (--line-protocol: TOR_HOSTS only; points on stdout).
    Raises ConfigError listing EVERY problem found."""
    e = _Env(env, redactor)
    token = e.secret("INFLUX_TOKEN", "INFLUX_TOKEN_FILE", "token", ascii_only=True)
    hosts = _tor_hosts(e)

    period = e.number("RUN_EVERY_SECONDS", DEFAULT_PERIOD, integer=True, minimum=1, maximum=MAX_PERIOD)
    timeout_default = min(DEFAULT_TOR_TIMEOUT, round(period * 0.8, 3))
    tor_timeout = e.number("TOR_TIMEOUT", timeout_default, integer=False, minimum=0.1, maximum=MAX_TOR_TIMEOUT)
    if e.get("TOR_TIMEOUT") and tor_timeout >= period:
        e.problem(f"TOR_TIMEOUT: {tor_timeout:g} s must be below RUN_EVERY_SECONDS ({period} s)")
    influx_timeout = e.number("INFLUX_TIMEOUT", DEFAULT_INFLUX_TIMEOUT, integer=False, minimum=0.1,
                              maximum=MAX_INFLUX_TIMEOUT)
    send_version = e.flag("INFLUX_SEND_VERSION_TAG", True)
    verbose = e.flag("VERBOSE", False)
    service_tag = e.env.get("INFLUX_SERVICE_TAG", "tor").strip()
    if service_tag:
        problem = check_tag_value(service_tag, "the service tag")
        if problem:
            e.problem(f"INFLUX_SERVICE_TAG: {problem}")
    buffer_max = e.number("BUFFER_MAX_POINTS", DEFAULT_BUFFER_MAX_POINTS, integer=True, minimum=1,
                          maximum=MAX_BUFFER_POINTS)
    buffer_memory = e.size("BUFFER_MAX_MEMORY", DEFAULT_BUFFER_MAX_MEMORY, MAX_BUFFER_MEMORY)
    buffer_dir = e.get("BUFFER_DIR") or None
    if buffer_dir and not buffer_dir.isprintable():
        e.problem("BUFFER_DIR: the path contains a control character")
    metric_sets = _metric_sets(e)
    healthcheck_file = _healthcheck_file(e)
    shard_spec = _shard(e)
    metrics_ports, families, onion_label = _metrics_ports(e, hosts)

    url = _influx_url(e)
    tls, proxy = _transport(e, url)
    connect_timeout = e.number("INFLUX_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT_PROXY if proxy else
                               DEFAULT_CONNECT_TIMEOUT, integer=False, minimum=0.1, maximum=MAX_INFLUX_TIMEOUT)
    org = e.get("INFLUX_ORGANIZATION") or None
    bucket = e.get("INFLUX_BUCKET") or None
    for name, value in (("INFLUX_ORGANIZATION", org), ("INFLUX_BUCKET", bucket)):
        if value and not value.isprintable():
            e.problem(f"{name}: contains a control character")
    prometheus = None
    if e.get("PROMETHEUS_LISTEN") or any(e.get(v) for v in KNOWN if v.startswith("PROMETHEUS_")):
        from .sinks.prometheus import config_from_env as prometheus_config
        prometheus, prometheus_problems = prometheus_config(env, redactor)
        e.problems += prometheus_problems
        if prometheus is None and not prometheus_problems:
            e.problem("PROMETHEUS_BASIC_AUTH_FILE/PROMETHEUS_TLS_*: set PROMETHEUS_LISTEN too")
    influx_wanted = any(e.get(v) for v in ("INFLUX_HOST", "INFLUX_URL", "INFLUX_ORGANIZATION", "INFLUX_BUCKET",
                                            "INFLUX_TOKEN", "INFLUX_TOKEN_FILE"))
    if mode == "daemon" and prometheus is not None and not influx_wanted:
        mode_needs_influx = False  # a Prometheus-only deployment needs no INFLUX_* at all
    else:
        mode_needs_influx = mode == "daemon"
    if mode == "line-protocol" and not e.get("HEALTHCHECK_FILE"):
        healthcheck_file = None  # run by Telegraf & co as an ordinary user: no file unless asked for
    if mode_needs_influx:
        if url is None and not any(p.startswith(("INFLUX_URL", "INFLUX_HOST")) for p in e.problems):
            e.missing("INFLUX_HOST", " (e.g. INFLUX_HOST=http://influxdb, or set INFLUX_URL)")
        if org is None:
            e.missing("INFLUX_ORGANIZATION", "")
        if bucket is None:
            e.missing("INFLUX_BUCKET", "")
        if token is None and not e.get("INFLUX_TOKEN_FILE") and not any(
                p.startswith("INFLUX_TOKEN") for p in e.problems):
            e.missing("INFLUX_TOKEN", " (or give INFLUX_TOKEN_FILE)")
    e.unknown_variables()
    if e.problems:
        raise ConfigError(e.problems)
    owned = shard(hosts, *shard_spec) if shard_spec else hosts
    return Settings(
        tor_hosts=tuple(owned), all_tor_hosts=tuple(hosts), shard=shard_spec, mode=mode, period=period, tor_timeout=tor_timeout,
        influx_url=url, influx_org=org, influx_bucket=bucket, influx_token=token,
        influx_timeout=influx_timeout, influx_connect_timeout=connect_timeout, influx_tls=tls, influx_proxy=proxy,
        service_tag=service_tag, send_version_tag=send_version,
        verbose=verbose, healthcheck_file=healthcheck_file, buffer_dir=buffer_dir,
        buffer_max_points=buffer_max, buffer_max_memory=buffer_memory, metric_sets=metric_sets,
        metrics_ports={h.name: metrics_ports[h.name] for h in owned if h.name in metrics_ports},
        metricsport_families=families, onion_label=onion_label, prometheus=prometheus,
        warnings=tuple(e.warnings))
