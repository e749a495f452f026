"""Polls every tor concurrently from one event-loop thread.

One thread runs a selector over every tor's socket. :meth:`Poller.poll_all` asks it for a cycle
and waits for the results, one :class:`PollResult` per tor in TOR_HOSTS order: each tor on a
kept-open connection gets its questions at once (all round trips overlap); tors without a
connection are connected, at most :attr:`Poller.MAX_CONNECTING` at a time, within the cycle's
budget. Every poll ends by its own deadline (TOR_TIMEOUT), so a silent or hostile tor costs the
others nothing. DNS names are resolved by a few daemon threads, never in the loop.

Backoff: a failure whose :class:`~tor2influxdb2.errors.Reason` calls for it (timeout, refused
authentication, protocol errors, too much data) waits one period, doubling up to 60 s, counted
from the cycle's start; a refused or closed connection costs nothing and is retried every
cycle. State changes are logged once (a reminder once a minute); when many tors change at
once, one line sums them up.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import logging
import queue
import selectors
import socket
import threading
import time
from typing import Callable, Iterable

from .errors import Failure, Reason
from .model import Sample, make_tags
from .redact import clip
from .sources.control.metricsets import Plan
from .sources.control.session import ControlSession, TagPolicy
from .targets import TorHost

LOG = logging.getLogger("tor2influxdb2")
SUMMARY_AFTER = 5  # more state changes than this in one cycle are summed up in one line
REMIND_EVERY = 60.0


@dataclasses.dataclass(slots=True)
class PollResult:
    """What one tor gave in one cycle: samples (of the control port and, if it has one, the
    MetricsPort), or the failure that stopped each. ``skipped`` when the control port was not
    polled this cycle (still busy, backing off, no time left); ``metrics_failure`` is the
    MetricsPort's failure (None when it answered or the tor has none)."""

    host: TorHost
    name: str
    samples: list[Sample] = dataclasses.field(default_factory=list)
    failure: Failure | None = None
    skipped: bool = False
    kind: str | None = None
    metrics_failure: Failure | None = None
    has_metrics: bool = False

    @property
    def ok(self) -> bool:
        """The control port answered (the MetricsPort is judged on its own)."""
        return self.failure is None and not self.skipped

    @property
    def error(self) -> str | None:
        return None if self.failure is None else self.failure.message

    @property
    def problems(self) -> list[str]:
        """Every failure of this tor this cycle, for the health file."""
        return [f.message for f in (self.failure, self.metrics_failure) if f is not None]


class _Resolver:
    """A few daemon threads for getaddrinfo, which blocks (and may hang): never in the loop."""

    THREADS = 4

    def __init__(self, post: Callable):
        self.post = post
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []

    def submit(self, host: str, port: int, session) -> None:
        if len(self.threads) < self.THREADS:
            thread = threading.Thread(target=self._work, name="resolve", daemon=True)
            self.threads.append(thread)
            thread.start()
        self.jobs.put((host, port, session))

    def _work(self) -> None:
        while True:
            host, port, session = self.jobs.get()
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                result, error = [(i[0], i[4]) for i in infos], None
            except socket.gaierror as exc:
                result, error = None, Failure(Reason.RESOLVE, f"cannot resolve host ({clip(exc.strerror or exc, 80)})")
            except (OSError, UnicodeError) as exc:
                result, error = None, Failure(Reason.RESOLVE, f"cannot resolve host ({clip(exc, 80)})")
            self.post(lambda s=session, r=result, e=error: s.resolved(r, e))


class EventLoop:
    """A selector, deadlines, and calls posted from other threads. Used by one thread only,
    except :meth:`post`."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._events: dict[int, int] = {}
        self._heap: list = []
        self._seq = itertools.count()
        self._posted: collections.deque = collections.deque()
        self.resolver = _Resolver(self.post)

    # -- for sessions
    def watch(self, session, read: bool, write: bool) -> None:
        sock = session.sock
        if sock is None:
            return
        fd = sock.fileno()
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        current = self._events.get(fd)
        if current == events:
            return
        if current is None:
            self.selector.register(fd, events, session)
        else:
            self.selector.modify(fd, events, session)
        self._events[fd] = events

    def unwatch(self, session, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._events.pop(fd, None) is not None:
            self.selector.unregister(fd)

    def schedule(self, session) -> None:
        heapq.heappush(self._heap, (session.deadline, next(self._seq), session))

    def unschedule(self, session) -> None:
        pass  # entries are dropped lazily when they come due

    def resolve(self, host: str, port: int, session) -> None:
        self.resolver.submit(host, port, session)

    # -- for other threads
    def post(self, call: Callable[[], None]) -> None:
        self._posted.append(call)
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # -- the loop thread
    def run_once(self, timeout: float) -> None:
        if self._heap:
            timeout = min(timeout, max(0.0, self._heap[0][0] - time.monotonic()))
        for key, mask in self.selector.select(timeout):
            session = key.data
            if session is None:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            self._dispatch(session, lambda s=session, m=mask: s.handle(bool(m & selectors.EVENT_READ),
                                                                     bool(m & selectors.EVENT_WRITE)))
        while self._posted:
            call = self._posted.popleft()
            self._dispatch(None, call)
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, session = heapq.heappop(heap)
            if session.busy and session.deadline == deadline:
                self._dispatch(session, lambda s=session: s.expire(now))

    @staticmethod
    def _dispatch(session, call: Callable[[], None]) -> None:
        """Run `call` for `session`. An unexpected error fails that session's poll only (its traceback
        at debug level, the failure logged by the poller like any other), never the loop or the cycle."""
        try:
            call()
        except Exception as exc:  # a bug must not stop the loop: that tor's poll fails, the rest go on
            LOG.debug("poll loop: unexpected error", exc_info=True)
            if session is not None:
                failure = Failure(Reason.INTERNAL, f"unexpected error: {clip(exc, 120)}")
                try:
                    session._fail(failure, retry=False)
                except Exception:  # noqa: BLE001
                    LOG.debug("poll loop: error while failing a session", exc_info=True)
                if session.busy:  # failing it failed too: end its poll here, still exactly once
                    callback, session.on_done = session.on_done, None
                    callback(session, None, failure)

    def close(self) -> None:
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()


class _Source:
    """Backoff and logging bookkeeping of one source of one tor."""

    __slots__ = ("failures", "retry_at", "last_failure", "logged_at", "cycle")

    def __init__(self):
        self.failures = 0
        self.retry_at = 0.0
        self.last_failure: Failure | None = None
        self.logged_at = float("-inf")
        self.cycle: _Cycle | None = None  # the cycle its running poll belongs to


class _Target:
    """One tor: its control session, its MetricsPort session (or None), their bookkeeping."""

    __slots__ = ("index", "host", "control", "metrics", "c", "m", "late", "connecting", "queued")

    def __init__(self, index: int, host: TorHost):
        self.index, self.host = index, host
        self.control: ControlSession | None = None
        self.metrics = None
        self.c, self.m = _Source(), _Source()
        self.late: list[Sample] = []  # samples of a poll that ended after its cycle
        self.connecting = False
        self.queued = False


def _who(target: _Target) -> str:
    """A tor as the logs name it: its name and address, or its entry and address."""
    session = target.control
    return f"{target.host.name} ({target.host.where})" if session.confirmed else target.host.anonymous


class _Part:
    """The outcome of one source of one tor in one cycle."""

    __slots__ = ("samples", "failure", "skipped")

    def __init__(self, samples=None, failure: Failure | None = None, skipped: bool = False):
        self.samples, self.failure, self.skipped = samples or [], failure, skipped


class _Cycle:
    def __init__(self, size: int, budget_end: float):
        self.budget_end = budget_end
        self.start = time.monotonic()
        self.control: list[_Part | None] = [None] * size
        self.metrics: list[_Part | None] = [None] * size
        self.results: list[PollResult | None] = [None] * size
        self.waiting = 0
        self.finished = threading.Event()
        self.queue: collections.deque = collections.deque()
        self.scrapes: collections.deque = collections.deque()
        self.fd_bound: int | None = None  # set when the open-file limit kept tors waiting


_COMMON = ("host", "service", "version")


def _retag(samples: list[Sample], base: tuple) -> list[Sample]:
    """MetricsPort samples with the control port's common tags of this cycle (the scrape may end
    before the control port told the version, e.g. at the first poll)."""
    if not samples:
        return samples
    common = tuple(kv for kv in samples[0].tags if kv[0] in _COMMON)
    if common == base:
        return samples
    return [s._replace(tags=make_tags(base + tuple(kv for kv in s.tags if kv[0] not in _COMMON))) for s in samples]


class Poller:
    """Polls every tor concurrently (see the module's docstring). poll_all() may be called from
    any one thread; everything else happens in the loop thread.

    `metrics` maps TOR_HOSTS names to a factory (target's tags callable -> MetricsSession): those
    tors' MetricsPorts are scraped in the same cycle, concurrently, each within its own timeout.

    `on_result(result)`, if given, is called in the loop thread with each tor's PollResult as soon
    as it is final (every source of that tor ended in this cycle, or the cycle ended), before
    poll_all returns it. It may take ``result.samples`` away (the poller keeps no other reference):
    a cycle then never holds every tor's samples at once. An error in it is logged at debug level
    and leaves the result as it was."""

    MAX_CONNECTING = 256
    MAX_SCRAPING = 128
    MAX_BACKOFF = 60.0

    def __init__(self, hosts: Iterable[TorHost], timeout: float, period: float, plan: Plan | None = None,
                 tags: TagPolicy | None = None, metrics: dict | None = None, max_open: int | None = None,
                 on_result: Callable[[PollResult], None] | None = None):
        self.timeout, self.period = timeout, period
        self.on_result = on_result
        self.max_open = max_open  # most sockets at once (the open-file limit's share), None: no bound
        self.plan = plan or Plan()
        self.tags = tags or TagPolicy()
        self.loop = EventLoop()
        self.targets: list[_Target] = []
        for index, host in enumerate(hosts):
            target = _Target(index, host)
            target.control = ControlSession(host, self.plan, self.tags, timeout, self.loop,
                                            warn=lambda text, t=target: LOG.warning("%s: %s", _who(t), text))
            if metrics and host.name in metrics:
                target.metrics = metrics[host.name](self.loop, target.control.base_tags)
            self.targets.append(target)
        self.connecting = 0
        self.scraping = 0
        self._starting = False
        self.cycle: _Cycle | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="poll", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side
    def poll_all(self, stop: threading.Event, budget: float | None = None,
                 idle: Callable[[], None] | None = None) -> list[PollResult]:
        """One cycle: every tor's PollResult, in TOR_HOSTS order. `idle()`, if given, is called in
        the caller's thread about every 50 ms while the cycle runs (an error in it ends the wait)."""
        cycle = _Cycle(len(self.targets), time.monotonic() + (budget if budget is not None else self.period))
        self.loop.post(lambda: self._begin(cycle))
        while not cycle.finished.wait(0.05):
            if idle is not None:
                idle()
            if stop.is_set() or self._closed:
                self.loop.post(lambda: self._finish(cycle, stopping=True))
                if not cycle.finished.wait(1.0):  # the loop thread is stuck: answer without it
                    return [r or PollResult(t.host, t.control.display, failure=Failure(Reason.STOPPING, "stopping"))
                            for t, r in zip(self.targets, cycle.results)]
                break
        return list(cycle.results)

    def close(self, timeout: float = 0.5) -> None:
        """Close every connection and stop the loop thread, within about `timeout` seconds."""
        if self._closed:
            return
        self._closed = True
        self.loop.post(self._close_all)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    @property
    def sessions(self) -> list[ControlSession]:
        return [t.control for t in self.targets]

    # ------------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        while not self._closed:
            cycle = self.cycle
            wait = 1.0 if cycle is None else max(0.0, min(1.0, cycle.budget_end - time.monotonic()))
            try:
                self.loop.run_once(wait)
            except Exception:  # noqa: BLE001 - never let the loop thread die
                LOG.exception("poll loop failed; going on")
                time.sleep(0.1)
            cycle = self.cycle
            if cycle is not None and time.monotonic() >= cycle.budget_end:
                self._finish(cycle)
        while self.loop._posted:  # the close call
            self.loop._posted.popleft()()

    def _close_all(self) -> None:
        for target in self.targets:
            target.control.close()
            if target.metrics is not None:
                target.metrics.close()

    def _begin(self, cycle: _Cycle) -> None:
        if self.cycle is not None:  # the previous one never finished (a caller gave up on it)
            self._finish(self.cycle, stopping=True)
        self.cycle = cycle
        now = cycle.start = time.monotonic()
        self._starting = True  # a poll that ends at once (its kept connection reset) must not end the cycle
        try:                   # before every tor is in it
            for target in self.targets:
                i = target.index
                session = target.control
                if session.busy:
                    cycle.control[i] = _Part(failure=Failure(Reason.NOT_POLLED, "previous poll still running"),
                                             skipped=True)
                elif target.c.retry_at > now:
                    cycle.control[i] = _Part(failure=self._backing_off(target.c, now), skipped=True)
                elif session.state == "ready":
                    self._start(cycle, target, now)
                else:
                    target.queued = True
                    cycle.queue.append(target)
                if target.metrics is None:
                    cycle.metrics[i] = _Part()
                elif target.metrics.busy:
                    cycle.metrics[i] = _Part(failure=Failure(Reason.NOT_POLLED, "MetricsPort: previous scrape "
                                                                               "still running"), skipped=True)
                elif target.m.retry_at > now:
                    cycle.metrics[i] = _Part(failure=self._backing_off(target.m, now), skipped=True)
                else:
                    cycle.scrapes.append(target)
        finally:
            self._starting = False
        self._start_queued(cycle)
        self._complete_if_done(cycle)

    @staticmethod
    def _backing_off(source: _Source, now: float) -> Failure:
        last = source.last_failure
        return Failure(Reason.BACKING_OFF, f"{last.message if last else 'failed'} "
                                           f"(next try in {source.retry_at - now:.0f} s)")

    def _start(self, cycle: _Cycle, target: _Target, now: float) -> None:
        target.c.cycle = cycle
        cycle.waiting += 1
        if target.control.state != "ready":
            target.connecting = True
            self.connecting += 1
        session = target.control
        self.loop._dispatch(session, lambda: session.start(
            now, lambda session, samples, failure, t=target: self._done(t, samples, failure)))

    def _scrape(self, cycle: _Cycle, target: _Target, now: float) -> None:
        target.m.cycle = cycle
        cycle.waiting += 1
        self.scraping += 1
        session = target.metrics
        self.loop._dispatch(session, lambda: session.start(
            now, lambda session, samples, failure, t=target: self._scraped(t, samples, failure)))

    def _start_queued(self, cycle: _Cycle) -> None:
        if self._starting:  # a poll that failed at once (no such socket, EMFILE) ends in here again:
            return          # the loops below go on with the next one (no recursion through the queue)
        self._starting = True
        try:
            now = time.monotonic()
            while cycle.queue and self.connecting < self.MAX_CONNECTING and now < cycle.budget_end:
                if self._at_fd_bound():
                    cycle.fd_bound = self.max_open  # the rest wait: the descriptors left are not theirs
                    break
                target = cycle.queue.popleft()
                target.queued = False
                self._start(cycle, target, now)
            while cycle.scrapes and self.scraping < self.MAX_SCRAPING and now < cycle.budget_end:
                if self._at_fd_bound():
                    cycle.fd_bound = self.max_open
                    break
                self._scrape(cycle, cycle.scrapes.popleft(), now)
        finally:
            self._starting = False

    def _at_fd_bound(self) -> bool:
        return self.max_open is not None and len(self.loop._events) + self.connecting + self.scraping >= self.max_open

    def _can_start(self, cycle: _Cycle) -> bool:
        """Whether a queued poll may still start in this cycle (if none runs, none will free a descriptor)."""
        return bool(cycle.queue or cycle.scrapes) and not self._at_fd_bound()

    def _done(self, target: _Target, samples: list[Sample] | None, failure: Failure | None) -> None:
        if target.connecting:
            target.connecting = False
            self.connecting -= 1
        cycle, target.c.cycle = target.c.cycle, None
        if cycle is not None and cycle is self.cycle and cycle.control[target.index] is None:
            cycle.waiting -= 1
            cycle.control[target.index] = _Part(samples, failure)
            if cycle.metrics[target.index] is not None:
                self._result(cycle, target)
        else:  # the cycle it belonged to is over: keep its samples for the next one, account it now
            if samples:
                target.late.extend(samples)
            self._account(target, target.c, failure, False, time.monotonic(), [])
        self._next(target)

    def _scraped(self, target: _Target, samples: list[Sample] | None, failure: Failure | None) -> None:
        self.scraping -= 1
        cycle, target.m.cycle = target.m.cycle, None
        if cycle is not None and cycle is self.cycle and cycle.metrics[target.index] is None:
            cycle.waiting -= 1
            cycle.metrics[target.index] = _Part(samples, failure)
            if cycle.control[target.index] is not None:
                self._result(cycle, target)
        else:
            if samples:
                target.late.extend(samples)
            self._account(target, target.m, failure, False, time.monotonic(), [])
        self._next(target)

    def _next(self, target: _Target) -> None:
        current = self.cycle
        if current is not None:
            self._start_queued(current)
            self._complete_if_done(current)

    def _complete_if_done(self, cycle: _Cycle) -> None:
        if self._starting:  # polls are being started: whoever starts them checks once they all are
            return
        if cycle.waiting == 0 and not self._can_start(cycle):
            self._finish(cycle)

    def _finish(self, cycle: _Cycle, stopping: bool = False) -> None:
        if cycle.finished.is_set():
            return
        late = Failure(Reason.STOPPING, "stopping") if stopping else None
        if cycle.fd_bound is not None:
            why = (f"the open-file limit leaves descriptors for {cycle.fd_bound} connections "
                   "(raise it: docker run --ulimit nofile=..., ulimit -n)")
        else:
            why = "the cycle ran out of time"
        for target in cycle.queue:
            target.queued = False
            cycle.control[target.index] = _Part(failure=late or Failure(Reason.NOT_POLLED, f"not polled: {why}"),
                                                skipped=not stopping)
        for target in cycle.scrapes:
            cycle.metrics[target.index] = _Part(failure=late or Failure(
                Reason.NOT_POLLED, f"MetricsPort: not scraped: {why}"), skipped=not stopping)
        cycle.queue.clear()
        cycle.scrapes.clear()
        changes: list = []
        for target in self.targets:
            i = target.index
            control = cycle.control[i] = cycle.control[i] or _Part(failure=late or Failure(
                Reason.NOT_POLLED, "still connecting when the cycle ended"), skipped=True)
            metrics = cycle.metrics[i] = cycle.metrics[i] or _Part(failure=late or Failure(
                Reason.NOT_POLLED, "MetricsPort: still scraping when the cycle ended"), skipped=True)
            self._account(target, target.c, control.failure, control.skipped, cycle.start, changes)
            if target.metrics is not None:
                self._account(target, target.m, metrics.failure, metrics.skipped, cycle.start, changes)
            if cycle.results[i] is None:
                self._result(cycle, target)
        self._log_changes(changes)
        if self.cycle is cycle:
            self.cycle = None
        cycle.finished.set()

    def _result(self, cycle: _Cycle, target: _Target) -> None:
        """The tor's PollResult of this cycle, from both its parts, handed to on_result."""
        i = target.index
        control, metrics = cycle.control[i], cycle.metrics[i]
        samples = target.late + control.samples + _retag(metrics.samples, target.control.base_tags())
        target.late = []
        control.samples = metrics.samples = []  # the result holds them now
        result = cycle.results[i] = PollResult(target.host, target.control.display, samples, control.failure,
                                               control.skipped, target.control.kind, metrics.failure,
                                               target.metrics is not None)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - the result stays as it was: its consumer handles it later
                LOG.debug("on_result failed", exc_info=True)

    # ------------------------------------------------------------------ backoff and logs
    def _account(self, target: _Target, source: _Source, failure: Failure | None, skipped: bool,
                 cycle_start: float, changes: list) -> None:
        now = time.monotonic()
        what = "MetricsPort " if source is target.m else ""
        if failure is None and not skipped:
            if source.failures:
                changes.append(("recovered", target, f"{what}polled again after {source.failures} failed attempt(s)"))
            source.failures, source.retry_at, source.last_failure = 0, 0.0, None
            return
        if skipped or failure is None or failure.reason == Reason.STOPPING:
            return
        source.failures += 1
        retry = ""
        if failure.reason.back_off:
            delay = min(self.period * 2 ** (source.failures - 1), self.MAX_BACKOFF)
            source.retry_at = cycle_start + delay - 0.5
            retry = f"; next try in {delay:.0f} s"
        if failure != source.last_failure or now - source.logged_at >= REMIND_EVERY:
            changes.append(("failed", target, failure.message + retry))
            source.logged_at = now
        source.last_failure = failure

    def _log_changes(self, changes: list) -> None:
        for kind in ("failed", "recovered"):
            items = [(t, text) for k, t, text in changes if k == kind]
            if len(items) <= SUMMARY_AFTER:
                for target, text in items:
                    log = LOG.warning if kind == "failed" else LOG.info
                    log("%s: %s", _who(target), text)
                continue
            by_text: dict[str, list[str]] = collections.defaultdict(list)
            for target, text in items:
                by_text[text.split("; next try")[0]].append(target.control.display)
            parts = []
            for text, names in sorted(by_text.items(), key=lambda kv: -len(kv[1])):
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                parts.append(f"{len(names)} {text} ({shown})")
            if kind == "failed":
                LOG.warning("%d tors failed: %s", len(items), "; ".join(parts))
            else:
                LOG.info("%d tors polled again after failures: %s", len(items), "; ".join(parts))
