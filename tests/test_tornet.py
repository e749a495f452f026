"""The daemon on a private Tor network (tests/tornet.py): relays carrying real circuits.

A tor with DisableNetwork 1 answers every key with 0, so those tests cannot tell a right
value from a wrong one. Here traffic, circuits and streams move. To compare what the daemon wrote with what
tor answered at that poll, a sampler thread per tor asks the same keys ~10 times a second and
keeps (asked at, answered by, values). The daemon stamps a point with the time tor's answer
arrived (ms), and the poll ran inside its cycle, so tor produced the answer in [ts - W, ts],
W = the longest cycle the daemon logged (+50 ms, never more than TOR_TIMEOUT). For a counter
(only grows) the written value must lie between the last sample answered before that window
and the first sample asked after it; for a gauge (circuits, streams) it must equal the value
every sample around the window agrees on, and points around which the value moved are not
judged. Each test also demands enough judged points with values > 0, so it cannot pass on
zeros or on an empty database.

Run: cd tests && python -m pytest -m tornet test_tornet.py   (skip the tier: -m "not tornet")
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from support import Daemon, wait_for
from tornet import BODY_SIZE, TorNet, foreign_lines, foreign_sockets

pytestmark = [pytest.mark.tornet, pytest.mark.usefixtures("tornet_on_loopback"),
              pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")]

PERIOD = 2  # RUN_EVERY_SECONDS
TOR_TIMEOUT = 1.0  # the daemon's whole budget for one tor's poll
CYCLE_RE = r"cycle (\d+) done in ([\d.]+) s: (\d+)/(\d+) hosts ok"

# metric in VictoriaMetrics -> (GETINFO key, kind)
METRICS = {
    "traffic_read": ("traffic/read", "counter"),
    "traffic_written": ("traffic/written", "counter"),
    "handshakes_ntor_requested": ("stats/ntor/requested", "counter"),
    "handshakes_ntor_assigned": ("stats/ntor/assigned", "counter"),
    "handshakes_tap_requested": ("stats/tap/requested", "counter"),
    "handshakes_tap_assigned": ("stats/tap/assigned", "counter"),
    "connections_circuits_active": ("circuit-status", "gauge"),
    "connections_streams_active": ("stream-status", "gauge"),
}
KEYS = [key for key, _ in METRICS.values()]


# ----------------------------------------------------------------------------- helpers

@dataclass
class Sample:
    asked_ms: float
    answered_ms: float
    values: dict[str, int]


class Sampler(threading.Thread):
    """Asks one tor the daemon's keys over and over on its own control connection."""

    def __init__(self, node, interval: float = 0.1):
        super().__init__(name=f"sampler-{node.name}", daemon=True)
        self.node, self.interval = node, interval
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self):
        try:
            with self.node.controller() as c:
                while not self._halt.is_set():
                    asked = time.time() * 1000
                    answer = c.get_info(KEYS)
                    answered = time.time() * 1000
                    values = {k: (sum(1 for line in answer[k].splitlines() if line.strip())
                                  if k in ("circuit-status", "stream-status") else int(answer[k]))
                              for k in KEYS}
                    self.samples.append(Sample(asked, answered, values))
                    self._halt.wait(self.interval)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def latest(self, key: str) -> int | None:
        return self.samples[-1].values[key] if self.samples else None

    def stop(self) -> list[Sample]:
        self._halt.set()
        self.join(10)
        assert self.error is None, f"sampler of {self.node.name} failed: {self.error!r}"
        return self.samples


def start_samplers(net: TorNet) -> dict[str, Sampler]:
    """One sampler per tor; returns once each has sampled for longer than a poll's window,
    so that even the daemon's first poll can be judged."""
    samplers = {n.name: Sampler(n) for n in net.nodes}
    for s in samplers.values():
        s.start()

    def long_enough():
        return all(s.samples and s.samples[-1].answered_ms - s.samples[0].answered_ms > TOR_TIMEOUT * 1000 + 100
                   for s in samplers.values())
    wait_for(long_enough, 20, what="samples from every tor")
    return samplers


def wait_steady(sampler: Sampler, key: str, quiet: float = 3.0, timeout: float = 30) -> None:
    """Wait until `key` has not changed for `quiet` seconds. Right after bootstrap, and after
    streams to a new port, the client keeps adding circuits (preemptive and conflux ones) for
    a few seconds; polls made then cannot be judged."""
    def steady():
        recent = [s for s in sampler.samples if s.answered_ms >= time.time() * 1000 - quiet * 1000]
        older = [s for s in sampler.samples if s.answered_ms < time.time() * 1000 - quiet * 1000]
        return older and len({s.values[key] for s in recent + older[-1:]}) == 1
    wait_for(steady, timeout, interval=0.2,
             what=f"{sampler.node.name}'s {key} unchanged for {quiet:g} s: {trace(sampler.samples, key)}")


def stop_samplers(samplers: dict[str, Sampler]) -> dict[str, list[Sample]]:
    return {name: s.stop() for name, s in samplers.items()}


def judge(samples: list[Sample], key: str, kind: str, ts: int, value: float, window_ms: float):
    """What tor answered for `key` around a point stamped `ts`: None when the samples cannot say
    (window not covered, or a gauge that moved), else (ok, expected-description)."""
    lo_edge, hi_edge = ts - window_ms - 1, ts + 1
    before = [s for s in samples if s.answered_ms <= lo_edge]
    after = [s for s in samples if s.asked_ms >= hi_edge]
    if not before or not after:
        return None
    first, last = before[-1], after[0]
    if kind == "counter":
        lo, hi = first.values[key], last.values[key]
        return lo <= value <= hi, f"between {lo} and {hi}"
    around = {s.values[key] for s in samples if first.asked_ms <= s.asked_ms <= last.asked_ms}
    if len(around) != 1:
        return None
    (expected,) = around
    return value == expected, f"{expected}"


def poll_window_ms(daemon: Daemon) -> float:
    """How long before its stamp tor may have produced a point's answer. A poll runs inside its
    cycle, and the stamp is taken when the answer arrived, so the longest cycle logged bounds
    it (usually a few ms); TOR_TIMEOUT, the daemon's whole budget for a poll, bounds it anyway."""
    longest = max(float(m.group(2)) for m in map(re.compile(CYCLE_RE).search, daemon.output.splitlines()) if m)
    return min(TOR_TIMEOUT, longest + 0.05) * 1000


def check_node(victoria, samples: list[Sample], host: str, window_ms: float) -> dict[str, list[float]]:
    """Every written point of `host` that the samples can judge must agree with tor.
    Returns metric -> the judged values (for the caller's "> 0" requirements)."""
    judged: dict[str, list[float]] = {}
    wrong = []
    for metric, (key, kind) in METRICS.items():
        judged[metric] = []
        for ts, value in victoria.samples(metric, host=host):
            verdict = judge(samples, key, kind, ts, value, window_ms)
            if verdict is None:
                continue
            ok, expected = verdict
            judged[metric].append(value)
            if not ok:
                wrong.append(f"{metric} at {ts}: wrote {value:g}, tor answered {expected}")
    assert not wrong, f"{host}: the daemon wrote values tor did not answer:\n" + "\n".join(wrong)
    return judged


def trace(samples: list[Sample], key: str) -> list[tuple[int, int]]:
    """(ms, value) each time the sampled value changed: for failure messages."""
    out = []
    for s in samples:
        if not out or out[-1][1] != s.values[key]:
            out.append((int(s.answered_ms), s.values[key]))
    return out


def daemon_for(net: TorNet, victoria, tmp_path, prefix: str) -> Daemon:
    """The daemon polling all six tors; host tags are `prefix` + node name."""
    hosts = ",".join(n.entry(prefix + n.name) for n in net.nodes)
    env = {"TOR_HOSTS": hosts, "INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": "o",
           "INFLUX_BUCKET": "b", "INFLUX_TOKEN": "tornet-token-not-in-logs", "RUN_EVERY_SECONDS": str(PERIOD),
           "TOR_TIMEOUT": str(TOR_TIMEOUT), "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health")}
    return Daemon(env).start()


def cycles(daemon: Daemon) -> list[tuple[int, int, int]]:
    """(cycle, hosts ok, hosts) of every cycle logged so far."""
    return [(int(m.group(1)), int(m.group(3)), int(m.group(4)))
            for m in map(re.compile(CYCLE_RE).search, daemon.output.splitlines()) if m]


def wait_cycles(daemon: Daemon, n: int, timeout: float | None = None) -> int:
    """Wait until n more cycles are logged than now; return the last cycle number."""
    done = len(cycles(daemon))
    daemon.wait_for_line(CYCLE_RE, timeout=timeout or (n * PERIOD + 15), count=done + n)
    return cycles(daemon)[-1][0]


def stop_daemon(daemon: Daemon) -> None:
    rc = daemon.stop()
    assert rc == 0, f"daemon exited {rc}:\n{daemon.output}"


def wait_all_written(victoria, daemon: Daemon, hosts: list[str], timeout: float = 15) -> None:
    """After the daemon stopped: wait until VictoriaMetrics shows, for each host, as many points
    as cycles in which that host was polled fine. (VictoriaMetrics may show a write only a moment
    after it answered 204, even after /internal/force_flush.)"""
    logged = cycles(daemon)

    def complete():
        return all(len(victoria.samples(metric, host=host)) >= len(logged)
                   for host in hosts for metric in METRICS)
    wait_for(complete, timeout, interval=0.5, what=f"{len(logged)} points of every metric of {hosts}")


def wait_written(victoria, host: str, since_ms: float, timeout: float = 15):
    """Wait until VictoriaMetrics holds a point of `host` stamped after `since_ms`."""
    return wait_for(lambda: [p for p in victoria.samples("traffic_read", host=host) if p[0] > since_ms],
                    timeout, interval=0.3, what=f"a point of {host} after {since_ms:.0f}")


# -------------------------------------------------------------------------------- tests

def test_loopback_watchdog_sees_every_tor_and_flags_foreign_sockets(tornet):
    """The safety check itself: ss shows sockets of every tor started here, all in 127.0.0.0/8,
    and the parser flags a foreign peer or a listener outside loopback."""
    pids = {n.pid for n in tornet.nodes}
    out = subprocess.run(["ss", "-tuanpH"], capture_output=True, text=True, check=True).stdout
    for pid in pids:
        assert foreign_lines(out, {pid})[0] > 0, f"ss shows no socket of tor pid {pid}"
    assert foreign_sockets(pids) == []
    synthetic = "\n".join([
        'tcp   LISTEN 0 4096 127.0.0.1:5000 0.0.0.0:* users:(("tor",pid=11,fd=6))',
        'tcp   ESTAB  0 0    127.0.0.1:5001 127.0.0.1:6000 users:(("tor",pid=11,fd=7))',
        'tcp   ESTAB  0 0    127.0.0.1:5002 192.0.2.7:443 users:(("tor",pid=11,fd=8))',
        'tcp   LISTEN 0 4096 0.0.0.0:5003 0.0.0.0:* users:(("tor",pid=11,fd=9))',
        'udp   ESTAB  0 0    127.0.0.1:5004 [2001:db8::1]:53 users:(("tor",pid=11,fd=10))',
        'tcp   ESTAB  0 0    10.0.0.2:5005 192.0.2.8:443 users:(("other",pid=12,fd=3))',
    ])
    seen, bad = foreign_lines(synthetic, {11})
    assert seen == 5 and [line.split()[4] for line in bad] == ["127.0.0.1:5002", "0.0.0.0:5003", "127.0.0.1:5004"]


def test_exit_traffic_grows_by_the_bytes_fetched(tornet, victoria, tmp_path):
    """2 x 2 MiB fetched through the exit: its traffic read and written, as written by the
    daemon, grow by at least that much between the last poll before and the first after;
    every written counter of every tor lies between what tor answered around its poll."""
    samplers = start_samplers(tornet)
    daemon = None
    try:
        daemon = daemon_for(tornet, victoria, tmp_path, "traffic-")
        wait_cycles(daemon, 1)
        wait_written(victoria, "traffic-exit", 0)  # a point from before the fetches
        start_ms = time.time() * 1000
        fetched = 0
        for _ in range(2):
            body = tornet.fetch("/blob")
            assert body == tornet.http.bodies["/blob"]
            fetched += len(body)
        end_ms = time.time() * 1000
        wait_cycles(daemon, 1)
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        stopped_ms = time.time() * 1000  # the samplers go on until they have answered after the daemon's end
        wait_for(lambda: all(s.samples and s.samples[-1].asked_ms > stopped_ms for s in samplers.values()), 10,
                 what="a sample of every tor after the daemon stopped")
        samples = stop_samplers(samplers)

    assert all(ok == total == 6 for _, ok, total in cycles(daemon)), daemon.output
    wait_all_written(victoria, daemon, ["traffic-" + n.name for n in tornet.nodes])
    window = poll_window_ms(daemon)
    for n in tornet.nodes:
        judged = check_node(victoria, samples[n.name], "traffic-" + n.name, window)
        assert len(judged["traffic_read"]) >= 2, (f"{n.name}: too few judged points {judged} of "
                                                  f"{victoria.samples('traffic_read', host='traffic-' + n.name)} "
                                                  f"window {window} samples {trace(samples[n.name], 'traffic/read')}"
                                                  f"\n{daemon.output}")
    for metric in ("traffic_read", "traffic_written"):
        points = victoria.samples(metric, host="traffic-exit")
        before = [v for ts, v in points if ts < start_ms]
        after = [v for ts, v in points if ts > end_ms]
        assert before and after, (metric, points, start_ms, end_ms)
        assert after[0] - before[-1] >= fetched, (
            f"exit {metric} grew by {after[0] - before[-1]:g} < {fetched} bytes fetched through it")
    assert fetched == 2 * BODY_SIZE


def test_circuits_and_streams_written_equal_what_tor_answered(tornet, victoria, tmp_path):
    """Streams held open (idle) through the client: the client's circuits_active and
    streams_active are > 0 and equal circuit-status / stream-status at each poll; the
    same equality holds for every other tor, and its counters lie between the samples."""
    held = []
    samplers = start_samplers(tornet)
    daemon = None
    try:
        for _ in range(3):
            held.append(tornet.open_stream())
        wait_for(lambda: (samplers["client"].latest("stream-status") or 0) >= 3, 15,
                 what="the client's stream-status lists the three held streams")
        wait_steady(samplers["client"], "circuit-status")
        daemon = daemon_for(tornet, victoria, tmp_path, "held-")
        wait_cycles(daemon, 3)
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        stopped_ms = time.time() * 1000  # the samplers go on until they have answered after the daemon's end
        wait_for(lambda: all(s.samples and s.samples[-1].asked_ms > stopped_ms for s in samplers.values()), 10,
                 what="a sample of every tor after the daemon stopped")
        samples = stop_samplers(samplers)  # after the daemon: its last poll has samples after it
        for s in held:
            s.close()

    assert all(ok == total == 6 for _, ok, total in cycles(daemon)), daemon.output
    wait_all_written(victoria, daemon, ["held-" + n.name for n in tornet.nodes])
    window = poll_window_ms(daemon)
    judged = {n.name: check_node(victoria, samples[n.name], "held-" + n.name, window) for n in tornet.nodes}
    client = judged["client"]
    assert len([v for v in client["connections_streams_active"] if v >= 3]) >= 2, (
        f"too few polls where the client's held streams were steady: {client}")
    assert len([v for v in client["connections_circuits_active"] if v > 0]) >= 2, (
        f"too few polls where the client's circuits were steady: {client}\n"
        f"client's circuit-status over time: {trace(samples['client'], 'circuit-status')}")
    for name, metrics in judged.items():
        assert len(metrics["traffic_read"]) >= 2, f"{name}: too few judged points {metrics}"


def test_restarted_relay_is_polled_again_within_one_period(tornet, victoria, tmp_path):
    """The middle relay (cookie auth: a new cookie after the restart) is stopped and started
    again on the same ports while the daemon runs: once it answers again, its next point is
    written within one period (+ one poll timeout); every other tor is polled and written in
    every cycle, the outage included."""
    middle = tornet["middle"]
    daemon = daemon_for(tornet, victoria, tmp_path, "restart-")
    try:
        wait_cycles(daemon, 1)
        old_cookie = middle.cookie_path.read_bytes()
        middle.stop()
        down = len(cycles(daemon))
        wait_for(lambda: any(ok == 5 for _, ok, _ in cycles(daemon)[down:]), PERIOD * 3 + 5,
                 what="a cycle with the middle relay down (5/6 hosts ok)")
        middle.start().wait_ready(30)
        with middle.controller() as c:  # back = tor answers an authenticated GETINFO again
            c.get_info("version")
        back_ms = time.time() * 1000
        assert middle.cookie_path.read_bytes() != old_cookie
        points = wait_written(victoria, "restart-middle", back_ms, timeout=PERIOD + TOR_TIMEOUT + 15)
        first_ms = points[0][0]
        wait_for(lambda: cycles(daemon)[-1][1] == 6, PERIOD + 10, what="the cycle that polled it again logged")
    finally:
        stop_daemon(daemon)

    assert first_ms - back_ms <= (PERIOD + TOR_TIMEOUT) * 1000 + 250, (
        f"the restarted relay was next written {first_ms - back_ms:.0f} ms after it was back")
    logged = cycles(daemon)
    assert all(ok >= 5 and total == 6 for _, ok, total in logged), daemon.output
    assert any(ok == 5 for _, ok, _ in logged) and logged[-1][1] == 6, daemon.output
    others = ["restart-" + n.name for n in tornet.nodes if n.name != "middle"]
    wait_all_written(victoria, daemon, others)
    for host in others:
        written = victoria.samples("traffic_read", host=host)
        assert len(written) == len(logged), f"{host}: {len(written)} points for {len(logged)} cycles"
