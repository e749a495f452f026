"""The suite-wide secret check (tests/leakcheck.py) fails a run whose daemon showed a secret.

A small pytest session in a subprocess, with the suite's conftest machinery: a "daemon" (a script
run the way support.Daemon runs the daemon) prints the token of its environment JSON-escaped,
a health file holds a password URL-encoded, a record of the daemon's logger holds one in hex. The
run must fail, naming the three places, without printing a secret; the same session without the
leaks must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.hostile

TESTS = Path(__file__).resolve().parent

CONFTEST = """
import leakcheck

def pytest_configure(config):
    config.pluginmanager.register(leakcheck.Plugin(), "leakcheck")
"""

SESSION = """
import json, logging, os, stat, sys
from support import Daemon, Tor

LEAK = os.environ["LEAK"] == "1"

def test_a_daemon_prints_its_token(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\\n" + ('printf "%s\\\\n" "$JSON_TOKEN"\\n' if LEAK else 'echo fine\\n'))
    fake.chmod(0o755)
    env = {"INFLUX_TOKEN": "leak-check-token-1/2", "JSON_TOKEN": '"leak-check-token-1\\\\/2"'}
    daemon = Daemon(env, python=str(fake)).start()
    daemon.proc.wait(10)
    daemon._reader.join(5)

def test_a_health_file(tmp_path):
    Tor(tmp_path / "tor", password="leak check pw")  # registers its password, never started
    (tmp_path / "health").write_text("FAILED 1795300000 " + ("leak%20check%20pw" if LEAK else "fine") + "\\n")

def test_a_log_record():
    import leakcheck
    leakcheck.secret("hex-leak-pw")
    logging.getLogger("tor2influxdb2").warning("peer said %s", "hex-leak-pw".encode().hex() if LEAK else "fine")
"""


def run_session(tmp_path: Path, leak: bool) -> subprocess.CompletedProcess:
    session = tmp_path / ("leaky" if leak else "clean")
    session.mkdir()
    (session / "conftest.py").write_text(CONFTEST)
    (session / "test_session.py").write_text(textwrap.dedent(SESSION))
    env = {**os.environ, "LEAK": "1" if leak else "0",
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
                           "--rootdir", str(session), str(session), "--basetemp", str(session / "tmp")],
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_secret_check_fails_a_run_that_showed_a_secret(tmp_path):
    leaky = run_session(tmp_path, leak=True)
    out = leaky.stdout + leaky.stderr
    assert leaky.returncode == 1, out
    assert "3 passed" in out and "secret check: a secret of a fixture was shown" in out
    assert "test_session.py::test_a_daemon_prints_its_token: the log of a daemon" in out
    assert "(health file): " in out and "test_session.py::test_a_log_record: log record tor2influxdb2" in out
    for secret in ("leak-check-token-1/2", "leak check pw", "hex-leak-pw", "leak%20check%20pw",
                   "hex-leak-pw".encode().hex()):
        assert secret not in out
    clean = run_session(tmp_path, leak=False)
    assert clean.returncode == 0 and "no secret shown" in clean.stdout, clean.stdout + clean.stderr
