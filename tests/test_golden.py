"""The package writes, byte for byte, what tor_to_influxdb2.py wrote before the split (commit a293437),
for the same tor answers, with the default settings (METRIC_SETS=core). The expected lines and -t
reports in data/golden_core.json were made by that commit's own code (see its "about")."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from fake_control import FakeControlPort
from tor2influxdb2.poller import Poller
from tor2influxdb2.sinks.lineprotocol import LineEncoder
from tor2influxdb2.sinks.report import report
from tor2influxdb2.sources.control.metricsets import CORE_KEYS, Plan
from tor2influxdb2.sources.control.session import TagPolicy
from tor2influxdb2.targets import parse_tor_host

CASES = json.loads((Path(__file__).parent / "data" / "golden_core.json").read_text())["cases"]


def unknown_key_answers(case):
    """Answers of a tor that does not know the keys the case lacks: 552 for each, as tor does."""
    missing = [k for k in CORE_KEYS if k not in case["keys"]]

    def getinfo(command, conn):
        for key in missing:
            if key in command.split():
                return f'552 Unrecognized key "{key}"\r\n'.encode()
        return case["reply"].encode()
    return getinfo


@pytest.mark.parametrize("case", CASES, ids=[f"{c['host']}|{c['service_tag']}|{c['send_version_tag']}|{n}"
                                             for n, c in enumerate(CASES)])
def test_lines_and_report_are_the_same_bytes_as_before(case):
    fake = FakeControlPort({"GETINFO": unknown_key_answers(case)})
    host = parse_tor_host(f"127.0.0.1:{fake.port}::{case['host']}")
    poller = Poller([host], timeout=3, period=5, plan=Plan(("core",)),
                    tags=TagPolicy(case["service_tag"], case["send_version_tag"]))
    try:
        before = time.time() * 1000
        [result] = poller.poll_all(threading.Event())
        after = time.time() * 1000
    finally:
        poller.close()
        fake.close()
    assert result.ok, result.error
    lines = LineEncoder().encode_all(result.samples)
    expected = [line.rsplit(" ", 1)[0] for line in case["lines"]]
    assert [line.rsplit(" ", 1)[0] for line in lines] == expected
    for line in lines:
        assert before - 1 <= int(line.rsplit(" ", 1)[1]) <= after + 1
    expected_report = case["report"].replace("127.0.0.1:9051", f"127.0.0.1:{fake.port}")
    assert report(host.where, host.name, result.samples) == expected_report


def test_the_question_is_the_same_single_getinfo_as_before():
    """One GETINFO with the 9 keys in the old order; nothing else once connected (NULL auth)."""
    case = CASES[0]
    fake = FakeControlPort({"GETINFO": case["reply"].encode()})
    poller = Poller([parse_tor_host(f"127.0.0.1:{fake.port}:n")], timeout=3, period=5)
    try:
        for _ in range(2):
            [result] = poller.poll_all(threading.Event())
            assert result.ok, result.error
    finally:
        poller.close()
        fake.close()
    old = ("GETINFO version traffic/read traffic/written stats/ntor/requested stats/ntor/assigned "
           "stats/tap/requested stats/tap/assigned circuit-status stream-status")
    assert fake.commands == ["PROTOCOLINFO 1", "AUTHENTICATE", old, old]
