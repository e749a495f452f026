"""Tor's control protocol, the part the daemon speaks: commands out, replies in, bounded.

:class:`ReplyReader` is fed the bytes a control port sends and returns complete replies. It is
incremental (bytes arrive in any pieces), and it bounds what a peer can make it hold: a line
longer than :data:`MAX_LINE`, more than :data:`MAX_KEPT` bytes of values kept (counted per piece
fed: its bytes and a line's overhead, but those of counted blocks), or a reply longer than
:data:`MAX_REPLY` raise :class:`ProtocolViolation`.
Data blocks of keys whose lines are only counted (``circuit-status``, ``stream-status``) are
counted as they stream by, never stored.

stem parses the replies of the connection set-up (PROTOCOLINFO, AUTHCHALLENGE) from
:meth:`Reply.as_stem`; the replies of every poll are read here, in one pass (stem's reader costs
~90 us per reply and reads unbounded lines from a blocking file).
"""

from __future__ import annotations

import re

import stem.response

from ...errors import Failure, Reason
from ...redact import clip

MAX_LINE = 64 * 1024
MAX_KEPT = 1024 * 1024
MAX_REPLY = 32 * 1024 * 1024
_LINE_OVERHEAD = 64  # what a kept line costs beyond its bytes (a str object, a list slot)
_NOT_KEPT = _LINE_OVERHEAD + 1  # a counted line's share of a piece beyond its characters (at least its LF)
_LONG_CHUNK = 2048  # a chunk shorter than this holds no long line worth finding (ReplyReader's `long`)
_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips (str.strip() strips more)
#: "250-key" -> "key" of the keys of poll replies seen so far, per set of counted keys (those are not
#: in it): the readers of every connection share it; a partition and a lookup cost less than slicing
#: the line twice and hashing the new key. Bounded: cleared when full (a peer may send any keys).
_NAMES: dict[frozenset, dict[str, str]] = {}
_MAX_NAMES = 4096
UNRECOGNIZED_RE = re.compile(r'^Unrecognized (?:configuration )?key "([^"]*)"', re.IGNORECASE)


class ProtocolViolation(Exception):
    """The peer sent something the control protocol does not allow, or too much of it."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.failure = Failure(reason, message)


class Reply:
    """One complete reply.

    ``status`` is the code of its final line, ``message`` that line's text. ``values`` maps
    keywords to their text (GETINFO ``key=value`` lines and data blocks; GETCONF ``key=value``,
    or None for a key at its default); ``counts`` maps counted keys to their number of non-empty
    lines."""

    __slots__ = ("status", "message", "values", "counts", "lines")

    def __init__(self, status: int, message: str, values: dict, counts: dict, lines: list):
        self.status, self.message, self.values, self.counts, self.lines = status, message, values, counts, lines

    @property
    def ok(self) -> bool:
        return self.status == 250

    def unrecognized_key(self) -> str | None:
        """For a 552 "Unrecognized key" answer: the key tor named."""
        match = UNRECOGNIZED_RE.match(self.message) if self.status == 552 else None
        return match.group(1) if match else None

    def failure(self, what: str) -> Failure:
        return Failure(Reason.TOR_ERROR, f"tor answered {self.status} to {what}: {clip(self.message, 160)}")

    def as_stem(self):
        """The reply as a stem ControlMessage (for stem.response.convert)."""
        parsed = [(str(status), divider, content) for status, divider, content in self.lines]
        raw = b"".join(f"{s}{d}".encode() + c + b"\r\n" for s, d, c in parsed)
        return stem.response.ControlMessage(parsed, raw)


class ReplyReader:
    """Turns the bytes of one control connection into :class:`Reply` objects, bounded.

    `counted` names the keys whose values are only counted (by non-empty lines). `long` names keys
    whose one-line value is long (bw-event-cache: ~4.6 KB): their line is found with find(), which
    skips it, rather than scanned by split(); the lines are the same. With `keep_lines` the raw
    lines are kept too (for :meth:`Reply.as_stem`; set-up replies only)."""

    __slots__ = ("counted", "keep_lines", "_markers", "_names", "_buf", "_total", "_kept", "_lines", "_values",
                 "_counts", "_data_key", "_data_counted", "_data", "_data_first", "_data_count")


    def __init__(self, counted: frozenset[str] = frozenset(), keep_lines: bool = False,
                 long: frozenset[str] = frozenset()):
        self.counted, self.keep_lines = counted, keep_lines
        self._markers = tuple(f"250-{key}=" for key in sorted(long))
        self._names = _NAMES.setdefault(counted, {})
        self._buf = b""
        self._reset()

    def _reset(self) -> None:
        self._total = 0
        self._kept = 0
        self._lines: list = []
        self._values: dict = {}
        self._counts: dict = {}
        self._data_key: str | None = None
        self._data_counted = False
        self._data: list = []
        self._data_first = False  # _data[0] is the text after "+key=", not a (dot-stuffed) line of the block
        self._data_count = 0

    @property
    def idle(self) -> bool:
        """True between replies with nothing buffered."""
        return not self._buf and not self._total

    def feed(self, data: bytes) -> list[Reply]:
        """Add bytes; return the replies they complete (often none or one)."""
        buf = self._buf + data if self._buf else data
        end = buf.rfind(b"\n") + 1  # what follows the last line break is an incomplete line
        rest = buf[end:] if end < len(buf) else b""
        if len(rest) > MAX_LINE:
            raise ProtocolViolation(Reason.TOO_LARGE, f"a reply line is longer than {MAX_LINE // 1024} KiB")
        self._total += end
        if self._total + len(rest) > MAX_REPLY:
            raise ProtocolViolation(Reason.TOO_LARGE, f"a reply is longer than {MAX_REPLY // 2 ** 20} MiB")
        self._buf = rest
        if not end:
            return []
        chunk = buf[:end] if rest else buf
        try:
            text = chunk.decode()
        except UnicodeDecodeError:
            text = None
        plain = text is not None and len(text) == len(chunk)  # ASCII, the common case: decoded at once
        if not plain:
            lines = _split_lines(chunk, b"\r\n", b"\n")
        elif self._markers and end > _LONG_CHUNK:
            lines = _split_around(text, self._markers)
        else:
            lines = _split_lines(text, "\r\n", "\n")
        if end > MAX_LINE:  # only then can a line be too long
            for line in lines:
                if len(line) > MAX_LINE:
                    raise ProtocolViolation(Reason.TOO_LARGE, f"a reply line is longer than {MAX_LINE // 1024} KiB")
        if not plain:  # line by line, what is not UTF-8 replaced (a kept length is then of characters)
            lines = [line.decode("utf-8", "replace") for line in lines]
        replies = []
        fast = not self.keep_lines
        counted, values, names = self.counted, self._values, self._names
        # What the reply keeps is counted per piece, not per line: the piece's lines as if all were kept
        # (bytes, at least their characters), less the lines of counted blocks, which are not. Checked when a
        # reply ends and at the end of the piece; the lines after a reply's end in the same piece are not
        # counted for the next one (at most one piece: the caller's recv() size).
        kept = self._kept + end + _LINE_OVERHEAD * len(lines)
        dropped = 0
        for line in lines:
            if self._data_key is not None:  # inside a data block
                if line == ".":
                    if self._data_counted:
                        self._counts[self._data_key] = self._data_count
                    else:
                        values[self._data_key] = self._data_text()
                    self._data_key = None
                    self._data = []
                elif self._data_counted:
                    dropped += len(line) + _NOT_KEPT
                    if line.strip(_SPACE):
                        self._data_count += 1
                else:
                    self._data.append(line)  # (dot-stuffing is undone at the block's end)
                continue
            if fast:  # the common line of a poll: 250-key=value
                key, eq, value = line.partition("=")
                name = names.get(key)  # the key without "250-", for a key seen before (not a counted one)
                if name is not None or key[:4] == "250-":
                    if name is None:
                        name = key[4:]
                        if name in counted:
                            self._counts[name] = 1 if value.strip(_SPACE) else 0
                            continue
                        if len(names) >= _MAX_NAMES:
                            names.clear()
                        names[key] = name
                    values[name] = value if eq else None
                    continue
            reply = self._status_line(line)
            if reply is not None:
                if kept - dropped > MAX_KEPT:
                    self._too_much()
                replies.append(reply)
                values, kept, dropped = self._values, 0, 0
        kept = max(0, kept - dropped)
        if kept > MAX_KEPT:
            self._too_much()
        self._kept = kept
        return replies

    def _data_text(self) -> str:
        """The value of the data block just ended: its lines joined, each line's dot-stuffing undone
        (a line that begins with "." lost that dot when tor sent it) but that of the "+key=" line's text."""
        data = self._data
        text = "\n".join(data)
        if text[:1] == "." or "\n." in text:  # rare: only then line by line
            skip = 1 if self._data_first else 0
            text = "\n".join(data[:skip] + [line[1:] if line[:1] == "." else line for line in data[skip:]])
        return text

    def _status_line(self, line: str) -> Reply | None:
        """A line outside data blocks that feed() does not read itself (all but 250-key=value)."""
        divider = line[3:4]
        code = line[:3]
        if len(line) < 4 or divider not in ("-", " ", "+") or not (code.isascii() and code.isdigit()):
            raise ProtocolViolation(Reason.PROTOCOL, "the peer does not speak tor's control protocol "
                                                     "(a reply line without a status code)")
        content = line[4:]
        if self.keep_lines:
            self._lines.append((int(code), divider, content.encode()))
        if divider == "+":
            key, _, first = content.partition("=")
            self._data_key = key
            self._data_counted = key in self.counted
            self._data_count = 1 if (first.strip(_SPACE) and self._data_counted) else 0
            self._data_first = bool(first) and not self._data_counted
            self._data = [first] if self._data_first else []
            return None
        if code == "250":
            key, eq, value = content.partition("=")
            if eq or divider == "-" or content != "OK":
                if key in self.counted:
                    self._counts[key] = 1 if value.strip(_SPACE) else 0
                else:
                    self._values[key] = value if eq else None
        if divider == " ":
            reply = Reply(int(code), content, self._values, self._counts, self._lines)
            self._reset()
            return reply
        return None

    def _too_much(self) -> None:
        raise ProtocolViolation(Reason.TOO_LARGE, f"a reply holds more than {MAX_KEPT // 2 ** 20} MiB of values")


def _split_lines(chunk, crlf, lf) -> list:
    """The lines of `chunk` (text or bytes that ends with a line break), without their line breaks:
    CRLF, as tor ends its lines, or a bare LF."""
    lines = chunk.split(crlf)
    if lf in chunk[:0].join(lines):  # a bare LF (a CR before it is not possible: that is CRLF)
        lines = [part for line in lines for part in line.split(lf)]
    lines.pop()  # the empty part after the last line break
    return lines


def _split_around(text: str, markers: tuple[str, ...]) -> list[str]:
    """_split_lines(text) (text that ends with a line break), but the first line that begins with
    one of `markers` is found by find() (memchr over the line, where split() compares every
    character) and cut out whole: the lines before it and after it are split as usual."""
    for marker in markers:
        start = text.find(marker)
        while start > 0 and text[start - 1] != "\n":  # only at the beginning of a line
            start = text.find(marker, start + 1)
        if start >= 0:
            stop = text.find("\n", start)  # there is one: the text ends with a line break
            line = text[start:stop - 1] if text[stop - 1] == "\r" else text[start:stop]
            before = _split_lines(text[:start], "\r\n", "\n") if start else []
            return before + [line] + _split_lines(text[stop + 1:], "\r\n", "\n")
    return _split_lines(text, "\r\n", "\n")


def quote(text: str) -> str:
    """A control-protocol QuotedString: backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
