"""Hostile tier, as a property: any name is either refused at start or stored exactly as given.

Hypothesis makes names (any characters, biased towards those line protocol escapes). Each is
given to the real settings parser as a TOR_HOSTS_FILE entry, as a TOR_HOSTS entry and as
INFLUX_SERVICE_TAG: it must be refused (ConfigError) or become the tag, which the InfluxDB sink
(the daemon's LineEncoder and InfluxWriter) writes to a real VictoriaMetrics, where it must read
back exactly as given (spaces around an entry are not part of it: README, TOR_HOSTS), with no
other tag. tor's own version answer, any bytes, must never add or change a tag.

The grammar fixes two things: the name is the field after the last ':' (so it has no ':'), and
an entry ends at ',' (TOR_HOSTS) or at a line break (TOR_HOSTS_FILE).
"""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from support import wait_for
from tor2influxdb2.errors import ConfigError
from tor2influxdb2.model import Sample, make_tags
from tor2influxdb2.redact import Redactor
from tor2influxdb2.settings import config_from_env
from tor2influxdb2.sinks.influx import InfluxWriter
from tor2influxdb2.sinks.lineprotocol import LineEncoder
from tor2influxdb2.sources.control.metricsets import clean_version
from tor2influxdb2.sources.control.session import TagPolicy

pytestmark = pytest.mark.hostile

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines() ends a line
SPECIAL = list(',= "#\'\\\t\x00\x7f\xa0\u200b\u00e9\U0001F9C5{}[]()=,,  ')
NAMES = st.text(st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")), min_size=0, max_size=30) \
    .filter(lambda n: ":" not in n and not any(c in LINE_BREAKS for c in n))
VERSIONS = st.binary(max_size=80)
_run = itertools.count()


def _settings(**env):
    return config_from_env(env, mode="test", redactor=Redactor())


def _accepted(tmp_path, name: str, form: str):
    """The tag value the daemon would write for `name` given as `form`, or None if refused."""
    try:
        if form == "file":
            path = tmp_path / "hosts"
            path.write_text(f"127.0.0.1:9051:{name}\n", encoding="utf-8")
            return _settings(TOR_HOSTS_FILE=str(path)).tor_hosts[0].name
        if form == "env":
            hosts = _settings(TOR_HOSTS=f"127.0.0.1:9051:{name}").tor_hosts
            assert len(hosts) == 1 or "," in name
            return hosts[0].name if "," not in name else None
        service = _settings(TOR_HOSTS="127.0.0.1:9051:svc", INFLUX_SERVICE_TAG=name).service_tag
        return service or None  # empty: no service tag, as documented
    except ConfigError:
        return None


@settings(max_examples=14, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(names=st.lists(NAMES, min_size=1, max_size=12), versions=st.lists(VERSIONS, min_size=1, max_size=4))
def test_a_name_is_refused_or_reads_back_exactly(tmp_path, victoria, names, versions):
    example = next(_run)
    field = f"p{int(time.time())}x{example}"
    encoder = LineEncoder()
    lines, expected = [], {}
    now = int(time.time() * 1000)
    for i, name in enumerate(names):
        for form in ("file", "env", "service"):
            tag = _accepted(tmp_path, name, form)
            event(f"{form}: {'refused' if tag is None else 'written'}")
            if tag is None:
                continue
            assert tag == name.strip(), (form, name, tag)  # only the spaces around the entry are dropped
            uid = f"u:{example}:{i}:{form}"  # ':' is in no name: a uid never equals a tag under test
            host, service = (tag, uid) if form != "service" else (uid, tag)
            tags = make_tags(TagPolicy(service, True).tags(host, "0.4.9.11"))
            lines.append(encoder.encode(Sample("traffic", tags, {field: i}, now)))
            expected[uid] = {"__name__": f"traffic_{field}", "host": host, "service": service, "version": "0.4.9.11"}
    for j, raw in enumerate(versions):
        uid = f"v:{example}:{j}"
        version = clean_version(raw.decode("utf-8", "replace"))
        tags = make_tags(TagPolicy(uid, True).tags(uid, version))
        lines.append(encoder.encode(Sample("traffic", tags, {field: j}, now)))
        expected[uid] = {"__name__": f"traffic_{field}", "host": uid, "service": uid,
                         **({"version": version} if version else {})}
    writer = InfluxWriter(victoria.url, "org", "bucket", "property-token-1d4f", 5)
    try:
        writer.write(lines)
    finally:
        writer.close()

    def stored():
        series = [s["metric"] for s in victoria.export(f'{{__name__="traffic_{field}"}}')]
        return series if len(series) >= len(expected) else None
    series = wait_for(stored, 10, what=f"{len(expected)} series of example {example}")
    got = {}
    for labels in series:
        uid = next(v for k in ("service", "host") if (v := labels.get(k, "")).startswith(("u:", "v:")))
        got[uid] = labels
    assert got == expected
