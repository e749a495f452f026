"""Fleets split across replicas: 5 daemons given the same 1,000 tors (SHARD=0/5 .. 4/5) poll every tor
exactly once per cycle; a replica that gets no tor says so and stays healthy."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter

from support import ROOT, Daemon, stop_process, wait_for

FAKE_TOR = ROOT / "bench" / "fake_tor.py"


def test_five_replicas_poll_every_tor_exactly_once_per_cycle(tmp_path, victoria):
    fake = subprocess.Popen([sys.executable, str(FAKE_TOR), "--json", "--ports", "20", "--latency-ms", "5",
                             "--auth", "null", "--no-sink", "--max-seconds", "120"],
                            stdout=subprocess.PIPE, text=True)
    daemons = []
    full = r"cycle \d+ done in [\d.]+ s: (\d+)/\1 hosts ok"
    try:
        ports = json.loads(fake.stdout.readline())["ports"]
        hosts = "\n".join(f"127.0.0.1:{ports[i % len(ports)]}::relay{i:04d}" for i in range(1000))
        (tmp_path / "hosts").write_text(hosts + "\n")
        for index in range(5):  # every replica gets the same TOR_HOSTS
            daemons.append(Daemon({"TOR_HOSTS_FILE": str(tmp_path / "hosts"), "SHARD": f"{index}/5",
                                   "INFLUX_URL": victoria.url, "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b",
                                   "INFLUX_TOKEN": "tok-shards", "RUN_EVERY_SECONDS": "3", "TOR_TIMEOUT": "2.5",
                                   "VERBOSE": "true", "INFLUX_SERVICE_TAG": "shards",
                                   "HEALTHCHECK_FILE": str(tmp_path / f"health{index}")}).start())
        for d in daemons:  # three cycles in a row in which the replica polled every tor it owns
            d.wait_for_line(full, timeout=60, count=3)
    finally:
        for d in daemons:
            assert d.stop() == 0, d.output
        stop_process(fake)
    owned, polled = 0, 0
    for d in daemons:
        mine = int(d.wait_for_line(r"shard \d/5: this replica polls (\d+) of the 1000 tors")[0].group(1))
        cycles = [(int(ok), int(total)) for ok, total in re.findall(r"cycle \d+ done in [\d.]+ s: (\d+)/(\d+)",
                                                                    d.output)]
        assert all(total == mine for _, total in cycles)
        first_full = next(i for i, (ok, total) in enumerate(cycles) if ok == total)
        assert all(ok == total for ok, total in cycles[first_full:]), cycles  # full from then on
        owned += mine
        polled += sum(ok for ok, _ in cycles)
    assert owned == 1000

    def stored():
        series = victoria.export('{__name__="traffic_read",service="shards"}')
        return series if sum(len(s["values"]) for s in series) >= polled else None
    series = wait_for(stored, 20, what=f"{polled} traffic points")
    per_host = Counter(s["metric"]["host"] for s in series)
    assert len(per_host) == 1000 and set(per_host.values()) == {1}  # each tor polled by one replica only
    assert sum(len(s["values"]) for s in series) == polled  # one point per successful poll, no duplicates


def test_a_replica_that_owns_no_tor_stays_healthy(tmp_path, victoria):
    # one tor, many shards: most replicas own nothing
    from tor2influxdb2.targets import shard_owner
    empty = next(i for i in range(7) if shard_owner("lonely", 7) != i)
    d = Daemon({"TOR_HOSTS": "127.0.0.1:1::lonely", "SHARD": f"{empty}/7", "INFLUX_URL": victoria.url,
                "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b", "INFLUX_TOKEN": "tok-shards", "RUN_EVERY_SECONDS": "1",
                "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp_path / "health")}).start()
    try:
        d.wait_for_line(r"this replica polls 0 of the 1 tors of TOR_HOSTS \(none: it stays healthy")
        d.wait_for_line(r"cycle 2 done in [\d.]+ s: 0/0 hosts ok")
        wait_for(lambda: (tmp_path / "health").read_text().startswith("OK"), 5, what="OK")
    finally:
        assert d.stop() == 0
