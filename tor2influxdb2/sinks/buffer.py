"""Points waiting for InfluxDB: in memory (compact), in SQLite (durable), and the fallback between.

Every buffer keeps lines oldest first with increasing ids; delivery takes a :class:`Batch` from
the head and removes its ids once InfluxDB accepted them.

* :class:`MemoryBuffer` holds each cycle's lines as one chunk; once a backlog builds up, older
  chunks are zlib-compressed (a cycle's lines share most of their text: ~10 bytes a point instead
  of ~280 as Python strings). It is bounded by points and by bytes; past either bound the oldest
  points are dropped (and counted).
* :class:`SqliteBuffer` is a file in BUFFER_DIR (WAL): points survive kill -9 and restarts. The
  directory is locked, so two daemons never share one buffer; a foreign or corrupt file is left
  untouched; a deleted or replaced file is noticed and recreated with what was still waiting.
* :class:`FallbackBuffer` is what the daemon uses: SQLite when it can, memory for whatever the
  disk cannot take (full, failing), with one warning and a ``degraded`` reason the health file
  shows. When the disk has room again the memory part is moved back to it.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import fcntl
import logging
import os
import sqlite3
import stat
import threading
import zlib

from ..errors import BufferLocked, BufferUnusable
from ..files import UnsafePath, check_directory, resolve
from ..redact import clip

LOG = logging.getLogger("tor2influxdb2")
APPLICATION_ID = 0x54324932  # "T2I2"
_OVERHEAD_RAW = 57   # bytes of a str object and its list slot, beyond its characters
_OVERHEAD_CHUNK = 160


@dataclasses.dataclass
class Batch:
    """Lines from the head of a buffer; `ids` identify them for remove(), oldest first."""

    ids: list[int]
    lines: list[str]
    source: object = None


class _Chunk:
    __slots__ = ("ids", "lines", "blob", "oldest", "size")

    def __init__(self, ids, lines: list[str], oldest: int):
        self.ids, self.lines, self.blob, self.oldest = ids, lines, None, oldest
        self.size = sum(map(len, lines)) + _OVERHEAD_RAW * len(lines) + _OVERHEAD_CHUNK

    def compress(self) -> None:
        if self.blob is None and self.lines:
            self.blob = zlib.compress("\n".join(self.lines).encode("utf-8"), 6)
            self.lines = None
            self.size = len(self.blob) + _OVERHEAD_CHUNK + (0 if isinstance(self.ids, range) else 8 * len(self.ids))

    def without_head(self, head: int) -> "_Chunk":
        """The chunk without its first `head` points (its size updated, not recounted)."""
        if self.lines is None:
            return _Chunk(self.ids[head:], self.get_lines()[head:], self.oldest)
        rest = _Chunk.__new__(_Chunk)
        rest.ids, rest.lines, rest.blob, rest.oldest = self.ids[head:], self.lines[head:], None, self.oldest
        rest.size = self.size - sum(map(len, self.lines[:head])) - _OVERHEAD_RAW * head
        return rest

    def get_lines(self) -> list[str]:
        if self.lines is not None:
            return self.lines
        return zlib.decompress(self.blob).decode("utf-8").split("\n")

    def __len__(self) -> int:
        return len(self.ids)


class MemoryBuffer:
    """Points waiting for InfluxDB in memory, oldest first, bounded by points and by bytes."""

    durable = False
    RAW_CHUNKS = 2  # the newest chunks stay uncompressed (in normal operation they leave at once)

    def __init__(self, max_points: int, max_bytes: int = 64 * 1024 * 1024):
        self.max_points, self.max_bytes = max_points, max_bytes
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._count = 0
        self._bytes = 0
        self._next_id = 1
        self._lock = threading.Lock()

    def append(self, lines: list[str], collected_ms: list[int]) -> int:
        """Add lines (with their collection times); return how many old points were dropped."""
        if not lines:
            return 0
        with self._lock:
            ids = range(self._next_id, self._next_id + len(lines))
            self._next_id += len(lines)
            chunk = _Chunk(ids, list(lines), min(collected_ms))
            self._chunks.append(chunk)
            self._count += len(lines)
            self._bytes += chunk.size
            if len(self._chunks) > self.RAW_CHUNKS:
                old = self._chunks[-self.RAW_CHUNKS - 1]
                if old.blob is None:
                    before = old.size
                    old.compress()
                    self._bytes += old.size - before
            return self._trim()

    def _trim(self) -> int:
        if self._bytes > self.max_bytes:  # compress the newest chunks too before a point is dropped
            for chunk in self._chunks:
                if chunk.blob is None:
                    before = chunk.size
                    chunk.compress()
                    self._bytes += chunk.size - before
        dropped = 0
        while self._chunks and (self._count > self.max_points or self._bytes > self.max_bytes):
            head = self._chunks[0]
            excess = self._count - self.max_points
            if self._bytes <= self.max_bytes and 0 < excess < len(head):
                rest = _Chunk(head.ids[excess:], head.get_lines()[excess:], head.oldest)
                if self._bytes + rest.size - head.size > self.max_bytes:
                    rest.compress()  # uncompressed, what is left of a compressed head may not fit the bound
                self._replace_head(rest)
                dropped += excess
                continue  # still past the bound in bytes (rarely): the oldest whole chunks go
            self._chunks.popleft()
            self._count -= len(head)
            self._bytes -= head.size
            dropped += len(head)
        return dropped

    def _replace_head(self, chunk: _Chunk) -> None:
        old = self._chunks.popleft()
        self._count += len(chunk) - len(old)
        self._bytes += chunk.size - old.size
        self._chunks.appendleft(chunk)

    def head(self, limit: int) -> Batch | None:
        with self._lock:
            ids: list[int] = []
            lines: list[str] = []
            for chunk in self._chunks:
                if len(ids) >= limit:
                    break
                take = limit - len(ids)
                ids += chunk.ids[:take]  # a range slice: a big cycle's ids are never all made at once
                lines += chunk.get_lines()[:take]
        return Batch(ids, lines, self) if ids else None

    def remove(self, ids: list[int]) -> None:
        gone = set(ids)
        with self._lock:
            index = 0
            while gone and index < len(self._chunks):
                chunk = self._chunks[index]
                chunk_ids = chunk.ids
                if isinstance(chunk_ids, range) and chunk_ids[0] in gone and chunk_ids[-1] in gone \
                        and all(i in gone for i in chunk_ids):
                    gone.difference_update(chunk_ids)
                    del self._chunks[index]
                    self._count -= len(chunk)
                    self._bytes -= chunk.size
                    continue
                head = self._delivered_head(chunk_ids, gone)
                if head:  # the usual case: delivery took the oldest lines of a big cycle's chunk
                    gone.difference_update(chunk_ids[:head])
                    new = chunk.without_head(head)
                elif any(i in gone for i in chunk_ids):
                    keep = [(i, line) for i, line in zip(chunk_ids, chunk.get_lines()) if i not in gone]
                    gone.difference_update(chunk_ids)
                    new = _Chunk([i for i, _ in keep], [line for _, line in keep], chunk.oldest)
                else:
                    index += 1
                    continue
                if chunk.blob is not None:
                    new.compress()
                self._count += len(new) - len(chunk)
                self._bytes += new.size - chunk.size
                if len(new):
                    self._chunks[index] = new
                else:
                    del self._chunks[index]
                    continue
                index += 1

    @staticmethod
    def _delivered_head(chunk_ids, gone: set) -> int:
        """How many of the chunk's first ids are in `gone` when nothing else of it is (0 otherwise):
        then the rest is a slice, not a rebuild line by line."""
        if not isinstance(chunk_ids, range) or chunk_ids.step != 1 or chunk_ids[0] not in gone:
            return 0
        head, size = 0, len(chunk_ids)
        while head < size and chunk_ids[head] in gone:
            head += 1
        if head == size:
            return 0  # all of it: the slow path (rare: whole chunks are dropped above)
        low, high = chunk_ids[head], chunk_ids[-1]
        return 0 if any(low <= i <= high for i in gone) else head

    def __len__(self) -> int:
        return self._count

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def oldest_ms(self) -> int | None:
        with self._lock:
            return self._chunks[0].oldest if self._chunks else None

    def take_all(self) -> tuple[list[str], list[int]]:
        """Every line (and a time for each), emptying the buffer (to move them to disk)."""
        with self._lock:
            lines, times = [], []
            for chunk in self._chunks:
                chunk_lines = chunk.get_lines()
                lines += chunk_lines
                times += [chunk.oldest] * len(chunk_lines)
            self._chunks.clear()
            self._count = self._bytes = 0
            return lines, times

    def close(self) -> None:
        pass


class SqliteBuffer:
    """Points waiting for InfluxDB in BUFFER_DIR/buffer.sqlite3 (stdlib sqlite3, WAL). At most
    `max_points` rows; past that the oldest are deleted. The directory is locked (buffer.lock)
    for the process's life: a second daemon on the same directory gets BufferUnusable."""

    durable = True
    FILE_NAME = "buffer.sqlite3"
    LOCK_NAME = "buffer.lock"
    COLUMNS = ["id", "ts_ms", "line"]

    def __init__(self, directory: str, max_points: int):
        self.max_points = max_points
        self.directory = directory
        self.path = os.path.join(directory, self.FILE_NAME)
        self._lock = threading.Lock()
        self._lockfile = self._take_lock(directory)
        try:
            self._open()
        except BaseException:
            os.close(self._lockfile)
            raise

    @classmethod
    def _take_lock(cls, directory: str) -> int:
        path = os.path.join(directory, cls.LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                other = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                other = ""
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {other} in its own namespace)" if other.isdigit() else ""
                raise BufferLocked(
                    f"BUFFER_DIR {directory} is in use by another tor2influxdb2{who}: give each daemon its own "
                    "BUFFER_DIR (with compose --scale or replicas, a volume per replica, not one shared)") from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: give the lock back, or a retry would find it taken (by us)
            os.close(fd)
            raise
        return fd

    def _open(self) -> None:
        exists = False
        try:
            info = os.lstat(self.path)
            if not stat.S_ISREG(info.st_mode):
                raise BufferUnusable(f"{self.path} is not a regular file (a link?): not using it")
            exists = info.st_size > 0
        except FileNotFoundError:
            pass
        if exists:
            self._check_layout()  # read-only first: a foreign file must stay exactly as it is
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA cache_size=-4000")  # ~4 MB page cache: memory stays bounded
            if not exists:
                self._db.execute("CREATE TABLE IF NOT EXISTS points (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                                 " ts_ms INTEGER NOT NULL, line TEXT NOT NULL)")
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            else:  # a row this daemon never writes would stop delivery (or the main loop) at every try
                bad = self._db.execute("DELETE FROM points WHERE typeof(line) != 'text' "
                                       "OR typeof(ts_ms) != 'integer'").rowcount
                if bad:
                    LOG.error("buffer: dropped %d rows of %s that this daemon never writes (a line that is not "
                              "text or a time that is not a whole number)", bad, self.path)
            self._count = self._db.execute("SELECT count(*) FROM points").fetchone()[0]
        except BaseException:
            self._db.close()
            raise
        self._floor = 0  # ids <= floor were delivered, even if deleting them failed
        self._identity = self._stat_identity()

    def _check_layout(self) -> None:
        """BufferUnusable unless the file is this daemon's buffer (or an empty database)."""
        import urllib.parse
        uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        db = sqlite3.connect(uri, uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            columns = [row[1] for row in db.execute("PRAGMA table_info(points)")]
        finally:
            db.close()
        if tables - {"points", "sqlite_sequence"} or app_id not in (0, APPLICATION_ID):
            raise BufferUnusable(f"{self.path} is not a tor2influxdb2 buffer (other tables or application id): "
                                 "left untouched")
        if columns != self.COLUMNS:
            raise BufferUnusable(f"{self.path} has a points table of another layout: left untouched")

    def _stat_identity(self):
        try:
            info = os.stat(self.path)
            return info.st_dev, info.st_ino
        except OSError:
            return None

    def append(self, lines: list[str], collected_ms: list[int]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO points (ts_ms, line) VALUES (?, ?)", zip(collected_ms, lines))
                count = self._count + len(lines)
                dropped = max(0, count - self.max_points)
                if dropped:
                    self._db.execute("DELETE FROM points WHERE id IN (SELECT id FROM points WHERE id > ? "
                                     "ORDER BY id LIMIT ?)", (self._floor, dropped))
                self._db.execute("COMMIT")
            except BaseException:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            self._count = count - dropped
            return dropped

    def head(self, limit: int) -> Batch | None:
        with self._lock:
            rows = self._db.execute("SELECT id, line FROM points WHERE id > ? ORDER BY id LIMIT ?",
                                    (self._floor, limit)).fetchall()
        if not rows:
            return None
        return Batch([r[0] for r in rows], [r[1] for r in rows], self)

    def remove(self, ids: list[int]) -> None:
        """Delete delivered rows. A delivered head is never sent again even if the DELETE fails
        (a full disk): the floor moves past it, and `_count` (rows above the floor) drops at once."""
        if not ids:
            return
        with self._lock:
            contiguous = ids == list(range(ids[0], ids[-1] + 1))
            floored = 0
            if contiguous and ids[0] > self._floor:
                first = self._db.execute("SELECT min(id) FROM points WHERE id > ?", (self._floor,)).fetchone()[0]
                if first == ids[0]:
                    self._floor = ids[-1]
                    floored = len(ids)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if contiguous:
                    cur = self._db.execute("DELETE FROM points WHERE id BETWEEN ? AND ?", (ids[0], ids[-1]))
                else:
                    cur = self._db.executemany("DELETE FROM points WHERE id = ?", ((i,) for i in ids))
                self._db.execute("COMMIT")
                self._count -= floored or cur.rowcount
            except sqlite3.Error:
                self._count -= floored
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise

    def __len__(self) -> int:
        return self._count

    def oldest_ms(self) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT ts_ms FROM points WHERE id > ? ORDER BY id LIMIT 1",
                                   (self._floor,)).fetchone()
        return row[0] if row else None

    def still_there(self) -> bool:
        """False when the file was deleted or replaced since it was opened."""
        return self._identity is not None and self._stat_identity() == self._identity

    def take_all(self) -> tuple[list[str], list[int]]:
        with self._lock:
            rows = self._db.execute("SELECT line, ts_ms FROM points WHERE id > ? ORDER BY id",
                                    (self._floor,)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            finally:
                try:
                    os.close(self._lockfile)
                except OSError:
                    pass


class FallbackBuffer:
    """The daemon's buffer: SQLite when usable, memory for what the disk cannot take.

    ``degraded`` is None when all is well, else a short reason for the health file (points only
    in memory, the buffer file corrupt or foreign, or the disk failing). A disk failure clears once
    each failed operation worked again and nothing waits in memory."""

    def __init__(self, disk: SqliteBuffer | None, memory: MemoryBuffer, degraded: str | None = None,
                 retry_dir: str | None = None):
        self.disk, self.memory, self.degraded = disk, memory, degraded
        self.retry_dir = retry_dir  # BUFFER_DIR was full at start: try it again at every check()
        self.max_points = memory.max_points
        self._failing: dict[str, str] = {}  # disk operation -> its reason, while it fails
        self._lock = threading.RLock()

    @property
    def durable(self) -> bool:
        return self.disk is not None and not len(self.memory)

    def _disk_failed(self, exc: BaseException, doing: str) -> None:
        """One error line per kind of operation that starts failing (not one per cycle)."""
        reason = f"buffer: {doing} {self.disk.path} failed ({clip(exc, 80)})"
        until = ""
        if doing == "writing to":  # the lines went to memory
            reason, until = f"{reason}; keeping points in memory", " until the disk works again"
        elif doing == "reading":  # nothing moved: delivery tries again
            reason += "; its points stay there"
        else:  # the batch was delivered: at worst InfluxDB gets it again (and keeps one copy)
            reason += "; delivered points may be sent again"
        if doing not in self._failing:
            LOG.error("%s%s", reason, until)
        self._failing[doing] = self.degraded = reason

    def _disk_ok(self, doing: str, say: bool = True) -> None:
        """`doing` worked on the disk: healthy again once nothing fails and nothing waits in memory."""
        if doing not in self._failing or len(self.memory):  # points in memory: not healthy yet
            return
        del self._failing[doing]
        if self._failing:
            self.degraded = next(reversed(self._failing.values()))
        else:
            self.degraded = None
            if say:
                LOG.info("buffer: %s works again", self.disk.path)

    def append(self, lines: list[str], collected_ms: list[int]) -> int:
        with self._lock:
            if self.disk is not None:
                moved = None
                try:
                    if len(self.memory):  # the disk failed before: move what waits in memory back first
                        old_lines, old_times = self.memory.take_all()
                        try:
                            self.disk.append(old_lines, old_times)
                        except BaseException:
                            self.memory.append(old_lines, old_times)
                            raise
                        moved = len(old_lines)
                    dropped = self.disk.append(lines, collected_ms)
                except sqlite3.Error as exc:
                    self._disk_failed(exc, "writing to")
                else:
                    if moved is not None:
                        LOG.info("buffer: writing to %s again (%d points moved from memory)", self.disk.path, moved)
                    self._disk_ok("writing to", say=moved is None)
                    return dropped
            return self.memory.append(lines, collected_ms)

    def head(self, limit: int) -> Batch | None:
        with self._lock:
            if self.disk is not None:
                try:
                    batch = self.disk.head(limit)
                    self._disk_ok("reading")
                    if batch is not None:
                        return batch
                except sqlite3.Error as exc:
                    self._disk_failed(exc, "reading")
            return self.memory.head(limit)

    def remove(self, batch: Batch) -> None:
        """Remove a delivered batch from the buffer it came from. A batch of a disk no longer in
        use (check() replaced it while the batch was being sent) is ignored: its ids mean nothing
        elsewhere (the ids of memory and of every disk start at 1), and its points were all moved
        from the old disk to the new one or to memory, so they are sent again: at least once."""
        with self._lock:
            if batch.source is self.memory:
                self.memory.remove(batch.ids)
            elif batch.source is self.disk and self.disk is not None:
                try:
                    self.disk.remove(batch.ids)
                except sqlite3.Error as exc:
                    self._disk_failed(exc, "deleting from")
                else:
                    self._disk_ok("deleting from")

    def __len__(self) -> int:
        with self._lock:
            count = len(self.memory)
            if self.disk is not None:
                try:
                    count += len(self.disk)
                except sqlite3.Error:
                    pass
            return count

    def oldest_ms(self) -> int | None:
        with self._lock:
            stamps = [self.memory.oldest_ms()]
            if self.disk is not None:
                try:
                    stamps.append(self.disk.oldest_ms())
                except sqlite3.Error:
                    pass
            stamps = [s for s in stamps if s is not None]
            return min(stamps) if stamps else None

    def check(self) -> None:
        """Notice a buffer file deleted or replaced while running (its directory removed, a volume
        swapped): recreate it with the points still waiting, and say so."""
        with self._lock:
            disk = self.disk
            if disk is None and self.retry_dir:
                self._retry_open()
                return
            if disk is None or disk.still_there():
                return
            try:
                lines, times = disk.take_all()
            except sqlite3.Error as exc:  # never silent: what waited there is gone with the file
                lines, times = [], []
                LOG.error("buffer: %s was deleted or replaced while running and the %d points waiting in it "
                          "could not be read (%s): they are lost", disk.path, len(disk), clip(exc, 80))
            disk.close()
            self.disk = None
            try:
                try:  # its directory may have been swapped for a link: the same checks as at start
                    directory = resolve(disk.directory, "BUFFER_DIR")
                    os.makedirs(directory, exist_ok=True)
                    check_directory(directory, "BUFFER_DIR")
                except UnsafePath as exc:
                    raise BufferUnusable(str(exc)) from None
                new = SqliteBuffer(directory, disk.max_points)
                new.append(lines, times)
                self.disk = new
                LOG.error("buffer: %s was deleted or replaced while running; recreated it with the %d points "
                          "still waiting", disk.path, len(lines))
            except (OSError, sqlite3.Error, BufferUnusable) as exc:
                self.memory.append(lines, times)
                self.degraded = (f"buffer: {disk.path} was deleted while running and cannot be recreated "
                                 f"({clip(exc, 80)}); keeping points in memory")
                LOG.error("%s", self.degraded)

    def _retry_open(self) -> None:
        try:
            disk = SqliteBuffer(self.retry_dir, self.max_points)
        except (OSError, sqlite3.Error) as exc:
            if not disk_full(exc):
                self.degraded = (f"buffer: BUFFER_DIR {self.retry_dir} cannot be used ({clip(exc, 80)}); "
                                 "keeping points in memory")
                self.retry_dir = None
                LOG.error("%s", self.degraded)
            return
        except BufferUnusable as exc:
            self.retry_dir, self.degraded = None, f"buffer: {exc}"
            LOG.error("%s", self.degraded)
            return
        self.disk, self.retry_dir = disk, None
        lines, times = self.memory.take_all()
        try:
            disk.append(lines, times)
        except sqlite3.Error as exc:
            self.memory.append(lines, times)
            self._disk_failed(exc, "writing to")
            return
        self.degraded = None
        LOG.info("buffer: %s has room again: writing to it (%d points moved from memory)", disk.path, len(lines))

    def close(self) -> None:
        with self._lock:
            if self.disk is not None:
                self.disk.close()


def disk_full(exc: BaseException) -> bool:
    """True for 'no space left' from the OS or from SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


def open_buffer(directory: str | None, max_points: int, max_bytes: int) -> FallbackBuffer:
    """The buffer the daemon uses. BufferLocked (another daemon holds the directory) and
    files.UnsafePath (BUFFER_DIR or a link to it that others could swap) propagate: they are
    configuration errors. A directory or file that cannot be written (or is locked by another
    program) means memory only, with one warning; a file that is foreign, corrupt or not a regular
    file (the other BufferUnusable) means memory and unhealthy; a full disk means memory and
    unhealthy until it has room."""
    memory = MemoryBuffer(max_points, max_bytes)
    if not directory:
        return FallbackBuffer(None, memory)
    real = resolve(directory, "BUFFER_DIR")
    try:
        os.makedirs(real, exist_ok=True)
    except OSError as exc:
        LOG.warning("buffer: BUFFER_DIR %s cannot be created (%s); keeping points in memory only, they will not "
                    "survive a restart", directory, exc.strerror or exc)
        return FallbackBuffer(None, memory)
    check_directory(real, "BUFFER_DIR")
    try:
        disk = SqliteBuffer(real, max_points)
    except BufferLocked:
        raise
    except (OSError, sqlite3.Error) as exc:
        if not disk_full(exc):
            return _unusable(exc, real, directory, memory)
        message = (f"buffer: BUFFER_DIR {real} is full ({clip(getattr(exc, 'strerror', None) or exc, 60)}); "
                   "keeping points in memory until it has room")
        LOG.error("%s", message)
        return FallbackBuffer(None, memory, degraded=message, retry_dir=real)
    except BufferUnusable as exc:
        LOG.error("buffer: %s; keeping points in memory only", exc)
        return FallbackBuffer(None, memory, degraded=f"buffer: {exc}")
    LOG.info("buffer: %s (%d points waiting from before)", disk.path, len(disk))
    return FallbackBuffer(disk, memory)


def _unusable(exc: BaseException, real: str, directory: str, memory: MemoryBuffer) -> FallbackBuffer:
    # by SQLite's code, not the class: "unable to open database file", "attempt to write a readonly
    # database" and "database is locked" are DatabaseErrors too, and mean a file it may not write
    if ((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        message = f"buffer: {os.path.join(real, SqliteBuffer.FILE_NAME)} is corrupt or not a database " \
                  f"({clip(exc, 60)}): left untouched, keeping points in memory"
        LOG.error("%s", message)
        return FallbackBuffer(None, memory, degraded=message)
    LOG.warning("buffer: BUFFER_DIR %s is not writable (%s); keeping points in memory only, they will not "
                "survive a restart", directory, clip(getattr(exc, "strerror", None) or exc, 80))
    return FallbackBuffer(None, memory)
