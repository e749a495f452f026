"""--line-protocol, for Telegraf's inputs.execd: each cycle's points on stdout, one line each, flushed
per cycle, logs on stderr; the same points the InfluxDB sink writes; no InfluxDB needed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request

from influx_standin import parse_point
from support import DAEMON, wait_for


def start(env, *args):
    full = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.Popen([sys.executable, str(DAEMON), "--line-protocol", *args], env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def read_lines(proc, count, timeout=20):
    lines, done = [], threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if len(lines) >= count:
                done.set()
                return
    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), lines
    return lines


def test_stdout_is_line_protocol_victoriametrics_accepts_unchanged(make_tor, victoria, tmp_path):
    tor = make_tor(auth="password")
    proc = start({"TOR_HOSTS": tor.entry("lp-host"), "RUN_EVERY_SECONDS": "1",
                  "METRIC_SETS": "core,status,relay,accounting,guards,bandwidth",
                  "HEALTHCHECK_FILE": str(tmp_path / "health")})
    try:
        lines = read_lines(proc, 18)  # three cycles of a client: 6 measurements each
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    points = [parse_point(line, 0, "ms") for line in lines]  # InfluxDB's own scanner, ported
    assert {p.measurement for p in points} == {"traffic", "connections", "handshakes", "status", "accounting",
                                               "guards", "bandwidth"}  # every set a client writes
    assert all(p.tags["host"] == "lp-host" for p in points)
    assert "INFO" in err and "tor2influxdb2" in err  # the logs went to stderr
    assert tor.password not in err
    body = "\n".join(lines).encode()
    request = urllib.request.Request(f"{victoria.url}/api/v2/write?org=o&bucket=b&precision=ms", data=body,
                                     method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 204
    stored = wait_for(lambda: len(s := victoria.samples("traffic_read", host="lp-host")) >= 3 and s, 10, what="points")
    read_values = [p.fields["read"] for p in points if p.measurement == "traffic"]
    assert [v for _, v in stored] == read_values


def test_needs_no_influxdb_nor_health_file_and_stops_when_stdout_closes(make_tor):
    tor = make_tor(auth="none")
    proc = start({"TOR_HOSTS": tor.entry("lp-pipe"), "RUN_EVERY_SECONDS": "1"})
    read_lines(proc, 3)
    proc.stdout.close()  # Telegraf went away
    started = time.monotonic()
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5
    err = proc.stderr.read()
    assert "stdout was closed by its reader: stopping" in err and "Traceback" not in err
