"""sinks.influx: the write request, the retry policy per answer, against the InfluxDB 2 stand-in
(real error bodies) and VictoriaMetrics; every request bounded for real."""

from __future__ import annotations

import gzip
import logging
import threading
import time

import pytest

from influx_standin import InfluxStandin
from support import port_open, wait_for
from tor2influxdb2.errors import Reason, WriteError
from tor2influxdb2.sinks.buffer import FallbackBuffer, MemoryBuffer
from tor2influxdb2.sinks.influx import Delivery, InfluxWriter, gzip_lines, parse_retry_after

TOKEN = "test-token"


@pytest.fixture
def standin():
    server = InfluxStandin().start()
    yield server
    server.stop()


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def lines(n, start=0, measurement="traffic", host="h"):
    return [f"{measurement},host={host} read={i}i {1795300000000 + i}" for i in range(start, start + n)]


def writer_for(url, bucket="test-bucket", token=TOKEN, timeout=2.0, org="test-org"):
    return InfluxWriter(url, org, bucket, token, timeout)


def delivery_for(url, buffer=None, **kw):
    clock = Clock()
    buffer = buffer or FallbackBuffer(None, MemoryBuffer(1_000_000))
    return Delivery(writer_for(url, **kw), buffer, threading.Event(), clock=clock), clock


def submit(d, new):
    d.submit(new, [int(line.rsplit(" ", 1)[1]) for line in new])


# ------------------------------------------------------------------------- writes as such

def test_the_request_is_what_influxdb_client_sends(standin):
    d, _ = delivery_for(standin.url)
    submit(d, lines(300))
    assert d.deliver_once() and len(d.buffer) == 0
    [request] = standin.writes()
    assert request.query == {"org": "test-org", "bucket": "test-bucket", "precision": "ms"}
    assert request.header("Authorization") == f"Token {TOKEN}" and request.header("Content-Encoding") == "gzip"
    assert gzip.decompress(request.raw_body).decode().split("\n") == lines(300)
    assert len(standin.accepted_lines()) == 300


def test_batches_are_at_most_5000_lines_oldest_first(standin):
    d, _ = delivery_for(standin.url)
    submit(d, lines(12_000))
    while d.deliver_once():
        pass
    assert [len(r.lines) for r in standin.writes()] == [5000, 5000, 2000]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in standin.accepted_lines()]
    assert stamps == sorted(stamps) and len(set(stamps)) == 12_000


@pytest.mark.parametrize("status, reason, needle", [
    (401, Reason.HTTP_CONFIG, "InfluxDB answered 401: unauthorized access"),
    (403, Reason.HTTP_CONFIG, "InfluxDB answered 403: insufficient permissions for write"),
    (404, Reason.HTTP_CONFIG, "InfluxDB answered 404: bucket"),
    (500, Reason.HTTP_TRANSIENT, "InfluxDB answered 500: unexpected error writing points to database"),
    (503, Reason.HTTP_TRANSIENT, "InfluxDB answered 503"),
    (429, Reason.HTTP_TRANSIENT, "InfluxDB answered 429"),
])
def test_failed_write_is_one_log_line_with_status_and_message(standin, caplog, status, reason, needle):
    standin.answer(status)
    d, _ = delivery_for(standin.url)
    submit(d, lines(3))
    with caplog.at_level(logging.INFO, logger="tor2influxdb2"):
        assert not d.deliver_once()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and needle in errors[0], errors
    assert d.last_failure.reason == reason
    assert TOKEN not in caplog.text and "\n" not in errors[0]
    assert len(d.buffer) == 3  # kept


@pytest.mark.parametrize("status, body, content_type, needle", [
    (200, b"<html><body>Welcome to nginx!</body></html>", "text/html", "200: text/html, not InfluxDB's 204"),
    (201, b"", "application/json", "201"),
    (302, b"", "text/html", "a redirect, which is not followed"),
    (405, b"method not allowed", "text/plain", "405"),
])
def test_only_204_means_delivered(standin, caplog, status, body, content_type, needle):
    """A proxy's login page, a default web server, a redirect: points are kept, the problem is said."""
    standin.answer(status, body=body, content_type=content_type)
    d, clock = delivery_for(standin.url)
    submit(d, lines(3))
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        assert not d.deliver_once()
    assert len(d.buffer) == 3 and d.config_problem is not None and needle in d.config_problem.message
    assert d.retry_at - clock.now == Delivery.CONFIG_RETRY
    assert any(needle in r.getMessage() for r in caplog.records)


def test_not_found_bucket_names_the_bucket(standin, caplog):
    d, _ = delivery_for(standin.url, bucket="no-such-bucket")
    submit(d, lines(1))
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        d.deliver_once()
    assert 'InfluxDB answered 404: bucket "no-such-bucket" not found' in caplog.text
    assert "check INFLUX_TOKEN, INFLUX_ORGANIZATION and INFLUX_BUCKET" in caplog.text


def test_server_down_and_server_silent(standin, caplog):
    d, _ = delivery_for(standin.url, timeout=0.5)
    submit(d, lines(2))
    standin.hang()
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        assert not d.deliver_once()
        assert time.monotonic() - started < 1.5
        standin.stop()
        wait_for(lambda: not port_open(standin.port), 5, what="the stand-in's port closed")
        d.deliver_once()
    messages = [r.getMessage() for r in caplog.records]
    assert any("no answer from InfluxDB within 0.5 s" in m for m in messages), messages
    assert any("cannot reach InfluxDB: connection refused" in m for m in messages), messages
    assert len(d.buffer) == 2


def test_a_request_is_bounded_even_against_a_server_that_dribbles(tmp_path):
    """A peer that accepts and sends its answer one byte a second never holds a write past its timeout
    (influxdb-client 1.50 ignores the timeout given to write())."""
    import socket
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def dribble():
        conn, _ = listener.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 204 No Content\r\nX-Slow: " + b"x" * 100:
            if stop.wait(0.2):
                break
            try:
                conn.send(bytes([byte]))
            except OSError:
                break
        conn.close()

    threading.Thread(target=dribble, daemon=True).start()
    writer = InfluxWriter(f"http://127.0.0.1:{listener.getsockname()[1]}", "o", "b", TOKEN, timeout=1.0,
                          connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(WriteError) as info:
        writer.write(lines(1))
    took = time.monotonic() - started
    stop.set()
    listener.close()
    # each byte comes within urllib3's read timeout: only the guard (connect + read timeouts) cuts it
    assert 1.4 <= took < 2.0 and info.value.failure.message == "no answer from InfluxDB within 1.5 s", took
    writer.close()


def test_the_final_delivery_is_bounded_by_its_budget(standin):
    d, _ = delivery_for(standin.url, timeout=10)
    submit(d, lines(5))
    standin.hang()
    started = time.monotonic()
    d.finish(budget=1.5)
    assert time.monotonic() - started < 2.0 and len(d.buffer) == 5


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
    dropped = [r.getMessage() for r in caplog.records if "dropping a point" in r.getMessage()]
    assert len(dropped) == 1 and poison in dropped[0] and "422" in dropped[0]


def test_a_real_type_conflict_drops_only_the_conflicting_line(standin):
    standin.set_field_type("traffic", "read", "integer")
    d, _ = delivery_for(standin.url)
    submit(d, lines(5) + ['traffic,host=x read="text" 1795300000500'])
    while len(d.buffer):
        d.deliver_once()
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
    assert [r.status for r in standin.writes()][:3] == [413, 413, 413] and d.batch_lines <= 1200


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
    standin.answer(204)
    standin.reject_line("read=999i")
    submit(d, ["traffic,host=h read=999i 1795300999999"])
    standin.max_lines(4)
    for _ in range(3):
        cycle(n); n += 1
    standin.max_lines(None)
    while len(d.buffer):
        d.deliver_once()
    accepted = standin.accepted_lines()
    assert len(accepted) == len(set(accepted)) == len(expected)  # exactly once, poison excluded
    stamps = [int(a.rsplit(" ", 1)[1]) for a in accepted]
    assert stamps == sorted(stamps) and not any("999i" in a for a in accepted)


def test_retry_after_forms():
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470) == 10
    assert parse_retry_after("99999999999") == 3600  # a server cannot park the daemon for ever
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_victoriametrics_accepts_the_writes(victoria):
    writer = writer_for(victoria.url)
    writer.write(["traffic,host=vm-check read=5i 1795300000000"])
    assert victoria.samples("traffic_read", host="vm-check") == [(1795300000000, 5.0)]


@pytest.mark.parametrize("count", [1, 255, 256, 257, 5000])
def test_a_request_body_is_every_line_once_in_order_gzipped(count):
    """The body is compressed a few hundred lines at a time: what InfluxDB unzips is exactly the
    lines joined by newlines, whatever the count (piece boundaries included)."""
    lines = [f"m,host=tor{i % 7} value={i}i {1796000000000 + i}" for i in range(count)]
    body = gzip_lines(lines)
    assert body[:2] == b"\x1f\x8b"
    assert gzip.decompress(body).decode() == "\n".join(lines)
