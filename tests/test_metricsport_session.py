"""One MetricsPort scrape (tor2influxdb2.sources.metricsport.session), driven by the daemon's real
event loop, against a stand-in HTTP server on 127.0.0.1 serving a real captured tor page, and
against the stand-ins a scrape must survive: one that refuses, one that hangs, one that sends
garbage, one that sends 50 MB. The last test scrapes the relays of the private Tor network.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

from metricsport_standin import StandIn, tor_like
from support import free_port, wait_for
from tor2influxdb2.errors import Reason, SourceError
from tor2influxdb2.model import make_tags
from tor2influxdb2.poller import EventLoop
from tor2influxdb2.sources.metricsport import (DEFAULT_FAMILIES, MetricsAddress, MetricsSession, PageParser,
                                               parse_address)
from tor2influxdb2.sources.metricsport.parse import ALL_SELECTION
from tor2influxdb2.sources.metricsport.session import MAX_BODY, MAX_HEADER, parse_header
from tornet import tornet  # noqa: F401  (the session fixture, used by name)

DATA = Path(__file__).parent / "data" / "metricsport"
BODY = (DATA / "relay-exit-lead-capture.prom").read_bytes()
COMMON = make_tags({"host": "exit1", "service": "tor", "version": "0.4.9.11"})
MIB = 1024 * 1024


@pytest.fixture
def serve():
    servers = []

    def start(behave, **kwargs) -> StandIn:
        server = StandIn(behave, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def scrape(session: MetricsSession, loop: EventLoop, limit: float = 15.0):
    """Run one scrape on the real loop; check on_done is called exactly once."""
    calls = []
    started = time.monotonic()
    session.start(started, lambda s, samples, failure: calls.append((s, samples, failure, time.monotonic())))
    while not calls and time.monotonic() - started < limit:
        loop.run_once(0.05)
    for _ in range(5):
        loop.run_once(0.01)
    assert len(calls) == 1, calls
    s, samples, failure, ended = calls[0]
    assert s is session and not session.busy and session.sock is None
    assert (samples is None) != (failure is None)
    return samples, failure, ended - started


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def session_for(address: str, loop, timeout=5.0, **kwargs) -> MetricsSession:
    return MetricsSession(parse_address(address), timeout=timeout, loop=loop, tags=lambda: COMMON, **kwargs)


def comparable(samples):
    return sorted((s.measurement, s.tags, tuple(sorted(s.fields.items()))) for s in samples)


# ------------------------------------------------------------------------------ real page

def test_a_scrape_reads_the_real_page_like_the_parser(serve, loop):
    server = serve(tor_like(BODY))
    session = session_for(f"127.0.0.1:{server.port}", loop)
    before_ms = time.time_ns() // 1_000_000
    samples, failure, took = scrape(session, loop)
    assert failure is None
    assert comparable(samples) == comparable(PageParser().parse(BODY, COMMON, 0))
    assert {s.measurement for s in samples} <= set(DEFAULT_FAMILIES)
    assert all(before_ms <= s.time_ms <= time.time_ns() // 1_000_000 for s in samples)
    assert took < 2  # complete at Content-Length: no wait for the server to close
    request = server.requests[0]
    assert request.startswith(f"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{server.port}\r\n".encode())


def test_each_scrape_is_a_new_connection_and_sees_the_new_page(serve, loop):
    pages = [BODY, BODY.replace(b'type="ntor_v3",action="processed"} 36', b'type="ntor_v3",action="processed"} 99')]
    assert pages[0] != pages[1]

    def behave(server, conn):
        tor_like(pages[min(server.connections, 2) - 1])(server, conn)

    server = serve(behave)
    session = session_for(f"127.0.0.1:{server.port}", loop, families=ALL_SELECTION)
    for page in pages:
        samples, failure, _ = scrape(session, loop)
        assert failure is None
        assert comparable(samples) == comparable(PageParser(ALL_SELECTION).parse(page, COMMON, 0))
    assert server.connections == 2 and len(server.requests) == 2


def test_chunked_to_eof_and_bare_newline_answers(serve, loop):
    def chunked(server, conn):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(BODY), 1000):
            part = BODY[i:i + 1000]
            conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.sendall(b"0\r\n\r\n")
        server.hold(conn)  # a server that keeps the connection: the last chunk ends the answer

    def to_eof(server, conn):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + BODY)

    def bare_newlines(server, conn):
        server.read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\nContent-Length: " + str(len(BODY)).encode() + b"\n\n" + BODY)
        server.hold(conn)

    expected = comparable(PageParser().parse(BODY, COMMON, 0))
    for behave in (chunked, to_eof, bare_newlines):
        server = serve(behave)
        samples, failure, took = scrape(session_for(f"127.0.0.1:{server.port}", loop), loop)
        assert failure is None and comparable(samples) == expected, behave.__name__
        assert took < 2


def test_unix_socket_and_dns_name(serve, loop, tmp_path):
    path = tmp_path / "metrics.sock"
    serve(tor_like(BODY), unix_path=path)
    samples, failure, _ = scrape(session_for(f"unix:{path}", loop), loop)
    assert failure is None and samples

    family, addr = socket.getaddrinfo("localhost", 1, type=socket.SOCK_STREAM)[0][0::4]
    server = serve(tor_like(BODY), family=family, host=addr[0])
    session = session_for(f"localhost:{server.port}", loop)
    samples, failure, _ = scrape(session, loop)
    assert failure is None and samples
    assert server.requests[0].split(b"\r\n")[1] == f"Host: localhost:{server.port}".encode()


# ------------------------------------------------------------------------------ hostile peers

def test_refused(loop):
    samples, failure, took = scrape(session_for(f"127.0.0.1:{free_port()}", loop), loop)
    assert failure.reason == Reason.REFUSED and "refused" in failure.message and took < 1


def test_missing_socket_file(loop, tmp_path):
    _, failure, _ = scrape(session_for(f"unix:{tmp_path}/none.sock", loop), loop)
    assert failure.reason == Reason.REFUSED and "no such socket file" in failure.message


def test_unknown_host(loop):
    _, failure, _ = scrape(session_for("no-such-host.invalid:9035", loop), loop)
    assert failure.reason == Reason.RESOLVE and failure.message.startswith("MetricsPort: cannot resolve")


def test_a_server_that_hangs_costs_the_deadline_and_no_more(serve, loop):
    def hang(server, conn):
        server.read_request(conn)
        server.hold(conn)

    server = serve(hang)
    samples, failure, took = scrape(session_for(f"127.0.0.1:{server.port}", loop, timeout=0.5), loop)
    assert failure.reason == Reason.TIMEOUT and "no answer within 0.5 s" in failure.message
    assert 0.45 <= took < 1.5
    wait_for(lambda: len(server.threads) > 1 and not server.threads[1].is_alive(), 5, what="the session hung up")


@pytest.mark.parametrize("answer, reason, words", [
    (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", Reason.PROTOCOL, "not HTTP"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64), Reason.PROTOCOL, "not HTTP"),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html><body>It works!</body></html>", Reason.PROTOCOL,
     "not Prometheus text (Content-Type text/html)"),
    (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n<html><body>It works!</body></html>", Reason.PROTOCOL,
     "not Prometheus text"),
    (b"HTTP/1.0 404 Not Found\r\n\r\n", Reason.PROTOCOL, "HTTP 404 Not Found (tor serves only /metrics)"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n" + BODY[:50], Reason.CLOSED, "mid-page (50 of 100 bytes)"),
    (b"HTTP/1.0 200 OK\r\nContent-Encoding: gzip\r\n\r\n\x1f\x8b", Reason.PROTOCOL, "compressed"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Reason.PROTOCOL, "chunked"),
    (b"", Reason.CLOSED, "MetricsPortPolicy"),
    (b"HTTP/1.0 200 OK\r\n", Reason.PROTOCOL, "within the HTTP header"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 12a\r\n\r\n", Reason.PROTOCOL, "a bad Content-Length (12a)"),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", Reason.PROTOCOL,
     "two different Content-Length"),
    (b"HTTP/1.0 200 OK\r\nthis line has no colon\r\n\r\n", Reason.PROTOCOL, "a malformed header line"),
    (b"HTTP/2 200\r\n\r\n", Reason.PROTOCOL, "not HTTP"),
])
def test_garbage_is_a_typed_failure(serve, loop, answer, reason, words):
    def behave(server, conn):
        server.read_request(conn)
        conn.sendall(answer)

    server = serve(behave)
    _, failure, took = scrape(session_for(f"127.0.0.1:{server.port}", loop), loop)
    assert failure.reason == reason and words in failure.message, failure
    assert failure.message.startswith("MetricsPort: ") and len(failure.message) <= 200
    assert failure.message.isprintable()
    assert took < 2


def memory_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def fifty_mb(announce: bool):
    def behave(server, conn):
        server.read_request(conn)
        header = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
        if announce:
            header += f"Content-Length: {50 * MIB}\r\n"
        conn.sendall(header.encode() + b"\r\n")
        line = b'tor_relay_flag{type="Exit"} 1\n' * 2000
        sent = 0
        while sent < 50 * MIB and not server.stop_event.is_set():
            conn.sendall(line)
            sent += len(line)
    return behave


def endless_header(server, conn):
    server.read_request(conn)
    conn.sendall(b"HTTP/1.0 200 OK\r\n")
    while not server.stop_event.is_set():
        conn.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")


@pytest.mark.parametrize("behave, words", [
    (fifty_mb(announce=True), "larger than 8 MiB (52428800 bytes announced)"),
    (fifty_mb(announce=False), "larger than 8 MiB"),
    (endless_header, "HTTP header is larger than 16 KiB"),
], ids=["announced", "streamed", "header"])
def test_fifty_megabytes_is_too_large_and_memory_stays_bounded(serve, loop, behave, words):
    server = serve(behave)
    session = session_for(f"127.0.0.1:{server.port}", loop, timeout=10)
    scrape(session, loop)  # warm up: the loop, the parser's imports
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = memory_kib()
    for _ in range(3):
        _, failure, took = scrape(session, loop)
        assert failure.reason == Reason.TOO_LARGE and words in failure.message
        assert took < 5
    after = memory_kib()
    grown = (after["VmHWM"] - before["VmRSS"]) / 1024
    assert grown < 3 * MAX_BODY / MIB, f"peak grew by {grown:.1f} MiB"
    assert (after["VmRSS"] - before["VmRSS"]) / 1024 < 16


def header_of_16_kib() -> bytes:
    """An HTTP header whose blank line starts exactly at MAX_HEADER: as large as one may be."""
    start = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nX-Filler: "
    return start + b"a" * (MAX_HEADER - len(start)) + b"\r\n\r\n"


def page_of(size: int, tail: bytes) -> bytes:
    """A page of `size` bytes: comment lines, then `tail`."""
    pad = size - len(tail)
    return (b"#" + b" " * 1022 + b"\n") * (pad // 1024) + b"#" * (pad % 1024 - 1) + b"\n" + tail


LAST = b'# TYPE tor_relay_traffic_bytes counter\ntor_relay_traffic_bytes{direction="read"} 6610858\n'


def test_a_page_at_both_limits_is_read_to_its_last_byte(serve, loop):
    """A 16 KiB header and a page of exactly 8 MiB to EOF: within the limits, so read whole (its last
    value is not cut short)."""
    body = page_of(MAX_BODY, LAST)
    assert len(body) == MAX_BODY

    def behave(server, conn):
        server.read_request(conn)
        conn.sendall(header_of_16_kib() + body)

    server = serve(behave)
    samples, failure, _ = scrape(session_for(f"127.0.0.1:{server.port}", loop, timeout=10), loop)
    assert failure is None, failure
    assert [(s.measurement, s.fields) for s in samples] == [("tor_relay_traffic_bytes", {"counter": 6610858.0})]


def test_a_page_past_the_limit_after_a_16_kib_header_is_too_large(serve, loop):
    """A 16 KiB header, then more than 8 MiB without Content-Length, the connection kept open: too large
    (never a page cut where the limits happen to add up)."""
    def behave(server, conn):
        server.read_request(conn)
        conn.sendall(header_of_16_kib() + page_of(MAX_BODY + 4096, LAST))
        server.hold(conn)

    server = serve(behave)
    samples, failure, took = scrape(session_for(f"127.0.0.1:{server.port}", loop, timeout=10), loop)
    assert samples is None and failure.reason == Reason.TOO_LARGE, failure
    assert failure.message == "MetricsPort: the page is larger than 8 MiB" and took < 5


def test_a_reset_before_the_request_is_a_typed_failure(serve, loop):
    """The peer resets the connection (SO_LINGER 0) as it accepts it: sending the request or reading
    the answer fails, and so does the scrape, with its reason."""
    def behave(server, conn):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = serve(behave)
    _, failure, took = scrape(session_for(f"127.0.0.1:{server.port}", loop), loop)
    assert failure.reason == Reason.CLOSED and failure.message == "MetricsPort: connection reset" and took < 2


def test_a_socket_path_connect_refuses_is_a_typed_failure(loop):
    """A unix socket path longer than sun_path (the configuration refuses it; here given directly):
    connect() raises, and the scrape ends with that failure instead of the exception."""
    session = MetricsSession(MetricsAddress(socket_path="/tmp/" + "s" * 200), timeout=5, loop=loop,
                             tags=lambda: COMMON)
    _, failure, _ = scrape(session, loop)
    assert failure.message == "MetricsPort: AF_UNIX path too long"


def test_close_during_a_scrape_ends_it_once_with_stopping(serve, loop):
    def hang(server, conn):
        server.read_request(conn)
        server.hold(conn)

    server = serve(hang)
    session = session_for(f"127.0.0.1:{server.port}", loop)
    calls = []
    session.start(time.monotonic(), lambda s, samples, failure: calls.append(failure))
    wait_for(lambda: loop.run_once(0.05) or server.requests, 5, what="the request")
    session.close()
    session.close()
    for _ in range(5):
        loop.run_once(0.01)
    assert [f.reason for f in calls] == [Reason.STOPPING] and session.sock is None


# ------------------------------------------------------------------------------ a live tor

@pytest.mark.tornet
def test_scrapes_the_relays_of_the_private_network(tornet, loop):  # noqa: F811
    """Every relay at once on one loop: the session reads a live tor's MetricsPort, each family
    as tor types it, and no counter is ahead of the page tor serves right after."""
    from test_metricsport_parse import Page

    relays = [n for n in tornet.nodes if n.metrics_port]
    assert len(relays) >= 2
    results = {}
    now = time.monotonic()
    for node in relays:
        session = MetricsSession(parse_address(f"127.0.0.1:{node.metrics_port}"), ALL_SELECTION, "hash", 5.0, loop,
                                 tags=lambda node=node: make_tags({"host": node.name}))
        session.start(now, lambda s, samples, failure, name=node.name: results.setdefault(name, (samples, failure)))
    deadline = time.monotonic() + 10
    while len(results) < len(relays) and time.monotonic() < deadline:
        loop.run_once(0.05)
    handshakes = 0.0
    for node in relays:
        samples, failure = results[node.name]
        assert failure is None, (node.name, failure)
        later = Page(node.metrics())
        assert {s.measurement for s in samples} == set(later.types)
        for sample in samples:
            assert dict(sample.tags)["host"] == node.name
            type_ = later.types[sample.measurement]
            assert set(sample.fields) == {type_} if type_ in ("counter", "gauge") else True
            if type_ == "counter":
                labels = frozenset((k, v) for k, v in sample.tags if k != "host")
                assert sample.fields["counter"] <= later.values[(sample.measurement, labels)]
            if sample.measurement == "tor_relay_load_onionskins_total" and ("type", "ntor_v3") in sample.tags:
                handshakes += sample.fields["counter"]
    assert handshakes > 0  # circuits were built through these relays: ntor v3, only on the MetricsPort
    for node in relays:
        assert 0 < len(PageParser().parse(node.metrics().encode(), COMMON, 0)) < 80  # a live relay's default series


def test_the_header_parser_reads_what_http_allows_and_keeps_first_values():
    """Status lines with or without a reason, bare newlines, folded lines, names in any case; a
    field sent twice keeps its first value, as http.client reads it; the same Content-Length twice
    is fine."""
    header = parse_header(b"HTTP/1.1 200\nContent-TYPE: text/plain;\n charset=utf-8\nX-A: 1\nx-a: 2\n"
                          b"Content-Length: 7\r\ncontent-length: 7")
    assert (header.status, header.reason) == (200, "")
    assert header.fields == {"content-type": "text/plain; charset=utf-8", "x-a": "1", "content-length": "7"}
    assert parse_header(b"HTTP/1.0 404 Not Found").reason == "Not Found"
    for bad in (b"", b"HTTP/1.0", b"HTTP/1.0 2000 OK", b"ICY 200 OK", b"HTTP/1.0 200 OK\n: no name",
                b"HTTP/1.0 200 OK\nbad name: x"):
        with pytest.raises(SourceError) as caught:
            parse_header(bad)
        assert caught.value.failure.reason == Reason.PROTOCOL and "not HTTP" in caught.value.failure.message
