"""One masking step for every text that leaves the process.

Logs, the health file, ``-t`` output, configuration messages and the Prometheus endpoint all pass
through :func:`mask`. It replaces every registered secret (passwords, tokens, proxy credentials,
key passwords) in its plain form and in the encoded forms an error message may carry it in:
repr/escape sequences, JSON, URL (percent) encoding, HTML, the control protocol's quoting, hex
and base64. Text that came from a peer is masked *before* it is shortened (:func:`clip`), so a
secret can never be cut in half and leak its first part.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
import urllib.parse

MASK = "****"
#: Shorter secrets are masked too, but only in their plain form: encoded forms of one or two
#: characters would mask ordinary text.
MIN_ENCODED = 4


def _forms(secret: str) -> set[str]:
    forms = {secret}
    if len(secret) < MIN_ENCODED:
        return forms
    raw = secret.encode("utf-8", "surrogatepass")
    forms |= {
        repr(secret)[1:-1],
        secret.encode("unicode_escape").decode("ascii"),
        raw.decode("latin-1").encode("unicode_escape").decode("ascii"),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # JSON may escape '/' too (Go, PHP)
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret, safe="").lower(),
        secret.replace("\\", "\\\\").replace('"', '\\"'),  # the control protocol's QuotedString
        _c_escaped(raw, '"\\'), _c_escaped(raw, ""),  # ... with octal escapes, as tor quotes (esc_for_log)
        html.escape(secret), html.escape(secret, quote=False),  # an HTML error page (a proxy's)
        html.escape(secret).replace("&#x27;", "&#39;"),
        raw.hex(), raw.hex().upper(),
        base64.b64encode(raw).decode("ascii"),
        base64.b64encode(raw).decode("ascii").rstrip("="),
        base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
        str(raw)[2:-1],  # bytes repr: b'...'
    }
    return {f for f in forms if f}


def _c_escaped(raw: bytes, escaped: str) -> str:
    """C escapes: bytes outside printable ASCII as \\ooo (octal), the characters in `escaped` as \\c."""
    return "".join(f"\\{chr(b)}" if chr(b) in escaped else chr(b) if 32 <= b < 127 else f"\\{b:03o}" for b in raw)


class Redactor:
    """A set of secrets and a compiled pattern that masks all their forms. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, *secrets: str | None) -> None:
        """Register secrets (None and "" are ignored)."""
        with self._lock:
            for secret in secrets:
                if secret:
                    self._forms |= _forms(secret)
            self._compile()

    def add_form(self, form: str) -> None:
        """Register one exact text to mask (e.g. a base64 "user:pass" of a proxy's Basic auth)."""
        if form:
            with self._lock:
                self._forms.add(form)
                self._compile()

    def _compile(self) -> None:
        # A secret of fewer than MIN_ENCODED characters is masked only where it stands alone
        # (not inside a word): masking every "t" of a one-letter test token would mask every text.
        parts = [re.escape(f) if len(f) >= MIN_ENCODED else rf"(?<![A-Za-z0-9]){re.escape(f)}(?![A-Za-z0-9])"
                 for f in sorted(self._forms, key=len, reverse=True)]
        self._pattern = re.compile("|".join(parts)) if parts else None

    def clear(self) -> None:
        with self._lock:
            self._forms, self._pattern = set(), None

    def mask(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    def __contains__(self, text: str) -> bool:
        """True when `text` holds a registered secret in any form."""
        pattern = self._pattern
        return bool(pattern and pattern.search(text))


#: The process-wide redactor: settings register every secret here before anything is printed.
REDACTOR = Redactor()


def mask(text: str) -> str:
    """`text` with every registered secret, in any known form, replaced by ****."""
    return REDACTOR.mask(text)


def clip(text: object, limit: int = 200) -> str:
    """Text from a peer or an exception, safe to show: masked first, then on one line, printable,
    and at most `limit` characters."""
    masked = REDACTOR.mask(str(text))
    one_line = " ".join(masked.split())
    printable = "".join(c if c.isprintable() else "?" for c in one_line)
    return printable if len(printable) <= limit else printable[:limit - 3] + "..."
