"""sinks.lineprotocol: the same lines influxdb-client's Point writes, for every value type."""

import random
import string

import pytest
from influxdb_client import Point, WritePrecision

from tor2influxdb2.model import Sample, make_tags
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


def test_types_are_fixed():
    line = LineEncoder().encode(Sample("m", (("host", "h"),), {"i": 3, "f": 3.0, "b": True, "s": 'a"b\\c'}, 5))
    assert line == 'm,host=h b=true,f=3.0,i=3i,s="a\\"b\\\\c" 5'


def test_non_finite_floats_are_left_out_and_a_line_without_fields_is_none():
    encoder = LineEncoder()
    assert encoder.encode(Sample("m", (("host", "h"),), {"a": float("nan"), "b": 1}, 5)) == "m,host=h b=1i 5"
    assert encoder.encode(Sample("m", (("host", "h"),), {"a": float("inf")}, 5)) is None


@pytest.mark.parametrize("tags", [(("host", "a\\"),), (("host", "a\nb"),), (("ho\\st", "a"),)])
def test_values_line_protocol_cannot_carry_are_refused(tags):
    with pytest.raises(ValueError):
        LineEncoder().encode(Sample("m", tags, {"a": 1}, 5))
