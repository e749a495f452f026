"""Logging: one line per event on stderr, `<ISO time> <LEVEL> <message>`, every line masked.

The redaction filter is the last step before a line is written: whatever a library, a peer or a
traceback puts in a message, no registered secret (in any encoded form) reaches the stream.
stem's own protocol trace, which would show AUTHENTICATE "<password>", is never enabled."""

from __future__ import annotations

import logging
import sys

from .redact import REDACTOR

LOG = logging.getLogger("tor2influxdb2")


class RedactingFilter(logging.Filter):
    """Masks every registered secret in the message and in the traceback of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = str(record.msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = REDACTOR.mask(message), None
        if record.exc_text:
            record.exc_text = REDACTOR.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = REDACTOR.mask(record.stack_info)
        return True


def setup_logging(verbose: bool, stream=None) -> None:
    """Our debug lines with VERBOSE; other libraries only from WARNING (urllib3 from ERROR)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("stem").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
