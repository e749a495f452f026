"""The daemon: the schedule, one cycle after another, ``-t`` and ``--schema``.

This is the only module that knows both sources and sinks: each cycle the poller's samples are
encoded as line protocol and handed to delivery, and the health file gets the cycle's verdict.
"""

from __future__ import annotations

import json
import logging
import resource
import threading
import time
from typing import Callable, TextIO

from . import __version__
from .errors import BufferLocked
from .files import UnsafePath
from .health import HealthFile, Watchdog, verdict
from .poller import Poller, PollResult
from .redact import mask
from .settings import Settings
from .sinks.buffer import open_buffer
from .sinks.influx import Delivery, InfluxWriter
from .sinks.lineprotocol import LineEncoder
from .sinks.report import report
from .sources.control.metricsets import SCHEMA as CONTROL_SCHEMA
from .sources.control.metricsets import Plan
from .sources.control.session import TagPolicy

LOG = logging.getLogger("tor2influxdb2")
FD_MARGIN = 64


class Schedule:
    """Fixed-rate ticks on a monotonic clock: tick k is at start + k * period, so there is no
    drift; a cycle that overruns skips the ticks it missed instead of bursting to catch up."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic):
        self.period, self.clock = period, clock
        self.start = clock()
        self.tick = 0
        self.skipped = 0

    def next_delay(self) -> float:
        """Advance to the next tick in the future; return the seconds to wait for it."""
        now = self.clock()
        self.tick += 1
        due = self.start + self.tick * self.period
        if due <= now:
            missed = int((now - due) // self.period) + 1
            self.tick += missed
            self.skipped += missed
            LOG.warning("cycle overran the period of %g s: skipping %d tick(s)", self.period, missed)
            due = self.start + self.tick * self.period
        return due - now


def make_poller(settings: Settings, max_open: int | None = None) -> Poller:
    return Poller(settings.tor_hosts, settings.tor_timeout, settings.period, Plan(settings.metric_sets),
                  TagPolicy(settings.service_tag, settings.send_version_tag), max_open=max_open)


def schema() -> dict:
    """Every measurement the daemon can write, for --schema."""
    return {"tor2influxdb2": __version__, "precision": "ms",
            "measurements": [spec.as_json() for spec in CONTROL_SCHEMA]}


def print_schema(out: TextIO) -> int:
    json.dump(schema(), out, indent=2)
    out.write("\n")
    out.flush()
    return 0


def ensure_fd_limit(connections: int) -> int | None:
    """Raise the soft open-file limit to what the tors need (up to the hard limit), or say what
    is missing in one warning. The most control connections the poller may hold open (None: no
    bound): FD_MARGIN descriptors stay free for the health file, the buffer and InfluxDB."""
    need = connections + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
        if soft < need:
            LOG.warning("the open-file limit is %d (hard limit %s) but %d tors need about %d: raise it "
                        "(docker run --ulimit nofile=%d:%d, or ulimit -n %d)", soft, hard, connections, need,
                        need, need, need)
    return max(1, soft - FD_MARGIN)


def run_test_mode(settings: Settings, out: TextIO) -> int:
    """-t: poll every tor once, print what would be written, upload nothing. 0 if all answered."""
    poller = make_poller(settings, ensure_fd_limit(len(settings.tor_hosts)))
    try:
        results = poller.poll_all(threading.Event(), budget=settings.tor_timeout + 1)
    finally:
        poller.close()
    failed = 0
    core = "core" in settings.metric_sets
    for result in results:
        if result.ok:
            text = report(result.host.where, result.name, result.samples, core=core)
        else:
            failed += 1
            name = result.name if result.name == result.host.name else result.host.label
            text = f"\nStats for host {result.host.where}({name}): not available: {result.error}"
        print(mask(text), file=out)
    out.flush()
    return 1 if failed else 0


def run(settings: Settings, stop: threading.Event, max_cycles: int | None = None) -> int:
    """The daemon: poll, buffer, deliver, report health, every period, until `stop` is set."""
    try:
        health = HealthFile(settings.healthcheck_file)
        health.write(False, "starting: no cycle finished yet")
    except UnsafePath as exc:
        LOG.error("%s", exc)
        return 2
    except OSError as exc:
        LOG.error("HEALTHCHECK_FILE: cannot write %s: %s", settings.healthcheck_file, exc.strerror or exc)
        return 2
    try:
        buffer = open_buffer(settings.buffer_dir, settings.buffer_max_points, settings.buffer_max_memory)
    except (BufferLocked, UnsafePath) as exc:
        LOG.error("%s", exc)
        health.write(False, str(exc))
        return 2
    max_open = ensure_fd_limit(len(settings.tor_hosts))
    writer = InfluxWriter(settings.influx_url, settings.influx_org, settings.influx_bucket, settings.influx_token,
                          settings.influx_timeout)
    delivery = Delivery(writer, buffer, stop)
    poller = make_poller(settings, max_open)
    encoder = LineEncoder()
    watchdog = Watchdog(health, 3 * settings.period, stop)
    schedule = Schedule(settings.period)
    delivery.start()
    watchdog.start()
    LOG.info("polling %d tor(s) every %d s (metric sets: %s), writing to %s (org %s, bucket %s)",
             len(settings.tor_hosts), settings.period, ", ".join(settings.metric_sets), settings.influx_url,
             settings.influx_org, settings.influx_bucket)
    cycle = 0
    try:
        while not stop.is_set():
            cycle += 1
            started = time.monotonic()
            results = poller.poll_all(stop)
            if stop.is_set() and not any(r.samples for r in results):
                break
            backlog = len(buffer)  # points of earlier cycles not delivered yet
            lines, stamps = collect_lines(results, encoder)
            if lines:
                delivery.submit(lines, stamps)
            buffer.check()
            write_health(health, settings, results, delivery, buffer)
            watchdog.cycle_finished()
            good = sum(1 for r in results if r.ok)
            LOG.debug("cycle %d done in %.3f s: %d/%d hosts ok, %d points, %d waiting", cycle,
                      time.monotonic() - started, good, len(results), len(lines), backlog)
            if max_cycles is not None and cycle >= max_cycles:
                break
            stop.wait(schedule.next_delay())
    finally:
        LOG.info("stopping")
        stop.set()
        poller.close()
        try:
            buffer.check()  # BUFFER_DIR deleted since the last cycle: the waiting points must not stay in it
        except Exception:  # noqa: BLE001 - the stop goes on
            LOG.debug("buffer check at stop failed", exc_info=True)
        delivery.finish(budget=1.5)
        if not delivery.thread.is_alive():  # a request still stuck keeps its handles
            writer.close()
            buffer.close()
        try:
            health.write(False, "stopped")
        except OSError:
            pass
    return 0


def collect_lines(results: list[PollResult], encoder: LineEncoder) -> tuple[list[str], list[int]]:
    lines, stamps = [], []
    for result in results:
        for sample in result.samples:
            try:
                line = encoder.encode(sample)
            except ValueError:  # a source let through a value line protocol cannot carry: drop it
                LOG.debug("dropping a sample that cannot be encoded: %s", sample.measurement)
                continue
            if line is not None:
                lines.append(line)
                stamps.append(sample.time_ms)
    return lines, stamps


def write_health(health: HealthFile, settings: Settings, results: list[PollResult], delivery: Delivery,
                 buffer) -> None:
    waiting, age = delivery.waiting()
    failed = [(r.name, r.error) for r in results if r.failure is not None]
    problem = delivery.config_problem
    notes = [buffer.degraded] if buffer.degraded else []
    ok, reason = verdict(failed, waiting, age, 3 * settings.period, delivery.last_error,
                         problem.message if problem else None, notes)
    try:
        health.write(ok, reason)
    except OSError as exc:
        LOG.error("cannot write the health file %s: %s", settings.healthcheck_file, exc)
