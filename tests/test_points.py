"""Section 3, points: measurements, fields, tags and the -t report, as the original had them."""

import json

import tor_to_influxdb2 as t2i

VALUES = {"traffic/read": 1234, "traffic/written": 5678, "stats/ntor/requested": 9, "stats/ntor/assigned": 8,
          "stats/tap/requested": 0, "stats/tap/assigned": 0, "circuit-status": 3, "stream-status": 2}


def stats(values=VALUES, name="relay 1", version="0.4.9.11"):
    return t2i.TorStats(t2i.TorHost(name, "10.0.0.1", 9051, password="pw"), version, dict(values),
                        1795300000123)


def test_three_measurements_with_integer_fields_and_collection_time():
    lines = t2i.to_lines(stats(), "tor", True)
    assert lines == [
        r"traffic,host=relay\ 1,service=tor,version=0.4.9.11 read=1234i,written=5678i 1795300000123",
        r"connections,host=relay\ 1,service=tor,version=0.4.9.11 circuits_active=3i,streams_active=2i 1795300000123",
        r"handshakes,host=relay\ 1,service=tor,version=0.4.9.11 ntor_assigned=8i,ntor_requested=9i,"
        r"tap_assigned=0i,tap_requested=0i 1795300000123",
    ]


def test_no_service_tag_when_empty_and_no_version_tag_when_disabled():
    line = t2i.to_lines(stats(), "", False)[0]
    assert line.startswith(r"traffic,host=relay\ 1 read=")


def test_keys_tor_does_not_know_leave_their_fields_out():
    values = {k: v for k, v in VALUES.items() if not k.startswith("stats/tap")}
    lines = t2i.to_lines(stats(values), "tor", True)
    assert "tap_" not in lines[2] and "ntor_requested=9i" in lines[2]


def test_test_report_has_the_originals_layout():
    report = t2i.test_report(stats(name="rpi3"), "tor", True)
    assert report.startswith("\nStats for host 10.0.0.1:9051(rpi3): ")
    blocks = report.split("\n\n")
    titles = [b.splitlines()[0] for b in blocks[1:]]
    assert titles == ["Tags:", "Traffic measurement:", "Connections measurement:", "Handshakes measurement:"]
    assert json.loads(blocks[1].split("\n", 1)[1]) == {"host": "rpi3", "version": "0.4.9.11", "service": "tor"}
    assert json.loads(blocks[2].split("\n", 1)[1]) == {"read": 1234, "written": 5678}
    assert json.loads(blocks[3].split("\n", 1)[1]) == {"circuits_active": 3, "streams_active": 2}
    assert "pw" not in report
