#!/usr/bin/env python3
"""CPU per MetricsPort scrape: selection + parsing + samples of a real relay page (tor 0.4.9.11).

Measured with time.process_time (CPU, not wall clock), as the median of --runs runs of --iterations
scrapes each, with the spread (min-max of the runs' per-scrape means):

* ``default``, ``all``: PageParser.parse with the default families and with METRICSPORT_FAMILIES=all,
  - ``warm``: one parser scraping the page again and again (the daemon's steady state: it knows the
    page's series and parses only their values),
  - ``cold``: a new parser that knows no series, for every scrape (the first tor's first scrape
    after the daemon started; later tors' parsers share what the first learnt);
* ``prometheus_client``: the library's parser alone over the whole page (the reference);
* ``scrape``: a whole MetricsSession scrape on the daemon's event loop against a stand-in server on
  127.0.0.1 serving the page as tor does (connect, request, read, parse): the loop thread's CPU
  (time.thread_time; the server runs in another thread).

Budget: <= 1.5 ms CPU per relay scrape with the default families.

Run: .venv/bin/python bench/metricsport_bench.py [--runs 7] [--iterations 300] [--page PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from metricsport_standin import StandIn, tor_like  # noqa: E402

from tor2influxdb2.model import make_tags  # noqa: E402
from tor2influxdb2.poller import EventLoop  # noqa: E402
from tor2influxdb2.sources.metricsport import (ALL_SELECTION, DEFAULT_SELECTION, MetricsSession,  # noqa: E402
                                               PageParser, parse_address)

PAGE = ROOT / "tests" / "data" / "metricsport" / "relay-exit-lead-capture.prom"
COMMON = make_tags({"host": "relay1", "service": "tor", "version": "0.4.9.11"})
BUDGET_MS = 1.5


def measure(call, runs: int, iterations: int, clock=time.process_time) -> dict:
    call()  # imports, first-use costs
    means = []
    for _ in range(runs):
        started = clock()
        for _ in range(iterations):
            call()
        means.append((clock() - started) / iterations * 1000)
    return {"median_ms": round(statistics.median(means), 3), "min_ms": round(min(means), 3),
            "max_ms": round(max(means), 3), "runs": runs, "iterations": iterations}


def cold_parse(selection, body: bytes) -> None:
    """A page parsed by a parser that knows no series: the first tor of a fleet, the first time
    (the series learnt are shared by every parser of a selection, so forget them first)."""
    from tor2influxdb2.sources.metricsport import parse
    parse._SHARED.clear()
    PageParser(selection).parse(body, COMMON, 0)


def scrape_once(session: MetricsSession, loop: EventLoop) -> None:
    done = []
    session.start(time.monotonic(), lambda s, samples, failure: done.append(failure))
    while not done:
        loop.run_once(1.0)
    if done[0] is not None:
        raise SystemExit(f"scrape failed: {done[0]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--page", type=Path, default=PAGE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    body = args.page.read_bytes()
    runs, n = args.runs, args.iterations

    from prometheus_client.parser import text_string_to_metric_families
    text = body.decode()
    results = {}
    for label, selection in (("default", DEFAULT_SELECTION), ("all", ALL_SELECTION)):
        warm = PageParser(selection)
        results[f"{label} warm"] = measure(lambda: warm.parse(body, COMMON, 0), runs, n)
        results[f"{label} cold"] = measure(lambda: cold_parse(selection, body), runs, max(n // 5, 20))
        results[f"{label} warm"]["samples"] = len(warm.parse(body, COMMON, 0))
    results["prometheus_client (whole page)"] = measure(lambda: list(text_string_to_metric_families(text)), runs,
                                                        max(n // 5, 20))
    server, loop = StandIn(tor_like(body, keep_open=False)), EventLoop()
    try:
        session = MetricsSession(parse_address(f"127.0.0.1:{server.port}"), DEFAULT_SELECTION, "hash", 5.0, loop,
                                 tags=lambda: COMMON)
        results["scrape (session, default, warm)"] = measure(lambda: scrape_once(session, loop), runs, max(n // 3, 20),
                                                             clock=time.thread_time)
    finally:
        server.close()
        loop.close()

    lines = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    verdict = results["default warm"]["median_ms"] <= BUDGET_MS
    if args.json:
        json.dump({"page": str(args.page), "page_bytes": len(body), "page_series": lines, "results": results,
                   "budget_ms": BUDGET_MS, "within_budget": verdict}, sys.stdout, indent=2)
        print()
    else:
        print(f"page: {args.page.name}, {len(body)} bytes, {lines} series; CPU per scrape, median of {runs} runs "
              "(min-max)\n")
        print("| what | samples | CPU ms per scrape |\n|---|---|---|")
        for what, r in results.items():
            print(f"| {what} | {r.get('samples', '')} | {r['median_ms']:.3f} ({r['min_ms']:.3f}-{r['max_ms']:.3f}) |")
        print(f"\nbudget {BUDGET_MS} ms (default, warm): {'met' if verdict else 'MISSED'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
