"""One tor's control connection: a state machine the poll loop drives, never blocking.

A session keeps one authenticated connection open across polls. :meth:`ControlSession.start`
begins a poll: on a live connection it sends the poll's questions at once (pipelined: one round
trip), otherwise it connects first (resolving a DNS name in the loop's resolver), reads
PROTOCOLINFO, authenticates as tor offers, learns the node's kind when a metric set needs it,
and then asks. Every step is bounded by the poll's deadline (TOR_TIMEOUT from its start) and by
the reply reader's size limits; every failure closes the connection and reports a typed
:class:`~tor2influxdb2.errors.Failure`.

Authentication follows stem's order (no authentication, password, SAFECOOKIE) and uses stem to
parse PROTOCOLINFO and AUTHCHALLENGE replies and for SAFECOOKIE's constants. Plain COOKIE
authentication, which would send the cookie file's content to whatever answers on the port, is
not used: every tor since 0.2.3 offers SAFECOOKIE beside it, which proves that the peer knows
the cookie before the daemon sends anything derived from it.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import hmac
import os
import socket
import stat
import time
from typing import Callable

import stem
import stem.connection
import stem.response
import stem.response.authchallenge
import stem.response.protocolinfo

from ...errors import Failure, Reason, SourceError, os_failure
from ...model import Sample, make_tags
from ...redact import clip
from ...targets import TorHost
from ..loopsession import CONNECTING, LoopSession
from .metricsets import (ACCOUNTING_DETAIL_KEYS, BANDWIDTH_OPTIONS, CONF_REFRESH, COUNTED_KEYS, FINGERPRINT_RE,
                         LONG_KEYS, NICKNAME_RE, NS_REFRESH, PROBE_COMMANDS, REACHABILITY_KEYS, Answers, Plan,
                         clean_version, parse_bool, parse_ns)
from .protocol import ProtocolViolation, Reply, ReplyReader, quote

# States
CLOSED, RESOLVING, SETUP, READY, POLLING = "closed", "resolving", "setup", "ready", "polling"

COOKIE_SIZE = 32
QUICKACK = os.environ.get("T2I_NO_QUICKACK", "") == ""  # the bench measures the difference
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; reset by the kernel, so set at every read


#: The events the connection listens to, and the set that needs each.
EVENTS = (("CONN_BW", "bandwidth"), ("CONF_CHANGED", "relay"))
_GETCONF = ("GETCONF " + " ".join(BANDWIDTH_OPTIONS) + "\r\n").encode()


class TagPolicy:
    """Which common tags samples carry (INFLUX_SERVICE_TAG, INFLUX_SEND_VERSION_TAG)."""

    __slots__ = ("service", "send_version")

    def __init__(self, service: str = "tor", send_version: bool = True):
        self.service, self.send_version = service, send_version

    def tags(self, name: str, version: str) -> dict[str, str]:
        tags = {"host": name}
        if self.send_version and version:
            tags["version"] = version
        if self.service:
            tags["service"] = self.service
        return tags


class ControlSession(LoopSession):
    """The control connection of one tor (see the module's docstring).

    The loop calls :meth:`handle` when the socket is ready and :meth:`expire` when the deadline
    passed. When a poll ends, ``on_done(session, samples, failure)`` is called exactly once."""

    def __init__(self, host: TorHost, plan: Plan, tags: TagPolicy, timeout: float, loop,
                 warn: Callable[[str], None] = lambda text: None):
        self.host, self.plan, self.tag_policy, self.timeout, self.loop = host, plan, tags, timeout, loop
        self.warn = warn
        self.state = CLOSED
        self.sock: socket.socket | None = None
        self.reader: ReplyReader | None = None
        self.out = b""
        self.pending: collections.deque = collections.deque()
        self.deadline = 0.0
        self.connects = 0
        self.confirmed = host.password_given
        self.warned: set[str] = set()
        self._tag_cache: tuple[str, tuple] | None = None
        self._extra_cache: tuple[tuple, tuple, tuple] | None = None
        self.last_poll: float | None = None
        self.on_done: Callable | None = None
        self._quickack = False
        self._forget()

    def _forget(self) -> None:
        """What is learnt per connection (a restarted tor may be another version or kind)."""
        self.kind: str | None = None
        self.fingerprint: str | None = None
        self.nickname: str | None = None
        self.unknown: frozenset[str] = frozenset()
        self.split = False
        self.ns: tuple | None = None
        self.ns_at = float("-inf")
        self.conf: dict | None = None  # the bandwidth options as tor last answered them
        self.conf_at = float("-inf")
        self.conf_events = False  # tor announces configuration changes to this connection (CONF_CHANGED)
        self.accounting_on: bool | None = None  # accounting was enabled at the last poll (None: not known)
        self.memo: dict = {}  # what the metric sets derived from this tor's last answers (metricsets.memoized)
        self._cookie: bytes | None = None
        self._nonce: bytes | None = None
        self._questions: tuple | None = None

    # ------------------------------------------------------------------ what the loop calls
    @property
    def display(self) -> str:
        """The name to show: the entry's name once it cannot be a password any more."""
        return self.host.name if self.confirmed else self.host.anonymous

    def start(self, now: float, on_done: Callable) -> None:
        """Begin a poll that must end by now + timeout."""
        self.on_done = on_done
        self.deadline = now + self.timeout
        self.loop.schedule(self)
        self.answers = Answers()
        if self.last_poll is not None:
            self.answers.elapsed = now - self.last_poll
        self.collected_ms = 0
        self.retried = False
        self.reused = self.state == READY
        try:
            if self.state == READY:
                self._ask()
            else:
                self._connect()
        except SourceError as exc:  # e.g. the kept connection was reset just before: _fail reconnects
            self._fail(exc.failure)

    def handle(self, readable: bool, writable: bool) -> None:
        try:
            if writable:
                if self.state == CONNECTING:
                    self._connected()
                elif self.out:
                    self._flush()
            if readable and self.sock is not None:
                self._read()
        except SourceError as exc:
            self._fail(exc.failure)
        except ProtocolViolation as exc:
            self._fail(exc.failure)
        except OSError as exc:
            self._fail(os_failure(exc))

    def expire(self, now: float) -> None:
        if self.busy and now >= self.deadline:
            what = "no answer" if self.state in (SETUP, POLLING) else "no connection"
            self._fail(Failure(Reason.TIMEOUT, f"{what} within {self.timeout:g} s"))

    def resolved(self, infos: list | None, error: Failure | None) -> None:
        if self.state != RESOLVING:
            return
        if error is not None:
            self._fail(error)
        elif not infos:
            self._fail(Failure(Reason.RESOLVE, "cannot resolve host (no address)"))
        else:
            family, addr = infos[0]
            self._open(family, addr)

    def close(self) -> None:
        """Close the connection; a poll in progress ends with 'stopping'."""
        self._fail(Failure(Reason.STOPPING, "stopping"), retry=False)

    # ------------------------------------------------------------------ connecting
    def _connect(self) -> None:
        host = self.host
        if host.socket_path is not None:
            self._open(socket.AF_UNIX, host.socket_path)
            return
        try:
            ip = ipaddress.ip_address(host.address)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            self._open(family, (host.address, host.port))
        except ValueError:
            self.state = RESOLVING
            self.loop.resolve(host.address, host.port, self)

    def _open(self, family: int, addr) -> None:
        self._close_socket()
        tcp = family != socket.AF_UNIX
        self._quickack = tcp and _TCP_QUICKACK is not None and QUICKACK
        super()._open(family, addr, nodelay=tcp)

    def _connected(self) -> None:
        self._raise_connect_error()
        self.state = SETUP
        self.reader = ReplyReader(keep_lines=True)
        self.pending = collections.deque([self._on_protocolinfo])
        self._send("PROTOCOLINFO 1")

    # ------------------------------------------------------------------ authentication
    def _on_protocolinfo(self, reply: Reply) -> None:
        if not reply.ok:
            raise SourceError(Failure(Reason.PROTOCOL, f"tor answered {reply.status} to PROTOCOLINFO: "
                                                       f"{clip(reply.message, 120)}"))
        try:
            info = reply.as_stem()
            stem.response.convert("PROTOCOLINFO", info)
        except (stem.ProtocolError, ValueError, TypeError):
            raise SourceError(Failure(Reason.PROTOCOL, "the PROTOCOLINFO answer is malformed: "
                                                       "is this tor's ControlPort?")) from None
        methods = set(info.auth_methods)
        Method = stem.connection.AuthMethod
        if Method.NONE in methods:
            self._authenticate("AUTHENTICATE")
        elif Method.PASSWORD in methods and self.host.password is not None:
            self._authenticate("AUTHENTICATE " + quote(self.host.password))
        elif Method.SAFECOOKIE in methods and info.cookie_path:
            self._cookie = self._read_cookie(info.cookie_path)
            self._nonce = os.urandom(32)
            self.pending.append(self._on_authchallenge)
            self._send("AUTHCHALLENGE SAFECOOKIE " + self._nonce.hex().upper())
        elif Method.PASSWORD in methods:
            label = self.host.label or "the entry"
            raise SourceError(Failure(Reason.AUTH, f"tor asks for a password and {label} gives none (if its last "
                                                   "field is the password, write HOST:PORT:PASSWORD:NAME)"))
        elif Method.COOKIE in methods:
            raise SourceError(Failure(Reason.AUTH, "tor offers only COOKIE authentication, which would send its "
                                                   "cookie in clear to whatever answers; use SAFECOOKIE (any tor "
                                                   "since 0.2.3) or a password"))
        else:
            raise SourceError(Failure(Reason.AUTH, "tor offers no authentication method this daemon supports"))

    def _read_cookie(self, path: str) -> bytes:
        """tor's cookie, read without blocking and only from a regular file of 32 bytes (the path
        comes from the peer)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        except OSError as exc:
            raise SourceError(Failure(Reason.AUTH, f"cannot read tor's cookie file {clip(path, 120)}: "
                                                   f"{exc.strerror} (mount tor's data directory at the same "
                                                   "path, readable by this daemon's user)")) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != COOKIE_SIZE:
                raise SourceError(Failure(Reason.AUTH, f"tor's cookie file {clip(path, 120)} is not a "
                                                       f"{COOKIE_SIZE}-byte file"))
            cookie = os.read(fd, COOKIE_SIZE + 1)
        finally:
            os.close(fd)
        if len(cookie) != COOKIE_SIZE:
            raise SourceError(Failure(Reason.AUTH, f"tor's cookie file {clip(path, 120)} is not a "
                                                   f"{COOKIE_SIZE}-byte file"))
        return cookie

    def _on_authchallenge(self, reply: Reply) -> None:
        if not reply.ok:
            raise SourceError(Failure(Reason.AUTH, f"tor refused AUTHCHALLENGE: {clip(reply.message, 120)}"))
        try:
            challenge = reply.as_stem()
            stem.response.convert("AUTHCHALLENGE", challenge)
        except (stem.ProtocolError, ValueError, TypeError):
            raise SourceError(Failure(Reason.PROTOCOL, "the AUTHCHALLENGE answer is malformed")) from None
        material = self._cookie + self._nonce + challenge.server_nonce
        expected = hmac.new(stem.connection.SERVER_HASH_CONSTANT, material, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, challenge.server_hash):
            raise SourceError(Failure(Reason.AUTH, "the peer does not know tor's cookie (SAFECOOKIE server hash "
                                                   "wrong): not the tor whose cookie file this is"))
        client = hmac.new(stem.connection.CLIENT_HASH_CONSTANT, material, hashlib.sha256).digest()
        self._cookie = self._nonce = None
        self._authenticate("AUTHENTICATE " + client.hex().upper())

    def _authenticate(self, command: str) -> None:
        self.pending.append(self._on_authenticate)
        self._send(command)

    def _on_authenticate(self, reply: Reply) -> None:
        if not reply.ok:
            what = "password" if self.host.password is not None else "authentication"
            raise SourceError(Failure(Reason.AUTH, f"authentication failed: tor refused the {what} "
                                                   f"({reply.status} {clip(reply.message, 120)})"))
        self.connects += 1
        self.confirmed = True
        self.reader = ReplyReader(counted=COUNTED_KEYS, long=LONG_KEYS)
        # tor fills bw-event-cache only while a controller listens to a per-second event; CONN_BW is
        # one, and is never sent unless TestingEnableConnBwEvent is set. CONF_CHANGED tells when the
        # bandwidth options a relay's GETCONF asked may have changed (the answer is kept until then).
        events = [event for event, needed_by in EVENTS if needed_by in self.plan.sets]
        if events:
            self.pending.append(lambda reply: self._on_setevents(events, reply))
            self._send("SETEVENTS " + " ".join(events))
        if self.plan.needs_kind:
            self.pending.extend([self._on_probe_fingerprint, self._on_probe_bridge])
            self._send("\r\n".join(PROBE_COMMANDS))
        else:
            self._ready()

    def _on_setevents(self, events: list[str], reply: Reply) -> None:
        if reply.ok:
            self.conf_events = "CONF_CHANGED" in events  # (the name a test may change)
        elif len(events) > 1 and "CONN_BW" in events:  # an old tor that knows only one of them: CONN_BW alone
            self.pending.append(lambda reply: None)     # (an old tor may know neither: nothing else to do)
            self._send("SETEVENTS CONN_BW")

    def _on_probe_fingerprint(self, reply: Reply) -> None:
        if reply.ok:
            fp = (reply.values.get("fingerprint") or "").strip().upper()
            if FINGERPRINT_RE.match(fp):
                self.fingerprint, self.kind = fp, "relay"
        elif reply.status == 551:
            self.kind = "client"

    def _on_probe_bridge(self, reply: Reply) -> None:
        if reply.ok and self.kind == "relay" and (reply.values.get("BridgeRelay") or "").strip() == "1":
            self.kind = "bridge"
        self._ready()

    def _ready(self) -> None:
        self.state = READY
        if self.busy:
            self._ask()

    # ------------------------------------------------------------------ polling
    def _ask(self) -> None:
        """Send every question of this poll at once; their replies come back in order."""
        self.state = POLLING
        key = (self.kind, self.split, self.unknown, self.accounting_on is False)
        cached = self._questions
        if cached is None or cached[0] != key:  # the same questions every poll: made once per connection
            commands = []
            sets = self.plan.main_sets(self.kind)
            for group in ([(s,) for s in sets] if self.split else [sets]):
                commands.append(self._question_main(group))
            if self.plan.wants_relay(self.kind):
                commands.append(("GETINFO " + " ".join(REACHABILITY_KEYS), self._on_reachability))
            data = "".join(command + "\r\n" for command, _ in commands).encode("utf-8")
            cached = self._questions = (key, data, tuple(handler for _, handler in commands))
        data, handlers = cached[1], cached[2]
        self.pending.extend(handlers)
        if self.plan.wants_relay(self.kind):
            # the bandwidth options: kept while tor announces changes (CONF_CHANGED), and asked again at
            # the poll after an announcement and every CONF_REFRESH seconds; at every poll without events
            if self.conf is None or not self.conf_events or time.monotonic() - self.conf_at >= CONF_REFRESH:
                self.pending.append(self._on_conf)
                data += _GETCONF
            else:
                self.answers.conf = self.conf
                self.answers.conf_kept = True
        # ns/id: every NS_REFRESH seconds while listed, at every poll while not (a new relay's first
        # consensus shows at the next poll, not minutes later)
        if self.kind == "relay" and "relay" in self.plan.sets and (
                not (self.ns and self.ns[0]) or time.monotonic() - self.ns_at >= NS_REFRESH):
            self.pending.append(self._on_ns)
            data += f"GETINFO ns/id/{self.fingerprint}\r\n".encode()
        self._send_bytes(data)

    def _question_main(self, group: tuple[str, ...]):
        skip = ACCOUNTING_DETAIL_KEYS if self.accounting_on is False else ()
        keys = self.plan.keys(group, self.unknown, skip)
        return "GETINFO " + " ".join(keys), lambda reply: self._on_main(group, reply)

    def _on_main(self, group: tuple[str, ...], reply: Reply) -> None:
        if reply.ok:
            if not self.collected_ms:
                self.collected_ms = time.time_ns() // 1_000_000
            self.answers.merge(reply.values, reply.counts)
            if "accounting" in group:
                self._accounting_state(reply.values)
            return
        key = reply.unrecognized_key()
        if key is not None and key != "version" and key in self.plan.keys(group) and key not in self.unknown:
            self._drop_key(key)
            self._resend(self._question_main(group))
            return
        if len(group) > 1:  # one failing set must not cost the others: ask each set alone
            self.split = True
            for name in group:
                self._resend(self._question_main((name,)))
            return
        if group == ("core",) or not group:
            raise SourceError(reply.failure("GETINFO"))
        self.answers.fail(group[0])

    def _accounting_state(self, values: dict) -> None:
        """Whether accounting is on, from this poll's answer; when it was off at the last poll and is
        on now, the keys left out are asked at once (one more round trip, at that poll only)."""
        on = parse_bool(values.get("accounting/enabled")) == 1
        self.accounting_on = on
        if on:
            missing = [k for k in ACCOUNTING_DETAIL_KEYS if k not in values and k not in self.unknown]
            if missing:
                self._resend(("GETINFO " + " ".join(missing), self._on_accounting_details))

    def _on_accounting_details(self, reply: Reply) -> None:
        if reply.ok:
            self.answers.merge(reply.values, reply.counts)
            return
        key = reply.unrecognized_key()
        if key in ACCOUNTING_DETAIL_KEYS and key not in self.unknown:  # an old tor: without it from now on
            self._drop_key(key)
            self._accounting_state(self.answers.values)
            return
        self.answers.fail("accounting")

    def _drop_key(self, key: str) -> None:
        """A key this tor answered 552 Unrecognized for: not asked of it again (warned once)."""
        self.unknown |= {key}
        if key not in self.warned:
            self.warned.add(key)
            self.warn(f"tor does not know {clip(key, 80)}; polling it without it from now on")

    def _resend(self, question) -> None:
        command, handler = question
        self.pending.append(handler)
        self._send(command)

    def _on_reachability(self, reply: Reply) -> None:
        if reply.ok:
            self.answers.reach = reply.values
        else:
            self.answers.fail("relay")

    def _on_conf(self, reply: Reply) -> None:
        if not reply.ok:
            self.conf = None
            self.answers.fail("relay")
            return
        self.answers.conf = self.conf = reply.values
        self.conf_at = time.monotonic()
        nickname = (reply.values.get("Nickname") or "").strip()
        self.nickname = nickname if NICKNAME_RE.match(nickname) else "Unnamed"

    def _conf_changed(self) -> None:
        """tor announced a configuration change: the kept options are stale. During a poll that used
        them, GETCONF is asked now (tor answers the poll's questions after the change it announced)."""
        self.conf = None
        a = self.answers
        if self.state == POLLING and a is not None and a.conf_kept:
            a.conf, a.conf_kept = None, False
            self.pending.append(self._on_conf)
            self._send_bytes(_GETCONF)

    def _on_ns(self, reply: Reply) -> None:
        if reply.ok:
            self.ns = parse_ns(reply.values.get(f"ns/id/{self.fingerprint}"))
        elif reply.status in (551, 552):
            self.ns = (False, None, frozenset())
        else:
            self.answers.fail("relay")
            return
        self.ns_at = time.monotonic()

    def _finish_poll(self) -> None:
        a = self.answers
        a.kind, a.fingerprint, a.nickname, a.ns, a.unknown = (self.kind, self.fingerprint, self.nickname, self.ns,
                                                              self.unknown)
        a.memo = self.memo
        version = clean_version(a.values.get("version"))
        built = self.plan.build(a)  # raises SourceError when core is broken
        base = self._base_tags(version)
        time_ms = self.collected_ms or time.time_ns() // 1_000_000
        new = tuple.__new__  # Sample(...) without the NamedTuple constructor's extra call (the hot path)
        samples = [new(Sample, (m, self._with_extra(base, extra) if extra else base, fields, time_ms))
                   for m, fields, extra in built]
        self.state = READY
        self.last_poll = self.deadline - self.timeout
        self.answers = None  # the answers' text is not kept between polls
        self._done(samples, None)

    def base_tags(self) -> tuple:
        """The common tags of this tor as of its last answer (without version before the first)."""
        cache = self._tag_cache
        return cache[1] if cache is not None else make_tags(self.tag_policy.tags(self.host.name, ""))

    def _with_extra(self, base: tuple, extra: tuple) -> tuple:
        """base + extra tags (a relay's fingerprint and nickname) in canonical form, cached."""
        cached = self._extra_cache
        if cached is None or cached[0] is not base or cached[1] != extra:
            cached = self._extra_cache = (base, extra, make_tags(base + extra))
        return cached[2]

    def _base_tags(self, version: str) -> tuple:
        cache = self._tag_cache
        if cache is None or cache[0] != version:
            cache = self._tag_cache = (version, make_tags(self.tag_policy.tags(self.host.name, version)))
        return cache[1]

    # ------------------------------------------------------------------ I/O
    def _send(self, text: str) -> None:
        self._send_bytes((text + "\r\n").encode("utf-8"))

    def _send_bytes(self, data: bytes) -> None:
        """Send `data` or queue what does not fit. A send error (a kept connection tor reset since the
        last poll) raises SourceError: the caller (handle() or start()) fails the poll once it has
        unwound, and _fail then reconnects a kept connection, as after a read error."""
        if self.out:
            self.out += data
        else:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise SourceError(os_failure(exc)) from None
            self.out = data[sent:]
        self.loop.watch(self, read=True, write=bool(self.out))

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        self.out = self.out[sent:]
        if not self.out:
            self.loop.watch(self, read=True, write=False)

    def _read(self) -> None:
        try:
            if self._quickack:  # ACK at once: tor's Nagle would otherwise wait ~40 ms for our delayed ACK
                self.sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            if self.state == READY and not self.busy:  # tor hung up between polls (restarted?)
                self._close_socket()
                return
            raise SourceError(Failure(Reason.CLOSED, "tor closed the connection"))
        for reply in self.reader.feed(data):
            if reply.status >= 600:  # an asynchronous event (SETEVENTS): not an answer
                if not reply.message.startswith("CONN_BW"):  # CONF_CHANGED (or any other): ask GETCONF again
                    self._conf_changed()
                continue
            if not self.pending:
                raise SourceError(Failure(Reason.PROTOCOL, "tor sent a reply to no question"))
            self.pending.popleft()(reply)
            if self.sock is None:  # a handler failed the poll
                return
        if not self.pending and self.state == POLLING:
            if self.reader.idle:
                self._finish_poll()

    # ------------------------------------------------------------------ ending
    def _fail(self, failure: Failure, retry: bool = True) -> None:
        reused = self.state == POLLING and self.reused and not self.retried
        self._close_socket()
        if not self.busy:
            return
        if retry and reused and failure.reason in (Reason.CLOSED, Reason.REFUSED) \
                and time.monotonic() < self.deadline - 0.05:
            # the kept connection broke as we asked (tor restarted since the last poll): one new try
            self.retried, self.reused = True, False
            self.answers = Answers()
            self._connect()
            return
        self._done(None, failure)

    def _close_socket(self) -> None:
        self._drop_socket()
        self.reader = None
        self.out = b""
        self.pending.clear()
        if self.state != CLOSED:
            self._forget()
        self.state = CLOSED
