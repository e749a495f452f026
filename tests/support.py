"""Real processes for the tests: tor, VictoriaMetrics and the daemon itself.

Every helper here starts a real program on loopback, waits until it answers
(polling, never a bare sleep), and stops only the process it started, by pid.
Every tor started here has ``DisableNetwork 1`` and ``SocksPort 0``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import leakcheck

ROOT = Path(__file__).resolve().parent.parent
DAEMON = ROOT / "tor_to_influxdb2.py"
TOR_BIN = shutil.which("tor") or "/usr/sbin/tor"
VM_BIN = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"


class WaitTimeout(AssertionError):
    """wait_for() ran out of time: the condition a test waited for never held."""


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Call predicate() until it returns a truthy value; return that value.

    Raises WaitTimeout (an AssertionError, so pytest reports it as a failure)
    naming `what` when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing waited for may not answer yet
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process we started, SIGKILL it if it lingers, reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


# --------------------------------------------------------------------------- tor

def hash_password(password: str) -> str:
    """HashedControlPassword value for `password`, computed by tor itself."""
    out = subprocess.run([TOR_BIN, "--quiet", "--hash-password", password],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


class Tor:
    """One real tor with DisableNetwork 1, reachable on its control port or socket.

    auth: "password", "cookie" (CookieAuthentication: tor offers COOKIE and
    SAFECOOKIE), "none". control: "tcp4" (127.0.0.1), "tcp6" ([::1]) or "unix".
    The control port number stays the same across stop()/start(), so a test can
    restart tor "on the same port".
    """

    def __init__(self, workdir: Path, auth: str = "password", control: str = "tcp4",
                 password: str = "s3cret:with:colons", extra: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)
        self.datadir = self.workdir / "data"
        self.auth, self.control, self.password = auth, control, password
        leakcheck.secret(password)
        self.host = {"tcp4": "127.0.0.1", "tcp6": "::1", "unix": None}[control]
        self.port = free_port(socket.AF_INET6, "::1") if control == "tcp6" else (
            free_port() if control == "tcp4" else None)
        self.socket_path = self.workdir / "control.sock" if control == "unix" else None
        self.cookie_path = self.datadir / "control_auth_cookie"
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "tor.log"

    def torrc(self) -> str:
        lines = [
            "DisableNetwork 1",
            "SocksPort 0",
            f"DataDirectory {self.datadir}",
            f"Log notice file {self.log_path}",
            "AvoidDiskWrites 1",
        ]
        if self.control == "tcp4":
            lines.append(f"ControlPort 127.0.0.1:{self.port}")
        elif self.control == "tcp6":
            lines.append(f"ControlPort [::1]:{self.port}")
        else:
            lines.append(f"ControlSocket {self.socket_path}")
            lines.append("ControlPort 0")
        if self.auth == "password":
            lines.append(f"HashedControlPassword {hash_password(self.password)}")
        elif self.auth == "cookie":
            lines.append("CookieAuthentication 1")
            lines.append(f"CookieAuthFile {self.cookie_path}")
        lines.extend(self.extra)
        return "\n".join(lines) + "\n"

    @property
    def entry_address(self) -> str:
        """The HOST:PORT (or unix:PATH) part of a TOR_HOSTS entry for this tor."""
        if self.control == "unix":
            return f"unix:{self.socket_path}"
        if self.control == "tcp6":
            return f"[::1]:{self.port}"
        return f"127.0.0.1:{self.port}"

    def entry(self, name: str, host: str | None = None) -> str:
        """A TOR_HOSTS entry polling this tor under `name` (password included if any)."""
        address = self.entry_address if host is None else f"{host}:{self.port}"
        if self.auth == "password":
            return f"{address}:{self.password}:{name}"
        return f"{address}:{name}"

    def start(self, timeout: float = 30) -> "Tor":
        self.datadir.mkdir(exist_ok=True)
        os.chmod(self.datadir, 0o700)
        torrc = self.workdir / "torrc"
        torrc.write_text(self.torrc())
        empty = self.workdir / "empty-defaults"
        empty.write_text("")
        self.proc = subprocess.Popen(
            [TOR_BIN, "--defaults-torrc", str(empty), "-f", str(torrc)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ready, timeout, what=f"tor control at {self.entry_address}")
        return self

    def ready(self) -> bool:
        """tor answers on its control port (a freshly started tor accepts connections up to a second or
        two before it answers them: a test must not count that against the daemon's timeout)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"tor exited: {self.log_tail()}")
        if self.control == "unix":
            if not self.socket_path.exists():
                return False
            sock = socket.socket(socket.AF_UNIX)
            address = str(self.socket_path)
        else:
            sock = socket.socket(socket.AF_INET6 if self.control == "tcp6" else socket.AF_INET)
            address = (self.host, self.port)
        with sock:
            sock.settimeout(0.5)
            try:
                sock.connect(address)
                sock.sendall(b"PROTOCOLINFO 1\r\n")
                answered = sock.recv(64).startswith(b"250")
            except OSError:
                return False
        if answered and self.auth == "cookie":
            return self.cookie_path.exists()
        return answered

    def controller(self):
        """An authenticated stem Controller, for a test to ask tor what it reports."""
        import stem.control
        if self.control == "unix":
            c = stem.control.Controller.from_socket_file(str(self.socket_path))
        else:
            import stem.socket
            sock = stem.socket.ControlPort(connect=False)
            sock.address, sock.port = self.host, self.port
            if self.control == "tcp6":
                sock._make_socket = lambda: socket.create_connection(("::1", self.port))
            sock.connect()
            c = stem.control.Controller(sock)
        c.authenticate(password=self.password if self.auth == "password" else None)
        return c

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return "(no log)"


# ------------------------------------------------------------------ VictoriaMetrics

class VictoriaMetrics:
    """A real VictoriaMetrics single-node server on 127.0.0.1.

    Accepts InfluxDB v2 writes at `url` + /api/v2/write. `export()` forces a
    flush and reads raw samples back through /api/v1/export. stop()/start()
    keep the port and the data, so a test can take it down for an outage.
    `extra_args` are appended to its command line (e.g. the -tls flags).
    """

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.extra_args = tuple(extra_args)
        self.datadir = self.workdir / "vmdata"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "VictoriaMetrics":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "vm.log", "ab")
        self.proc = subprocess.Popen(
            [VM_BIN, f"-httpListenAddr=127.0.0.1:{self.port}",
             f"-storageDataPath={self.datadir}", "-retentionPeriod=100y",
             "-search.latencyOffset=0s", "-loggerLevel=WARN", *self.extra_args],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._get("/health") == b"OK", timeout, what="VictoriaMetrics /health")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            self.log.close()

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return r.read()

    def export(self, match: str = '{__name__=~".+"}') -> list[dict]:
        """Every stored series matching the selector, as VictoriaMetrics exports it:
        dicts with "metric" (labels, __name__ = measurement_field), "values", "timestamps" (ms)."""
        self._get("/internal/force_flush")
        q = urllib.parse.urlencode({"match[]": match})
        body = self._get(f"/api/v1/export?{q}").decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def samples(self, metric: str, **labels) -> list[tuple[int, float]]:
        """(timestamp_ms, value) pairs of one metric, e.g. samples("traffic_read", host="alpha")."""
        sel = ",".join([f'__name__="{metric}"'] + [f'{k}="{v}"' for k, v in labels.items()])
        out = []
        for series in self.export("{" + sel + "}"):
            out.extend(zip(series["timestamps"], series["values"]))
        return sorted(out)


# ------------------------------------------------------------------------ daemon

class Daemon:
    """tor_to_influxdb2.py run as a real subprocess, its log collected line by line."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), python: str = sys.executable,
                 cwd: Path | None = None):
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        self.args, self.python, self.cwd = args, python, cwd
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        self.proc = subprocess.Popen([self.python, str(DAEMON), *self.args], env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=self.cwd)
        leakcheck.output(f"the log of a daemon (pid {self.proc.pid})", lambda: self.output,
                         leakcheck.env_secrets(self.env))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 20, count: int = 1) -> list[re.Match]:
        """Wait until `count` log lines match the regex `pattern`; return the matches."""
        rx = re.compile(pattern)

        def found():
            with self._lock:
                hits = [m for m in map(rx.search, self.lines) if m]
            if self.proc.poll() is not None and len(hits) < count:
                self._reader.join(2)
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before /{pattern}/:\n{self.output}")
            return hits if len(hits) >= count else None

        try:
            return wait_for(found, timeout, what=f"log line /{pattern}/ x{count}")
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\n--- daemon output ---\n{self.output}") from None

    def stop(self, sig=signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc


def run_daemon(env: dict[str, str], *args: str, timeout: float = 60, python: str = sys.executable, **popen):
    """Run the daemon to completion (e.g. -t or a bad configuration); CompletedProcess."""
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    own = leakcheck.env_secrets(full_env)
    result = subprocess.run([python, str(DAEMON), *args], env=full_env, capture_output=True,
                            text=True, timeout=timeout, **popen)
    leakcheck.output(f"stdout of run_daemon {' '.join(args)}", result.stdout, own)
    leakcheck.output(f"stderr of run_daemon {' '.join(args)}", result.stderr, own)
    return result
