"""Section 2, Tor polling, against real tor daemons (DisableNetwork 1, SocksPort 0)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import stem.connection

import tor_to_influxdb2 as t2i
from support import wait_for


def expected_values(tor) -> tuple[str, dict[str, int]]:
    """What tor itself answers for the daemon's keys, asked through stem's own Controller."""
    with tor.controller() as c:
        c.clear_cache()
        version = c.get_info("version").split(" ")[0]
        values = {}
        for key in t2i.GETINFO_KEYS[1:]:
            raw = c.get_info(key)
            values[key] = len([line for line in raw.splitlines() if line.strip()]) \
                if key in t2i.LINE_COUNT_KEYS else int(raw)
    return version, values


def host_for(tor, name="t", host=None) -> t2i.TorHost:
    return t2i.parse_tor_host(tor.entry(name, host=host))


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 between the daemon and a tor that records what the daemon sends.
    mode "silent": accept and never answer; mode "dribble": answer one byte every `interval` s."""

    def __init__(self, target_port: int | None = None, mode: str = "forward", interval: float = 0.2):
        self.target_port, self.mode, self.interval = target_port, mode, interval
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(50)
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()
        self.accepted = 0
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(client)
            if self.mode == "forward":
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self.conns.append(upstream)
                threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
                threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()
            elif self.mode == "dribble":
                threading.Thread(target=self._dribble, args=(client,), daemon=True).start()
            elif self.mode == "hangup":
                client.close()
            else:  # silent: read whatever comes, never answer, close when the client does
                threading.Thread(target=self._swallow, args=(client,), daemon=True).start()

    def _swallow(self, client):
        try:
            while client.recv(4096):
                pass
        except OSError:
            pass
        client.close()
        self.conns.remove(client)

    def _pipe(self, src, dst, record):
        try:
            while data := src.recv(65536):
                if record:
                    self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _dribble(self, client):
        try:
            client.recv(1024)
            while not self.stopped.wait(self.interval):
                client.sendall(b"2")
        except OSError:
            pass

    def commands(self) -> list[str]:
        return [line for line in self.sent.decode(errors="replace").split("\r\n") if line]

    def close(self):
        self.stopped.set()
        self.listener.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def proxy_factory():
    made = []

    def make(*args, **kwargs):
        made.append(RecordingProxy(*args, **kwargs))
        return made[-1]

    yield make
    for p in made:
        p.close()


# ------------------------------------------------------------------ auth and addressing forms

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
    conn = t2i.TorConnection(host_for(tor, host=host), timeout=5)
    try:
        stats = conn.poll()
    finally:
        conn.close()
    version, values = expected_values(tor)
    assert stats.version == version and version.startswith("0.4")
    assert stats.values == values
    assert abs(stats.collected_ms - time.time() * 1000) < 5000


def test_cookie_auth_uses_safecookie_when_tor_offers_it(make_tor, monkeypatch):
    tor = make_tor(auth="cookie")
    used = []
    for method in ("authenticate_safecookie", "authenticate_cookie", "authenticate_password",
                   "authenticate_none"):
        original = getattr(stem.connection, method)
        monkeypatch.setattr(stem.connection, method,
                            lambda *a, _m=method, _o=original, **k: (used.append(_m), _o(*a, **k))[1])
    conn = t2i.TorConnection(host_for(tor), timeout=5)
    try:
        conn.poll()
    finally:
        conn.close()
    assert used == ["authenticate_safecookie"]


def test_wrong_password_is_reported_without_the_password(make_tor):
    tor = make_tor(auth="password")
    host = t2i.TorHost(name="t", address="127.0.0.1", port=tor.port, password="wrong-pass-word")
    conn = t2i.TorConnection(host, timeout=5)
    with pytest.raises(t2i.PollError) as info:
        conn.poll()
    assert "authentication failed" in str(info.value) and "wrong-pass-word" not in str(info.value)


def test_missing_password_is_reported(make_tor):
    tor = make_tor(auth="password")
    conn = t2i.TorConnection(t2i.TorHost(name="t", address="127.0.0.1", port=tor.port), timeout=5)
    with pytest.raises(t2i.PollError, match="authentication failed"):
        conn.poll()


def test_refused_and_unresolvable_hosts_fail_fast():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    closed = port.getsockname()[1]
    port.close()
    for host, needle in ((t2i.TorHost("a", "127.0.0.1", closed), "refused"),
                         (t2i.TorHost("b", "no-such-host.invalid", 9051), "cannot resolve")):
        started = time.monotonic()
        with pytest.raises(t2i.PollError, match=needle):
            t2i.TorConnection(host, timeout=5).poll()
        assert time.monotonic() - started < 5


# ------------------------------------------------------- one connection, one GETINFO per poll

def test_one_connection_kept_and_one_getinfo_per_poll(make_tor, proxy_factory):
    tor = make_tor(auth="password")
    proxy = proxy_factory(tor.port)
    host = t2i.TorHost("t", "127.0.0.1", proxy.port, password=tor.password)
    conn = t2i.TorConnection(host, timeout=5)
    try:
        for _ in range(3):
            conn.poll()
    finally:
        conn.close()
    assert proxy.accepted == 1 and conn.connects == 1
    getinfos = [c for c in proxy.commands() if c.startswith("GETINFO")]
    assert getinfos == ["GETINFO " + " ".join(t2i.GETINFO_KEYS)] * 3  # version asked at every poll
    assert [c.split()[0] for c in proxy.commands()] == ["PROTOCOLINFO", "AUTHENTICATE"] + ["GETINFO"] * 3


def test_unknown_key_is_dropped_with_one_warning(make_tor, proxy_factory, caplog):
    tor = make_tor(auth="none")
    proxy = proxy_factory(tor.port)
    conn = t2i.TorConnection(t2i.TorHost("t", "127.0.0.1", proxy.port), timeout=5)
    conn.keys += ("stats/no/such/key",)  # real tor answers 552 Unrecognized key
    conn.command = "GETINFO " + " ".join(conn.keys)
    try:
        with caplog.at_level("WARNING", logger="tor2influxdb2"):
            first, second = conn.poll(), conn.poll()
    finally:
        conn.close()
    assert first.values == second.values and "stats/no/such/key" not in first.values
    assert len([r for r in caplog.records if "stats/no/such/key" in r.getMessage()]) == 1
    getinfos = [c for c in proxy.commands() if c.startswith("GETINFO")]
    assert len(getinfos) == 3 and "stats/no/such/key" in getinfos[0] and "stats/no/such/key" not in getinfos[2]


def test_points_have_every_field_as_integer(make_tor):
    tor = make_tor(auth="none")
    conn = t2i.TorConnection(host_for(tor), timeout=5)
    try:
        stats = conn.poll()
    finally:
        conn.close()
    lines = t2i.to_lines(stats, "tor", True)
    assert [line.split(",")[0] for line in lines] == ["traffic", "connections", "handshakes"]
    for line in lines:
        fields = line.split(" ")[1].split(",")
        assert all(f.split("=")[1].endswith("i") for f in fields), line


# --------------------------------------------------------------- restarts, silence, timeouts

def test_tor_restarted_on_same_port_is_polled_again(make_tor):
    tor = make_tor(auth="password")
    conn = t2i.TorConnection(host_for(tor), timeout=2)
    try:
        conn.poll()
        tor.stop()
        with pytest.raises(t2i.PollError):
            conn.poll()
        tor.start()
        stats = conn.poll()
        assert stats.version.startswith("0.4") and conn.connects == 2
    finally:
        conn.close()


def test_silent_port_costs_the_others_nothing(make_tor, proxy_factory):
    tor = make_tor(auth="password")
    silent = proxy_factory(mode="silent")
    hosts = [host_for(tor, "good"), t2i.TorHost("silent", "127.0.0.1", silent.port)]
    poller = t2i.Poller(hosts, timeout=1.0, period=2)
    stop = threading.Event()
    try:
        started = time.monotonic()
        good, bad = poller.poll_all(stop)
        took = time.monotonic() - started
        assert good.stats is not None and bad.error == "no answer within 1 s"
        assert took < 1.6
        # next cycle: the silent host is in backoff, the good one answers at once
        started = time.monotonic()
        good, bad = poller.poll_all(stop)
        assert good.stats is not None and "next try in" in bad.error
        assert time.monotonic() - started < 0.5
    finally:
        poller.close()


def test_dribbling_peer_is_cut_at_the_deadline(proxy_factory):
    dribble = proxy_factory(mode="dribble", interval=0.1)
    conn = t2i.TorConnection(t2i.TorHost("d", "127.0.0.1", dribble.port), timeout=0.5)
    poller = t2i.Poller([conn.host], timeout=0.5, period=5)
    try:
        started = time.monotonic()
        [result] = poller.poll_all(threading.Event())
        assert result.error is not None and time.monotonic() - started < 1.5
    finally:
        poller.close()


def test_stop_event_ends_a_cycle_at_once(proxy_factory):
    silent = proxy_factory(mode="silent")
    poller = t2i.Poller([t2i.TorHost("s", "127.0.0.1", silent.port)], timeout=4, period=5)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    try:
        [result] = poller.poll_all(stop)
        assert result.error is not None and time.monotonic() - started < 1.0
    finally:
        poller.close()
    assert time.monotonic() - started < 1.5  # no reconnect after the abort, nothing left waiting


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _run_cycles(poller, cycles, check=None):
    stop = threading.Event()
    for _ in range(20):
        poller.poll_all(stop)
    def poll_threads():
        return len([t for t in threading.enumerate() if t.name.startswith("poll")])

    threads, fds = poll_threads(), _fd_count()
    for _ in range(cycles):
        results = poller.poll_all(stop)
        if check:
            check(results)
    assert poll_threads() <= threads
    # the test's own proxy threads close their end a moment after the daemon's side
    wait_for(lambda: _fd_count() <= fds + 2, 3, what=f"fds back to {fds} (now {_fd_count()})")


def test_no_thread_or_socket_leak_over_thousands_of_cycles(make_tor, proxy_factory):
    tor = make_tor(auth="password")
    hangup = proxy_factory(mode="hangup")
    hosts = [host_for(tor, "good"), t2i.TorHost("hangup", "127.0.0.1", hangup.port),
             t2i.TorHost("refused", "127.0.0.1", _closed_port())]
    poller = t2i.Poller(hosts, timeout=3, period=5)
    poller.MAX_BACKOFF = 0

    def check(results):
        assert results[0].stats is not None and results[1].error and results[2].error

    try:
        _run_cycles(poller, 2000, check)
        assert poller.states[0].conn.connects == 1 and hangup.accepted >= 2000
    finally:
        poller.close()


def test_no_leak_when_hosts_time_out_every_cycle(proxy_factory):
    silent = proxy_factory(mode="silent")
    hosts = [t2i.TorHost(f"silent{i}", "127.0.0.1", silent.port) for i in range(3)]
    poller = t2i.Poller(hosts, timeout=0.05, period=1)
    poller.MAX_BACKOFF = 0

    def check(results):
        assert all(r.error and r.error.startswith("no answer") for r in results), results

    try:
        _run_cycles(poller, 60, check)
    finally:
        poller.close()


def test_polls_that_never_started_are_reported_not_crashed(make_tor, proxy_factory):
    """More hosts than workers and a budget that ends before the queue does: the rest are reported."""
    silent = proxy_factory(mode="silent")
    tor = make_tor(auth="none")
    hosts = [t2i.TorHost(f"silent{i}", "127.0.0.1", silent.port) for i in range(3)] + [host_for(tor, "late")]
    poller = t2i.Poller(hosts, timeout=1.0, period=2)
    poller.pool.shutdown()
    poller.pool = __import__("concurrent.futures").futures.ThreadPoolExecutor(2)  # fewer workers than hosts
    try:
        results = poller.poll_all(threading.Event(), budget=0.3)
        assert [r.error for r in results[2:]] == ["not polled: the cycle ran out of time"] * 2
        assert not any(s.busy for s in poller.states[2:])
        results = poller.poll_all(threading.Event(), budget=5)  # the host left out is polled next time
        assert results[3].stats is not None
    finally:
        poller.close()


def test_tor_restarted_between_cycles_is_polled_in_the_next_cycle(make_tor):
    tor = make_tor(auth="password")
    poller = t2i.Poller([host_for(tor, "restarted")], timeout=3, period=5)
    try:
        [first] = poller.poll_all(threading.Event())
        tor.stop()
        tor.start()
        [second] = poller.poll_all(threading.Event())
        assert first.stats is not None and second.stats is not None, second.error
        assert poller.states[0].conn.connects == 2
    finally:
        poller.close()


def test_backoff_after_a_timeout_is_what_the_log_says(proxy_factory, caplog):
    """After a timeout: "next try in 2 s" means the cycle 2 s later, not one more period after it."""
    silent = proxy_factory(mode="silent")
    poller = t2i.Poller([t2i.TorHost("s", "127.0.0.1", silent.port)], timeout=0.5, period=2)
    stop = threading.Event()
    try:
        with caplog.at_level("WARNING", logger="tor2influxdb2"):
            poller.poll_all(stop)                                  # cycle at t=0: times out
        assert "next try in 2 s" in caplog.text
        state = poller.states[0]
        assert state.retry_at <= time.monotonic() + 2 - 0.5        # the cycle at t=2 tries again
        poller.poll_all(stop)                                      # (run at ~0.6 s: still backing off)
        assert silent.accepted == 1
    finally:
        poller.close()
