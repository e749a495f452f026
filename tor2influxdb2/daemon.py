"""The daemon: the schedule, one cycle after another, ``-t`` and ``--schema``.

This is the only module that knows both sources and sinks: as each tor answers, the poller hands
its samples over (on_result) to be encoded as line protocol and dropped; while delivery keeps up
the lines go to the outputs in request-sized pieces as the cycle runs (:class:`Pieces`; while
points wait, at the cycle's end in one piece, as the buffer packs them best), and the health file gets
the cycle's verdict. With a Prometheus endpoint the samples are kept for it until the cycle ends.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import threading
import time
from typing import Callable, TextIO

from . import __version__
from .errors import BufferLocked, ConfigError
from .files import UnsafePath
from .health import HealthFile, Watchdog, verdict
from .poller import Poller, PollResult
from .redact import mask
from .settings import Settings
from .sinks.buffer import open_buffer
from .sinks.influx import MAX_LINES_PER_REQUEST, Delivery, InfluxWriter
from .sinks.lineprotocol import LineEncoder
from .sinks.report import report
from .sources.control.metricsets import SCHEMA as CONTROL_SCHEMA
from .model import FieldSpec, FrozenFields, MeasurementSpec, Sample, make_tags
from .sources.control.metricsets import SET_NAMES as CONTROL_SETS
from .sources.control.metricsets import Plan
from .sources.control.session import TagPolicy

LOG = logging.getLogger("tor2influxdb2")
FD_MARGIN = 64


#: The last cycle, for the status line SIGUSR1 asks for (written by run(), read by a signal handler).
LAST_CYCLE: dict = {}


def status_line() -> str:
    c = LAST_CYCLE
    if not c:
        return "running; no cycle finished yet"
    return (f"cycle {c['cycle']} {c['age']()} s ago: {c['ok']}/{c['tors']} tors answered, {c['points']} points, "
            f"{c['waiting']} waiting for delivery")


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


def make_poller(settings: Settings, max_open: int | None = None, on_result=None) -> Poller:
    metrics = {}
    if settings.metrics_ports:
        from .sources.metricsport import DEFAULT_SELECTION, MetricsSession
        families = settings.metricsport_families or DEFAULT_SELECTION
        for name, address in settings.metrics_ports.items():
            metrics[name] = (lambda loop, tags, a=address: MetricsSession(a, families, settings.onion_label,
                                                                          settings.tor_timeout, loop, tags))
    plan = Plan(tuple(s for s in settings.metric_sets if s in CONTROL_SETS))
    return Poller(settings.tor_hosts, settings.tor_timeout, settings.period, plan,
                  TagPolicy(settings.service_tag, settings.send_version_tag), metrics, max_open=max_open,
                  on_result=on_result)


def schema() -> dict:
    """Every measurement the daemon can write, for --schema."""
    from .sources.metricsport import SCHEMA as METRICSPORT_SCHEMA
    return {"tor2influxdb2": __version__, "precision": "ms",
            "measurements": [spec.as_json() for spec in CONTROL_SCHEMA + DAEMON_SCHEMA + tuple(METRICSPORT_SCHEMA)]}


# ------------------------------------------------------------------ the daemon's own figures (METRIC_SETS=daemon)

DAEMON_SCHEMA = (
    MeasurementSpec("tor2influxdb2", "daemon", "daemon", (
        FieldSpec("up", "integer", "the poll of this cycle", "", "1 when the control port answered, else 0"),
        FieldSpec("metricsport_up", "integer", "the scrape of this cycle", "",
                  "1 when the MetricsPort answered, else 0 (only for tors with TOR_METRICS_PORTS)"),
        FieldSpec("failures", "integer", "the poller", "", "failed polls in a row")),
        ("host", "service"), description="one point per tor and cycle, also when its poll failed; none for a "
                                         "HOST:PORT:NAME entry before its tor first accepted the daemon (until "
                                         "then its name may be a password)"),
    MeasurementSpec("tor2influxdb2_cycle", "daemon", "daemon", (
        FieldSpec("seconds", "float", "the daemon", "s", "how long the cycle took"),
        FieldSpec("tors", "integer", "the daemon", "", "tors this replica polls"),
        FieldSpec("tors_ok", "integer", "the daemon", "", "tors whose control port answered"),
        FieldSpec("points", "integer", "the daemon", "", "points of the cycle"),
        FieldSpec("waiting", "integer", "the daemon", "", "points of earlier cycles not yet delivered"),
        FieldSpec("skipped_ticks", "integer", "the daemon", "", "periods skipped since start: cycles that overran")),
        ("service", "shard"), description="one point per cycle"),
)


#: The tag set of each tor's own point, by (host name, service tag): the same every cycle; and its
#: fields, by (up, failures, metricsport_up): a few objects the whole fleet shares (FrozenFields).
_HOST_TAGS: dict[tuple[str, str], tuple] = {}
_OWN_FIELDS: dict[tuple, FrozenFields] = {}


def daemon_samples(settings: Settings, results: list[PollResult], poller: Poller, seconds: float, points: int,
                   waiting: int, skipped: int) -> list[Sample]:
    now_ms = time.time_ns() // 1_000_000
    service = {"service": settings.service_tag} if settings.service_tag else {}
    out = []
    tag_sets = _HOST_TAGS
    if len(tag_sets) > 2 * len(results) + 1000:  # names of a fleet since shrunk: made again
        tag_sets.clear()
    new = tuple.__new__  # Sample(...) without the NamedTuple constructor's extra call (one per tor)
    for result, target in zip(results, poller.targets):
        if not target.control.confirmed:  # its name may be a password typed without its name
            continue
        values = (int(result.ok), target.c.failures,
                  int(result.metrics_failure is None) if result.has_metrics else None)
        fields = _OWN_FIELDS.get(values)
        if fields is None:
            if len(_OWN_FIELDS) >= 1000:
                _OWN_FIELDS.clear()
            fields = {"up": values[0], "failures": values[1]}
            if values[2] is not None:
                fields["metricsport_up"] = values[2]
            fields = _OWN_FIELDS[values] = FrozenFields(fields)
        key = (result.host.name, settings.service_tag)
        tags = tag_sets.get(key)
        if tags is None:
            tags = tag_sets[key] = make_tags({"host": result.host.name, **service})
        out.append(new(Sample, ("tor2influxdb2", tags, fields, now_ms)))
    tags = dict(service)
    if settings.shard is not None:
        tags["shard"] = f"{settings.shard[0]}/{settings.shard[1]}"
    out.append(Sample("tor2influxdb2_cycle", make_tags(tags), {
        "seconds": round(seconds, 6), "tors": len(results), "tors_ok": sum(r.ok for r in results),
        "points": points, "waiting": waiting, "skipped_ticks": skipped}, now_ms))
    return out


def print_schema(out: TextIO) -> int:
    json.dump(schema(), out, indent=2)
    out.write("\n")
    out.flush()
    return 0


def ensure_fd_limit(connections: int) -> int | None:
    """Raise the soft open-file limit to what the tors need (up to the hard limit), or say what
    is missing in one warning. The most connections the poller may hold open (None: no bound):
    FD_MARGIN descriptors stay free for the health file, the buffer and InfluxDB."""
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


def make_writer(settings: Settings) -> InfluxWriter:
    from .sinks.transport import make_ssl_context
    context = make_ssl_context(settings.influx_tls) if settings.influx_tls is not None else None
    return InfluxWriter(settings.influx_url, settings.influx_org, settings.influx_bucket, settings.influx_token,
                        settings.influx_timeout, settings.influx_connect_timeout, context, settings.influx_proxy)


def run_test_mode(settings: Settings, out: TextIO) -> int:
    """-t: poll every tor once, print what would be written, upload nothing. 0 if all answered."""
    if settings.shard is not None:
        index, count = settings.shard
        names = ", ".join(h.name if h.password_given else h.label for h in settings.tor_hosts) or "none"
        print(mask(f"Shard {index}/{count}: this replica polls {len(settings.tor_hosts)} of the "
                   f"{len(settings.all_tor_hosts)} tors of TOR_HOSTS: {names}"), file=out)
    connections = len(settings.tor_hosts) * (2 if settings.metrics_ports else 1)
    poller = make_poller(settings, ensure_fd_limit(connections))
    try:
        results = poller.poll_all(threading.Event(), budget=settings.tor_timeout + 1)
    finally:
        poller.close()
    failed = 0
    core = "core" in settings.metric_sets
    for result in results:
        if result.ok:
            text = report(result.host.where, result.name, result.samples, core=core)
            if result.metrics_failure is not None:
                failed += 1
                text += f"\n\nMetricsPort: not available: {result.metrics_failure.message.removeprefix('MetricsPort: ')}"
        else:
            failed += 1
            name = result.name if result.name == result.host.name else result.host.label
            text = f"\nStats for host {result.host.where}({name}): not available: {result.error}"
        print(mask(text), file=out)
    out.flush()
    return 1 if failed else 0


class InfluxOutput:
    """The InfluxDB sink: the buffer, the writer and the delivery thread."""

    def __init__(self, settings: Settings, stop: threading.Event):
        self.buffer = open_buffer(settings.buffer_dir, settings.buffer_max_points, settings.buffer_max_memory)
        self.writer = make_writer(settings)
        self.delivery = Delivery(self.writer, self.buffer, stop)
        via = f" through {settings.influx_proxy.where}" if settings.influx_proxy is not None else ""
        self.describe = f"{settings.influx_url}{via} (org {settings.influx_org}, bucket {settings.influx_bucket})"

    def start(self) -> None:
        self.delivery.start()

    def submit(self, lines: list[str], stamps: list[int]) -> None:
        if lines:
            self.delivery.submit(lines, stamps)

    def end_cycle(self) -> None:
        self.buffer.check()

    def backlog(self) -> int:
        return len(self.buffer)

    def problems(self, limit: float) -> list[str]:
        waiting, age = self.delivery.waiting()
        problem = self.delivery.config_problem
        out = []
        if problem is not None:
            out.append(f"{waiting} points kept: {problem.message}")
        elif waiting and age is not None and age > limit:
            error = self.delivery.last_error
            out.append(f"{waiting} points waiting for InfluxDB for {age:.0f} s" + (f" ({error})" if error else ""))
        if self.buffer.degraded:
            out.append(self.buffer.degraded)
        return out

    def close(self) -> None:
        try:
            self.buffer.check()  # BUFFER_DIR deleted since the last cycle: the waiting points must not stay in it
        except Exception:  # noqa: BLE001 - the stop goes on
            LOG.debug("buffer check at stop failed", exc_info=True)
        self.delivery.finish(budget=1.5)
        if not self.delivery.thread.is_alive():  # a request still stuck keeps its handles
            self.writer.close()
            self.buffer.close()


class _Unbuffered:
    """An output that keeps nothing waiting: no backlog, no delivery problem to report."""

    def backlog(self) -> int:
        return 0

    def problems(self, limit: float) -> list[str]:
        return []


class StdoutOutput(_Unbuffered):
    """--line-protocol: each cycle's lines on stdout, flushed per cycle (logs stay on stderr)."""

    describe = "stdout (line protocol)"

    def __init__(self, stream: TextIO):
        self.stream = stream

    def start(self) -> None:
        pass

    def submit(self, lines: list[str], stamps: list[int]) -> None:
        if lines:  # BrokenPipeError (here or at the flush) when the reader went away: the daemon stops
            self.stream.write("\n".join(lines) + "\n")

    def end_cycle(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass


class PrometheusOutput(_Unbuffered):
    """PROMETHEUS_LISTEN: /metrics from the latest samples of every tor; a tor whose poll failed is down."""

    def __init__(self, settings: Settings):
        from .sinks.prometheus import PrometheusSink
        self.sink = PrometheusSink(settings.prometheus, stale_after=3 * settings.period)
        self.service = settings.service_tag
        self.last_success: dict[str, float] = {}
        self.describe = f"Prometheus on {settings.prometheus.display}"

    def start(self) -> None:
        self.sink.start()  # ConfigError when it cannot listen

    def cycle(self, results: list[PollResult], daemon: dict) -> None:
        from .model import TorStatus
        now = time.time()
        statuses = []
        for result in results:
            if result.ok:
                self.last_success[result.name] = now
            sources = {"control-port": result.ok}
            if result.has_metrics:
                sources["metricsport"] = result.metrics_failure is None
            statuses.append(TorStatus(result.name, self.service, result.ok, self.last_success.get(result.name),
                                      tuple(result.samples) if result.ok else (), result.error, sources))
        self.sink.update(statuses, daemon)

    def submit(self, lines, stamps) -> None:
        pass

    def end_cycle(self) -> None:
        pass

    def close(self) -> None:
        self.sink.close()


def run(settings: Settings, stop: threading.Event, max_cycles: int | None = None, out: TextIO | None = None,
        sleep: Callable[[float], object] | None = None, report: Callable[[], None] = lambda: None) -> int:
    """The daemon: poll, hand the points to the outputs, report health, every period, until `stop`.

    `sleep(seconds)` waits between cycles and returns early when `stop` is set; the entry point gives
    one that a signal interrupts without the main thread ever waiting on `stop` itself (a signal
    handler that sets an Event the main thread is waiting on can deadlock on the Event's lock)."""
    sleep = sleep or stop.wait
    health = None
    if settings.healthcheck_file:
        try:
            health = HealthFile(settings.healthcheck_file)
            health.write(False, "starting: no cycle finished yet")
        except UnsafePath as exc:
            LOG.error("%s", exc)
            return 2
        except OSError as exc:
            LOG.error("HEALTHCHECK_FILE: cannot write %s: %s", settings.healthcheck_file, exc.strerror or exc)
            return 2
    outputs: list = []
    try:
        if settings.mode == "line-protocol":
            outputs.append(StdoutOutput(out or sys.stdout))
        elif settings.influx_url:
            outputs.append(InfluxOutput(settings, stop))
        if settings.prometheus is not None:
            outputs.append(PrometheusOutput(settings))
    except (BufferLocked, UnsafePath) as exc:
        LOG.error("%s", exc)
        if health is not None:
            health.write(False, str(exc))
        return 2
    max_open = ensure_fd_limit(len(settings.tor_hosts) * (2 if settings.metrics_ports else 1))
    encoder = LineEncoder()
    # Unless a sink needs the samples themselves (Prometheus), each tor's samples become lines as
    # soon as that tor answered and are dropped (a cycle never holds the fleet's samples), and while
    # delivery keeps up the lines go to the outputs as the cycle runs, a request's worth at a time.
    pieces = None if any(isinstance(o, PrometheusOutput) for o in outputs) else Pieces(encoder)
    poller = make_poller(settings, max_open, pieces.add if pieces is not None else None)
    watchdog = Watchdog(health, 3 * settings.period, stop) if health is not None else None
    schedule = Schedule(settings.period)
    try:
        for output in outputs:
            output.start()
    except ConfigError as exc:
        for problem in exc.problems:
            LOG.error("%s", problem)
        stop.set()  # first: the outputs started already stop at once (delivery ends, the buffer is closed)
        poller.close()
        for output in outputs:
            output.close()
        return 2
    if watchdog is not None:
        watchdog.start()
    LOG.info("polling %d tor(s) every %d s (metric sets: %s), writing to %s", len(settings.tor_hosts),
             settings.period, ", ".join(settings.metric_sets), "; ".join(o.describe for o in outputs) or "nothing")
    cycle = 0
    try:
        while not stop.is_set():
            cycle += 1
            started = time.monotonic()
            handed = 0  # points of this cycle handed to the outputs so far

            def hand_over(lines: list[str], stamps: list[int]) -> None:
                nonlocal handed
                handed += len(lines)
                for output in outputs:
                    output.submit(lines, stamps)

            def hand_over_piece() -> None:
                # only while delivery keeps up (nothing waits): while points wait (InfluxDB slow or
                # down), the cycle's lines join the buffer as one chunk at its end, as it packs them best
                if not any(output.backlog() for output in outputs):
                    hand_over(*pieces.take())

            results = poller.poll_all(stop, idle=hand_over_piece if pieces is not None else None)
            report()
            lines, stamps = pieces.take(everything=True) if pieces is not None else ([], [])
            if stop.is_set() and not handed and not lines and not any(r.samples for r in results):
                break
            more, more_stamps = collect_lines(results, encoder)  # of the tors whose samples were kept
            lines += more
            stamps += more_stamps
            # points of earlier cycles still waiting: delivery is oldest first, so if any point of
            # this cycle was delivered, none of theirs waits
            backlog = max(0, sum(output.backlog() for output in outputs) - handed)
            if "daemon" in settings.metric_sets:
                own = daemon_samples(settings, results, poller, time.monotonic() - started, handed + len(lines),
                                     backlog, schedule.skipped)
                more, more_stamps = collect_lines([PollResult(None, "", own)], encoder)
                lines += more
                stamps += more_stamps
            hand_over(lines, stamps)
            for output in outputs:
                output.end_cycle()
            figures = {"cycle_seconds": round(time.monotonic() - started, 6)}
            if any(isinstance(o, InfluxOutput) for o in outputs):
                figures["buffer_points"] = sum(o.backlog() for o in outputs)
            for output in outputs:
                if isinstance(output, PrometheusOutput):
                    output.cycle(results, figures)
            if health is not None:
                write_health(health, settings, results, outputs)
                watchdog.cycle_finished()
            good = sum(1 for r in results if r.ok)
            done_at = time.monotonic()
            LAST_CYCLE.update(cycle=cycle, ok=good, tors=len(results), points=handed, waiting=backlog,
                              age=lambda t=done_at: f"{time.monotonic() - t:.0f}")
            LOG.debug("cycle %d done in %.3f s: %d/%d hosts ok, %d points, %d waiting", cycle,
                      time.monotonic() - started, good, len(results), handed, backlog)
            if max_cycles is not None and cycle >= max_cycles:
                break
            results = lines = stamps = own = None  # the buffer holds what is still waiting: nothing else may
            sleep(schedule.next_delay())
    except BrokenPipeError:
        LOG.info("stdout was closed by its reader: stopping")
    finally:
        report()
        LOG.info("stopping")
        stop.set()
        poller.close()
        for output in outputs:
            output.close()
        if health is not None:
            try:
                health.write(False, "stopped")
            except OSError:
                pass
    return 0


class Pieces:
    """Lines the poll thread encoded, waiting for the main thread to hand them to the outputs.

    :meth:`add` is the poller's on_result (the poll thread): the tor's samples become lines and
    are dropped. :meth:`take` (the main thread, while the cycle runs and after it) gives what
    waits once it is a request's worth (MAX_LINES_PER_REQUEST), or everything."""

    def __init__(self, encoder: LineEncoder, piece: int = MAX_LINES_PER_REQUEST):
        self.encoder, self.piece = encoder, piece
        self.lock = threading.Lock()
        self.lines: list[str] = []
        self.stamps: list[int] = []

    def add(self, result: PollResult) -> None:
        lines, stamps = collect_lines([result], self.encoder)
        result.samples = []
        with self.lock:
            self.lines += lines
            self.stamps += stamps

    def take(self, everything: bool = False) -> tuple[list[str], list[int]]:
        with self.lock:
            if not everything and len(self.lines) < self.piece:
                return [], []
            out = self.lines, self.stamps
            self.lines, self.stamps = [], []
            return out


def collect_lines(results: list[PollResult], encoder: LineEncoder) -> tuple[list[str], list[int]]:
    """The lines (and their times) of the results' samples."""
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


def write_health(health: HealthFile, settings: Settings, results: list[PollResult], outputs: list) -> None:
    failed = [(r.name, problem) for r in results for problem in r.problems]
    notes = [problem for output in outputs for problem in output.problems(3 * settings.period)]
    ok, reason = verdict(failed, notes)
    try:
        health.write(ok, reason)
    except OSError as exc:
        LOG.error("cannot write the health file %s: %s", settings.healthcheck_file, exc)
