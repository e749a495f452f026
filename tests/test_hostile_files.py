"""Hostile tier: the files the daemon writes, attacked or failing, against the real daemon.

A health-file link planted by another user, a directory on the path that other users can swap;
BUFFER_DIR on a full disk (a real tmpfs), a buffer.sqlite3 of another layout or of garbage, two
daemons on one BUFFER_DIR, BUFFER_DIR deleted while running. Points are read back from a real
VictoriaMetrics: nothing may be lost without being said.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hostile_peers import FakeControlPort, core_answer
from support import Daemon, VictoriaMetrics, run_daemon, wait_for
from tor2influxdb2.sinks.buffer import SqliteBuffer

pytestmark = pytest.mark.hostile

NOBODY = 65534


def env_for(tmp_path: Path, url: str, tor_hosts: str, **extra) -> dict:
    env = {"TOR_HOSTS": tor_hosts, "INFLUX_URL": url, "INFLUX_ORGANIZATION": "org", "INFLUX_BUCKET": "bucket",
           "INFLUX_TOKEN": "hostile-files-token-90f1", "RUN_EVERY_SECONDS": "1", "TOR_TIMEOUT": "0.8",
           "INFLUX_TIMEOUT": "2", "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health")}
    env.update(extra)
    return env


@pytest.fixture
def control():
    port = FakeControlPort({"GETINFO": core_answer()})
    yield port
    port.close()


@pytest.fixture
def own_victoria(tmp_path):
    """A VictoriaMetrics of this test alone, not started: the test starts (and stops) it."""
    vm = VictoriaMetrics(tmp_path / "vm")
    yield vm
    vm.stop()


def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root (to make a file another user owns, or to mount a tmpfs)")


def fingerprint(path: Path) -> tuple:
    info = os.lstat(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns, info.st_size


def cycles_ok(daemon: Daemon) -> int:
    return len(re.findall(r"DEBUG cycle \d+ done in [\d.]+ s: 1/1 hosts ok", daemon.output))


# ---------------------------------------------------------------------- links and directories

@pytest.fixture
def shared_dir():
    """A directory tree under /tmp that uid 65534 can reach (pytest's own is 0700)."""
    root_only()
    base = Path(tempfile.mkdtemp(prefix="t2i-hostile-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("target_exists", [True, False], ids=["existing-file", "dangling"])
def test_a_health_file_link_planted_by_another_user_is_refused(shared_dir, control, target_exists):
    """In a sticky shared directory (like /tmp) another user planted HEALTHCHECK_FILE as a link to
    a file of root's: the daemon refuses at start and the target stays exactly as it was."""
    sticky = shared_dir / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    precious = shared_dir / "precious"
    if target_exists:
        precious.write_text("root's file\n")
        before = fingerprint(precious)
    link = sticky / "health"
    link.symlink_to(precious)
    os.lchown(link, NOBODY, NOBODY)
    r = run_daemon(env_for(shared_dir, "http://127.0.0.1:1", control.entry("planted"), HEALTHCHECK_FILE=str(link)),
                   timeout=15)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"is a link owned by uid {NOBODY}" in r.stderr and "not following it" in r.stderr
    if target_exists:
        assert fingerprint(precious) == before
    else:
        assert not precious.exists()
    assert os.path.islink(link) and os.lstat(link).st_uid == NOBODY


@pytest.mark.parametrize("variable", ["HEALTHCHECK_FILE", "BUFFER_DIR"])
def test_a_directory_another_user_swaps_for_a_link_never_redirects_a_write(shared_dir, control, variable):
    """HEALTHCHECK_FILE (or BUFFER_DIR) below a directory every user can write to, without the sticky
    bit (what a Kubernetes emptyDir is): another user renames the daemon's directory away while it
    runs and puts a link to a victim directory in its place. The daemon, running as root, must not
    write into the victim: the health file goes on in the directory checked at start, and the
    buffer, which sees its file gone, refuses to recreate it through the link and says so."""
    open_dir = shared_dir / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    mine = open_dir / "mine"
    mine.mkdir()
    victim = shared_dir / "victim"
    victim.mkdir()
    path = mine / "health" if variable == "HEALTHCHECK_FILE" else mine / "buffer"
    env = env_for(shared_dir, "http://127.0.0.1:1", control.entry("swapped"), **{variable: str(path)})
    if variable == "BUFFER_DIR":
        env["HEALTHCHECK_FILE"] = str(shared_dir / "health")
    daemon = Daemon(env).start()
    try:
        daemon.wait_for_line(r"cycle 1 done")
        # the other user's move: rename the daemon's directory away, a link to the victim in its place
        subprocess.run(["/usr/bin/python3", "-c", "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.old'); "
                        "os.symlink(sys.argv[2], sys.argv[1])", str(mine), str(victim)],
                       user=NOBODY, group=NOBODY, check=True)
        moved = Path(str(mine) + ".old")
        if variable == "HEALTHCHECK_FILE":
            before = (moved / "health").read_text()
            wait_for(lambda: (moved / "health").read_text() != before, 10, what="the health file rewritten")
        else:
            daemon.wait_for_line(r"buffer: .*deleted while running and cannot be recreated .*link owned by uid 65534")
            wait_for(lambda: "buffer" in (shared_dir / "health").read_text(), 10, what="the health file naming the buffer")
        assert daemon.proc.poll() is None, daemon.output[-1500:]
    finally:
        daemon.stop()
    assert os.listdir(victim) == [], "the daemon wrote into the directory the link points to"


# ------------------------------------------------------------------------------- a full disk

@pytest.fixture
def tmpfs(tmp_path):
    """mount(name): a 1 MiB tmpfs at tmp_path/name (as root; skipped otherwise), unmounted after."""
    root_only()
    mounted = []

    def mount(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(path)],
                           capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(path)
        return path
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(mount: Path, leave: int = 0) -> Path:
    """Fill the file system to the last byte (but `leave` bytes); the filler file, to delete to free it."""
    spare = mount / "spare"
    if leave:
        spare.write_bytes(b"\0" * leave)
    filler = mount / "filler"
    f = open(filler, "wb", buffering=0)
    try:
        while True:
            f.write(b"\0" * 4096)
    except OSError:
        pass
    for size in (512, 64, 1):
        try:
            while True:
                f.write(b"\0" * size)
        except OSError:
            pass
    try:
        f.close()
    except OSError:
        pass
    if leave:
        spare.unlink()
    return filler


FULL = {"at-start": lambda mount: fill(mount), "at-start-one-page-left": lambda mount: fill(mount, leave=4096),
        "while-running": lambda mount: None}


def test_buffer_dir_on_a_full_disk_loses_nothing(tmp_path, tmpfs, control, own_victoria):
    """InfluxDB down and BUFFER_DIR on a tmpfs that is full at start (to the last byte, or but one
    page: the lock file fits, SQLite does not) or becomes full while running: no traceback, one
    warning, the points kept in memory, the health file says so; once the disk has room again the
    points go back to it, survive a restart, and every cycle's point reaches InfluxDB."""
    runs = {}
    for when, make_full in FULL.items():
        mount = tmpfs(f"{when}-tmpfs")
        env = env_for(tmp_path / when, own_victoria.url, control.entry(f"full-{when}"),
                      BUFFER_DIR=str(mount / "buffer"))
        (tmp_path / when).mkdir()
        filler = make_full(mount)
        runs[when] = [Daemon(env).start(), mount, filler, env, None]
    try:
        for run in runs.values():
            run[0].wait_for_line(r"cycle 2 done")
            if run[2] is None:
                run[2] = fill(run[1])
        for when, run in runs.items():
            run[0].wait_for_line(r"cycle 5 done")
            run[4] = (tmp_path / when / "health").read_text()
            run[2].unlink()
        for run in runs.values():
            run[0].wait_for_line(r"INFO buffer: .*(again|room)", timeout=10)
            run[0].wait_for_line(r"cycle 7 done")
    finally:
        for run in runs.values():
            assert run[0].stop() == 0
    firsts = {}
    for when, (daemon, _, _, _, health) in runs.items():
        complaints = [line for line in daemon.output.splitlines() if re.search(r" (WARNING|ERROR) buffer", line)]
        print(f"\n{when}: {complaints}\nhealth: {health}")
        assert "Traceback" not in daemon.output, when
        assert len(complaints) == 1, (when, complaints)
        assert health.startswith("FAILED") and "memory" in health and "buffer" in health, (when, health)
        assert "kept in BUFFER_DIR for the next start" in daemon.output, when
        firsts[when] = cycles_ok(daemon)
    own_victoria.start()
    seconds = {when: Daemon(run[3]).start() for when, run in runs.items()}
    try:
        for when, second in seconds.items():
            second.wait_for_line(r"cycle 1 done")
            samples = wait_for(lambda: len(s := own_victoria.samples("traffic_read", host=f"full-{when}"))
                               >= firsts[when] + 1 and s, 15, what=f"the {firsts[when]} points of {when}")
            stamps = [ts for ts, _ in samples][:firsts[when]]
            gaps = [b - a for a, b in zip(stamps, stamps[1:])]
            assert max(gaps) < 1900, (when, gaps)  # no cycle of the first run is missing
    finally:
        for second in seconds.values():
            assert second.stop() == 0


# ------------------------------------------------------------------------ foreign buffer files

def _sqlite(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def _ours(path: Path, *rows) -> None:
    buffer = SqliteBuffer(str(path.parent), 1000)
    buffer.close()
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO points (ts_ms, line) VALUES (?, ?)", rows)
    db.commit()
    db.close()


FOREIGN = {
    "garbage": lambda p: p.write_bytes(bytes((n * 7919) % 251 for n in range(8192))),
    "text": lambda p: p.write_text("not a database\n" * 200),
    "truncated": lambda p: (_sqlite(p, "CREATE TABLE t (x)"), p.write_bytes(p.read_bytes()[:200])),
    "other-tables": lambda p: _sqlite(p, "CREATE TABLE users (name TEXT, pw TEXT)",
                                      "INSERT INTO users VALUES ('x', 'y')"),
    "other-columns": lambda p: _sqlite(p, "CREATE TABLE points (id INTEGER PRIMARY KEY, value REAL)",
                                       "INSERT INTO points (value) VALUES (1.5)"),
    "other-application": lambda p: _sqlite(p, "PRAGMA application_id = 42",
                                           "CREATE TABLE points (id INTEGER PRIMARY KEY, ts_ms INTEGER, line TEXT)"),
}


def test_a_buffer_file_of_another_layout_is_left_untouched(tmp_path, victoria, control):
    """buffer.sqlite3 that is garbage, text, truncated, or a database of another layout: the daemon
    keeps running (points in memory, delivered), says so in the health file, and never changes
    the file."""
    runs = {}
    for name, make in FOREIGN.items():
        directory = tmp_path / name / "buffer"
        directory.mkdir(parents=True)
        path = directory / "buffer.sqlite3"
        make(path)
        before = fingerprint(path)
        env = env_for(tmp_path / name, victoria.url, control.entry(f"foreign-{name}"), BUFFER_DIR=str(directory))
        runs[name] = (Daemon(env).start(), path, before)
    healths = {}
    try:
        for name, (daemon, path, _) in runs.items():
            daemon.wait_for_line(r"cycle 3 done")
            healths[name] = (path.parent.parent / "health").read_text()
    finally:
        for daemon, _, _ in runs.values():
            assert daemon.stop() == 0
    for name, (daemon, path, before) in runs.items():
        assert "Traceback" not in daemon.output, name
        health = healths[name]
        assert health.startswith("FAILED") and "buffer.sqlite3" in health and "left untouched" in health, (name, health)
        assert fingerprint(path) == before, f"{name}: the file was changed"
        assert sorted(os.listdir(path.parent)) == ["buffer.lock", "buffer.sqlite3"], (name, os.listdir(path.parent))
        cycles = cycles_ok(daemon)
        wait_for(lambda: len(victoria.samples("traffic_read", host=f"foreign-{name}")) >= cycles, 10,
                 what=f"the points of {name}")


def test_rows_this_daemon_never_writes_do_not_block_delivery(tmp_path, victoria, control):
    """A buffer.sqlite3 of this daemon's layout with rows it never writes (a line that is a BLOB or
    NULL-like, a time that is text): no crash, the rows are dropped with one log line, and every
    new point is delivered."""
    directory = tmp_path / "buffer"
    directory.mkdir()
    path = directory / "buffer.sqlite3"
    _ours(path, (1796000000000, b"\xff\xfe not text"), ("yesterday", "traffic,host=bad-row read=1i 1796000000000"),
          (1796000000001, "traffic,host=good-old-row read=7i 1796000000001"))
    daemon = Daemon(env_for(tmp_path, victoria.url, control.entry("bad-rows"), BUFFER_DIR=str(directory))).start()
    try:
        daemon.wait_for_line(r"cycle 3 done")
        health = (tmp_path / "health").read_text()
    finally:
        rc = daemon.stop()
    assert rc == 0 and "Traceback" not in daemon.output, daemon.output[-3000:]
    assert len(re.findall(r"ERROR buffer: .*2 rows", daemon.output)) == 1, daemon.output[-3000:]
    assert health.startswith("OK"), health
    cycles = cycles_ok(daemon)
    wait_for(lambda: len(victoria.samples("traffic_read", host="bad-rows")) >= cycles, 10, what="the new points")
    wait_for(lambda: victoria.samples("traffic_read", host="good-old-row"), 10, what="the good old row")


# ------------------------------------------------------------------- one BUFFER_DIR, two daemons

def test_a_second_daemon_on_the_same_buffer_dir_leaves_the_first_alone(tmp_path, victoria, control):
    env = env_for(tmp_path, victoria.url, control.entry("first-of-two"), BUFFER_DIR=str(tmp_path / "buffer"))
    first = Daemon(env).start()
    try:
        first.wait_for_line(r"cycle 2 done")
        second = run_daemon({**env, "TOR_HOSTS": control.entry("second-of-two"),
                             "HEALTHCHECK_FILE": str(tmp_path / "health2")}, timeout=20)
        refused_at = time.time() * 1000
        first.wait_for_line(r"cycle 5 done")
        health = (tmp_path / "health").read_text()
    finally:
        assert first.stop() == 0
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"BUFFER_DIR {tmp_path / 'buffer'} is in use by another tor2influxdb2" in second.stderr
    assert health.startswith("OK")
    later = wait_for(lambda: len(s := [ts for ts, _ in victoria.samples("traffic_read", host="first-of-two")
                                       if ts > refused_at]) >= 2 and s, 10, what="points after the refusal")
    assert len(later) >= 2
    assert victoria.samples("traffic_read", host="second-of-two") == []


# ------------------------------------------------------------------ BUFFER_DIR deleted while running

def test_buffer_dir_deleted_while_running_is_recreated_with_every_point(tmp_path, control, own_victoria):
    env = env_for(tmp_path, own_victoria.url, control.entry("deleted-dir"), BUFFER_DIR=str(tmp_path / "buffer"))
    daemon = Daemon(env).start()
    try:
        daemon.wait_for_line(r"cycle 3 done")
        shutil.rmtree(tmp_path / "buffer")
        noticed = daemon.wait_for_line(r"ERROR buffer: .* was deleted or replaced while running; recreated it with "
                                       r"the (\d+) points")[0]
        daemon.wait_for_line(r"cycle 6 done")
    finally:
        assert daemon.stop() == 0
    assert int(noticed.group(1)) >= 9 and "kept in BUFFER_DIR" in daemon.output
    first = cycles_ok(daemon)
    own_victoria.start()
    second = Daemon(env).start()
    try:
        samples = wait_for(lambda: len(s := own_victoria.samples("traffic_read", host="deleted-dir")) >= first and s,
                           15, what=f"the {first} points of the first run")
    finally:
        assert second.stop() == 0
    stamps = [ts for ts, _ in samples][:first]
    assert max(b - a for a, b in zip(stamps, stamps[1:])) < 1900


def test_buffer_dir_deleted_just_before_a_stop_loses_nothing(tmp_path, control, own_victoria):
    """The directory vanishes between two cycles and the daemon is stopped before the next one: the
    points waiting must still be on disk for the next start (not in a deleted file, with a log that
    says 'kept')."""
    env = env_for(tmp_path, own_victoria.url, control.entry("deleted-at-stop"), BUFFER_DIR=str(tmp_path / "buffer"),
                  RUN_EVERY_SECONDS="3", TOR_TIMEOUT="1")
    daemon = Daemon(env).start()
    try:
        daemon.wait_for_line(r"cycle 2 done")
        shutil.rmtree(tmp_path / "buffer")
    finally:
        assert daemon.stop() == 0
    first = cycles_ok(daemon)
    own_victoria.start()
    second = Daemon(env).start()
    try:
        waiting = int(second.wait_for_line(r"\((\d+) points waiting from before\)")[0].group(1))
        samples = wait_for(lambda: len(s := own_victoria.samples("traffic_read", host="deleted-at-stop")) >= first
                           and s, 10, what=f"the {first} points of the first run")
    finally:
        assert second.stop() == 0
    assert waiting == 3 * first and len(samples) >= first
