"""Inputs for the Prometheus sink, shaped exactly as the sources make them.

Control-port samples are derived from the source's own SCHEMA (every measurement, field, type and
tag it declares, for the node kinds that write it); MetricsPort samples from a page a real tor
0.4.9.11 exit relay of the private test network served (tests/data/metricsport/relay-exit-lead-capture.prom),
turned into samples the way the MetricsPort source does: measurement = tor's family name, tags =
tor's labels + host/service/version, one field ``counter`` or ``gauge``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tor2influxdb2.model import Sample, TorStatus, make_tags
from tor2influxdb2.sources.control.metricsets import FLAGS, SCHEMA

DATA = Path(__file__).resolve().parent / "data"
METRICSPORT_PAGE = DATA / "metricsport" / "relay-exit-lead-capture.prom"
TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:6], "big")


def field_value(host: str, measurement: str, spec, cycle: int = 0):
    """A value of the field's declared type, different per host, field and cycle."""
    seed = _digest(host, measurement, spec.name, cycle)
    if spec.name.startswith("flag_") or spec.description.startswith("0/1") or "1 up, 0 down" in spec.description \
            or "1 = dormant" in spec.description:
        return seed % 2
    if spec.type == "integer":
        return seed % 10 ** 12
    if spec.type == "float":
        return (seed % 10 ** 9) / 1000
    if spec.type == "boolean":
        return bool(seed % 2)
    # strings: one of the words the schema lists ("recommended, obsolete, ..."; "awake, soft, hard")
    words = [w.strip(" .") for w in spec.description.split(",") if w.strip(" .")]
    return words[seed % len(words)]


def tag_values(host: str, service: str, version: str) -> dict[str, str]:
    digest = hashlib.sha256(host.encode()).hexdigest().upper()
    return {"host": host, "service": service, "version": version, "fingerprint": digest[:40],
            "nickname": "n" + digest[:10]}


def control_samples(host: str, kind: str = "relay", service: str = "tor", version: str = "0.4.9.11",
                    cycle: int = 0, time_ms: int = 1_700_000_000_000) -> list[Sample]:
    """One sample per SCHEMA measurement this kind of node writes, every field filled."""
    values = tag_values(host, service, version)
    out = []
    for spec in SCHEMA:
        if kind not in spec.kinds:
            continue
        tags = make_tags({t: values[t] for t in spec.tags})
        fields = {f.name: field_value(host, spec.name, f, cycle) for f in spec.fields}
        out.append(Sample(spec.name, tags, fields, time_ms))
    return out


def metricsport_series(text: str | None = None) -> list[tuple[str, str, dict[str, str], float]]:
    """(family, tor's type, labels, value) of every series on a MetricsPort page. The names are tor's
    own: the TYPE lines say the type, and the page is parsed untyped so the parser renames nothing."""
    text = METRICSPORT_PAGE.read_text() if text is None else text
    types = dict(TYPE_RE.findall(text))
    untyped = "\n".join(line for line in text.splitlines() if not line.startswith("# TYPE")) + "\n"
    out = []
    for family in text_string_to_metric_families(untyped):
        for s in family.samples:
            out.append((s.name, types[s.name], dict(s.labels), s.value))
    return out


def metricsport_samples(host: str, service: str = "tor", version: str = "0.4.9.11", cycle: int = 0,
                        time_ms: int = 1_700_000_000_000, as_served: bool = False) -> list[Sample]:
    """The page's series as samples; values shifted per host and cycle unless `as_served`."""
    base = {"host": host, "service": service, "version": version}
    out = []
    for index, (name, typ, labels, value) in enumerate(metricsport_series()):
        value = int(value)
        if not as_served:
            value += cycle * (index + 1) + _digest(host, name, sorted(labels.items())) % 1000
        out.append(Sample(name, make_tags({**labels, **base}), {typ: value}, time_ms))
    return out


def histogram_sample(host: str, name: str = "tor_hs_rend_circ_build_time", service: str = "tor",
                     bounds: tuple[str, ...] = ("1000", "5000", "10000", "30000", "60000", "+Inf"),
                     labels: dict[str, str] | None = None, time_ms: int = 1_700_000_000_000) -> Sample:
    """A histogram as the MetricsPort source writes one: count, sum, one field per le bound."""
    fields = {}
    running = 0
    for bound in bounds:
        running += _digest(host, name, bound) % 50
        fields[bound] = running
    fields["count"] = running
    fields["sum"] = float(_digest(host, name, "sum") % 10 ** 6)
    tags = {**(labels or {"onion_service": "x" * 56 + ".onion"}), "host": host, "service": service,
            "version": "0.4.9.11"}
    return Sample(name, make_tags(tags), fields, time_ms)


def status(host: str, kind: str = "relay", service: str = "tor", up: bool = True, metricsport: bool = False,
           cycle: int = 0, last_success: float | None = 1_700_000_000.5) -> TorStatus:
    samples: list[Sample] = []
    sources = {"control-port": up}
    if up:
        samples += control_samples(host, kind, service, cycle=cycle)
        if metricsport:
            samples += metricsport_samples(host, service, cycle=cycle)
    if metricsport:
        sources["metricsport"] = up
    return TorStatus(host, service, up, last_success, tuple(samples), None if up else "refused", sources)


__all__ = ["FLAGS", "SCHEMA", "control_samples", "metricsport_samples", "metricsport_series", "histogram_sample",
           "status", "field_value"]
