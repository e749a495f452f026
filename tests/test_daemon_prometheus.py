"""The Prometheus output in the daemon: /metrics holds what was written to VictoriaMetrics in the same
cycle, a tor that goes down shows up=0 within one period and no stale values, and a Prometheus-only
deployment needs no INFLUX_* at all."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from support import Daemon, free_port, wait_for


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_equal_what_was_written_and_a_tor_down_shows_up_0(tmp_path, victoria, make_tor):
    tor = make_tor(auth="password")
    port = free_port()
    daemon = Daemon({"TOR_HOSTS": tor.entry("prom-a"), "INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": "o",
                     "INFLUX_BUCKET": "b", "INFLUX_TOKEN": "tok-prom", "RUN_EVERY_SECONDS": "1", "TOR_TIMEOUT": "0.8",
                     "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health"),
                     "PROMETHEUS_LISTEN": f"127.0.0.1:{port}", "METRIC_SETS": "core,status"}).start()
    try:
        host = (("host", "prom-a"), ("service", "tor"))
        for cycle in (2, 4):  # right after a cycle's line /metrics shows that cycle (updated before the line)
            daemon.wait_for_line(rf"cycle {cycle} done")
            values = scrape(port)
            stamp_ms = __import__("time").time() * 1000
            written = wait_for(lambda: len(w := [p for p in victoria.samples("status_uptime", host="prom-a")
                                                 if p[0] <= stamp_ms]) >= cycle and w, 10, what="uptime points")
            assert len(written) == cycle and values[("tor_uptime", host)] == written[-1][1], (values, written)
        assert values[("tor2influxdb2_up", host)] == 1
        assert values[("tor_network_liveness", host)] == 0  # DisableNetwork 1
        assert ("tor2influxdb2_buffer_points", ()) in values
        tor.stop()
        stopped = daemon.wait_for_line(r"cycle \d+ done")
        daemon.wait_for_line(r"cycle \d+ done", count=len(stopped) + 1, timeout=5)  # within one period
        down = scrape(port)
        assert down[("tor2influxdb2_up", host)] == 0
        assert not any(name.startswith("tor_") for name, labels in down if labels == host), \
            sorted(name for name, labels in down if labels == host)
    finally:
        assert daemon.stop() == 0


def test_a_prometheus_only_deployment_needs_no_influxdb(tmp_path, make_tor):
    tor = make_tor(auth="none")
    port = free_port()
    daemon = Daemon({"TOR_HOSTS": tor.entry("prom-only"), "PROMETHEUS_LISTEN": str(port), "RUN_EVERY_SECONDS": "1",
                     "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health")}).start()
    try:
        daemon.wait_for_line(r"cycle 2 done in [\d.]+ s: 1/1 hosts ok")
        values = scrape(port)
        assert values[("tor2influxdb2_up", (("host", "prom-only"), ("service", "tor")))] == 1
        assert ("tor2influxdb2_buffer_points", ()) not in values  # no InfluxDB, no buffer
        assert (tmp_path / "health").read_text().startswith("OK")
    finally:
        assert daemon.stop() == 0
    assert "writing to Prometheus on 127.0.0.1" in daemon.output
