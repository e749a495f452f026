"""TOR_HOSTS entries: where each tor's control port is, how to log in, and its `host` tag.

Messages about an entry never quote one of its fields: with a mistyped entry any field may be
(part of) a password. They name the entry and the field, and explain the likely cause.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from typing import Iterable

# A DNS name or compose service name: labels of letters, digits, '-' and '_', dot-separated.
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
MAX_NAME = 128
FORMS = "HOST:PORT:NAME or HOST:PORT:PASSWORD:NAME"
#: The longest unix socket path: sun_path holds 108 bytes on Linux, its terminating NUL included.
MAX_SOCKET_PATH = 107


@dataclasses.dataclass(frozen=True)
class TorHost:
    """One entry of TOR_HOSTS. Exactly one of (address, port) and socket_path is set.

    ``label`` says where the entry came from ("TOR_HOSTS entry 2"). ``password_given`` is False
    for the HOST:PORT:NAME form: its last field might then be a password typed without its name,
    so until the tor accepted the daemon without a password, messages call the entry by its
    label and address, never by its name. The password is kept out of repr()."""

    name: str
    address: str | None = None  # IPv4/IPv6 literal (no brackets) or DNS name, resolved at each connect
    port: int | None = None
    socket_path: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    label: str = ""
    password_given: bool = True

    @property
    def where(self) -> str:
        if self.socket_path is not None:
            return f"unix:{self.socket_path}"
        if ":" in (self.address or ""):
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"

    @property
    def anonymous(self) -> str:
        """How to call the entry without its name."""
        return f"{self.label or 'entry'} ({self.where})"

    def describe(self) -> str:
        """One line for the start-up log, without the password (nor a name that may be one)."""
        if self.password:
            return f"{self.name} at {self.where} (password ****)"
        if self.password_given:
            return f"{self.name} at {self.where} (no password: cookie or no authentication)"
        return f"{self.anonymous} (no password in the entry: cookie or no authentication)"


class EntryError(ValueError):
    """A TOR_HOSTS entry is malformed. The message quotes none of the entry's fields."""


def check_tag_value(value: str, what: str) -> str | None:
    """None when `value` can be a tag value that reads back exactly as given, else why not.
    Tag values go to InfluxDB line protocol, where a backslash is an escape character that
    InfluxDB and other servers read differently, so it is refused with control characters."""
    if not value:
        return f"{what} is empty"
    if len(value) > MAX_NAME:
        return f"{what} is longer than {MAX_NAME} characters"
    if value != value.strip():
        return f"{what} starts or ends with a space"
    if "\\" in value:
        return f"{what} contains a backslash, which line protocol cannot carry unambiguously"
    if not value.isprintable():
        return f"{what} contains a control or unprintable character"
    return None


def parse_tor_host(entry: str, label: str = "entry") -> TorHost:
    """Parse one TOR_HOSTS entry; raise EntryError (which quotes no field).

    Forms: HOST:PORT:NAME, HOST:PORT:PASSWORD:NAME (the password is everything between PORT and
    the last ':', so it may contain ':'), [IPv6]:PORT[:PASSWORD]:NAME, unix:PATH[:PASSWORD]:NAME.
    An empty password (HOST:PORT::NAME) means no password, as if it were left out."""
    if entry.startswith("unix:"):
        path, sep, rest = entry[5:].partition(":")
        problem = socket_path_problem(path, "unix:/path/to/control.sock:NAME")
        if problem:
            raise EntryError(problem)
        if not sep:
            raise EntryError("expected unix:PATH:NAME or unix:PATH:PASSWORD:NAME (no name given)")
        password, has_password, name = rest.rpartition(":")
        return _host(name, label, password, bool(has_password), socket_path=path)

    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise EntryError("an IPv6 address opened with '[' has no ']'")
        address, rest = entry[1:close], entry[close + 1:]
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise EntryError("the address in brackets is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise EntryError("expected [IPv6]:PORT:NAME or [IPv6]:PORT:PASSWORD:NAME")
        rest = rest[1:]
    else:
        address, sep, rest = entry.partition(":")
        if _looks_like_bare_ipv6(entry):
            raise EntryError("an IPv6 address must be written in brackets, e.g. [::1]:9051:NAME")
        if not address:
            raise EntryError("the host (first field) is empty")
        if not sep:
            raise EntryError(f"expected {FORMS} (no ':' at all)")
        if not _is_ipv4(address) and not HOSTNAME_RE.match(address):
            raise EntryError("the host (first field) is neither an IPv4 address, an IPv6 address in "
                             "brackets, nor a DNS name")

    port_text, sep, rest = rest.partition(":")
    if not sep:
        raise EntryError(f"expected {FORMS} (too few fields: the name is missing)")
    port = _parse_port(port_text)
    password, has_password, name = rest.rpartition(":")
    return _host(name, label, password, bool(has_password), address=address, port=port)


def _host(name: str, label: str, password: str, has_password_field: bool, **where) -> TorHost:
    name = name.strip()
    if not name:
        raise EntryError("the name (the host tag, last field) is empty")
    problem = check_tag_value(name, "the name (the host tag, last field)")
    if problem:
        raise EntryError(problem)
    if password and not password.isprintable():
        raise EntryError("the password contains a control or unprintable character (a line break?)")
    return TorHost(name=name, password=password or None, label=label,
                   password_given=has_password_field, **where)


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


def valid_port(text: str) -> int | None:
    """The port `text` is (ASCII digits, at most 5, 1 to 65535), or None. Every port setting is
    read by this: int() alone takes other digits ('٩') or refuses some ('²') and more than 4300
    digits with a ValueError."""
    if not (0 < len(text) <= 5 and text.isascii() and text.isdigit()):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def socket_path_problem(path: str, example: str) -> str | None:
    """What is wrong with a unix socket path of TOR_HOSTS or TOR_METRICS_PORTS, or None: it must be
    absolute, printable, and fit in sun_path with its NUL (or connect() would fail)."""
    if not path.startswith("/"):
        return f"the unix socket path must be absolute ({example})"
    if not path.isprintable():
        return "the unix socket path contains a control character"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return (f"the unix socket path is longer than {MAX_SOCKET_PATH} bytes, the most a unix socket "
                "address holds (mount or link the socket at a shorter path)")
    return None


def _parse_port(text: str) -> int:
    port = valid_port(text.strip())
    if port is None:
        raise EntryError("the port (second field) is not a number from 1 to 65535")
    return port


def parse_tor_hosts(entries: Iterable[tuple[str, str]], hint: str = "") -> tuple[list[TorHost], list[str]]:
    """Parse (label, text) pairs, e.g. ("TOR_HOSTS entry 2", "10.0.0.2:9051:pw:relay2").

    Returns the hosts and a list of problems (bad entries, duplicate names); never raises.
    `hint` is appended to the message of a malformed entry (the likely cause)."""
    hosts, problems, seen = [], [], {}
    for label, text in entries:
        try:
            host = parse_tor_host(text.strip(), label)
        except EntryError as exc:
            problems.append(f"{label}: {exc}{hint}")
            continue
        if host.name in seen:
            problems.append(f"{label}: its name (the last field) is already used by {seen[host.name]}; "
                            "names become the host tag and must be unique")
            continue
        seen[host.name] = label
        hosts.append(host)
    return hosts, problems


# ---------------------------------------------------------------------------------------- shards

def shard_owner(name: str, count: int) -> int:
    """The replica (0 .. count-1) that polls the tor named `name`: rendezvous (highest random
    weight) hashing, so going from N to N+1 replicas moves only the tors the new one wins (~1/(N+1)).
    Stable across processes, machines and Python versions (BLAKE2b, not hash())."""
    import hashlib
    best, owner = -1, 0
    encoded = name.encode("utf-8")
    for index in range(count):
        weight = int.from_bytes(hashlib.blake2b(b"%d\0" % index + encoded, digest_size=8).digest(), "big")
        if weight > best:
            best, owner = weight, index
    return owner


def shard(hosts: Iterable[TorHost], index: int, count: int) -> list[TorHost]:
    """The tors replica `index` of `count` polls."""
    return [h for h in hosts if shard_owner(h.name, count) == index]
