"""The MetricsPort beside the control port in the daemon: both in one cycle, same tags, a failing or
hostile MetricsPort costs the control port's points nothing, is reported, backs off; -t and --schema."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from metricsport_standin import StandIn, tor_like
from support import DAEMON, Daemon, run_daemon, wait_for
from tor2influxdb2.daemon import Pieces
from tor2influxdb2.model import Sample, make_tags
from tor2influxdb2.poller import PollResult
from tor2influxdb2.sinks.lineprotocol import LineEncoder
from tor2influxdb2.targets import parse_tor_host

BODY = (Path(__file__).parent / "data" / "metricsport" / "relay-exit-lead-capture.prom").read_bytes()


@pytest.fixture
def standins():
    made = []

    def make(behave):
        made.append(StandIn(behave))
        return made[-1]
    yield make
    for s in made:
        s.close()


def env_for(tmp_path, victoria, tor, name, metrics_port, **extra):
    return {"TOR_HOSTS": tor.entry(name), "TOR_METRICS_PORTS": f"{name}=127.0.0.1:{metrics_port}",
            "INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b", "INFLUX_TOKEN": "tok-mp",
            "RUN_EVERY_SECONDS": "1", "TOR_TIMEOUT": "0.8", "VERBOSE": "true",
            "HEALTHCHECK_FILE": str(tmp_path / "health"), **extra}


def body_value(family_line: str) -> float:
    return float(next(line for line in BODY.decode().splitlines() if line.startswith(family_line)).rsplit(" ", 1)[1])


def test_both_sources_in_one_cycle_with_the_same_tags(tmp_path, victoria, make_tor, standins):
    tor = make_tor(auth="none")
    metrics = standins(tor_like(BODY, keep_open=False))
    daemon = Daemon(env_for(tmp_path, victoria, tor, "mp-both", metrics.port)).start()
    try:
        daemon.wait_for_line(r"cycle 3 done in [\d.]+ s: 1/1 hosts ok")
        wait_for(lambda: (tmp_path / "health").read_text().startswith("OK"), 5, what="OK")
    finally:
        assert daemon.stop() == 0
    with tor.controller() as c:
        version = c.get_info("version").split()[0]
    key = 'tor_relay_load_onionskins_total{type="ntor_v3",action="processed"}'
    selector = '{__name__="tor_relay_load_onionskins_total_counter",host="mp-both",type="ntor_v3",action="processed"}'
    [series] = wait_for(lambda: (f := victoria.export(selector)) and len(f[0]["values"]) >= 3 and f, 10,
                        what="3 points of the ntor_v3 series")
    assert series["metric"]["version"] == version and series["metric"]["service"] == "tor"
    assert set(series["values"]) == {body_value(key)}
    traffic = wait_for(lambda: len(t := victoria.samples("traffic_read", host="mp-both")) >= 3 and t, 10,
                       what="3 traffic points")
    assert {ts for ts, _ in traffic} and len(traffic) == len(series["values"])  # one of each per cycle
    assert metrics.connections >= 3  # a new connection per scrape, as tor answers one request each
    # the connections filter of the default families: OR connections, opened, only
    conns = victoria.export('{__name__="tor_relay_connections_gauge",host="mp-both"}')
    assert conns and {(s["metric"]["type"], s["metric"]["state"]) for s in conns} == {("OR", "opened")}


def hang(server, conn):
    server.read_request(conn)
    server.hold(conn)


def garbage(server, conn):
    server.read_request(conn)
    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n" + bytes(range(256)) * 10)


def fifty_megabytes(server, conn):
    server.read_request(conn)
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    line = b'tor_relay_load_onionskins_total{type="ntor_v3",action="processed"} 1\n'
    for _ in range(50 * 1024 * 1024 // len(line) // 1000):
        conn.sendall(line * 1000)


@pytest.mark.parametrize("behave, needle", [
    (None, "MetricsPort: connection refused"), (hang, "MetricsPort: no answer within 0.8 s"),
    (garbage, "MetricsPort:"), (fifty_megabytes, "MetricsPort: the page is larger than"),
])
def test_a_failing_metricsport_costs_the_control_port_nothing(tmp_path, victoria, make_tor, standins, behave, needle):
    tor = make_tor(auth="none")
    if behave is None:
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    else:
        port = standins(behave).port
    name = f"mp-fail-{re.sub(r'[^a-z]', '', needle[13:30])}"
    daemon = Daemon(env_for(tmp_path, victoria, tor, name, port)).start()
    try:
        daemon.wait_for_line(r"cycle 4 done in [\d.]+ s: 1/1 hosts ok")
        health = (tmp_path / "health").read_text()
        pid = daemon.proc.pid
        peak_mib = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
    finally:
        assert daemon.stop() == 0
    wait_for(lambda: len(victoria.samples("traffic_read", host=name)) >= 4, 10,
             what="every cycle's control-port points")
    assert health.startswith("FAILED") and needle in health, health
    warnings = [line for line in daemon.output.splitlines() if needle in line and "WARNING" in line]
    assert 1 <= len(warnings) <= 2, daemon.output  # once per change (the backoff note may follow)
    assert peak_mib < 60, peak_mib


def test_test_mode_prints_the_metricsport_points_and_schema_lists_every_family(make_tor, standins):
    tor = make_tor(auth="none")
    metrics = standins(tor_like(BODY, keep_open=False))
    r = run_daemon({"TOR_HOSTS": tor.entry("mp-t"), "TOR_METRICS_PORTS": f"mp-t=127.0.0.1:{metrics.port}"}, "-t")
    assert r.returncode == 0, r.stderr + r.stdout
    assert 'tor_relay_load_onionskins_total{action="processed",type="ntor_v3"} counter=36' in r.stdout
    schema = json.loads(run_daemon({}, "--schema").stdout)
    families = {m["measurement"] for m in schema["measurements"] if m["source"] == "metricsport"}
    served = {line.split()[2] for line in BODY.decode().splitlines() if line.startswith("# TYPE")}
    assert served <= families


def test_metricsport_configuration_errors_are_reported_with_the_others():
    r = run_daemon({"TOR_HOSTS": "127.0.0.1:9051::a", "TOR_METRICS_PORTS": "a=127.0.0.1:9035,b=127.0.0.1:1,a=x:y",
                    "ONION_LABEL": "show", "RUN_EVERY_SECONDS": "0"}, "-t")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for needle in ("TOR_METRICS_PORTS entry 2", "TOR_METRICS_PORTS entry 3", "ONION_LABEL", "RUN_EVERY_SECONDS"):
        assert needle in r.stderr, r.stderr


def test_pieces_hand_over_a_requests_worth_while_the_cycle_runs_and_the_rest_at_its_end():
    """The poll thread encodes each tor's samples and drops them; the main thread takes the lines
    once a request's worth waits (during the cycle), and all that is left at its end: every line
    once, in the order the tors answered."""
    pieces = Pieces(LineEncoder(), piece=10)
    results = []
    for tor in range(5):
        samples = [Sample("m", make_tags({"host": f"t{tor}"}), {"v": i}, 1000 + tor) for i in range(4)]
        results.append(PollResult(parse_tor_host(f"127.0.0.1:9051:t{tor}"), f"t{tor}", samples))
    taken = []
    for result in results:
        pieces.add(result)
        assert result.samples == []  # encoded, then dropped
        taken.append(pieces.take())
    assert [len(lines) for lines, _ in taken] == [0, 0, 12, 0, 0]  # at 10 or more: a piece
    rest = pieces.take(everything=True)
    assert len(rest[0]) == 8 and pieces.take(everything=True) == ([], [])
    lines = taken[2][0] + rest[0]
    assert lines == [f"m,host=t{t} v={i}i {1000 + t}" for t in range(5) for i in range(4)]
    assert taken[2][1] + rest[1] == [1000 + t for t in range(5) for _ in range(4)]


def test_a_fleets_points_of_every_cycle_arrive_once_though_handed_over_in_pieces(tmp_path, make_tor, standins):
    """200 tors with a MetricsPort: about 12,000 points a cycle, more than a request's worth, so
    they leave in pieces while the cycle runs. On stdout (--line-protocol) the lines are as many as
    the cycles' logs count, none is written twice, and every tor has points of both sources."""
    tor = make_tor(auth="none")
    metrics = standins(tor_like(BODY, keep_open=False))
    names = [f"fleet{i:03d}" for i in range(200)]
    env = {"PATH": "/usr/bin:/bin", "TOR_HOSTS": ",".join(tor.entry(n) for n in names),
           "TOR_METRICS_PORTS": ",".join(f"{n}=127.0.0.1:{metrics.port}" for n in names),
           "RUN_EVERY_SECONDS": "2", "TOR_TIMEOUT": "1.5", "VERBOSE": "true"}
    log = tmp_path / "stderr"
    with open(log, "w") as errors:
        proc = subprocess.Popen([sys.executable, str(DAEMON), "--line-protocol"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=errors)
    out_lines: list[str] = []
    reader = threading.Thread(target=lambda: out_lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: log.read_text().count(" done in ") >= 4, 60, what="4 cycles")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        reader.join(5)
    err = log.read_text()
    assert proc.returncode == 0, err[-2000:]
    counted = [int(m.group(1)) for m in re.finditer(r"cycle \d+ done in [\d.]+ s: \d+/\d+ hosts ok, (\d+) points", err)]
    assert len(counted) >= 4 and max(counted) > 5000  # more than one request's worth: handed over in pieces
    assert sum(counted) == len(out_lines)  # none lost
    assert len(set(out_lines)) == len(out_lines)  # none twice (each cycle has its own time stamps)
    exit_flag = {line.split(",host=", 1)[1].split(",", 1)[0] for line in out_lines
                 if line.startswith("tor_relay_flag,") and ",type=Exit" in line}
    traffic = {line.split(",host=", 1)[1].split(",", 1)[0] for line in out_lines if line.startswith("traffic,")}
    assert exit_flag == traffic == set(names)
