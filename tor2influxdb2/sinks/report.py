"""The -t report: per tor, the original's blocks ("Stats for host ...", Tags, one block per
measurement, JSON-indented), then the blocks of the other metric sets that tor answered."""

from __future__ import annotations

import json

from ..model import Sample

CORE = ("traffic", "connections", "handshakes")
TAG_ORDER = ("host", "version", "service")


def report(where: str, name: str, samples: list[Sample], core: bool = True) -> str:
    """One tor's block of the -t output; MetricsPort series (measurements named tor_*) one by one."""
    by_measurement: dict[str, Sample] = {}
    series = []
    for sample in samples:
        if sample.measurement.startswith("tor_"):
            series.append(sample)
        else:
            by_measurement.setdefault(sample.measurement, sample)
    common: dict[str, str] = {}
    if samples:
        tags = dict(samples[0].tags)
        common = {k: tags[k] for k in TAG_ORDER if k in tags}
    parts = [f"\nStats for host {where}({name}): ", "\nTags:", json.dumps(common, indent=4)]
    shown = list(CORE) if core else []
    shown += [m for m in by_measurement if m not in shown]
    for measurement in shown:
        sample = by_measurement.get(measurement)
        title = measurement.replace("_", " ").capitalize()
        extra = {k: v for k, v in (sample.tags if sample else ()) if k not in TAG_ORDER}
        if extra:
            parts += [f"\n{title} tags:", json.dumps(extra, indent=4)]
        parts += [f"\n{title} measurement:", json.dumps(dict(sample.fields) if sample else {}, indent=4)]
    if series:
        parts.append(f"\nMetricsPort ({len(series)} series):")
        for sample in series:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.tags if k not in TAG_ORDER)
            values = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sample.fields.items())
            parts.append(f"{sample.measurement}{{{labels}}} {values}")
    return "\n".join(parts)
