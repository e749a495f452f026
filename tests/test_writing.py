"""Section 4, writing: the buffer, the writer's retry policy per answer, against the InfluxDB 2
stand-in (real error bodies) and the real VictoriaMetrics."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import tor_to_influxdb2 as t2i
from influx_standin import InfluxStandin
from support import Daemon, run_daemon, wait_for

TOKEN = "test-token"


@pytest.fixture
def standin():
    server = InfluxStandin().start()
    yield server
    server.stop()


def make_settings(url, **kw):
    base = dict(tor_hosts=(), influx_url=url, influx_org="test-org", influx_bucket="test-bucket",
                influx_token=TOKEN, influx_timeout=2.0)
    base.update(kw)
    return t2i.Settings(**base)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def lines(n, start=0, measurement="traffic", host="h"):
    return [f"{measurement},host={host} read={i}i {1795300000000 + i}" for i in range(start, start + n)]


def delivery_for(url, buffer=None, **settings):
    writer = t2i.InfluxWriter(make_settings(url, **settings))
    clock = Clock()
    d = t2i.Delivery(writer, buffer or t2i.MemoryBuffer(1_000_000), threading.Event(), clock=clock)
    return d, clock


def submit(d, new):
    d.submit(new, [int(line.rsplit(" ", 1)[1]) for line in new])


# ------------------------------------------------------------------------- writes as such

def test_one_request_per_batch_with_ms_precision_and_the_token(standin):
    d, _ = delivery_for(standin.url)
    submit(d, lines(300))
    assert d.deliver_once() and len(d.buffer) == 0
    [request] = standin.writes()
    assert request.query["precision"] == "ms" and request.header("Authorization") == f"Token {TOKEN}"
    assert len(standin.accepted_lines()) == 300


def test_batches_are_at_most_5000_lines_oldest_first(standin):
    d, _ = delivery_for(standin.url)
    submit(d, lines(12_000))
    while d.deliver_once():
        pass
    assert [len(r.lines) for r in standin.writes()] == [5000, 5000, 2000]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in standin.accepted_lines()]
    assert stamps == sorted(stamps) and len(set(stamps)) == 12_000


@pytest.mark.parametrize("status, kind, needle", [
    (401, "config", "InfluxDB answered 401: unauthorized access"),
    (403, "config", "InfluxDB answered 403: insufficient permissions for write"),
    (404, "config", "InfluxDB answered 404: bucket"),
    (500, "transient", "InfluxDB answered 500: unexpected error writing points to database"),
    (503, "transient", "InfluxDB answered 503"),
    (429, "transient", "InfluxDB answered 429"),
])
def test_failed_write_is_one_log_line_with_status_and_message(standin, caplog, status, kind, needle):
    standin.answer(status)
    d, _ = delivery_for(standin.url)
    submit(d, lines(3))
    with caplog.at_level(logging.INFO, logger="tor2influxdb2"):
        assert not d.deliver_once()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and needle in errors[0], errors
    assert TOKEN not in caplog.text and "\n" not in errors[0]
    assert len(d.buffer) == 3  # kept


def test_not_found_bucket_names_the_bucket(standin, caplog):
    d, _ = delivery_for(standin.url, influx_bucket="no-such-bucket")
    submit(d, lines(1))
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        d.deliver_once()
    assert 'InfluxDB answered 404: bucket "no-such-bucket" not found' in caplog.text
    assert "check INFLUX_TOKEN, INFLUX_ORGANIZATION and INFLUX_BUCKET" in caplog.text


def test_wrong_token_is_401_and_the_token_never_shows(standin, caplog):
    d, _ = delivery_for(standin.url, influx_token="wrong-token-value")
    submit(d, lines(1))
    with caplog.at_level(logging.DEBUG):
        d.deliver_once()
    assert "401: unauthorized access" in caplog.text and "wrong-token-value" not in caplog.text


def test_server_down_and_server_silent(standin, caplog):
    d, _ = delivery_for(standin.url, influx_timeout=0.5)
    submit(d, lines(2))
    standin.hang()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        assert not d.deliver_once()
        assert time.monotonic() - started < 3
        standin.stop()
        d.deliver_once()
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot reach InfluxDB: timed out" in m for m in messages), messages
    assert any("cannot reach InfluxDB: connection refused" in m for m in messages), messages
    assert len(d.buffer) == 2


# --------------------------------------------------------------------------- retry policy

def test_transient_errors_back_off_exponentially_to_60_s_and_honour_retry_after(standin):
    d, clock = delivery_for(standin.url)
    submit(d, lines(1))
    standin.answer(500)
    delays = []
    for _ in range(8):
        d.deliver_once()
        delays.append(d.retry_at - clock.now)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    standin.answer(503, retry_after=7)
    d.deliver_once()
    assert d.retry_at - clock.now == 7
    standin.answer(429, retry_after=3)
    d.deliver_once()
    assert d.retry_at - clock.now == 3
    standin.answer(204)
    assert d.deliver_once() and d.backoff == 0 and d.retry_at == 0


def test_config_errors_keep_points_retry_every_30_s_and_log_once_per_change(standin, caplog):
    d, clock = delivery_for(standin.url)
    submit(d, lines(5))
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        for status in (401, 401, 401, 404, 404, 401):
            standin.answer(status)
            d.deliver_once()
            assert d.retry_at - clock.now == 30
            clock.now += 30
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records if "write failed" in r.getMessage()] \
        == ["InfluxDB answered 401", "InfluxDB answered 404", "InfluxDB answered 401"]
    standin.answer(204)
    assert d.deliver_once() and len(standin.accepted_lines()) == 5


def test_a_poison_line_alone_is_dropped(standin, caplog):
    d, _ = delivery_for(standin.url)
    good = lines(40)
    poison = 'traffic,host=h read=1.5 1795300000999'  # a float where the bucket holds integers
    submit(d, good[:17] + [poison] + good[17:])
    standin.reject_line("read=1.5")
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        while len(d.buffer):
            d.deliver_once()
    assert sorted(standin.accepted_lines()) == sorted(line + "000000" for line in good)
    assert d.dropped_bad == 1
    dropped = [r.getMessage() for r in caplog.records if "dropping a point" in r.getMessage()]
    assert len(dropped) == 1 and poison in dropped[0] and "422" in dropped[0]


def test_a_real_type_conflict_drops_only_the_conflicting_line(standin):
    standin.set_field_type("traffic", "read", "integer")
    d, _ = delivery_for(standin.url)
    submit(d, lines(5) + ['traffic,host=x read="text" 1795300000500'])
    while len(d.buffer):
        d.deliver_once()
    assert d.dropped_bad == 1
    # InfluxDB stored the good lines of the partial write; re-sent copies overwrite (same series and time)
    assert len({x for x in standin.accepted_lines() if "host=h" in x}) == 5
    assert not any("host=x" in x for x in standin.accepted_lines())


def test_413_halves_the_batch_until_it_fits(standin):
    standin.max_lines(1200)
    d, _ = delivery_for(standin.url)
    submit(d, lines(5000))
    for _ in range(20):
        if not len(d.buffer):
            break
        d.deliver_once()
    assert len(d.buffer) == 0 and len(set(standin.accepted_lines())) == 5000
    statuses = [r.status for r in standin.writes()]
    assert statuses[:3] == [413, 413, 413] and d.batch_lines <= 1200


def test_every_point_arrives_once_in_order_after_a_series_of_faults(standin):
    """down, 401, 404, 500 with Retry-After, 422 for one line, 413, then healthy again."""
    d, clock = delivery_for(standin.url)
    expected = []

    def cycle(n):
        new = lines(3, start=n * 3)
        expected.extend(new)
        submit(d, new)
        d.deliver_once()
        clock.now += 60

    n = 0
    standin.stop()
    for _ in range(3):
        cycle(n); n += 1
    standin.start()
    for status in (401, 404):
        standin.answer(status)
        cycle(n); n += 1
    standin.answer(500, retry_after=2)
    cycle(n); n += 1
    assert d.retry_at - (clock.now - 60) == 2
    standin.answer(204)
    standin.reject_line("read=999i")
    poison = "traffic,host=h read=999i 1795300999999"
    submit(d, [poison])
    standin.max_lines(4)
    for _ in range(3):
        cycle(n); n += 1
    standin.max_lines(None)
    while len(d.buffer):
        d.deliver_once()
    accepted = standin.accepted_lines()
    assert len(accepted) == len(set(accepted)) == len(expected)  # exactly once, poison excluded
    stamps = [int(a.rsplit(" ", 1)[1]) for a in accepted]
    assert stamps == sorted(stamps)
    assert not any("999i" in a for a in accepted)


# -------------------------------------------------------------------------------- buffers

@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_full_buffer_drops_exactly_the_oldest(kind, tmp_path, caplog):
    buffer = t2i.MemoryBuffer(10) if kind == "memory" else t2i.SqliteBuffer(str(tmp_path), 10)
    d = t2i.Delivery(None, buffer, threading.Event())
    with caplog.at_level(logging.WARNING, logger="tor2influxdb2"):
        submit(d, lines(7))
        submit(d, lines(7, start=7))
        submit(d, lines(3, start=14))
    assert len(buffer) == 10
    batch = buffer.head(100)
    assert batch.lines == lines(10, start=7)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["buffer full (10 points): dropped the 4 oldest points"]  # then quiet for a minute
    buffer.close()


def test_sqlite_buffer_survives_reopen(tmp_path):
    b = t2i.SqliteBuffer(str(tmp_path), 100)
    b.append(lines(5), [1, 2, 3, 4, 5])
    b.remove(b.head(2).ids)
    b.close()
    b = t2i.SqliteBuffer(str(tmp_path), 100)
    assert len(b) == 3 and b.head(10).lines == lines(3, start=2) and b.oldest_ms() == 3


CRASHER = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
import tor_to_influxdb2 as t2i
b = t2i.SqliteBuffer(sys.argv[1], 10_000_000)
i = 0
print("ready", flush=True)
while True:
    b.append([f"traffic,host=c read={j}i {j}" for j in range(i, i + 500)], list(range(i, i + 500)))
    i += 500
"""


def test_sqlite_buffer_survives_kill_9_in_the_middle_of_writes(tmp_path):
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path), os.path.dirname(t2i.__file__)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + attempt * 0.13)  # let it write for a while (not an assertion)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        b = t2i.SqliteBuffer(str(tmp_path), 10_000_000)
        count = len(b)
        assert count % 500 == 0 and count > 0  # whole transactions only, never half of one
        rows = sqlite3.connect(os.path.join(tmp_path, "buffer.sqlite3")).execute(
            "PRAGMA integrity_check").fetchone()
        assert rows == ("ok",)
        b.close()


def test_unwritable_buffer_dir_falls_back_to_memory_with_one_warning(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="tor2influxdb2"):
        buffer = t2i.open_buffer(make_settings("http://x", buffer_dir=str(blocker / "sub")))
    assert isinstance(buffer, t2i.MemoryBuffer)
    assert len(caplog.records) == 1 and "keeping points in memory only" in caplog.records[0].getMessage()


def test_retry_after_forms():
    assert t2i.parse_retry_after("7") == 7
    assert t2i.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470) == 10
    assert t2i.parse_retry_after("soon") is None and t2i.parse_retry_after(None) is None


# ------------------------------------------------------------- the whole daemon, end to end

def daemon_env(tmp_path, url, tor_hosts, **extra):
    env = {"TOR_HOSTS": tor_hosts, "INFLUX_URL": url, "INFLUX_ORGANIZATION": "test-org",
           "INFLUX_BUCKET": "test-bucket", "INFLUX_TOKEN": TOKEN, "RUN_EVERY_SECONDS": "1",
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
    daemon = Daemon(daemon_env(tmp_path, own_victoria.url, tor.entry("outage30"))).start()
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
    env = daemon_env(tmp_path, own_victoria.url, tor.entry("killed"))
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
    env = daemon_env(tmp_path, standin.url, tor.entry("kept"), INFLUX_TIMEOUT="10")
    standin.hang()
    daemon = Daemon(env).start()
    daemon.wait_for_line(r"cycle 3 done")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2.5
    assert "points not delivered: kept in BUFFER_DIR" in daemon.output
    kept = len(t2i.SqliteBuffer(str(tmp_path / "buffer"), 10**6))
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
