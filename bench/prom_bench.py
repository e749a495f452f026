"""What the Prometheus sink costs per cycle at 1,000 tors (or --tors N).

Inputs are those of tests/prom_inputs.py: every control-port set of the SCHEMA filled, and with
--metricsport also the 278 series a real tor 0.4.9.11 exit relay's MetricsPort served. Each round
hands the sink a new cycle (values change), then scrapes /metrics over HTTP on 127.0.0.1: the first
scrape after update() writes the text, the second gets the kept one.

    .venv/bin/python bench/prom_bench.py [--tors 1000] [--rounds 5] [--metricsport] [--gzip]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import prom_inputs as pi  # noqa: E402
from tor2influxdb2.sinks.prometheus import PrometheusConfig, PrometheusSink  # noqa: E402


def scrape(port: int, gz: bool) -> tuple[float, int]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if gz else {})
    body = conn.getresponse().read()
    conn.close()
    return (time.perf_counter() - start) * 1000, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tors", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--metricsport", action="store_true")
    parser.add_argument("--gzip", action="store_true", help="scrape with Accept-Encoding: gzip, as Prometheus does")
    args = parser.parse_args()
    cycles = [[pi.status(f"relay-{i:05d}", metricsport=args.metricsport, cycle=c) for i in range(args.tors)]
              for c in range(2)]
    sink = PrometheusSink(PrometheusConfig(port=0))
    sink.start()
    updates, firsts, seconds = [], [], []
    try:
        for rnd in range(args.rounds):
            start = time.perf_counter()
            sink.update(cycles[rnd % 2], {"buffer_points": rnd, "cycle_seconds": 10})
            updates.append((time.perf_counter() - start) * 1000)
            first, size = scrape(sink.port, args.gzip)
            second, _ = scrape(sink.port, args.gzip)
            firsts.append(first)
            seconds.append(second)
        lines = sink.render().count("\n")
    finally:
        sink.close()
    med = statistics.median
    print(f"{args.tors} tors{' + MetricsPort' if args.metricsport else ''}: {lines} lines, "
          f"{size / 1e6:.1f} MB per scrape{' (gzip)' if args.gzip else ''}; median of {args.rounds} rounds: "
          f"update {med(updates):.2f} ms, first scrape (writes the text) {med(firsts):.0f} ms, "
          f"next scrape {med(seconds):.1f} ms")


if __name__ == "__main__":
    main()
