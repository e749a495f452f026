"""Files the daemon writes (the health file, the buffer's directory), links it may follow, and
the bounded read of the files configuration names (Docker secrets, host lists).

A path may be a link planted by another user, pointing at a file of yours (or root's) that the
daemon would then replace. So links are followed one at a time, and only links owned by root
or by the daemon's own user, sitting in a directory no other user can write to (the image's
/healthcheck -> /tmp/healthcheck is such a link). A directory written to is checked: owned by
root or this user, and no other user can swap entries in it. The health file's directory is then
held open (:func:`open_directory`) and every later write goes through that descriptor
(:func:`write_atomic_at`), so a directory on the way that another user renames away and replaces
by a link after the start (a Kubernetes emptyDir is mode 0777 without the sticky bit) never
redirects a write. The buffer's SQLite file is opened once by path; it is recreated only after
the same checks on its resolved directory. The health file is replaced atomically by a rename,
which never follows a link; it must be a regular file if it exists.
"""

from __future__ import annotations

import os
import stat


class UnsafePath(Exception):
    """A path the daemon will not write through; the message says why and what to do."""


def _others_can_write(info: os.stat_result) -> bool:
    """True when a user other than root and the owner may create or remove entries in the directory
    (group- or world-writable, without the sticky bit that protects others' entries)."""
    if info.st_mode & stat.S_ISVTX:
        return False
    if info.st_mode & stat.S_IWOTH:
        return True
    return bool(info.st_mode & stat.S_IWGRP) and info.st_gid != os.getegid()


def trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def resolve(path: str, what: str) -> str:
    """The real path `path` names, following only trusted links; UnsafePath otherwise."""
    path = os.path.abspath(path)
    seen = 0
    parts = [p for p in path.split(os.sep) if p]
    current = os.sep
    while parts:
        part = parts.pop(0)
        candidate = os.path.join(current, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            return os.path.join(candidate, *parts)
        except OSError as exc:
            raise UnsafePath(f"{what}: cannot look at {candidate}: {exc.strerror}") from None
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        seen += 1
        if seen > 20:
            raise UnsafePath(f"{what}: too many links in {path}")
        parent = os.lstat(current)
        if not trusted_owner(info.st_uid):
            raise UnsafePath(f"{what}: {candidate} is a link owned by uid {info.st_uid}, neither root nor this "
                             f"user (uid {os.geteuid()}): not following it (remove it, or choose a path in a "
                             "directory only you can write to)")
        if _others_can_write(parent):
            raise UnsafePath(f"{what}: {candidate} is a link in {current}, a directory other users can write to: "
                             "not following it")
        target = os.readlink(candidate)
        rest = os.path.join(target, *parts) if parts else target
        if not os.path.isabs(rest):
            rest = os.path.join(current, rest)
        parts = [p for p in os.path.normpath(rest).split(os.sep) if p]
        current = os.sep
    return current


def check_directory(directory: str, what: str) -> None:
    """UnsafePath unless `directory` is owned by root or this user, and others cannot swap files in it
    (a sticky /tmp is fine: others' entries there cannot be replaced by them, nor ours)."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise UnsafePath(f"{what}: cannot use the directory {directory}: {exc.strerror}") from None
    _check_directory_info(info, directory, what)


def _check_directory_info(info: os.stat_result, directory: str, what: str) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{what}: {directory} is not a directory")
    if not trusted_owner(info.st_uid) and _others_can_write(info):
        raise UnsafePath(f"{what}: the directory {directory} belongs to uid {info.st_uid} and other users can "
                         "write to it")
    if _others_can_write(info):
        raise UnsafePath(f"{what}: other users can write to the directory {directory} (mode "
                         f"{stat.S_IMODE(info.st_mode):o}, no sticky bit): choose a directory only you can write to")


def open_directory(directory: str, what: str) -> int:
    """A descriptor of `directory` (already resolved: no link at its end), checked like
    check_directory on what was opened, not on what the name points to later."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafePath(f"{what}: cannot use the directory {directory}: {exc.strerror}") from None
    try:
        _check_directory_info(os.fstat(fd), directory, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic_at(dir_fd: int, name: str, content: str, mode: int = 0o644) -> None:
    """Replace the regular file `name` of the open directory `dir_fd` by one holding `content`,
    atomically (a temporary file beside it, renamed over it). Never follows a link."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{name} exists and is not a regular file")
    except FileNotFoundError:
        pass
    tmp = f".t2i-{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def read_text(path: str, name: str, limit: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, problem) for the UTF-8 file `path` that variable `name` gives, read
    up to `limit` bytes (more is a problem); a UTF-8 byte order mark is dropped."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read(limit + 1)
    except UnicodeDecodeError:
        return None, f"{name}: {path} is not UTF-8 text"
    except OSError as exc:
        return None, f"{name}: cannot read {path}: {exc.strerror or type(exc).__name__}"
    if len(text) > limit:
        size = f"{limit // 2 ** 20} MiB" if limit % 2 ** 20 == 0 else f"{limit // 1024} KiB"
        return None, f"{name}: {path} is larger than {size}"
    return text, None
