"""sinks.lineprotocol: the same lines influxdb-client's Point writes, for every value type."""

import random
import string

import pytest
from influxdb_client import Point, WritePrecision

from tor2influxdb2.model import ExtendedFields, FrozenFields, Sample, extend, make_tags
from tor2influxdb2.sinks.lineprotocol import LineEncoder


def point_line(sample: Sample) -> str:
    point = Point(sample.measurement)
    for k, v in sample.tags:
        point.tag(k, v)
    for k, v in sample.fields.items():
        point.field(k, v)
    point.time(sample.time_ms, WritePrecision.MS)
    return point.to_line_protocol()


ALPHABET = string.ascii_letters + string.digits + " ,=\"'_-.:/éü€"


def test_same_bytes_as_influxdb_client_for_random_tags_and_fields():
    rng = random.Random(20261201)
    encoder = LineEncoder()
    for _ in range(500):
        tags = make_tags({rng.choice(["host", "service", "version", "nick name", "a,b"]):
                          "".join(rng.choices(ALPHABET, k=rng.randint(1, 12))).strip() or "x" for _ in range(3)})
        fields = {}
        for name in rng.sample(["read", "written", "rate mean", "ok", "status,x", "up=1"], 3):
            kind = rng.choice(["int", "float", "bool", "str"])
            fields[name] = {"int": rng.randint(0, 2 ** 62), "float": rng.uniform(0, 1e6),
                            "bool": rng.random() < 0.5,
                            "str": "".join(rng.choices(ALPHABET + "\\", k=8))}[kind]
        sample = Sample(rng.choice(["traffic", "my measurement", "a,b"]), tags, fields, rng.randint(0, 2 ** 41))
        ours, theirs = encoder.encode(sample), point_line(sample)
        if any(isinstance(v, float) for v in fields.values()):  # Point strips a trailing .0; both are floats
            ours, theirs = ours.replace(".0,", ",").replace(".0 ", " "), theirs
        assert ours == theirs, (sample, ours, theirs)


def test_frozen_fields_are_written_like_any_fields_and_their_kept_line_follows_every_change():
    """The head of a FrozenFields line is kept per measurement and tag set, and reused only for the
    same fields and tags objects: a new time, new values or other tags are never written stale."""
    encoder, plain = LineEncoder(), LineEncoder()
    tags, other = make_tags({"host": "a", "service": "tor"}), make_tags({"host": "b", "service": "tor"})
    fields = FrozenFields({"enabled": 0, "hibernating": "awake", "rate": 1.5})
    for sample in (Sample("accounting", tags, fields, 5), Sample("accounting", tags, fields, 6),
                   Sample("accounting", other, fields, 6), Sample("accounting", tags, fields, 7),
                   Sample("accounting", tags, FrozenFields({"enabled": 1, "hibernating": "soft"}), 8),
                   Sample("accounting", make_tags({"host": "a", "service": "tor"}), fields, 9),
                   Sample("status", tags, fields, 9)):
        assert encoder.encode(sample) == plain.encode(sample._replace(fields=dict(sample.fields))) == \
            point_line(sample)
    assert encoder.encode(Sample("m", tags, FrozenFields({"a": float("nan")}), 5)) is None
    with pytest.raises(TypeError):
        fields["enabled"] = 1  # what makes keeping its line safe
    with pytest.raises(TypeError):
        fields.update(enabled=1)
    assert fields == {"enabled": 0, "hibernating": "awake", "rate": 1.5}


def test_extended_fields_are_written_like_any_fields_and_their_template_follows_every_change():
    """An ExtendedFields line (a status: the same base, a new uptime at every poll) comes from a kept
    template, reused only for the same base and tags objects and the same extra field's name and type:
    every line equals the one of the same fields as a plain dict, and influxdb-client's."""
    encoder, plain = LineEncoder(), LineEncoder()
    tags, other = make_tags({"host": "a%s", "service": "tor"}), make_tags({"host": "b", "service": "tor"})
    base = FrozenFields({"dormant": 0, "version_status": 'new "50%"', "zeta": 1.5, "ok": True})
    other_base = FrozenFields({"dormant": 1, "version_status": "recommended"})
    cases = [(base, "uptime", 10), (base, "uptime", 11), (base, "uptime", 2 ** 62), (base, "a%d", 3),
             (base, "uptime", 1.25), (base, "uptime", 'x"\\y %s'), (base, "uptime", False),
             (base, "dormant", 7), (other_base, "uptime", 12), (base, "uptime", 13), (FrozenFields(), "uptime", 1),
             (FrozenFields({"nan": float("nan")}), "uptime", 2)]
    for time_ms, (fields_base, name, value) in enumerate(cases * 2):
        for sample_tags in (tags, other, tags):
            sample = Sample("status", sample_tags, extend(fields_base, name, value), time_ms)
            line = encoder.encode(sample)
            assert line == plain.encode(sample._replace(fields=dict(sample.fields))), sample
            assert line == point_line(sample._replace(fields={k: v for k, v in sample.fields.items() if k != "nan"}))
    # an extra value the template cannot hold (not finite, of another type): written as any fields
    for value in (float("nan"), float("inf")):
        line = encoder.encode(Sample("status", tags, extend(base, "uptime", value), 5))
        assert line == plain.encode(Sample("status", tags, dict(base), 5))
    assert encoder.encode(Sample("status", tags, extend(FrozenFields(), "uptime", float("nan")), 5)) is None

    class Count(int):
        pass
    sample = Sample("status", tags, extend(base, "uptime", Count(4)), 6)
    assert encoder.encode(sample) == plain.encode(sample._replace(fields=dict(sample.fields))) == point_line(sample)
    fields = extend(base, "uptime", 1)
    assert isinstance(fields, ExtendedFields) and fields == {**base, "uptime": 1}
    for change in (lambda: fields.__setitem__("uptime", 2), lambda: fields.update(uptime=2), fields.clear):
        with pytest.raises(TypeError):
            change()
    assert fields == {**base, "uptime": 1}


def test_types_are_fixed():
    line = LineEncoder().encode(Sample("m", (("host", "h"),), {"i": 3, "f": 3.0, "b": True, "s": 'a"b\\c'}, 5))
    assert line == 'm,host=h b=true,f=3.0,i=3i,s="a\\"b\\\\c" 5'


def test_non_finite_floats_are_left_out_and_a_line_without_fields_is_none():
    encoder = LineEncoder()
    assert encoder.encode(Sample("m", (("host", "h"),), {"a": float("nan"), "b": 1}, 5)) == "m,host=h b=1i 5"
    assert encoder.encode(Sample("m", (("host", "h"),), {"a": float("inf")}, 5)) is None
    # two floats beside an integer (their template kept): a non-finite one is left out, at any poll
    for c, line in ((2.5, "m,host=h a=1.5,b=1i,c=2.5 5"), (float("-inf"), "m,host=h a=1.5,b=1i 5"),
                    (float("nan"), "m,host=h a=1.5,b=1i 5"), (0.25, "m,host=h a=1.5,b=1i,c=0.25 5")):
        assert encoder.encode(Sample("m", (("host", "h"),), {"a": 1.5, "b": 1, "c": c}, 5)) == line


@pytest.mark.parametrize("tags", [(("host", "a\\"),), (("host", "a\nb"),), (("ho\\st", "a"),)])
def test_values_line_protocol_cannot_carry_are_refused(tags):
    with pytest.raises(ValueError):
        LineEncoder().encode(Sample("m", tags, {"a": 1}, 5))
