"""poller: many tors at once from one loop thread; silent, dribbling and vanishing peers cost the others
nothing; backoff; no thread or socket leak; failures of many tors summed up in one line."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from fake_control import FakeControlPort
from hostile_peers import core_answer
from support import wait_for
from tor2influxdb2.errors import Reason
from tor2influxdb2.poller import Poller
from tor2influxdb2.targets import TorHost, parse_tor_host


def host_for(tor, name="t") -> TorHost:
    return parse_tor_host(tor.entry(name))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_silent_port_costs_the_others_nothing(make_tor, proxy_factory):
    tor = make_tor(auth="none")
    silent = proxy_factory(mode="silent")
    poller = Poller([host_for(tor, "good"), TorHost("silent", "127.0.0.1", silent.port)], timeout=1.5, period=3)
    stop = threading.Event()
    try:
        started = time.monotonic()
        good, bad = poller.poll_all(stop)
        took = time.monotonic() - started
        assert good.ok and bad.error == "no answer within 1.5 s" and bad.failure.reason == Reason.TIMEOUT
        assert took < 2.1
        started = time.monotonic()  # next cycle: the silent host backs off, the good one answers at once
        good, bad = poller.poll_all(stop)
        assert good.ok and bad.skipped and "next try in" in bad.error
        assert time.monotonic() - started < 0.5
    finally:
        poller.close()


def test_dribbling_peer_is_cut_at_the_deadline(proxy_factory):
    dribble = proxy_factory(mode="dribble", interval=0.05)
    poller = Poller([TorHost("d", "127.0.0.1", dribble.port)], timeout=0.5, period=5)
    try:
        started = time.monotonic()
        [result] = poller.poll_all(threading.Event())
        assert result.failure is not None and time.monotonic() - started < 1.5
    finally:
        poller.close()


def test_stop_event_ends_a_cycle_at_once(proxy_factory):
    silent = proxy_factory(mode="silent")
    poller = Poller([TorHost("s", "127.0.0.1", silent.port)], timeout=4, period=5)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    try:
        [result] = poller.poll_all(stop)
        assert result.failure.reason == Reason.STOPPING and time.monotonic() - started < 1.0
    finally:
        poller.close()
    assert time.monotonic() - started < 1.5


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


DAEMON_THREADS = {"poll", "resolve", "delivery", "watchdog", "prometheus"}  # the names the package gives


def _daemon_threads() -> int:
    """The package's own threads (the test peers' threads, one per connection, come and go)."""
    return sum(1 for thread in threading.enumerate() if thread.name in DAEMON_THREADS)


def _run_cycles(poller, cycles, check=None):
    stop = threading.Event()
    for _ in range(20):
        poller.poll_all(stop)
    threads, fds = _daemon_threads(), _fd_count()
    assert threads >= 1, "the poller's thread is named as DAEMON_THREADS says"
    for _ in range(cycles):
        results = poller.poll_all(stop)
        if check:
            check(results)
    assert _daemon_threads() <= threads
    wait_for(lambda: _fd_count() <= fds + 2, 3, what=f"fds back to {fds} (now {_fd_count()})")


def test_no_thread_or_socket_leak_over_thousands_of_cycles(make_tor, proxy_factory):
    tor = make_tor(auth="password")
    hangup = proxy_factory(mode="hangup")
    poller = Poller([host_for(tor, "good"), TorHost("hangup", "127.0.0.1", hangup.port),
                     TorHost("refused", "127.0.0.1", _closed_port())], timeout=3, period=5)
    poller.MAX_BACKOFF = 0

    def check(results):
        assert results[0].ok and results[1].failure and results[2].failure.reason == Reason.REFUSED

    try:
        _run_cycles(poller, 2000, check)
        assert poller.sessions[0].connects == 1 and hangup.accepted >= 2000
    finally:
        poller.close()


def test_no_leak_when_hosts_time_out_every_cycle(proxy_factory):
    silent = proxy_factory(mode="silent")
    poller = Poller([TorHost(f"silent{i}", "127.0.0.1", silent.port) for i in range(3)], timeout=0.05, period=1)
    poller.MAX_BACKOFF = 0

    def check(results):
        assert all(r.failure and r.failure.reason == Reason.TIMEOUT for r in results), results

    try:
        _run_cycles(poller, 60, check)
    finally:
        poller.close()


def test_tors_not_reached_in_the_budget_are_reported_and_polled_next_time(make_tor, proxy_factory):
    """More tors to connect than the loop connects at once, and a budget that ends first."""
    silent = proxy_factory(mode="silent")
    tor = make_tor(auth="none")
    hosts = [TorHost(f"silent{i}", "127.0.0.1", silent.port) for i in range(3)] + [host_for(tor, "late")]
    poller = Poller(hosts, timeout=1.0, period=2)
    poller.MAX_CONNECTING = 2
    try:
        results = poller.poll_all(threading.Event(), budget=0.3)
        assert [r.error for r in results[2:]] == ["not polled: the cycle ran out of time"] * 2
        assert all(r.skipped for r in results[2:])
        time.sleep(1.2)  # the first two time out; their backoff does not block the others
        results = poller.poll_all(threading.Event(), budget=5)
        assert results[3].ok, results[3].error
    finally:
        poller.close()


def test_backoff_after_a_timeout_is_what_the_log_says(proxy_factory, caplog):
    """After a timeout: "next try in 2 s" means the cycle 2 s later, not one more period after it."""
    silent = proxy_factory(mode="silent")
    poller = Poller([TorHost("s", "127.0.0.1", silent.port)], timeout=0.5, period=2)
    stop = threading.Event()
    try:
        with caplog.at_level("WARNING", logger="tor2influxdb2"):
            poller.poll_all(stop)  # cycle at t=0: times out
        assert "next try in 2 s" in caplog.text
        assert poller.targets[0].c.retry_at <= time.monotonic() + 2 - 0.5
        poller.poll_all(stop)      # (run at ~0.6 s: still backing off)
        assert silent.accepted == 1
    finally:
        poller.close()


@pytest.mark.parametrize("broken", [0, 1, 2])
def test_an_unexpected_error_of_one_tor_fails_that_tor_only(caplog, broken):
    """A bug that raises as a poll starts (here: as a kept connection asks) fails that tor's poll, logged
    once and masked; the others, also those after it in TOR_HOSTS, are polled in the same cycle, which
    ends as soon as they answered (a poll that ends as it starts does not end the cycle before the rest
    started)."""
    from tor2influxdb2.redact import REDACTOR
    ports = [FakeControlPort({"GETINFO": core_answer()}) for _ in range(3)]
    poller = Poller([parse_tor_host(port.entry(f"t{i}")) for i, port in enumerate(ports)], timeout=2, period=5)
    REDACTOR.add("bug-secret-77")

    def broken_ask():
        raise RuntimeError("a bug holding bug-secret-77")

    try:
        assert all(r.ok for r in poller.poll_all(threading.Event()))
        poller.sessions[broken]._ask = broken_ask
        with caplog.at_level("WARNING", logger="tor2influxdb2"):
            started = time.monotonic()
            results = poller.poll_all(threading.Event())
            took = time.monotonic() - started
            again = poller.poll_all(threading.Event())
    finally:
        poller.close()
        REDACTOR.clear()
        for port in ports:
            port.close()
    failed = results.pop(broken)
    assert all(r.ok for r in results), [r.error for r in results]
    assert failed.failure.reason == Reason.INTERNAL
    assert failed.error == "unexpected error: a bug holding ****"
    assert took < 1.0  # not the cycle's budget: nothing waited for the failed tor
    assert again.pop(broken).skipped and all(r.ok for r in again)  # the failed one backs off
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == [f"t{broken} (127.0.0.1:{ports[broken].port}): unexpected error: a bug holding ****; "
                     "next try in 5 s"]


def test_failures_of_many_tors_are_one_line(caplog):
    closed = _closed_port()
    hosts = [TorHost(f"relay{i:02}", "127.0.0.1", closed) for i in range(40)]
    poller = Poller(hosts, timeout=1, period=2)
    try:
        with caplog.at_level("WARNING", logger="tor2influxdb2"):
            results = poller.poll_all(threading.Event())
    finally:
        poller.close()
    assert all(r.failure.reason == Reason.REFUSED for r in results)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["40 tors failed: 40 connection refused (relay00, relay01, relay02, relay03, relay04 and 35 more)"]


def test_a_thousand_kept_connections_polled_in_one_cycle(make_tor):
    """One loop thread, 1,000 connections to the same real tor: every poll answers within the cycle."""
    from tor2influxdb2.daemon import ensure_fd_limit
    ensure_fd_limit(1000)  # an ordinary user's soft limit is often 1,024
    tor = make_tor(auth="none")
    hosts = [parse_tor_host(f"127.0.0.1:{tor.port}:t{i}") for i in range(1000)]
    threads = set(threading.enumerate())
    poller = Poller(hosts, timeout=5, period=10)
    try:
        first = poller.poll_all(threading.Event())
        assert sum(r.ok for r in first) == 1000, {r.error for r in first if not r.ok}
        started = time.monotonic()
        second = poller.poll_all(threading.Event())
        took = time.monotonic() - started
        assert sum(r.ok for r in second) == 1000
        assert [t.name for t in set(threading.enumerate()) - threads] == ["poll"]  # one thread for them all
        assert sum(s.connects for s in poller.sessions) == 1000
    finally:
        poller.close()
    print(f"1,000 kept connections to one tor: steady cycle {took:.3f} s")


def test_each_tor_is_handed_to_on_result_once_as_soon_as_both_its_sources_answered(make_tor, proxy_factory):
    """on_result gets every tor's result once, in the loop thread, with the samples of its control
    port and its MetricsPort, when both answered: while a silent tor still holds the cycle open. What
    it takes from a result is not kept anywhere (the result poll_all returns has no samples)."""
    from pathlib import Path

    from metricsport_standin import StandIn, tor_like
    from tor2influxdb2.sources.metricsport import DEFAULT_SELECTION, MetricsSession, parse_address
    body = (Path(__file__).parent / "data" / "metricsport" / "relay-exit-lead-capture.prom").read_bytes()
    tor = make_tor(auth="none")
    silent = proxy_factory(mode="silent")
    server = StandIn(tor_like(body, keep_open=False))
    hosts = [parse_tor_host(f"127.0.0.1:{tor.port}:t{i}") for i in range(20)] + [TorHost("silent", "127.0.0.1",
                                                                                        silent.port)]
    address = parse_address(f"127.0.0.1:{server.port}")
    metrics = {f"t{i}": (lambda loop, tags: MetricsSession(address, DEFAULT_SELECTION, "hash", 3, loop, tags))
               for i in range(20)}
    seen, started = [], time.monotonic()

    def on_result(result):
        seen.append((result.name, threading.current_thread().name, time.monotonic() - started,
                     {s.measurement for s in result.samples}, result.ok))
        result.samples = []
    poller = Poller(hosts, timeout=3, period=5, metrics=metrics, on_result=on_result)
    try:
        results = poller.poll_all(threading.Event())
        took = time.monotonic() - started
    finally:
        poller.close()
        server.close()
    assert sorted(name for name, *_ in seen) == sorted(h.name for h in hosts)  # each once
    assert {thread for _, thread, *_ in seen} == {"poll"}
    for name, _, at, measurements, ok in seen:
        if name == "silent":
            assert not ok and at >= 2.9  # handed over when the cycle ended
        else:
            assert ok and {"traffic", "tor_relay_flag", "tor_relay_load_onionskins_total"} <= measurements
            assert at < took - 1, (at, took)  # long before the silent tor let the cycle end
    assert [r.name for r in results] == [h.name for h in hosts] and not any(r.samples for r in results)
