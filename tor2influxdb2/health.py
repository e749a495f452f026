"""The health file Docker's HEALTHCHECK reads, its watchdog, and the verdict of a cycle.

`OK <unix time>` when healthy, `FAILED <unix time> <reason>` otherwise. The failed form never
contains the letters OK (old containers run `grep OK /healthcheck`). The reason is masked like
every other output. The path is resolved once at start, following only trusted links
(:mod:`tor2influxdb2.files`); its directory is checked and held open, and every write replaces
the file atomically inside that directory, wherever its name points later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from .files import open_directory, resolve, write_atomic_at
from .redact import REDACTOR

LOG = logging.getLogger("tor2influxdb2")
MAX_REASON = 500


class HealthFile:
    def __init__(self, path: str, clock: Callable[[], float] = time.time):
        self.path, self.clock = path, clock
        self.target = resolve(path, "HEALTHCHECK_FILE")  # files.UnsafePath when it is not safe
        directory, self._name = os.path.split(self.target)
        self._dir_fd = open_directory(directory or ".", "HEALTHCHECK_FILE")
        self._lock = threading.Lock()
        self.last_ok: bool | None = None

    def write(self, ok: bool, reason: str = "") -> None:
        now = int(self.clock())
        if ok:
            content = f"OK {now}\n"
        else:
            text = " ".join(REDACTOR.mask(reason).split()).replace("OK", "ok")
            text = "".join(c if c.isprintable() else "?" for c in text)
            if len(text) > MAX_REASON:
                text = text[:MAX_REASON - 3] + "..."
            content = f"FAILED {now} {text}\n"
        with self._lock:
            write_atomic_at(self._dir_fd, self._name, content)
            self.last_ok = ok


class Watchdog:
    """A daemon thread that writes FAILED when no cycle has finished for `limit` seconds, so a hung
    main loop cannot stay healthy. Stops promptly when `stop` is set."""

    def __init__(self, health: HealthFile, limit: float, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic):
        self.health, self.limit, self.stop, self.clock = health, limit, stop, clock
        self.last_cycle = clock()
        self.thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def cycle_finished(self) -> None:
        self.last_cycle = self.clock()

    def start(self) -> None:
        self.thread.start()

    def check(self) -> bool:
        """Write FAILED if the main loop is late; True when it did."""
        late = self.clock() - self.last_cycle
        if late > self.limit:
            reason = f"no cycle finished for {late:.0f} s (the main loop is stuck)"
            if self.health.last_ok is not False:
                LOG.error("watchdog: %s", reason)
            self.health.write(False, reason)
            return True
        return False

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            try:
                self.check()
            except OSError as exc:
                LOG.error("watchdog: cannot write the health file: %s", exc)


def verdict(failed: list[tuple[str, str]], notes: list[str] = ()) -> tuple[bool, str]:
    """Healthy when every tor answered this cycle and no output reports a problem (points waiting
    too long, an InfluxDB configuration problem, a degraded buffer). `failed` = [(name, why), ...]."""
    reasons = [f"host {name}: {why}" for name, why in failed[:5]]
    if len(failed) > 5:
        reasons.append(f"and {len(failed) - 5} more hosts")
    reasons += list(notes)
    return (not reasons, "; ".join(reasons))
