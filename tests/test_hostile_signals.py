"""Hostile tier: signals, against the real daemon process.

SIGHUP, SIGINT and SIGTERM stop it cleanly (exit 0, the health file says it stopped, the waiting
points kept in BUFFER_DIR); SIGUSR1 and SIGUSR2 log a status line and it goes on; a second SIGTERM
shortly after the first, and status signals while its log pipe is full, change nothing of that.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import leakcheck
from hostile_peers import FakeControlPort, core_answer
from support import DAEMON, Daemon, wait_for
from tor2influxdb2.sinks.buffer import SqliteBuffer

pytestmark = pytest.mark.hostile

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux), in fcntl only from Python 3.10 on some builds


def env_for(tmp_path: Path, tor_hosts: str, **extra) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {"TOR_HOSTS": tor_hosts, "INFLUX_URL": "http://127.0.0.1:1", "INFLUX_ORGANIZATION": "org",
           "INFLUX_BUCKET": "bucket", "INFLUX_TOKEN": "hostile-signals-token-c0c0", "RUN_EVERY_SECONDS": "1",
           "TOR_TIMEOUT": "0.8", "INFLUX_TIMEOUT": "2", "VERBOSE": "true",
           "HEALTHCHECK_FILE": str(tmp_path / "health"), "BUFFER_DIR": str(tmp_path / "buffer")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def control():
    port = FakeControlPort({"GETINFO": core_answer()})
    yield port
    port.close()


def kept_points(tmp_path: Path) -> int:
    buffer = SqliteBuffer(str(tmp_path / "buffer"), 10**6)
    try:
        return len(buffer)
    finally:
        buffer.close()


def assert_stopped_cleanly(daemon: Daemon, rc: int, tmp_path: Path, what: str) -> None:
    assert rc == 0, (what, rc, daemon.output[-2000:])
    assert "Traceback" not in daemon.output and "Logging error" not in daemon.output, (what, daemon.output[-3000:])
    health = (tmp_path / "health").read_text()
    assert re.fullmatch(r"FAILED \d+ stopped\n", health), (what, health)
    cycles = len(re.findall(r"cycle \d+ done in [\d.]+ s: 1/1 hosts ok", daemon.output))
    assert kept_points(tmp_path) == 3 * cycles, what  # InfluxDB was unreachable: every point is kept
    assert "points not delivered: kept in BUFFER_DIR for the next start" in daemon.output, what


def test_sighup_sigint_and_sigterm_stop_cleanly_and_keep_the_buffer(tmp_path, control):
    daemons = {}
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        daemons[sig] = Daemon(env_for(tmp_path / sig.name, control.entry(f"stop-{sig.name}"))).start()
    for daemon in daemons.values():
        daemon.wait_for_line(r"cycle 2 done")
    for sig, daemon in daemons.items():
        rc = daemon.stop(sig)
        assert f"received {sig.name}: stopping" in daemon.output
        assert_stopped_cleanly(daemon, rc, tmp_path / sig.name, sig.name)


def test_sigusr1_and_sigusr2_log_a_status_line_and_it_goes_on(tmp_path, control):
    daemon = Daemon(env_for(tmp_path, control.entry("status"))).start()
    try:
        daemon.wait_for_line(r"cycle 1 done")
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            daemon.proc.send_signal(sig)
            daemon.wait_for_line(rf"INFO received {sig.name}: cycle \d+ \d+ s ago: 1/1 tors answered")
        cycles = len(daemon.wait_for_line(r"cycle \d+ done"))
        daemon.wait_for_line(r"cycle \d+ done", count=cycles + 2)  # it goes on polling
    finally:
        rc = daemon.stop()
    assert_stopped_cleanly(daemon, rc, tmp_path, "after SIGUSR1 and SIGUSR2")


@pytest.mark.parametrize("delay", [0.010, 0.025, 0.050, 0.075, 0.100])
def test_a_second_sigterm_soon_after_the_first_still_stops_cleanly(tmp_path, control, delay):
    daemon = Daemon(env_for(tmp_path, control.entry(f"twice-{int(delay * 1000)}"))).start()
    daemon.wait_for_line(r"cycle 2 done")
    daemon.proc.send_signal(signal.SIGTERM)
    time.sleep(delay)
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
    rc = daemon.stop()
    assert_stopped_cleanly(daemon, rc, tmp_path, f"second SIGTERM after {delay * 1000:.0f} ms")


def test_status_and_stop_signals_while_the_log_pipe_is_full(tmp_path, control):
    """The daemon's stderr goes to a pipe nobody reads for a while (a slow log collector): a
    signal handler that writes to the log then interrupts a write to the same stream. SIGUSR1s,
    then a SIGTERM, then another: the daemon neither dies nor prints a traceback, and stops
    cleanly once the pipe is read again."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env_for(tmp_path, control.entry("full-pipe"))}
    proc = subprocess.Popen([sys.executable, str(DAEMON)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, 4096)  # one page: full after ~50 log lines
    out: list[bytes] = []
    leakcheck.output(f"the log of a daemon (pid {proc.pid})", lambda: b"".join(out).decode(errors="replace"),
                     leakcheck.env_secrets(env))
    try:
        wait_for(lambda: (tmp_path / "health").exists() and (tmp_path / "health").read_text().startswith("OK"),
                 10, what="a first cycle")
        for _ in range(200):  # ~70 bytes of log each: the pipe is full after a quarter of them
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.002)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    finally:
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(5)
        reader.join(5)
    text = b"".join(out).decode(errors="replace")
    assert alive, f"the daemon died of its status signals:\n{text[-3000:]}"
    assert rc == 0, (rc, text[-3000:])
    assert "Traceback" not in text and "Logging error" not in text, text[-3000:]
    assert "received SIGUSR1: cycle" in text and "received SIGTERM: stopping" in text
    assert re.fullmatch(r"FAILED \d+ stopped\n", (tmp_path / "health").read_text())
