"""The suite-wide secret check: no secret a fixture uses may appear in any output of the daemon.

Fixtures register their secrets here (support.Tor's passwords, tornet's, the InfluxDB stand-in's
token, and every secret in an environment handed to the daemon: INFLUX_TOKEN, the token file, the
passwords of TOR_HOSTS / TOR_HOSTS_FILE entries, credentials in INFLUX_URL). Outputs are recorded
as they are made: the log of every support.Daemon, stdout and stderr of every run_daemon (and of
`docker run` / `docker logs` of the image), every log record of the daemon's loggers in-process
(as the daemon's own handler would write it), and, at the end, every health file under pytest's
temporary directories. At the session's end every output is searched for every secret in every
encoded form tor2influxdb2.redact knows (repr, JSON, URL, the control protocol's quoting, hex,
base64, ...); one hit fails the run, and the report names the test and the output, never the
secret.

Secrets of fewer than 4 characters (tornet's token "t") are searched only in the outputs of the
daemon that was given them, and only where they stand alone (as the redactor masks them): in
other text they are ordinary letters.

Importable without pytest (bench/ imports tests/support.py); conftest.py registers
:class:`Plugin`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
from pathlib import Path

MIN_GLOBAL = 4
_lock = threading.Lock()
_secrets: set[str] = set()
_outputs: list[tuple[str, str, object, frozenset]] = []  # (test, where, text or callable, own secrets)
_current = ["(outside any test)"]


def secret(*values: str | None) -> None:
    """Register secrets that no output of the daemon may show."""
    with _lock:
        _secrets.update(v for v in values if v)


def env_secrets(env: dict) -> frozenset:
    """The secrets in an environment given to the daemon (registered, and returned)."""
    found = {env.get("INFLUX_TOKEN", "").strip()}
    texts = [env.get("TOR_HOSTS", "")]
    for name in ("INFLUX_TOKEN_FILE", "TOR_HOSTS_FILE"):
        path = (env.get(name) or "").strip()
        try:
            content = Path(path).read_text(encoding="utf-8-sig") if path else ""
        except (OSError, UnicodeError):
            content = ""
        if name == "INFLUX_TOKEN_FILE":
            found.add(content.strip())
        else:
            texts.append(content)
    for text in texts:
        for entry in re.split(r"[,\n]", text):
            found.add(_entry_password(entry.strip()))
    for name in ("INFLUX_URL", "INFLUX_HOST"):
        try:
            parts = urllib.parse.urlsplit((env.get(name) or "").strip())
            found |= {parts.password or "", (parts.username or "") if parts.password else ""}
        except ValueError:
            pass
    found = frozenset(f for f in found if f)
    secret(*found)
    return found


def _entry_password(entry: str) -> str:
    """The PASSWORD of HOST:PORT:PASSWORD:NAME, [IPv6]:PORT:PASSWORD:NAME, unix:PATH:PASSWORD:NAME."""
    if entry.startswith("unix:"):
        fields = entry[5:].split(":")[1:]
    elif entry.startswith("["):
        fields = entry.partition("]")[2].split(":")[2:]
    else:
        fields = entry.split(":")[2:]
    return ":".join(fields[:-1])


def output(where: str, text, own: frozenset = frozenset()) -> None:
    """Record an output of the daemon: a string, or a callable giving it at the session's end."""
    with _lock:
        _outputs.append((_current[0], where, text, own))


class _Records(logging.Handler):
    """Every record of the daemon's loggers, masked as the daemon's own handler masks it."""

    PREFIXES = ("tor2influxdb2", "stem", "urllib3")

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(self.PREFIXES):
            return
        try:
            from tor2influxdb2.redact import REDACTOR
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            output(f"log record {record.name}", REDACTOR.mask(text))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is no output
            pass


def _health_files(base: Path):
    for root, _dirs, files in os.walk(base):
        for name in files:
            path = Path(root) / name
            try:
                if path.is_symlink() or path.stat().st_size > 4096:
                    continue
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if re.match(r"^(OK|FAILED) \d+", text):
                yield path, text


def find_leaks(outputs, secrets) -> list[str]:
    """Where a secret shows in an output: 'test: where (a secret of N characters)' lines."""
    from tor2influxdb2.redact import Redactor
    everywhere = Redactor()
    long_ones = sorted(s for s in secrets if len(s) >= MIN_GLOBAL)
    everywhere.add(*long_ones)
    leaks = []
    for test, where, text, own in outputs:
        if callable(text):
            text = text()
        if not text:
            continue
        mine = Redactor()
        mine.add(*own)
        if text in everywhere or text in mine:
            hits = [s for s in sorted(set(long_ones) | own, key=len, reverse=True)
                    if text in _single(s)]
            sizes = ", ".join(f"{len(s)} characters" for s in hits[:3])
            leaks.append(f"{test}: {where} shows a secret ({sizes})")
    return leaks


def _single(value: str):
    from tor2influxdb2.redact import Redactor
    one = Redactor()
    one.add(value)
    return one


class Plugin:
    """Registered by conftest.py."""

    def __init__(self):
        self.handler = _Records(level=logging.DEBUG)

    def pytest_configure(self, config):
        logging.getLogger().addHandler(self.handler)
        self.config = config

    def pytest_runtest_setup(self, item):
        _current[0] = item.nodeid

    def pytest_runtest_teardown(self, item):
        _current[0] = item.nodeid

    def pytest_sessionfinish(self, session, exitstatus):
        logging.getLogger().removeHandler(self.handler)
        factory = getattr(session.config, "_tmp_path_factory", None)
        outputs = list(_outputs)
        if factory is not None:
            try:
                base = factory.getbasetemp()
            except Exception:  # noqa: BLE001 - no test made a temporary directory
                base = None
            if base is not None:
                outputs += [("(health file)", str(path), text, frozenset()) for path, text in _health_files(base)]
        leaks = find_leaks(outputs, set(_secrets))
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
        if leaks:
            if reporter is not None:
                reporter.section("secret check: a secret of a fixture was shown", sep="=", red=True)
                for line in leaks:
                    reporter.line(line, red=True)
            session.exitstatus = 1
        elif reporter is not None:
            reporter.line(f"secret check: {len(_secrets)} secrets, {len(outputs)} outputs of the daemon, "
                          "no secret shown")
