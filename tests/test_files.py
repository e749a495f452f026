"""tor2influxdb2.files: the checked, pinned directory that every write of the health file goes through."""

import os
import stat

import pytest

from tor2influxdb2.files import UnsafePath, check_directory, open_directory, resolve, write_atomic_at


def test_writes_stay_in_the_directory_opened_even_when_its_name_becomes_a_link(tmp_path):
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    mine.mkdir()
    elsewhere.mkdir()
    fd = open_directory(str(mine), "HEALTHCHECK_FILE")
    try:
        write_atomic_at(fd, "health", "OK 1\n")
        os.rename(mine, tmp_path / "moved")
        os.symlink(elsewhere, mine)
        write_atomic_at(fd, "health", "OK 2\n")
    finally:
        os.close(fd)
    assert (tmp_path / "moved" / "health").read_text() == "OK 2\n"
    assert os.listdir(elsewhere) == []
    assert os.listdir(tmp_path / "moved") == ["health"], "no temporary file is left behind"
    assert stat.S_IMODE(os.stat(tmp_path / "moved" / "health").st_mode) == 0o644


def test_a_link_or_a_directory_in_place_of_the_file_is_not_replaced(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    os.symlink(target, tmp_path / "health")
    (tmp_path / "sub").mkdir()
    fd = open_directory(str(tmp_path), "HEALTHCHECK_FILE")
    try:
        for name in ("health", "sub"):
            with pytest.raises(OSError, match="not a regular file"):
                write_atomic_at(fd, name, "FAILED 1 x\n")
    finally:
        os.close(fd)
    assert target.read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["health", "precious", "sub"]


@pytest.mark.parametrize("check", [check_directory, open_directory])
def test_a_directory_anyone_can_write_to_needs_the_sticky_bit(tmp_path, check):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(UnsafePath, match=r"HEALTHCHECK_FILE: other users can write to the directory .*mode 777"):
        result = check(str(open_dir), "HEALTHCHECK_FILE")
        if isinstance(result, int):
            os.close(result)
    open_dir.chmod(0o1777)
    result = check(str(open_dir), "HEALTHCHECK_FILE")
    if isinstance(result, int):
        os.close(result)


def test_open_directory_refuses_a_link_and_a_file(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    (tmp_path / "file").write_text("")
    for name in ("link", "file", "absent"):
        with pytest.raises(UnsafePath, match=f"HEALTHCHECK_FILE: cannot use the directory .*{name}"):
            open_directory(str(tmp_path / name), "HEALTHCHECK_FILE")


def test_resolve_follows_own_links_below_a_writable_ancestor(tmp_path):
    """A link of this user in a directory only it can write to is followed, even when a directory
    further up is open to everyone (a Kubernetes emptyDir): the write itself is pinned later."""
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "open" / "mine").mkdir(mode=0o700)
    (tmp_path / "open" / "mine" / "real").mkdir()
    os.symlink("real", tmp_path / "open" / "mine" / "link")
    assert resolve(str(tmp_path / "open" / "mine" / "link" / "health"), "HEALTHCHECK_FILE") == \
        str(tmp_path / "open" / "mine" / "real" / "health")
