#!/usr/bin/env python3
"""Benchmark of the durable buffer (BUFFER_DIR): memory with a full buffer, and catch-up speed.

1. RSS: the real daemon runs with BUFFER_DIR holding 0 and then 1,000,000 waiting points while
   InfluxDB is down (a refused port), and its VmRSS/VmHWM are read after it has been retrying for a
   while. Target: full - empty <= 30 MB.
2. Catch-up: the daemon's own Delivery sends 1,000,000 buffered points to a real VictoriaMetrics on
   127.0.0.1 (InfluxDB v2 write API) in requests of 5,000 lines. Target: >= 50,000 points/s.

Run: .venv/bin/python bench/buffer_bench.py [--points 1000000]   (needs victoria-metrics installed)
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import tor_to_influxdb2 as t2i  # noqa: E402
from support import VictoriaMetrics, free_port  # noqa: E402


def fill(directory: Path, points: int) -> float:
    buffer = t2i.SqliteBuffer(str(directory), points)
    started = time.monotonic()
    base = 1795300000000
    for start in range(0, points, 10_000):
        n = min(10_000, points - start)
        lines = [f"traffic,host=relay{i % 50},service=tor,version=0.4.9.11 read={i * 1000}i,written={i * 900}i "
                 f"{base + i}" for i in range(start, start + n)]
        buffer.append(lines, [base + i for i in range(start, start + n)])
    buffer.close()
    return time.monotonic() - started


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def daemon_rss(buffer_dir: Path, seconds: float) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB of the daemon after `seconds` of retrying against a refused InfluxDB."""
    env = {"PATH": os.environ["PATH"], "TOR_HOSTS": f"127.0.0.1:{free_port()}:nobody",
           "INFLUX_URL": f"http://127.0.0.1:{free_port()}", "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b",
           "INFLUX_TOKEN": "t", "RUN_EVERY_SECONDS": "1", "HEALTHCHECK_FILE": str(buffer_dir / "health"),
           "BUFFER_DIR": str(buffer_dir)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tor_to_influxdb2.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)  # let it poll and retry delivery for a while
        return status_kb(proc.pid, "VmRSS"), status_kb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def catch_up(buffer_dir: Path, workdir: Path) -> tuple[int, float, int]:
    vm = VictoriaMetrics(workdir / "vm").start()
    try:
        settings = t2i.Settings(tor_hosts=(), influx_url=vm.url, influx_org="o", influx_bucket="b",
                                influx_token="t", influx_timeout=30)
        buffer = t2i.SqliteBuffer(str(buffer_dir), 10**7)
        writer = t2i.InfluxWriter(settings)
        delivery = t2i.Delivery(writer, buffer, threading.Event())
        total = len(buffer)
        started = time.monotonic()
        while len(buffer):
            if not delivery.deliver_once():
                raise SystemExit(f"delivery failed: {delivery.last_error}")
        took = time.monotonic() - started
        requests = writer.requests
        writer.close()
        buffer.close()
        return total, took, requests
    finally:
        vm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=12, help="how long the daemon runs for the RSS figure")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="t2i-bufbench-"))
    try:
        empty, full = work / "empty", work / "full"
        empty.mkdir()
        full.mkdir()
        fill_s = fill(full, args.points)
        size_mb = (full / t2i.SqliteBuffer.FILE_NAME).stat().st_size / 2**20
        rss_empty = daemon_rss(empty, args.seconds)
        rss_full = daemon_rss(full, args.seconds)
        total, took, requests = catch_up(full, work)
        print("| figure | value |\n|---|---|")
        print(f"| points in the full buffer | {args.points:,} ({size_mb:.0f} MB on disk, filled in {fill_s:.1f} s) |")
        print(f"| daemon RSS / peak, empty buffer | {rss_empty[0] / 1024:.1f} MiB / {rss_empty[1] / 1024:.1f} MiB |")
        print(f"| daemon RSS / peak, full buffer | {rss_full[0] / 1024:.1f} MiB / {rss_full[1] / 1024:.1f} MiB |")
        print(f"| difference of peaks (target <= 30 MB) | {(rss_full[1] - rss_empty[1]) / 1024:.1f} MiB |")
        print(f"| catch-up to VictoriaMetrics (target >= 50,000/s) | {total:,} points in {took:.1f} s = "
              f"{total / took:,.0f} points/s, {requests} requests |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
