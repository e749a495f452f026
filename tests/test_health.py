"""health: the file's content (masked), atomic writes, links it will and will not follow, the watchdog
and the verdict."""

import os
import threading

import pytest

from tor2influxdb2.files import UnsafePath
from tor2influxdb2.health import HealthFile, Watchdog, verdict
from tor2influxdb2.redact import REDACTOR


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_ok_content_starts_with_ok_and_the_time(tmp_path):
    health = HealthFile(str(tmp_path / "h"), clock=lambda: 1795300000.7)
    health.write(True)
    assert (tmp_path / "h").read_text() == "OK 1795300000\n"


def test_failed_content_never_contains_ok(tmp_path):
    health = HealthFile(str(tmp_path / "h"), clock=lambda: 1795300000)
    health.write(False, "host BOOKSHOP: OK? no; InfluxDB answered 401: unauthorized")
    text = (tmp_path / "h").read_text()
    assert text.startswith("FAILED 1795300000 host BO") and "OK" not in text
    assert text.count("\n") == 1


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    path = tmp_path / "h"
    health = HealthFile(str(path))
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
    with pytest.raises((OSError, UnsafePath)):
        HealthFile(str(tmp_path / "missing-dir" / "h")).write(False, "x")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a link another user owns needs root (lchown)")
def test_a_link_planted_by_another_user_is_not_followed(tmp_path):
    """HEALTHCHECK_FILE -> a link owned by someone else, pointing at a file of ours: refused, target intact."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o1777)  # like /tmp
    link = public / "t2i.health"
    link.symlink_to(victim)
    os.lchown(link, 65534, 65534)
    with pytest.raises(UnsafePath, match="is a link owned by uid 65534"):
        HealthFile(str(link))
    assert victim.read_text() == "precious" and oct(victim.stat().st_mode & 0o777) == "0o600"


def test_a_directory_others_can_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match="other users can write to the directory"):
        HealthFile(str(shared / "health"))


def test_watchdog_fails_when_no_cycle_finished_for_three_periods(tmp_path):
    clock = FakeClock()
    health = HealthFile(str(tmp_path / "h"))
    health.write(True)
    dog = Watchdog(health, limit=30, stop=threading.Event(), clock=clock)
    clock.now += 29
    assert not dog.check() and (tmp_path / "h").read_text().startswith("OK")
    dog.cycle_finished()
    clock.now += 31
    assert dog.check()
    text = (tmp_path / "h").read_text()
    assert text.startswith("FAILED") and "no cycle finished for 31 s" in text


def test_watchdog_thread_stops_promptly(tmp_path):
    stop = threading.Event()
    dog = Watchdog(HealthFile(str(tmp_path / "h")), 30, stop)
    dog.start()
    stop.set()
    dog.thread.join(1.5)
    assert not dog.thread.is_alive()


def test_verdict_names_failed_hosts_and_what_the_outputs_report():
    assert verdict([]) == (True, "")
    healthy, reason = verdict([("b", "no answer within 5 s")], ["40 points waiting for InfluxDB for 31 s"])
    assert not healthy and reason == "host b: no answer within 5 s; 40 points waiting for InfluxDB for 31 s"
    healthy, reason = verdict([(f"h{i}", "down") for i in range(7)])
    assert reason.endswith("host h4: down; and 2 more hosts")


def test_a_secret_echoed_by_a_peer_never_reaches_the_file(tmp_path):
    """An InfluxDB quoting the Authorization header, a tor quoting AUTHENTICATE: masked in every form."""
    REDACTOR.add("tok-en/secret+value")
    try:
        health = HealthFile(str(tmp_path / "h"), clock=lambda: 1795300000)
        health.write(False, 'InfluxDB answered 400: bad header "Authorization: Token tok-en/secret+value"; '
                            'tor said AUTHENTICATE "tok-en\\/secret+value" url tok-en%2Fsecret%2Bvalue')
        text = (tmp_path / "h").read_text()
        assert "secret" not in text and text.count("****") == 3, text
    finally:
        REDACTOR.clear()


def test_writes_through_a_link_replace_its_target(tmp_path):
    """The image's /healthcheck is a link to /tmp/healthcheck: HEALTHCHECK_FILE=/healthcheck must work."""
    (tmp_path / "writable").mkdir()
    link = tmp_path / "healthcheck"
    link.symlink_to(tmp_path / "writable" / "healthcheck")
    health = HealthFile(str(link), clock=lambda: 1795300000)
    health.write(True)
    health.write(False, "down")
    assert link.is_symlink() and link.read_text() == "FAILED 1795300000 down\n"
    assert os.listdir(tmp_path / "writable") == ["healthcheck"]
