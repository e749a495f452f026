"""sources.control.session (through the poller's loop), against real tor daemons (DisableNetwork 1):
every authentication and address form, one kept connection, one GETINFO, unknown keys, restarts."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

import pytest

from fake_control import FakeControlPort
from hostile_peers import core_answer
from tor2influxdb2.errors import Reason
from tor2influxdb2.poller import EventLoop, Poller
from tor2influxdb2.sinks.lineprotocol import LineEncoder
from tor2influxdb2.sources.control.metricsets import CORE_KEYS, COUNTED_KEYS, Plan
from tor2influxdb2.sources.control.session import ControlSession, TagPolicy
from tor2influxdb2.targets import TorHost, parse_tor_host


def expected_values(tor) -> tuple[str, dict[str, int]]:
    """What tor itself answers for the daemon's keys, asked through stem's own Controller."""
    with tor.controller() as c:
        c.clear_cache()
        version = c.get_info("version").split(" ")[0]
        values = {}
        for key in CORE_KEYS:
            raw = c.get_info(key)
            values[key] = len([line for line in raw.splitlines() if line.strip()]) \
                if key in COUNTED_KEYS else int(raw)
    return version, values


def host_for(tor, name="t", host=None) -> TorHost:
    return parse_tor_host(tor.entry(name, host=host))


def poll_once(hosts, timeout=5, **kw):
    poller = Poller(hosts, timeout=timeout, period=max(2, timeout + 1), **kw)
    try:
        return poller.poll_all(threading.Event()), poller
    finally:
        poller.close()


def fields(result) -> dict[str, dict]:
    return {s.measurement: dict(s.fields) for s in result.samples}


@pytest.mark.parametrize("auth, control, host", [
    ("password", "tcp4", None),
    ("cookie", "tcp4", None),
    ("none", "tcp4", None),
    ("password", "tcp6", None),
    ("password", "tcp4", "localhost"),
    ("cookie", "unix", None),
    ("password", "unix", None),
])
def test_poll_returns_what_tor_answers(make_tor, auth, control, host):
    tor = make_tor(auth=auth, control=control)
    [result], _ = poll_once([host_for(tor, host=host)])
    assert result.ok, result.error
    version, values = expected_values(tor)
    tags = dict(result.samples[0].tags)
    assert tags["version"] == version and version.startswith("0.4") and tags["host"] == "t"
    got = fields(result)
    assert got["traffic"] == {"read": values["traffic/read"], "written": values["traffic/written"]}
    assert got["connections"] == {"circuits_active": values["circuit-status"],
                                  "streams_active": values["stream-status"]}
    assert got["handshakes"]["ntor_requested"] == values["stats/ntor/requested"]
    assert abs(result.samples[0].time_ms - time.time() * 1000) < 5000


def test_a_password_with_quotes_backslashes_and_colons(make_tor):
    tor = make_tor(auth="password", password='a"b\\c:d e')
    [result], _ = poll_once([host_for(tor)])
    assert result.ok, result.error


def test_cookie_auth_uses_safecookie(make_tor, proxy_factory):
    tor = make_tor(auth="cookie")
    proxy = proxy_factory(tor.port)
    [result], _ = poll_once([TorHost("t", "127.0.0.1", proxy.port)])
    assert result.ok, result.error
    commands = [c.split()[0] + (" " + c.split()[1] if c.startswith("AUTHCHALLENGE") else "") for c in proxy.commands()]
    assert commands[:3] == ["PROTOCOLINFO", "AUTHCHALLENGE SAFECOOKIE", "AUTHENTICATE"]


def test_a_peer_that_does_not_know_the_cookie_gets_nothing_derived_from_it(make_tor):
    """A fake control port pointing at tor's real cookie file cannot pass SAFECOOKIE: the daemon checks
    the server hash before it sends its own."""
    tor = make_tor(auth="cookie")
    fake = FakeControlPort({
        "PROTOCOLINFO": (f'250-PROTOCOLINFO 1\r\n250-AUTH METHODS=COOKIE,SAFECOOKIE COOKIEFILE="{tor.cookie_path}"\r\n'
                         '250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n').encode(),
        "AUTHCHALLENGE": b"250 AUTHCHALLENGE SERVERHASH=" + b"0" * 64 + b" SERVERNONCE=" + b"1" * 64 + b"\r\n"})
    try:
        [result], _ = poll_once([TorHost("t", "127.0.0.1", fake.port)])
    finally:
        fake.close()
    assert result.failure.reason == Reason.AUTH and "does not know tor's cookie" in result.error
    assert not any(c.startswith("AUTHENTICATE") for c in fake.commands), fake.commands


def test_plain_cookie_authentication_is_never_used(tmp_path):
    """COOKIE would send the file's bytes to whatever answers: a peer naming any 32-byte file gets nothing."""
    stolen = tmp_path / "secret32"
    stolen.write_bytes(b"S" * 32)
    fake = FakeControlPort({"PROTOCOLINFO": (f'250-PROTOCOLINFO 1\r\n250-AUTH METHODS=COOKIE COOKIEFILE="{stolen}"\r\n'
                                             '250 OK\r\n').encode()})
    try:
        [result], _ = poll_once([TorHost("t", "127.0.0.1", fake.port)])
    finally:
        fake.close()
    assert result.failure.reason == Reason.AUTH and "COOKIE" in result.error
    assert not any(c.startswith("AUTHENTICATE") for c in fake.commands)


def test_wrong_password_is_reported_without_the_password(make_tor):
    tor = make_tor(auth="password")
    [result], _ = poll_once([TorHost(name="t", address="127.0.0.1", port=tor.port, password="wrong-pass-word")])
    assert result.failure.reason == Reason.AUTH and "authentication failed" in result.error
    assert "wrong-pass-word" not in result.error


def test_missing_password_explains_the_entry_form(make_tor):
    tor = make_tor(auth="password")
    host = parse_tor_host(f"127.0.0.1:{tor.port}:mypassw0rd", "TOR_HOSTS entry 1")
    [result], _ = poll_once([host])
    assert result.failure.reason == Reason.AUTH
    assert "tor asks for a password and TOR_HOSTS entry 1 gives none" in result.error
    assert result.name == f"TOR_HOSTS entry 1 (127.0.0.1:{tor.port})"  # never the name, which may be a password


def test_refused_and_unresolvable_hosts_fail_fast():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    started = time.monotonic()
    results, _ = poll_once([TorHost("a", "127.0.0.1", closed), TorHost("b", "no-such-host.invalid", 9051)])
    assert time.monotonic() - started < 5
    assert (results[0].failure.reason, results[0].error) == (Reason.REFUSED, "connection refused")
    assert results[1].failure.reason == Reason.RESOLVE and "cannot resolve" in results[1].error


def test_one_connection_kept_and_one_getinfo_per_poll(make_tor, proxy_factory):
    tor = make_tor(auth="password")
    proxy = proxy_factory(tor.port)
    poller = Poller([TorHost("t", "127.0.0.1", proxy.port, password=tor.password)], timeout=5, period=6)
    try:
        for _ in range(3):
            [result] = poller.poll_all(threading.Event())
            assert result.ok, result.error
    finally:
        poller.close()
    assert proxy.accepted == 1 and poller.sessions[0].connects == 1
    getinfos = [c for c in proxy.commands() if c.startswith("GETINFO")]
    assert getinfos == ["GETINFO version " + " ".join(CORE_KEYS)] * 3  # version asked at every poll
    assert [c.split()[0] for c in proxy.commands()] == ["PROTOCOLINFO", "AUTHENTICATE"] + ["GETINFO"] * 3


def test_unknown_key_is_dropped_with_one_warning(make_tor, proxy_factory, caplog):
    import tor2influxdb2.sources.control.metricsets as ms
    tor = make_tor(auth="none")
    proxy = proxy_factory(tor.port)
    original = ms.SET_KEYS["core"]
    ms.SET_KEYS["core"] = original + ("stats/no/such/key",)  # real tor answers 552 Unrecognized key
    poller = Poller([TorHost("t", "127.0.0.1", proxy.port)], timeout=5, period=6)
    try:
        with caplog.at_level("WARNING", logger="tor2influxdb2"):
            first, = poller.poll_all(threading.Event())
            second, = poller.poll_all(threading.Event())
    finally:
        ms.SET_KEYS["core"] = original
        poller.close()
    assert first.ok and second.ok and fields(first).keys() == fields(second).keys()
    assert len([r for r in caplog.records if "stats/no/such/key" in r.getMessage()]) == 1
    getinfos = [c for c in proxy.commands() if c.startswith("GETINFO")]
    assert len(getinfos) == 3 and "stats/no/such/key" in getinfos[0] and "stats/no/such/key" not in getinfos[2]


def test_points_have_every_core_field_as_integer(make_tor):
    tor = make_tor(auth="none")
    [result], _ = poll_once([host_for(tor)])
    lines = LineEncoder().encode_all(result.samples)
    assert [line.split(",")[0] for line in lines] == ["traffic", "connections", "handshakes"]
    for line in lines:
        assert all(f.split("=")[1].endswith("i") for f in line.split(" ")[1].split(",")), line


# ------------------------------------------------------------------ restarts

def test_tor_restarted_on_same_port_is_polled_again(make_tor):
    tor = make_tor(auth="password")
    poller = Poller([host_for(tor)], timeout=2, period=3)
    try:
        assert poller.poll_all(threading.Event())[0].ok
        tor.stop()
        [down] = poller.poll_all(threading.Event())
        assert down.failure.reason == Reason.REFUSED
        tor.start()
        [again] = poller.poll_all(threading.Event())
        assert again.ok, again.error
        assert poller.sessions[0].connects == 2
    finally:
        poller.close()


def test_tor_restarted_between_cycles_is_polled_in_the_next_cycle(make_tor):
    tor = make_tor(auth="password")
    poller = Poller([host_for(tor, "restarted")], timeout=3, period=5)
    try:
        [first] = poller.poll_all(threading.Event())
        tor.stop()
        tor.start()
        [second] = poller.poll_all(threading.Event())
        assert first.ok and second.ok, second.error
        assert poller.sessions[0].connects == 2
    finally:
        poller.close()


# ------------------------------------------------------------------ sockets that fail outside a read

def poll_on(session: ControlSession, loop: EventLoop, limit: float = 10.0):
    """One poll of `session` on the real loop, the loop run only until it ends: (samples, failure)."""
    calls = []
    session.start(time.monotonic(), lambda s, samples, failure: calls.append((samples, failure)))
    deadline = time.monotonic() + limit
    while not calls and time.monotonic() < deadline:
        loop.run_once(0.05)
    assert len(calls) == 1, calls
    return calls[0]


def test_a_kept_connection_reset_just_before_a_poll_is_connected_again():
    """tor resets the kept connection (SO_LINGER 0) after a poll, and the reset has not been read when
    the next poll sends its questions: the send fails with 'connection reset', and that poll connects
    again and answers, as when the reset is read."""
    reset = threading.Event()
    polls = []

    def getinfo(command, conn):
        polls.append(command)
        if len(polls) > 1:
            return core_answer()
        conn.sendall(core_answer())
        reset.wait(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False  # the fake closes the connection: with SO_LINGER 0, a reset

    fake = FakeControlPort({"GETINFO": getinfo})
    loop = EventLoop()
    session = ControlSession(parse_tor_host(fake.entry("reset")), Plan(), TagPolicy(), 5.0, loop)
    try:
        samples, failure = poll_on(session, loop)
        assert failure is None and samples
        kept = session.sock
        reset.set()
        assert select.select([kept], [], [], 5)[0], "the reset did not arrive"  # not read: the loop is not run
        samples, failure = poll_on(session, loop)
        assert failure is None, failure
        assert {s.measurement for s in samples} == {"traffic", "connections", "handshakes"}
        assert fake.accepted == 2 and session.connects == 2 and len(polls) == 2
    finally:
        session.close()
        loop.close()
        fake.close()


def test_a_socket_path_connect_refuses_is_a_failure_of_that_poll():
    """A unix socket path longer than sun_path (the configuration refuses it; here given directly):
    connect() raises, and the poll ends with that failure instead of the exception."""
    loop = EventLoop()
    session = ControlSession(TorHost("long", socket_path="/tmp/" + "s" * 200), Plan(), TagPolicy(), 5.0, loop)
    try:
        samples, failure = poll_on(session, loop)
        assert samples is None and "path too long" in failure.message
        assert session.sock is None and not session.busy
    finally:
        loop.close()
