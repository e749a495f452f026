"""MetricsPort pages -> samples (tor2influxdb2.sources.metricsport.parse), on real tor pages.

What is expected is read from the pages themselves by a small reader of this file (tor writes
plain lines: ``name{a="x",b="y"} value``), independent of the code under test and of
prometheus_client: every value written must equal the page's, every family must keep tor's name
and type, nothing of a wanted family may be lost.
"""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tor2influxdb2.errors import Reason, SourceError
from tor2influxdb2.model import make_tags
from tor2influxdb2.sources.metricsport import SCHEMA, DEFAULT_FAMILIES, PageParser
from tor2influxdb2.sources.metricsport.address import parse_families
from tor2influxdb2.sources.metricsport.parse import (ALL_SELECTION, DEFAULT_SELECTION, MAX_LABEL_VALUE, MAX_SERIES,
                                                     go_float, onion_hash)

DATA = Path(__file__).parent / "data" / "metricsport"
PAGES = sorted(DATA.glob("*.prom"))
RELAY_PAGES = [p for p in PAGES if p.name.startswith("relay-")]
ONION_PAGES = [p for p in PAGES if "\ntor_hs_" in p.read_text()]
COMMON = make_tags({"host": "relay1", "service": "tor", "version": "0.4.9.11"})
COMMON_KEYS = {k for k, _ in COMMON}

LINE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


class Page:
    """A page as tor wrote it: families (name -> type, from the TYPE lines) and every sample
    line as (metric name, labels) -> value."""

    def __init__(self, text: str):
        self.text = text
        self.types: dict[str, str] = {}
        self.values: dict[tuple[str, frozenset], float] = {}
        self.family_of: dict[tuple[str, frozenset], str] = {}
        family = None
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, family, type_ = line.split()
                self.types.setdefault(family, type_)
            elif line and not line.startswith("#"):
                name, labels, value = LINE_RE.match(line).groups()
                key = (name, frozenset(LABEL_RE.findall(labels or "")))
                self.values[key] = float(value)
                self.family_of[key] = family

    def lines_of(self, family: str) -> dict:
        return {k: v for k, v in self.values.items() if self.family_of[k] == family}


def page(path: Path) -> Page:
    return Page(path.read_text())


def labels_of(sample) -> dict:
    return {k: v for k, v in sample.tags if k not in COMMON_KEYS}


def expected_lines(sample, type_: str) -> dict:
    """(metric name, labels) -> value that the page must hold for this sample's fields."""
    labels = labels_of(sample)
    out = {}
    for field, value in sample.fields.items():
        if type_ in ("counter", "gauge", "untyped"):
            out[(sample.measurement, frozenset(labels.items()))] = (field, value)
        elif field in ("sum", "count"):
            out[(f"{sample.measurement}_{field}", frozenset(labels.items()))] = (field, value)
        else:
            out[("bucket", field, frozenset(labels.items()))] = (field, value)
    return out


def check_values(samples, pg: Page) -> int:
    """Every field of every sample equals the page's line; returns the number of fields checked."""
    checked = 0
    for sample in samples:
        type_ = pg.types[sample.measurement]
        assert all(isinstance(v, float) for v in sample.fields.values())
        for key, (field, value) in expected_lines(sample, type_).items():
            if key[0] == "bucket":
                _, bound, labels = key
                matches = [v for (name, lab), v in pg.values.items()
                           if name == sample.measurement + "_bucket"
                           and {(k, x) for k, x in lab if k != "le"} == set(labels)
                           and go_float(float(dict(lab)["le"])) == bound]
                assert matches == [value], (sample, bound)
            else:
                want = {"counter": "counter", "gauge": "gauge", "untyped": "value"}.get(type_, field)
                assert field == want, (sample.measurement, field, type_)
                assert pg.values[key] == value, (sample, key)
            checked += 1
    return checked


# ----------------------------------------------------------------------------- real relay pages

@pytest.mark.parametrize("path", RELAY_PAGES, ids=lambda p: p.name)
def test_default_selection_writes_every_default_family_as_tor_names_it(path):
    pg = page(path)
    samples = PageParser().parse(path.read_bytes(), COMMON, 1_700_000_000_000)
    wanted = {f for f in pg.types if f in DEFAULT_FAMILIES or f.startswith("tor_hs_")}
    assert {s.measurement for s in samples} == wanted
    assert wanted  # the page has default families
    for s in samples:
        assert s.time_ms == 1_700_000_000_000
        assert dict(s.tags)["host"] == "relay1" and dict(s.tags)["version"] == "0.4.9.11"
        assert s.tags == tuple(sorted(s.tags))


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_value_written_is_the_pages_and_none_is_lost(path):
    pg = page(path)
    samples = PageParser(ALL_SELECTION, onion_label="address").parse(path.read_bytes(), COMMON, 1)
    checked = check_values(samples, pg)
    assert checked == len(pg.values)  # one field per line of the page
    assert {s.measurement for s in samples} == set(pg.types)


@pytest.mark.parametrize("path", RELAY_PAGES, ids=lambda p: p.name)
def test_counter_and_gauge_families_of_one_stem_stay_apart(path):
    """tor_relay_connections (gauge) and tor_relay_connections_total (counter) are two families;
    so are tor_relay_congestion_control(_total). A parser that strips _total would merge them."""
    pg = page(path)
    samples = PageParser(ALL_SELECTION).parse(path.read_bytes(), COMMON, 1)
    fields = {}
    for s in samples:
        fields.setdefault(s.measurement, set()).update(s.fields)
    for stem in ("tor_relay_connections", "tor_relay_congestion_control"):
        assert pg.types[stem] == "gauge" and pg.types[stem + "_total"] == "counter"
        assert fields[stem] == {"gauge"} and fields[stem + "_total"] == {"counter"}
        assert sum(s.measurement == stem for s in samples) == len(pg.lines_of(stem))
        assert sum(s.measurement == stem + "_total" for s in samples) == len(pg.lines_of(stem + "_total"))
    # a gauge despite its name
    assert pg.types["tor_relay_circuits_total"] == "gauge" and fields["tor_relay_circuits_total"] == {"gauge"}


@pytest.mark.parametrize("path", RELAY_PAGES, ids=lambda p: p.name)
def test_default_connections_are_the_open_or_connections_only(path):
    pg = page(path)
    samples = [s for s in PageParser().parse(path.read_bytes(), COMMON, 1) if s.measurement == "tor_relay_connections"]
    lines = {k: v for k, v in pg.lines_of("tor_relay_connections").items()
             if ("type", "OR") in k[1] and ("state", "opened") in k[1]}
    assert len(lines) >= 4 and len(pg.lines_of("tor_relay_connections")) > 4 * len(lines)
    assert {frozenset(labels_of(s).items()) for s in samples} == {k[1] for k in lines}
    for s in samples:
        assert s.fields == {"gauge": pg.values[("tor_relay_connections", frozenset(labels_of(s).items()))]}
    # naming the family in full keeps every connection type and state
    selection, problems = parse_families("default,tor_relay_connections")
    assert not problems
    whole = [s for s in PageParser(selection).parse(path.read_bytes(), COMMON, 1)
             if s.measurement == "tor_relay_connections"]
    assert len(whole) == len(pg.lines_of("tor_relay_connections"))


@pytest.mark.parametrize("path", RELAY_PAGES, ids=lambda p: p.name)
def test_a_relays_default_series_stay_under_80(path):
    page_lines = sum(1 for line in path.read_text().splitlines() if line and not line.startswith("#"))
    default = PageParser().parse(path.read_bytes(), COMMON, 1)
    everything = PageParser(ALL_SELECTION).parse(path.read_bytes(), COMMON, 1)
    assert len(default) < 80
    assert len(everything) == page_lines > 250  # all: one series per line of a relay's page


def test_tor_0_4_9_handshakes_are_there():
    """The reason for this source: ntor v3 handshakes are only on the MetricsPort."""
    path = DATA / "relay-exit-lead-capture.prom"
    pg = page(path)
    samples = PageParser().parse(path.read_bytes(), COMMON, 1)
    ntor3 = [s for s in samples if s.measurement == "tor_relay_load_onionskins_total"
             and labels_of(s) == {"type": "ntor_v3", "action": "processed"}]
    assert len(ntor3) == 1
    value = pg.values[("tor_relay_load_onionskins_total", frozenset({("type", "ntor_v3"), ("action", "processed")}))]
    assert ntor3[0].fields == {"counter": value} and value > 0


def test_a_second_page_gives_its_own_values_not_the_firsts():
    """Known series are read from a cache at the next scrape: the values must be the new page's."""
    path = DATA / "relay-exit-lead-capture.prom"
    first = path.read_text()
    second = re.sub(r"(?m)^(tor_[^#\n]*[ \t])(\d+)$", lambda m: f"{m.group(1)}{int(m.group(2)) * 3 + 1}", first)
    assert second != first
    parser = PageParser(ALL_SELECTION)
    check_values(parser.parse(first.encode(), COMMON, 1), Page(first))
    samples = parser.parse(second.encode(), COMMON, 2)
    assert check_values(samples, Page(second)) == len(Page(second).values)
    # a new version tag (tor upgraded) reaches every sample
    newer = make_tags({"host": "relay1", "service": "tor", "version": "0.4.9.12"})
    assert {dict(s.tags)["version"] for s in parser.parse(second.encode(), newer, 3)} == {"0.4.9.12"}


# ----------------------------------------------------------------------------- onion services

@pytest.mark.parametrize("path", ONION_PAGES, ids=lambda p: p.name)
def test_onion_label_address_hash_and_drop(path):
    pg = page(path)
    addresses = {v for key in pg.values for k, v in key[1] if k == "onion"}
    assert addresses  # every series of the service carries its onion label
    body = path.read_bytes()

    by_address = PageParser(onion_label="address").parse(body, COMMON, 1)
    assert {dict(s.tags).get("onion") for s in by_address if s.measurement.startswith("tor_hs_")} == addresses

    hashed = PageParser(onion_label="hash").parse(body, COMMON, 1)
    want = {hashlib.sha256(a.encode()).hexdigest()[:16]: a for a in addresses}
    assert {dict(s.tags).get("onion") for s in hashed if s.measurement.startswith("tor_hs_")} == set(want)
    assert not any(a in str(s.tags) for s in hashed for a in addresses)
    # the same figures, only the tag differs
    unhash = {(s.measurement, tuple(sorted((k, want.get(v, v) if k == "onion" else v) for k, v in s.tags))):
              s.fields for s in hashed}
    assert unhash == {(s.measurement, s.tags): s.fields for s in by_address}

    dropped = PageParser(onion_label="drop").parse(body, COMMON, 1)
    assert not any("onion" in dict(s.tags) for s in dropped)
    totals: dict = {}
    for s in by_address:
        key = (s.measurement, tuple((k, v) for k, v in s.tags if k != "onion"))
        for field, value in s.fields.items():
            totals.setdefault(key, {}).setdefault(field, 0.0)
            totals[key][field] += value
    assert {(s.measurement, s.tags): s.fields for s in dropped} == totals


@pytest.mark.parametrize("path", ONION_PAGES, ids=lambda p: p.name)
def test_histograms_give_count_sum_and_one_field_per_bucket(path):
    pg = page(path)
    samples = PageParser(onion_label="address").parse(path.read_bytes(), COMMON, 1)
    histograms = [s for s in samples if pg.types[s.measurement] == "histogram"]
    assert histograms
    for s in histograms:
        bounds = sorted(float(dict(k[1])["le"]) for k in pg.values
                        if k[0] == s.measurement + "_bucket" and set(labels_of(s).items()) < k[1])
        assert set(s.fields) == {"count", "sum"} | {go_float(b) for b in bounds}
        assert "+Inf" in s.fields and s.fields["+Inf"] == s.fields["count"]
        assert "le" not in dict(s.tags)
    check_values(histograms, pg)


def test_go_float_names_buckets_as_telegraf_and_influxdb_scrapers_do():
    # Telegraf's own expected output (plugins/parsers/prometheus/testcases/valid_histogram):
    # +Inf=2025,125000=1994,1e+06=2005,250000=1997,2e+06=2012,...
    assert [go_float(x) for x in (math.inf, 125000.0, 1e6, 250000.0, 2e6)] == \
        ["+Inf", "125000", "1e+06", "250000", "2e+06"]
    assert [go_float(float(x)) for x in ("1000.00", "0.5", "0.0001", "0.00001", "0", "123456.789")] == \
        ["1000", "0.5", "0.0001", "1e-05", "0", "123456.789"]


# ----------------------------------------------------------------------------- what a peer sends

def tor_page(*lines: str) -> bytes:
    return ("# HELP tor_bug_reached_count x\n# TYPE tor_bug_reached_count counter\ntor_bug_reached_count 0\n"
            + "\n".join(lines) + "\n").encode()


def test_label_values_with_a_backslash_or_a_control_character_are_cleaned_and_capped():
    body = tor_page("# TYPE tor_relay_flag gauge",
                    r'tor_relay_flag{type="Fa\\st"} 1',
                    r'tor_relay_flag{type="line\nbreak"} 2',
                    'tor_relay_flag{type="' + "x" * 1000 + '"} 3',
                    'tor_relay_flag{type="Ünïcode ok"} 4')
    samples = {s.fields["gauge"]: dict(s.tags)["type"] for s in PageParser().parse(body, COMMON, 1)
               if s.measurement == "tor_relay_flag"}
    assert samples == {1.0: "Fa_st", 2.0: "line_break", 3.0: "x" * MAX_LABEL_VALUE, 4.0: "Ünïcode ok"}


def test_a_label_named_like_a_common_tag_cannot_replace_it():
    body = tor_page("# TYPE tor_relay_flag gauge", 'tor_relay_flag{host="evil",type="Exit"} 1')
    (sample,) = [s for s in PageParser().parse(body, COMMON, 1) if s.measurement == "tor_relay_flag"]
    assert dict(sample.tags)["host"] == "relay1" and dict(sample.tags)["exported_host"] == "evil"


def test_non_finite_values_are_left_out():
    body = tor_page("# TYPE tor_relay_flag gauge", 'tor_relay_flag{type="a"} NaN', 'tor_relay_flag{type="b"} +Inf',
                    'tor_relay_flag{type="c"} -Inf', 'tor_relay_flag{type="d"} 7')
    flags = [s for s in PageParser().parse(body, COMMON, 1) if s.measurement == "tor_relay_flag"]
    assert [(dict(s.tags)["type"], s.fields) for s in flags] == [("d", {"gauge": 7.0})]


@pytest.mark.parametrize("body, reason, words", [
    (b"<html><body>It works!</body></html>\n", Reason.PROTOCOL, "not Prometheus text"),
    (b"", Reason.PROTOCOL, "empty"),
    (b"\xff\xfe\x00garbage", Reason.PROTOCOL, "not UTF-8"),
    (b"# TYPE node_load1 gauge\nnode_load1 0.5\n", Reason.PROTOCOL, "no tor_ metric"),
    (b"# TYPE tor_relay_flag flavour\n", Reason.PROTOCOL, "malformed TYPE"),
    (tor_page("# TYPE tor_relay_flag gauge", 'tor_relay_flag{type="Exit"} one'), Reason.PROTOCOL, "tor_relay_flag"),
    (tor_page("# TYPE tor_relay_flag gauge", 'tor_relay_flag{type="Exit} 1'), Reason.PROTOCOL, "tor_relay_flag"),
])
def test_garbage_is_a_typed_failure_with_a_short_message(body, reason, words):
    with pytest.raises(SourceError) as caught:
        PageParser().parse(body, COMMON, 1)
    assert caught.value.failure.reason == reason
    assert words in caught.value.failure.message
    assert len(caught.value.failure.message) < 300 and "\n" not in caught.value.failure.message


def test_too_many_series_is_too_large():
    lines = ["# TYPE tor_relay_flag gauge"] + [f'tor_relay_flag{{type="f{i}"}} 1' for i in range(MAX_SERIES + 1)]
    with pytest.raises(SourceError) as caught:
        PageParser().parse(tor_page(*lines), COMMON, 1)
    assert caught.value.failure.reason == Reason.TOO_LARGE


def test_the_connections_filter_reads_the_labels_not_the_text():
    body = tor_page("# TYPE tor_relay_connections gauge",
                    'tor_relay_connections{subtype="OR",type="Exit",state="opened"} 1',
                    'tor_relay_connections{type="OR",state="opened",note="state=\\"closed\\""} 2',
                    'tor_relay_connections{state="opened",type="OR"} 3')
    parser = PageParser()
    for _ in range(2):  # the first page and the next one (known series)
        kept = [s.fields["gauge"] for s in parser.parse(body, COMMON, 1) if s.measurement == "tor_relay_connections"]
        assert kept == [2.0, 3.0]


def test_a_family_whose_type_changes_between_pages_is_written_with_its_new_type():
    parser = PageParser()
    gauge = tor_page("# TYPE tor_relay_flag gauge", 'tor_relay_flag{type="Exit"} 1')
    counter = tor_page("# TYPE tor_relay_flag counter", 'tor_relay_flag{type="Exit"} 1')
    assert [s.fields for s in parser.parse(gauge, COMMON, 1) if s.measurement == "tor_relay_flag"] == [{"gauge": 1.0}]
    assert [s.fields for s in parser.parse(counter, COMMON, 1) if s.measurement == "tor_relay_flag"] == \
        [{"counter": 1.0}]


def test_a_sample_without_its_type_line_is_an_untyped_family_of_its_own():
    """As in Prometheus, even inside the block of another (unwanted) family."""
    body = tor_page("# TYPE tor_relay_drop_cell_total counter", "tor_relay_drop_cell_total 4",
                    'tor_hs_new_thing{onion="abc"} 5', "tor_relay_drop_cell_total 6",
                    "# TYPE tor_hs_typed untyped", 'tor_hs_typed{onion="def"} 7')
    samples = [s for s in PageParser(onion_label="address").parse(body, COMMON, 1)
               if s.measurement != "tor_bug_reached_count"]
    assert [(s.measurement, dict(s.tags)["onion"], s.fields) for s in samples] == \
        [("tor_hs_new_thing", "abc", {"value": 5.0}), ("tor_hs_typed", "def", {"value": 7.0})]


def test_a_summary_gives_count_sum_and_one_field_per_quantile():
    body = tor_page("# TYPE tor_hs_latency summary", 'tor_hs_latency{quantile="0.5"} 12', 'tor_hs_latency{quantile="0.99"} 40',
                    "tor_hs_latency_sum 300", "tor_hs_latency_count 20")
    (sample,) = [s for s in PageParser().parse(body, COMMON, 1) if s.measurement == "tor_hs_latency"]
    assert sample.fields == {"0.5": 12.0, "0.99": 40.0, "sum": 300.0, "count": 20.0}
    assert "quantile" not in dict(sample.tags)


def test_a_family_typed_twice_keeps_its_first_type():
    body = tor_page("# TYPE tor_relay_flag gauge", 'tor_relay_flag{type="a"} 1',
                    "# TYPE tor_relay_flag counter", 'tor_relay_flag{type="b"} 2')
    flags = [s for s in PageParser().parse(body, COMMON, 1) if s.measurement == "tor_relay_flag"]
    assert [s.fields for s in flags] == [{"gauge": 1.0}]


# ----------------------------------------------------------------------------- schema, imports

def test_the_schema_lists_every_family_of_the_real_pages_with_its_labels_and_field():
    specs = {s.name: s for s in SCHEMA}
    for path in PAGES:
        pg = page(path)
        for family, type_ in pg.types.items():
            spec = specs[family]
            assert spec.source == "metricsport" and spec.group == "metricsport"
            labels = {k for key in pg.lines_of(family) for k, _ in key[1]} - {"le"}
            assert labels | {"host", "service", "version"} <= set(spec.tags), family
            field = {"counter": "counter", "gauge": "gauge", "untyped": "value"}.get(type_)
            if field:
                assert [f.name for f in spec.fields] == [field]
            else:
                samples = PageParser(ALL_SELECTION).parse(path.read_bytes(), COMMON, 1)
                written = {f for s in samples if s.measurement == family for f in s.fields}
                assert written <= {f.name for f in spec.fields}
            assert spec.default == (family in DEFAULT_FAMILIES or family.startswith("tor_hs_"))
    assert {s.name for s in SCHEMA if s.default} >= set(DEFAULT_FAMILIES)


def test_prometheus_client_is_imported_only_to_parse_a_page():
    code = ("import sys, tor2influxdb2.sources.metricsport as m; assert 'prometheus_client' not in sys.modules;"
            "m.PageParser().parse(open(sys.argv[1],'rb').read(), (), 1); assert 'prometheus_client' in sys.modules;"
            "assert not [k for k in sys.modules if k.startswith('tor2influxdb2.sinks')]")
    subprocess.run([sys.executable, "-c", code, str(RELAY_PAGES[0])], check=True, cwd=Path(__file__).parent.parent)


def test_onion_hash_is_the_documented_one():
    address = "ujzdegxdncf32epf3dhodzdocis2jhtlgmxgedn73u55xtplpft7v4sd"
    out = subprocess.run(f"printf %s {address} | sha256sum | cut -c1-16", shell=True, capture_output=True, text=True)
    assert onion_hash(address) == out.stdout.strip() and len(out.stdout.strip()) == 16
    assert DEFAULT_SELECTION.wants("tor_hs_anything_new")


def test_tag_sets_are_canonical_whatever_common_tags_a_tor_has():
    """A tag set is made anew at each page from the series' labels (shared by every parser of a
    selection) and the tor's common tags, in key order: exactly what make_tags makes of them, for
    any set of common tags, and each tor keeps its own."""
    page = (DATA / "relay-exit-lead-capture.prom").read_bytes()
    commons = [COMMON, make_tags({"host": "relay2"}), make_tags({"host": "relay3", "version": "0.4.9.11"}),
               make_tags({"zz": "last", "host": "relay4", "a": "first", "service": "tor"})]
    for common in commons:
        samples = PageParser().parse(page, common, 1)
        assert len(samples) > 40
        for sample in samples:
            assert sample.tags == make_tags(sample.tags) and set(common) <= set(sample.tags), sample
