"""healthcheck.sh, the image's HEALTHCHECK, run under busybox sh (as on the Alpine image) and dash
(as /bin/sh on the Debian image), without Docker: healthy only when the health file says OK and was
written within the last 3 periods; one line saying why, either way; exit 0 or 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support import ROOT

SCRIPT = ROOT / "healthcheck.sh"
SHELLS = {
    "dash": ["dash"],
    "busybox": ["busybox", "sh"],
}


@pytest.fixture(params=sorted(SHELLS))
def sh(request):
    cmd = SHELLS[request.param]
    if not shutil.which(cmd[0]):
        pytest.fail(f"{cmd[0]} is not installed: run the README's test command (tests/run installs it)")
    return cmd


@pytest.fixture
def health(tmp_path) -> Path:
    return tmp_path / "healthcheck"


def probe(sh, health_file: Path | str | None, period: str | None = None) -> tuple[int, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if health_file is not None:
        env["HEALTHCHECK_FILE"] = str(health_file)
    if period is not None:
        env["RUN_EVERY_SECONDS"] = period
    proc = subprocess.run([*sh, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), f"exit {proc.returncode}: {out}"
    lines = out.splitlines()
    assert len(lines) == 1 and proc.stderr == "", f"not one line on stdout: {out!r}"
    return proc.returncode, lines[0]


def now() -> int:
    return int(time.time())


def test_fresh_ok_is_healthy(sh, health):
    health.write_text(f"OK {now()}\n")
    rc, line = probe(sh, health)
    assert rc == 0 and line.startswith("HEALTHY"), line


def test_ok_older_than_3_periods_is_unhealthy_a_hung_daemon(sh, health):
    health.write_text(f"OK {now() - 32}\n")  # default period 10 s: stale after 30 s
    rc, line = probe(sh, health)
    assert rc == 1 and line.startswith("UNHEALTHY") and "hung or stopped" in line, line
    assert "32 s old" in line or "33 s old" in line, line


def test_ok_within_3_periods_is_healthy(sh, health):
    health.write_text(f"OK {now() - 28}\n")
    rc, line = probe(sh, health)
    assert rc == 0, line


def test_the_limit_follows_run_every_seconds(sh, health):
    health.write_text(f"OK {now() - 8}\n")
    assert probe(sh, health, period="2")[0] == 1  # 3 x 2 s = 6 s
    assert probe(sh, health, period="10")[0] == 0
    health.write_text(f"OK {now() - 100}\n")
    assert probe(sh, health, period="60")[0] == 0  # 3 x 60 s = 180 s


def test_fractional_period_is_rounded_up(sh, health):
    health.write_text(f"OK {now() - 7}\n")
    rc, line = probe(sh, health, period="2.5")  # 3 x 3 s = 9 s
    assert rc == 0, line


def test_failed_is_unhealthy_and_says_why(sh, health):
    health.write_text(f"FAILED {now()} host alpha: connection refused\n")
    rc, line = probe(sh, health)
    assert rc == 1 and "FAILED" in line and "host alpha: connection refused" in line, line


def test_failed_without_reason(sh, health):
    health.write_text(f"FAILED {now()}\n")
    rc, line = probe(sh, health)
    assert rc == 1 and "FAILED" in line, line


def test_no_health_file_yet_is_unhealthy(sh, health):
    rc, line = probe(sh, health)
    assert rc == 1 and "no health file" in line and str(health) in line, line


def test_default_health_file_is_slash_healthcheck(sh):
    if os.path.lexists("/healthcheck"):
        pytest.skip("this machine has a /healthcheck of its own")
    rc, line = probe(sh, None)
    assert rc == 1 and "/healthcheck" in line, line


@pytest.mark.parametrize("content", ["", "\n", "OK\n", "OK soon\n", "GOOD 1700000000\n", "garbage"])
def test_unexpected_content_is_unhealthy(sh, health, content):
    health.write_text(content)
    rc, line = probe(sh, health)
    assert rc == 1 and line.startswith("UNHEALTHY"), line


def test_old_original_format_ok_without_time_is_unhealthy(sh, health):
    """The original daemon wrote a bare `OK`: without a time nothing tells it is recent."""
    health.write_text("OK")
    rc, line = probe(sh, health)
    assert rc == 1 and "no unix time" in line, line


def test_no_trailing_newline_and_fractional_time(sh, health):
    health.write_text(f"OK {time.time():.3f}")
    rc, line = probe(sh, health)
    assert rc == 0, line


def test_time_far_in_the_future_is_unhealthy(sh, health):
    health.write_text(f"OK {now() + 3600}\n")
    rc, line = probe(sh, health)
    assert rc == 1 and "future" in line, line


@pytest.mark.parametrize("period", ["abc", "0", "-5", "", "1.2.3"])
def test_bad_run_every_seconds_is_unhealthy(sh, health, period):
    health.write_text(f"OK {now()}\n")
    rc, line = probe(sh, health, period=period if period else None)
    if period == "":  # unset: the default of 10 s
        assert rc == 0, line
    else:
        assert rc == 1 and "RUN_EVERY_SECONDS" in line, line


def test_reads_through_a_symlink_as_in_the_image(sh, tmp_path):
    """The image's /healthcheck is a link to /tmp/healthcheck (the daemon's file)."""
    target = tmp_path / "tmp-healthcheck"
    link = tmp_path / "healthcheck"
    link.symlink_to(target)
    rc, line = probe(sh, link)
    assert rc == 1 and "no health file" in line, line
    target.write_text(f"OK {now()}\n")
    rc, line = probe(sh, link)
    assert rc == 0, line


def test_leading_zeros_are_not_octal(sh, health):
    health.write_text(f"OK 0{now()}\n")
    rc, line = probe(sh, health, period="010")
    assert rc == 0, line


def test_script_is_posix_sh_and_executable():
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert os.access(SCRIPT, os.X_OK), "healthcheck.sh is not executable"
    for sh in ("dash", "busybox"):
        if shutil.which(sh):
            cmd = ["dash", "-n"] if sh == "dash" else ["busybox", "sh", "-n"]
            proc = subprocess.run([*cmd, str(SCRIPT)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
