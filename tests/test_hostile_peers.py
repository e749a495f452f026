"""Hostile tier: peers that misbehave, against the real daemon process.

Control ports that send an endless line, 50 MB, garbage, binary, a reply to no question, dribble
or fall silent; control ports and HTTP servers that echo a secret back; HTTP answers InfluxDB never
gives to a write; tag values that line protocol must escape, in names, INFLUX_SERVICE_TAG and
tor's own version answer; thousands of tors against the open-file limit; memory during an outage.
A real tor beside the hostile peers must get every cycle's poll, and VictoriaMetrics must store
exactly what was meant.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import resource
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

import hostile_peers as hp
from hostile_peers import (FakeControlPort, HttpPeer, ManyControlPort, assert_not_shown, core_answer, memory_kib,
                           run_until)
from influx_standin import InfluxStandin
from support import Daemon, run_daemon, wait_for
from tor2influxdb2.sinks.buffer import SqliteBuffer

pytestmark = pytest.mark.hostile

TOKEN = "hostile-peers-token-51c8"


def env_for(tmp_path: Path, url: str, tor_hosts: str, **extra) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {"TOR_HOSTS": tor_hosts, "INFLUX_URL": url, "INFLUX_ORGANIZATION": "org", "INFLUX_BUCKET": "bucket",
           "INFLUX_TOKEN": TOKEN, "RUN_EVERY_SECONDS": "1", "TOR_TIMEOUT": "0.8", "INFLUX_TIMEOUT": "2",
           "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health")}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def cycles_done(daemon: Daemon) -> int:
    return len(re.findall(r"DEBUG cycle \d+ done", daemon.output))


@pytest.fixture
def peers():
    made = []

    def make(obj):
        made.append(obj)
        return obj
    yield make
    for obj in made:
        obj.close()


# ------------------------------------------------------------------ misbehaving control ports

def test_hostile_control_ports_cost_memory_and_the_healthy_tor_nothing(tmp_path, victoria, make_tor, peers):
    """Eight hostile control ports beside a real tor: the real tor is polled every cycle, each
    hostile port's failure is logged once and backed off, and the daemon's peak memory (VmHWM) is
    that of a daemon polling the real tor alone, within a few MiB (a 50 MB reply is never held)."""
    tor = make_tor(auth="password")
    hostile = {name: peers(hp.hostile_control_port(name)) for name in hp.BEHAVIOURS}
    entries = [tor.entry("beside-hostile")] + [port.entry(name) for name, port in hostile.items()]
    daemon = Daemon(env_for(tmp_path / "hostile", victoria.url, ",".join(entries))).start()
    baseline = Daemon(env_for(tmp_path / "baseline", victoria.url, tor.entry("baseline-alone"))).start()
    try:
        daemon.wait_for_line(r"cycle 9 done", timeout=30)
        peak = memory_kib(daemon.proc.pid)["VmHWM"]
        base = memory_kib(baseline.proc.pid)["VmHWM"]
    finally:
        assert daemon.stop() == 0 and baseline.stop() == 0
    print(f"\nVmHWM: {peak} KiB with 8 hostile control ports, {base} KiB polling one tor alone")
    assert peak <= base + 12 * 1024, (peak, base)
    cycles = cycles_done(daemon)
    assert len(re.findall(r"cycle \d+ done in [\d.]+ s: 1/9 hosts ok", daemon.output)) == cycles
    samples = wait_for(lambda: len(s := victoria.samples("traffic_read", host="beside-hostile")) >= cycles and s,
                       10, what=f"{cycles} points of the healthy tor")
    assert len(samples) == cycles  # one per cycle, none lost, none twice
    gaps = [b - a for (a, _), (b, _) in zip(samples, samples[1:])]
    assert max(gaps) < 1900, gaps
    log = [line for line in daemon.output.splitlines() if " tor host: " not in line and " DEBUG " not in line]
    for name, port in hostile.items():
        mentions = [line for line in log if f"127.0.0.1:{port.port})" in line
                    or re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", line)]
        assert len(mentions) == 1, (name, mentions)
        assert 2 <= port.accepted <= 4, (name, port.accepted)  # tried again after 1, 2, 4 s: backed off
    assert "Traceback" not in daemon.output


# --------------------------------------------------------------------------- echoed secrets

PASSWORD = 'Ech0 "pw"\\é/+&<-6d1e'


def _c_escaped(text: str) -> str:
    """How tor quotes untrusted text in its messages (esc_for_log): C escapes, octal for the rest."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


#: name -> the password as the control port quotes it back (its reply: 515 ... AUTHENTICATE <that>)
CONTROL_ECHOES = {
    "as-received": '"' + PASSWORD.replace("\\", "\\\\").replace('"', '\\"') + '"',  # the command's QuotedString
    "json": json.dumps(PASSWORD),
    "url": urllib.parse.quote(PASSWORD),
    "repr": repr(PASSWORD),
    "c-escaped": '"' + _c_escaped(PASSWORD) + '"',
}


def test_a_control_port_echoing_the_password_never_shows_it(tmp_path, victoria, peers):
    """Control ports whose 515 reply quotes AUTHENTICATE "<password>" (as received, JSON-escaped,
    URL-encoded, repr-escaped, C-escaped as tor itself quotes), on TCP and on a unix socket: the
    password is in no log line, no health file, no -t output."""
    ports = {name: peers(hp.echoing_control_port(PASSWORD, lambda command, e=echo: f"AUTHENTICATE {e}".encode()))
             for name, echo in CONTROL_ECHOES.items()}
    entries = [f"127.0.0.1:{port.port}:{PASSWORD}:echo-{name}" for name, port in ports.items()]
    sock = tmp_path / "echo.sock"
    peers(hp.UnixControlPort(str(sock), lambda command: b"515 Authentication failed: " + command.encode() + b"\r\n"))
    entries.append(f"unix:{sock}:{PASSWORD}:echo-unix")
    hosts = tmp_path / "hosts"
    hosts.write_text("\n".join(entries) + "\n")  # the password has no ',' but a file is where it would go
    daemon, health = run_until(env_for(tmp_path, victoria.url, None, TOR_HOSTS_FILE=str(hosts)))
    test = run_daemon({"TOR_HOSTS_FILE": str(hosts)}, "-t")
    assert test.returncode == 1 and test.stdout.count("not available: authentication failed") == len(entries)
    assert ports["as-received"].commands[1] == f"AUTHENTICATE {CONTROL_ECHOES['as-received']}"  # a true echo
    failures = [line for line in daemon.output.splitlines()
                if "authentication failed: tor refused the password" in line]
    for name in [*CONTROL_ECHOES, "unix"]:
        assert any(re.search(rf"\becho-{name}\b", line) for line in failures), name
    assert health.startswith("FAILED") and "authentication failed" in health
    for text in (daemon.output, health, test.stdout, test.stderr):
        assert_not_shown(text, PASSWORD, *CONTROL_ECHOES.values())


HTTP_TOKEN = 'T0k/en+"q\'&<x>\\=='
#: name -> (status, content type, body from the Authorization header, the token as the body carries it)
HTTP_ECHOES = {
    "json-message": (401, "application/json", lambda auth: json.dumps({"code": "unauthorized",
                                                                         "message": f"bad header {auth}"}),
                     HTTP_TOKEN),
    "json-escaped-text": (401, "text/plain", lambda auth: json.dumps({"header": auth})[:-1],
                          json.dumps(HTTP_TOKEN)[1:-1]),
    "url-encoded": (503, "text/plain", lambda auth: "auth=" + urllib.parse.quote(auth),
                    urllib.parse.quote(HTTP_TOKEN)),
    "repr": (500, "text/plain", lambda auth: repr({"Authorization": auth}), repr(HTTP_TOKEN)[1:-1]),
    "html-page": (502, "text/html", lambda auth: f"<html><p>{html.escape(auth)}</p></html>", html.escape(HTTP_TOKEN)),
    "bad-request": (400, "application/json", lambda auth: json.dumps({"code": "invalid", "message": auth}),
                    HTTP_TOKEN),
}


def test_an_http_server_echoing_the_token_never_shows_it(tmp_path, peers):
    """Error answers that quote the request's `Authorization: Token ...` (in a JSON message, as
    JSON-escaped text, URL-encoded, repr-escaped, HTML-escaped in an error page, in a 400 that
    makes the daemon drop the line): the token is in no log line and no health file."""
    control = peers(FakeControlPort({"GETINFO": core_answer()}))
    daemons = {}
    for name, (status, kind, body, _) in HTTP_ECHOES.items():
        peer = peers(HttpPeer(lambda r, s=status, k=kind, b=body: (s, {"Content-Type": k},
                                                                  b(r.headers["Authorization"]).encode())))
        env = env_for(tmp_path / name, peer.url, control.entry(f"http-{name}"), INFLUX_TOKEN=HTTP_TOKEN)
        daemons[name] = (Daemon(env).start(), peer)
    try:
        for name, (daemon, peer) in daemons.items():
            daemon.wait_for_line(r"cycle 3 done")
            wait_for(lambda: peer.requests, 5, what=f"a write to {name}")
    finally:
        for daemon, _ in daemons.values():
            assert daemon.stop() == 0
    for name, (daemon, peer) in daemons.items():
        assert peer.requests[0].headers["Authorization"] == f"Token {HTTP_TOKEN}"  # it was really sent
        status = HTTP_ECHOES[name][0]
        assert f"InfluxDB answered {status}: " in daemon.output, name
        health = (tmp_path / name / "health").read_text()
        for text in (daemon.output, health):
            assert_not_shown(text, HTTP_TOKEN, HTTP_ECHOES[name][3])


# ------------------------------------------------------------------ answers InfluxDB never gives

NOT_INFLUX = {
    "html-200": lambda other: (200, {"Content-Type": "text/html"}, b"<html><form>Log in</form></html>"),
    "redirect-307": lambda other: (307, {"Location": other.url + "/api/v2/write?org=org&bucket=bucket"}, b""),
    "created-201": lambda other: (201, {"Content-Type": "application/json"}, b"{}"),
}


def test_answers_influxdb_never_gives_keep_the_points(tmp_path, victoria, peers):
    """200 with an HTML page, a 307 redirect, a 201: one clear log line, unhealthy at once, the
    redirect not followed (the token stays home), and every point kept: after a restart against
    a real InfluxDB-API server all of them are there."""
    control = peers(FakeControlPort({"GETINFO": core_answer()}))
    runs = {}
    for name, answer in NOT_INFLUX.items():
        other = peers(HttpPeer(lambda r: (204, {}, b"")))
        peer = peers(HttpPeer(lambda r, a=answer, o=other: a(o)))
        env = env_for(tmp_path / name, peer.url, control.entry(f"not-influx-{name}"),
                      BUFFER_DIR=str(tmp_path / name / "buffer"))
        runs[name] = (Daemon(env).start(), peer, other, env)
    try:
        for name, (daemon, peer, _, _) in runs.items():
            daemon.wait_for_line(r"cycle 4 done")
    finally:
        for daemon, *_ in runs.values():
            assert daemon.stop() == 0
    restarted = {}
    for name, (daemon, peer, other, env) in runs.items():
        status = int(name.rsplit("-", 1)[1])
        failures = re.findall(rf"ERROR write failed: InfluxDB answered {status}: .*", daemon.output)
        assert len(failures) == 1, (name, failures)
        assert "points are kept" in failures[0]
        health = (tmp_path / name / "health").read_text()
        assert f"points kept: InfluxDB answered {status}" in health or health.startswith("FAILED"), health
        assert other.requests == [], "the redirect was followed (with the token)"
        cycles = cycles_done(daemon)
        buffer = SqliteBuffer(env["BUFFER_DIR"], 10**6)
        kept = len(buffer)
        buffer.close()
        assert kept == 3 * cycles, (name, kept, cycles)  # nothing was counted as delivered
        restarted[name] = (Daemon({**env, "INFLUX_URL": victoria.url}).start(), cycles)
    for name, (daemon, cycles) in restarted.items():
        try:
            daemon.wait_for_line(r"cycle 1 done")
            samples = wait_for(lambda: len(s := victoria.samples("traffic_read", host=f"not-influx-{name}"))
                               >= cycles + 1 and s, 10, what=f"the kept points of {name}")
        finally:
            assert daemon.stop() == 0
        assert len({ts for ts, _ in samples}) >= cycles + 1


def test_a_retry_after_of_zero_does_not_turn_the_backoff_off(tmp_path, peers):
    """A 503 with `Retry-After: 0` (or a date in the past): the daemon still backs off (1 s, 2 s,
    ...) instead of sending request after request as fast as the server answers."""
    control = peers(FakeControlPort({"GETINFO": core_answer()}))
    runs = {}
    for name, retry_after in (("zero", "0"), ("past-date", "Wed, 21 Oct 2015 07:28:00 GMT")):
        standin = InfluxStandin(token=TOKEN, org="org", bucket="bucket").start()
        standin.answer(503, retry_after=retry_after)
        runs[name] = (Daemon(env_for(tmp_path / name, standin.url, control.entry(f"retry-{name}"))).start(), standin)
    try:
        for daemon, _ in runs.values():
            daemon.wait_for_line(r"cycle 1 done")
        started = time.monotonic()
        for daemon, _ in runs.values():
            daemon.wait_for_line(r"cycle 5 done")
        took = time.monotonic() - started
        requests = {name: standin.write_requests for name, (_, standin) in runs.items()}
    finally:
        for daemon, standin in runs.values():
            assert daemon.stop() == 0
            standin.stop()
    for name, (daemon, _) in runs.items():
        assert requests[name] <= took + 3, f"{name}: {requests[name]} write requests in {took:.1f} s"
        assert len(re.findall(r"write failed: InfluxDB answered 503", daemon.output)) == 1


# --------------------------------------------------------------------------------- tag values

TRICKY = ["comma,in-name", "equals=in=name", "space in name", 'quote"in"name', "#hash-first", "naïve-ünïcode-🧅",
          "a,b=c d"]


def test_tag_values_that_line_protocol_escapes_read_back_exactly(tmp_path, victoria, peers):
    """Names and a service tag with `,`, `=`, spaces, quotes, '#', non-ASCII: VictoriaMetrics
    stores exactly the given names (read back with /api/v1/export), with no other tag, for every
    cycle."""
    ports = [peers(FakeControlPort({"GETINFO": core_answer()})) for _ in TRICKY]
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"127.0.0.1:{port.port}:{name}\n" for port, name in zip(ports, TRICKY)))
    service = "svc, with=all of it"
    daemon = Daemon(env_for(tmp_path, victoria.url, None, TOR_HOSTS_FILE=str(hosts),
                            INFLUX_SERVICE_TAG=service)).start()
    try:
        daemon.wait_for_line(rf"cycle 3 done in [\d.]+ s: {len(TRICKY)}/{len(TRICKY)} hosts ok")
    finally:
        assert daemon.stop() == 0
    cycles = cycles_done(daemon)
    query = '{__name__="traffic_read",service="svc, with=all of it"}'
    series = wait_for(lambda: len(s := victoria.export(query)) >= len(TRICKY)
                      and all(len(x["values"]) >= cycles for x in s) and s, 10, what="every series")
    assert sorted(s["metric"]["host"] for s in series) == sorted(TRICKY)
    for s in series:
        assert set(s["metric"]) == {"__name__", "host", "service", "version"}, s["metric"]
        assert s["metric"]["version"] == "0.4.9.11" and len(s["values"]) == cycles
        assert set(s["values"]) == {hp.CORE_VALUES["traffic/read"]}


@pytest.mark.parametrize("variable, value", [
    ("TOR_HOSTS", "127.0.0.1:1:back\\slash"), ("TOR_HOSTS", "127.0.0.1:1:new\nline"),
    ("TOR_HOSTS", "127.0.0.1:1:tab\tin-name"), ("INFLUX_SERVICE_TAG", "back\\slash"),
    ("INFLUX_SERVICE_TAG", "new\nline"), ("INFLUX_SERVICE_TAG", "bell\x07"),
])
def test_tag_values_line_protocol_cannot_carry_are_refused_at_start(tmp_path, variable, value):
    env = env_for(tmp_path, "http://127.0.0.1:1", "127.0.0.1:1:ok-name")
    env[variable] = value
    r = run_daemon(env, timeout=10)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert re.search(rf"configuration error: {variable}( entry 1)?: .*(backslash|control)", r.stderr), r.stderr


VERSIONS = {
    "comma-tag": b"0.4.9.11,host=evil",
    "space-field": b"0.4.9.11 injected=1i",
    "equals": b"0.4.9=11",
    "backslash": b"0.4.9.11\\,x=y",
    "quotes": b'"0.4.9.11"',
    "binary": b"\xff\xfe\x00\x01",
    "long": b"0." * 200,
    "empty": b"",
    "real-form": b"0.4.9.11 (git-0123456789abcdef)",
}


def test_a_hostile_version_answer_injects_no_tag_and_loses_no_point(tmp_path, victoria, peers):
    """tor's own `version` answer becomes the version tag: whatever a control port answers there
    (a comma and `host=`, a space and a field, backslashes, binary, 400 characters, nothing), the
    host tag stays the entry's name, no other tag appears, the version tag is one word of safe
    characters, and every cycle's point is stored."""
    ports = {name: peers(FakeControlPort({"GETINFO": core_answer(version=v)})) for name, v in VERSIONS.items()}
    daemon = Daemon(env_for(tmp_path, victoria.url, ",".join(p.entry(f"version-{n}") for n, p in ports.items()))
                    ).start()
    try:
        daemon.wait_for_line(rf"cycle 3 done in [\d.]+ s: {len(VERSIONS)}/{len(VERSIONS)} hosts ok")
    finally:
        assert daemon.stop() == 0
    cycles = cycles_done(daemon)
    for name in VERSIONS:
        series = wait_for(lambda: (s := victoria.export(f'{{__name__="traffic_read",host="version-{name}"}}'))
                          and len(s[0]["values"]) >= cycles and s, 10, what=f"points of version-{name}")
        assert len(series) == 1, series
        labels = series[0]["metric"]
        assert set(labels) <= {"__name__", "host", "service", "version"} and labels["service"] == "tor", labels
        assert re.fullmatch(r"[A-Za-z0-9._+~-]{1,64}", labels.get("version", "x")), labels
        assert len(series[0]["values"]) == cycles
    assert victoria.export('{__name__="traffic_read",host="evil"}') == []
    assert victoria.export('{__name__=~"traffic_injected|.*injected.*"}') == []
    real = victoria.export('{__name__="traffic_read",host="version-real-form"}')[0]["metric"]
    assert real["version"] == "0.4.9.11"
    assert "version" not in victoria.export('{__name__="traffic_read",host="version-empty"}')[0]["metric"]


# --------------------------------------------------------------------- the open-file limit

def _with_nofile(soft: int, hard: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class LimitedDaemon(Daemon):
    """A support.Daemon started with an open-file limit of (soft, hard)."""

    def __init__(self, env, limits):
        super().__init__(env)
        self.limits = limits

    def start(self):
        from support import DAEMON
        import leakcheck
        self.proc = subprocess.Popen([self.python, str(DAEMON)], env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, preexec_fn=_with_nofile(*self.limits))
        leakcheck.output(f"the log of a daemon (pid {self.proc.pid})", lambda: self.output,
                         leakcheck.env_secrets(self.env))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self


@pytest.fixture(scope="module")
def many_port():
    port = ManyControlPort()
    yield port
    port.close()


def test_1500_tors_with_an_ordinary_users_open_file_limit(tmp_path, victoria, many_port):
    """1,500 tors (all on one control port that takes thousands of connections) and the soft limit
    of 1,024 an ordinary user has: with a hard limit of 4,096 the daemon raises its soft limit and
    polls them all; with a hard limit of 1,024 it warns once with the number it needs, and still
    writes its health file and delivers the points of the tors it can poll."""
    runs = {}
    for hard in (4096, 1024):
        hosts = tmp_path / f"hosts{hard}"
        hosts.write_text(many_port.entries(1500, prefix=f"fd{hard}-"))
        env = env_for(tmp_path / str(hard), victoria.url, None, TOR_HOSTS_FILE=str(hosts), RUN_EVERY_SECONDS="3",
                      TOR_TIMEOUT="2")
        runs[hard] = LimitedDaemon(env, (1024, hard)).start()
    try:
        for hard, daemon in runs.items():
            daemon.wait_for_line(r"cycle 2 done", timeout=40)
        raised = hp.soft_nofile(runs[4096].proc.pid)
        health = {hard: (tmp_path / str(hard) / "health").read_text() for hard in runs}
    finally:
        for daemon in runs.values():
            assert daemon.stop() == 0
    ok, short = runs[4096], runs[1024]
    print(f"\nopen-file limit raised from 1024 to {raised}; with 1024:1024: {health[1024][:120]!r}")
    assert 1500 < raised <= 4096
    assert re.search(r"cycle 2 done in [\d.]+ s: 1500/1500 hosts ok", ok.output) and health[4096].startswith("OK")
    assert "open-file limit" not in ok.output
    warnings = re.findall(r"WARNING the open-file limit is 1024 \(hard limit 1024\) but 1500 tors need about (\d+)",
                          short.output)
    assert len(warnings) == 1 and int(warnings[0]) > 1500
    assert "cannot write the health file" not in short.output
    assert short.output.count("cycle overran") <= 1  # the tors left waiting do not hold the cycle up
    assert health[1024].startswith("FAILED") and "open-file limit" in health[1024]
    assert "Traceback" not in short.output and "RecursionError" not in short.output
    polled = [int(n) for n in re.findall(r"cycle \d+ done in [\d.]+ s: (\d+)/1500 hosts ok", short.output)]
    assert polled and min(polled) >= 800, polled
    assert "points waiting" not in short.output  # delivery still has a descriptor
    written = wait_for(lambda: len(s := victoria.export('{__name__="traffic_read",host=~"fd1024-.*"}')) >= 800 and s,
                       10, what="points of the polled tors")
    assert len(written) >= min(polled)


def test_many_unix_entries_without_a_socket_are_each_reported(tmp_path):
    """1,500 unix-socket entries whose socket does not exist (tor not started yet): each one is
    reported as such in one -t run, at once; none is left 'not polled'."""
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"unix:{tmp_path}/missing{n}.sock:u{n}\n" for n in range(1500)))
    started = time.monotonic()
    r = run_daemon({"TOR_HOSTS_FILE": str(hosts), "VERBOSE": "true"}, "-t", timeout=30)
    took = time.monotonic() - started
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stdout.count("not available: no such socket file") == 1500
    assert took < 5, took


# ------------------------------------------------------------------------ memory in an outage

def test_memory_bound_keeps_the_points_of_a_big_fleet(tmp_path, victoria, many_port):
    """BUFFER_MAX_MEMORY=1M with 2,500 tors (7,500 points a cycle): the memory buffer compresses
    before it drops, so with InfluxDB up every point is delivered; the bound holds."""
    hosts = tmp_path / "hosts"
    hosts.write_text(many_port.entries(2500, prefix="big-"))
    daemon = Daemon(env_for(tmp_path, victoria.url, None, TOR_HOSTS_FILE=str(hosts), RUN_EVERY_SECONDS="3",
                            TOR_TIMEOUT="2.5", BUFFER_MAX_MEMORY="1M")).start()
    try:
        daemon.wait_for_line(r"cycle 3 done in [\d.]+ s: 2500/2500 hosts ok", timeout=40)
    finally:
        assert daemon.stop() == 0
    assert "dropped" not in daemon.output, daemon.output[-2000:]
    series = wait_for(lambda: len(s := victoria.export('{__name__="traffic_read",host=~"big-.*"}')) >= 2500 and s,
                      15, what="a series per tor")
    assert len(series) == 2500


def test_memory_per_point_while_influxdb_is_down(tmp_path, many_port):
    """Without BUFFER_DIR, InfluxDB unreachable, 1,000 tors every second: past its warm-up the
    daemon's memory grows by a few bytes per waiting point (VmRSS at every cycle from the 4th to
    the 11th: the median growth per point of each cycle; a retry of the delivery may add a
    transient step). BUFFER_MAX_MEMORY caps it: with 2,000 tors whose 128-character names
    compress badly, past 1M the oldest points are dropped, with one warning, and the number of
    points waiting stops growing."""
    plain, noisy = tmp_path / "plain", tmp_path / "noisy"
    plain.write_text(many_port.entries(1000, prefix="mem-"))
    noisy.write_text("".join(f"127.0.0.1:{many_port.port}:{base64.b64encode(os.urandom(96)).decode()}\n"
                             for _ in range(2000)))
    waiting = r"cycle {} done in [\d.]+ s: \d+/\d+ hosts ok, \d+ points, (\d+) waiting"
    daemon = Daemon(env_for(tmp_path / "plain-run", "http://127.0.0.1:1", None, TOR_HOSTS_FILE=str(plain),
                            TOR_TIMEOUT="0.9")).start()
    samples = []
    try:  # alone: another busy daemon beside it makes its memory jump
        for cycle in range(4, 12):
            line = daemon.wait_for_line(waiting.format(cycle), timeout=30)[0]
            samples.append((int(line.group(1)), memory_kib(daemon.proc.pid)["VmRSS"]))
    finally:
        daemon.stop()
    bounded = Daemon(env_for(tmp_path / "bounded-run", "http://127.0.0.1:1", None, TOR_HOSTS_FILE=str(noisy),
                             TOR_TIMEOUT="0.9", BUFFER_MAX_MEMORY="1M")).start()
    try:
        bounded.wait_for_line(r"WARNING buffer full", timeout=30)
        done = bounded.wait_for_line(waiting.format(r"\d+"))
        full = (len(done), int(done[-1].group(1)))
        later = bounded.wait_for_line(waiting.format(r"\d+"), count=full[0] + 2)[-1]
        last = bounded.wait_for_line(waiting.format(r"\d+"), count=full[0] + 4)[-1]
    finally:
        bounded.stop()
    slopes = sorted((m1 - m0) * 1024 / (p1 - p0) for (p0, m0), (p1, m1) in zip(samples, samples[1:]) if p1 > p0)
    overall = (samples[-1][1] - samples[0][1]) * 1024 / (samples[-1][0] - samples[0][0])
    median = slopes[len(slopes) // 2]
    print(f"\nmemory per waiting point: median {median:.1f} bytes a cycle, {overall:.1f} overall "
          f"({samples[-1][0] - samples[0][0]} points, {samples[-1][1] - samples[0][1]} KiB); "
          f"BUFFER_MAX_MEMORY=1M: {full[1]} points waiting when it was full, {int(later.group(1))} and "
          f"{int(last.group(1))} 2 and 4 cycles later (6,000 points a cycle)")
    assert samples[-1][0] - samples[0][0] >= 15_000 and median < 40  # a line as a str costs ~170 bytes
    assert "buffer full" not in daemon.output
    # bounded: over the two cycles from 2 to 4 after it was full (12,000 points more) the count grows by
    # less than a cycle's points; it settles within about a cycle of where it was full (the warning
    # may come one cycle before, while the newest chunks are not compressed yet)
    assert int(last.group(1)) - int(later.group(1)) < 6000 and int(later.group(1)) <= full[1] + 8000
    assert bounded.output.count("WARNING buffer full") == 1


def _fleet_lines(tors: int, cycle: int, encoder) -> list[str]:
    """One cycle of the core measurements of `tors` tors, as the daemon encodes them."""
    from tor2influxdb2.model import Sample, make_tags
    from tor2influxdb2.sources.control.session import TagPolicy
    t = 1796000000000 + cycle * 10_000
    lines = []
    for i in range(tors):
        tags = make_tags(TagPolicy("tor", True).tags(f"relay{i:04d}", "0.4.9.11"))
        lines += [encoder.encode(Sample("traffic", tags, {"read": 10**9 + 12345 * cycle + i,
                                                          "written": 2 * 10**9 + 54321 * cycle}, t)),
                  encoder.encode(Sample("connections", tags, {"circuits_active": (cycle * i) % 50,
                                                              "streams_active": (cycle + i) % 7}, t)),
                  encoder.encode(Sample("handshakes", tags, {"ntor_requested": cycle * 3 + i, "ntor_assigned": cycle,
                                                             "tap_requested": 0, "tap_assigned": 0}, t))]
    return lines


def test_the_memory_buffer_bytes_per_point_and_its_bound():
    """The real MemoryBuffer fed the daemon's own lines, measured with tracemalloc: bytes per
    waiting point for fleets of 1 to 1,000 tors, and a 1 MiB bound that holds (and keeps points)."""
    import tracemalloc
    from tor2influxdb2.sinks.buffer import MemoryBuffer
    from tor2influxdb2.sinks.lineprotocol import LineEncoder
    encoder = LineEncoder()
    figures = {}
    for tors in (1, 10, 100, 1000):
        cycles = [_fleet_lines(tors, k, encoder) for k in range(max(2, 45_000 // (3 * tors)))]
        tracemalloc.start()
        buffer = MemoryBuffer(10**9, 1 << 40)
        base = tracemalloc.get_traced_memory()[0]
        for lines in cycles:
            buffer.append(lines, [1796000000000] * len(lines))
        figures[tors] = (tracemalloc.get_traced_memory()[0] - base) / len(buffer)
        tracemalloc.stop()
    cycles = [_fleet_lines(2500, k, encoder) for k in range(25)]
    tracemalloc.start()
    bounded = MemoryBuffer(10**9, 1 << 20)
    base = tracemalloc.get_traced_memory()[0]
    dropped = sum(bounded.append(lines, [1796000000000] * len(lines)) for lines in cycles)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print("\nMemoryBuffer bytes per waiting point: " + ", ".join(f"{t} tors {b:.1f}" for t, b in figures.items())
          + f"; 1 MiB bound, 2,500 tors: {len(bounded)} points kept, {dropped} dropped, {used / 1024:.0f} KiB")
    assert all(b <= 30 for t, b in figures.items() if t >= 10), figures
    assert figures[1] <= 150, figures
    assert used <= 1.2 * (1 << 20) and dropped > 0 and len(bounded) >= 50_000
