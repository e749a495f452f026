"""The MetricsPort settings: TOR_METRICS_PORTS (or its file), METRICSPORT_FAMILIES, ONION_LABEL.

``TOR_METRICS_PORTS`` pairs a TOR_HOSTS name with the address of that tor's MetricsPort::

    TOR_METRICS_PORTS=relay1=127.0.0.1:9035,relay2=[::1]:9035,hs=http://hs.local:9035/metrics,b=unix:/run/tor/metrics

ADDRESS is ``host:port``, ``[v6]:port``, ``http://host:port/path`` or ``unix:/path`` (tor serves
its MetricsPort on a unix socket too). The path is ``/metrics`` unless a URL gives another.
TOR_METRICS_PORTS_FILE holds the same pairs one per line (blank lines and ``#`` comments skipped).

Nothing here raises: every function returns what it could read and one problem line per bad
entry, naming the entry (``TOR_METRICS_PORTS entry 2``), never with a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from typing import Collection, Iterable, Mapping

from ...redact import clip
from ...targets import HOSTNAME_RE, socket_path_problem, valid_port
from .parse import DEFAULT_SELECTION, ONION_MODES, FamilySelection
from .schema import DEFAULT_FAMILIES, FAMILIES, HS_PREFIX

DEFAULT_PATH = "/metrics"
FORMS = "HOST:PORT, [IPv6]:PORT, http://HOST:PORT/PATH or unix:/PATH"
PATTERN_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*\*?$")


@dataclasses.dataclass(frozen=True)
class MetricsAddress:
    """Where one tor's MetricsPort is. Exactly one of (host, port) and socket_path is set;
    host is an IP literal (no brackets) or a DNS name, resolved at each scrape."""

    host: str | None = None
    port: int | None = None
    path: str = DEFAULT_PATH
    socket_path: str | None = None
    label: str = ""

    @property
    def where(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        host = f"[{self.host}]" if ":" in (self.host or "") else self.host
        suffix = "" if self.path == DEFAULT_PATH else self.path
        return f"{host}:{self.port}{suffix}"

    @property
    def host_header(self) -> str:
        if self.socket_path is not None:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class AddressError(ValueError):
    """An address is malformed; the message says why."""


def _port(text: str) -> int:
    port = valid_port(text.strip())
    if port is None:
        raise AddressError("the port is not a number from 1 to 65535")
    return port


def _host(text: str) -> str:
    if not text:
        raise AddressError("the host is empty")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if ":" in text:
        raise AddressError("an IPv6 address must be written in brackets, e.g. [::1]:9035")
    if not HOSTNAME_RE.match(text):
        raise AddressError("the host is neither an IP address nor a DNS name")
    return text


def parse_address(text: str, label: str = "") -> MetricsAddress:
    """One ADDRESS (see the module's docstring); AddressError when it is malformed."""
    text = text.strip()
    if not text:
        raise AddressError(f"the address is empty (expected {FORMS})")
    if text.startswith("unix:"):
        path = text[5:]
        problem = socket_path_problem(path, "unix:/path/to/metrics.sock")
        if problem:
            raise AddressError(problem)
        return MetricsAddress(socket_path=path, label=label)
    if "://" in text:
        return _parse_url(text, label)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AddressError("an IPv6 address opened with '[' has no ']'")
        try:
            host = str(ipaddress.IPv6Address(text[1:close]))
        except ValueError:
            raise AddressError("the address in brackets is not an IPv6 address") from None
        rest = text[close + 1:]
        if not rest.startswith(":"):
            raise AddressError("expected [IPv6]:PORT")
        return MetricsAddress(host, _port(rest[1:]), label=label)
    host, sep, port = text.rpartition(":")
    if not sep:
        raise AddressError(f"no port (expected {FORMS})")
    if "/" in port:
        raise AddressError("a path needs the URL form: http://HOST:PORT/PATH")
    if ":" in host:
        raise AddressError("an IPv6 address must be written in brackets, e.g. [::1]:9035")
    return MetricsAddress(_host(host), _port(port), label=label)


def _parse_url(text: str, label: str) -> MetricsAddress:
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise AddressError("the URL is malformed or its port is not a number from 1 to 65535") from None
    if parts.scheme.lower() == "https":
        raise AddressError("tor's MetricsPort speaks plain HTTP only: use http://")
    if parts.scheme.lower() != "http":
        raise AddressError(f"the URL scheme must be http (expected {FORMS})")
    if parts.username is not None or parts.password is not None:
        raise AddressError("the URL must not contain credentials (tor's MetricsPort has none)")
    if port is None:
        raise AddressError("the URL has no port (tor's MetricsPort has no default port)")
    if port == 0:
        raise AddressError("the URL's port is not a number from 1 to 65535")
    host = parts.hostname or ""
    if host.startswith("["):
        host = host[1:-1]
    path = parts.path or DEFAULT_PATH
    if parts.query:
        path += "?" + parts.query
    if not path.isprintable() or " " in path:
        raise AddressError("the URL path contains a space or a control character")
    return MetricsAddress(_host(host), port, path, label=label)


def split_pairs(text: str, variable: str = "TOR_METRICS_PORTS") -> list[tuple[str, str]]:
    """TOR_METRICS_PORTS's comma-separated pairs as (label, text); empty entries skipped."""
    return [(f"{variable} entry {n}", part) for n, part in enumerate(text.split(","), 1) if part.strip()]


def split_file(content: str, variable: str = "TOR_METRICS_PORTS_FILE") -> list[tuple[str, str]]:
    """The pairs of a TOR_METRICS_PORTS_FILE, one per line, as (label, text)."""
    return [(f"{variable} line {n}", line) for n, line in enumerate(content.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def _name_of(text: str, names: set[str]) -> tuple[str, str] | None:
    """(name, address) of NAME=ADDRESS. A TOR_HOSTS name may contain '=': the split is the
    first '=' whose left side is a known name, else the first '='."""
    positions = [i for i, c in enumerate(text) if c == "="]
    if not positions:
        return None
    for i in positions:
        if text[:i].strip() in names:
            return text[:i].strip(), text[i + 1:]
    return text[:positions[0]].strip(), text[positions[0] + 1:]


def parse_metrics_ports(pairs: Iterable[tuple[str, str]], names: Mapping[str, str] | Collection[str]
                        ) -> tuple[dict[str, MetricsAddress], list[str]]:
    """Parse (label, "NAME=ADDRESS") pairs against the TOR_HOSTS names (a mapping name -> the
    entry's label, "TOR_HOSTS entry 2", or just the names).

    Returns {name: address} and the problems (unknown name, duplicate name, bad address), one
    line each naming the entry. A known name is never quoted: in the HOST:PORT:NAME form of
    TOR_HOSTS it may be a password typed without its name; the TOR_HOSTS entry is named by its label."""
    found: dict[str, MetricsAddress] = {}
    where: dict[str, str] = {}
    problems: list[str] = []
    for label, text in pairs:
        split = _name_of(text.strip(), names)
        if split is None:
            problems.append(f"{label}: expected NAME=ADDRESS (NAME a TOR_HOSTS name, ADDRESS {FORMS})")
            continue
        name, address = split
        if not name:
            problems.append(f"{label}: the name before '=' is empty")
            continue
        if name not in names:
            problems.append(f"{label}: no TOR_HOSTS entry is named {clip(name, 40)!r} (the name is the "
                            "last field of a TOR_HOSTS entry)")
            continue
        if name in found:
            entry = names.get(name) if isinstance(names, Mapping) else None
            problems.append(f"{label}: {entry or 'its TOR_HOSTS entry'} already has a MetricsPort ({where[name]})")
            continue
        try:
            found[name] = parse_address(address, label)
        except AddressError as exc:
            problems.append(f"{label}: {exc}")
            continue
        where[name] = label
    return found, problems


def parse_families(text: str | None) -> tuple[FamilySelection, list[str]]:
    """METRICSPORT_FAMILIES: a comma list of family names, ``all``, ``default`` (the default
    selection), or patterns ``PREFIX*`` (every family whose name starts with PREFIX). Unset or
    empty: the default. A family named in full is kept whole (``tor_relay_connections`` then
    writes every connection type and state, not only the default's open OR connections)."""
    if text is None or not text.strip():
        return DEFAULT_SELECTION, []
    problems: list[str] = []
    names: set[str] = set()
    prefixes: list[str] = []
    everything = use_default = False
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        lower = word.lower()
        if lower == "all":
            everything = True
        elif lower == "default":
            use_default = True
        elif not PATTERN_RE.match(word) or len(word) > 200:
            problems.append(f"METRICSPORT_FAMILIES: {clip(word, 40)!r} is not a metric family name "
                            "(letters, digits, '_' and ':', optionally ending in '*')")
        elif word.endswith("*"):
            if word[:-1] not in prefixes:
                prefixes.append(word[:-1])
        elif word not in FAMILIES:
            problems.append(f"METRICSPORT_FAMILIES: {word!r} is not a family tor 0.4.9 serves (--schema lists "
                            "them; a family of a newer tor can be chosen with a pattern, e.g. "
                            f"{word}*)")
        else:
            names.add(word)
    if everything:
        return FamilySelection(everything=True), problems
    only = {}
    if use_default:
        only = {k: v for k, v in DEFAULT_SELECTION.only.items() if k not in names}  # named in full: whole
        names |= set(DEFAULT_FAMILIES)
        if HS_PREFIX not in prefixes:
            prefixes.append(HS_PREFIX)
    if not names and not prefixes and not problems:
        problems.append("METRICSPORT_FAMILIES: no family chosen")
    return FamilySelection(frozenset(names), tuple(prefixes), False, only), problems


def parse_onion_label(text: str | None) -> tuple[str, list[str]]:
    """ONION_LABEL: ``hash`` (default), ``address`` or ``drop``."""
    if text is None or not text.strip():
        return "hash", []
    mode = text.strip().lower()
    if mode in ONION_MODES:
        return mode, []
    return "hash", [f"ONION_LABEL: {clip(text, 40)!r} is not one of {', '.join(ONION_MODES)} (hash: a stable "
                    "16-hex-digit hash of the onion address; address: the address itself; drop: no onion "
                    "tag, the services' figures summed)"]


__all__ = ["MetricsAddress", "AddressError", "parse_address", "parse_metrics_ports", "split_pairs", "split_file",
           "parse_families", "parse_onion_label"]
