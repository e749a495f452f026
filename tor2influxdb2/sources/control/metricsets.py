"""The metric sets: what the control port is asked, and the samples its answers make.

``METRIC_SETS`` chooses among :data:`SET_NAMES`; the default, ``core``, is exactly the
original's three measurements. Every set is one measurement with the common tags (host,
service, version) and the time the tor answered. What is asked, per poll:

* one ``GETINFO`` with ``version`` and the keys of core, status, accounting, guards and
  bandwidth: none of these keys fails on any kind of node, so one failing key never costs the
  others (a 552 for a key an older tor does not know drops that key, once);
  :data:`ACCOUNTING_DETAIL_KEYS` only while accounting was on at the previous poll (the poll that
  finds it switched on asks them at once, in one more round trip);
* for relays and bridges (``relay`` set), pipelined in the same round trip: one ``GETINFO`` of
  the reachability keys; ``GETCONF`` of the bandwidth options at the first poll, then only after
  tor announced a configuration change (the connection listens to ``CONF_CHANGED``: the next
  poll asks again, or the poll under way, which then takes one more round trip) and every
  :data:`CONF_REFRESH` seconds (at every poll if tor refused the subscription); and every
  :data:`NS_REFRESH` seconds ``GETINFO ns/id/<fingerprint>`` (the consensus changes hourly), at
  every poll while the relay is not listed;

The node's kind (relay, bridge or client) is learnt once per connection, with ``GETINFO
fingerprint`` (551 on a client) and ``GETCONF BridgeRelay``, only when a set needs it.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Callable

from ...errors import Failure, Reason, SourceError
from ...model import FieldSpec, FrozenFields, MeasurementSpec, extend

SET_NAMES = ("core", "status", "relay", "accounting", "guards", "bandwidth")
DEFAULT_SETS = ("core",)
COMMON_TAGS = ("host", "service", "version")
NS_REFRESH = 300.0
CONF_REFRESH = 300.0
INT64_MAX = 2 ** 63 - 1

#: Every flag tor's authorities can give (dir-spec "known-flags", tor 0.4.9).
FLAGS = ("Authority", "BadExit", "Exit", "Fast", "Guard", "HSDir", "MiddleOnly", "NoEdConsensus",
         "Running", "Stable", "StaleDesc", "Sybil", "V2Dir", "Valid")

CORE_KEYS = ("traffic/read", "traffic/written", "stats/ntor/requested", "stats/ntor/assigned",
             "stats/tap/requested", "stats/tap/assigned", "circuit-status", "stream-status")
#: Keys of the one GETINFO per poll, per set ("version" is always asked first).
SET_KEYS = {
    "core": CORE_KEYS,
    "status": ("uptime", "network-liveness", "status/circuit-established", "dormant", "status/enough-dir-info",
               "status/bootstrap-phase", "status/version/current", "process/descriptor-limit"),
    "accounting": ("accounting/enabled", "accounting/bytes", "accounting/bytes-left", "accounting/interval-end",
                   "accounting/hibernating"),
    "guards": ("entry-guards",),
    "bandwidth": ("bw-event-cache",),
}
#: Accounting keys asked only while the tor's accounting is enabled (without AccountingMax tor answers
#: zeros and 1970, which are not written): known from the previous poll; a poll that finds it enabled
#: asks them at once.
ACCOUNTING_DETAIL_KEYS = ("accounting/bytes", "accounting/bytes-left", "accounting/interval-end")
#: Keys whose value is only counted, by non-empty lines, as it streams in.
COUNTED_KEYS = frozenset({"circuit-status", "stream-status"})
#: Keys whose one-line value is long (300 "read,written" pairs): the reply reader finds their line.
LONG_KEYS = frozenset({"bw-event-cache"})
REACHABILITY_KEYS = ("status/reachability-succeeded/or", "status/reachability-succeeded/dir")
BANDWIDTH_OPTIONS = ("Nickname", "BandwidthRate", "BandwidthBurst", "RelayBandwidthRate", "RelayBandwidthBurst",
                     "MaxAdvertisedBandwidth")
PROBE_COMMANDS = ("GETINFO fingerprint", "GETCONF BridgeRelay")

FINGERPRINT_RE = re.compile(r"^[0-9A-F]{40}$")
NICKNAME_RE = re.compile(r"^[A-Za-z0-9]{1,19}$")
WORD_RE = re.compile(r"^[a-z][a-z0-9 _-]{0,31}$")  # "recommended", "none recommended", "new in series"
PROGRESS_RE = re.compile(r"\bPROGRESS=(\d{1,3})\b")


# ------------------------------------------------------------------------------------ parsing

def parse_int(text: str | None) -> int | None:
    """A non-negative integer tor wrote, or None when it is not one (or exceeds int64)."""
    if text is None or not (0 < len(text) <= 19 and text.isdigit() and text.isascii()):
        if text is None or text == text.strip():
            return None
        return parse_int(text.strip())
    value = int(text)
    return value if value <= INT64_MAX else None


def parse_bool(text: str | None) -> int | None:
    value = parse_int(text)
    return value if value in (0, 1) else None


def parse_pair(text: str | None) -> tuple[int, int] | None:
    parts = (text or "").split()
    if len(parts) != 2:
        return None
    first, second = parse_int(parts[0]), parse_int(parts[1])
    return None if first is None or second is None else (first, second)


def parse_iso_time(text: str | None) -> int | None:
    """tor's "YYYY-MM-DD HH:MM:SS" (UTC) as Unix time."""
    try:
        return calendar.timegm(time.strptime((text or "").strip(), "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def parse_word(text: str | None) -> str | None:
    """A lower-case status word tor wrote (recommended, awake, ...), or None for anything else."""
    word = " ".join((text or "").split()).lower()
    return word if WORD_RE.match(word) else None


_VERSIONS: dict[str, str] = {}


def clean_version(text: str | None) -> str:
    """tor's version answer as a tag value: its first word, only [A-Za-z0-9._+~-], at most 64."""
    text = text or ""
    clean = _VERSIONS.get(text)
    if clean is None:
        first = text.strip().split(" ")[0]
        clean = re.sub(r"[^A-Za-z0-9._+~-]", "_", first)[:64]
        if len(_VERSIONS) < 1000:
            _VERSIONS[text] = clean
    return clean


def parse_ns(text: str | None) -> tuple[bool, int | None, frozenset[str]]:
    """From a router status entry (ns/id/<fp>): whether there is one (tor answers an empty value
    when the relay is not in its consensus), the consensus weight and the flags."""
    listed, weight, flags = False, None, frozenset()
    for line in (text or "").splitlines():
        if line.startswith("r "):
            listed = True
        elif line.startswith("s "):
            flags = frozenset(line[2:].split())
        elif line.startswith("w "):
            for item in line[2:].split():
                if item.startswith("Bandwidth="):
                    weight = parse_int(item[len("Bandwidth="):])
    return listed, (weight if listed else None), (flags if listed else frozenset())


def effective_rates(conf: dict[str, str | None]) -> tuple[int | None, int | None]:
    """(rate, burst) in bytes/s as tor computes what it advertises (relay_get_effective_bwrate /
    _bwburst): rate = min(BandwidthRate, MaxAdvertisedBandwidth, RelayBandwidthRate if set),
    burst = min(BandwidthBurst, RelayBandwidthBurst if set)."""
    values = {k: parse_int(conf.get(k)) for k in BANDWIDTH_OPTIONS[1:]}
    rate = burst = None
    if values["BandwidthRate"] is not None:
        rate = values["BandwidthRate"]
        if values["MaxAdvertisedBandwidth"] is not None:
            rate = min(rate, values["MaxAdvertisedBandwidth"])
        if values["RelayBandwidthRate"]:
            rate = min(rate, values["RelayBandwidthRate"])
    if values["BandwidthBurst"] is not None:
        burst = values["BandwidthBurst"]
        if values["RelayBandwidthBurst"]:
            burst = min(burst, values["RelayBandwidthBurst"])
    return rate, burst


class Memo(dict):
    """Results of a pure function of answer texts that many tors share and that barely change between
    polls (parsing them again would cost more than a lookup), by those texts. Bounded: cleared when
    full. (What is one tor's own, its entry guards or consensus entry, is kept per tor: memoized().)"""

    def __init__(self, function: Callable, size: int = 4096):
        super().__init__()
        self.function, self.size = function, size

    def __missing__(self, key):
        value = self.function(*key)  # keys are the texts' tuples
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value


def memoized(a: "Answers", name: str, key: tuple, function: Callable):
    """function(*key), reusing the result of this tor's previous poll when its key was the same."""
    memo = a.memo
    if memo is None:
        return function(*key)
    hit = memo.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = function(*key)
    memo[name] = (key, value)
    return value


# ------------------------------------------------------------------------------------ answers

class Answers:
    """Everything one poll of one tor got back. ``failed`` holds the sets whose question failed.
    (Class attributes are the defaults: a poll sets only what it got, which keeps polls cheap.)"""

    values: dict[str, str | None] = {}
    counts: dict[str, int] = {}
    failed: frozenset[str] | set[str] = frozenset()
    conf: dict[str, str | None] | None = None
    conf_kept = False  # conf is the answer of an earlier poll
    reach: dict[str, str | None] | None = None
    ns: tuple[bool, int | None, frozenset[str]] | None = None  # (in consensus, weight, flags)
    kind: str | None = None
    fingerprint: str | None = None
    nickname: str | None = None
    elapsed: float | None = None  # seconds since this tor's previous poll
    unknown: frozenset[str] = frozenset()  # keys this tor does not know
    memo: dict | None = None  # this tor's results of memoized(), from its session

    def fail(self, name: str) -> None:
        if not isinstance(self.failed, set):
            self.failed = set()
        self.failed.add(name)

    def merge(self, values: dict, counts: dict) -> None:
        """Add a reply's values (the first reply's dicts are taken as they are)."""
        if "values" not in self.__dict__:
            self.values, self.counts = values, counts
        else:
            self.values.update(values)
            self.counts.update(counts)


Built = list[tuple[str, dict, tuple]]  # (measurement, fields, extra tags)


def _core(a: Answers) -> Built:
    out: Built = []
    values, counts, unknown = a.values, a.counts, a.unknown
    for measurement, pairs in CORE_MEASUREMENTS:
        fields = {}
        for field, key, counted in pairs:
            if counted:
                value = counts.get(key)
            else:
                text = values.get(key)
                # the common case inline: a plain decimal of at most 18 digits is always an int64
                value = int(text) if text is not None and 0 < len(text) <= 18 and text.isdigit() \
                    and text.isascii() else parse_int(text)
            if value is None:
                if key in unknown:
                    continue
                what = "lacks" if key not in values and key not in counts else "has a non-integer for"
                raise SourceError(Failure(Reason.PROTOCOL, f"tor's answer {what} {key}"))
            fields[field] = value
        if fields:
            out.append((measurement, fields, ()))
    return out


CORE_MEASUREMENTS = tuple((m, tuple((f, k, k in COUNTED_KEYS) for f, k in pairs)) for m, pairs in (
    ("traffic", (("read", "traffic/read"), ("written", "traffic/written"))),
    ("connections", (("circuits_active", "circuit-status"), ("streams_active", "stream-status"))),
    ("handshakes", (("ntor_requested", "stats/ntor/requested"), ("ntor_assigned", "stats/ntor/assigned"),
                    ("tap_requested", "stats/tap/requested"), ("tap_assigned", "stats/tap/assigned"))),
))


def _status_fields(liveness, circuit, dormant, enough, phase, version_status, limit) -> FrozenFields:
    """The status fields but uptime, from their texts (None ones left out)."""
    progress = PROGRESS_RE.search(phase or "")
    fields = {
        "network_liveness": {"up": 1, "down": 0}.get((liveness or "").strip()),
        "circuit_established": parse_bool(circuit),
        "dormant": parse_bool(dormant),
        "enough_dir_info": parse_bool(enough),
        "bootstrap_progress": int(progress.group(1)) if progress and int(progress.group(1)) <= 100 else None,
        "version_status": parse_word(version_status),
        "descriptor_limit": parse_int(limit),
    }
    return FrozenFields({k: x for k, x in fields.items() if x is not None})


_STATUS_KEYS = ("network-liveness", "status/circuit-established", "dormant", "status/enough-dir-info",
                "status/bootstrap-phase", "status/version/current", "process/descriptor-limit")
_STATUS_FIELDS = Memo(_status_fields)


def _status(a: Answers) -> Built:
    v = a.values
    get = v.get
    uptime = parse_int(get("uptime"))
    rest = _STATUS_FIELDS[tuple(map(get, _STATUS_KEYS))]  # the same object while tor's answers are the same
    if uptime is None:
        return [("status", rest, ())] if rest else []
    return [("status", extend(rest, "uptime", uptime), ())]


def _accounting_fields(enabled, hibernating, used, left, end) -> FrozenFields | None:
    enabled = parse_bool(enabled)
    if enabled is None:
        return None
    fields: dict = {"enabled": enabled}
    hibernating = parse_word(hibernating)
    if hibernating is not None:
        fields["hibernating"] = hibernating
    if enabled:  # without AccountingMax tor answers zeros and 1970: not written as if measured
        used, left = parse_pair(used), parse_pair(left)
        if used:
            fields["read_bytes"], fields["written_bytes"] = used
        if left:
            fields["read_left"], fields["written_left"] = left
        end = parse_iso_time(end)
        if end:
            fields["interval_end"] = end
    return FrozenFields(fields)


_ACCOUNTING_KEYS = ("accounting/enabled", "accounting/hibernating", "accounting/bytes", "accounting/bytes-left",
                    "accounting/interval-end")
_ACCOUNTING_FIELDS = Memo(_accounting_fields)


def _accounting(a: Answers) -> Built:
    fields = _ACCOUNTING_FIELDS[tuple(map(a.values.get, _ACCOUNTING_KEYS))]
    return [] if fields is None else [("accounting", fields, ())]


GUARD_STATES = {"up": "up", "down": "down", "never-connected": "never_connected", "unusable": "unusable"}


def _guard_fields(text: str | None) -> FrozenFields:
    fields = dict.fromkeys(("up", "down", "never_connected", "unusable", "total"), 0)
    for line in (text or "").splitlines():
        words = line.split()
        if len(words) < 2:
            continue
        fields["total"] += 1
        state = GUARD_STATES.get(words[1])
        if state:
            fields[state] += 1
    return FrozenFields(fields)


def _guards(a: Answers) -> Built:
    if a.kind in ("relay", "bridge") or "entry-guards" not in a.values:
        return []
    return [("guards", memoized(a, "guards", (a.values["entry-guards"],), _guard_fields), ())]


def _bandwidth(a: Answers) -> Built:
    text = a.values.get("bw-event-cache") or ""
    if not text:
        return []
    elapsed = a.elapsed
    wanted = 300 if elapsed is None or elapsed >= 300 else round(elapsed) if elapsed >= 1 else 1
    reads, writes = _last_pairs(text, wanted)  # only the seconds since the last poll are read
    n = len(reads)
    if not n:
        return []
    return [("bandwidth", {"read_rate_max": max(reads), "written_rate_max": max(writes),
                           "read_rate_mean": sum(reads) / n, "written_rate_mean": sum(writes) / n, "seconds": n}, ())]


_PAIRS_RE = re.compile(r"[0-9]{1,18},[0-9]{1,18}(?: [0-9]{1,18},[0-9]{1,18})*")
_JSON = json.JSONDecoder()


def _last_pairs(text: str, wanted: int) -> tuple[list[int], list[int]]:
    """The read and written numbers of the last `wanted` of the space-separated "read,written" items
    of `text`; an item that is not two integers is left out. (The common case at once: every item
    two plain decimals of at most 18 digits, checked by one regular expression and converted by
    json's reader, not one by one.)"""
    items = text.rsplit(" ", wanted)[-wanted:]
    joined = " ".join(items)  # (items hold no space: the text's tail)
    if _PAIRS_RE.fullmatch(joined):
        try:  # the numbers as one JSON array: json's reader converts them without a call each
            numbers = _JSON.raw_decode("[" + joined.replace(" ", ",") + "]")[0]
        except ValueError:  # a number with a leading zero is not JSON: item by item, below
            pass
        else:
            return numbers[0::2], numbers[1::2]
    reads, writes = [], []
    for item in items:
        read, _, written = item.partition(",")
        r, w = parse_int(read), parse_int(written)
        if r is not None and w is not None:
            reads.append(r)
            writes.append(w)
    return reads, writes


def _relay(a: Answers) -> Built:
    if a.kind not in ("relay", "bridge") or not a.fingerprint:
        return []
    tags = (("fingerprint", a.fingerprint), ("nickname", a.nickname or "Unnamed"))
    reach = a.reach or {}
    key = (a.kind, a.conf, reach.get("status/reachability-succeeded/or"),
           reach.get("status/reachability-succeeded/dir"), a.ns if a.kind == "relay" else None)
    fields = memoized(a, "relay", key, _relay_fields)  # the same object while the answers are the same
    return [("relay", fields, tags)] if fields else []


def _relay_fields(kind: str, conf: dict | None, reach_or: str | None, reach_dir: str | None,
                  ns: tuple | None) -> FrozenFields:
    fields: dict = {}
    if conf is not None:
        fields.update(_RATE_FIELDS[tuple(map(conf.get, _RATE_OPTIONS))])
    reach_or, reach_dir = parse_bool(reach_or), parse_bool(reach_dir)  # (None when not answered)
    if reach_or is not None:
        fields["reachable_or"] = reach_or
    if reach_dir is not None and kind == "relay":
        fields["reachable_dir"] = reach_dir
    if ns is not None:  # (relays only: bridges are in no consensus, nothing said)
        fields.update(_ns_fields(*ns))
    return FrozenFields(fields)


def _rate_fields(*values) -> dict:
    rate, burst = effective_rates(dict(zip(_RATE_OPTIONS, values)))
    fields = {}
    if rate is not None:
        fields["effective_rate"] = rate
    if burst is not None:
        fields["effective_burst"] = burst
    return fields


def _ns_fields(listed: bool, weight: int | None, flags: frozenset[str]) -> dict:
    fields = {"in_consensus": int(listed)}
    if listed and weight is not None:
        fields["consensus_weight"] = weight
    for flag, name in _FLAG_FIELDS:
        fields[name] = int(listed and flag in flags)
    return fields


_RATE_OPTIONS = BANDWIDTH_OPTIONS[1:]
_RATE_FIELDS = Memo(_rate_fields, size=1024)
_FLAG_FIELDS = tuple((flag, "flag_" + flag.lower()) for flag in FLAGS)


BUILDERS: dict[str, Callable[[Answers], Built]] = {
    "core": _core, "status": _status, "relay": _relay, "accounting": _accounting, "guards": _guards,
    "bandwidth": _bandwidth,
}


class Plan:
    """What to ask of one tor for the configured sets, and how to make samples of the answers."""

    def __init__(self, sets: tuple[str, ...] = DEFAULT_SETS):
        unknown = [s for s in sets if s not in SET_NAMES]
        if unknown:
            raise ValueError(f"unknown metric sets: {unknown}")
        self.sets = tuple(s for s in SET_NAMES if s in sets)
        self.needs_kind = "relay" in self.sets or "guards" in self.sets
        self._builders = tuple((name, BUILDERS[name]) for name in self.sets)

    def main_sets(self, kind: str | None) -> tuple[str, ...]:
        """The sets asked in the one GETINFO (relay has its own questions; guards only off relays)."""
        relayish = kind in ("relay", "bridge")
        return tuple(s for s in self.sets if s in SET_KEYS and not (s == "guards" and (relayish or kind is None)))

    @staticmethod
    def keys(sets: tuple[str, ...], unknown: frozenset[str] = frozenset(), skip: tuple[str, ...] = ()) -> list[str]:
        """The keys of one GETINFO for `sets`: "version" first, then theirs but `unknown` and `skip` ones."""
        keys = ["version"]
        for name in sets:
            keys += [k for k in SET_KEYS[name] if k not in unknown and k not in skip]
        return keys

    def wants_relay(self, kind: str | None) -> bool:
        return "relay" in self.sets and kind in ("relay", "bridge")

    def build(self, answers: Answers) -> Built:
        """(measurement, fields, extra tags) of every set that answered; core failures raise."""
        out: Built = []
        failed = answers.failed
        for name, builder in self._builders:
            if name not in failed:
                out += builder(answers)
        return out


# ------------------------------------------------------------------------------------ schema

def _f(name, type_, origin, unit="", description=""):
    return FieldSpec(name, type_, origin, unit, description)


_RELAY_TAGS = COMMON_TAGS + ("fingerprint", "nickname")
SCHEMA = (
    MeasurementSpec("traffic", "control-port", "core", (
        _f("read", "integer", "GETINFO traffic/read", "bytes", "bytes tor read since it started"),
        _f("written", "integer", "GETINFO traffic/written", "bytes", "bytes tor wrote since it started")),
        COMMON_TAGS, default=True, description="counters since tor started (reset when it restarts)"),
    MeasurementSpec("connections", "control-port", "core", (
        _f("circuits_active", "integer", "GETINFO circuit-status (lines)", "circuits",
           "circuits this tor built itself (not relayed ones)"),
        _f("streams_active", "integer", "GETINFO stream-status (lines)", "streams",
           "this tor's own client streams")), COMMON_TAGS, default=True),
    MeasurementSpec("handshakes", "control-port", "core", tuple(
        _f(f"{k}_{s}", "integer", f"GETINFO stats/{k}/{s}", "handshakes",
           "ntor v1 only on tor 0.4.9 (ntor v3 is on the MetricsPort); reset at each heartbeat")
        for k in ("ntor", "tap") for s in ("requested", "assigned")), COMMON_TAGS, default=True),
    MeasurementSpec("status", "control-port", "status", (
        _f("uptime", "integer", "GETINFO uptime", "s"),
        _f("network_liveness", "integer", "GETINFO network-liveness", "", "1 up, 0 down"),
        _f("circuit_established", "integer", "GETINFO status/circuit-established", "", "0/1"),
        _f("dormant", "integer", "GETINFO dormant", "", "1 = dormant"),
        _f("enough_dir_info", "integer", "GETINFO status/enough-dir-info", "", "0/1"),
        _f("bootstrap_progress", "integer", "GETINFO status/bootstrap-phase (PROGRESS=)", "%"),
        _f("version_status", "string", "GETINFO status/version/current", "",
           "recommended, obsolete, new, old, unrecommended, unknown, ..."),
        _f("descriptor_limit", "integer", "GETINFO process/descriptor-limit", "file descriptors")),
        COMMON_TAGS),
    MeasurementSpec("relay", "control-port", "relay", (
        _f("consensus_weight", "integer", "GETINFO ns/id/<fingerprint> (w Bandwidth=)", "",
           "absent while not in the consensus"),
        _f("in_consensus", "integer", "GETINFO ns/id/<fingerprint>", "", "0/1; relays only"),
        *(_f("flag_" + flag.lower(), "integer", "GETINFO ns/id/<fingerprint> (s line)", "",
             f"1 when the consensus gives the {flag} flag; relays only") for flag in FLAGS),
        _f("effective_rate", "integer", "GETCONF BandwidthRate, RelayBandwidthRate, MaxAdvertisedBandwidth",
           "bytes/s"),
        _f("effective_burst", "integer", "GETCONF BandwidthBurst, RelayBandwidthBurst", "bytes/s"),
        _f("reachable_or", "integer", "GETINFO status/reachability-succeeded/or", "", "0/1"),
        _f("reachable_dir", "integer", "GETINFO status/reachability-succeeded/dir", "", "0/1; relays only")),
        _RELAY_TAGS, kinds=("relay", "bridge")),
    MeasurementSpec("accounting", "control-port", "accounting", (
        _f("enabled", "integer", "GETINFO accounting/enabled", "", "0/1"),
        _f("read_bytes", "integer", "GETINFO accounting/bytes", "bytes", "in this interval; only when enabled"),
        _f("written_bytes", "integer", "GETINFO accounting/bytes", "bytes", "only when enabled"),
        _f("read_left", "integer", "GETINFO accounting/bytes-left", "bytes", "only when enabled"),
        _f("written_left", "integer", "GETINFO accounting/bytes-left", "bytes", "only when enabled"),
        _f("interval_end", "integer", "GETINFO accounting/interval-end", "Unix time", "only when enabled"),
        _f("hibernating", "string", "GETINFO accounting/hibernating", "", "awake, soft, hard")), COMMON_TAGS),
    MeasurementSpec("guards", "control-port", "guards", tuple(
        _f(state, "integer", "GETINFO entry-guards", "guards") for state in
        ("up", "down", "never_connected", "unusable", "total")), COMMON_TAGS, kinds=("client",)),
    MeasurementSpec("bandwidth", "control-port", "bandwidth", (
        _f("read_rate_max", "integer", "GETINFO bw-event-cache", "bytes/s", "highest second since the last poll"),
        _f("written_rate_max", "integer", "GETINFO bw-event-cache", "bytes/s"),
        _f("read_rate_mean", "float", "GETINFO bw-event-cache", "bytes/s", "mean since the last poll"),
        _f("written_rate_mean", "float", "GETINFO bw-event-cache", "bytes/s"),
        _f("seconds", "integer", "GETINFO bw-event-cache", "s", "seconds the figures cover")), COMMON_TAGS),
)
