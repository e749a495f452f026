"""Section 5, health: the file's content, atomic writes, the watchdog and the verdict."""

import os
import threading

import pytest

import tor_to_influxdb2 as t2i


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_ok_content_starts_with_ok_and_the_time(tmp_path):
    health = t2i.HealthFile(str(tmp_path / "h"), clock=lambda: 1795300000.7)
    health.write(True)
    assert (tmp_path / "h").read_text() == "OK 1795300000\n"


def test_failed_content_never_contains_ok(tmp_path):
    health = t2i.HealthFile(str(tmp_path / "h"), clock=lambda: 1795300000)
    health.write(False, "host BOOKSHOP: OK? no; InfluxDB answered 401: unauthorized")
    text = (tmp_path / "h").read_text()
    assert text.startswith("FAILED 1795300000 host BO") and "OK" not in text
    assert text.count("\n") == 1


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "h"
    health = t2i.HealthFile(str(path))
    seen = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.add(path.read_text().split(" ")[0])
            except FileNotFoundError:
                pass

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(500):
        health.write(i % 2 == 0, "down")
    stop.set()
    thread.join()
    assert seen <= {"OK", "FAILED"} and seen  # never empty or half-written
    assert os.listdir(tmp_path) == ["h"]


def test_unwritable_path_raises(tmp_path):
    with pytest.raises(OSError):
        t2i.HealthFile(str(tmp_path / "missing-dir" / "h")).write(False, "x")


def test_watchdog_fails_when_no_cycle_finished_for_three_periods(tmp_path):
    clock = FakeClock()
    health = t2i.HealthFile(str(tmp_path / "h"))
    health.write(True)
    dog = t2i.Watchdog(health, limit=30, stop=threading.Event(), clock=clock)
    clock.now += 29
    assert not dog.check() and (tmp_path / "h").read_text().startswith("OK")
    dog.cycle_finished()
    clock.now += 31
    assert dog.check()
    text = (tmp_path / "h").read_text()
    assert text.startswith("FAILED") and "no cycle finished for 31 s" in text


def test_watchdog_thread_stops_promptly(tmp_path):
    stop = threading.Event()
    dog = t2i.Watchdog(t2i.HealthFile(str(tmp_path / "h")), 30, stop)
    dog.start()
    stop.set()
    dog.thread.join(1.5)
    assert not dog.thread.is_alive()


def host(name):
    return t2i.TorHost(name, "127.0.0.1", 9051)


def test_verdict_names_failed_hosts_and_old_backlog():
    ok = t2i.PollResult(host("a"), stats=object())
    bad = t2i.PollResult(host("b"), error="no answer within 5 s")
    assert t2i.health_verdict([ok], 0, None, 30, None) == (True, "")
    assert t2i.health_verdict([ok], 10, 12.0, 30, "x") == (True, "")  # a young backlog is fine
    healthy, reason = t2i.health_verdict([ok, bad], 40, 31.0, 30, "InfluxDB answered 500: oops")
    assert not healthy
    assert reason == ("host b: no answer within 5 s; 40 points waiting for InfluxDB for 31 s "
                      "(InfluxDB answered 500: oops)")


def test_writes_through_a_link_replace_its_target(tmp_path):
    """The image's /healthcheck is a link to /tmp/healthcheck: HEALTHCHECK_FILE=/healthcheck must work."""
    (tmp_path / "writable").mkdir()
    link = tmp_path / "healthcheck"
    link.symlink_to(tmp_path / "writable" / "healthcheck")
    health = t2i.HealthFile(str(link), clock=lambda: 1795300000)
    health.write(True)
    health.write(False, "down")
    assert link.is_symlink() and link.read_text() == "FAILED 1795300000 down\n"
    assert os.listdir(tmp_path / "writable") == ["healthcheck"]
