#!/usr/bin/env python3
"""tor2influxdb2: poll the control ports of Tor daemons and write their statistics to InfluxDB 2.

The entry point the image and the original's users run: arguments, signals, exit status.
The daemon itself is the package tor2influxdb2 (see its __init__ for the layout).

Exit status: 0 after a clean stop (SIGTERM, SIGINT, SIGHUP) or when -t polled every tor,
1 when -t could not poll a tor, 2 for a configuration problem (every one listed on stderr).
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading

from tor2influxdb2 import __version__

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STATUS_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tor_to_influxdb2.py",
        description="Poll Tor control ports and write their statistics to InfluxDB 2 "
                    "(configured by environment variables; see README.md).")
    parser.add_argument("-t", "--test", action="store_true",
                        help="poll every tor once and print the measurements; upload nothing")
    parser.add_argument("--schema", action="store_true",
                        help="print every measurement, field, type and tag the daemon can write, as JSON")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, env=None) -> int:
    args = parse_args(argv)
    if args.schema:
        from tor2influxdb2.daemon import print_schema
        return print_schema(sys.stdout)

    from tor2influxdb2.errors import ConfigError
    from tor2influxdb2.redact import mask
    from tor2influxdb2.settings import config_from_env
    env = os.environ if env is None else env
    mode = "test" if args.test else "daemon"
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
    for host in settings.tor_hosts[:20]:
        LOG.info("tor host: %s", host.describe())
    if len(settings.tor_hosts) > 20:
        LOG.info("... and %d more tor hosts", len(settings.tor_hosts) - 20)
    if args.test:
        return daemon.run_test_mode(settings, sys.stdout)

    stop = threading.Event()
    # A signal handler runs in the main thread between two of its bytecodes, maybe in the middle of
    # a write to stderr or with a lock held: it only queues the signal (SimpleQueue.put is reentrant),
    # and this thread logs it and sets `stop`.
    received: queue.SimpleQueue = queue.SimpleQueue()

    def on_signal(signum, _frame):
        received.put(signum)

    def handle_signals():
        while True:
            signum = received.get()
            name = signal.Signals(signum).name
            if signum in STATUS_SIGNALS:
                LOG.info("received %s: %s", name, status_line())
            elif stop.is_set():
                LOG.info("received %s again: already stopping", name)
            else:
                LOG.info("received %s: stopping", name)
                stop.set()

    def status_line() -> str:
        return f"running; {len(settings.tor_hosts)} tor(s) every {settings.period} s"

    threading.Thread(target=handle_signals, name="signals", daemon=True).start()
    for sig in STOP_SIGNALS + STATUS_SIGNALS:
        signal.signal(sig, on_signal)
    try:
        status = daemon.run(settings, stop)
    finally:
        # From here on a late signal must not end the process by its default action (Python
        # restores SIG_DFL for its own handlers while it shuts down): ignore them.
        for sig in STOP_SIGNALS + STATUS_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    return status


def entry() -> int:
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
