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

The session-scoped fixture ``tornet`` is defined here; a test module imports it
(``from tornet import tornet``) and marks its tests ``@pytest.mark.tornet``.
"""

from __future__ import annotations

import atexit
import ctypes
import http.server
import ipaddress
import os
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
from support import TOR_BIN, free_port, hash_password, port_open, stop_process, wait_for

PASSWORD = "tornet-pw"
leakcheck.secret(PASSWORD)
BODY_SIZE = 2 * 1024 * 1024
BOOTSTRAP_TIMEOUT = 120  # measured 10-16 s here; generous for loaded CI machines

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the tor when the thread that started it exits."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - best effort; stop()/atexit remain
        pass


# ------------------------------------------------------------------------ nodes

class Node:
    """One tor of the network. role: "authority", "middle", "exit" or "client"."""

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
        self.relay = role != "client"
        self.or_port = net.port() if self.relay else None
        self.dir_port = net.port() if role == "authority" else None
        self.metrics_port = net.port() if self.relay else None
        self.socks_port = net.port() if role == "client" else None
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
                f"SocksPort 127.0.0.1:{self.socks_port}",
                "ClientOnly 1",
                # Required: with microdescriptors an exit whose policy accepts only
                # 127.0.0.1 looks like it rejects everything; the client sticks at 95%.
                "UseMicrodescriptors 0",
            ]
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
        """The MetricsPort page (Prometheus text) of a relay."""
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
    """stdlib HTTP server on 127.0.0.1: /blob (BODY_SIZE known bytes), /small.

    A connection that sends nothing just stays open (one idle thread each), which
    is how the tests hold streams open through the client.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        blob = (bytes(range(256)) * (BODY_SIZE // 256 + 1))[:BODY_SIZE]
        self.bodies = {"/blob": blob, "/small": b"hello through tor\n"}
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


# ------------------------------------------------------------------------ SOCKS

def socks_connect(socks_port: int, host: str, port: int, timeout: float = 15) -> socket.socket:
    """A socket connected through tor's SOCKS5 port to host:port (an IPv4 address)."""
    s = socket.create_connection(("127.0.0.1", socks_port), timeout=timeout)
    try:
        s.sendall(b"\x05\x01\x00")
        if _recv_exact(s, 2) != b"\x05\x00":
            raise ConnectionError("SOCKS5: no-auth method refused")
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack(">H", port))
        reply = _recv_exact(s, 10)  # IPv4 bound address in the reply
        if reply[1] != 0:
            raise ConnectionError(f"SOCKS5 connect failed, reply code {reply[1]}")
        return s
    except BaseException:
        s.close()
        raise


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("SOCKS5: connection closed")
        buf += chunk
    return buf


def http_get_via_socks(socks_port: int, port: int, path: str, timeout: float = 30) -> bytes:
    """GET http://127.0.0.1:port/path through tor; the body (status must be 200)."""
    with socks_connect(socks_port, "127.0.0.1", port, timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
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

class NetworkDown(BaseException):
    """A tor of the network died or reached outside loopback: waiting on is pointless.

    A BaseException so that support.wait_for (which retries on Exception) lets it through.
    """


class TorNet:
    """3 authorities + middle + exit + client, all on 127.0.0.1. start() returns when usable."""

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
        self.http: HttpTarget | None = None
        self.timings: dict[str, float] = {}
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._stopped = False

    def port(self) -> int:
        """A free port on 127.0.0.1, distinct from every port handed out before."""
        while True:
            p = free_port()
            if p not in self._ports:
                self._ports.add(p)
                return p

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

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
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise NetworkDown(f"tor {n.name} exited ({n.proc.returncode}):\n{n.log_tail()}")

    def diagnostics(self) -> str:
        parts = []
        for n in self.nodes:
            parts.append(f"--- {n.name} (pid {n.pid}) ---\n{n.log_tail(8)}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every tor started here (by pid) and the HTTP target. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._watch_stop.set()
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()
        if self.http is not None:
            self.http.stop()
            self.http = None

    # -- safety
    def check_loopback(self) -> None:
        bad = foreign_sockets(set(self.pids))
        if bad:
            self.violations.extend(bad)
            for n in self.nodes:
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
        return sum(n.rss_kb() for n in self.nodes if n.proc is not None) / 1024


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
