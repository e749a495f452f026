"""daemon and the entry point: the schedule, signals, -t, --schema, and the whole daemon against real tor
and VictoriaMetrics (values equal what tor answered, outages without a gap, kill -9, the buffer kept)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from influx_standin import InfluxStandin
from support import Daemon, free_port, run_daemon, wait_for
from tor2influxdb2.daemon import Schedule, daemon_samples, make_poller, run, schema
from tor2influxdb2.redact import Redactor
from tor2influxdb2.settings import config_from_env
from tor2influxdb2.sinks.buffer import SqliteBuffer, open_buffer

TOKEN = "sekret-token-42"


class FakeClock:
    def __init__(self, now=500.0):
        self.now = now

    def __call__(self):
        return self.now


# ---------------------------------------------------------------------------- the schedule

def test_schedule_is_fixed_rate_without_drift():
    clock = FakeClock()
    schedule = Schedule(10, clock)
    ticks = []
    for work in (0.3, 2.5, 0.01, 9.9, 1.0):
        clock.now += work           # the cycle's work
        clock.now += schedule.next_delay()
        ticks.append(clock.now)
    assert ticks == [510, 520, 530, 540, 550]


def test_overrun_skips_ticks_instead_of_bursting():
    clock = FakeClock()
    schedule = Schedule(10, clock)
    clock.now += 25                 # a cycle that took 2.5 periods
    delay = schedule.next_delay()
    assert clock.now + delay == 530 and schedule.skipped == 2
    clock.now += delay + 1
    assert clock.now + schedule.next_delay() == 540


# -------------------------------------------------------------------------- whole daemon

def daemon_env(tmp_path, victoria, tor_hosts, **extra):
    env = {"TOR_HOSTS": tor_hosts, "INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": "org",
           "INFLUX_BUCKET": "bucket", "INFLUX_TOKEN": TOKEN, "RUN_EVERY_SECONDS": "1",
           "TOR_TIMEOUT": "0.8", "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health")}
    env.update(extra)
    return env


def test_values_written_equal_what_tor_answered(tmp_path, victoria, make_tor):
    tor = make_tor(auth="password")
    before = time.time() * 1000
    daemon = Daemon(daemon_env(tmp_path, victoria, tor.entry("e2e-equal"))).start()
    try:
        daemon.wait_for_line(r"cycle 3 done")
    finally:
        assert daemon.stop() == 0
    after = time.time() * 1000
    with tor.controller() as c:
        version = c.get_info("version").split()[0]
        expected = {
            "traffic_read": int(c.get_info("traffic/read")), "traffic_written": int(c.get_info("traffic/written")),
            "handshakes_ntor_requested": int(c.get_info("stats/ntor/requested")),
            "handshakes_ntor_assigned": int(c.get_info("stats/ntor/assigned")),
            "handshakes_tap_requested": int(c.get_info("stats/tap/requested")),
            "handshakes_tap_assigned": int(c.get_info("stats/tap/assigned")),
            "connections_circuits_active": len(c.get_info("circuit-status").splitlines()),
            "connections_streams_active": len(c.get_info("stream-status").splitlines()),
        }
    labels = {"host": "e2e-equal", "service": "tor", "version": version}
    for metric, value in expected.items():
        samples = wait_for(lambda: len(s := victoria.samples(metric, **labels)) >= 3 and s, 10,
                           what=f"3 samples of {metric}")
        assert all(v == value for _, v in samples), (metric, samples)
        stamps = [ts for ts, _ in samples]
        assert all(before <= ts <= after for ts in stamps) and len(set(stamps)) == len(stamps)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        # one poll per period, stamped when tor answered (the first poll also connected and authenticated)
        assert all(800 <= g <= 1300 for g in gaps[1:]) and 400 <= gaps[0] <= 1300, gaps


def test_every_address_form_in_one_daemon(tmp_path, victoria, make_tor):
    tcp = make_tor(auth="password")
    cookie = make_tor(auth="cookie")
    v6 = make_tor(auth="password", control="tcp6")
    unix = make_tor(auth="cookie", control="unix")
    entries = [tcp.entry("form-v4"), cookie.entry("form-localhost", host="localhost"), v6.entry("form-v6"),
               unix.entry("form-unix")]
    daemon = Daemon(daemon_env(tmp_path, victoria, ",".join(entries))).start()
    try:
        daemon.wait_for_line(r"cycle 2 done in [\d.]+ s: 4/4 hosts ok")
        assert (tmp_path / "health").read_text().startswith("OK ")
    finally:
        assert daemon.stop() == 0
    for name in ("form-v4", "form-localhost", "form-v6", "form-unix"):
        wait_for(lambda: victoria.samples("traffic_read", host=name), 10, what=f"points of {name}")


def test_down_host_fails_health_and_recovers(tmp_path, victoria, make_tor):
    tor = make_tor(auth="password")
    other = make_tor(auth="none")
    env = daemon_env(tmp_path, victoria, f"{tor.entry('flappy')},{other.entry('steady')}")
    daemon = Daemon(env).start()
    health = tmp_path / "health"
    try:
        daemon.wait_for_line(r"2/2 hosts ok")
        tor.stop()
        wait_for(lambda: health.read_text().startswith("FAILED") and "host flappy" in health.read_text(), 5,
                 what="FAILED naming flappy")
        cycles = len(daemon.wait_for_line(r"cycle \d+ done"))
        daemon.wait_for_line(r"1/2 hosts ok", count=2)
        tor.start()
        restarted = time.monotonic()
        daemon.wait_for_line(r"flappy \(127.0.0.1:\d+\): polled again")
        assert time.monotonic() - restarted < 2.5  # within about one period of being back
        wait_for(lambda: health.read_text().startswith("OK"), 3, what="OK again")
        assert len(daemon.wait_for_line(r"cycle \d+ done")) > cycles
    finally:
        assert daemon.stop() == 0
    steady = victoria.samples("traffic_read", host="steady")
    gaps = [b - a for (a, _), (b, _) in zip(steady, steady[1:])]
    assert gaps and max(gaps) < 1500  # the other host never missed a cycle


def test_sigterm_and_sigint_stop_within_two_seconds(tmp_path, victoria, make_tor):
    tor = make_tor(auth="password")
    for sig in (signal.SIGTERM, signal.SIGINT):
        daemon = Daemon(daemon_env(tmp_path, victoria, tor.entry("stopper"), RUN_EVERY_SECONDS="5",
                                   TOR_TIMEOUT="4")).start()
        daemon.wait_for_line(r"cycle 1 done")
        started = time.monotonic()
        assert daemon.stop(sig) == 0
        assert time.monotonic() - started < 2
        assert "stopping" in daemon.output and "Traceback" not in daemon.output
        assert (tmp_path / "health").read_text().startswith("FAILED")


def test_logs_have_time_and_level_and_never_secrets(tmp_path, victoria, make_tor):
    tor = make_tor(auth="password", password="pass:with:colons-XYZ")
    env = daemon_env(tmp_path, victoria, tor.entry("secretive") + ",127.0.0.1:1:wrong-pw-ABC:refused")
    daemon = Daemon(env).start()
    try:
        daemon.wait_for_line(r"cycle 2 done")
    finally:
        daemon.stop()
    out = daemon.output
    for secret in ("pass:with:colons-XYZ", "wrong-pw-ABC", "sekret-token-42"):
        assert secret not in out
    assert "secretive at 127.0.0.1" in out and "password ****" in out
    assert "refused (127.0.0.1:1): connection refused" in out
    for line in out.splitlines():
        assert __import__("re").match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (DEBUG|INFO|WARNING|ERROR) ", line), line


def test_the_log_filter_masks_whatever_slips_through():
    import io
    import logging
    from tor2influxdb2.logs import LOG, setup_logging
    from tor2influxdb2.redact import REDACTOR
    REDACTOR.add("hunter2-pass", "tok-123")
    try:
        stream = io.StringIO()
        setup_logging(True, stream=stream)
        LOG.error("oops %s and %s", "hunter2-pass", "tok-123")
        logging.getLogger("stem").error("Sent to tor: AUTHENTICATE \"hunter2-pass\"")
        LOG.error("repr %r", "hunter2-pass\n")
        text = stream.getvalue()
    finally:
        REDACTOR.clear()
    assert "hunter2-pass" not in text and "tok-123" not in text and text.count("****") == 4


def test_unwritable_health_file_is_a_clear_error(tmp_path, victoria):
    env = daemon_env(tmp_path, victoria, "127.0.0.1:1:x", HEALTHCHECK_FILE="/nonexistent-dir/health")
    r = run_daemon(env, timeout=20)
    assert r.returncode == 2
    assert "HEALTHCHECK_FILE: cannot use the directory /nonexistent-dir: No such file or directory" in r.stderr
    assert "Traceback" not in r.stderr


def test_test_mode_needs_only_tor_hosts_and_prints_no_password(make_tor):
    tor = make_tor(auth="password", password="do-not-print-me")
    r = run_daemon({"TOR_HOSTS": tor.entry("rpi3")}, "-t")
    assert r.returncode == 0, r.stderr
    for title in ("Stats for host", "Tags:", "Traffic measurement:", "Connections measurement:",
                  "Handshakes measurement:"):
        assert title in r.stdout
    assert "do-not-print-me" not in r.stdout + r.stderr


def test_test_mode_reports_a_dead_host_and_exits_1():
    r = run_daemon({"TOR_HOSTS": "127.0.0.1:1::dead,127.0.0.1:1:maybe-a-password"}, "-t")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "Stats for host 127.0.0.1:1(dead): not available: connection refused" in r.stdout
    # HOST:PORT:X: X may be a password typed without its name, and is not shown until tor accepted the daemon
    assert "Stats for host 127.0.0.1:1(TOR_HOSTS entry 2): not available" in r.stdout
    assert "maybe-a-password" not in r.stdout + r.stderr


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_runs_on_other_pythons(version, make_tor, tmp_path):
    """The image uses 3.13; the daemon must run unchanged on 3.11 to 3.13 (pyenv here has them)."""
    candidates = sorted(Path(os.path.expanduser("~/.pyenv/versions")).glob(f"{version}.*/bin/python"))
    if not candidates:
        pytest.skip(f"no Python {version} on this machine")
    venv = Path(os.environ.get("T2I_VENV_ROOT", tmp_path)) / f"venv{version}"
    if not (venv / "bin/python").exists():
        import subprocess
        subprocess.run([str(candidates[-1]), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", "-r",
                        str(Path(__file__).parent.parent / "requirements.txt")], check=True)
    tor = make_tor(auth="password")
    r = run_daemon({"TOR_HOSTS": tor.entry("py" + version)}, "-t", python=str(venv / "bin/python"))
    assert r.returncode == 0 and "Traffic measurement:" in r.stdout, r.stderr


# ------------------------------------------------------------- the whole daemon, end to end

def buffered_env(tmp_path, url, tor_hosts, **extra):
    env = {"TOR_HOSTS": tor_hosts, "INFLUX_URL": url, "INFLUX_ORGANIZATION": "test-org",
           "INFLUX_BUCKET": "test-bucket", "INFLUX_TOKEN": "test-token", "RUN_EVERY_SECONDS": "1",
           "TOR_TIMEOUT": "0.8", "INFLUX_TIMEOUT": "2", "VERBOSE": "true",
           "HEALTHCHECK_FILE": str(tmp_path / "health"), "BUFFER_DIR": str(tmp_path / "buffer")}
    env.update(extra)
    return env


def assert_no_gap(samples, period_ms=1000, allowed=()):
    """Consecutive timestamps are one period apart, except inside the `allowed` (start, end) ms windows."""
    stamps = [ts for ts, _ in samples]
    for a, b in zip(stamps, stamps[1:]):
        if b - a > 1.6 * period_ms and not any(lo - 1600 <= a and b <= hi + 1600 for lo, hi in allowed):
            raise AssertionError(f"gap of {b - a} ms between {a} and {b} in {stamps}")


@pytest.fixture
def own_victoria(tmp_path):
    from support import VictoriaMetrics
    vm = VictoriaMetrics(tmp_path / "vm").start()
    yield vm
    vm.stop()


def test_victoriametrics_down_for_30_s_leaves_no_gap(tmp_path, own_victoria, make_tor):
    tor = make_tor(auth="password")
    daemon = Daemon(buffered_env(tmp_path, own_victoria.url, tor.entry("outage30"))).start()
    health = tmp_path / "health"
    try:
        daemon.wait_for_line(r"cycle 3 done")
        own_victoria.stop()
        down_at = len(daemon.wait_for_line(r"cycle \d+ done"))
        wait_for(lambda: "points waiting for InfluxDB" in health.read_text(), 8, what="FAILED for the backlog")
        assert health.read_text().startswith("FAILED")
        daemon.wait_for_line(r"cycle \d+ done", timeout=40, count=down_at + 30)  # 30 s of outage
        own_victoria.start()
        wait_for(lambda: health.read_text().startswith("OK"), 75, what="healthy again after the outage")
        assert "InfluxDB accepts writes again" in daemon.output
    finally:
        assert daemon.stop() == 0
    samples = wait_for(lambda: (s := own_victoria.samples("traffic_read", host="outage30")) and len(s) >= 35 and s,
                       10, what="all samples")
    assert_no_gap(samples)


def test_kill_9_during_an_outage_loses_only_the_seconds_it_was_down(tmp_path, own_victoria, make_tor):
    tor = make_tor(auth="password")
    env = buffered_env(tmp_path, own_victoria.url, tor.entry("killed"))
    first = Daemon(env).start()
    first.wait_for_line(r"cycle 2 done")
    own_victoria.stop()
    first.wait_for_line(r"cycle 6 done")
    killed_at = time.time() * 1000
    first.stop(signal.SIGKILL)
    second = Daemon(env).start()
    try:
        second.wait_for_line(r"\((\d+) points waiting from before\)")
        restarted_at = time.time() * 1000
        assert not second.wait_for_line(r"\((\d+) points waiting from before\)")[0].group(1) == "0"
        second.wait_for_line(r"cycle 3 done")
        own_victoria.start()
        wait_for(lambda: (tmp_path / "health").read_text().startswith("OK"), 75, what="recovery")
    finally:
        assert second.stop() == 0
    samples = wait_for(lambda: (s := own_victoria.samples("traffic_read", host="killed")) and len(s) >= 9 and s,
                       10, what="all samples")
    assert_no_gap(samples, allowed=[(killed_at, restarted_at)])
    assert samples[0][0] < killed_at - 4000  # points from before the kill are there


def test_sigterm_keeps_undelivered_points_for_the_next_start(tmp_path, standin, make_tor):
    tor = make_tor(auth="password")
    env = buffered_env(tmp_path, standin.url, tor.entry("kept"), INFLUX_TIMEOUT="10")
    standin.hang()
    daemon = Daemon(env).start()
    daemon.wait_for_line(r"cycle 3 done")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2.5
    assert "points not delivered: kept in BUFFER_DIR" in daemon.output
    buffer = SqliteBuffer(str(tmp_path / "buffer"), 10**6)
    kept = len(buffer)
    buffer.close()
    assert kept >= 9
    standin.answer(204)
    standin.clear()
    daemon = Daemon(env).start()
    try:
        standin.wait_for_lines(kept + 3, timeout=10)
    finally:
        assert daemon.stop() == 0
    stamps = sorted({int(line.rsplit(" ", 1)[1]) for line in standin.accepted_lines() if "traffic," in line})
    assert len(stamps) >= kept // 3 + 1


def test_test_mode_has_no_buffer(tmp_path, make_tor):
    tor = make_tor(auth="none")
    r = run_daemon({"TOR_HOSTS": tor.entry("t"), "BUFFER_DIR": str(tmp_path / "buf")}, "-t")
    assert r.returncode == 0 and not (tmp_path / "buf").exists()


@pytest.fixture
def standin():
    server = InfluxStandin().start()
    yield server
    server.stop()


def test_a_second_daemon_on_the_same_buffer_dir_refuses_clearly(tmp_path, standin, make_tor):
    tor = make_tor(auth="none")
    env = buffered_env(tmp_path, standin.url, tor.entry("first"))
    first = Daemon(env).start()
    try:
        first.wait_for_line(r"cycle 1 done")
        r = run_daemon({**env, "HEALTHCHECK_FILE": str(tmp_path / "health2")}, timeout=20)
    finally:
        assert first.stop() == 0
    assert r.returncode == 2 and "is in use by another tor2influxdb2" in r.stderr and "Traceback" not in r.stderr


def test_the_daemons_own_figures(tmp_path, victoria, make_tor):
    """METRIC_SETS=daemon: a point per tor and cycle (also when it fails), and one per cycle."""
    tor = make_tor(auth="none")
    env = daemon_env(tmp_path, victoria, f"{tor.entry('self-up')},127.0.0.1:1::self-down",
                     METRIC_SETS="core,daemon", INFLUX_SERVICE_TAG="selfcheck")
    daemon = Daemon(env).start()
    try:
        daemon.wait_for_line(r"cycle 3 done")
    finally:
        assert daemon.stop() == 0
    up = wait_for(lambda: len(s := victoria.samples("tor2influxdb2_up", host="self-up")) >= 3 and s, 10, what="up")
    down = victoria.samples("tor2influxdb2_up", host="self-down")
    assert {v for _, v in up} == {1} and down and {v for _, v in down} == {0}
    assert [v for _, v in victoria.samples("tor2influxdb2_failures", host="self-down")][:3] == [1, 2, 3]
    cycles = wait_for(lambda: len(s := victoria.samples("tor2influxdb2_cycle_tors_ok", service="selfcheck")) >= 3
                      and s, 10, what="cycle points")
    assert {v for _, v in cycles} == {1}
    assert {v for _, v in victoria.samples("tor2influxdb2_cycle_tors", service="selfcheck")} == {2}


def test_the_daemon_set_names_no_entry_whose_name_may_be_a_password():
    """METRIC_SETS=daemon: a point per tor and cycle, also when its poll failed, but none for a
    HOST:PORT:NAME entry whose tor never accepted the daemon; --schema says so."""
    closed = free_port()
    settings = config_from_env({"TOR_HOSTS": f"127.0.0.1:{closed}:maybe-a-password,127.0.0.1:{closed}::named",
                                "METRIC_SETS": "core,daemon"}, mode="test", redactor=Redactor())
    poller = make_poller(settings)
    try:
        results = poller.poll_all(threading.Event())
    finally:
        poller.close()
    samples = daemon_samples(settings, results, poller, 0.1, 0, 0, 0)
    assert [(s.measurement, dict(s.tags).get("host"), s.fields.get("up")) for s in samples] == [
        ("tor2influxdb2", "named", 0), ("tor2influxdb2_cycle", None, None)]
    [spec] = [m for m in schema()["measurements"] if m["measurement"] == "tor2influxdb2"]
    assert spec["description"] == ("one point per tor and cycle, also when its poll failed; none for a HOST:PORT:NAME "
                                   "entry before its tor first accepted the daemon (until then its name may be a "
                                   "password)")


def test_an_output_that_cannot_start_stops_the_others_at_once(tmp_path, caplog):
    """PROMETHEUS_LISTEN on a port in use: exit status 2 with the reason, and the InfluxDB output started
    before it stops too: its delivery thread ends and BUFFER_DIR is free for the next daemon at once."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    env = {"TOR_HOSTS": "127.0.0.1:1::t", "INFLUX_URL": f"http://127.0.0.1:{free_port()}",
           "INFLUX_ORGANIZATION": "org", "INFLUX_BUCKET": "bucket", "INFLUX_TOKEN": TOKEN,
           "BUFFER_DIR": str(tmp_path / "buffer"), "HEALTHCHECK_FILE": str(tmp_path / "health"),
           "PROMETHEUS_LISTEN": f"127.0.0.1:{port}"}
    settings = config_from_env(env, redactor=Redactor())
    before = set(threading.enumerate())
    try:
        with caplog.at_level("ERROR", logger="tor2influxdb2"):
            assert run(settings, threading.Event()) == 2
    finally:
        busy.close()
    assert f"PROMETHEUS_LISTEN: cannot listen on 127.0.0.1:{port}" in caplog.text
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive() and t.name == "delivery"] == []
    open_buffer(str(tmp_path / "buffer"), 1000, 1024 * 1024).close()  # not "in use by another tor2influxdb2"


def test_signals_as_docker_systemd_and_a_shell_send_them(tmp_path, victoria, make_tor):
    """HUP stops cleanly like TERM; USR1/USR2 log a status line and the daemon goes on; a second TERM
    10-100 ms after the first still ends with exit 0 (never by the signal)."""
    tor = make_tor(auth="none")
    env = daemon_env(tmp_path, victoria, tor.entry("signals"), BUFFER_DIR=str(tmp_path / "buffer"))
    daemon = Daemon(env).start()
    daemon.wait_for_line(r"cycle 2 done")
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        daemon.proc.send_signal(sig)
        daemon.wait_for_line(rf"received {sig.name}: cycle \d+ \d+ s ago: 1/1 tors answered, 3 points")
    daemon.wait_for_line(r"cycle 4 done")  # still polling
    assert daemon.stop(signal.SIGHUP) == 0
    assert (tmp_path / "health").read_text().startswith("FAILED") and "stopped" in (tmp_path / "health").read_text()
    for delay in (0.01, 0.03, 0.06, 0.1):
        daemon = Daemon(env).start()
        daemon.wait_for_line(r"cycle 1 done")
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(delay)  # the second signal, while the first is being handled (not an assertion)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0, (delay, daemon.output)
        assert "Traceback" not in daemon.output
