"""Fixtures shared by the test modules: real tor daemons and a real VictoriaMetrics."""

from __future__ import annotations

import resource
import shutil

import pytest

import leakcheck
from support import ROOT, Tor, VictoriaMetrics, run_daemon
from tornet import tornet, tornet_on_loopback  # noqa: F401  (fixtures: one network for every module)


def pytest_configure(config):
    config.pluginmanager.register(leakcheck.Plugin(), "leakcheck")  # the suite-wide secret check
    # The tests' own peers hold thousands of sockets in this process (1,500 control connections,
    # a thousand kept ones): an ordinary user's soft limit of 1,024 would fail them, not the daemon.
    # Raise it to the hard limit, as the daemon does for itself; the tests of the daemon's own limit
    # set theirs in the child.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@pytest.fixture(scope="session")
def victoria(tmp_path_factory):
    """One VictoriaMetrics for the whole session (tests tell their series apart by host tag)."""
    if not shutil.which("victoria-metrics"):
        pytest.fail("victoria-metrics is not installed: run the README's test command (tests/run)")
    vm = VictoriaMetrics(tmp_path_factory.mktemp("vm")).start()
    yield vm
    vm.stop()


@pytest.fixture
def make_tor(tmp_path):
    """Factory: make_tor(auth=..., control=...) starts a tor (DisableNetwork 1) and stops it after the test."""
    if not shutil.which("tor"):
        pytest.fail("tor is not installed: run the README's test command (tests/run)")
    started = []

    def factory(**kwargs) -> Tor:
        tor = Tor(tmp_path / f"tor{len(started)}", **kwargs)
        started.append(tor)
        return tor.start()

    yield factory
    for tor in started:
        tor.stop()


@pytest.fixture
def as_other_user():
    """run_daemon as a user that is not root: as root, as uid/gid 65534 (nobody), who cannot read
    what the test made unreadable; as an ordinary user, as that user."""
    import os
    import site

    def run(env, *args):
        if os.geteuid() != 0:
            return run_daemon(env, *args)
        # root's pyenv Python lives under /root (0700): run Debian's Python 3.11 with the venv's packages
        if not os.access("/usr/bin/python3", os.X_OK):
            pytest.skip("no /usr/bin/python3 for a run as another user")
        packages = [p for p in site.getsitepackages() if p.startswith(str(ROOT))]
        return run_daemon({**env, "PYTHONPATH": os.pathsep.join(packages)}, *args, python="/usr/bin/python3",
                          user=65534, group=65534)
    return run


@pytest.fixture
def proxy_factory():
    """Factory of peers.RecordingProxy (a recording proxy to a tor, or a silent/dribbling/hanging peer)."""
    from peers import RecordingProxy
    made = []

    def make(*args, **kwargs):
        made.append(RecordingProxy(*args, **kwargs))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()
