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
from operator import itemgetter
from typing import Callable, Iterable

from ..model import ExtendedFields, FrozenFields, Sample

_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ "})
_STRING = str.maketrans({"\\": "\\\\", '"': '\\"'})
_MAX_CACHE = 200_000
_MAX_HEADS = 100_000  # kept heads of FrozenFields lines: one per tor and measurement that uses them
#: How a field of each type is written (a template's placeholder; strings and bools are converted first).
_PLACEHOLDER = {int: "%di", float: "%r", str: '"%s"', bool: "%s"}


def _check(text: str) -> str:
    if "\\" in text or not text.isprintable():
        raise ValueError("a tag or field key with a backslash or a control character")
    return text


def _escape_string(text: str) -> str:
    """A string field's value, backslash and double quote escaped (translate() only when there is one
    of them: it costs ten times the two tests)."""
    if not text.isprintable():
        raise ValueError("a string field with a control character")
    return text.translate(_STRING) if '"' in text or "\\" in text else text


class LineEncoder:
    """Encodes samples; keeps bounded caches of escaped measurements, tag pairs and, per field set
    (its names and their value types), a template of its fields; and for a sample whose fields are
    :class:`~tor2influxdb2.model.FrozenFields`, its line but the time, per measurement and tag set,
    reused while the same fields and tags objects come again; for one whose fields are
    :class:`~tor2influxdb2.model.ExtendedFields`, a template of its line with the base's fields
    written in, reused while the same base and tags objects and the same extra field's name and type
    come."""

    def __init__(self) -> None:
        self._measurements: dict[str, str] = {}
        self._pairs: dict[tuple[str, str], str] = {}
        self._orders: dict[tuple, tuple] = {}
        self._templates: dict[tuple, tuple | None] = {}
        self._heads: dict[tuple[str, int], tuple] = {}  # (measurement, id(tags)) -> (fields, tags, head)
        # (measurement, id(tags)) -> (base, tags, the extra field's name, its type, template)
        self._extended: dict[tuple[str, int], tuple] = {}

    def prefix(self, measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
        """``measurement,key=value,...`` escaped (a pair with an empty value is left out)."""
        escaped = self._measurements.get(measurement)
        if escaped is None:
            if len(self._measurements) >= _MAX_CACHE:
                self._measurements.clear()
            escaped = self._measurements[measurement] = _check(measurement).translate(_MEASUREMENT)
        pairs = self._pairs
        try:
            return escaped + "," + ",".join(map(pairs.__getitem__, tags)) if tags else escaped
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

    def _template(self, names: tuple, types: tuple) -> tuple | None:
        """(template, getter, conversions, floats) of a field set: the fields sorted by name, each written
        as its type is (%-placeholders); None for a set with a value of another type (an int subclass...).
        With strings or bools, `conversions` says which values _convert() changes; with only floats
        beside integers, `floats` gets them from the getter's values (to check they are finite)."""
        if not all(t in _PLACEHOLDER for t in types):
            return None
        order = sorted(range(len(names)), key=names.__getitem__)
        template = ",".join(_check(names[i]).translate(_KEY).replace("%", "%%") + "=" + _PLACEHOLDER[types[i]]
                            for i in order)
        sorted_names = [names[i] for i in order]
        getter = _tuple_getter(sorted_names)
        floats = tuple(j for j, i in enumerate(order) if types[i] is float)
        texts = tuple(j for j, i in enumerate(order) if types[i] is str)
        bools = tuple(j for j, i in enumerate(order) if types[i] is bool)
        if texts or bools:
            return template, getter, (floats, texts, bools), None
        return template, getter, None, _tuple_getter(floats) if floats else None

    def encode(self, sample: Sample) -> str | None:
        """One line, or None when no field can be written."""
        fields = sample.fields
        kind = fields.__class__
        frozen = kind is FrozenFields
        if frozen:  # handed out again while unchanged: its line but the time is kept
            head_key = (sample.measurement, id(sample.tags))
            kept = self._heads.get(head_key)
            if kept is not None and kept[0] is fields and kept[1] is sample.tags:
                return f"{kept[2]} {sample.time_ms}"
        elif kind is ExtendedFields:
            line = self._encode_extended(sample)
            if line is not None:
                return line  # (else as any fields: a value of another type or not finite)
        key = (tuple(fields), tuple(map(type, fields.values())))
        try:
            plan = self._templates[key]
        except KeyError:
            if len(self._templates) >= _MAX_CACHE:
                self._templates.clear()
            plan = self._templates[key] = self._template(*key) if fields else None
        line = None
        if plan is not None:
            template, getter, conversions, floats = plan
            values = getter(fields)
            if conversions is not None:
                values = _convert(values, *conversions)
            elif floats is not None and not all(map(math.isfinite, floats(values))):
                values = None
            if values is not None:
                line = f"{self.prefix(sample.measurement, sample.tags)} {template % values} {sample.time_ms}"
        if line is None:
            line = self._encode_each(sample)  # other types, a non-finite float, no fields
        if frozen and line is not None:
            if len(self._heads) >= _MAX_HEADS:
                self._heads.clear()
            # (holding the fields and the tags, their ids stay theirs while kept)
            self._heads[head_key] = (fields, sample.tags, line[:line.rindex(" ")])
        return line

    def _encode_extended(self, sample: Sample) -> str | None:
        """encode() of ExtendedFields from a kept template (made at the first such sample): None when
        it cannot be made so (a value of another type, a float that is not finite)."""
        fields = sample.fields
        name, value = fields.extra
        kind = value.__class__
        key = (sample.measurement, id(sample.tags))
        kept = self._extended.get(key)
        if kept is None or kept[0] is not fields.base or kept[1] is not sample.tags or kept[2] != name \
                or kept[3] is not kind:
            if len(self._extended) >= _MAX_HEADS:
                self._extended.clear()
            # (holding the base and the tags, their ids stay theirs while kept)
            kept = self._extended[key] = (fields.base, sample.tags, name, kind,
                                          self._extended_template(sample, name, kind))
        template = kept[4]
        if template is None:
            return None
        if kind is not int:
            if kind is str:
                value = _escape_string(value)
            elif kind is bool:
                value = "true" if value else "false"
            elif not math.isfinite(value):
                return None
        return template % (value, sample.time_ms)

    def _extended_template(self, sample: Sample, extra: str, kind: type) -> str | None:
        """The template of an ExtendedFields line: its prefix and every field in order of name, the
        base's written out, the extra one (`extra`, of type `kind`) and the time as %-placeholders;
        None when the extra value is of another type."""
        placeholder = _PLACEHOLDER.get(kind)
        if placeholder is None:
            return None
        fields, parts = sample.fields, []
        for name, key in self._order(fields):
            if name == extra:
                parts.append(key.replace("%", "%%") + "=" + placeholder)
            else:
                text = _field_text(key, fields[name])
                if text is not None:
                    parts.append(text.replace("%", "%%"))
        return f"{self.prefix(sample.measurement, sample.tags).replace('%', '%%')} {','.join(parts)} %d"

    def _encode_each(self, sample: Sample) -> str | None:
        """encode(), field by field."""
        fields = sample.fields
        parts = [text for text in (_field_text(key, fields[name]) for name, key in self._order(fields))
                 if text is not None]
        if not parts:
            return None
        return f"{self.prefix(sample.measurement, sample.tags)} {','.join(parts)} {sample.time_ms}"

    def encode_all(self, samples: Iterable[Sample]) -> list[str]:
        return [line for line in map(self.encode, samples) if line is not None]


def _tuple_getter(keys) -> Callable:
    """itemgetter(*keys), but a tuple for one key too (itemgetter of one key returns the item)."""
    return itemgetter(*keys) if len(keys) > 1 else (lambda items, key=keys[0]: (items[key],))


def _field_text(key: str, value) -> str | None:
    """``key=value`` of one field (`key` escaped), None for a float that is not finite."""
    if value.__class__ is int:
        return f"{key}={value}i"
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{key}={int(value)}i"
    if isinstance(value, float):
        return f"{key}={value!r}" if math.isfinite(value) else None
    return f'{key}="' + _escape_string(str(value)) + '"'


def _convert(values: tuple, floats: tuple, texts: tuple, bools: tuple) -> tuple | None:
    """A template's values with strings escaped and bools as words; None when a float is not finite."""
    values = list(values)
    for j in floats:
        if not math.isfinite(values[j]):
            return None
    for j in texts:
        values[j] = _escape_string(values[j])
    for j in bools:
        values[j] = "true" if values[j] else "false"
    return tuple(values)
