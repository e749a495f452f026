"""A private Tor network entirely on 127.0.0.1, for tests that need real circuits.

Six tors: three directory authorities (also relays), one middle relay, one exit
relay and one client. Every address is 127.0.0.1, every node carries its own
three ``DirAuthority`` lines and ``UseDefaultFallbackDirs 0``, so no tor here
ever learns of (or reaches for) the public Tor network. A watchdog thread checks
with ``ss`` once a second that every socket of every tor started here stays in
127.0.0.0/8; on the first violation it kills them all and the session aborts.

Every tor runs in the foreground as a child process (RunAsDaemon 0) started
from the calling thread with PR_SET_PDEATHSIG, so it dies with the test run
even when pytest itself is killed; stop() (fixture finalizer and atexit) stops
each one by pid.

TorNet.add_onion_service() adds more tors, each running a v3 onion service (ClientOnly,
SocksPort 0, the same DirAuthority lines and loopback settings, watched by the same
watchdog); the client reaches them by name through its SocksPort (ExtendedErrors), see
OnionService, socks_reply_code and http_get_url.

The session-scoped fixture ``tornet`` is defined here and imported by tests/conftest.py, so
every test module shares one network (a module importing it itself would get a second
network: pytest keys a fixture by the module that defines it). Tests using it are marked
``@pytest.mark.tornet``.
"""

from __future__ import annotations

import atexit
import ctypes
import http.server
import ipaddress
import os
import random
import re
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import leakcheck
from peers import recv_exact
from support import TOR_BIN, free_port, hash_password, port_open, stop_process, wait_for

PASSWORD = "tornet-pw"
leakcheck.secret(PASSWORD)
BODY_SIZE = 2 * 1024 * 1024
BOOTSTRAP_TIMEOUT = 120  # measured 10-16 s here; generous for loaded CI machines
# The client gives up on a stream still waiting for its circuit after this long and answers
# SOCKS 06 (tor's default is 120 s). A stopped onion service can keep a client waiting so.
CLIENT_SOCKS_TIMEOUT = 10

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the tor when the thread that started it exits."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort; stop()/atexit remain
        pass


# ------------------------------------------------------------------------ nodes

class Node:
    """One tor of the network. role: "authority", "middle", "exit", "client" or "onion" (an
    onion service added with TorNet.add_onion_service; hs_ports lists its HiddenServicePorts)."""

    def __init__(self, net: "TorNet", name: str, role: str, auth: str):
        self.net, self.name, self.role, self.auth = net, name, role, auth
        self.workdir = net.workdir / name
        self.datadir = self.workdir / "data"
        self.keysdir = self.datadir / "keys"
        for d in (self.workdir, self.datadir, self.keysdir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self.log_path = self.workdir / "notice.log"
        self.torrc_path = self.workdir / "torrc"
        self.cookie_path = self.datadir / "control_auth_cookie"
        self.password = PASSWORD if auth == "password" else None
        self.control_port = net.port()
        self.relay = role not in ("client", "onion")
        self.or_port = net.port() if self.relay else None
        self.dir_port = net.port() if role == "authority" else None
        self.metrics_port = net.port() if self.relay or role == "onion" else None
        self.socks_port = net.port() if role == "client" else None
        self.hs_dir = self.workdir / "hs" if role == "onion" else None
        self.hs_ports: list[tuple[int, int]] = []  # onion service: (virtual port, target port)
        self.fingerprint: str | None = None  # relay identity (RSA), hex
        self.v3ident: str | None = None  # authority v3 identity, hex
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None

    # -- keys
    def make_authority_keys(self) -> None:
        """tor-gencert: v3 identity + signing key + certificate into keys/ (empty passphrase)."""
        subprocess.run(
            ["tor-gencert", "--create-identity-key", "--passphrase-fd", "0",
             "-i", str(self.keysdir / "authority_identity_key"),
             "-s", str(self.keysdir / "authority_signing_key"),
             "-c", str(self.keysdir / "authority_certificate"),
             "-m", "12", "-a", f"127.0.0.1:{self.dir_port}"],
            input="\n", text=True, check=True, capture_output=True, timeout=60)
        cert = (self.keysdir / "authority_certificate").read_text()
        self.v3ident = re.search(r"^fingerprint ([0-9A-F]{40})$", cert, re.M).group(1)

    def make_relay_keys(self) -> None:
        """Let tor create the relay identity key and tell its fingerprint (no network)."""
        empty = self.net.empty_file
        out = subprocess.run(
            [TOR_BIN, "--defaults-torrc", str(empty), "-f", str(empty), "--list-fingerprint",
             "--quiet", "--DataDirectory", str(self.datadir), "--Nickname", self.name,
             "--ORPort", f"127.0.0.1:{self.or_port}", "--DisableNetwork", "1"],
            text=True, check=True, capture_output=True, timeout=60).stdout
        m = re.search(r"^\S+ ((?:[0-9A-F]{4} ?){10})$", out.strip(), re.M)
        self.fingerprint = m.group(1).replace(" ", "")

    # -- configuration
    def torrc(self) -> str:
        lines = [
            f"DataDirectory {self.datadir}",
            f"Log notice file {self.log_path}",
            "RunAsDaemon 0",
            f"Nickname {self.name}",
            "TestingTorNetwork 1",
            "Address 127.0.0.1",
            "OutboundBindAddress 127.0.0.1",
            "UseDefaultFallbackDirs 0",
            "ClientUseIPv6 0",
            "AssumeReachable 1",
            "PathsNeededToBuildCircuits 0.67",
            "TestingDirAuthVoteExit *",
            "TestingDirAuthVoteGuard *",
            "TestingDirAuthVoteHSDir *",
            "TestingMinExitFlagThreshold 0",
            "V3AuthNIntervalsValid 2",
            "ShutdownWaitLength 0",
            f"ControlPort 127.0.0.1:{self.control_port}",
        ]
        if self.auth == "password":
            lines.append(f"HashedControlPassword {self.net.hashed_password}")
        else:
            lines += ["CookieAuthentication 1", f"CookieAuthFile {self.cookie_path}"]
        lines += self.net.dirauthority_lines()
        if self.relay:
            lines += [
                "SocksPort 0",
                f"ORPort 127.0.0.1:{self.or_port}",
                "AddressDisableIPv6 1",
                "ServerDNSDetectHijacking 0",
                f"ServerDNSResolvConfFile {self.net.resolv_conf}",
                f"MetricsPort 127.0.0.1:{self.metrics_port}",
                "MetricsPortPolicy accept 127.0.0.1",
            ]
        if self.role == "authority":
            lines += [
                f"DirPort 127.0.0.1:{self.dir_port}",
                "AuthoritativeDirectory 1",
                "V3AuthoritativeDirectory 1",
                "ExitRelay 0",
                "ExitPolicy reject *:*",
                f"TestingV3AuthInitialVotingInterval {self.net.INITIAL_VOTING_INTERVAL}",
                f"TestingV3AuthVotingStartOffset {self.net.vote_offset}",
                "TestingV3AuthInitialVoteDelay 2",
                "TestingV3AuthInitialDistDelay 2",
                "V3AuthVotingInterval 10",
                "V3AuthVoteDelay 2",
                "V3AuthDistDelay 2",
            ]
        elif self.role == "middle":
            lines += ["DirCache 0", "ExitRelay 0", "ExitPolicy reject *:*"]
        elif self.role == "exit":
            lines += [
                "DirCache 0",
                "ExitRelay 1",
                "IPv6Exit 0",
                "ExitPolicyRejectPrivate 0",
                "ExitPolicyRejectLocalInterfaces 0",
                "ExitPolicy accept 127.0.0.1:*",
                "ExitPolicy reject *:*",
                # The target 127.0.0.1 is the exit's own address, so the client pins
                # streams to it ("enclave"). Should the exit refuse the first one
                # because its consensus does not list the previous hop yet ("stream
                # from unknown relay", END reason MISC), the client loops building
                # doomed circuits (~1500 in 10 s). Readiness also waits for that.
                "RefuseUnknownExits 0",
            ]
        elif self.role == "client":
            lines += [
                # ExtendedErrors: SOCKS5 replies F0-F7 for onion failures (see socks_reply_code)
                f"SocksPort 127.0.0.1:{self.socks_port} ExtendedErrors",
                f"SocksTimeout {CLIENT_SOCKS_TIMEOUT}",
                "ClientOnly 1",
                # Required: with microdescriptors an exit whose policy accepts only
                # 127.0.0.1 looks like it rejects everything; the client sticks at 95%.
                "UseMicrodescriptors 0",
            ]
        elif self.role == "onion":
            lines += [
                "SocksPort 0",
                "ClientOnly 1",
                # With microdescriptors a restarted service at times could not build any path
                # for 2 min ("Failed to find node for hop #2 of our path"; it had no relay
                # descriptors yet) and was unreachable; with full descriptors, as the client, not.
                "UseMicrodescriptors 0",
                f"MetricsPort 127.0.0.1:{self.metrics_port}",
                "MetricsPortPolicy accept 127.0.0.1",
                f"HiddenServiceDir {self.hs_dir}",
            ]
            lines += [f"HiddenServicePort {virtual} 127.0.0.1:{target}" for virtual, target in self.hs_ports]
        return "\n".join(lines) + "\n"

    # -- process
    def start(self) -> "Node":
        """Start tor in the foreground (does not wait; see ready())."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already runs"
        self.torrc_path.write_text(self.torrc())
        if self.cookie_path.exists():
            self.cookie_path.unlink()  # so ready() waits for the new cookie
        # stdout/stderr to a file: config errors land there, before the log file opens
        with open(self.workdir / "console.log", "ab") as console:
            self.proc = subprocess.Popen(
                [TOR_BIN, "--defaults-torrc", str(self.net.empty_file), "-f", str(self.torrc_path)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        self.net.pids.add(self.proc.pid)
        return self

    def ready(self) -> bool:
        """The control port answers (and the cookie file exists for cookie auth)."""
        self.net.raise_if_down()
        if self.proc is None or self.proc.poll() is not None:
            raise NetworkDown(f"tor {self.name} exited:\n{self.log_tail()}")
        if not port_open(self.control_port):
            return False
        return self.auth == "password" or self.cookie_path.exists()

    def wait_ready(self, timeout: float = 30) -> "Node":
        wait_for(self.ready, timeout, what=f"control port of {self.name}")
        return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (ShutdownWaitLength 0: tor exits at once), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc, timeout)
        self.net.pids.discard(proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def rss_kb(self) -> int:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
        except (OSError, AttributeError):
            return 0

    # -- talking to it
    def controller(self):
        """An authenticated stem Controller (no ownership is taken: closing it is harmless)."""
        import stem.control
        c = stem.control.Controller.from_port(address="127.0.0.1", port=self.control_port)
        c.authenticate(password=self.password)
        return c

    def entry(self, label: str) -> str:
        """A TOR_HOSTS entry polling this node under the host name `label`."""
        if self.password is not None:
            return f"127.0.0.1:{self.control_port}:{self.password}:{label}"
        return f"127.0.0.1:{self.control_port}:{label}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 25) -> str:
        try:
            console = (self.workdir / "console.log").read_text(errors="replace").strip()
        except OSError:
            console = ""
        tail = "\n".join(self.log_text().splitlines()[-n:]) or "(no log)"
        return f"{tail}\n[console] {console[-2000:]}" if console else tail

    def metrics(self) -> str:
        """The MetricsPort page (Prometheus text) of a relay or an onion service."""
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


# ------------------------------------------------------------------ HTTP target

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 - http.server API
        body = self.server.bodies.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HttpTarget(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """stdlib HTTP server on 127.0.0.1 (`port`, or a free one): /blob (BODY_SIZE known bytes), /small.

    A connection that sends nothing just stays open (one idle thread each), which
    is how the tests hold streams open through the client.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.port = self.server_address[1]
        blob = (bytes(range(256)) * (BODY_SIZE // 256 + 1))[:BODY_SIZE]
        self.bodies = {"/blob": blob, "/small": b"hello through tor\n"}
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


# ------------------------------------------------------------------------ SOCKS

#: SOCKS5 reply codes (RFC 1928; F0-F7 are tor's ExtendedErrors, proposal 304).
SOCKS_REPLIES = {
    0x00: "succeeded", 0x01: "general failure", 0x02: "not allowed by ruleset",
    0x03: "network unreachable", 0x04: "host unreachable", 0x05: "connection refused",
    0x06: "TTL expired", 0x07: "command not supported", 0x08: "address type not supported",
    0xF0: "onion service descriptor can not be found",
    0xF1: "onion service descriptor is invalid",
    0xF2: "onion service introduction failed",
    0xF3: "onion service rendezvous failed",
    0xF4: "onion service missing client authorization",
    0xF5: "onion service wrong client authorization",
    0xF6: "onion service invalid address",
    0xF7: "onion service introduction timed out",
}


class SocksError(ConnectionError):
    """tor answered a SOCKS5 CONNECT with a failure; `code` is the reply byte."""

    def __init__(self, code: int, host: str, port: int):
        self.code = code
        super().__init__(f"SOCKS5 connect to {host}:{port} failed: reply 0x{code:02X} "
                         f"({SOCKS_REPLIES.get(code, 'unknown')})")


def _socks_address(host: str) -> bytes:
    """ATYP + address of a CONNECT request: an IPv4 literal as type 1, a .onion name as type 3
    (the DOMAINNAME type: tor itself looks the name up in the onion service directory).
    Any other name is refused here: tor would ask the exit to resolve it, and exits of this
    network must never resolve DNS."""
    try:
        return b"\x01" + ipaddress.IPv4Address(host).packed
    except ValueError:
        pass
    if not host.lower().endswith(".onion"):
        raise ValueError(f"{host!r}: only IPv4 literals and .onion names (no exit DNS on this network)")
    name = host.encode("ascii")
    if not 0 < len(name) < 256:
        raise ValueError(f"{host!r}: a SOCKS5 domain name has 1-255 bytes")
    return b"\x03" + bytes([len(name)]) + name


def socks_open(socks_port: int, host: str, port: int, timeout: float = 15) -> tuple[int, socket.socket]:
    """CONNECT through tor's SOCKS5 port to host:port (an IPv4 address, or a .onion name sent
    as a domain name). Returns (reply code, socket); the caller closes the socket. A code other
    than 0 means tor refused, and tor closes the connection after its reply."""
    request = b"\x05\x01\x00" + _socks_address(host) + struct.pack(">H", port)
    s = socket.create_connection(("127.0.0.1", socks_port), timeout=timeout)
    try:
        s.sendall(b"\x05\x01\x00")
        if recv_exact(s, 2, "SOCKS5") != b"\x05\x00":
            raise ConnectionError("SOCKS5: no-auth method refused")
        s.sendall(request)
        version, code, _, atyp = recv_exact(s, 4, "SOCKS5")
        if version != 5:
            raise ConnectionError(f"SOCKS5: reply version {version}")
        if atyp == 1:
            recv_exact(s, 4 + 2, "SOCKS5")
        elif atyp == 4:
            recv_exact(s, 16 + 2, "SOCKS5")
        elif atyp == 3:
            recv_exact(s, recv_exact(s, 1, "SOCKS5")[0] + 2, "SOCKS5")
        else:
            raise ConnectionError(f"SOCKS5: reply address type {atyp}")
        return code, s
    except BaseException:
        s.close()
        raise


def socks_connect(socks_port: int, host: str, port: int, timeout: float = 15) -> socket.socket:
    """A socket connected through tor's SOCKS5 port to host:port (IPv4 address or .onion
    name); SocksError (a ConnectionError with .code) when tor refuses."""
    code, s = socks_open(socks_port, host, port, timeout)
    if code != 0:
        s.close()
        raise SocksError(code, host, port)
    return s


def socks_reply_code(socks_port: int, host: str, port: int, timeout: float = 60) -> int:
    """The raw SOCKS5 reply code tor answers for a CONNECT to host:port (the connection is
    closed right after). 0 = connected; with the client's ExtendedErrors flag tor answers the
    onion-specific F0-F7 (SOCKS_REPLIES). Observed on this network (tor 0.4.9.11, .onion
    names sent as domain names):

    - a well-formed v3 address that no service publishes (WELL_FORMED_UNKNOWN_ONION):
      0xF0 (descriptor can not be found) after every HSDir answered 404, in 0.3-0.4 s; also
      what a new service answers until its first descriptor is uploaded (~3-4 s after start);
    - a malformed .onion name (too short, or 56 characters with a wrong checksum): 0xF6
      (invalid address) at once; nothing is sent into the network;
    - a service whose tor was stopped (its descriptor still on the HSDirs): 0xF2
      (introduction failed), 3-12 s after the stop, once every intro point NACKs; or 0x06
      (TTL expired) after the client's SocksTimeout (CLIENT_SOCKS_TIMEOUT) while an intro
      point still acknowledges introductions for the stopped tor and the client waits for a
      rendezvous that never comes (5 of 8 stops in one network, 0 of 8 in another). Right
      after the stop the first reply may be 0x01 (the old rendezvous circuit closing) or none
      (streams sent into that circuit while it stays open; OnionService.unstick_client). A
      restarted service answers 0xF2 too until the client has its new descriptor;
    - a running service whose HiddenServicePort target has nothing listening: 0x01 (general
      failure); the service does not tell the client why.

    socket.timeout propagates if tor does not answer within `timeout` (the client itself
    answers 0x06 after CLIENT_SOCKS_TIMEOUT for a stream still waiting for its circuit)."""
    code, s = socks_open(socks_port, host, port, timeout)
    s.close()
    return code


def http_get_via_socks(socks_port: int, port: int, path: str, timeout: float = 30,
                       host: str = "127.0.0.1") -> bytes:
    """GET http://host:port/path through tor (host an IPv4 address or a .onion name); the
    body (the status must be 200)."""
    with socks_connect(socks_port, host, port, timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise ConnectionError(f"HTTP through tor: {head[:80]!r}")
    return body


def http_get_url(socks_port: int, url: str, timeout: float = 30) -> bytes:
    """GET an http:// URL (e.g. http://<56 chars>.onion/small) through tor's SOCKS port."""
    import urllib.parse
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"{url!r}: only http://host[:port]/path URLs")
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return http_get_via_socks(socks_port, u.port or 80, path, timeout=timeout, host=u.hostname)


# ------------------------------------------------------------------- onion addresses

def onion_address(public_key: bytes) -> str:
    """The v3 onion address of an ed25519 public key (rend-spec-v3 6: base32 of
    pubkey | checksum[:2] | version 3, checksum = SHA3-256(".onion checksum" | pubkey | 3))."""
    import base64
    import hashlib
    checksum = hashlib.sha3_256(b".onion checksum" + public_key + b"\x03").digest()[:2]
    return base64.b32encode(public_key + checksum + b"\x03").decode().lower() + ".onion"


#: A well-formed v3 address that no service here publishes: the key is ed25519's base point
#: (a valid key of prime order, so tor's address check accepts it; its secret key is 1).
WELL_FORMED_UNKNOWN_ONION = onion_address(bytes([0x58]) + bytes([0x66]) * 31)


# ------------------------------------------------------------------- loopback watch

def _is_loopback(addr: str, peer: bool = False) -> bool:
    """ss address column "host:port" -> host in 127.0.0.0/8; a peer "*:*" / "0.0.0.0:*"
    (a listening or unconnected socket) has no remote end and passes."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if peer and port == "*" and host in ("*", "0.0.0.0", "::"):
        return True
    if host.startswith("::ffff:"):
        host = host[len("::ffff:"):]
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip.version == 4 and ip in ipaddress.ip_network("127.0.0.0/8")


def foreign_lines(ss_output: str, pids: set[int]) -> tuple[int, list[str]]:
    """Parse `ss -tuanpH`: (how many sockets belong to `pids`, those whose local or peer
    address is outside 127.0.0.0/8)."""
    seen, bad = 0, []
    for line in ss_output.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if not owners & pids:
            continue
        seen += 1
        cols = line.split()
        local, peer = cols[4], cols[5]
        if not (_is_loopback(local) and _is_loopback(peer, peer=True)):
            bad.append(line)
    return seen, bad


def foreign_sockets(pids: set[int]) -> list[str]:
    """ss lines of sockets held by `pids` whose local or peer address is outside 127.0.0.0/8.

    Raises RuntimeError when ss shows no socket at all of running `pids` (ss cannot see their
    process info, e.g. without the rights to): then nothing could be checked.
    """
    if not pids:
        return []
    out = subprocess.run(["ss", "-tuanpH"], capture_output=True, text=True, timeout=20).stdout
    seen, bad = foreign_lines(out, pids)
    if not seen and any(Path(f"/proc/{p}").exists() for p in pids):
        raise RuntimeError("ss shows no socket of the tors started here: cannot check them")
    return bad


# ------------------------------------------------------------------------ network

def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral (outgoing) range; 0 if unknown."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class NetworkDown(BaseException):
    """A tor of the network died or reached outside loopback: waiting on is pointless.

    A BaseException so that support.wait_for (which retries on Exception) lets it through.
    """


class OnionService:
    """A v3 onion service: a 7th (8th, ...) tor of the network, made by TorNet.add_onion_service.

    Its tor runs ClientOnly with SocksPort 0, a HiddenServiceDir in its own directory
    (node.hs_dir) and `HiddenServicePort virtual_port 127.0.0.1:target_port`, a control port
    (node.control_port; node.password for password auth) and a MetricsPort (node.metrics_port).
    Its pid is watched by the network's ss watchdog like every other tor. The keys stay in
    hs_dir, so the address survives stop()/start()/restart().
    """

    def __init__(self, net: "TorNet", name: str, target_port: int, virtual_port: int = 80,
                 auth: str = "password"):
        self.net, self.name = net, name
        self.target_port, self.virtual_port = target_port, virtual_port
        self.node = Node(net, name, "onion", auth)
        self.node.hs_ports = [(virtual_port, target_port)]
        self.address: str | None = None  # "<56 base32 chars>.onion", from hs/hostname
        self.last_wait: dict = {}  # what the last wait_reply() saw: seconds, codes, unstuck, ...
        self.timings: dict[str, float] = {}  # seconds: "consensus" (waited before the start), "start"

    def __repr__(self) -> str:
        return f"<OnionService {self.name} {self.address}:{self.virtual_port} -> 127.0.0.1:{self.target_port}>"

    @property
    def onion_id(self) -> str:
        """The address without ".onion" (the 56 characters)."""
        return self.address.removesuffix(".onion")

    def url(self, path: str = "/") -> str:
        port = "" if self.virtual_port == 80 else f":{self.virtual_port}"
        return f"http://{self.address}{port}{path}"

    def entry(self, label: str) -> str:
        """A TOR_HOSTS entry polling this service's tor under `label`."""
        return self.node.entry(label)

    # -- process
    def start(self, timeout: float = 30) -> "OnionService":
        """Start its tor; returns once the control port answers and hs/hostname is written
        (reachability through the client takes a few seconds more: wait_reachable)."""
        t0 = time.monotonic()
        self.node.start().wait_ready(timeout)
        hostname = self.node.hs_dir / "hostname"

        def written():
            self.net.raise_if_down()
            text = hostname.read_text().strip() if hostname.exists() else ""
            return text if re.fullmatch(r"[a-z2-7]{56}\.onion", text) else None
        address = wait_for(written, timeout, interval=0.1, what=f"{hostname}")
        assert self.address in (None, address), f"{self.name}: address changed {self.address} -> {address}"
        self.address = address
        self.timings["start"] = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 10) -> None:
        self.node.stop(timeout)

    def restart(self, timeout: float = 30) -> "OnionService":
        self.stop()
        return self.start(timeout)

    # -- through the client
    def get(self, path: str = "/", timeout: float = 30) -> bytes:
        """GET path from the service through the network's client (the body; status 200)."""
        return http_get_via_socks(self.net.client.socks_port, self.virtual_port, path,
                                  timeout=timeout, host=self.address)

    def reply_code(self, timeout: float = 60) -> int:
        """The client's SOCKS5 reply code for a CONNECT to the service (0 = connected)."""
        return socks_reply_code(self.net.client.socks_port, self.address, self.virtual_port, timeout)

    def metrics(self) -> str:
        """Its tor's MetricsPort page (the tor_hs_* families carry onion="<onion_id>")."""
        return self.node.metrics()

    def wait_reachable(self, timeout: float = 120, attempt_timeout: float = 5,
                       unstick_every: float = 5) -> float:
        """Retry a CONNECT through the client until tor answers 0 (the service connected to its
        target, which must be listening); return the seconds it took. See wait_reply; the
        client is unstuck with NEWNYM, which drops a restarted service's stale descriptor.
        Measured here (tor 0.4.9.11, 2 loaded cores): 5-8 s after the first start (twice
        18 and 34 s, F0 all along), 4-10 s after a restart, once 19 s (a tor uploads its
        descriptor ~3-4 s after it starts)."""
        return self.wait_reply({0}, timeout, attempt_timeout, unstick_every)

    def wait_unreachable(self, timeout: float = 60) -> float:
        """For a stopped service: retry a CONNECT until the client answers 0xF2 (introduction
        failed) or 0x06 (TTL expired: the client's SocksTimeout ran out); return the seconds it
        took; self.last_wait["reply"] says which. Which one depends on the intro points: once
        they all know the service's circuits are gone they NACK and the client answers F2
        (3-12 s after the stop); but an intro point can keep acknowledging introductions for
        the stopped tor for over a minute (its intro circuit there was not torn down), and
        then the client waits for a rendezvous that never comes until CLIENT_SOCKS_TIMEOUT:
        06 (seen in 5 of 8 stops in one network, 0 of 8 in another).
        Attempts wait longer than CLIENT_SOCKS_TIMEOUT to see tor's own answer; the client is
        unstuck without NEWNYM (closing a rendezvous circuit still joined to the stopped tor):
        NEWNYM would also forget the intro points that failed and start over."""
        return self.wait_reply({0xF2, 0x06}, timeout, CLIENT_SOCKS_TIMEOUT + 5, CLIENT_SOCKS_TIMEOUT + 5,
                               newnym=False, joined_only=True)

    def wait_reply(self, accept, timeout: float = 120, attempt_timeout: float = 5,
                   unstick_every: float = 5, newnym: bool = True, joined_only: bool = False) -> float:
        """Retry a CONNECT to the service through the client until tor's SOCKS5 reply code is in
        `accept`; return the seconds it took (AssertionError naming the codes seen after
        `timeout`).

        After an attempt tor did not answer within `attempt_timeout`, and whenever no attempt
        succeeded for `unstick_every` seconds, the client is unstuck:
        unstick_client(newnym, joined_only). self.last_wait records seconds, the reply codes
        seen (None = no answer within attempt_timeout), how often the client was unstuck and
        how many of its circuits were closed, and on success the code and the seconds since
        this service's tor started."""
        t0 = time.monotonic()
        deadline, next_unstick = t0 + timeout, t0 + unstick_every
        codes: dict = {}
        info = {"unstuck": 0, "closed_circuits": 0}
        while True:
            self.net.raise_if_down()
            try:
                code = self.reply_code(max(1.0, min(attempt_timeout, deadline - time.monotonic())))
            except OSError:  # socket.timeout: no answer yet; a closed connection
                code = None
            now = time.monotonic()
            if code in accept:
                self.last_wait = {"seconds": now - t0, "codes": codes, **info, "reply": code,
                                  "since_start": now - self.node.started_at}
                return now - t0
            codes[code] = codes.get(code, 0) + 1
            if now >= deadline:
                self.last_wait = {"seconds": now - t0, "codes": codes, **info, "reply": None}
                seen = {("no answer" if c is None else f"0x{c:02X}"): n for c, n in codes.items()}
                want = ", ".join(f"0x{c:02X}" for c in sorted(accept))
                raise AssertionError(
                    f"{self.name} ({self.address}): no SOCKS reply in {{{want}}} through the client "
                    f"after {timeout:g} s (replies {seen}, {info})\n{self.net.diagnostics()}")
            if code is None or now >= next_unstick:
                info["closed_circuits"] += self.unstick_client(newnym, joined_only)
                info["unstuck"] += 1
                next_unstick = now + unstick_every
            time.sleep(0.5)

    def unstick_client(self, newnym: bool = True, joined_only: bool = False) -> int:
        """Close the client's circuits to this service (CLOSECIRCUIT on the HS_CLIENT_*
        circuits whose REND_QUERY is this address; with joined_only just the rendezvous
        circuits joined to the service, HS state HSCR_JOINED), and with `newnym` send SIGNAL
        NEWNYM, which purges the client's onion state: cached descriptors and intro points
        marked failed (tor delays a NEWNYM to one per 10 s). Returns how many circuits were
        closed.

        Why: when the service's tor stops, the client's rendezvous circuit to it may stay open
        (seen for over a minute) and the client attaches every new stream to it: no answer at
        all (seen for 2 min, until the test gave up). NEWNYM does not close it. After a
        restart the client also keeps the old descriptor, whose intro points are gone."""
        import stem
        closed = 0
        with self.net.client.controller() as c:
            for circ in c.get_circuits():
                if (circ.rend_query or "").removesuffix(".onion") == self.onion_id and \
                        str(circ.purpose).startswith("HS_CLIENT") and \
                        (not joined_only or str(circ.hs_state) == "HSCR_JOINED"):
                    try:
                        c.close_circuit(circ.id)
                        closed += 1
                    except stem.InvalidRequest:  # closed meanwhile
                        pass
            if newnym:
                c.msg("SIGNAL NEWNYM")
        return closed


class TorNet:
    """3 authorities + middle + exit + client, all on 127.0.0.1. start() returns when usable.
    Onion services (add_onion_service) are extra tors, not in `nodes` (which stays the six)."""

    ROLES = (("auth1", "authority", "password"), ("auth2", "authority", "cookie"),
             ("auth3", "authority", "password"), ("middle", "middle", "cookie"),
             ("exit", "exit", "password"), ("client", "client", "cookie"))

    # Authorities vote at fixed times: valid-after = midnight UTC + k * interval + offset, the vote
    # VoteDelay + DistDelay (4 s) before. Left to chance, the first vote can come 1 s after the
    # start, before any relay uploaded its descriptor: that consensus lists only authorities and
    # the next one is a V3AuthVotingInterval (10 s) later (bootstrap 7-25 s). The offset is chosen
    # so the first consensus is valid FIRST_CONSENSUS_AFTER seconds after the start, voted 5 s in.
    INITIAL_VOTING_INTERVAL = 10
    FIRST_CONSENSUS_AFTER = 10
    CLIENT_LEAD = 1.5  # the client starts this long before the first consensus is published

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.vote_offset = 0
        self.empty_file = self.workdir / "empty"  # /dev/null is refused as a torrc
        self.empty_file.write_text("")
        self.resolv_conf = self.workdir / "resolv.conf"
        self.resolv_conf.write_text("nameserver 127.0.0.1\n")
        self.pids: set[int] = set()
        self._ports: set[int] = set()
        self.violations: list[str] = []
        self.hashed_password = ""
        self.nodes = [Node(self, *r) for r in self.ROLES]
        self.by_name = {n.name: n for n in self.nodes}
        self.services: list[OnionService] = []
        self.http: HttpTarget | None = None
        self.timings: dict[str, float] = {}
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._stopped = False

    def port(self) -> int:
        """A free port on 127.0.0.1, distinct from every port handed out before, and below the
        kernel's ephemeral range: a port from bind(0) can be taken as the local port of some
        outgoing connection (the tors' own) before the tor that should listen on it starts
        (seen twice in ~15 starts: "Could not bind to 127.0.0.1:...: Address already in use")."""
        low = _ephemeral_low()
        while True:
            p = random.randrange(max(1024, low - 12000), low) if low > 2048 else free_port()
            if p in self._ports:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    continue
            self._ports.add(p)
            return p

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

    @property
    def all_nodes(self) -> list[Node]:
        """The six tors and the tors of the onion services."""
        return self.nodes + [svc.node for svc in self.services]

    @property
    def authorities(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "authority"]

    @property
    def client(self) -> Node:
        return self["client"]

    @property
    def exit(self) -> Node:
        return self["exit"]

    def dirauthority_lines(self) -> list[str]:
        return [f"DirAuthority {a.name} orport={a.or_port} no-v2 v3ident={a.v3ident} "
                f"127.0.0.1:{a.dir_port} {a.fingerprint}" for a in self.authorities]

    # -- onion services
    def add_onion_service(self, name: str, target_port: int, virtual_port: int = 80,
                          auth: str = "password", timeout: float = 30) -> OnionService:
        """Start one more tor, running a v3 onion service whose `virtual_port` leads to
        127.0.0.1:target_port; returns once its control port answers and its address is known.
        Call from the thread that started the network (PR_SET_PDEATHSIG). auth: "password"
        (PASSWORD) or "cookie"."""
        if name in self.by_name or any(svc.name == name for svc in self.services):
            raise ValueError(f"a tor named {name!r} exists already")
        if self._stopped or self.http is None:
            raise RuntimeError("the network is not running")
        t0 = time.monotonic()
        self.wait_full_consensus(timeout)
        svc = OnionService(self, name, target_port, virtual_port, auth)
        svc.timings["consensus"] = time.monotonic() - t0
        self.services.append(svc)
        svc.start(timeout)
        return svc

    def wait_full_consensus(self, timeout: float = 60) -> None:
        """Wait until the client's consensus lists all five relays. The network is usable for
        exit traffic before that (seen: a first consensus without two of the authorities, for
        17 s), but an onion service started on it could not build its circuits on three relays
        ("Failed to find node for hop #3 of our path") until the next consensus, and once
        restarted it stalled 45 s more (its saved state named layer-2 vanguards it could not
        find: "Could not find a node that matches the configured _HSLayer2Nodes set")."""
        want = {n.name for n in self.nodes if n.relay}
        with self.client.controller() as c:
            def listed():
                self.raise_if_down()
                return want <= {r.nickname for r in c.get_network_statuses()}
            wait_for(listed, timeout, interval=0.5, what=f"a consensus listing {sorted(want)}")

    def remove_onion_service(self, svc: OnionService) -> None:
        """Stop the service's tor and forget it."""
        svc.stop()
        self.services.remove(svc)

    # -- lifecycle
    def start(self, timeout: float = BOOTSTRAP_TIMEOUT) -> "TorNet":
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            hashed = pool.submit(hash_password, PASSWORD)
            jobs = [pool.submit(a.make_authority_keys) for a in self.authorities]
            jobs += [pool.submit(a.make_relay_keys) for a in self.authorities]
            for j in jobs:
                j.result()
            self.hashed_password = hashed.result()
        self.timings["keys"] = time.monotonic() - t0
        self.http = HttpTarget()
        t1 = time.monotonic()
        now = time.time()
        target = int(now) + self.FIRST_CONSENSUS_AFTER
        self.vote_offset = target % 86400 % self.INITIAL_VOTING_INTERVAL
        # Start and stop only from this thread: PDEATHSIG follows the thread that started a tor.
        relays = [n for n in self.nodes if n.relay]
        for node in relays:
            node.start()
        self._watch = threading.Thread(target=self._watchdog, name="tornet-watchdog", daemon=True)
        self._watch.start()
        deadline = t1 + timeout
        for node in relays:
            node.wait_ready(max(1.0, deadline - time.monotonic()))
        # The client starts shortly before the first consensus: started with the others it asks
        # for a consensus in vain (404) and backs off, and then fetches it up to 6 s late.
        time.sleep(max(0.0, target - self.CLIENT_LEAD - time.time()))
        self.client.start().wait_ready(max(1.0, deadline - time.monotonic()))
        self.timings["control_ports"] = time.monotonic() - t1
        self.wait_usable(max(1.0, deadline - time.monotonic()))
        self.timings["bootstrap"] = time.monotonic() - t1
        self.check_loopback()
        return self

    def wait_usable(self, timeout: float) -> None:
        """Client bootstrapped 100%, knows the exit's descriptor, and a fetch through it works."""
        deadline = time.monotonic() + timeout

        def left():
            return max(1.0, deadline - time.monotonic())

        def bootstrapped():
            self.raise_if_down()
            return "Bootstrapped 100%" in self.client.log_text()

        def fetch_works():
            self.raise_if_down()  # the first streams may fail while circuits are built: retried
            return self.fetch("/small", timeout=5) == self.http.bodies["/small"]

        try:
            wait_for(bootstrapped, left(), interval=0.2, what="client Bootstrapped 100%")
            self.timings["client_100"] = time.monotonic() - self.client.started_at
            with self.client.controller() as c:
                def has_exit_desc():
                    self.raise_if_down()
                    return c.get_info(f"desc/name/{self.exit.name}")
                wait_for(has_exit_desc, left(), interval=0.3, what="client has the exit's descriptor")
            wait_for(fetch_works, left(), interval=0.5, what="a fetch through the client's SOCKS port")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None

    def raise_if_down(self) -> None:
        """NetworkDown if the watchdog saw a foreign socket or a tor we run has exited."""
        if self.violations:
            raise NetworkDown("tor reached outside 127.0.0.0/8:\n" + "\n".join(self.violations))
        for n in self.all_nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise NetworkDown(f"tor {n.name} exited ({n.proc.returncode}):\n{n.log_tail()}")

    def diagnostics(self) -> str:
        parts = []
        for n in self.all_nodes:
            parts.append(f"--- {n.name} (pid {n.pid}) ---\n{n.log_tail(8)}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every tor started here (by pid) and the HTTP target. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._watch_stop.set()
        for node in self.all_nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.all_nodes:
            node.stop()
        if self.http is not None:
            self.http.stop()
            self.http = None

    # -- safety
    def check_loopback(self) -> None:
        bad = foreign_sockets(set(self.pids))
        if bad:
            self.violations.extend(bad)
            for n in self.all_nodes:
                n.kill()
            raise NetworkDown("tor reached outside 127.0.0.0/8, all tors killed:\n" + "\n".join(bad))

    def _watchdog(self) -> None:
        while not self._watch_stop.wait(1.0):
            try:
                self.check_loopback()
            except NetworkDown:
                return
            except Exception:  # noqa: BLE001 - ss hiccup: try again next second
                continue

    # -- traffic
    def fetch(self, path: str = "/blob", timeout: float = 30) -> bytes:
        return http_get_via_socks(self.client.socks_port, self.http.port, path, timeout=timeout)

    def open_stream(self, timeout: float = 15) -> socket.socket:
        """A stream through the client to the HTTP target, held open idle until closed."""
        return socks_connect(self.client.socks_port, "127.0.0.1", self.http.port, timeout=timeout)

    def rss_mb(self) -> float:
        return sum(n.rss_kb() for n in self.all_nodes if n.proc is not None) / 1024


# ------------------------------------------------------------------------ fixture

@pytest.fixture(scope="session")
def tornet(tmp_path_factory):
    """The private Tor network, started once per session, stopped at the end (also on failure)."""
    import shutil
    for tool in ("tor", "tor-gencert", "ss"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: run the README's test command (tests/run)")
    net = TorNet(tmp_path_factory.mktemp("tornet"))
    atexit.register(net.stop)
    try:
        net.start()
    except BaseException:
        net.stop()
        raise
    try:
        yield net
        net.check_loopback()
    finally:
        net.stop()


@pytest.fixture
def tornet_on_loopback(tornet):
    """Use in every tornet test (pytest.mark.usefixtures): aborts the whole session, before and
    after the test, once the watchdog saw a tor socket outside 127.0.0.0/8."""
    if tornet.violations:
        pytest.exit("a tor reached outside 127.0.0.0/8:\n" + "\n".join(tornet.violations), returncode=3)
    yield
    if tornet.violations:
        pytest.exit("a tor reached outside 127.0.0.0/8:\n" + "\n".join(tornet.violations), returncode=3)
