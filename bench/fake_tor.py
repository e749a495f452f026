#!/usr/bin/env python3
"""Simulated Tor control ports, MetricsPorts and an InfluxDB 2 write sink, in one asyncio process.

One process stands in for a fleet: it listens on several TCP ports on 127.0.0.1 and speaks
the part of the Tor control protocol (control-spec.txt) that tor2influxdb2, stem 1.8.2 and a
hand-written client use, answering as tor 0.4.9.11 does (formats checked against real tors of
the test suite's private network):

  PROTOCOLINFO [1]      -> 250-PROTOCOLINFO 1 / 250-AUTH METHODS=... / 250-VERSION Tor="..." / 250 OK
  AUTHENTICATE [arg]    -> 250 OK, or 515 (wrong password; connection closed, like tor)
  GETINFO k1 k2 ...     -> 250-k=v ... 250 OK; values with a line break as 250+k=\\r\\n...\\r\\n.\\r\\n;
                           an unknown key -> 552 Unrecognized key "k"; a key that does not apply
                           (fingerprint on a client) -> 551 Not running in server mode
  GETCONF k ...         -> 250-k=v ... (the option's value, tor's defaults), 250 k for an unset
                           __Option, 552 Unrecognized configuration key "k" for an unknown one
  SETEVENTS / SETCONF / RESETCONF / TAKEOWNERSHIP / SIGNAL -> 250 OK
  QUIT                  -> 250 closing connection, then close
  anything else         -> 510 Unrecognized command "X"
  before authentication, anything but PROTOCOLINFO/AUTHENTICATE/AUTHCHALLENGE/QUIT
                        -> 514 Authentication required. and close (like tor)

Latency models the network, not a slow tor: every batch of bytes that arrives is answered
--latency-ms after its arrival, so commands pipelined in one send cost one latency, and a
batch that arrives while an earlier one waits is not delayed behind it. Replies are written
like tor writes them: without TCP_NODELAY (Nagle on) and in pieces of 4048 bytes, the size of
tor's buffer chunks, one send() each (--no-tor-writes: one write, TCP_NODELAY on).

Each connection is its own simulated tor (a relay for a --relays share of connections, else a
client): counters that grow at every poll, --circuits/--streams lines of circuit-status and
stream-status, --guards entry guards, a 300-second bw-event-cache, accounting disabled.
Per connection it counts round trips (a batch of commands that arrives while nothing is
unanswered) and bytes in and out.

--metrics-body FILE adds --metrics-ports K HTTP ports serving that Prometheus text as tor's
MetricsPort does: HTTP/1.0 200 with Date, Content-Type and Content-Length, header and body in
separate writes, the connection left open for the client to close (tor 0.4.9 closes only after
an error: 404 for another path, 405 for another method, 400); --metrics-close closes after
every answer instead. Each answer waits --metrics-latency-ms.

The same loop runs a small HTTP/1.1 server (the "sink") standing in for InfluxDB 2:
POST /api/v2/write -> 204, counting requests and lines (gzip bodies are decompressed);
GET /ping -> 204, /health and /ready -> 200. GET /bench/stats returns every counter as JSON,
GET /bench/counters only the totals (cheap enough to ask every cycle).

Binds 127.0.0.1 only. Stops by itself after --max-seconds (default 1800), or on SIGTERM/SIGINT.

Standalone:  python bench/fake_tor.py --ports 10 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import collections
import email.utils
import gzip
import json
import os
import random
import resource
import signal
import socket
import statistics
import sys
import time
import zlib

LOOPBACK = "127.0.0.1"
TOR_VERSION = "0.4.9.11"
TOR_CHUNK = 4048   # bytes of one tor buffer chunk (4096 minus its header): one send() each
MAX_KEPT = 20000   # bound on every per-event list kept for /bench/stats
MAX_COMMAND_LINE = 1 << 20


# ----------------------------------------------------------------------------- stats

class Stats:
    def __init__(self, burst_gap: float):
        self.started = time.monotonic()
        self.connections_accepted = 0
        self.connections_accepted_hung = 0
        self.connections_open = 0
        self.connections_closed_by_client = 0
        self.accepted_per_port: collections.Counter = collections.Counter()
        self.kinds: collections.Counter = collections.Counter()
        self.commands: collections.Counter = collections.Counter()
        self.getinfo_questions: collections.Counter = collections.Counter()  # the keys of one GETINFO
        self.getconf_questions: collections.Counter = collections.Counter()
        self.unknown_keys: collections.Counter = collections.Counter()
        self.auth_ok = 0
        self.auth_failed = 0
        self.hung_bytes_received = 0
        # control traffic of the normal ports: round trips and application bytes
        self.round_trips = 0
        self.batches = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed_connections: collections.deque = collections.deque(maxlen=MAX_KEPT)
        self.open_connections: set = set()
        # MetricsPorts
        self.metrics_connections = 0
        self.metrics_scrapes = 0
        self.metrics_scrapes_per_port: collections.Counter = collections.Counter()
        self.metrics_other: collections.Counter = collections.Counter()
        self.metrics_bytes_out = 0
        # sink
        self.writes = 0
        self.write_lines_total = 0
        self.write_bytes_total = 0
        self.write_lines: list[int] = []
        self.write_bytes: list[int] = []
        self.write_times: list[float] = []
        self.write_query: collections.Counter = collections.Counter()
        self.write_encodings: collections.Counter = collections.Counter()
        self.last_write_sample: list[str] = []
        self.http_other: collections.Counter = collections.Counter()
        self.http_connections = 0
        # GETINFO bursts on normal ports: one burst ~ one poll cycle of the client
        self.burst_gap = burst_gap
        self.bursts: collections.deque = collections.deque(maxlen=MAX_KEPT)
        self._burst: dict | None = None

    def getinfo_received(self, t: float, n: int) -> None:
        b = self._burst
        if b is None or t - b["last"] > self.burst_gap:
            b = self._burst = {"start": t, "end": t, "last": t, "polls": 0}
            self.bursts.append(b)
        b["polls"] += n
        b["last"] = max(b["last"], t)

    def getinfo_answered(self, t: float) -> None:
        b = self._burst
        if b is not None:
            b["end"] = max(b["end"], t)
            b["last"] = max(b["last"], t)

    def counters(self) -> dict:
        """Totals only: cheap to build, asked by the bench at every cycle."""
        t = os.times()
        return {
            "now": time.monotonic(), "pid": os.getpid(), "cpu_s": t.user + t.system,
            "connections_accepted": self.connections_accepted,
            "connections_accepted_hung": self.connections_accepted_hung,
            "connections_open": self.connections_open,
            "kinds": dict(self.kinds),
            "commands": dict(self.commands),
            "round_trips": self.round_trips, "batches": self.batches,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "metrics_connections": self.metrics_connections, "metrics_scrapes": self.metrics_scrapes,
            "metrics_bytes_out": self.metrics_bytes_out,
            "writes": self.writes, "write_lines_total": self.write_lines_total,
            "write_bytes_total": self.write_bytes_total,
        }

    @staticmethod
    def _keys(questions: collections.Counter) -> dict:
        keys: collections.Counter = collections.Counter()
        for text, n in questions.items():
            for key in text.split():
                keys[key] += n
        return dict(keys)

    def per_connection(self) -> dict:
        rows = [c.summary() for c in self.open_connections] + list(self.closed_connections)

        def spread(key):
            values = [r[key] for r in rows]
            if not values:
                return None
            return {"min": min(values), "median": statistics.median(values), "max": max(values)}

        return {"count": len(rows), "round_trips": spread("round_trips"), "bytes_in": spread("bytes_in"),
                "bytes_out": spread("bytes_out"), "commands": spread("commands"),
                "rows": rows[:MAX_KEPT]}

    def as_dict(self) -> dict:
        out = self.counters()
        out.update({
            "uptime_s": time.monotonic() - self.started,
            "connections_closed_by_client": self.connections_closed_by_client,
            "accepted_per_port": {str(k): v for k, v in self.accepted_per_port.items()},
            "getinfo_keys": self._keys(self.getinfo_questions),
            "getconf_keys": self._keys(self.getconf_questions),
            "unknown_keys": dict(self.unknown_keys),
            "auth_ok": self.auth_ok,
            "auth_failed": self.auth_failed,
            "hung_bytes_received": self.hung_bytes_received,
            "per_connection": self.per_connection(),
            "metrics": {"scrapes_per_port": {str(k): v for k, v in self.metrics_scrapes_per_port.items()},
                        "other_requests": dict(self.metrics_other)},
            "sink": {
                "writes": self.writes,
                "write_lines": self.write_lines,
                "write_bytes": self.write_bytes,
                "write_times": self.write_times,
                "write_query": dict(self.write_query),
                "write_encodings": dict(self.write_encodings),
                "last_write_sample": self.last_write_sample,
                "other_requests": dict(self.http_other),
                "http_connections": self.http_connections,
            },
            "bursts": [{"start": b["start"], "end": b["end"], "polls": b["polls"]} for b in self.bursts],
        })
        return out


# ------------------------------------------------------------------ simulated tor

class TorError(Exception):
    """A GETINFO/GETCONF key tor refuses: the whole command gets this status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _fingerprint(rng: random.Random) -> str:
    return "%040X" % rng.getrandbits(160)


def _b64_id(rng: random.Random) -> str:
    return binascii.b2a_base64(rng.getrandbits(160).to_bytes(20, "big"), newline=False).decode().rstrip("=")


# 64 different bw-event-cache answers (300 "read,written" pairs each), shared by every tor:
# building one per poll would cost the fake more than the daemon spends parsing it.
_BW_RNG = random.Random(4049)
BW_EVENT_CACHES = tuple(" ".join(f"{_BW_RNG.randrange(0, 3_000_000)},{_BW_RNG.randrange(0, 3_000_000)}"
                                 for _ in range(300)) for _ in range(64))
NS_PROTOCOLS = ("Conflux=1 Cons=1-2 Desc=1-2 DirCache=2 FlowCtrl=1-2 HSDir=2 HSIntro=4-5 HSRend=1-2 "
                "Link=1-5 LinkAuth=1,3 Microdesc=1-2 Padding=2 Relay=1-4")
GUARD_STATES = ("up", "up", "never-connected", "down", "never-connected", "unusable")
CLIENT_CONF = {"Nickname": "Unnamed", "BandwidthRate": "1073741824", "BandwidthBurst": "1073741824",
               "RelayBandwidthRate": "0", "RelayBandwidthBurst": "0", "MaxAdvertisedBandwidth": "1073741824",
               "BridgeRelay": "0", "ORPort": None}
CONF_NAMES = {k.lower(): k for k in CLIENT_CONF}


SIMPLE_VALUES = {  # GETINFO answers that are the same on every simulated tor
    "version": TOR_VERSION,
    "status/bootstrap-phase": 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"',
    "status/circuit-established": "1", "network-liveness": "up", "dormant": "0",
    "status/enough-dir-info": "1", "status/version/current": "recommended",
    "process/descriptor-limit": "65504",
    "accounting/enabled": "0", "accounting/bytes": "0 0", "accounting/bytes-left": "0 0",
    "accounting/interval-end": "1970-01-01 00:00:00", "accounting/hibernating": "awake",
    "orconn-status": "",
}
NICKS = ("relayAlpha", "bravoExit", "charlieGuard", "deltaMiddle", "echoNode",
         "foxtrot", "golfRelay", "hotelTor", "indiaOnion")
POOL_SIZE = 64


class Pools:
    """POOL_SIZE variants of the long texts (circuit-status, stream-status, entry-guards), made
    once and shared: building them per connection would cost the fake more CPU than the daemon
    spends on a connection, on the same cores."""

    def __init__(self, circuits: int, streams: int, guards: int, seed: int = 4050):
        rng = random.Random(seed)
        self.circuit_status, self.stream_status, self.entry_guards = [], [], []
        for _ in range(POOL_SIZE):
            relays = [f"${_fingerprint(rng)}~{rng.choice(NICKS)}" for _ in range(12)]
            lines = []
            for i in range(circuits):
                cid = i + 1
                path = ",".join(rng.sample(relays, 3))
                kind = i % 5
                created = f"TIME_CREATED=2026-11-22T02:00:{cid % 60:02d}.{rng.randrange(10**6):06d}"
                if kind == 3:
                    lines.append(f"{cid} EXTENDED {path} BUILD_FLAGS=IS_INTERNAL,NEED_CAPACITY "
                                 f"PURPOSE=HS_SERVICE_INTRO HS_STATE=HSSI_CONNECTING {created}")
                elif kind == 4:
                    lines.append(f"{cid} BUILT {path} BUILD_FLAGS=IS_INTERNAL,NEED_CAPACITY,NEED_UPTIME "
                                 f"PURPOSE=HS_CLIENT_REND HS_STATE=HSCR_JOINED {created}")
                else:
                    lines.append(f"{cid} BUILT {path} BUILD_FLAGS=NEED_CAPACITY PURPOSE=GENERAL {created}")
            self.circuit_status.append("\n".join(lines) + ("\n" if lines else ""))
            slines = []
            for i in range(streams):
                status = ("SUCCEEDED", "SUCCEEDED", "NEW", "SENTCONNECT")[i % 4]
                circ = (i % max(circuits, 1)) + 1 if status != "NEW" else 0
                slines.append(f"{i + 1} {status} {circ} 127.0.0.1:{80 + i} "
                              f"SOURCE_ADDR=127.0.0.1:{5000 + i} PURPOSE=USER")
            self.stream_status.append("\n".join(slines) + ("\n" if slines else ""))
            glines = []
            for i in range(guards):
                state = GUARD_STATES[i % len(GUARD_STATES)]
                when = " 2026-11-22 01:02:03" if state in ("down", "unusable") else ""
                glines.append(f"{rng.choice(relays)} {state}{when}")
            self.entry_guards.append("\n".join(glines) + ("\n" if glines else ""))


class SimulatedTor:
    """What one simulated tor answers: a relay or a client."""

    def __init__(self, seed: int, pools: Pools, relay: bool):
        rng = random.Random(seed)
        self.rng = rng
        self.relay = relay
        self.kind = "relay" if relay else "client"
        self.read = rng.randrange(10**8, 10**10)
        self.written = rng.randrange(10**8, 10**10)
        self.ntor_req = rng.randrange(0, 10**5) if relay else 0
        self.ntor_ok = max(0, self.ntor_req - rng.randrange(0, 10))
        self.tap_req = 0
        self.tap_ok = 0
        self.started = time.monotonic() - rng.randrange(60, 10**6)
        self.pid = rng.randrange(100, 60000)
        self.polls = 0
        self.bw_offset = rng.randrange(len(BW_EVENT_CACHES))
        variant = rng.randrange(POOL_SIZE)
        self.circuit_status = pools.circuit_status[variant]
        self.stream_status = pools.stream_status[variant]
        self.entry_guards = "" if relay else pools.entry_guards[variant]  # tor lists no entry guards on a relay
        if relay:
            self.nickname = f"{rng.choice(NICKS)}{rng.randrange(1000)}"
            self.fingerprint = _fingerprint(rng)
            ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            self.ns_entry = (f"r {self.nickname} {_b64_id(rng)} {_b64_id(rng)} 2026-11-22 01:00:00 {ip} 9001 0\n"
                             "s Exit Fast Guard Running Stable V2Dir Valid\n"
                             f"v Tor {TOR_VERSION}\n"
                             f"pr {NS_PROTOCOLS}\n"
                             f"w Bandwidth={rng.randrange(20, 90000)}\n"
                             "p reject 1-65535\n")
            self.conf = {"Nickname": self.nickname, "BandwidthRate": "1073741824", "BandwidthBurst": "1073741824",
                         "RelayBandwidthRate": "0", "RelayBandwidthBurst": "0",
                         "MaxAdvertisedBandwidth": "1073741824", "BridgeRelay": "0", "ORPort": "9001"}
        else:
            self.nickname = self.fingerprint = self.ns_entry = None
            self.conf = CLIENT_CONF
        self.conf_names = CONF_NAMES

    def advance(self) -> None:
        """One poll later: the counters grow."""
        r = self.rng
        self.polls += 1
        self.read += r.randrange(10**4, 2 * 10**6)
        self.written += r.randrange(10**4, 2 * 10**6)
        if self.relay:
            n = r.randrange(0, 20)
            self.ntor_req += n
            self.ntor_ok += n

    def value(self, key: str) -> str:
        """GETINFO key -> value (may hold line breaks); TorError for a key tor refuses."""
        k = key.lower()
        simple = SIMPLE_VALUES.get(k)
        if simple is not None:
            return simple
        if k == "traffic/read":
            return str(self.read)
        if k == "traffic/written":
            return str(self.written)
        if k == "stats/ntor/requested":
            return str(self.ntor_req)
        if k == "stats/ntor/assigned":
            return str(self.ntor_ok)
        if k == "stats/tap/requested":
            return str(self.tap_req)
        if k == "stats/tap/assigned":
            return str(self.tap_ok)
        if k == "circuit-status":
            return self.circuit_status
        if k == "stream-status":
            return self.stream_status
        if k == "uptime":
            return str(int(time.monotonic() - self.started))
        if k == "process/pid":
            return str(self.pid)
        if k == "entry-guards":
            return self.entry_guards
        if k == "bw-event-cache":
            return BW_EVENT_CACHES[(self.bw_offset + self.polls) % len(BW_EVENT_CACHES)]
        if k in ("status/reachability-succeeded/or", "status/reachability-succeeded/dir"):
            return "1" if self.relay else "0"
        if k == "fingerprint":
            if not self.relay:
                raise TorError(551, "Not running in server mode")
            return self.fingerprint
        if k.startswith("ns/id/"):
            if not self.relay:  # a client has only the microdesc consensus: tor does not know the key
                raise TorError(552, f'Unrecognized key "{key}"')
            return self.ns_entry if key[6:].upper().lstrip("$") == self.fingerprint else ""
        raise TorError(552, f'Unrecognized key "{key}"')

    def getconf(self, keys: list[str]) -> str:
        lines = []
        for key in keys:
            name = self.conf_names.get(key.lower())
            if name is not None:
                value = self.conf[name]
                lines.append(name if value is None else f"{name}={value}")
            elif key.startswith("__"):
                lines.append(key)  # an unset hidden option: tor answers the bare name
            else:
                raise TorError(552, f'Unrecognized configuration key "{key}"')
        if not lines:
            return "250 OK\r\n"
        return "".join(f"250-{ln}\r\n" for ln in lines[:-1]) + f"250 {lines[-1]}\r\n"


_BLOCKS: dict[str, str] = {}  # multi-line value -> its data block lines (CRLF, dot-escaped)


def getinfo_reply(tor: SimulatedTor, keys: list[str], stats: Stats) -> str:
    out = []
    for key in keys:
        try:
            v = tor.value(key)
        except TorError as exc:
            if exc.status == 552:
                stats.unknown_keys[key] += 1
            return f"{exc.status} {exc.message}\r\n"
        if "\n" in v:
            body = _BLOCKS.get(v)
            if body is None:
                body = v[:-1] if v.endswith("\n") else v
                body = "\r\n".join("." + ln if ln.startswith(".") else ln for ln in body.split("\n"))
                if len(_BLOCKS) < 4096:  # the shared texts; str caches its hash, so a lookup is cheap
                    _BLOCKS[v] = body
            out.append(f"250+{key}=\r\n{body}\r\n.\r\n")
        else:
            out.append(f"250-{key}={v}\r\n")
    out.append("250 OK\r\n")
    return "".join(out)


def _decode_password(arg: str) -> str | None:
    """AUTHENTICATE argument -> password; None if malformed (tor: 551)."""
    arg = arg.strip()
    if not arg:
        return ""
    if arg.startswith('"'):
        out, i = [], 1
        while i < len(arg):
            c = arg[i]
            if c == "\\" and i + 1 < len(arg):
                out.append(arg[i + 1])
                i += 2
                continue
            if c == '"':
                return "".join(out)
            out.append(c)
            i += 1
        return None
    try:
        return binascii.unhexlify(arg).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


PRE_AUTH_OK = {"PROTOCOLINFO", "AUTHENTICATE", "AUTHCHALLENGE", "QUIT"}
OK_COMMANDS = {"SETEVENTS", "SETCONF", "RESETCONF", "TAKEOWNERSHIP", "SIGNAL", "DROPGUARDS", "DROPOWNERSHIP"}


class Fleet:
    """What every control connection shares: the options, the stats, the connection counter."""

    def __init__(self, args, stats: Stats):
        self.args = args
        self.stats = stats
        self.latency = args.latency_ms / 1000.0
        self.auth_methods = "NULL" if args.auth == "null" else "HASHEDPASSWORD"
        self.password = args.password
        self.conn_seq = 0
        self.pools = Pools(args.circuits, args.streams, args.guards)
        self.protocolinfo = ("250-PROTOCOLINFO 1\r\n"
                             f"250-AUTH METHODS={self.auth_methods}\r\n"
                             f'250-VERSION Tor="{TOR_VERSION}"\r\n'
                             "250 OK\r\n")

    def next_is_relay(self) -> bool:
        """Exactly a --relays share of connections, spread evenly (1 in 2 for 0.5)."""
        self.conn_seq += 1
        f = self.args.relays
        return int(self.conn_seq * f) > int((self.conn_seq - 1) * f)


class ControlConnection(asyncio.Protocol):
    """One control connection: one simulated tor. `hung` ports never answer (or only until
    authenticated, --hang-mode after-auth)."""

    def __init__(self, fleet: Fleet, port: int, hung: bool):
        self.fleet, self.port, self.hung = fleet, port, hung
        self.stats = fleet.stats
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.body_of: str | None = None  # a "+COMMAND" whose data lines are being swallowed
        self.authed = False
        self.closing = False
        self.unanswered = 0
        self.queue: collections.deque = collections.deque()  # (due, data, commands, getinfos, close)
        self.timer: asyncio.TimerHandle | None = None
        self.round_trips = self.bytes_in = self.bytes_out = self.n_commands = 0
        self.tor: SimulatedTor | None = None
        self.transport: asyncio.Transport | None = None

    # -- asyncio
    def connection_made(self, transport) -> None:
        self.transport = transport
        st = self.stats
        st.connections_accepted += 1
        st.accepted_per_port[self.port] += 1
        st.connections_open += 1
        if self.hung:
            st.connections_accepted_hung += 1
        else:
            relay = self.fleet.next_is_relay()
            self.tor = SimulatedTor(hash((self.port, self.fleet.conn_seq)) & 0xFFFFFFFF, self.fleet.pools, relay)
            st.kinds[self.tor.kind] += 1
            st.open_connections.add(self)
        if self.fleet.args.tor_writes:
            sock = transport.get_extra_info("socket")
            try:  # tor sets no TCP_NODELAY on control connections (asyncio does by default)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            except (OSError, AttributeError):
                pass

    def connection_lost(self, exc) -> None:
        st = self.stats
        st.connections_open -= 1
        if not self.closing:
            st.connections_closed_by_client += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self in st.open_connections:
            st.open_connections.discard(self)
            st.closed_connections.append(self.summary())
        self.closing = True

    def summary(self) -> dict:
        return {"port": self.port, "kind": self.tor.kind if self.tor else "hung", "round_trips": self.round_trips,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "commands": self.n_commands}

    def data_received(self, data: bytes) -> None:
        st = self.stats
        if self.hung:
            st.hung_bytes_received += len(data)
        else:
            st.bytes_in += len(data)
        self.bytes_in += len(data)
        if self.closing:
            return
        self.buf += data
        commands = []
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                break
            raw, self.buf = self.buf[:end], self.buf[end + 1:]
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if self.body_of is not None:  # the data lines of a multi-line command
                if line == ".":
                    commands.append(self.body_of)
                    self.body_of = None
                continue
            if not line:
                continue
            if line.startswith("+"):
                self.body_of = line[1:]
                continue
            commands.append(line)
        if len(self.buf) > MAX_COMMAND_LINE:
            self.transport.close()
            return
        if not commands:
            return
        if self.hung and (self.fleet.args.hang_mode != "after-auth" or self.authed):
            return  # swallowed, never answered
        self.answer_batch(commands)

    # -- answering
    def answer_batch(self, commands: list[str]) -> None:
        st = self.stats
        now = self.loop.time()
        if not self.hung:
            st.batches += 1
            if self.unanswered == 0:
                st.round_trips += 1
                self.round_trips += 1
        parts, close, getinfos, answered = [], False, 0, 0
        for line in commands:
            cmd, _, rest = line.partition(" ")
            cmd = cmd.upper()
            st.commands[cmd] += 1
            self.n_commands += 1
            answered += 1
            if cmd == "GETINFO":
                getinfos += 1
            reply, close = self.answer(cmd, rest)
            if reply is not None:
                parts.append(reply)
            if close:
                self.closing = True
                break
        if getinfos and not self.hung:
            st.getinfo_received(time.monotonic(), getinfos)
        self.unanswered += answered
        self.queue.append((now + self.fleet.latency, "".join(parts).encode(), answered, getinfos, close))
        if self.fleet.latency <= 0:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def answer(self, cmd: str, rest: str) -> tuple[str | None, bool]:
        """(reply, close the connection after it) for one command."""
        st, fleet = self.stats, self.fleet
        if self.hung and self.authed:
            return None, False
        if not self.authed and cmd not in PRE_AUTH_OK:
            return "514 Authentication required.\r\n", True
        if cmd == "PROTOCOLINFO":
            return fleet.protocolinfo, False
        if cmd == "AUTHENTICATE":
            if self.hung or fleet.auth_methods == "NULL":
                self.authed = True
                st.auth_ok += 1
                return "250 OK\r\n", False
            pw = _decode_password(rest)
            if pw is None:
                st.auth_failed += 1
                return ("551 Invalid hexadecimal encoding.  Maybe you tried a plain text password?  "
                        "If so, the standard requires that you put it in double quotes.\r\n"), True
            if pw != fleet.password:
                st.auth_failed += 1
                return ("515 Authentication failed: Password did not match HashedControlPassword value "
                        "from configuration\r\n"), True
            self.authed = True
            st.auth_ok += 1
            return "250 OK\r\n", False
        if cmd == "AUTHCHALLENGE":
            return "513 AUTHCHALLENGE only supports SAFECOOKIE authentication\r\n", False
        if self.hung:
            return "250 OK\r\n", False
        if cmd == "GETINFO":
            st.getinfo_questions[rest] += 1
            if "traffic/read" in rest or "version" in rest:  # a poll, not a probe
                self.tor.advance()
            return getinfo_reply(self.tor, rest.split(), st), False
        if cmd == "GETCONF":
            keys = rest.split()
            st.getconf_questions[rest] += 1
            try:
                return self.tor.getconf(keys), False
            except TorError as exc:
                st.unknown_keys["GETCONF " + exc.message.split('"')[1]] += 1
                return f"{exc.status} {exc.message}\r\n", False
        if cmd in OK_COMMANDS:
            return "250 OK\r\n", False
        if cmd == "QUIT":
            return "250 closing connection\r\n", True
        return f'510 Unrecognized command "{cmd}"\r\n', False

    def flush(self) -> None:
        self.timer = None
        if self.transport is None or self.transport.is_closing():
            self.queue.clear()
            return
        now = self.loop.time()
        st = self.stats
        while self.queue and self.queue[0][0] <= now + 0.0005:
            _, data, answered, getinfos, close = self.queue.popleft()
            self.write(data)
            self.unanswered -= answered
            if getinfos and not self.hung:
                st.getinfo_answered(time.monotonic())
            if close:
                self.queue.clear()
                self.transport.close()
                return
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self.hung:
            self.stats.bytes_out += len(data)
        self.bytes_out += len(data)
        if self.fleet.args.tor_writes and len(data) > TOR_CHUNK:
            for i in range(0, len(data), TOR_CHUNK):  # one send() per tor buffer chunk
                self.transport.write(data[i:i + TOR_CHUNK])
        else:
            self.transport.write(data)


# ------------------------------------------------------------------ MetricsPort

class MetricsConnection(asyncio.Protocol):
    """tor's MetricsPort (src/feature/metrics/metrics.c): a GET /metrics gets the page; the
    connection stays open for the client to close (or another request); errors close it."""

    MAX_HEADERS = 1024  # tor: connection_fetch_from_buf_http(..., 1024, ...)

    def __init__(self, server: "MetricsServer", port: int):
        self.server, self.port = server, port
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.transport = None
        self.closing = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.stats.metrics_connections += 1
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        except (OSError, AttributeError):
            pass

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buf += data
        while not self.closing:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > self.MAX_HEADERS:
                    self.respond_later(b"HTTP/1.0 400 Bad Request\r\n\r\n", close=True, what="400")
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2:
                self.respond_later(b"HTTP/1.0 400 Bad Request\r\n\r\n", close=True, what="400")
            elif parts[0] != b"GET":
                self.respond_later(b"HTTP/1.0 405 Method Not Allowed\r\n\r\n", close=True, what="405")
            elif parts[1] != b"/metrics":
                self.respond_later(b"HTTP/1.0 404 Not Found\r\n\r\n", close=True, what="404")
            else:
                self.respond_later(None, close=self.server.close_after, what="200")

    def respond_later(self, data: bytes | None, close: bool, what: str) -> None:
        if close:
            self.closing = True
        if self.server.latency > 0:
            self.loop.call_later(self.server.latency, self.respond, data, close, what)
        else:
            self.respond(data, close, what)

    def respond(self, data: bytes | None, close: bool, what: str) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        st = self.server.stats
        if data is None:
            body = self.server.body
            head = (f"HTTP/1.0 200 OK\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
                    f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            self.transport.write(head)  # tor adds the header and the body as two buffers
            for i in range(0, len(body), TOR_CHUNK):
                self.transport.write(body[i:i + TOR_CHUNK])
            st.metrics_scrapes += 1
            st.metrics_scrapes_per_port[self.port] += 1
            st.metrics_bytes_out += len(head) + len(body)
        else:
            st.metrics_other[what] += 1
            self.transport.write(data)
            st.metrics_bytes_out += len(data)
        if close:
            self.transport.close()


class MetricsServer:
    def __init__(self, stats: Stats, body: bytes, latency: float, close_after: bool):
        self.stats, self.body, self.latency, self.close_after = stats, body, latency, close_after


# ------------------------------------------------------------------------- sink

class Sink:
    """Minimal HTTP/1.1 server standing in for InfluxDB 2 (keep-alive, chunked, gzip)."""

    def __init__(self, stats: Stats, write_status: int):
        self.stats = stats
        self.write_status = write_status

    @staticmethod
    def _response(code: int, reason: str, body: bytes = b"", ctype: str = "application/json",
                  extra: str = "") -> bytes:
        head = f"HTTP/1.1 {code} {reason}\r\n{extra}"
        if code == 204:
            return (head + "\r\n").encode()
        head += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        st = self.stats
        st.http_connections += 1
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                if not request_line.strip():
                    continue
                parts = request_line.decode("latin-1").split()
                if len(parts) < 2:
                    writer.write(self._response(400, "Bad Request"))
                    return
                method, target = parts[0].upper(), parts[1]
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = b""
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        chunks.append(await reader.readexactly(size))
                        await reader.readline()
                    body = b"".join(chunks)
                elif "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                path, _, query = target.partition("?")
                resp = self.route(method, path, query, headers, body)
                writer.write(resp)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass

    def route(self, method, path, query, headers, body) -> bytes:
        st = self.stats
        if method == "POST" and path == "/api/v2/write":
            t = time.monotonic()
            enc = headers.get("content-encoding", "identity").lower()
            st.write_encodings[enc] += 1
            if enc == "gzip":
                body = gzip.decompress(body)
            elif enc == "deflate":
                body = zlib.decompress(body)
            lines = [ln for ln in body.split(b"\n") if ln.strip() and not ln.startswith(b"#")]
            st.writes += 1
            st.write_lines_total += len(lines)
            st.write_bytes_total += len(body)
            if len(st.write_lines) < MAX_KEPT:
                st.write_lines.append(len(lines))
                st.write_bytes.append(len(body))
                st.write_times.append(t)
            st.write_query[query] += 1
            st.last_write_sample = [ln.decode("utf-8", "replace")[:300] for ln in lines[:3]]
            if self.write_status == 204:
                return self._response(204, "No Content")
            return self._response(self.write_status, "Error",
                                  b'{"code":"internal error","message":"bench sink told to fail"}')
        if method == "GET" and path == "/bench/stats":
            return self._response(200, "OK", json.dumps(st.as_dict()).encode())
        if method == "GET" and path == "/bench/counters":
            return self._response(200, "OK", json.dumps(st.counters()).encode())
        st.http_other[f"{method} {path}"] += 1
        if path == "/ping":
            return self._response(204, "No Content", extra="X-Influxdb-Version: v2.7.0\r\n")
        if path == "/health":
            return self._response(200, "OK", b'{"name":"influxdb","message":"ready for queries and '
                                             b'writes","status":"pass","version":"v2.7.0"}')
        if path == "/ready":
            return self._response(200, "OK", b'{"status":"ready","started":"2026-11-22T02:00:00Z"}')
        return self._response(404, "Not Found",
                              b'{"code":"not found","message":"path not found"}')


# ------------------------------------------------------------------------- main

def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


async def amain(args) -> None:
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("fake_tor binds loopback only")
    _raise_nofile()
    loop = asyncio.get_running_loop()
    stats = Stats(args.burst_gap)
    fleet = Fleet(args, stats)
    servers, ports, hung_ports, metrics_ports = [], [], [], []
    for i in range(args.ports + args.hung_ports):
        hung = i >= args.ports
        where: dict = {}  # the port, known once the server is listening (before any connection)
        srv = await loop.create_server(lambda hung=hung, where=where: ControlConnection(fleet, where["port"], hung),
                                       args.host, 0, backlog=4096)
        port = where["port"] = srv.sockets[0].getsockname()[1]
        (hung_ports if hung else ports).append(port)
        servers.append(srv)
    if args.metrics_body:
        with open(args.metrics_body, "rb") as f:
            body = f.read()
        mserver = MetricsServer(stats, body, args.metrics_latency_ms / 1000.0 if args.metrics_latency_ms is not None
                                else args.latency_ms / 1000.0, args.metrics_close)
        for _ in range(args.metrics_ports):
            where = {}
            srv = await loop.create_server(lambda where=where: MetricsConnection(mserver, where["port"]), args.host, 0,
                                           backlog=4096)
            port = where["port"] = srv.sockets[0].getsockname()[1]
            metrics_ports.append(port)
            servers.append(srv)
    sink_port = None
    if not args.no_sink:
        sink = Sink(stats, args.sink_status)
        srv = await asyncio.start_server(sink.handle, args.host, args.sink_port, backlog=1024,
                                         limit=1 << 24)
        sink_port = srv.sockets[0].getsockname()[1]
        servers.append(srv)

    info = {"pid": os.getpid(), "host": args.host, "ports": ports, "hung_ports": hung_ports,
            "metrics_ports": metrics_ports, "sink_port": sink_port, "latency_ms": args.latency_ms,
            "metrics_latency_ms": args.metrics_latency_ms if args.metrics_latency_ms is not None else args.latency_ms,
            "auth": args.auth, "password": args.password if args.auth == "password" else None,
            "hang_mode": args.hang_mode, "relays": args.relays, "tor_writes": args.tor_writes}
    if args.json:
        print(json.dumps(info), flush=True)
    else:
        print(f"fake tor pid {os.getpid()}: {len(ports)} control port(s) on {args.host}, "
              f"latency {args.latency_ms} ms, auth {info['auth']}, relays {args.relays:g}"
              + (f" (password {args.password!r})" if args.auth == "password" else ""))
        print("ports: " + ",".join(map(str, ports)))
        if hung_ports:
            print(f"hung ports ({args.hang_mode}): " + ",".join(map(str, hung_ports)))
        if metrics_ports:
            print("metrics ports: " + ",".join(map(str, metrics_ports)))
        if sink_port:
            print(f"sink: http://{args.host}:{sink_port}  (POST /api/v2/write, GET /bench/stats)")
        example = ",".join(f"{args.host}:{p}:{args.password}:tor{i}" if args.auth == "password"
                           else f"{args.host}:{p}:tor{i}" for i, p in enumerate(ports[:3]))
        print(f"e.g. TOR_HOSTS={example}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except asyncio.TimeoutError:
        print(f"fake tor: --max-seconds {args.max_seconds} reached, stopping", file=sys.stderr)
    for srv in servers:
        srv.close()
    if args.stats_on_exit:
        print(json.dumps(stats.as_dict()), file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ports", type=int, default=10, help="number of control ports (default 10)")
    p.add_argument("--latency-ms", type=float, default=20.0,
                   help="network delay: every batch of commands is answered this long after it arrived (default 20)")
    p.add_argument("--auth", choices=("password", "null"), default="password",
                   help="PROTOCOLINFO auth method: HASHEDPASSWORD or NULL (default password)")
    p.add_argument("--password", default="benchpw", help="control password (default benchpw)")
    p.add_argument("--relays", type=float, default=0.0,
                   help="share of the simulated tors that are relays, 0 to 1 (default 0: all clients)")
    p.add_argument("--circuits", type=int, default=5, help="lines of circuit-status (default 5)")
    p.add_argument("--streams", type=int, default=3, help="lines of stream-status (default 3)")
    p.add_argument("--guards", type=int, default=3, help="lines of entry-guards of a client (default 3)")
    p.add_argument("--no-tor-writes", dest="tor_writes", action="store_false",
                   help="write each reply at once with TCP_NODELAY (asyncio's default) instead of like tor "
                        "(Nagle on, 4048-byte pieces)")
    p.add_argument("--hung-ports", type=int, default=0,
                   help="extra ports that accept and never answer (default 0)")
    p.add_argument("--hang-mode", choices=("never", "after-auth"), default="never",
                   help="hung ports: never answer at all, or only after authentication")
    p.add_argument("--metrics-body", metavar="FILE",
                   help="serve this Prometheus text on --metrics-ports MetricsPorts (as tor does)")
    p.add_argument("--metrics-ports", type=int, default=1, help="number of MetricsPorts (default 1)")
    p.add_argument("--metrics-latency-ms", type=float, default=None,
                   help="delay of every MetricsPort answer (default: --latency-ms)")
    p.add_argument("--metrics-close", action="store_true",
                   help="close a MetricsPort connection after every answer (tor 0.4.9 keeps it open)")
    p.add_argument("--host", default=LOOPBACK, help="bind address (loopback only)")
    p.add_argument("--no-sink", action="store_true", help="do not run the HTTP write sink")
    p.add_argument("--sink-port", type=int, default=0, help="sink port (default: any free)")
    p.add_argument("--sink-status", type=int, default=204,
                   help="HTTP status the sink answers writes with (default 204)")
    p.add_argument("--burst-gap", type=float, default=0.5,
                   help="idle seconds that separate two GETINFO bursts (default 0.5)")
    p.add_argument("--max-seconds", type=float, default=1800,
                   help="stop by itself after this long (default 1800)")
    p.add_argument("--json", action="store_true", help="print one JSON line with the ports")
    p.add_argument("--stats-on-exit", action="store_true", help="print stats JSON to stderr on exit")
    args = p.parse_args(argv)
    if not 0 <= args.relays <= 1:
        p.error("--relays must be from 0 to 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
