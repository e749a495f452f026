"""From a MetricsPort page (Prometheus text) to samples: select the wanted families, then parse.

Selection is a cheap scan of the page's lines: a family starts at its ``# TYPE`` line and owns the
sample lines named after it (a histogram's ``_bucket``, ``_sum`` and ``_count``); only the lines of
wanted families are kept, and only those are handed to prometheus_client's text parser, which
handles the grammar (label quoting and escapes, values). The page of a relay has ~330 lines, of
which the default families are ~60. What the library made of a series is remembered, so later
pages parse only the values of known series (see :class:`PageParser`).

Each family becomes one measurement named as tor's ``# TYPE`` line names it, the mapping of
InfluxDB 2 scrapers and Telegraf's ``inputs.prometheus`` with metric_version 1:

* tags: the series' labels, plus the common tags (host, service, version); a label that has the
  name of a common tag is renamed ``exported_<name>`` (as Prometheus does);
* fields, all floats: ``counter``, ``gauge`` or ``value`` (untyped) by the family's type; a
  histogram gives ``count``, ``sum`` and one field per bucket named by its upper bound as Go
  prints it (``1000``, ``1e+06``, ``+Inf``); a summary ``count``, ``sum`` and one per quantile.

The family name is tor's, never a parser's: prometheus_client strips ``_total`` from counter
names (which would merge ``tor_relay_connections_total`` into the gauge ``tor_relay_connections``),
so the name and type are taken from the scan, never from the parser's result.

Label values come from a peer: a backslash or a control character becomes ``_`` (a tag must read
back as written), values are cut at :data:`MAX_LABEL_VALUE` characters, label names that are not
plain names are cleaned the same way. A value that is not finite (NaN, +Inf) is left out.

The ``onion`` label (onion services: their address) follows ONION_LABEL: ``hash`` (the default)
replaces the address by the first 16 hex digits of its SHA-256 (``printf %s ADDRESS | sha256sum |
cut -c1-16``, ADDRESS as tor writes it, without ``.onion``), ``address`` keeps it, ``drop``
removes the label and sums the series of all services into one.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import math
import operator
import re
from typing import Callable, Iterable, Mapping

from ...errors import Failure, Reason, SourceError
from ...model import Sample
from ...redact import clip
from .schema import DEFAULT_FAMILIES, HS_PREFIX

ONION_MODES = ("hash", "address", "drop")
ONION_LABEL = "onion"
HASH_DIGITS = 16
MAX_LABEL_VALUE = 128
MAX_LABEL_NAME = 64
MAX_NAME = 200
#: At most this many series (samples) per page; a page with more fails (Reason.TOO_LARGE).
MAX_SERIES = 20_000
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
FIELD_OF = {"counter": "counter", "gauge": "gauge", "untyped": "value"}

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,63}\Z")
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


@dataclasses.dataclass(frozen=True)
class FamilySelection:
    """Which families a scrape keeps. ``names``: exact family names; ``prefixes``: every family
    whose name starts with one of them; ``everything``: all families. ``only`` narrows a family to
    the series with all the given labels (label, value), e.g. the default's OR connections."""

    names: frozenset = frozenset()
    prefixes: tuple = ()
    everything: bool = False
    only: Mapping = dataclasses.field(default_factory=dict)

    def wants(self, family: str) -> bool:
        return self.everything or family in self.names or family.startswith(self.prefixes)

    def describe(self) -> str:
        if self.everything:
            return "all families"
        parts = sorted(self.names) + [p + "*" for p in self.prefixes]
        return ", ".join(parts) if parts else "no family"


#: The default: the handshakes, circuits, streams, DoS, flags, traffic, exit DNS and load
#: families, the OR connections open now, and every onion-service family.
DEFAULT_SELECTION = FamilySelection(frozenset(DEFAULT_FAMILIES), (HS_PREFIX,), False,
                                    {"tor_relay_connections": (("state", "opened"), ("type", "OR"))})
ALL_SELECTION = FamilySelection(everything=True)


def _protocol(text: str) -> SourceError:
    return SourceError(Failure(Reason.PROTOCOL, text))


def _allowed(name: str, type_: str) -> tuple[str, ...]:
    if type_ == "histogram":
        return (name + "_bucket", name + "_sum", name + "_count")
    if type_ == "summary":
        return (name, name + "_sum", name + "_count")
    return (name,)


def _needles(only: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The texts a sample line must contain to have these labels (values escaped as the format
    writes them): a cheap superset test before parsing; the labels are checked after."""
    out = []
    for key, value in only:
        escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        out.append(f'{key}="{escaped}"')
    return tuple(out)


def select(text: str, selection: FamilySelection) -> dict[str, tuple[str, list[str]]]:
    """The sample lines of the wanted families: name -> (type, lines), in page order.

    A family runs from its ``# TYPE`` line to the next one. When a few counts show that each of
    its lines is a comment or a series of that family (as tor writes them), its lines are skipped
    or kept as a block; otherwise (a histogram, or a sample line of another name, which starts an
    untyped family of its own as in Prometheus) they are read one by one.
    Raises SourceError(PROTOCOL) when the page is not a tor's (an unknown type, a line that is no
    sample, no ``tor_`` family at all), TOO_LARGE past 8 * MAX_SERIES kept lines."""
    families: dict[str, tuple[str, list[str]]] = {}
    needles = {name: _needles(only) for name, only in selection.only.items()}
    state = _Scan(families, selection, needles)
    seen_tor = False
    previous = None
    at, size = text.find("# TYPE"), len(text)
    while at >= 0:
        if at and text[at - 1] != "\n":  # not at a line's start: part of a line
            at = text.find("# TYPE", at + 6)
            continue
        end = text.find("\n", at)
        end = size if end < 0 else end
        parts = text[at:end].split()
        if len(parts) != 4 or parts[1] != "TYPE" or parts[3] not in TYPES or len(parts[2]) > MAX_NAME \
                or not NAME_RE.fullmatch(parts[2]):
            raise _protocol(f"a malformed TYPE line: {clip(text[at:end], 80)}")
        state.region(text, previous, at)
        name, type_ = parts[2], parts[3]
        seen_tor = seen_tor or name.startswith("tor_")
        state.family(name, type_)
        previous = end
        at = text.find("# TYPE", end)
    state.region(text, previous, size)
    if not seen_tor:
        raise _protocol("not tor's MetricsPort: the page has no tor_ metric family")
    return families


class _Scan:
    """The state of :func:`select`: the current family and where its lines go."""

    __slots__ = ("families", "selection", "needles", "name", "allowed", "target", "target_needles", "kept")

    def __init__(self, families: dict, selection: FamilySelection, needles: dict):
        self.families, self.selection, self.needles = families, selection, needles
        self.name, self.allowed = "", ()
        self.target: list[str] | None = None
        self.target_needles: tuple[str, ...] = ()
        self.kept = 0

    def family(self, name: str, type_: str) -> None:
        self.name, self.allowed = name, _allowed(name, type_)
        self.target, self.target_needles = None, ()
        if self.selection.wants(name):
            entry = self.families.setdefault(name, (type_, []))
            if entry[0] == type_:  # a family typed twice, differently: the first type counts
                self.target, self.target_needles = entry[1], self.needles.get(name, ())

    def region(self, text: str, start: int | None, end: int) -> None:
        """The lines from the end of a TYPE line (None: the page's start) to `end`."""
        if start is not None and len(self.allowed) == 1:
            # every line is preceded by "\n"; the last "\n" (if any) ends the region. Counted in
            # place: an unwanted family's lines are never copied
            lines = text.count("\n", start, end) - (end > start and text[end - 1] == "\n")
            name = self.name
            own = (text.count("\n#", start, end) + text.count(f"\n{name}{{", start, end)
                   + text.count(f"\n{name} ", start, end))
            if own == lines:  # every line is a comment or a series of this family
                if self.target is not None:
                    kept = [line for line in text[start:end].split("\n") if line and line[0] != "#"]
                    for needle in self.target_needles:
                        kept = [line for line in kept if needle in line]
                    self._keep(kept)
                return
        region = text[start if start is not None else 0:end]
        if not region or region.isspace():
            return
        for line in region.split("\n"):
            self.line(line)

    def _keep(self, lines: list[str]) -> None:
        self.kept += len(lines)
        if self.kept > MAX_SERIES * 8:
            raise SourceError(Failure(Reason.TOO_LARGE, f"more than {MAX_SERIES * 8} lines of wanted families"))
        self.target.extend(lines)

    def line(self, line: str) -> None:
        if not line or line[0] == "#" or line.isspace():
            return
        if line[0] in " \t":
            line = line.lstrip()
        m = NAME_RE.match(line)
        end = m.end() if m else 0
        if not end or end == len(line) or line[end] not in "{ \t" or end > MAX_NAME:
            raise _protocol(f"not Prometheus text: {clip(line, 80)}")
        metric = line[:end]
        if metric not in self.allowed:  # a sample without its TYPE line: an untyped family of its own
            self.name, self.allowed, self.target, self.target_needles = metric, (metric,), None, ()
            if self.selection.wants(metric):
                entry = self.families.setdefault(metric, ("untyped", []))
                if entry[0] == "untyped":
                    self.target, self.target_needles = entry[1], self.needles.get(metric, ())
        if self.target is None:
            return
        if self.target_needles and not all(n in line for n in self.target_needles):
            return
        self._keep([line])


def go_float(value: float) -> str:
    """A float as Go's fmt.Sprint writes it (the field names Telegraf and InfluxDB give buckets)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exponent  # digits before the decimal point
    minus = "-" if sign else ""
    e = point - 1
    if e < -4 or e >= 6:  # Go's %v: shortest digits, exponent form outside [1e-4, 1e6)
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return minus + text + "0" * (point - len(text))
    return f"{minus}{text[:point]}.{text[point:]}"


def _clean(value: str, limit: int = MAX_LABEL_VALUE) -> str:
    if len(value) <= limit and "\\" not in value and value.isprintable():
        return value
    return "".join("_" if c == "\\" or not c.isprintable() else c for c in value[:limit])


def onion_hash(address: str) -> str:
    """The tag value ONION_LABEL=hash gives an onion address."""
    return hashlib.sha256(address.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]


class _Series:
    """What one series of a page (one line, as tor writes it up to its value) turns into: the
    field its value goes to, its labels (a histogram's without ``le``), whether the selection
    keeps it, and per set of common tag names the tags its labels give with how to merge them
    with the common ones in key order (see :meth:`PageParser._tagger`). The same for every tor
    that writes that line: shared by the parsers of one selection and ONION_LABEL."""

    __slots__ = ("field", "labels", "keep", "extras")

    def __init__(self, field: str, labels: dict, keep: bool):
        self.field, self.labels, self.keep = field, labels, keep
        self.extras: dict[tuple, tuple] = {}  # common tag names -> PageParser._tagger(...)


#: (selection, ONION_LABEL) -> the series their parsers learnt: one copy for a fleet of relays
#: (1,000 relays write the same ~60 series lines; only the values and the common tags differ).
_SHARED: dict[tuple[int, str], tuple[FamilySelection, dict]] = {}


class PageParser:
    """Turns pages into samples, for one selection and ONION_LABEL mode.

    Tor writes the same series at every scrape; only the values change. So what the library
    made of a series (its labels) and the tags derived from it are kept, keyed by the series'
    text up to its value, and the next scrapes parse only the values of known series (with the
    rules of the library's own value parser). New series, and any line that does not split
    plainly into series and value, go to the library. The cache holds at most CACHE_MAX series.
    A tor's tag sets are not kept between pages: each is made anew from pairs the fleet shares
    (1,000 relays would otherwise keep ~60,000 tag sets)."""

    CACHE_MAX = 65536  #: series known, shared by the parsers of one selection and ONION_LABEL

    def __init__(self, selection: FamilySelection = DEFAULT_SELECTION, onion_label: str = "hash"):
        if onion_label not in ONION_MODES:
            raise ValueError(f"onion_label must be one of {ONION_MODES}")
        self.selection, self.onion_label = selection, onion_label
        shared = _SHARED.setdefault((id(selection), onion_label), (selection, {}))
        self._cache: dict[tuple[str, str, str], _Series] = shared[1]

    def parse(self, body: bytes | str, common: tuple[tuple[str, str], ...], time_ms: int) -> list[Sample]:
        """Samples of a page; SourceError (PROTOCOL, TOO_LARGE) when it is not a tor's page."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            try:
                text = bytes(body).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _protocol(f"the page is not UTF-8 text (byte {exc.start})") from None
        else:
            text = body
        if not text.strip():
            raise _protocol("the MetricsPort sent an empty page")
        families = select(text, self.selection)
        common = tuple(common)
        names = tuple(k for k, _ in common)
        out: dict[tuple, dict] = {}
        merge = self.onion_label == "drop"
        cache = self._cache
        isfinite = math.isfinite
        for name, (type_, lines) in families.items():
            found: list[tuple[_Series, float]] = []
            new: list[str] = []
            for line in lines:
                key, value = _split(line)
                series = cache.get((name, type_, key)) if key is not None else None
                if series is None or value is None:
                    new.append(line)
                else:
                    found.append((series, value))
            if new:
                found += self._parse_new(name, type_, new)
            for series, value in found:
                if not series.keep or not isfinite(value):
                    continue
                made = series.extras.get(names)
                if made is None:
                    made = series.extras[names] = self._tagger(series.labels, names)
                where = (name, made[1](common + made[0]))
                fields = out.get(where)
                if fields is None:
                    if len(out) >= MAX_SERIES:
                        raise SourceError(Failure(Reason.TOO_LARGE, f"more than {MAX_SERIES} series"))
                    out[where] = {series.field: value}
                elif merge and series.field in fields:  # ONION_LABEL=drop: the services' series summed
                    fields[series.field] += value
                else:  # a new field of the series (a bucket), or the same series twice: the last one counts
                    fields[series.field] = value
        make = tuple.__new__  # Sample(...) without the NamedTuple constructor's extra call (the hot path)
        return [make(Sample, (name, tags, fields, time_ms)) for (name, tags), fields in out.items() if fields]

    def _parse_new(self, name: str, type_: str, lines: list[str]) -> Iterable[tuple[_Series, float]]:
        """Parse lines with prometheus_client; remember each series for the next pages."""
        from prometheus_client.parser import text_string_to_metric_families  # lazy: only this source needs it

        page = f"# TYPE {name} {type_}\n" + "\n".join(lines) + "\n"
        try:
            metrics = list(text_string_to_metric_families(page))
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise _protocol(f"family {clip(name, 80)} is not valid Prometheus text: {clip(exc, 100)}") from None
        library_type = "unknown" if type_ == "untyped" else type_  # the library's name for untyped
        samples = [s for m in metrics if m.type == library_type for s in m.samples]
        cacheable = len(metrics) == 1 and len(samples) == len(lines)
        only = self.selection.only.get(name, ())
        cache = self._cache
        out = []
        for index, sample in enumerate(samples):
            series = self._series(name, type_, sample.name, sample.labels, only)
            if cacheable:
                key, _ = _split(lines[index])
                if key is not None:
                    if len(cache) >= self.CACHE_MAX:
                        cache.clear()
                    cache[(name, type_, key)] = series
            out.append((series, float(sample.value)))
        return out

    @staticmethod
    def _series(name: str, type_: str, sample_name: str, labels: dict, only) -> _Series:
        keep = all(labels.get(k) == v for k, v in only)
        field = FIELD_OF.get(type_)
        if field is not None:
            return _Series(field, labels, keep)
        suffix = sample_name[len(name):]
        if suffix in ("_sum", "_count"):
            return _Series(suffix[1:], labels, keep)
        bound_label = "le" if type_ == "histogram" else "quantile"
        labels = dict(labels)
        bound = labels.pop(bound_label, None)
        try:
            return _Series(go_float(float(bound)), labels, keep)
        except (TypeError, ValueError):
            raise _protocol(f"family {clip(name, 80)}: a series without a numeric {bound_label} label") from None

    def _tagger(self, labels: dict, names: tuple) -> tuple[tuple, Callable[[tuple], tuple]]:
        """(the tags a series' labels give, what makes a tag set of ``common + those``): the set is
        sorted by key as model.make_tags sorts it. Keys are unique (a label named like a common tag
        is renamed), so the order depends on the common tags' names only, not on their values."""
        extra = self._extra(labels, set(names))
        keys = names + tuple(k for k, _ in extra)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        if len(order) >= 2:
            return extra, operator.itemgetter(*order)
        return extra, tuple

    def _extra(self, labels: dict, reserved: set) -> tuple:
        """The tags a series' labels give (cleaned, the onion label per ONION_LABEL)."""
        extra = []
        for label, value in labels.items():
            if not LABEL_NAME_RE.match(label):
                label = _BAD_NAME_CHARS.sub("_", label[:MAX_LABEL_NAME]) or "_"
            if label == ONION_LABEL:
                if self.onion_label == "drop":
                    continue
                if self.onion_label == "hash":
                    value = onion_hash(value)
            if label in reserved:
                label = "exported_" + label
            value = _clean(value)
            if value != "":  # an empty tag is no tag (model.make_tags)
                extra.append((label, value))
        return tuple(extra)


def _split(line: str) -> tuple[str | None, float | None]:
    """A sample line's series (its text up to the value) and its value, or (None, None) when the
    line does not split plainly (then the library parses it). Values follow the library's rules
    (a float literal without '_'); a timestamp, if any, is ignored as the daemon stamps samples."""
    close = line.rfind("}")
    if close >= 0:
        key, parts = line[:close + 1], line[close + 1:].split()
    else:
        key, *parts = line.split()
    if not 1 <= len(parts) <= 2 or "_" in parts[0]:
        return None, None
    try:
        return key, float(parts[0])
    except ValueError:
        return None, None
