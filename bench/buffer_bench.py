#!/usr/bin/env python3
"""Benchmark of the point buffer: what a day of InfluxDB outage costs, and how fast it catches up.

The outage: 24 h of 50 tors polled every 10 s with METRIC_SETS=core, 3 points a poll, i.e.
8,640 cycles of 150 lines = 1,296,000 points (the default BUFFER_MAX_POINTS). The lines are
made by the daemon's own LineEncoder from samples like the fake tors' (growing counters, one
timestamp per cycle) and appended one cycle at a time, as Delivery.submit() does.

1. In memory (no BUFFER_DIR): the daemon (tor2influxdb2.daemon.run, in a process of its own)
   polls 50 fake tors while InfluxDB is down (a refused port), with its MemoryBuffer holding
   the day's points from the start (filled before run() and handed to it in place of the empty
   buffer open_buffer() would make), and once with an empty buffer. Reported: VmRSS/VmHWM of
   both, and the buffer's own MemoryBuffer.memory_bytes.
2. On disk (BUFFER_DIR): the day's points are appended to a SqliteBuffer (8,640 transactions);
   the file's size; then the real daemon (`python -m tor_to_influxdb2`, compiled) runs on that
   BUFFER_DIR and on an empty one, InfluxDB down: VmRSS/VmHWM of both.
3. Catch-up: the daemon's Delivery sends the day's points, from memory and from disk, to a real
   VictoriaMetrics on 127.0.0.1 (InfluxDB v2 write API), 5,000 lines a request: points/s.

Every figure is the median of --repeat runs (min-max alongside). Targets: a full disk buffer
costs <= 30 MB of RSS more than an empty one; catch-up >= 50,000 points/s.

Run: .venv/bin/python bench/buffer_bench.py [--repeat 3] [--points 1296000]   (needs victoria-metrics)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The daemon's package: the compiled copy the image would run (the child process gets it in
# T2I_BENCH_APP), else this checkout's.
sys.path[:0] = [os.environ.get("T2I_BENCH_APP") or str(ROOT), str(ROOT / "tests")]

from support import VictoriaMetrics, free_port, stop_process  # noqa: E402
from tor2influxdb2.model import Sample, make_tags  # noqa: E402
from tor2influxdb2.settings import DEFAULT_BUFFER_MAX_MEMORY, DEFAULT_BUFFER_MAX_POINTS  # noqa: E402
from tor2influxdb2.sinks.buffer import FallbackBuffer, MemoryBuffer, SqliteBuffer  # noqa: E402
from tor2influxdb2.sinks.influx import Delivery, InfluxWriter  # noqa: E402
from tor2influxdb2.sinks.lineprotocol import LineEncoder  # noqa: E402

TORS = 50
PERIOD_S = 10
DAY_POINTS = 24 * 3600 // PERIOD_S * TORS * 3  # 1,296,000
START_MS = 1795300000000


def outage_cycles(points: int, seed: int = 1):
    """(lines, stamps) of one cycle after another: TORS tors x 3 core measurements, every 10 s."""
    rng = random.Random(seed)
    encoder = LineEncoder()
    tags = [make_tags({"host": f"relay{i:02d}", "service": "tor", "version": "0.4.9.11"}) for i in range(TORS)]
    state = [[rng.randrange(10**9, 10**11), rng.randrange(10**9, 10**11), rng.randrange(0, 10**6)]
             for _ in range(TORS)]
    made, cycle = 0, 0
    while made < points:
        t = START_MS + cycle * PERIOD_S * 1000
        lines = []
        for i in range(TORS):
            s = state[i]
            s[0] += rng.randrange(10**5, 5 * 10**7)
            s[1] += rng.randrange(10**5, 5 * 10**7)
            s[2] += rng.randrange(0, 300)
            ms = t + rng.randrange(0, 400)
            for sample in (Sample("traffic", tags[i], {"read": s[0], "written": s[1]}, ms),
                           Sample("connections", tags[i], {"circuits_active": rng.randrange(0, 4000),
                                                           "streams_active": rng.randrange(0, 2000)}, ms),
                           Sample("handshakes", tags[i], {"ntor_requested": s[2], "ntor_assigned": s[2] - (s[2] % 3),
                                                          "tap_requested": 0, "tap_assigned": 0}, ms)):
                lines.append(encoder.encode(sample))
        lines = lines[:points - made]
        made += len(lines)
        cycle += 1
        yield lines, [int(x.rsplit(" ", 1)[1]) for x in lines]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def show(values, spec=".1f"):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m, lo, hi = (format(x, spec) for x in (statistics.median(values), min(values), max(values)))
    return m if len(values) == 1 or lo == hi else f"{m} ({lo}–{hi})"


# ---------------------------------------------------------------- the daemon with a memory backlog

def child_memory_daemon(points: int) -> int:
    """Run in a subprocess: the daemon's run() with a MemoryBuffer already holding `points`."""
    from tor2influxdb2 import daemon
    from tor2influxdb2.logs import setup_logging
    from tor2influxdb2.settings import config_from_env
    settings = config_from_env(os.environ)
    setup_logging(False)
    memory = MemoryBuffer(settings.buffer_max_points, settings.buffer_max_memory)
    started = time.monotonic()
    dropped = 0
    for lines, stamps in outage_cycles(points):
        dropped += memory.append(lines, stamps)
    fill_s = time.monotonic() - started
    buffer = FallbackBuffer(None, memory)
    daemon.open_buffer = lambda *args: buffer  # the daemon gets the filled buffer instead of an empty one
    stop = threading.Event()
    info = {"filled": len(memory), "dropped_while_filling": dropped, "memory_bytes_filled": memory.memory_bytes,
            "fill_s": fill_s, "rss_kb_filled": status_kb(os.getpid(), "VmRSS")}
    print(json.dumps({"ready": True, **info}), flush=True)
    import signal
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    daemon.run(settings, stop)
    print(json.dumps({"points_at_end": len(memory), "memory_bytes_at_end": memory.memory_bytes, **info}), flush=True)
    return 0


class FakeFleet:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fake_tor.py"), "--json", "--ports", "5",
                                      "--latency-ms", "20", "--no-sink", "--max-seconds", "3600"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def hosts(self) -> str:
        ports = self.info["ports"]
        return ",".join(f"127.0.0.1:{ports[i % len(ports)]}:benchpw:relay{i:02d}" for i in range(TORS))

    def stop(self):
        stop_process(self.proc)


def daemon_env(fleet: FakeFleet, workdir: Path, app: Path, buffer_dir: Path | None) -> dict:
    env = {"PATH": os.environ["PATH"], "TOR_HOSTS": fleet.hosts(),
           "INFLUX_URL": f"http://127.0.0.1:{free_port()}", "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b",
           "INFLUX_TOKEN": "t", "RUN_EVERY_SECONDS": "2", "HEALTHCHECK_FILE": str(workdir / "health"),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(app),
           "T2I_BENCH_APP": str(app)}
    if buffer_dir is not None:
        env["BUFFER_DIR"] = str(buffer_dir)
    return env


def measure(proc: subprocess.Popen, seconds: float) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB after `seconds` of running."""
    time.sleep(seconds)  # the daemon polls and retries delivery meanwhile; nothing to wait for
    if proc.poll() is not None:
        raise SystemExit(f"the daemon exited early (status {proc.returncode})")
    return status_kb(proc.pid, "VmRSS"), status_kb(proc.pid, "VmHWM")


def memory_daemon(fleet, workdir: Path, app: Path, points: int, seconds: float) -> dict:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child-memory-daemon", str(points)],
                            env=daemon_env(fleet, workdir, app, None), cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        rss, hwm = measure(proc, seconds)
    finally:
        stop_process(proc)
    end = {}
    for line in proc.stdout.read().splitlines():
        if line.startswith("{"):
            end = json.loads(line)
    return {**ready, **end, "rss_kb": rss, "hwm_kb": hwm}


def disk_daemon(fleet, workdir: Path, app: Path, buffer_dir: Path, seconds: float) -> dict:
    env = daemon_env(fleet, workdir, app, buffer_dir)
    proc = subprocess.Popen([sys.executable, "-m", "tor_to_influxdb2"], env=env, cwd=str(app),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rss, hwm = measure(proc, seconds)
    finally:
        stop_process(proc)
    return {"rss_kb": rss, "hwm_kb": hwm}


def stage(workdir: Path) -> Path:
    """The entry point and the package, compiled, as the image has them."""
    app = workdir / "app"
    app.mkdir()
    shutil.copy2(ROOT / "tor_to_influxdb2.py", app)
    shutil.copytree(ROOT / "tor2influxdb2", app / "tor2influxdb2", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(app)], check=True)
    return app


def fill_disk(directory: Path, points: int) -> dict:
    buffer = SqliteBuffer(str(directory), max(points, DEFAULT_BUFFER_MAX_POINTS))
    started = time.monotonic()
    for lines, stamps in outage_cycles(points):
        buffer.append(lines, stamps)
    took = time.monotonic() - started
    buffer.close()
    size = sum(p.stat().st_size for p in directory.glob(SqliteBuffer.FILE_NAME + "*"))
    return {"fill_s": took, "file_bytes": size}


def catch_up(vm: VictoriaMetrics, buffer: FallbackBuffer) -> dict:
    writer = InfluxWriter(vm.url, "o", "b", "t", 30)
    delivery = Delivery(writer, buffer, threading.Event())
    total = len(buffer)
    started = time.monotonic()
    while len(buffer):
        if not delivery.deliver_once():
            raise SystemExit(f"delivery failed: {delivery.last_error}")
    took = time.monotonic() - started
    writer.close()
    return {"points": total, "seconds": took, "rate": total / took, "requests": writer.requests}


def one_round(args, work: Path, app: Path, vm: VictoriaMetrics, fleet: FakeFleet) -> dict:
    out = {}
    empty, full = work / "empty", work / "full"
    for d in (empty, full):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    out["disk_fill"] = fill_disk(full, args.points)
    out["mem_empty"] = memory_daemon(fleet, work, app, 0, args.seconds)
    out["mem_full"] = memory_daemon(fleet, work, app, args.points, args.seconds)
    out["disk_empty"] = disk_daemon(fleet, work, app, empty, args.seconds)
    out["disk_full"] = disk_daemon(fleet, work, app, full, args.seconds)
    # catch-up from disk: the file as the daemon left it (its own new points included)
    disk = SqliteBuffer(str(full), DEFAULT_BUFFER_MAX_POINTS * 2)
    out["catch_up_disk"] = catch_up(vm, FallbackBuffer(disk, MemoryBuffer(DEFAULT_BUFFER_MAX_POINTS)))
    disk.close()
    memory = MemoryBuffer(DEFAULT_BUFFER_MAX_POINTS, DEFAULT_BUFFER_MAX_MEMORY)
    for lines, stamps in outage_cycles(args.points):
        memory.append(lines, stamps)
    out["memory_bytes"] = memory.memory_bytes
    out["catch_up_memory"] = catch_up(vm, FallbackBuffer(None, memory))
    return out


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def report(args, rounds: list[dict], meta: dict) -> str:
    def col(path, scale=1.0):
        a, b = path
        return [r[a][b] * scale if r[a].get(b) is not None else None for r in rounds]

    mib = 1 / 1024
    L = [f"Run {meta['date']} on {meta['machine']}, Python {sys.version.split()[0]}; {len(rounds)} round(s), "
         f"median (min–max). loadavg before {meta['load_before']}, after {meta['load_after']}.",
         "",
         (f"A day of InfluxDB outage: 24 h x {TORS} tors x every {PERIOD_S} s x 3 points (METRIC_SETS=core) = "
          f"{args.points:,} points." if args.points == DAY_POINTS else
          f"An outage of {args.points:,} points ({TORS} tors every {PERIOD_S} s, METRIC_SETS=core: "
          f"{args.points / (TORS * 3 * 360):.1f} h)."), "",
         "| figure | value | target |", "|---|---|---|"]
    mem_bytes = [r["mem_full"].get("memory_bytes_filled") for r in rounds]
    L.append(f"| in memory: MemoryBuffer.memory_bytes holding them (BUFFER_MAX_MEMORY "
             f"{DEFAULT_BUFFER_MAX_MEMORY // 2**20} MiB) | {show([b / 2**20 for b in mem_bytes])} MiB "
             f"= {show([b / args.points for b in mem_bytes])} bytes a point; points kept "
             f"{show(col(('mem_full', 'filled')), ',.0f')} | |")
    L.append(f"| in memory: daemon RSS / peak, empty buffer | {show(col(('mem_empty', 'rss_kb'), mib))} / "
             f"{show(col(('mem_empty', 'hwm_kb'), mib))} MiB | |")
    L.append(f"| in memory: daemon RSS / peak, a day waiting | {show(col(('mem_full', 'rss_kb'), mib))} / "
             f"{show(col(('mem_full', 'hwm_kb'), mib))} MiB | |")
    diff_mem = [(r["mem_full"]["hwm_kb"] - r["mem_empty"]["hwm_kb"]) * mib for r in rounds]
    L.append(f"| in memory: difference of peaks | {show(diff_mem)} MiB | |")
    L.append(f"| on disk: buffer file (+ WAL) | {show(col(('disk_fill', 'file_bytes'), 1 / 2**20))} MiB, filled in "
             f"{show(col(('disk_fill', 'fill_s')))} s ({-(-args.points // (TORS * 3)):,} transactions, one a cycle) | |")
    L.append(f"| on disk: daemon RSS / peak, empty BUFFER_DIR | {show(col(('disk_empty', 'rss_kb'), mib))} / "
             f"{show(col(('disk_empty', 'hwm_kb'), mib))} MiB | |")
    L.append(f"| on disk: daemon RSS / peak, a day waiting | {show(col(('disk_full', 'rss_kb'), mib))} / "
             f"{show(col(('disk_full', 'hwm_kb'), mib))} MiB | |")
    diff_disk = [(r["disk_full"]["hwm_kb"] - r["disk_empty"]["hwm_kb"]) * mib for r in rounds]
    L.append(f"| on disk: difference of peaks | {show(diff_disk)} MiB | <= 30 MB (28.6 MiB): "
             f"{'met' if med(diff_disk) <= 30e6 / 2**20 else '**not met**'} |")
    for where in ("disk", "memory"):
        key = f"catch_up_{where}"
        rates = col((key, "rate"))
        L.append(f"| catch-up from {where} to VictoriaMetrics | {show(col((key, 'points')), ',.0f')} points in "
                 f"{show(col((key, 'seconds')))} s = {show(rates, ',.0f')} points/s, "
                 f"{show(col((key, 'requests')), 'g')} requests | >= 50,000/s: "
                 f"{'met' if med(rates) >= 50_000 else '**not met**'} |")
    return "\n".join(L) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=DAY_POINTS, help=f"points of the outage (default {DAY_POINTS:,})")
    parser.add_argument("--seconds", type=float, default=12, help="how long each daemon runs for its RSS (default 12)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians (default 3)")
    parser.add_argument("--json-out", metavar="FILE")
    parser.add_argument("--markdown-out", metavar="FILE")
    parser.add_argument("--child-memory-daemon", type=int, metavar="POINTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory_daemon is not None:
        return child_memory_daemon(args.child_memory_daemon)
    sys.path.insert(0, str(HERE))
    from run_bench import machine_desc
    meta = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_desc(),
            "load_before": loadavg()}
    work = Path(tempfile.mkdtemp(prefix="t2i-bufbench-"))
    fleet = vm = None
    rounds = []
    try:
        app = stage(work)
        fleet = FakeFleet()
        vm = VictoriaMetrics(work / "vm").start()
        for i in range(args.repeat):
            print(f"[buffer bench] round {i + 1}/{args.repeat}, loadavg {loadavg()}", file=sys.stderr, flush=True)
            r = one_round(args, work, app, vm, fleet)
            r["load"] = loadavg()
            rounds.append(r)
            print(f"[buffer bench] {json.dumps({k: v for k, v in r.items()})}", file=sys.stderr, flush=True)
    finally:
        if vm is not None:
            vm.stop()
        if fleet is not None:
            fleet.stop()
        shutil.rmtree(work, ignore_errors=True)
    meta["load_after"] = loadavg()
    md = report(args, rounds, meta)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"meta": meta, "rounds": rounds}, indent=1))
    if args.markdown_out:
        Path(args.markdown_out).write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
