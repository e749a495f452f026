"""Fixtures shared by the test modules: real tor daemons and a real VictoriaMetrics."""

from __future__ import annotations

import shutil

import pytest

from support import Tor, VictoriaMetrics
from tornet import tornet, tornet_on_loopback  # noqa: F401  (fixtures: one network for every module)



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
