"""sinks.buffer: compact memory, durable SQLite (one daemon per directory), and the fallback
between them when the disk is full, the file corrupt or deleted: never a crash, never a silent loss."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tor2influxdb2.errors import BufferLocked
from tor2influxdb2.files import UnsafePath
from tor2influxdb2.sinks.buffer import FallbackBuffer, MemoryBuffer, SqliteBuffer, open_buffer
from tor2influxdb2.sinks.influx import Delivery


def lines(n, start=0, host="h"):
    return [f"traffic,host={host},service=tor,version=0.4.9.11 read={i}i,written={2 * i}i {1795300000000 + i}"
            for i in range(start, start + n)]


def stamps(new):
    return [int(line.rsplit(" ", 1)[1]) for line in new]


def drain(buffer, limit=5000):
    out = []
    while (batch := buffer.head(limit)) is not None:
        out += batch.lines
        (buffer.remove(batch) if isinstance(buffer, FallbackBuffer) else buffer.remove(batch.ids))
    return out


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_full_buffer_drops_exactly_the_oldest(kind, tmp_path, caplog):
    buffer = MemoryBuffer(10) if kind == "memory" else SqliteBuffer(str(tmp_path), 10)
    d = Delivery(None, FallbackBuffer(buffer if kind == "sqlite" else None, buffer if kind == "memory" else
                                      MemoryBuffer(10)), None)
    with caplog.at_level(logging.WARNING, logger="tor2influxdb2"):
        for n, start in ((7, 0), (7, 7), (3, 14)):
            d.submit(lines(n, start), stamps(lines(n, start)))
    assert len(d.buffer) == 10
    assert d.buffer.head(100).lines == lines(10, start=7)
    assert [r.getMessage() for r in caplog.records] == \
        ["buffer full (10 points or its memory bound): dropped the 4 oldest points"]
    d.buffer.close()


def test_memory_buffer_keeps_a_backlog_compactly_and_in_order():
    """A day of outage of 50 tors (1.3 M points) must fit a Raspberry Pi: compressed cycles."""
    buffer = MemoryBuffer(10_000_000, 512 * 1024 * 1024)
    for cycle in range(2000):
        new = lines(150, start=cycle * 150, host=f"relay{cycle % 50}")
        buffer.append(new, stamps(new))
    per_point = buffer.memory_bytes / len(buffer)
    assert len(buffer) == 300_000 and per_point < 30, per_point
    got = drain(buffer)
    assert [int(line.split("read=")[1].split("i")[0]) for line in got] == list(range(300_000))


def test_memory_bound_in_bytes_drops_the_oldest_whole_cycles():
    buffer = MemoryBuffer(10_000_000, 1024 * 1024)
    for cycle in range(3000):
        new = lines(150, start=cycle * 150)
        buffer.append(new, stamps(new))
    assert buffer.memory_bytes <= 1024 * 1024
    got = drain(buffer)
    first = int(got[0].split("read=")[1].split("i")[0])
    assert first > 0 and got == lines(450_000 - first, start=first)


def test_memory_buffer_removes_middle_lines_of_a_compressed_chunk():
    buffer = MemoryBuffer(1000)
    for c in range(5):
        buffer.append(lines(10, c * 10), stamps(lines(10, c * 10)))
    batch = buffer.head(50)
    buffer.remove([batch.ids[3], batch.ids[25]])
    rest = drain(buffer)
    expected = lines(50)
    del expected[25]
    del expected[3]
    assert rest == expected


def test_sqlite_buffer_survives_reopen(tmp_path):
    b = SqliteBuffer(str(tmp_path), 100)
    b.append(lines(5), [1, 2, 3, 4, 5])
    b.remove(b.head(2).ids)
    b.close()
    b = SqliteBuffer(str(tmp_path), 100)
    assert len(b) == 3 and b.head(10).lines == lines(3, start=2) and b.oldest_ms() == 3
    b.close()


CRASHER = r"""
import sys
sys.path.insert(0, sys.argv[2])
from tor2influxdb2.sinks.buffer import SqliteBuffer
b = SqliteBuffer(sys.argv[1], 10_000_000)
i = 0
print("ready", flush=True)
while True:
    b.append([f"traffic,host=c read={j}i {j}" for j in range(i, i + 500)], list(range(i, i + 500)))
    i += 500
"""


def test_sqlite_buffer_survives_kill_9_in_the_middle_of_writes(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path), root], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + attempt * 0.13)  # let it write for a while (not an assertion)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        b = SqliteBuffer(str(tmp_path), 10_000_000)
        count = len(b)
        assert count % 500 == 0 and count > 0  # whole transactions only, never half of one
        assert sqlite3.connect(tmp_path / "buffer.sqlite3").execute("PRAGMA integrity_check").fetchone() == ("ok",)
        b.close()


def test_two_daemons_cannot_share_one_buffer_dir(tmp_path):
    first = SqliteBuffer(str(tmp_path), 100)
    try:
        with pytest.raises(BufferLocked, match="is in use by another tor2influxdb2"):
            SqliteBuffer(str(tmp_path), 100)
    finally:
        first.close()
    SqliteBuffer(str(tmp_path), 100).close()  # free again once the first is gone


def test_a_foreign_or_corrupt_file_is_left_untouched_and_points_go_to_memory(tmp_path, caplog):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    db = sqlite3.connect(foreign / "buffer.sqlite3")
    db.execute("CREATE TABLE points (id INTEGER PRIMARY KEY, payload BLOB)")
    db.execute("INSERT INTO points (payload) VALUES (x'00')")
    db.commit()
    db.close()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "buffer.sqlite3").write_bytes(b"this is not a database" * 100)
    for directory, needle in ((foreign, "another layout"), (corrupt, "corrupt or not a database")):
        before = (directory / "buffer.sqlite3").read_bytes()
        with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
            buffer = open_buffer(str(directory), 100, 1 << 20)
        assert buffer.disk is None and needle in buffer.degraded
        buffer.append(lines(3), stamps(lines(3)))
        assert drain(buffer) == lines(3)
        assert (directory / "buffer.sqlite3").read_bytes() == before
        buffer.close()


def test_a_buffer_file_that_is_a_link_is_not_used(tmp_path):
    (tmp_path / "elsewhere.db").write_bytes(b"")
    os.symlink(tmp_path / "elsewhere.db", tmp_path / "buffer.sqlite3")
    buffer = open_buffer(str(tmp_path), 100, 1 << 20)
    assert buffer.disk is None and "not a regular file" in buffer.degraded
    buffer.close()


def test_a_buffer_dir_others_can_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match="other users can write to the directory"):
        open_buffer(str(shared), 100, 1 << 20)


def test_buffer_dir_deleted_while_running_is_noticed_and_recreated(tmp_path, caplog):
    directory = tmp_path / "buf"
    buffer = open_buffer(str(directory), 1000, 1 << 20)
    buffer.append(lines(7), stamps(lines(7)))
    for name in os.listdir(directory):
        os.unlink(directory / name)
    os.rmdir(directory)
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        buffer.check()
    assert "was deleted or replaced while running; recreated it with the 7 points" in caplog.text
    assert (directory / "buffer.sqlite3").exists()
    buffer.append(lines(2, 7), stamps(lines(2, 7)))
    buffer.close()
    reopened = SqliteBuffer(str(directory), 1000)  # they survive a restart now
    assert drain(reopened) == lines(9)
    reopened.close()


def test_points_of_a_deleted_buffer_that_cannot_be_read_are_reported_lost(tmp_path, caplog, monkeypatch):
    directory = tmp_path / "buf"
    buffer = open_buffer(str(directory), 1000, 1 << 20)
    buffer.append(lines(7), stamps(lines(7)))
    os.unlink(directory / "buffer.sqlite3")

    def unreadable():
        raise sqlite3.DatabaseError("database disk image is malformed")
    monkeypatch.setattr(buffer.disk, "take_all", unreadable)
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        buffer.check()
    assert "the 7 points waiting in it could not be read (database disk image is malformed): they are lost" \
        in caplog.text
    buffer.close()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB tmpfs (mounted here as root; otherwise the test is skipped with the reason)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_degrades_to_memory_and_recovers_without_losing_a_point(tiny_tmpfs, caplog):
    buffer = open_buffer(str(tiny_tmpfs / "buf"), 10_000_000, 64 << 20)
    filler = tiny_tmpfs / "filler"
    sent = []
    with caplog.at_level(logging.INFO, logger="tor2influxdb2"):
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        for cycle in range(40):  # the disk is full: these go to memory
            new = lines(100, cycle * 100)
            sent += new
            buffer.append(new, stamps(new))
        assert buffer.degraded and "keeping points in memory" in buffer.degraded and len(buffer.memory) > 0
        filler.unlink()
        new = lines(100, 4000)
        sent += new
        buffer.append(new, stamps(new))  # room again: memory moves back to the disk
    assert buffer.degraded is None and len(buffer.memory) == 0 and buffer.durable
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "database or disk is full" in errors[0].getMessage()
    assert "writing to" in caplog.text and "again" in caplog.text
    assert sorted(drain(buffer), key=lambda l: int(l.rsplit(" ", 1)[1])) == sent
    buffer.close()


class Recorder:
    """An InfluxDB that accepts everything; `during` runs inside the first write (another thread's doing)."""

    def __init__(self, during=None):
        self.sent, self.during = [], during

    def write(self, new, timeout=None):
        if self.during is not None:
            during, self.during = self.during, None
            during()
        self.sent += new


def hold_write_lock(buffer):
    """Another program holding a write transaction on the buffer file; our writes fail at once."""
    buffer.disk._db.execute("PRAGMA busy_timeout = 0")  # not the 5 s default: the test waits for nothing
    other = sqlite3.connect(buffer.disk.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


@pytest.mark.parametrize("failing", ["writing to", "reading", "deleting from"])
def test_a_disk_that_failed_once_is_healthy_again_when_it_works(failing, tmp_path, caplog, monkeypatch):
    buffer = open_buffer(str(tmp_path / "buf"), 1000, 1 << 20)
    buffer.append(lines(5), stamps(lines(5)))
    d = Delivery(Recorder(), buffer, None)
    with caplog.at_level(logging.INFO, logger="tor2influxdb2"):
        if failing == "writing to":
            other = hold_write_lock(buffer)
            buffer.append(lines(3, 5), stamps(lines(3, 5)))   # locked: to memory
            assert len(buffer.memory) == 3
            other.execute("COMMIT")
            while d.deliver_once():   # InfluxDB takes the disk's points, then memory's: none waits in memory
                pass
            assert len(buffer.memory) == 0 and "keeping points in memory" in buffer.degraded
        elif failing == "reading":
            real = buffer.disk.head

            def transient(limit):
                monkeypatch.setattr(buffer.disk, "head", real)
                raise sqlite3.OperationalError("disk I/O error")
            monkeypatch.setattr(buffer.disk, "head", transient)
            assert not d.deliver_once()
        else:
            other = hold_write_lock(buffer)
            assert d.deliver_once()   # delivered, but its rows cannot be deleted: never sent again
            assert len(buffer) == 0
            other.execute("COMMIT")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and errors[0].startswith(f"buffer: {failing} {buffer.disk.path} failed (")
        assert buffer.degraded and buffer.degraded in errors[0]
        if failing != "writing to":  # nothing moved to memory, and the health reason does not say so
            assert "memory" not in buffer.degraded and len(buffer.memory) == 0
        caplog.clear()
        buffer.append(lines(2, 8), stamps(lines(2, 8)))
        while d.deliver_once():
            pass
    assert buffer.degraded is None and buffer.durable
    assert [r.getMessage() for r in caplog.records] == [f"buffer: {buffer.disk.path} works again"]
    assert sorted(d.writer.sent) == sorted(lines(5) + (lines(3, 5) if failing == "writing to" else []) + lines(2, 8))
    assert len(buffer) == 0
    buffer.close()


def test_a_batch_of_a_disk_replaced_while_it_was_sent_removes_nothing_else(tmp_path, caplog):
    """The main thread's check() recreates the deleted buffer file while delivery sends a batch taken
    from the old one: that batch's ids (1, 2) must not remove memory's points 1 and 2."""
    directory = tmp_path / "buf"
    buffer = open_buffer(str(directory), 1000, 1 << 20)
    buffer.append(lines(5), stamps(lines(5)))
    other = hold_write_lock(buffer)
    buffer.append(lines(3, 100), stamps(lines(3, 100)))  # the disk is locked: memory ids 1..3
    other.close()
    assert len(buffer.memory) == 3

    def delete_and_check():
        for name in os.listdir(directory):
            os.unlink(directory / name)
        os.rmdir(directory)
        buffer.check()
    d = Delivery(Recorder(during=delete_and_check), buffer, None, batch_lines=2)
    with caplog.at_level(logging.ERROR, logger="tor2influxdb2"):
        assert d.deliver_once()
    assert "recreated it with the 5 points still waiting" in caplog.text
    assert len(buffer) == 8  # the 5 moved to the new file (lines 0 and 1 again) and memory's 3
    while d.deliver_once():
        pass
    assert d.writer.sent == lines(2) + lines(5) + lines(3, 100)  # at least once, none lost
    buffer.close()


@pytest.fixture
def read_only():
    """read_only(path): a file or directory this process cannot write (a read-only bind mount as
    root, for whom permissions are no obstacle; its mode otherwise), undone after the test."""
    undo = []

    def make(path):
        if os.geteuid() == 0:
            for args in (["--bind", str(path), str(path)], ["-o", "remount,bind,ro", str(path)]):
                r = subprocess.run(["mount", *args], capture_output=True)
                if r.returncode != 0:
                    pytest.skip(f"cannot bind-mount read-only here: {r.stderr.decode().strip()}")
                if args[0] == "--bind":
                    undo.append(lambda: subprocess.run(["umount", "-l", str(path)], check=False))
        else:
            mode = os.stat(path).st_mode & 0o777
            os.chmod(path, 0o555 if os.path.isdir(path) else 0o444)
            undo.append(lambda: os.chmod(path, mode))
    yield make
    for step in reversed(undo):
        step()


def malformed(path):
    """A real buffer whose pages were overwritten (SQLITE_CORRUPT, not SQLITE_NOTADB)."""
    b = SqliteBuffer(str(path), 10_000)
    b.append([f"x n={i}i {i}" for i in range(3000)], list(range(3000)))
    b.close()
    data = bytearray((path / "buffer.sqlite3").read_bytes())
    for offset in range(4096, len(data), 4096):
        data[offset:offset + 200] = b"\xff" * 200
    (path / "buffer.sqlite3").write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["garbage", "malformed", "read-only file", "read-only directory"])
def test_a_buffer_file_is_called_corrupt_only_when_it_is(case, tmp_path, caplog, read_only):
    """SQLite's "attempt to write a readonly database" is a DatabaseError too: by its code it is a
    directory that cannot be written (one warning, healthy), not a corrupt file (unhealthy)."""
    directory = tmp_path / "buf"
    directory.mkdir(mode=0o700)
    if case == "garbage":
        (directory / "buffer.sqlite3").write_bytes(b"this is not a database" * 100)
    elif case == "malformed":
        malformed(directory)
    else:
        SqliteBuffer(str(directory), 100).close()
        read_only(directory / "buffer.sqlite3" if case == "read-only file" else directory)
    before = (directory / "buffer.sqlite3").read_bytes()
    with caplog.at_level(logging.WARNING, logger="tor2influxdb2"):
        buffer = open_buffer(str(directory), 100, 1 << 20)
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert buffer.disk is None and len(logged) == 1
    if case in ("garbage", "malformed"):
        assert logged[0][0] == "ERROR" and "is corrupt or not a database" in buffer.degraded
    else:
        assert buffer.degraded is None
        assert logged[0][0] == "WARNING" and f"BUFFER_DIR {directory} is not writable (" in logged[0][1]
        assert "keeping points in memory only" in logged[0][1]
    buffer.append(lines(3), stamps(lines(3)))
    assert drain(buffer) == lines(3)
    assert (directory / "buffer.sqlite3").read_bytes() == before
    buffer.close()


def test_memory_buffer_stays_within_its_bound_in_bytes_when_it_trims_part_of_a_chunk():
    bound = 1 << 20
    buffer = MemoryBuffer(30_000, bound)
    sent, dropped = [], 0
    for size in (20_000, 20_000, 7_000, 13_000, 1, 20_000, 29_999, 5_000, 3, 30_000, 2):
        new = lines(size, start=len(sent))
        sent += new
        dropped += buffer.append(new, stamps(new))
        assert buffer.memory_bytes <= bound, (size, buffer.memory_bytes)
        assert len(buffer) + dropped == len(sent) and len(buffer) <= 30_000
    assert drain(buffer) == sent[dropped:]


def test_delivering_a_big_cycle_in_batches_keeps_order_and_byte_count():
    """A cycle of 57,000 lines (1,000 relays with a MetricsPort) is one chunk; delivery takes it in
    batches of 5,000 from its head. What stays is the rest, in order, and counted as a buffer that
    held only it would count it."""
    lines = [f"tor_relay_x,host=h{i} counter={i} 1700000000000" for i in range(57_000)]
    buffer = MemoryBuffer(100_000)
    buffer.append(lines, [1_700_000_000_000] * len(lines))
    delivered = []
    for _ in range(4):
        batch = buffer.head(5_000)
        delivered += batch.lines
        buffer.remove(batch.ids)
    assert delivered == lines[:20_000]
    fresh = MemoryBuffer(100_000)
    fresh.append(lines[20_000:], [1_700_000_000_000] * 37_000)
    assert len(buffer) == 37_000 and buffer.memory_bytes == fresh.memory_bytes
    rest = buffer.head(100_000)
    assert rest.lines == lines[20_000:]
    buffer.remove(rest.ids[::2])  # not a head: the line-by-line path
    assert buffer.head(100_000).lines == lines[20_001::2]
