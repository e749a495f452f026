#!/usr/bin/env python3
"""tor2influxdb2: poll the control ports of Tor daemons and write their statistics to InfluxDB 2.

The entry point the image and the original's users run: arguments, signals, exit status.
The daemon itself is the package tor2influxdb2 (see its __init__ for the layout).

Exit status: 0 after a clean stop (SIGTERM, SIGINT, SIGHUP) or when -t polled every tor,
1 when -t could not poll a tor, 2 for a configuration problem (every one listed on stderr) or a
pinned requirement that is not installed (its name and the pip command), 70 for an internal error
(a bug: one masked line on stderr, where it happened, never a traceback).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
import time

from tor2influxdb2 import __version__

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STATUS_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class SignalledStop(threading.Event):
    """The daemon's stop event; `signalled` is set (without a lock) by a signal handler and counts as set."""

    signalled = False

    def is_set(self) -> bool:
        return self.signalled or super().is_set()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tor_to_influxdb2.py",
        description="Poll Tor control ports and write their statistics to InfluxDB 2 "
                    "(configured by environment variables; see README.md).")
    parser.add_argument("-t", "--test", action="store_true",
                        help="poll every tor once and print the measurements; upload nothing")
    parser.add_argument("--line-protocol", action="store_true",
                        help="write each cycle's points as InfluxDB line protocol on stdout (for Telegraf's "
                             "inputs.execd); no InfluxDB needed, logs stay on stderr")
    parser.add_argument("--schema", action="store_true",
                        help="print every measurement, field, type and tag the daemon can write, as JSON")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, env=None) -> int:
    args = parse_args(argv)
    stop = SignalledStop()
    received: list[int] = []

    # A signal handler runs in the main thread between two of its bytecodes, wherever that is: so it
    # only records the signal. It never logs (a write to stderr that interrupted another write raises
    # "reentrant call") and takes no lock (an Event's lock is not reentrant: setting the Event the main
    # thread is waiting on, or setting, deadlocks). The main thread sleeps on a pipe the signal machinery
    # writes to, and acts on what arrived when it wakes (report()).
    def on_signal(signum, _frame):
        received.append(signum)
        if signum in STOP_SIGNALS:
            stop.signalled = True

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)

    stopping: list[str] = []
    if not (args.schema or args.test):  # from the start: a docker stop during start-up is a clean stop too
        for sig in STOP_SIGNALS + STATUS_SIGNALS:
            signal.signal(sig, on_signal)
    if args.schema:
        from tor2influxdb2.daemon import print_schema
        return print_schema(sys.stdout)

    from tor2influxdb2.errors import ConfigError
    from tor2influxdb2.redact import mask
    from tor2influxdb2.settings import config_from_env
    env = os.environ if env is None else env
    mode = "test" if args.test else "line-protocol" if args.line_protocol else "daemon"
    try:
        settings = config_from_env(env, mode=mode)
    except ConfigError as exc:
        for problem in exc.problems:
            print(mask(f"configuration error: {problem}"), file=sys.stderr)
        return 2

    from tor2influxdb2 import daemon
    from tor2influxdb2.logs import LOG, setup_logging
    setup_logging(settings.verbose)
    LOG.info("tor2influxdb2 %s starting%s", __version__,
             " in test mode (-t): nothing is uploaded" if args.test else "")
    for warning in settings.warnings:
        LOG.warning("%s", warning)
    if settings.shard is not None:
        index, count = settings.shard
        LOG.info("shard %d/%d: this replica polls %d of the %d tors of TOR_HOSTS%s", index, count,
                 len(settings.tor_hosts), len(settings.all_tor_hosts),
                 "" if settings.tor_hosts else " (none: it stays healthy and waits for a change of replicas)")
    for host in settings.tor_hosts[:20]:
        LOG.info("tor host: %s", host.describe())
    if len(settings.tor_hosts) > 20:
        LOG.info("... and %d more tor hosts", len(settings.tor_hosts) - 20)
    if args.test:
        return daemon.run_test_mode(settings, sys.stdout)

    def report() -> None:
        while received:
            signum = received.pop(0)
            name = signal.Signals(signum).name
            if signum in STATUS_SIGNALS:
                LOG.info("received %s: %s", name, daemon.status_line())
            elif stopping:
                LOG.info("received %s again: already stopping", name)
            else:
                stopping.append(name)
                LOG.info("received %s: stopping", name)
                stop.set()

    def sleep(seconds: float) -> None:
        end = time.monotonic() + max(0.0, seconds)
        while True:
            report()
            left = end - time.monotonic()
            if stop.is_set() or left <= 0:
                return
            select.select([wake_r], [], [], left)
            try:
                while os.read(wake_r, 512):
                    pass
            except (BlockingIOError, OSError):
                pass

    try:
        status = daemon.run(settings, stop, sleep=sleep, report=report)
    finally:
        # From here on a late signal must not end the process by its default action (Python
        # restores SIG_DFL for its own handlers while it shuts down): ignore them.
        for sig in STOP_SIGNALS + STATUS_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        report()
    return status


# The import names of requirements.txt's packages, and the names pip knows them by.
REQUIREMENTS = {"stem": "stem", "urllib3": "urllib3", "certifi": "certifi",
                "prometheus_client": "prometheus_client", "socks": "PySocks", "bcrypt": "bcrypt"}


def missing_requirement(exc: BaseException) -> str | None:
    """The pip name of the pinned requirement whose import failed with `exc`, or None (then it is a bug)."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return REQUIREMENTS.get(exc.name.partition(".")[0])
    return None


def describe_bug(exc: BaseException) -> str:
    """One masked line for an exception nobody expected: its type, message and innermost frame
    (or, for a requirement that is not installed, what to install)."""
    import traceback
    from tor2influxdb2.redact import mask
    package = missing_requirement(exc)
    if package is not None:
        return (f"installation problem: the Python package {package} is not installed for "
                f"{sys.executable or 'this Python'} (install the pinned requirements: "
                f"pip install -r requirements.txt)")
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return mask(f"internal error (a bug, please report it): {type(exc).__name__}: {exc}{where}")


def on_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    try:
        print(f"thread {name}: {describe_bug(args.exc_value)}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - stderr closed: nothing left to tell
        pass


def entry() -> int:
    threading.excepthook = on_thread_exception  # never Python's traceback, which the mask does not see
    try:
        return main()
    except BrokenPipeError:  # stdout closed by its reader (| head, a stopped Telegraf)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug must not print a traceback that may hold a secret
        try:
            print(describe_bug(exc), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001
            pass
        return 2 if missing_requirement(exc) is not None else 70


def leave(status: int) -> None:
    """Exit without the interpreter's shutdown. Everything that matters is closed or on disk by now;
    what is left are daemon threads (a DNS lookup that cannot be interrupted, a timer), and a daemon
    thread frozen by the shutdown while it holds a lock (logging's) would hang the exit for ever."""
    import logging
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe
            pass
    os._exit(status)


if __name__ == "__main__":
    leave(entry())
