"""Through Tor to an onion InfluxDB, on the private Tor network: the daemon writes through the client's
SocksPort (socks5h) to http://<address>.onion, with no gap across a restart of the onion service's tor
(the buffer carries the points over a stale descriptor); HTTPS with a certificate for the onion name;
an onion service's own MetricsPort (tor_hs_*, the hashed onion label); every socket stays on loopback."""

from __future__ import annotations

import hashlib
import time

import pytest

from support import Daemon, wait_for
from tls_support import VictoriaMetricsTLS, pki  # noqa: F401  (pki: a fixture, used by name)

pytestmark = [pytest.mark.tornet]
REACH = 120  # a new or restarted onion service: seen reachable after 5-34 s here


@pytest.fixture(scope="module")
def onion_influx(tornet, victoria):
    """An onion service whose port 8086 leads to the session's VictoriaMetrics."""
    svc = tornet.add_onion_service("influx", victoria.port, virtual_port=8086)
    svc.wait_reachable(REACH)
    yield svc
    tornet.remove_onion_service(svc)


def daemon_env(tmp_path, tornet, url, name, **extra):
    return {"TOR_HOSTS": tornet.exit.entry(name), "INFLUX_URL": url, "INFLUX_ORGANIZATION": "o",
            "INFLUX_BUCKET": "b", "INFLUX_TOKEN": "tok-onion-influx", "RUN_EVERY_SECONDS": "1",
            "TOR_TIMEOUT": "0.8", "INFLUX_TIMEOUT": "10", "INFLUX_CONNECT_TIMEOUT": "15",
            "INFLUX_PROXY": f"socks5h://isolation:tor2influxdb2@127.0.0.1:{tornet.client.socks_port}",
            "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health"), "BUFFER_DIR": str(tmp_path / "buffer"),
            **extra}


def test_points_reach_an_onion_influxdb_with_no_gap_across_a_restart(tornet, victoria, onion_influx, tmp_path):
    url = f"http://{onion_influx.address}:8086"
    daemon = Daemon(daemon_env(tmp_path, tornet, url, "via-onion")).start()
    try:
        wait_for(lambda: len(victoria.samples("traffic_read", host="via-onion")) >= 3, REACH,
                 what="points written through tor to the onion InfluxDB")
        down_at = time.time() * 1000
        onion_influx.restart()  # its descriptor goes stale: writes fail, the buffer keeps the points
        daemon.wait_for_line(r"cycle \d+ done", count=len(daemon.wait_for_line(r"cycle \d+ done")) + 3)
        onion_influx.wait_reachable(REACH)
        if "write failed" in daemon.output:  # (a restart quick enough may cost no write at all)
            daemon.wait_for_line(r"InfluxDB accepts writes again", timeout=REACH)
        until = time.time() * 1000
        wait_for(lambda: [ts for ts, _ in victoria.samples("traffic_read", host="via-onion") if ts > until], REACH,
                 what="a point collected after the service came back")
    finally:
        assert daemon.stop() == 0, daemon.output
    stamps = [ts for ts, _ in victoria.samples("traffic_read", host="via-onion")]
    gaps = [(a, b) for a, b in zip(stamps, stamps[1:]) if b - a > 1600]
    assert not gaps, f"points missing between {gaps} (restart at {down_at:.0f})"
    assert any(ts > down_at for ts in stamps) and len(stamps) >= 6
    assert "isolation:tor2influxdb2" not in daemon.output and "tor2influxdb2@" not in daemon.output
    tornet.check_loopback()


def test_https_through_tor_with_a_certificate_for_the_onion_name(tornet, pki, tmp_path_factory, tmp_path):  # noqa: F811
    port = tornet.port()
    svc = tornet.add_onion_service("influxtls", port, virtual_port=8443)
    try:
        cert, key = pki.issue_server_cert("onion", dns_names=(svc.address,))
        vm = VictoriaMetricsTLS(tmp_path_factory.mktemp("vm-onion-tls"), cert, key, pki.ca_cert)
        vm.port, vm.url = port, f"https://127.0.0.1:{port}"
        vm.start()
        try:
            svc.wait_reachable(REACH)
            daemon = Daemon(daemon_env(tmp_path, tornet, f"https://{svc.address}:8443", "via-onion-tls",
                                       INFLUX_CA_CERT=str(pki.ca_cert))).start()
            try:
                wait_for(lambda: len(vm.samples("traffic_read", host="via-onion-tls")) >= 2, REACH,
                         what="points over TLS through tor")
            finally:
                assert daemon.stop() == 0, daemon.output
            assert "TLS failed" not in daemon.output
        finally:
            vm.stop()
    finally:
        tornet.remove_onion_service(svc)
    tornet.check_loopback()


def test_an_onion_services_metricsport_is_written_with_the_hashed_label(tornet, victoria, tmp_path):
    svc = tornet.add_onion_service("hsmetrics", tornet.http.port)
    try:
        svc.wait_reachable(REACH)
        name = "hs-tor"
        daemon = Daemon({"TOR_HOSTS": svc.entry(name), "TOR_METRICS_PORTS": f"{name}=127.0.0.1:{svc.node.metrics_port}",
                         "INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b",
                         "INFLUX_TOKEN": "tok-hs", "RUN_EVERY_SECONDS": "1", "TOR_TIMEOUT": "0.8", "VERBOSE": "true",
                         "HEALTHCHECK_FILE": str(tmp_path / "health")}).start()
        try:
            daemon.wait_for_line(r"cycle 2 done")
            for _ in range(3):
                assert svc.get("/blob") == tornet.http.bodies["/blob"]
            daemon.wait_for_line(r"cycle \d+ done", count=len(daemon.wait_for_line(r"cycle \d+ done")) + 2)
        finally:
            assert daemon.stop() == 0, daemon.output
    finally:
        tornet.remove_onion_service(svc)
    hashed = hashlib.sha256(svc.onion_id.encode()).hexdigest()[:16]
    series = wait_for(lambda: victoria.export(f'{{__name__="tor_hs_app_read_bytes_total_counter",host="{name}"}}'),
                      10, what="tor_hs_app_read_bytes_total points")
    assert {s["metric"]["onion"] for s in series} == {hashed}
    assert not any(svc.onion_id in str(s["metric"]) for s in victoria.export(f'{{host="{name}"}}'))
    values = sorted(v for s in series for v in s["values"])
    assert values[-1] - values[0] >= 3 * len(tornet.http.bodies["/blob"])  # the app bytes grew by what was fetched
    tornet.check_loopback()
