"""The MetricsPort on the private Tor network: while traffic flows through the exit, the ntor v3
handshakes and traffic bytes written for it grow, and each value written lies between what its
MetricsPort served just before and just after that poll (scraped by the test itself)."""

from __future__ import annotations

import re
import threading
import time

import pytest

from support import Daemon, wait_for
from tornet import tornet  # noqa: F401  (the session fixture, used by name)

pytestmark = [pytest.mark.tornet]

SERIES = {
    "tor_relay_load_onionskins_total_counter": ('tor_relay_load_onionskins_total{type="ntor_v3",action="processed"}',
                                                {"type": "ntor_v3", "action": "processed"}),
    "tor_relay_traffic_bytes_counter": ('tor_relay_traffic_bytes{direction="read"}', {"direction": "read"}),
}


class Scraper(threading.Thread):
    """Fetches a node's MetricsPort page over and over: (asked_ms, answered_ms, {series: value})."""

    def __init__(self, node):
        super().__init__(daemon=True)
        self.node, self.samples, self.halt = node, [], threading.Event()

    def run(self):
        while not self.halt.is_set():
            asked = time.time() * 1000
            page = self.node.metrics()
            answered = time.time() * 1000
            values = {}
            for metric, (line, _) in SERIES.items():
                found = re.search(r"^" + re.escape(line) + r" (\S+)$", page, re.M)
                values[metric] = float(found.group(1))
            self.samples.append((asked, answered, values))
            self.halt.wait(0.1)


def test_the_exits_metricsport_values_grow_and_equal_what_it_served(tornet, victoria, tmp_path):  # noqa: F811
    exit_ = tornet.exit
    scraper = Scraper(exit_)
    scraper.start()
    wait_for(lambda: len(scraper.samples) > 3, 10, what="scrapes")
    daemon = Daemon({"TOR_HOSTS": exit_.entry("mp-exit"), "TOR_METRICS_PORTS": f"mp-exit=127.0.0.1:{exit_.metrics_port}",
                     "INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b",
                     "INFLUX_TOKEN": "tok-mp", "RUN_EVERY_SECONDS": "1", "TOR_TIMEOUT": "0.8", "VERBOSE": "true",
                     "HEALTHCHECK_FILE": str(tmp_path / "health")}).start()
    try:
        daemon.wait_for_line(r"cycle 2 done")
        for _ in range(3):  # new circuits and bytes through the exit, between polls
            tornet.fetch("/blob")
            daemon.wait_for_line(r"cycle \d+ done", count=len(daemon.wait_for_line(r"cycle \d+ done")) + 1)
    finally:
        assert daemon.stop() == 0, daemon.output
        time.sleep(0.3)
        scraper.halt.set()
        scraper.join(5)
    for metric, (_, labels) in SERIES.items():
        selector = "{" + ",".join([f'__name__="{metric}"', 'host="mp-exit"'] +
                                  [f'{k}="{v}"' for k, v in labels.items()]) + "}"
        [series] = wait_for(lambda: victoria.export(selector), 10, what=metric)
        points = list(zip(series["timestamps"], series["values"]))
        assert points[-1][1] > points[0][1], (metric, points)  # it grew while traffic flowed
        judged = 0
        for ts, value in points:
            before = [v[metric] for a, b, v in scraper.samples if b <= ts - 800]
            after = [v[metric] for a, b, v in scraper.samples if a >= ts]
            if before and after:
                assert before[-1] <= value <= after[0], (metric, ts, value, before[-1], after[0])
                judged += 1
        assert judged >= 3, (metric, points)
