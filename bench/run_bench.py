#!/usr/bin/env python3
"""Benchmark of the tor2influxdb2 daemon against simulated Tor control ports.

Each run starts bench/fake_tor.py (control ports answering like tor 0.4.9 after a network
latency, optional MetricsPorts, and an InfluxDB 2 write sink, in one process), runs the daemon
as the image runs it (the package and the entry point compiled, `python -m tor_to_influxdb2`)
against N host entries spread over those ports, waits for --cycles cycle lines in its log,
then stops both (by pid). What a run reports is described in bench/README.md; in short:

  connect cycle     wall time of the first cycle (connect + authenticate + poll)
  cycle wall        median and max of the daemon's "cycle N done in X s", steady cycles
  CPU/host-poll     the daemon's CPU time (all threads) over the steady cycles / host-polls
  peak RSS          VmHWM after the last cycle
  round trips,      counted by the fake tors per steady poll (a round trip is a batch of
  bytes per poll    commands that arrives while nothing is unanswered)
  start-up          seconds from start to the first cycle in which every host answered, and
                    the warning lines logged before it
  load              loadavg before and after, and the fake fleet's own CPU per cycle

Runs (each repeated --repeat times; the tables show the median and the min-max spread):
  grid        --sizes x --metric-sets (default 10,200,1000 x core)
  hung        --hung-size N: one of N hosts never answers (--hang-modes)
  quickack    --quickack: replies over 4 KB (--quickack-circuits 60), with and without
              T2I_NO_QUICKACK=1
  startup     --startup-size N: N hosts, RUN_EVERY_SECONDS=10: time to the first full cycle
  no-miss     --no-miss-size N: N hosts every 10 s (TOR_TIMEOUT=5): every cycle polls every
              host, no tick skipped
  deployment  --deployment: 1 host, the image's defaults: RSS after start, time to first cycle
  --full      all of these, with --repeat 3 unless given

Everything binds and connects to 127.0.0.1 only; every run is bounded in time and stops by itself.

  .venv/bin/python bench/run_bench.py --full --markdown-out bench/results.md
  .venv/bin/python bench/run_bench.py --sizes 1000 --metric-sets core,all --repeat 3 --py-spy /tmp/prof
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import stop_process  # noqa: E402  (the test suite's: SIGTERM by pid, SIGKILL if it lingers)

FAKE_TOR = HERE / "fake_tor.py"
METRICS_BODY = ROOT / "tests" / "data" / "metricsport" / "relay-exit-lead-capture.prom"
DEFAULT_DAEMON = ROOT / "tor_to_influxdb2.py"
DEFAULT_PYTHON = sys.executable
CYCLE_RE = re.compile(r"cycle (\d+) done in ([\d.]+) s: (\d+)/(\d+) hosts ok(?:, (\d+) points)?")
WARN_RE = re.compile(r" (WARNING|ERROR|CRITICAL) ")
OVERRAN_RE = re.compile(r"cycle overran the period of [\d.]+ s: skipping (\d+) tick")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_ENV_VALUE = 120_000  # Linux refuses one environment string over 128 KiB (MAX_ARG_STRLEN)
MIB_PER_MB = 1e6 / 2**20  # a size in MiB / MIB_PER_MB = the size in MB

# py-spy frames that only carry the others (thread start, runpy) and frames of waiting
PLUMBING_RE = re.compile(r"^(<module>|Thread\.(_bootstrap|_bootstrap_inner|run) \(threading|_run_module_as_main|"
                         r"_run_code \()")
WAITING_RE = re.compile(r"^(Condition\.wait|Event\.wait|\w*Selector\.select) \(")

TARGETS = {  # from the issue
    "cycle_s_1000": 0.3,          # core, 1,000 hosts at 20 ms: under 0.3 s a cycle
    "cpu_ms_per_poll": 0.15,      # core: <= 0.15 ms CPU per host-poll
    "rss_mb_core_1000": 50.0,     # core: <= 50 MB peak RSS at 1,000 hosts
    "rss_mb_all_1000": 60.0,      # all: <= 60 MB at 1,000 hosts
    "all_cpu_ratio": 2.0,         # all: at most 2x the CPU of core per host-poll
    "first_full_periods": 2.0,    # first full cycle within two periods of start
}


# ------------------------------------------------------------------------ helpers

def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of all threads of pid, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def proc_cpu_ns(pid: int) -> int | None:
    """CPU time of pid's live threads in ns (sum of /proc/PID/task/*/schedstat), or None.

    Finer than clock ticks; misses threads that exited, so it is used only when it agrees
    with the tick count (see summarize)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def kib(value: str) -> int:
    return int(value.split()[0]) if value else 0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def http_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def stop_pid(proc: subprocess.Popen, timeout: float = 10) -> tuple[int, float]:
    """SIGTERM the process we started (by its pid), SIGKILL if it lingers; (rc, seconds)."""
    t0 = time.monotonic()
    stop_process(proc, timeout)
    return proc.returncode, time.monotonic() - t0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------------ what to run

@dataclasses.dataclass
class Config:
    group: str                 # grid, hung, quickack, startup, no-miss, deployment
    hosts: int
    sets: str = "core"
    hung: int = 0
    hang_mode: str = "never"
    quickack: bool = True
    circuits: int = 5
    run_every: float = 2
    tor_timeout: float | None = 1
    cycles: int = 8
    relays: float = 0.5
    latency_ms: float = 20
    metricsport: bool = False
    profile: bool = False

    @property
    def label(self) -> str:
        text = f"{self.hosts:,} hosts, {self.sets}"
        if self.hung:
            text += f", 1 hung ({self.hang_mode})"
        if self.group == "quickack":
            text += f", {self.circuits} circuits, QUICKACK {'on' if self.quickack else 'off'}"
        if self.group in ("startup", "no-miss", "deployment"):
            text += f", every {self.run_every:g} s ({self.group})"
        if self.profile:
            text += " (py-spy)"
        return text

    def key(self) -> tuple:
        return dataclasses.astuple(self)


def stage_daemon(daemon: Path, python: str, workdir: Path) -> tuple[Path, str]:
    """Copy the entry point (and the tor2influxdb2 package beside it, if any) into workdir/app
    and compile them, as the image does. Returns (app dir, module name)."""
    app = workdir / "app"
    app.mkdir(parents=True, exist_ok=True)
    shutil.copy2(daemon, app / daemon.name)
    package = daemon.parent / "tor2influxdb2"
    targets = [str(app / daemon.name)]
    if package.is_dir() and daemon.name == "tor_to_influxdb2.py":
        shutil.copytree(package, app / "tor2influxdb2", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        targets.append(str(app / "tor2influxdb2"))
    subprocess.run([python, "-m", "compileall", "-q", *targets], check=True)
    return app, daemon.stem


class FakeTor:
    """bench/fake_tor.py as a subprocess."""

    def __init__(self, args, cfg: Config, ports: int, max_seconds: float):
        cmd = [args.fake_python, str(FAKE_TOR), "--json", "--ports", str(ports),
               "--latency-ms", f"{cfg.latency_ms:g}", "--hung-ports", str(cfg.hung),
               "--hang-mode", cfg.hang_mode, "--auth", args.auth, "--relays", f"{cfg.relays:g}",
               "--circuits", str(cfg.circuits), "--max-seconds", str(int(max_seconds))]
        if cfg.metricsport:
            cmd += ["--metrics-body", str(args.metrics_body), "--metrics-ports", str(ports)]
            if args.metrics_latency_ms is not None:
                cmd += ["--metrics-latency-ms", f"{args.metrics_latency_ms:g}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake_tor did not start: {self.proc.stderr.read()}")
        self.info = json.loads(line)
        self.sink_url = f"http://127.0.0.1:{self.info['sink_port']}"

    def stats(self) -> dict:
        return http_json(self.sink_url + "/bench/stats", timeout=30)

    def counters(self) -> dict | None:
        try:
            return http_json(self.sink_url + "/bench/counters", timeout=5)
        except OSError:
            return None

    def stop(self) -> None:
        stop_pid(self.proc)


class DaemonRun:
    """The daemon as a subprocess; a thread reads its log and, at each cycle line, samples
    /proc and the fake fleet's counters."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, on_cycle=None):
        self.on_cycle = on_cycle
        self.cycles: list[dict] = []
        self.lines = 0
        self.warnings = 0
        self.warning_samples: list[str] = []
        self.overran_lines = 0
        self.skipped_ticks = 0
        self.tail: list[str] = []
        self.cond = threading.Condition()
        self.log = open(log_path, "w")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self.pid = self.proc.pid
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.monotonic()
            m = CYCLE_RE.search(line)
            sample = None
            if m:
                try:
                    sample = {"ticks": proc_cpu_ticks(self.pid), "cpu_ns": proc_cpu_ns(self.pid),
                              "rss_kib": kib(proc_status(self.pid).get("VmRSS", ""))}
                except (OSError, IndexError, ValueError):
                    sample = None
                counters = self.on_cycle() if self.on_cycle else None
                if counters is not None:
                    sample = {**(sample or {}), "fake": counters}
            self.log.write(line)
            with self.cond:
                self.lines += 1
                if WARN_RE.search(line):
                    self.warnings += 1
                    if len(self.warning_samples) < 5:
                        self.warning_samples.append(line.rstrip("\n")[:300])
                o = OVERRAN_RE.search(line)
                if o:
                    self.overran_lines += 1
                    self.skipped_ticks += int(o.group(1))
                self.tail = (self.tail + [line.rstrip("\n")])[-40:]
                if m:
                    self.cycles.append({
                        "n": int(m.group(1)), "wall_s": float(m.group(2)),
                        "ok": int(m.group(3)), "total": int(m.group(4)),
                        "points": int(m.group(5)) if m.group(5) else None,
                        "t": now, "log_lines_before": self.lines, "warnings_before": self.warnings,
                        **(sample or {})})
                self.cond.notify_all()
        self.log.flush()
        with self.cond:
            self.cond.notify_all()

    def wait_cycles(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.cycles) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def stop(self) -> tuple[int, float]:
        rc = stop_pid(self.proc)
        self.reader.join(5)
        self.log.close()
        return rc


# ------------------------------------------------------------------------ one run

def run_one(args, cfg: Config, app: Path, module: str) -> dict:
    healthy = cfg.hosts - cfg.hung
    n_ports = max(1, min(args.ports, healthy))
    budget = 60 + cfg.cycles * cfg.run_every * 3
    fake = FakeTor(args, cfg, n_ports, max_seconds=budget + 60)
    tmp = Path(tempfile.mkdtemp(prefix="tor2influx-bench-"))
    result: dict = {"label": cfg.label, "config": dataclasses.asdict(cfg), "hosts": cfg.hosts, "ports": n_ports,
                    "loadavg_before": loadavg(), "workdir": str(tmp)}
    completed = False
    d: DaemonRun | None = None
    try:
        pw = fake.info["password"]
        entries, names = [], []
        for i in range(healthy):
            port = fake.info["ports"][i % n_ports]
            names.append(f"bench{i:05d}")
            entries.append(f"127.0.0.1:{port}:{pw}:{names[-1]}" if pw else f"127.0.0.1:{port}:{names[-1]}")
        for j, port in enumerate(fake.info["hung_ports"]):
            entries.append(f"127.0.0.1:{port}:{pw}:hung{j}" if pw else f"127.0.0.1:{port}:hung{j}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "INFLUX_URL": fake.sink_url, "INFLUX_ORGANIZATION": "bench",
               "INFLUX_BUCKET": "bench", "INFLUX_TOKEN": "benchtoken",
               "RUN_EVERY_SECONDS": f"{cfg.run_every:g}", "VERBOSE": "true",
               "HEALTHCHECK_FILE": str(tmp / "healthcheck"),
               # as the image's ENV
               "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(app)}
        if cfg.tor_timeout is not None:
            env["TOR_TIMEOUT"] = f"{cfg.tor_timeout:g}"
        if cfg.sets != "core":
            env["METRIC_SETS"] = cfg.sets
        if not cfg.quickack:
            env["T2I_NO_QUICKACK"] = "1"
        hosts_text = ",".join(entries)
        if args.hosts_file or len(hosts_text) > MAX_ENV_VALUE:
            (tmp / "hosts.txt").write_text("\n".join(entries) + "\n")
            env["TOR_HOSTS_FILE"] = str(tmp / "hosts.txt")
            result["hosts_given_as"] = "TOR_HOSTS_FILE"
        else:
            env["TOR_HOSTS"] = hosts_text
            result["hosts_given_as"] = "TOR_HOSTS"
        if cfg.metricsport:
            mports = fake.info["metrics_ports"]
            value = ",".join(f"{name}=127.0.0.1:{mports[i % len(mports)]}" for i, name in enumerate(names))
            if len(value) > MAX_ENV_VALUE:
                result["metricsport_note"] = f"TOR_METRICS_PORTS not given: {len(value)} characters is too long"
            else:
                env["TOR_METRICS_PORTS"] = value
        for kv in args.env:
            k, _, v = kv.partition("=")
            env[k] = v
        cmd = [args.python]
        if args.cprofile:
            cmd += ["-m", "cProfile", "-o", f"{args.cprofile}.{cfg.hosts}.{cfg.sets}.pstats"]
        cmd += [str(app / f"{module}.py")] if args.as_script else ["-m", module]
        d = DaemonRun(cmd, env, app, tmp / "daemon.log", on_cycle=fake.counters)
        spy = None
        startup_profile = cfg.profile and cfg.group == "startup"
        if startup_profile:  # from the start to about the first cycle's end
            spy = start_py_spy(args, cfg, d.pid, max(2, int(cfg.run_every)), result)
        ok = d.wait_cycles(1, timeout=60 + (cfg.tor_timeout or 5) * 3 + cfg.run_every)
        if ok and cfg.profile and not startup_profile:
            spy = start_py_spy(args, cfg, d.pid, max(2, int((cfg.cycles - 1) * cfg.run_every) - 1), result)
        ok = ok and d.wait_cycles(cfg.cycles, timeout=cfg.cycles * cfg.run_every * 2.5 + 30)
        status = {}
        try:
            status = proc_status(d.pid)
        except OSError:
            pass
        if spy is not None:
            try:
                spy.wait(cfg.cycles * cfg.run_every + 30)
            except subprocess.TimeoutExpired:
                stop_pid(spy)
            result["py_spy_stderr"] = spy.stderr.read()[-500:]
        time.sleep(0.3)  # let a write that follows the last cycle line arrive
        stats_before_stop = fake.stats()
        rc, stop_s = d.stop()
        time.sleep(0.2)
        stats = fake.counters() or {}
        result.update(loadavg_after=loadavg(), daemon_rc=rc, daemon_stop_s=round(stop_s, 3),
                      daemon_log=str(tmp / "daemon.log"), log_lines=d.lines)
        if not ok:
            result["error"] = (f"got {len(d.cycles)}/{cfg.cycles} cycle lines "
                               f"(daemon rc={d.proc.returncode})\n" + "\n".join(d.tail))
        result.update(summarize(cfg, d, status, stats_before_stop, stats))
        if cfg.profile and result.get("py_spy_output") and Path(result["py_spy_output"]).exists():
            result["profile"] = pyspy_summary(Path(result["py_spy_output"]))
        completed = True
        return result
    finally:
        if d is not None and d.proc.poll() is None:
            d.stop()
        fake.stop()
        if completed and not args.keep_logs and not result.get("error"):
            shutil.rmtree(tmp, ignore_errors=True)
            result["workdir"] = result["daemon_log"] = None


def start_py_spy(args, cfg: Config, pid: int, seconds: int, result: dict) -> subprocess.Popen:
    out = f"{args.py_spy}.{cfg.group}.{cfg.hosts}.{cfg.sets.replace(',', '+')}.txt"
    spy_bin = shutil.which("py-spy") or str(Path(args.python).parent / "py-spy")
    cmd = [spy_bin, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--format", "raw",
           "-o", out, "--nonblocking"]
    if args.py_spy_gil:
        cmd.append("--gil")
    result["py_spy_output"] = out
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def summarize(cfg: Config, d: DaemonRun, status: dict, st: dict, st_after: dict) -> dict:
    cyc = d.cycles[:cfg.cycles]
    out: dict = {"cycles_seen": len(cyc), "warnings_total": d.warnings, "warning_samples": d.warning_samples,
                 "overran_lines": d.overran_lines, "skipped_ticks": d.skipped_ticks}
    if not cyc:
        return out
    hosts, healthy = cfg.hosts, cfg.hosts - cfg.hung
    first, steady = cyc[0], cyc[1:]
    out["connect_cycle_s"] = first["wall_s"]
    out["cycle_wall_s"] = [c["wall_s"] for c in cyc]
    out["hosts_ok"] = [c["ok"] for c in cyc]
    out["points"] = [c["points"] for c in cyc]
    out["hosts_total_reported"] = first["total"]
    out["cycles_all_ok"] = sum(1 for c in cyc if c["ok"] == c["total"] == hosts)
    out["first_cycle_after_start_s"] = first["t"] - d.t_start
    full = next((c for c in cyc if c["ok"] == c["total"] == hosts), None)
    if full is not None:
        out["first_full_cycle"] = full["n"]
        out["first_full_cycle_after_start_s"] = full["t"] - d.t_start
        out["warnings_before_first_full_cycle"] = full["warnings_before"]
    out["rss_mib_after_start"] = round(first["rss_kib"] / 1024, 1) if "rss_kib" in first else None
    if steady:
        walls = [c["wall_s"] for c in steady]
        out["cycle_median_s"] = median(walls)
        out["cycle_max_s"] = max(walls)
        out["hosts_ok_min"] = min(c["ok"] for c in steady)
        timeout = cfg.tor_timeout or 5
        out["cycles_at_timeout"] = sum(1 for w in walls if w >= 0.9 * timeout)
        out["cycle_median_s_not_at_timeout"] = median([w for w in walls if w < 0.9 * timeout])
        last = steady[-1]
        polls = hosts * len(steady)
        if "ticks" in first and "ticks" in last:
            cpu_s = (last["ticks"] - first["ticks"]) / CLK_TCK
            out["cpu_s_steady_ticks"] = cpu_s
            out["cpu_source"] = "ticks"
            if first.get("cpu_ns") is not None and last.get("cpu_ns") is not None:
                ns_s = (last["cpu_ns"] - first["cpu_ns"]) / 1e9
                out["cpu_s_steady_schedstat"] = ns_s
                # same threads alive throughout: schedstat agrees with ticks to within 2 ticks
                if abs(ns_s - cpu_s) <= 2.0 / CLK_TCK + 0.02 * cpu_s:
                    cpu_s = ns_s
                    out["cpu_source"] = "schedstat"
            out["cpu_s_steady"] = cpu_s
            out["cpu_ms_per_host_poll"] = cpu_s * 1000 / polls
            out["cpu_ms_per_cycle"] = cpu_s * 1000 / len(steady)
        out["log_lines_per_steady_cycle"] = (last["log_lines_before"] - first["log_lines_before"]) / len(steady)
        ends = [c["t"] for c in cyc]
        out["cycle_period_s"] = median([b - a for a, b in zip(ends, ends[1:])])
        f0, f1 = first.get("fake"), last.get("fake")
        if f0 and f1 and healthy:
            polls_h = healthy * len(steady)
            out["round_trips_per_poll"] = (f1["round_trips"] - f0["round_trips"]) / polls_h
            out["bytes_out_per_poll"] = (f1["bytes_out"] - f0["bytes_out"]) / polls_h  # tor -> daemon
            out["bytes_in_per_poll"] = (f1["bytes_in"] - f0["bytes_in"]) / polls_h    # daemon -> tor
            out["commands_per_poll"] = {k: (f1["commands"].get(k, 0) - f0["commands"].get(k, 0)) / polls_h
                                        for k in f1["commands"] if f1["commands"].get(k, 0) - f0["commands"].get(k, 0)}
            out["fake_cpu_ms_per_cycle"] = (f1["cpu_s"] - f0["cpu_s"]) * 1000 / len(steady)
            out["metrics_scrapes_per_host_cycle"] = (f1["metrics_scrapes"] - f0["metrics_scrapes"]) / polls_h
            out["connect_round_trips_per_host"] = f0["round_trips"] / healthy
            out["connect_bytes_out_per_host"] = f0["bytes_out"] / healthy
    if "ticks" in first:
        out["cpu_s_start_to_first_cycle"] = first["ticks"] / CLK_TCK
        out["cpu_share_to_first_cycle"] = out["cpu_s_start_to_first_cycle"] / out["first_cycle_after_start_s"]
    out["rss_mib_at_cycle_end"] = [round(c["rss_kib"] / 1024, 1) for c in cyc if "rss_kib" in c]
    if len(out["rss_mib_at_cycle_end"]) >= 2:
        out["rss_growth_mib_after_first_cycle"] = round(
            out["rss_mib_at_cycle_end"][-1] - out["rss_mib_at_cycle_end"][0], 1)
    out["peak_rss_mib"] = kib(status.get("VmHWM", "")) / 1024 if status else None
    out["rss_mib_end"] = kib(status.get("VmRSS", "")) / 1024 if status else None
    out["threads"] = int(status["Threads"]) if status.get("Threads") else None
    out["rss_anon_mib_end"] = kib(status.get("RssAnon", "")) / 1024 if status else None
    out["rss_file_mib_end"] = kib(status.get("RssFile", "")) / 1024 if status else None
    # writes: those up to the last counted cycle line (+0.3 s margin)
    sink = st["sink"]
    t_last = cyc[-1]["t"] + 0.3
    n_in = sum(1 for t in sink["write_times"] if t <= t_last)
    lines = sink["write_lines"][:n_in]
    out["write_requests"] = n_in
    out["write_requests_total"] = sink["writes"]
    out["writes_per_cycle"] = n_in / len(cyc)
    out["lines_per_write_median"] = median(lines)
    out["write_sample"] = sink["last_write_sample"]
    out["sink_other_requests"] = sink["other_requests"]
    acc_healthy = st["connections_accepted"] - st["connections_accepted_hung"]
    out["connections_accepted"] = st["connections_accepted"]
    out["connections_per_host"] = acc_healthy / healthy if healthy else None
    out["connections_to_hung_ports"] = st["connections_accepted_hung"]
    out["kinds"] = st["kinds"]
    out["commands"] = st["commands"]
    out["connections_open_after_stop"] = st_after.get("connections_open")
    out["getinfo_keys"] = sorted(st["getinfo_keys"])
    out["unknown_keys"] = st["unknown_keys"]
    out["auth_failed"] = st["auth_failed"]
    out["per_connection"] = {k: v for k, v in st["per_connection"].items() if k != "rows"}
    out["metrics_scrapes"] = st["metrics_scrapes"]
    out["metrics_connections"] = st["metrics_connections"]
    out["fake_cpu_s_total"] = st["cpu_s"]
    # fake side: GETINFO bursts of the healthy ports after the first cycle = poll spans
    spans = [b["end"] - b["start"] for b in st["bursts"] if b["start"] > first["t"] and b["end"] <= t_last]
    out["poll_span_median_s"] = median(spans)
    out["poll_span_max_s"] = max(spans) if spans else None
    return out


def pyspy_summary(path: Path, top: int = 15) -> dict:
    """From py-spy's raw (folded) output: the functions with the most samples, on their own
    (self) and with what they call (total), in % of all samples."""
    self_count: collections.Counter = collections.Counter()
    total_count: collections.Counter = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [re.sub(r"\(.*/(tor2influxdb2/|site-packages/|python3\.\d+/)", r"(\1", f) for f in frames]
        self_count[frames[-1]] += n
        for f in set(frames):
            total_count[f] += n
    pct = (lambda c: round(100.0 * c / samples, 1)) if samples else (lambda c: 0.0)
    return {"samples": samples,
            "self": [(f, pct(c)) for f, c in self_count.most_common(top)],
            "total": [(f, pct(c)) for f, c in total_count.most_common(top * 2)]}


# ------------------------------------------------------------------------ report

def fmt(v, spec=".3f", none="–"):
    if v is None:
        return none
    return format(v, spec)


class Group:
    """The repeats of one configuration: every figure as median and spread."""

    def __init__(self, cfg: Config, runs: list[dict]):
        self.cfg, self.runs = cfg, runs
        self.ok = [r for r in runs if not r.get("error")]

    def values(self, key: str) -> list:
        return [r[key] for r in self.ok if r.get(key) is not None]

    def med(self, key: str):
        return median(self.values(key))

    def lo(self, key: str):
        v = self.values(key)
        return min(v) if v else None

    def hi(self, key: str):
        v = self.values(key)
        return max(v) if v else None

    def show(self, key: str, spec: str = ".3f", scale: float = 1.0) -> str:
        v = self.values(key)
        if not v:
            return "–"
        m = format(median(v) * scale, spec)
        lo, hi = format(min(v) * scale, spec), format(max(v) * scale, spec)
        return m if len(v) == 1 or lo == hi else f"{m} ({lo}–{hi})"

    def loads(self) -> str:
        return "; ".join(f"{r.get('loadavg_before', '?').split()[0]}→{r.get('loadavg_after', '?').split()[0]}"
                         for r in self.runs)


def verdicts(groups: dict[tuple, Group]) -> list[tuple[str, str, bool | None]]:
    out = []

    def find(group, hosts=None, sets="core", **kw):
        for g in groups.values():
            c = g.cfg
            if c.group == group and (hosts is None or c.hosts == hosts) and c.sets == sets and not c.profile \
                    and all(getattr(c, k) == v for k, v in kw.items()):
                return g
        return None

    core = find("grid", 1000)
    if core and core.ok:
        out.append(("core, 1,000 hosts at 20 ms: under 0.3 s a cycle",
                    f"median {core.show('cycle_median_s')} s; slowest steady cycle {core.show('cycle_max_s')} s",
                    core.med("cycle_max_s") < TARGETS["cycle_s_1000"]))
        out.append(("core: <= 0.15 ms CPU per host-poll (1,000 hosts)", f"{core.show('cpu_ms_per_host_poll')} ms",
                    core.med("cpu_ms_per_host_poll") <= TARGETS["cpu_ms_per_poll"]))
        rss = core.med("peak_rss_mib")
        out.append(("core: <= 50 MB peak RSS at 1,000 hosts",
                    f"{core.show('peak_rss_mib', '.1f')} MiB = {rss / MIB_PER_MB:.1f} MB (median)",
                    rss / MIB_PER_MB <= TARGETS["rss_mb_core_1000"]))
    allg = find("grid", 1000, sets="all")
    if allg and allg.ok and core and core.ok:
        ratio = allg.med("cpu_ms_per_host_poll") / core.med("cpu_ms_per_host_poll")
        out.append(("all: at most 2x the CPU of core per host-poll (1,000 hosts)",
                    f"{allg.show('cpu_ms_per_host_poll')} ms vs {core.show('cpu_ms_per_host_poll')} ms: "
                    f"{ratio:.2f}x", ratio <= TARGETS["all_cpu_ratio"]))
        rss = allg.med("peak_rss_mib")
        out.append(("all: <= 60 MB peak RSS at 1,000 hosts", f"{allg.show('peak_rss_mib', '.1f')} MiB = "
                    f"{rss / MIB_PER_MB:.1f} MB (median)", rss / MIB_PER_MB <= TARGETS["rss_mb_all_1000"]))
    nomiss = find("no-miss")
    if nomiss:
        c = nomiss.cfg
        full = [r.get("cycles_all_ok") == r.get("cycles_seen") == c.cycles and r.get("overran_lines") == 0
                for r in nomiss.runs]
        out.append((f"{c.hosts:,} hosts every {c.run_every:g} s in one process: every cycle polls every host, "
                    "no tick skipped",
                    f"{sum(full)} of {len(full)} runs: "
                    + "; ".join(f"{r.get('cycles_all_ok', 0)}/{c.cycles} cycles all ok, "
                                f"{r.get('overran_lines', '?')} overran" for r in nomiss.runs),
                    all(full) and bool(full)))
    for name in ("startup", "no-miss"):
        g = find(name)
        if g:
            c = g.cfg
            limit = TARGETS["first_full_periods"] * c.run_every
            vals = [r.get("first_full_cycle_after_start_s") for r in g.runs]
            met = [v is not None and v <= limit for v in vals]
            out.append((f"first full cycle within two periods of start ({c.hosts:,} hosts, period {c.run_every:g} s)",
                        f"{sum(met)} of {len(met)} runs: " + ", ".join(fmt(v, ".1f", "never") + " s" for v in vals)
                        + f" (limit {limit:g} s); warnings before it: "
                        + ", ".join(str(r.get("warnings_before_first_full_cycle", "–")) for r in g.runs),
                        all(met) and bool(met)))
    return out


def cpu_fit(groups: list[Group]) -> tuple[float, float] | None:
    """Least-squares CPU ms per cycle = a + b * hosts over the healthy grid runs of one set."""
    pts = [(g.cfg.hosts, g.med("cpu_ms_per_cycle")) for g in groups if g.med("cpu_ms_per_cycle") is not None]
    if len({h for h, _ in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(h for h, _ in pts) / n
    my = sum(c for _, c in pts) / n
    b = sum((h - mx) * (c - my) for h, c in pts) / sum((h - mx) ** 2 for h, _ in pts)
    return my - b * mx, b


def markdown(meta: dict, groups: dict[tuple, Group]) -> str:
    L = []
    L.append(f"Run {meta['date']} on {meta['machine']}; daemon `{meta['daemon']}` run as "
             f"{'a script' if meta['as_script'] else '`python -m` from compiled bytecode'}, Python "
             f"{meta['python_version']}, {meta['libraries']}.")
    L.append(f"Fake fleet: {meta['latency_ms']:g} ms network latency per round trip, replies written like tor "
             f"(Nagle, 4048-byte pieces), {meta['relays']:g} of the tors relays, up to {meta['ports']} ports, auth "
             f"{meta['auth']}. Each configuration ran {meta['repeat']} time(s): figures are the median, with the "
             f"min–max spread in brackets. loadavg before {meta['loadavg_before']}, after {meta['loadavg_after']}.")
    grid = [g for g in groups.values() if g.cfg.group == "grid" and not g.cfg.profile]
    if grid:
        c0 = grid[0].cfg
        L.append("")
        L.append(f"Fleet sizes and metric sets: {c0.cycles} cycles per run (1 connect + {c0.cycles - 1} steady), "
                 f"RUN_EVERY_SECONDS={c0.run_every:g}, TOR_TIMEOUT={c0.tor_timeout:g}. Round trips and bytes "
                 "are counted by the fake tors per steady poll (out = tor to daemon).")
        L.append("")
        L.append("| hosts | sets | connect cycle (s) | cycle wall median (s) | cycle wall max (s) | CPU per host-poll (ms) "
                 "| CPU per cycle (ms) | peak RSS (MiB) | round trips per poll | bytes out / in per poll | round trips per host, "
                 "connect cycle | write requests per cycle | lines per write | connections per host "
                 "| hosts ok (min) | fake fleet CPU per cycle (ms) | loadavg (1 min) before→after |")
        L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for g in grid:
            c = g.cfg
            L.append(f"| {c.hosts:,} | {c.sets} | {g.show('connect_cycle_s')} | {g.show('cycle_median_s')} "
                     f"| {g.show('cycle_max_s')} | {g.show('cpu_ms_per_host_poll')} | {g.show('cpu_ms_per_cycle', '.0f')} "
                     f"| {g.show('peak_rss_mib', '.1f')} "
                     f"| {g.show('round_trips_per_poll', '.2f')} | {g.show('bytes_out_per_poll', '.0f')} / "
                     f"{g.show('bytes_in_per_poll', '.0f')} | {g.show('connect_round_trips_per_host', '.2f')} "
                     f"| {g.show('writes_per_cycle', '.2f')} | {g.show('lines_per_write_median', 'g')} "
                     f"| {g.show('connections_per_host', '.2f')} | {fmt(g.lo('hosts_ok_min'), 'g')}/{c.hosts} "
                     f"| {g.show('fake_cpu_ms_per_cycle', '.0f')} | {g.loads()} |")
        for sets in dict.fromkeys(g.cfg.sets for g in grid):
            fit = cpu_fit([g for g in grid if g.cfg.sets == sets])
            if fit:
                L.append("")
                L.append(f"Steady-state CPU per cycle, {sets}, fitted over the sizes (least squares): "
                         f"{fit[0]:.1f} ms fixed + {fit[1]:.3f} ms per host.")
        if any(g.cfg.metricsport for g in grid):
            L.append("")
            L.append("MetricsPort: " + "; ".join(
                f"{g.cfg.hosts:,} hosts {g.cfg.sets}: {g.show('metrics_scrapes_per_host_cycle', '.2f')} scrapes per "
                f"host-cycle" for g in grid if g.cfg.metricsport))
    hung = [g for g in groups.values() if g.cfg.group == "hung"]
    if hung:
        base = {g.cfg.hosts: g for g in grid if g.cfg.sets == "core"}
        L.append("")
        L.append("Hung host: one of the N hosts is on a port that accepts and never answers (`never`: not even "
                 "PROTOCOLINFO; `after-auth`: authenticates, then GETINFO hangs). \"Healthy hosts' poll span\" is "
                 "measured on the fake ports: first GETINFO received to last reply sent, per cycle, healthy hosts "
                 "only.")
        L.append("")
        L.append("| hosts (1 hung) | hang mode | cycle wall median (s) | cycle wall max (s) | cycles that waited "
                 "TOR_TIMEOUT | same, no hung host: cycle median (s) | healthy hosts' poll span median / max (s) "
                 "| same, no hung host (s) | hosts ok (min) | write requests per cycle | connections to hung port "
                 "| connections per healthy host |")
        L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for g in hung:
            c, b = g.cfg, base.get(g.cfg.hosts)
            L.append(f"| {c.hosts:,} | {c.hang_mode} | {g.show('cycle_median_s')} | {g.show('cycle_max_s')} "
                     f"| {g.show('cycles_at_timeout', 'g')} of {c.cycles - 1} "
                     f"| {b.show('cycle_median_s') if b else '–'} "
                     f"| {g.show('poll_span_median_s')} / {g.show('poll_span_max_s')} "
                     f"| {(b.show('poll_span_median_s') + ' / ' + b.show('poll_span_max_s')) if b else '–'} "
                     f"| {fmt(g.lo('hosts_ok_min'), 'g')}/{c.hosts} | {g.show('writes_per_cycle', '.2f')} "
                     f"| {g.show('connections_to_hung_ports', 'g')} | {g.show('connections_per_host', '.2f')} |")
    qa = [g for g in groups.values() if g.cfg.group == "quickack"]
    if qa:
        c0 = qa[0].cfg
        L.append("")
        L.append(f"TCP_QUICKACK: core, circuit-status of {c0.circuits} circuits (replies over 4 KB, which tor writes in "
                 "4048-byte pieces with Nagle on); `off` is `T2I_NO_QUICKACK=1`.")
        L.append("")
        L.append("| hosts | QUICKACK | reply bytes per poll | cycle wall median (s) | cycle wall max (s) "
                 "| healthy hosts' poll span median (s) | CPU per host-poll (ms) | loadavg before→after |")
        L.append("|---:|---|---:|---:|---:|---:|---:|---|")
        for g in qa:
            L.append(f"| {g.cfg.hosts:,} | {'on' if g.cfg.quickack else 'off'} | {g.show('bytes_out_per_poll', '.0f')} "
                     f"| {g.show('cycle_median_s')} | {g.show('cycle_max_s')} | {g.show('poll_span_median_s')} "
                     f"| {g.show('cpu_ms_per_host_poll')} | {g.loads()} |")
        for n in dict.fromkeys(g.cfg.hosts for g in qa):
            on = next((g for g in qa if g.cfg.hosts == n and g.cfg.quickack), None)
            off = next((g for g in qa if g.cfg.hosts == n and not g.cfg.quickack), None)
            if on and off and on.med("cycle_median_s") is not None and off.med("cycle_median_s") is not None:
                diff = (off.med("cycle_median_s") - on.med("cycle_median_s")) * 1000
                diffmax = (off.med("cycle_max_s") - on.med("cycle_max_s")) * 1000
                L.append("")
                L.append(f"{n:,} hosts: without QUICKACK the median cycle is {diff:+.1f} ms and the slowest cycle "
                         f"{diffmax:+.1f} ms longer (medians over the runs).")
    special = [g for g in groups.values() if g.cfg.group in ("startup", "no-miss", "deployment") and not g.cfg.profile]
    if special:
        L.append("")
        L.append("Start-up and long runs (TOR_TIMEOUT as given; `default` = the daemon's own).")
        L.append("")
        L.append("| run | hosts | period (s) | cycles | first cycle after start (s) | first full cycle after start (s) "
                 "| warnings before it | daemon CPU until the first cycle (s), share of a core "
                 "| cycles with every host ok | 'cycle overran' lines | connect cycle (s) "
                 "| cycle wall median / max (s) | CPU per host-poll (ms) | RSS after start (MiB) | peak RSS (MiB) "
                 "| fake fleet CPU per cycle (ms) | loadavg before→after |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for g in special:
            c = g.cfg
            L.append(f"| {c.group} (TOR_TIMEOUT {fmt(c.tor_timeout, 'g', 'default')}) | {c.hosts:,} | {c.run_every:g} "
                     f"| {c.cycles} | {g.show('first_cycle_after_start_s', '.2f')} "
                     f"| {g.show('first_full_cycle_after_start_s', '.2f')} "
                     f"| {g.show('warnings_before_first_full_cycle', 'g')} "
                     f"| {g.show('cpu_s_start_to_first_cycle', '.2f')}, {g.show('cpu_share_to_first_cycle', '.0%')} | "
                     + ", ".join(f"{r.get('cycles_all_ok', 0)}/{c.cycles}" for r in g.runs)
                     + f" | {g.show('overran_lines', 'g')} | {g.show('connect_cycle_s')} "
                     f"| {g.show('cycle_median_s')} / {g.show('cycle_max_s')} | {g.show('cpu_ms_per_host_poll')} "
                     f"| {g.show('rss_mib_after_start', '.1f')} | {g.show('peak_rss_mib', '.1f')} "
                     f"| {g.show('fake_cpu_ms_per_cycle', '.0f')} | {g.loads()} |")
    profiles = [g for g in groups.values() if g.cfg.profile]
    for g in profiles:
        for r in g.ok:
            prof = r.get("profile")
            if not prof:
                continue
            L.append("")
            if g.cfg.group == "startup":
                what = (f"of the first {int(g.cfg.run_every)} s after start (connecting and authenticating "
                        f"{g.cfg.hosts:,} tors; first cycle {fmt(r.get('connect_cycle_s'))} s)")
            else:
                what = (f"of the steady state (cycle median {fmt(r.get('cycle_median_s'))} s, CPU "
                        f"{fmt(r.get('cpu_ms_per_host_poll'))} ms per host-poll while sampled)")
            L.append(f"py-spy, {g.cfg.label}: {prof['samples']} samples {what}. Top functions by own samples, and "
                     "by samples including callees:"
                     + (" (too few samples to mean much: py-spy leaves out idle threads)" if prof["samples"] < 100
                        else ""))
            L.append("")
            L.append("| own % | function | | incl. % | function |")
            L.append("|---:|---|---|---:|---|")
            totals = [t for t in prof["total"] if not PLUMBING_RE.match(t[0])]
            for i in range(max(len(prof["self"]), 15)):
                s = prof["self"][i] if i < len(prof["self"]) else ("", "")
                t = totals[i] if i < len(totals) else ("", "")
                if not s[0] and not t[0]:
                    break
                L.append(f"| {s[1]} | `{s[0]}`{' (waiting)' if WAITING_RE.match(s[0]) else ''} | | {t[1]} "
                         f"| `{t[0]}` |")
            L.append("")
            L.append("(waiting): py-spy counts a thread as active from its wake-up until it sleeps again, so these "
                     "include the return from epoll_wait / a lock with its events, not idle time.")
    v = verdicts(groups)
    if v:
        L.append("")
        L.append("| target | measured | met |")
        L.append("|---|---|---|")
        for name, measured, met in v:
            L.append(f"| {name} | {measured} | {'yes' if met else '**no**'} |")
    for g in groups.values():
        for r in g.runs:
            if r.get("error"):
                L.append("")
                L.append(f"**{r['label']}: {r['error'].splitlines()[0]}** (log: {r.get('daemon_log')})")
    return "\n".join(L) + "\n"


def machine_desc() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores{' (' + model + ')' if model else ''}{mem}, Linux {platform.release()}"


def daemon_versions(python: str) -> dict:
    code = ("import sys,json,importlib\nv={}\n"
            "for m in ('stem','urllib3','influxdb_client'):\n"
            "    try: v[m]=importlib.import_module(m).__version__\n"
            "    except Exception: pass\n"
            "print(json.dumps({'python_version':sys.version.split()[0],'libraries':v}))")
    try:
        out = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30).stdout)
    except Exception:
        return {"python_version": "?", "libraries": "?"}
    out["libraries"] = ", ".join(f"{k} {v}" for k, v in out["libraries"].items())
    return out


def build_configs(args) -> list[Config]:
    base = dict(latency_ms=args.latency_ms, relays=args.relays, metricsport=args.metricsport)
    grid = dict(base, run_every=args.run_every, tor_timeout=args.tor_timeout, cycles=args.cycles)
    out: list[Config] = []
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes else []
    sets = [s.strip() for s in args.metric_sets.split(";" if ";" in args.metric_sets else ",") if s.strip()]
    for n in sizes:
        for s in sets:
            out.append(Config("grid", n, s, **grid))
    if args.hung_size:
        if args.hung_size not in sizes or "core" not in sets:
            out.append(Config("grid", args.hung_size, "core", **grid))
        for mode in [m for m in args.hang_modes.split(",") if m]:
            out.append(Config("hung", args.hung_size, "core", hung=1, hang_mode=mode, **grid))
    if args.quickack:
        for n in [int(x) for x in args.quickack_sizes.split(",") if x.strip()]:
            for on in (True, False):
                out.append(Config("quickack", n, "core", quickack=on, circuits=args.quickack_circuits, **grid))
    if args.startup_size:
        out.append(Config("startup", args.startup_size, "core", run_every=10, tor_timeout=5,
                          cycles=args.startup_cycles, **base))
    if args.no_miss_size:
        out.append(Config("no-miss", args.no_miss_size, "core", run_every=10, tor_timeout=5,
                          cycles=args.no_miss_cycles, **base))
    if args.deployment:
        out.append(Config("deployment", 1, "core", run_every=10, tor_timeout=None, cycles=3, **base))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sizes", default="10,200,1000", help="host counts of the grid (default 10,200,1000; '' none)")
    p.add_argument("--metric-sets", default="core",
                   help="METRIC_SETS values to compare, comma-separated (default core; e.g. core,all; "
                        "separate with ';' to give combinations like 'core,status;all')")
    p.add_argument("--repeat", type=int, default=None, help="runs per configuration (default 1; 3 with --full)")
    p.add_argument("--latency-ms", type=float, default=20, help="fake network latency per round trip (default 20)")
    p.add_argument("--relays", type=float, default=0.5, help="share of the fake tors that are relays (default 0.5)")
    p.add_argument("--cycles", type=int, default=8, help="grid: cycles per run, incl. the first (default 8)")
    p.add_argument("--ports", type=int, default=20, help="fake control ports shared by the hosts (default 20)")
    p.add_argument("--run-every", type=float, default=2, help="grid: RUN_EVERY_SECONDS (default 2)")
    p.add_argument("--tor-timeout", type=float, default=1, help="grid: TOR_TIMEOUT (default 1)")
    p.add_argument("--auth", choices=("password", "null"), default="password")
    p.add_argument("--hosts-file", action="store_true",
                   help="pass hosts as TOR_HOSTS_FILE (done anyway when TOR_HOSTS would exceed 120,000 characters)")
    p.add_argument("--hung-size", type=int, default=200,
                   help="also run N hosts of which one is hung (default 200; 0: off)")
    p.add_argument("--hang-modes", default="never,after-auth", help="hung modes to run (default both)")
    p.add_argument("--quickack", action="store_true",
                   help="compare TCP_QUICKACK on and off (T2I_NO_QUICKACK=1) with replies over 4 KB")
    p.add_argument("--quickack-sizes", default="100,1000", help="hosts of the QUICKACK runs (default 100,1000)")
    p.add_argument("--quickack-circuits", type=int, default=60,
                   help="circuit-status lines in the QUICKACK runs (default 60: ~17 KB a reply)")
    p.add_argument("--startup-size", type=int, default=0,
                   help="a start-up run of N hosts, RUN_EVERY_SECONDS=10, TOR_TIMEOUT=5 (0: off; --full: 5000)")
    p.add_argument("--startup-cycles", type=int, default=3)
    p.add_argument("--no-miss-size", type=int, default=0,
                   help="a run of N hosts every 10 s, TOR_TIMEOUT=5 that must poll every host every cycle "
                        "(0: off; --full: 10000)")
    p.add_argument("--no-miss-cycles", type=int, default=7)
    p.add_argument("--deployment", action="store_true",
                   help="the default deployment: 1 host, RUN_EVERY_SECONDS=10, the daemon's TOR_TIMEOUT")
    p.add_argument("--full", action="store_true",
                   help="everything: --metric-sets core,all --quickack --startup-size 5000 --no-miss-size 10000 "
                        "--deployment, --repeat 3")
    p.add_argument("--metricsport", action="store_true",
                   help="fake MetricsPorts too (tests/data/metricsport/relay-exit-lead-capture.prom), given to the daemon as "
                        "TOR_METRICS_PORTS=NAME=127.0.0.1:PORT,...")
    p.add_argument("--metrics-body", default=str(METRICS_BODY), help="Prometheus text the fake MetricsPorts serve")
    p.add_argument("--metrics-latency-ms", type=float, default=None, help="MetricsPort latency (default: --latency-ms)")
    p.add_argument("--daemon", default=str(DEFAULT_DAEMON),
                   help="entry point to run (default tor_to_influxdb2.py; the tor2influxdb2 package beside it "
                        "is copied along); e.g. the previous daemon: git show a293437:tor_to_influxdb2.py")
    p.add_argument("--as-script", action="store_true",
                   help="run `python FILE` (compiled at each start) instead of `python -m MODULE` as the image does")
    p.add_argument("--python", default=DEFAULT_PYTHON, help=f"interpreter for the daemon ({DEFAULT_PYTHON})")
    p.add_argument("--fake-python", default=sys.executable, help="interpreter for fake_tor.py")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the daemon (repeatable)")
    p.add_argument("--cprofile", metavar="PREFIX", help="run the daemon under cProfile, writing PREFIX.<size>.<sets>.pstats")
    p.add_argument("--py-spy", metavar="PREFIX",
                   help="one more run per --py-spy-sizes x --metric-sets, recorded by `py-spy record` in the steady "
                        "state (raw folded stacks in PREFIX.<hosts>.<sets>.txt; pip install py-spy); the tables get "
                        "its top functions")
    p.add_argument("--py-spy-sizes", default="1000", help="sizes to profile (default 1000)")
    p.add_argument("--py-spy-gil", action="store_true", help="py-spy --gil: only samples holding the GIL")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep each run's temp dir (daemon.log) even when it succeeded")
    p.add_argument("--json", action="store_true", help="print JSON instead of the Markdown tables")
    p.add_argument("--markdown-out", metavar="FILE", help="also write the Markdown tables to FILE")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--from-json", metavar="FILE", help="print the tables of an earlier --json-out FILE; run nothing")
    args = p.parse_args(argv)
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        groups = {}
        for c in doc["configs"]:
            c = dict(c)
            runs = c.pop("runs")
            for r in runs:  # a figure added after the file was written
                if r.get("cpu_s_start_to_first_cycle") is not None and r.get("first_cycle_after_start_s"):
                    r.setdefault("cpu_share_to_first_cycle",
                                 r["cpu_s_start_to_first_cycle"] / r["first_cycle_after_start_s"])
            cfg = Config(**c)
            groups[cfg.key()] = Group(cfg, runs)
        md = markdown(doc["meta"], groups)
        if args.markdown_out:
            Path(args.markdown_out).write_text(md)
        print(md, end="")
        return 0
    if args.full:
        if args.metric_sets == "core":
            args.metric_sets = "core,all"
        args.quickack = True
        args.startup_size = args.startup_size or 5000
        args.no_miss_size = args.no_miss_size or 10000
        args.deployment = True
        if args.repeat is None:
            args.repeat = 3
    args.repeat = args.repeat or 1
    daemon = Path(args.daemon).resolve()
    if not daemon.is_file():
        print(f"daemon not found: {args.daemon}", file=sys.stderr)
        return 2
    if args.metricsport and not Path(args.metrics_body).is_file():
        print(f"MetricsPort body not found: {args.metrics_body}", file=sys.stderr)
        return 2
    configs = build_configs(args)
    if args.py_spy and args.startup_size:
        configs.append(Config("startup", args.startup_size, "core", run_every=10, tor_timeout=5, cycles=2,
                              latency_ms=args.latency_ms, relays=args.relays, metricsport=args.metricsport,
                              profile=True))
    if args.py_spy:
        for n in [int(s) for s in args.py_spy_sizes.split(",") if s.strip()]:
            for s in [x for x in args.metric_sets.split(";" if ";" in args.metric_sets else ",") if x.strip()]:
                configs.append(Config("grid", n, s.strip(), run_every=args.run_every, tor_timeout=args.tor_timeout,
                                      cycles=args.cycles, latency_ms=args.latency_ms, relays=args.relays,
                                      metricsport=args.metricsport, profile=True))
    if not configs:
        print("nothing to run", file=sys.stderr)
        return 2

    vers = daemon_versions(args.python)
    stage = Path(tempfile.mkdtemp(prefix="tor2influx-bench-app-"))
    try:
        app, module = stage_daemon(daemon, args.python, stage)
        meta = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                "machine": machine_desc(), **vers, "latency_ms": args.latency_ms, "relays": args.relays,
                "ports": args.ports, "auth": args.auth, "repeat": args.repeat, "loadavg_before": loadavg(),
                "daemon": os.path.relpath(daemon, ROOT) if daemon.is_relative_to(ROOT) else str(daemon),
                "as_script": args.as_script}
        runs: dict[tuple, list[dict]] = {}
        cfg_by_key: dict[tuple, Config] = {}
        total = sum(1 if c.profile else args.repeat for c in configs)
        done = 0
        # repeats interleaved (config A, B, ..., then A, B, ... again): a load spike on the shared
        # machine then hits different configurations instead of all repeats of one
        order = [(rep, c) for rep in range(args.repeat) for c in configs if not (c.profile and rep)]
        for rep, cfg in order:
            done += 1
            print(f"[bench {done}/{total}] {cfg.label} (run {rep + 1}) ... loadavg {loadavg()}", file=sys.stderr,
                  flush=True)
            r = run_one(args, cfg, app, module)
            r["repeat_index"] = rep
            runs.setdefault(cfg.key(), []).append(r)
            cfg_by_key[cfg.key()] = cfg
            print(f"[bench] connect {fmt(r.get('connect_cycle_s'))} s, cycle median {fmt(r.get('cycle_median_s'))} s "
                  f"max {fmt(r.get('cycle_max_s'))} s, CPU {fmt(r.get('cpu_ms_per_host_poll'))} ms/poll, "
                  f"RSS {fmt(r.get('peak_rss_mib'), '.1f')} MiB, RT/poll {fmt(r.get('round_trips_per_poll'), '.2f')}, "
                  f"first full cycle {fmt(r.get('first_full_cycle_after_start_s'), '.2f')} s, "
                  f"warnings {r.get('warnings_total')}"
                  + (f"  ERROR: {r['error'].splitlines()[0]}" if r.get("error") else ""),
                  file=sys.stderr, flush=True)
        meta["loadavg_after"] = loadavg()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    groups = {k: Group(cfg_by_key[k], v) for k, v in runs.items()}
    doc = {"meta": meta, "configs": [dataclasses.asdict(g.cfg) | {"runs": g.runs} for g in groups.values()]}
    md = markdown(meta, groups)
    if args.markdown_out:
        Path(args.markdown_out).write_text(md)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1) if args.json else md, end="" if not args.json else "\n")
    return 1 if any(r.get("error") for rs in runs.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
