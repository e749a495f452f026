#!/usr/bin/env python3
"""Simulated Tor control ports and an InfluxDB 2 write sink, in one asyncio process.

One process stands in for a fleet: it listens on several TCP ports on 127.0.0.1
and speaks enough of the Tor control protocol (control-spec.txt) for stem 1.8.2's
client side and for a hand-written client:

  PROTOCOLINFO [1]      -> 250-PROTOCOLINFO 1 / 250-AUTH METHODS=... / 250-VERSION Tor="..." / 250 OK
  AUTHENTICATE [arg]    -> 250 OK, or 515 (wrong password; connection closed, like tor)
                           arg: "quoted string" (\\" and \\\\ escapes) or hex
  GETINFO k1 k2 ...     -> 250-k=v ... 250 OK; multi-line values as 250+k=\\r\\n...\\r\\n.\\r\\n;
                           an unknown key -> 552 Unrecognized key "k" (whole request fails)
  GETCONF k ...         -> 250 k (no value; what tor answers for __OwningControllerProcess)
  SETEVENTS / SETCONF / RESETCONF / TAKEOWNERSHIP / SIGNAL -> 250 OK
  QUIT                  -> 250 closing connection, then close
  anything else         -> 510 Unrecognized command "X"
  before authentication, anything but PROTOCOLINFO/AUTHENTICATE/AUTHCHALLENGE/QUIT
                        -> 514 Authentication required. and close (like tor)

Every reply is delayed by --latency-ms with asyncio.sleep (never blocking the
loop). Each connection has its own counters (traffic/read, traffic/written,
stats/ntor/...), which grow on every GETINFO, and circuit-status/stream-status
return --circuits/--streams lines in tor's line format, so a client does
realistic parsing work. Many TOR_HOSTS entries can share one port: each entry
is its own connection and so its own simulated tor.

--hung-ports K adds K more ports that accept connections and never answer
(--hang-mode never), or answer until authenticated and then never answer
GETINFO (--hang-mode after-auth).

The same loop runs a tiny HTTP/1.1 server (the "sink") standing in for
InfluxDB 2: POST /api/v2/write -> 204, counting requests and line-protocol
lines per request (gzip bodies are decompressed); GET /ping -> 204,
GET /health and /ready -> 200. GET /bench/stats returns every counter as JSON
(connections accepted, commands per type, GETINFO keys, writes, and "bursts":
the GETINFO activity on the normal ports grouped into poll cycles).

Binds 127.0.0.1 only. Stops by itself after --max-seconds (default 1800), or
on SIGTERM/SIGINT.

Standalone:  python bench/fake_tor.py --ports 10 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import collections
import contextlib
import gzip
import json
import os
import random
import resource
import signal
import sys
import time
import zlib

LOOPBACK = "127.0.0.1"
TOR_VERSION = "0.4.9.11"
MAX_KEPT = 20000  # bound on every per-event list kept for /bench/stats


# ----------------------------------------------------------------------------- stats

class Stats:
    def __init__(self, burst_gap: float):
        self.started = time.monotonic()
        self.connections_accepted = 0
        self.connections_accepted_hung = 0
        self.connections_open = 0
        self.connections_closed_by_client = 0
        self.accepted_per_port: collections.Counter = collections.Counter()
        self.commands: collections.Counter = collections.Counter()
        self.getinfo_keys: collections.Counter = collections.Counter()
        self.unknown_keys: collections.Counter = collections.Counter()
        self.auth_ok = 0
        self.auth_failed = 0
        self.hung_bytes_received = 0
        # sink
        self.writes = 0
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

    def getinfo_received(self, t: float) -> None:
        b = self._burst
        if b is None or t - b["last"] > self.burst_gap:
            b = self._burst = {"start": t, "end": t, "last": t, "polls": 0}
            self.bursts.append(b)
        b["polls"] += 1
        b["last"] = max(b["last"], t)

    def getinfo_answered(self, t: float) -> None:
        b = self._burst
        if b is not None:
            b["end"] = max(b["end"], t)
            b["last"] = max(b["last"], t)

    def as_dict(self) -> dict:
        t = os.times()
        return {
            "now": time.monotonic(),
            "uptime_s": time.monotonic() - self.started,
            "pid": os.getpid(),
            "cpu_s": t.user + t.system,
            "connections_accepted": self.connections_accepted,
            "connections_accepted_hung": self.connections_accepted_hung,
            "connections_open": self.connections_open,
            "connections_closed_by_client": self.connections_closed_by_client,
            "accepted_per_port": {str(k): v for k, v in self.accepted_per_port.items()},
            "commands": dict(self.commands),
            "getinfo_keys": dict(self.getinfo_keys),
            "unknown_keys": dict(self.unknown_keys),
            "auth_ok": self.auth_ok,
            "auth_failed": self.auth_failed,
            "hung_bytes_received": self.hung_bytes_received,
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
            "bursts": [{"start": b["start"], "end": b["end"], "polls": b["polls"]}
                       for b in self.bursts],
        }


# ------------------------------------------------------------------ simulated tor

def _fingerprint(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789ABCDEF") for _ in range(40))


class SimulatedTor:
    """State of one control connection: one simulated tor instance."""

    NICKS = ("relayAlpha", "bravoExit", "charlieGuard", "deltaMiddle", "echoNode",
             "foxtrot", "golfRelay", "hotelTor", "indiaOnion")

    def __init__(self, seed: int, circuits: int, streams: int):
        rng = random.Random(seed)
        self.rng = rng
        self.read = rng.randrange(10**8, 10**10)
        self.written = rng.randrange(10**8, 10**10)
        self.ntor_req = rng.randrange(0, 10**5)
        self.ntor_ok = self.ntor_req - rng.randrange(0, 10)
        self.tap_req = rng.randrange(0, 100)
        self.tap_ok = self.tap_req
        self.uptime = rng.randrange(60, 10**6)
        self.pid = rng.randrange(100, 60000)
        relays = [f"${_fingerprint(rng)}~{rng.choice(self.NICKS)}" for _ in range(12)]
        lines = []
        for i in range(circuits):
            cid = i + 1
            path = ",".join(rng.sample(relays, 3))
            kind = i % 5
            if kind == 3:
                lines.append(f"{cid} EXTENDED {path} BUILD_FLAGS=IS_INTERNAL,NEED_CAPACITY "
                             f"PURPOSE=HS_SERVICE_INTRO HS_STATE=HSSI_CONNECTING "
                             f"TIME_CREATED=2026-11-22T02:00:0{cid % 10}.000000")
            elif kind == 4:
                lines.append(f"{cid} BUILT {path} BUILD_FLAGS=IS_INTERNAL,NEED_CAPACITY,NEED_UPTIME "
                             f"PURPOSE=HS_CLIENT_REND HS_STATE=HSCR_JOINED "
                             f"TIME_CREATED=2026-11-22T02:00:0{cid % 10}.000000")
            else:
                lines.append(f"{cid} BUILT {path} BUILD_FLAGS=NEED_CAPACITY PURPOSE=GENERAL "
                             f"TIME_CREATED=2026-11-22T02:00:0{cid % 10}.000000")
        self.circuit_status = "\r\n".join(lines)
        slines = []
        for i in range(streams):
            status = ("SUCCEEDED", "SUCCEEDED", "NEW", "SENTCONNECT")[i % 4]
            circ = (i % max(circuits, 1)) + 1 if status != "NEW" else 0
            slines.append(f"{i + 1} {status} {circ} 127.0.0.1:{80 + i} "
                          f"SOURCE_ADDR=127.0.0.1:{5000 + i} PURPOSE=USER")
        self.stream_status = "\r\n".join(slines)

    def advance(self) -> None:
        r = self.rng
        self.read += r.randrange(10**4, 2 * 10**6)
        self.written += r.randrange(10**4, 2 * 10**6)
        n = r.randrange(0, 20)
        self.ntor_req += n
        self.ntor_ok += n
        self.uptime += 2

    def value(self, key: str) -> str | None:
        k = key.lower()
        if k == "version":
            return TOR_VERSION
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
        if k == "orconn-status":
            return ""
        if k == "uptime":
            return str(self.uptime)
        if k == "process/pid":
            return str(self.pid)
        if k == "status/bootstrap-phase":
            return 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'
        if k in ("status/circuit-established", "network-liveness"):
            return "1" if k != "network-liveness" else "up"
        if k == "dormant":
            return "0"
        if k == "accounting/enabled":
            return "0"
        return None


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


class FakeTorServer:
    def __init__(self, args, stats: Stats):
        self.args = args
        self.stats = stats
        self.latency = args.latency_ms / 1000.0
        self.auth_methods = "NULL" if args.auth == "null" else "HASHEDPASSWORD"
        self.password = args.password
        self.conn_seq = 0
        self.protocolinfo = ("250-PROTOCOLINFO 1\r\n"
                             f"250-AUTH METHODS={self.auth_methods}\r\n"
                             f'250-VERSION Tor="{TOR_VERSION}"\r\n'
                             "250 OK\r\n")

    @contextlib.asynccontextmanager
    async def tracked(self, writer: asyncio.StreamWriter, port: int):
        """Count a control connection while it is open; a client hanging up ends it quietly."""
        st = self.stats
        st.connections_accepted += 1
        st.accepted_per_port[port] += 1
        st.connections_open += 1
        try:
            yield
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            st.connections_closed_by_client += 1
        finally:
            st.connections_open -= 1
            try:
                writer.close()
            except Exception:
                pass

    async def reply(self, writer: asyncio.StreamWriter, data: str) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        writer.write(data.encode())
        await writer.drain()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     port: int) -> None:
        st = self.stats
        self.conn_seq += 1
        tor = SimulatedTor(hash((port, self.conn_seq)) & 0xFFFFFFFF,
                           self.args.circuits, self.args.streams)
        authed = False
        async with self.tracked(writer, port):
            while True:
                raw = await reader.readline()
                if not raw:
                    st.connections_closed_by_client += 1
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    continue
                if line.startswith("+"):  # multi-line command: swallow its body
                    while True:
                        body = await reader.readline()
                        if not body or body.rstrip(b"\r\n") == b".":
                            break
                    line = line[1:]
                cmd, _, rest = line.partition(" ")
                cmd = cmd.upper()
                st.commands[cmd] += 1
                if not authed and cmd not in PRE_AUTH_OK:
                    await self.reply(writer, "514 Authentication required.\r\n")
                    return
                if cmd == "PROTOCOLINFO":
                    await self.reply(writer, self.protocolinfo)
                elif cmd == "AUTHENTICATE":
                    if self.auth_methods == "NULL":
                        authed = True
                        st.auth_ok += 1
                        await self.reply(writer, "250 OK\r\n")
                        continue
                    pw = _decode_password(rest)
                    if pw is None:
                        st.auth_failed += 1
                        await self.reply(writer, "551 Invalid hexadecimal encoding.  Maybe you tried a "
                                                 "plain text password?  If so, the standard requires "
                                                 "that you put it in double quotes.\r\n")
                        return
                    if pw != self.password:
                        st.auth_failed += 1
                        await self.reply(writer, "515 Authentication failed: Password did not match "
                                                 "HashedControlPassword value from configuration\r\n")
                        return
                    authed = True
                    st.auth_ok += 1
                    await self.reply(writer, "250 OK\r\n")
                elif cmd == "AUTHCHALLENGE":
                    await self.reply(writer, "513 AUTHCHALLENGE only supports SAFECOOKIE "
                                             "authentication\r\n")
                elif cmd == "GETINFO":
                    await self.getinfo(writer, tor, rest.split())
                elif cmd == "GETCONF":
                    keys = rest.split()
                    if not keys:
                        await self.reply(writer, "250 OK\r\n")
                    else:
                        out = [f"250-{k}" for k in keys[:-1]] + [f"250 {keys[-1]}"]
                        await self.reply(writer, "\r\n".join(out) + "\r\n")
                elif cmd in ("SETEVENTS", "SETCONF", "RESETCONF", "TAKEOWNERSHIP", "SIGNAL",
                             "DROPGUARDS", "DROPOWNERSHIP"):
                    await self.reply(writer, "250 OK\r\n")
                elif cmd == "QUIT":
                    await self.reply(writer, "250 closing connection\r\n")
                    return
                else:
                    await self.reply(writer, f'510 Unrecognized command "{cmd}"\r\n')

    async def getinfo(self, writer, tor: SimulatedTor, keys: list[str]) -> None:
        st = self.stats
        st.getinfo_received(time.monotonic())
        tor.advance()
        out = []
        for k in keys:
            st.getinfo_keys[k] += 1
            v = tor.value(k)
            if v is None:
                st.unknown_keys[k] += 1
                await self.reply(writer, f'552 Unrecognized key "{k}"\r\n')
                st.getinfo_answered(time.monotonic())
                return
            if "\n" in v:
                out.append(f"250+{k}=\r\n{v}\r\n.\r\n")
            else:
                out.append(f"250-{k}={v}\r\n")
        if not keys:
            out = []
        out.append("250 OK\r\n")
        await self.reply(writer, "".join(out))
        st.getinfo_answered(time.monotonic())

    async def handle_hung(self, reader, writer, port: int) -> None:
        """Accept, (optionally) authenticate, then never answer again."""
        st = self.stats
        st.connections_accepted_hung += 1
        authed = False
        async with self.tracked(writer, port):
            while True:
                raw = await reader.readline()
                if not raw:
                    st.connections_closed_by_client += 1
                    return
                st.hung_bytes_received += len(raw)
                if self.args.hang_mode != "after-auth" or authed:
                    continue  # swallow, never answer
                cmd = raw.decode("utf-8", "replace").split(" ", 1)[0].strip().upper()
                st.commands[cmd] += 1
                if cmd == "PROTOCOLINFO":
                    await self.reply(writer, self.protocolinfo)
                elif cmd == "AUTHENTICATE":
                    authed = True
                    await self.reply(writer, "250 OK\r\n")
                else:
                    await self.reply(writer, "250 OK\r\n")


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
    stats = Stats(args.burst_gap)
    tor = FakeTorServer(args, stats)
    servers, ports, hung_ports = [], [], []
    for i in range(args.ports + args.hung_ports):
        hung = i >= args.ports

        def make(hung=hung):
            async def cb(r, w):
                port = w.get_extra_info("sockname")[1]
                if hung:
                    await tor.handle_hung(r, w, port)
                else:
                    await tor.handle(r, w, port)
            return cb

        srv = await asyncio.start_server(make(), args.host, 0, backlog=4096, limit=1 << 20)
        port = srv.sockets[0].getsockname()[1]
        (hung_ports if hung else ports).append(port)
        servers.append(srv)
    sink_port = None
    if not args.no_sink:
        sink = Sink(stats, args.sink_status)
        srv = await asyncio.start_server(sink.handle, args.host, args.sink_port, backlog=1024,
                                         limit=1 << 24)
        sink_port = srv.sockets[0].getsockname()[1]
        servers.append(srv)

    info = {"pid": os.getpid(), "host": args.host, "ports": ports, "hung_ports": hung_ports,
            "sink_port": sink_port, "latency_ms": args.latency_ms, "auth": args.auth,
            "password": args.password if args.auth == "password" else None,
            "hang_mode": args.hang_mode}
    if args.json:
        print(json.dumps(info), flush=True)
    else:
        print(f"fake tor pid {os.getpid()}: {len(ports)} control port(s) on {args.host}, "
              f"latency {args.latency_ms} ms, auth {info['auth']}"
              + (f" (password {args.password!r})" if args.auth == "password" else ""))
        print("ports: " + ",".join(map(str, ports)))
        if hung_ports:
            print(f"hung ports ({args.hang_mode}): " + ",".join(map(str, hung_ports)))
        if sink_port:
            print(f"sink: http://{args.host}:{sink_port}  (POST /api/v2/write, GET /bench/stats)")
        example = ",".join(f"{args.host}:{p}:{args.password}:tor{i}" if args.auth == "password"
                           else f"{args.host}:{p}:tor{i}" for i, p in enumerate(ports[:3]))
        print(f"e.g. TOR_HOSTS={example}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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
    p.add_argument("--latency-ms", type=float, default=20.0, help="delay of every reply (default 20)")
    p.add_argument("--auth", choices=("password", "null"), default="password",
                   help="PROTOCOLINFO auth method: HASHEDPASSWORD or NULL (default password)")
    p.add_argument("--password", default="benchpw", help="control password (default benchpw)")
    p.add_argument("--circuits", type=int, default=5, help="lines of circuit-status (default 5)")
    p.add_argument("--streams", type=int, default=3, help="lines of stream-status (default 3)")
    p.add_argument("--hung-ports", type=int, default=0,
                   help="extra ports that accept and never answer (default 0)")
    p.add_argument("--hang-mode", choices=("never", "after-auth"), default="never",
                   help="hung ports: never answer at all, or only after authentication")
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
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
