"""Samples as InfluxDB line protocol, millisecond precision.

A line is the escaped measurement, its ``tag=value`` pairs, the fields (sorted by name, as
influxdb-client writes them) and the time. What is escaped is cached per measurement and per
tag pair, not per whole tag set: the pairs are few (a fleet's tors share their labels, each tor
its host and version), the tag sets many (1,000 relays' MetricsPorts write ~60,000 a cycle).
Integers get the ``i`` suffix, floats are written in Python's shortest round-trip form (a
non-finite float is left out), strings are quoted with ``\\`` and ``"`` escaped.

Tag values must not contain a backslash or a control character: InfluxDB and other servers
read a backslash in a tag value differently, so the settings refuse such names and the sources
clean what tors send before it becomes a tag. :func:`encode` refuses them too (ValueError).
"""

from __future__ import annotations

import math
from typing import Iterable

from ..model import Sample

_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})
_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})
_MAX_CACHE = 200_000


def _check(text: str) -> str:
    if "\\" in text or not text.isprintable():
        raise ValueError("a tag or field key with a backslash or a control character")
    return text


def _check_string(text: str) -> str:
    if not text.isprintable():
        raise ValueError("a string field with a control character")
    return text


class LineEncoder:
    """Encodes samples; keeps bounded caches of escaped measurements, tag pairs and field names."""

    def __init__(self) -> None:
        self._measurements: dict[str, str] = {}
        self._pairs: dict[tuple[str, str], str] = {}
        self._orders: dict[tuple, tuple] = {}

    def prefix(self, measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
        """``measurement,key=value,...`` escaped (a pair with an empty value is left out)."""
        escaped = self._measurements.get(measurement)
        if escaped is None:
            if len(self._measurements) >= _MAX_CACHE:
                self._measurements.clear()
            escaped = self._measurements[measurement] = _check(measurement).translate(_MEASUREMENT)
        pairs = self._pairs
        try:
            return ",".join([escaped] + [pairs[kv] for kv in tags])
        except KeyError:
            pass
        parts = [escaped]
        for kv in tags:
            text = pairs.get(kv)
            if text is None:
                k, v = kv
                if v == "":  # not cached: a tag set with an empty value always comes this way
                    continue
                text = f"{_check(k).translate(_KEY)}={_check(v).translate(_KEY)}"
                if len(pairs) >= _MAX_CACHE:
                    pairs.clear()
                pairs[kv] = text
            parts.append(text)
        return ",".join(parts)

    def _order(self, fields) -> tuple[tuple[str, str], ...]:
        """(name, escaped name) of a field set, sorted by name; cached by the set's names in their order."""
        names = tuple(fields)
        order = self._orders.get(names)
        if order is None:
            order = tuple((name, _check(name).translate(_KEY)) for name in sorted(names))
            if len(self._orders) >= _MAX_CACHE:
                self._orders.clear()
            self._orders[names] = order
        return order

    def encode(self, sample: Sample) -> str | None:
        """One line, or None when no field can be written."""
        fields = sample.fields
        parts = []
        for name, key in self._order(fields):
            value = fields[name]
            if value.__class__ is int:
                parts.append(f"{key}={value}i")
            elif isinstance(value, bool):
                parts.append(f"{key}={'true' if value else 'false'}")
            elif isinstance(value, int):
                parts.append(f"{key}={int(value)}i")
            elif isinstance(value, float):
                if math.isfinite(value):
                    parts.append(f"{key}={value!r}")
            else:
                parts.append(f'{key}="' + _check_string(str(value)).translate(_STRING) + '"')
        if not parts:
            return None
        return f"{self.prefix(sample.measurement, sample.tags)} {','.join(parts)} {sample.time_ms}"

    def encode_all(self, samples: Iterable[Sample]) -> list[str]:
        return [line for line in map(self.encode, samples) if line is not None]
