"""Samples as InfluxDB line protocol, millisecond precision.

The escaped ``measurement,tag=value,...`` prefix of a sample depends only on its measurement and
tag set, so it is made once and cached; a line is then that prefix, the fields (sorted by name,
as influxdb-client writes them) and the time. Integers get the ``i`` suffix, floats are written
in Python's shortest round-trip form (a non-finite float is left out), strings are quoted with
``\\`` and ``"`` escaped.

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
    """Encodes samples; keeps a bounded cache of tag-set prefixes."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple, str] = {}
        self._keys: dict[str, str] = {}

    def prefix(self, measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
        key = (measurement, tags)
        prefix = self._prefixes.get(key)
        if prefix is None:
            parts = [_check(measurement).translate(_MEASUREMENT)]
            parts += [f"{_check(k).translate(_KEY)}={_check(v).translate(_KEY)}" for k, v in tags if v != ""]
            prefix = ",".join(parts)
            if len(self._prefixes) >= _MAX_CACHE:
                self._prefixes.clear()
            self._prefixes[key] = prefix
        return prefix

    def encode(self, sample: Sample) -> str | None:
        """One line, or None when no field can be written."""
        fields = []
        keys = self._keys
        for name, value in sorted(sample.fields.items()):
            key = keys.get(name)
            if key is None:
                key = _check(name).translate(_KEY)
                if len(keys) < _MAX_CACHE:
                    keys[name] = key
            if value.__class__ is int:
                fields.append(f"{key}={value}i")
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int):
                text = f"{value}i"
            elif isinstance(value, float):
                if not math.isfinite(value):
                    continue
                text = repr(value)
            else:
                text = '"' + _check_string(str(value)).translate(_STRING) + '"'
            fields.append(f"{key}={text}")
        if not fields:
            return None
        return f"{self.prefix(sample.measurement, sample.tags)} {','.join(fields)} {sample.time_ms}"

    def encode_all(self, samples: Iterable[Sample]) -> list[str]:
        return [line for line in map(self.encode, samples) if line is not None]
