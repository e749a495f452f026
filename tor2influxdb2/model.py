"""The neutral data model between sources and sinks.

A source turns what a tor answered into :class:`Sample` objects; a sink turns samples into
line protocol, Prometheus metrics or a report. Neither knows the other: they meet only here.
The schema classes describe, ahead of time, every sample a source can produce (``--schema``).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, NamedTuple, Union

#: A field value. bool is tested before int everywhere (bool is a subclass of int).
FieldValue = Union[bool, int, float, str]


class Sample(NamedTuple):
    """One measurement of one tor at one moment.

    ``tags`` are (key, value) pairs sorted by key (use :func:`make_tags`), so that a tag set is
    hashable and sinks may cache what they derive from it. ``fields`` maps names to values of
    the types in :data:`FieldValue`. ``time_ms`` is the wall-clock time (ms since the epoch) at
    which the tor answered."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: Mapping[str, FieldValue]
    time_ms: int


class _Unchangeable(dict):
    """A dict whose every mutator raises TypeError."""

    __slots__ = ()

    def _frozen(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} cannot be changed")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _frozen


class FrozenFields(_Unchangeable):
    """Fields that cannot be changed once made, which a source may hand out again at later polls
    while their values stay the same (a relay's flags, accounting while it is off). A sink may keep
    what it derived from one, by identity: the same object always holds the same values."""

    __slots__ = ()


class ExtendedFields(_Unchangeable):
    """The fields of a :class:`FrozenFields` ``base``, handed out again while unchanged, and one
    more that changes at every poll (a tor's uptime beside the rest of its status); made by
    :func:`extend`. As a mapping it holds them all (the extra field overrides a base field of its
    name); ``extra`` holds the extra one as (name, value). A sink may keep what it derived
    from the base, by identity, and add the extra field. It cannot be changed either."""

    __slots__ = ("base", "extra")


_set = dict.__setitem__


def extend(base: FrozenFields, name: str, value: FieldValue) -> ExtendedFields:
    """`base`'s fields and `name`=`value`, as :class:`ExtendedFields`. (A function, not the class's
    __init__, which would cost twice as much: a tor's status is made so at every poll.)"""
    fields = ExtendedFields(base)
    _set(fields, name, value)
    fields.base, fields.extra = base, (name, value)
    return fields


def make_tags(tags: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Tags in the canonical form of :attr:`Sample.tags`: sorted by key, empty values left out."""
    kind = tags.__class__  # the common classes first: isinstance(x, Mapping) is slow
    items = tags if kind is tuple or kind is list else \
        tags.items() if kind is dict or isinstance(tags, Mapping) else tags
    return tuple(sorted(kv for kv in items if kv[1] != ""))  # the pairs themselves: a fleet shares them


def field_type(value: FieldValue) -> str:
    """The InfluxDB type of a field value."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


# ------------------------------------------------------------------------------- the schema

@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """A field a measurement may carry: its name, InfluxDB type, unit, and where it comes from."""

    name: str
    type: str
    origin: str
    unit: str = ""
    description: str = ""

    def as_json(self) -> dict:
        out = {"name": self.name, "type": self.type, "from": self.origin}
        if self.unit:
            out["unit"] = self.unit
        if self.description:
            out["description"] = self.description
        return out


@dataclasses.dataclass(frozen=True)
class MeasurementSpec:
    """A measurement a source can write. ``group`` is the metric set (control port) or the
    family selection (MetricsPort) it belongs to; ``kinds`` the node kinds that write it
    (relay, bridge, client); ``tags`` every tag it may carry, common ones included."""

    name: str
    source: str
    group: str
    fields: tuple[FieldSpec, ...]
    tags: tuple[str, ...]
    kinds: tuple[str, ...] = ("relay", "bridge", "client")
    description: str = ""
    default: bool = False

    def as_json(self) -> dict:
        return {"measurement": self.name, "source": self.source, "set": self.group,
                "default": self.default, "written_by": list(self.kinds), "tags": list(self.tags),
                "fields": [f.as_json() for f in self.fields], "description": self.description}


@dataclasses.dataclass(frozen=True)
class TorStatus:
    """What a sink that shows the current state (Prometheus) needs to know of one tor after a cycle.

    ``up`` is True when this cycle's poll succeeded; ``samples`` are then that poll's samples.
    When it failed, ``samples`` is empty: a sink must never show old values as if fresh.
    ``last_success`` is the Unix time of the last successful poll (None if never); ``error`` a short,
    redacted reason when down. ``sources`` maps each source ("control-port", "metricsport") to
    whether it answered this cycle (a tor without a MetricsPort has only "control-port")."""

    name: str
    service: str
    up: bool
    last_success: float | None
    samples: tuple[Sample, ...] = ()
    error: str | None = None
    sources: Mapping[str, bool] = dataclasses.field(default_factory=dict)
