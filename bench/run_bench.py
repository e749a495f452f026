#!/usr/bin/env python3
"""Benchmark of tor_to_influxdb2.py against simulated Tor control ports.

For each fleet size it starts bench/fake_tor.py (control ports with a reply
latency + an InfluxDB 2 write sink, one process), runs the daemon as a real
subprocess polling N host entries spread over those ports, waits for
--cycles cycle lines in its log, then stops both (by pid) and reports:

  connect cycle   wall time of the first cycle (connect + authenticate + poll)
  cycle wall      median and max of the daemon's own "cycle N done in X s"
                  over the steady-state cycles (all but the first)
  CPU/host-poll   daemon's utime+stime (/proc/PID/stat, all threads) from the
                  end of cycle 1 to the end of the last cycle, divided by
                  hosts x steady cycles
  peak RSS        VmHWM from /proc/PID/status after the last cycle
  writes/cycle    POST /api/v2/write requests the sink got up to the last
                  cycle, divided by cycles; lines per write alongside
  conns/host      TCP connections the fake ports accepted / hosts (1.0 means
                  connections are kept open across cycles)

--hung-size N (default 200; 0 turns it off) adds runs with N hosts of which one
sits on a port that accepts and never answers (--hang-modes never,after-auth)
and reports how the other hosts fare, next to a run of N healthy hosts.

Prints a Markdown table (or JSON with --json). Everything binds and connects to
127.0.0.1 only; each run is bounded in time and stops by itself.

  .venv/bin/python bench/run_bench.py --sizes 10,200,1000 --latency-ms 20 --cycles 8
"""

from __future__ import annotations

import argparse
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
DEFAULT_DAEMON = ROOT / "tor_to_influxdb2.py"
DEFAULT_PYTHON = sys.executable
CYCLE_RE = re.compile(r"cycle (\d+) done in ([\d.]+) s: (\d+)/(\d+) hosts ok")
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "cycle_s_1000": 1.0,        # 1,000 hosts in under 1 s a cycle
    "cpu_ms_per_poll": 1.0,     # <= 1 ms CPU per host-poll in steady state
    "rss_mib_1000": 60.0,       # peak RSS <= 60 MB at 1,000 hosts
    "writes_per_cycle": 1.0,    # 1 write request per cycle
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
    return statistics.median(xs) if xs else None


class FakeTor:
    """bench/fake_tor.py as a subprocess."""

    def __init__(self, python: str, ports: int, latency_ms: float, hung_ports: int,
                 hang_mode: str, auth: str, max_seconds: float):
        cmd = [python, str(FAKE_TOR), "--json", "--ports", str(ports),
               "--latency-ms", str(latency_ms), "--hung-ports", str(hung_ports),
               "--hang-mode", hang_mode, "--auth", auth, "--max-seconds", str(int(max_seconds))]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake_tor did not start: {self.proc.stderr.read()}")
        self.info = json.loads(line)
        self.sink_url = f"http://127.0.0.1:{self.info['sink_port']}"

    def stats(self) -> dict:
        return http_json(self.sink_url + "/bench/stats")

    def stop(self) -> None:
        stop_pid(self.proc)


class DaemonRun:
    """The daemon as a subprocess; a thread reads its log and samples /proc at each cycle line."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path):
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self.pid = self.proc.pid
        self.cycles: list[dict] = []
        self.lines = 0
        self.tail: list[str] = []
        self.cond = threading.Condition()
        self.log = open(log_path, "w")
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
            self.log.write(line)
            with self.cond:
                self.lines += 1
                self.tail = (self.tail + [line.rstrip("\n")])[-40:]
                if m:
                    self.cycles.append({
                        "n": int(m.group(1)), "wall_s": float(m.group(2)),
                        "ok": int(m.group(3)), "total": int(m.group(4)),
                        "t": now, "log_lines_before": self.lines, **(sample or {})})
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

def run_one(args, hosts: int, hung: int = 0, hang_mode: str = "never", label: str = "") -> dict:
    """Run the daemon against `hosts` host entries (`hung` of them on never-answering ports)."""
    healthy = hosts - hung
    n_ports = max(1, min(args.ports, healthy))
    budget = 30 + args.cycles * args.run_every * 3
    fake = FakeTor(args.fake_python, n_ports, args.latency_ms, hung, hang_mode, args.auth,
                   max_seconds=budget + 60)
    tmp = Path(tempfile.mkdtemp(prefix="tor2influx-bench-"))
    result: dict = {"label": label or f"{hosts} hosts", "hosts": hosts, "hung_hosts": hung,
                    "hang_mode": hang_mode if hung else None, "ports": n_ports,
                    "loadavg_before": loadavg(), "workdir": str(tmp)}
    completed = False
    d: DaemonRun | None = None
    try:
        pw = fake.info["password"]
        entries = []
        for i in range(healthy):
            port = fake.info["ports"][i % n_ports]
            entries.append(f"127.0.0.1:{port}:{pw}:bench{i:04d}" if pw else f"127.0.0.1:{port}:bench{i:04d}")
        for j, port in enumerate(fake.info["hung_ports"]):
            entries.append(f"127.0.0.1:{port}:{pw}:hung{j}" if pw else f"127.0.0.1:{port}:hung{j}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "INFLUX_URL": fake.sink_url, "INFLUX_ORGANIZATION": "bench",
               "INFLUX_BUCKET": "bench", "INFLUX_TOKEN": "benchtoken",
               "RUN_EVERY_SECONDS": f"{args.run_every:g}", "TOR_TIMEOUT": f"{args.tor_timeout:g}",
               "VERBOSE": "true", "HEALTHCHECK_FILE": str(tmp / "healthcheck")}
        if args.hosts_file:
            (tmp / "hosts.txt").write_text("\n".join(entries) + "\n")
            env["TOR_HOSTS_FILE"] = str(tmp / "hosts.txt")
        else:
            env["TOR_HOSTS"] = ",".join(entries)
        for kv in args.env:
            k, _, v = kv.partition("=")
            env[k] = v
        cmd = [args.python]
        if args.cprofile:
            cmd += ["-m", "cProfile", "-o", f"{args.cprofile}.{hosts}{'-hung' if hung else ''}.pstats"]
        if args.as_script:
            cmd.append(str(args.daemon))
        else:  # as the image runs it: `python -m tor_to_influxdb2` from its compiled bytecode
            subprocess.run([args.python, "-m", "compileall", "-q", str(args.daemon)], check=True)
            env["PYTHONPATH"] = str(Path(args.daemon).resolve().parent)
            cmd += ["-m", Path(args.daemon).stem]
        d = DaemonRun(cmd, env, tmp / "daemon.log")
        spy = None
        ok = d.wait_cycles(1, timeout=30 + args.tor_timeout * 3)
        if ok and args.py_spy:
            out = f"{args.py_spy}.{hosts}{'-hung' if hung else ''}"
            dur = max(2, int(args.cycles * args.run_every) - 2)
            spy_bin = shutil.which("py-spy") or str(Path(args.python).parent / "py-spy")
            spy = subprocess.Popen([spy_bin, "record", "--pid", str(d.pid), "--duration", str(dur),
                                    "--rate", "250", "--format", args.py_spy_format, "-o", out,
                                    "--nonblocking", "--gil"] + (["--threads"] if args.py_spy_threads else []),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            result["py_spy_output"] = out
        ok = ok and d.wait_cycles(args.cycles, timeout=args.cycles * args.run_every * 2.5 + 10)
        status = {}
        try:
            status = proc_status(d.pid)
        except OSError:
            pass
        time.sleep(0.3)  # let a write that follows the last cycle line arrive
        t_end = time.monotonic()
        stats_before_stop = fake.stats()
        rc, stop_s = d.stop()
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            result["py_spy_stderr"] = spy.stderr.read()[-500:]
        time.sleep(0.2)
        stats = fake.stats()
        result.update(loadavg_after=loadavg(), daemon_rc=rc, daemon_stop_s=round(stop_s, 3),
                      daemon_log=str(tmp / "daemon.log"), log_lines=d.lines)
        result["fake_tor_cpu_s"] = stats["cpu_s"]
        if not ok:
            result["error"] = (f"got {len(d.cycles)}/{args.cycles} cycle lines "
                               f"(daemon rc={d.proc.returncode})\n" + "\n".join(d.tail))
        result.update(summarize(args, d, status, stats_before_stop, stats, hosts, hung, t_end))
        completed = True
        return result
    finally:
        if d is not None and d.proc.poll() is None:
            d.stop()
        fake.stop()
        if completed and not args.keep_logs and not result.get("error"):
            shutil.rmtree(tmp, ignore_errors=True)
            result["workdir"] = result["daemon_log"] = None


def summarize(args, d: DaemonRun, status: dict, st: dict, st_after: dict, hosts: int, hung: int,
              t_end: float) -> dict:
    cyc = d.cycles[:args.cycles]
    out: dict = {"cycles_seen": len(cyc)}
    if not cyc:
        return out
    first, steady = cyc[0], cyc[1:]
    out["connect_cycle_s"] = first["wall_s"]
    out["cycle_wall_s"] = [c["wall_s"] for c in cyc]
    out["hosts_ok"] = [c["ok"] for c in cyc]
    out["hosts_total_reported"] = cyc[0]["total"]
    if steady:
        walls = [c["wall_s"] for c in steady]
        out["cycle_median_s"] = median(walls)
        out["cycle_max_s"] = max(walls)
        out["hosts_ok_min"] = min(c["ok"] for c in steady)
        # cycles that waited (nearly) a whole TOR_TIMEOUT, e.g. for a hung host
        out["cycles_at_timeout"] = sum(1 for w in walls if w >= 0.9 * args.tor_timeout)
        healthy_walls = [w for w in walls if w < 0.9 * args.tor_timeout]
        out["cycle_median_s_not_at_timeout"] = median(healthy_walls)
        last = steady[-1]
        if "ticks" in first and "ticks" in last:
            cpu_s = (last["ticks"] - first["ticks"]) / CLK_TCK
            polls = hosts * len(steady)
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
            out["cpu_resolution_ms_per_poll"] = (1000 / CLK_TCK / polls if out["cpu_source"] == "ticks"
                                                 else 1e-6 * 1000 / polls)
        out["log_lines_per_steady_cycle"] = (last["log_lines_before"] - first["log_lines_before"]) / len(steady)
        # interval between cycle ends: the schedule
        ends = [c["t"] for c in cyc]
        out["cycle_period_s"] = median([b - a for a, b in zip(ends, ends[1:])])
    if "ticks" in first:
        out["cpu_s_start_to_first_cycle"] = first["ticks"] / CLK_TCK
    out["first_cycle_end_after_start_s"] = first["t"] - d.t_start
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
    out["lines_per_write_min"] = min(lines) if lines else None
    out["lines_per_write_max"] = max(lines) if lines else None
    out["write_sample"] = sink["last_write_sample"]
    out["write_encodings"] = sink["write_encodings"]
    out["sink_other_requests"] = sink["other_requests"]
    out["sink_http_connections"] = sink["http_connections"]
    healthy = hosts - hung
    acc_healthy = st["connections_accepted"] - st["connections_accepted_hung"]
    out["connections_accepted"] = st["connections_accepted"]
    out["connections_per_host"] = acc_healthy / healthy if healthy else None
    out["connections_to_hung_ports"] = st["connections_accepted_hung"]
    out["commands"] = st["commands"]
    out["commands_after_stop"] = st_after["commands"]
    out["connections_open_after_stop"] = st_after["connections_open"]
    out["getinfo_keys"] = sorted(st["getinfo_keys"])
    out["unknown_keys"] = st["unknown_keys"]
    out["auth_failed"] = st["auth_failed"]
    n_getinfo = st["commands"].get("GETINFO", 0)
    out["getinfo_per_host_cycle"] = n_getinfo / (healthy * len(cyc)) if healthy else None
    # fake side: GETINFO bursts of the healthy ports after the first cycle = poll spans
    spans = [b["end"] - b["start"] for b in st["bursts"]
             if b["start"] > first["t"] and b["end"] <= t_last]
    out["poll_span_median_s"] = median(spans)
    out["poll_span_max_s"] = max(spans) if spans else None
    return out


# ------------------------------------------------------------------------ report

def fmt(v, spec=".3f", none="–"):
    if v is None:
        return none
    return format(v, spec)


def verdicts(results: list[dict]) -> list[tuple[str, str, bool | None]]:
    by = {r["hosts"]: r for r in results if not r.get("hung_hosts") and not r.get("error")}
    out = []
    r = by.get(1000)
    if r and r.get("cycle_max_s") is not None:
        out.append(("1,000 hosts in under 1 s a cycle",
                    f"median {r['cycle_median_s']:.3f} s, max {r['cycle_max_s']:.3f} s",
                    r["cycle_max_s"] < TARGETS["cycle_s_1000"]))
    cpus = [(h, x["cpu_ms_per_host_poll"]) for h, x in sorted(by.items()) if x.get("cpu_ms_per_host_poll") is not None]
    if cpus:
        out.append(("<= 1 ms CPU per host-poll (steady state)",
                    ", ".join(f"{h}: {c:.3f} ms" for h, c in cpus),
                    all(c <= TARGETS["cpu_ms_per_poll"] for _, c in cpus)))
    if r and r.get("peak_rss_mib") is not None:
        out.append(("peak RSS <= 60 MB at 1,000 hosts",
                    f"{r['peak_rss_mib']:.1f} MiB ({r['peak_rss_mib'] * 1.048576:.1f} MB)",
                    r["peak_rss_mib"] <= TARGETS["rss_mib_1000"]))
    wpc = [(h, x["writes_per_cycle"]) for h, x in sorted(by.items()) if x.get("writes_per_cycle") is not None]
    if wpc:
        out.append(("1 write request per cycle", ", ".join(f"{h}: {w:.2f}" for h, w in wpc),
                    all(abs(w - 1) < 1e-9 for _, w in wpc)))
    cph = [(h, x["connections_per_host"]) for h, x in sorted(by.items()) if x.get("connections_per_host") is not None]
    if cph:
        out.append(("connections kept open (1 per host)", ", ".join(f"{h}: {c:.2f}" for h, c in cph),
                    all(abs(c - 1) < 1e-9 for _, c in cph)))
    return out


def cpu_fit(results: list[dict]) -> tuple[float, float] | None:
    """Least-squares CPU ms per cycle = a + b * hosts over the healthy runs."""
    pts = [(r["hosts"], r["cpu_ms_per_cycle"]) for r in results
           if not r.get("hung_hosts") and r.get("cpu_ms_per_cycle") is not None]
    if len({h for h, _ in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(h for h, _ in pts) / n
    my = sum(c for _, c in pts) / n
    b = sum((h - mx) * (c - my) for h, c in pts) / sum((h - mx) ** 2 for h, _ in pts)
    return my - b * mx, b


def markdown(meta: dict, results: list[dict]) -> str:
    L = []
    L.append(f"Run {meta['date']} on {meta['machine']}; daemon Python {meta['python_version']}, "
             f"stem {meta['stem']}, influxdb-client {meta['influxdb_client']}.")
    L.append(f"Latency {meta['latency_ms']:g} ms per reply, {meta['cycles']} cycles per size "
             f"(1 connect + {meta['cycles'] - 1} steady), RUN_EVERY_SECONDS={meta['run_every']:g}, "
             f"TOR_TIMEOUT={meta['tor_timeout']:g}, up to {meta['ports']} fake ports, "
             f"auth {meta['auth']}. loadavg before {meta['loadavg_before']}, after {meta['loadavg_after']}.")
    L.append("")
    L.append("| hosts | connect cycle (s) | cycle wall median / max (s) | CPU per host-poll (ms) "
             "| peak RSS (MiB) | write requests per cycle | lines per write | connections per host "
             "| hosts ok (min) | loadavg during |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        if r.get("hung_hosts"):
            continue
        L.append("| {h} | {c} | {m} / {x} | {cpu} | {rss} | {w} | {lpw} | {cph} | {ok} | {la} |".format(
            h=f"{r['hosts']:,}", c=fmt(r.get("connect_cycle_s")), m=fmt(r.get("cycle_median_s")),
            x=fmt(r.get("cycle_max_s")), cpu=fmt(r.get("cpu_ms_per_host_poll")),
            rss=fmt(r.get("peak_rss_mib"), ".1f"), w=fmt(r.get("writes_per_cycle"), ".2f"),
            lpw=fmt(r.get("lines_per_write_median"), "g"), cph=fmt(r.get("connections_per_host"), ".2f"),
            ok=f"{r.get('hosts_ok_min', '–')}/{r['hosts']}", la=r.get("loadavg_after", "")))
    hung = [r for r in results if r.get("hung_hosts")]
    if hung:
        base = {r["hosts"]: r for r in results if not r.get("hung_hosts")}
        L.append("")
        L.append("Hung host: one of the N hosts is on a port that accepts and never answers "
                 "(`never`: not even PROTOCOLINFO; `after-auth`: authenticates, then GETINFO hangs). "
                 "\"Healthy hosts' poll span\" is measured on the fake ports: first GETINFO received "
                 "to last reply sent, per cycle, healthy hosts only.")
        L.append("")
        L.append("| hosts (1 hung) | hang mode | cycle wall median / max (s) | cycles that waited TOR_TIMEOUT "
                 "| same, no hung host: cycle median / max (s) "
                 "| healthy hosts' poll span median / max (s) | same, no hung host (s) | hosts ok (min) "
                 "| write requests per cycle | lines per write | connections to hung port "
                 "| connections per healthy host |")
        L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in hung:
            b = base.get(r["hosts"], {})
            L.append("| {h} | {mode} | {m} / {x} | {to} | {bcm} / {bcx} | {sm} / {sx} | {bm} / {bx} | {ok} | {w} | {lpw} "
                     "| {ch} | {cph} |".format(
                h=f"{r['hosts']:,}", mode=r["hang_mode"], m=fmt(r.get("cycle_median_s")),
                x=fmt(r.get("cycle_max_s")),
                to=f"{r.get('cycles_at_timeout', '–')} of {max(0, r.get('cycles_seen', 1) - 1)}",
                bcm=fmt(b.get("cycle_median_s")), bcx=fmt(b.get("cycle_max_s")),
                sm=fmt(r.get("poll_span_median_s")),
                sx=fmt(r.get("poll_span_max_s")), bm=fmt(b.get("poll_span_median_s")),
                bx=fmt(b.get("poll_span_max_s")),
                ok=f"{r.get('hosts_ok_min', '–')}/{r['hosts']}", w=fmt(r.get("writes_per_cycle"), ".2f"),
                lpw=fmt(r.get("lines_per_write_median"), "g"), ch=r.get("connections_to_hung_ports"),
                cph=fmt(r.get("connections_per_host"), ".2f")))
    fit = cpu_fit(results)
    if fit:
        L.append("")
        L.append(f"Steady-state CPU per cycle fitted over the sizes (least squares): "
                 f"{fit[0]:.1f} ms fixed + {fit[1]:.3f} ms per host.")
    v = verdicts(results)
    if v:
        L.append("")
        L.append("| target | measured | met |")
        L.append("|---|---|---|")
        for name, measured, met in v:
            L.append(f"| {name} | {measured} | {'yes' if met else '**no**'} |")
    errs = [r for r in results if r.get("error")]
    for r in errs:
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
    return f"{os.cpu_count()} cores{' (' + model + ')' if model else ''}, Linux {platform.release()}"


def daemon_versions(python: str) -> dict:
    code = ("import sys,json;import stem,influxdb_client;"
            "print(json.dumps({'python_version':sys.version.split()[0],'stem':stem.__version__,"
            "'influxdb_client':influxdb_client.__version__}))")
    try:
        return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True,
                                         timeout=30).stdout)
    except Exception:
        return {"python_version": "?", "stem": "?", "influxdb_client": "?"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,200,1000", help="host counts (default 10,200,1000)")
    p.add_argument("--latency-ms", type=float, default=20, help="fake tor reply latency (default 20)")
    p.add_argument("--cycles", type=int, default=8, help="cycles per size, incl. the first (default 8)")
    p.add_argument("--ports", type=int, default=20, help="fake control ports shared by the hosts (default 20)")
    p.add_argument("--run-every", type=float, default=2, help="RUN_EVERY_SECONDS (default 2)")
    p.add_argument("--tor-timeout", type=float, default=1, help="TOR_TIMEOUT (default 1)")
    p.add_argument("--auth", choices=("password", "null"), default="password")
    p.add_argument("--hosts-file", action="store_true", help="pass hosts as TOR_HOSTS_FILE, not TOR_HOSTS")
    p.add_argument("--hung-size", type=int, default=200,
                   help="also run N hosts of which one is hung (default 200; 0: off)")
    p.add_argument("--hang-modes", default="never,after-auth", help="hung modes to run (default both)")
    p.add_argument("--hung-only", action="store_true", help="skip --sizes other than the hung baseline")
    p.add_argument("--daemon", default=str(DEFAULT_DAEMON), help="path of tor_to_influxdb2.py")
    p.add_argument("--as-script", action="store_true",
                   help="run `python tor_to_influxdb2.py` (compiled at each start, ~3.5 MB more peak RSS) "
                        "instead of `python -m tor_to_influxdb2` as the image does")
    p.add_argument("--python", default=DEFAULT_PYTHON, help=f"interpreter for the daemon ({DEFAULT_PYTHON})")
    p.add_argument("--fake-python", default=sys.executable, help="interpreter for fake_tor.py")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the daemon (repeatable)")
    p.add_argument("--cprofile", metavar="PREFIX", help="run the daemon under cProfile, writing PREFIX.<size>.pstats")
    p.add_argument("--py-spy", metavar="PREFIX", help="py-spy record the daemon's steady state into PREFIX.<size>")
    p.add_argument("--py-spy-format", default="raw", help="py-spy output format (default raw: folded stacks)")
    p.add_argument("--py-spy-threads", action="store_true", help="py-spy: one stack root per thread")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep each run's temp dir (daemon.log) even when it succeeded")
    p.add_argument("--json", action="store_true", help="print JSON instead of the Markdown table")
    p.add_argument("--markdown-out", metavar="FILE", help="also write the Markdown table to FILE")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON to FILE")
    args = p.parse_args(argv)

    if not Path(args.daemon).exists():
        print(f"daemon not found: {args.daemon}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    runs: list[tuple[int, int, str]] = []
    if not args.hung_only:
        runs += [(n, 0, "never") for n in sizes]
    if args.hung_size:
        if args.hung_only or args.hung_size not in sizes:
            runs.append((args.hung_size, 0, "never"))
        runs += [(args.hung_size, 1, m) for m in args.hang_modes.split(",") if m]

    vers = daemon_versions(args.python)
    meta = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "machine": machine_desc(), **vers, "latency_ms": args.latency_ms, "cycles": args.cycles,
            "run_every": args.run_every, "tor_timeout": args.tor_timeout, "ports": args.ports,
            "auth": args.auth, "loadavg_before": loadavg(), "daemon": str(args.daemon)}
    results = []
    for hosts, hung, mode in runs:
        label = f"{hosts} hosts" + (f", 1 hung ({mode})" if hung else "")
        print(f"[bench] {label} ... (loadavg {loadavg()})", file=sys.stderr, flush=True)
        r = run_one(args, hosts, hung, mode, label)
        results.append(r)
        print(f"[bench] {label}: connect {fmt(r.get('connect_cycle_s'))} s, cycle median "
              f"{fmt(r.get('cycle_median_s'))} s max {fmt(r.get('cycle_max_s'))} s, CPU "
              f"{fmt(r.get('cpu_ms_per_host_poll'))} ms/poll, RSS {fmt(r.get('peak_rss_mib'), '.1f')} MiB, "
              f"writes/cycle {fmt(r.get('writes_per_cycle'), '.2f')}"
              + (f"  ERROR: {r['error'].splitlines()[0]}" if r.get("error") else ""),
              file=sys.stderr, flush=True)
    meta["loadavg_after"] = loadavg()
    doc = {"meta": meta, "results": results}
    md = markdown(meta, results)
    if args.markdown_out:
        Path(args.markdown_out).write_text(md)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1) if args.json else md, end="" if not args.json else "\n")
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
