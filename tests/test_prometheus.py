"""The Prometheus sink over real HTTP on 127.0.0.1, read with prometheus_client's own parser.

Inputs are shaped by the control-port source's SCHEMA and by a page a real tor's MetricsPort
served (tests/prom_inputs.py); every expected value is the sample it came from.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import logging
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import prom_inputs as pi
from peers import pump
from support import ROOT, free_port, stop_process, wait_for
from tor2influxdb2.model import Sample, TorStatus, make_tags
from tor2influxdb2.redact import REDACTOR
from tor2influxdb2.sinks import prometheus as prom
from tor2influxdb2.sinks.prometheus import PrometheusConfig, PrometheusSink

#: What prometheus-tor_exporter (atx/prometheus-tor_exporter, prometheus-tor-exporter.py) shows, by the
#: control-port field it comes from: name and extra labels. All gauges there.
EXPORTER = {
    ("traffic", "read"): ("tor_read_bytes", {}),
    ("traffic", "written"): ("tor_written_bytes", {}),
    ("status", "network_liveness"): ("tor_network_liveness", {}),
    ("status", "circuit_established"): ("tor_circuit_established", {}),
    ("status", "dormant"): ("tor_dormant", {}),
    ("status", "uptime"): ("tor_uptime", {}),
    ("relay", "reachable_or"): ("tor_reachable", {"port": "OR"}),
    ("relay", "reachable_dir"): ("tor_reachable", {"port": "DIR"}),
    ("relay", "effective_rate"): ("tor_effective_rate", {}),
    ("relay", "effective_burst"): ("tor_effective_burst_rate", {}),
    ("accounting", "read_bytes"): ("tor_accounting_read_bytes", {}),
    ("accounting", "read_left"): ("tor_accounting_left_read_bytes", {}),
    ("accounting", "written_bytes"): ("tor_accounting_write_bytes", {}),
    ("accounting", "written_left"): ("tor_accounting_left_write_bytes", {}),
    **{("relay", "flag_" + flag.lower()): ("tor_flags", {"flag": flag}) for flag in pi.FLAGS},
}
TYPE_RE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


# ------------------------------------------------------------------------------ helpers

def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} as prometheus_client reads the page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"series twice: {key}"
            out[key] = s.value
    return out


def types(text: str) -> dict[str, str]:
    return dict(TYPE_RE.findall(text))


def get(port: int, path: str = "/metrics", auth: tuple[str, str] | None = None, headers=None,
        context: ssl.SSLContext | None = None, method: str = "GET", host: str = "127.0.0.1"):
    """(status, headers, body) of one request."""
    conn = (http.client.HTTPSConnection(host, port, context=context, timeout=10) if context
            else http.client.HTTPConnection(host, port, timeout=10))
    hdrs = dict(headers or {})
    if auth:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    try:
        conn.request(method, path, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def scrape(sink: PrometheusSink, **kwargs) -> str:
    status, _, body = get(sink.port, **kwargs)
    assert status == 200, body
    return body.decode()


def base_labels(status: TorStatus) -> dict[str, str]:
    return {"host": status.name, **({"service": status.service} if status.service else {})}


def expected_control(status: TorStatus) -> dict[tuple[str, frozenset], float]:
    """Every series a tor's control-port samples make, by the sink's own table of names; the
    values are the samples' own."""
    base = base_labels(status)
    out = {}
    for sample in status.samples:
        if sample.measurement.startswith("tor_"):
            continue
        tags = dict(sample.tags)
        for tag in ("version", "fingerprint", "nickname"):
            if tag in tags:
                out[(f"tor_{tag}", frozenset({**base, tag: tags[tag]}.items()))] = 1.0
        for field, value in sample.fields.items():
            target = prom.CONTROL[(sample.measurement, field)]
            label = prom.STRING_LABELS.get((sample.measurement, field))
            if label:
                out[(target.name, frozenset({**base, label: value}.items()))] = 1.0
            else:
                out[(target.name, frozenset({**base, **dict(target.labels)}.items()))] = float(value)
        if sample.measurement == "accounting":
            f = sample.fields
            out[("tor_accounting_read_limit_bytes", frozenset(base.items()))] = float(f["read_bytes"] + f["read_left"])
            out[("tor_accounting_write_limit_bytes", frozenset(base.items()))] = float(
                f["written_bytes"] + f["written_left"])
    return out


def expected_metricsport(status: TorStatus) -> dict[tuple[str, frozenset], float]:
    base = base_labels(status)
    out = {}
    for sample in status.samples:
        if sample.measurement.startswith("tor_"):
            labels = {k: v for k, v in sample.tags if k not in ("host", "service", "version")}
            (value,) = sample.fields.values()
            out[(sample.measurement, frozenset({**labels, **base}.items()))] = float(value)
    return out


def only_tor(series: dict, host: str | None = None) -> dict:
    return {k: v for k, v in series.items() if k[0].startswith("tor_") and not k[0].startswith("tor2influxdb2")
            and (host is None or ("host", host) in k[1])}


@pytest.fixture
def sink_factory():
    started = []

    def make(config: PrometheusConfig | None = None, **kwargs) -> PrometheusSink:
        sink = PrometheusSink(config or PrometheusConfig(port=0), **kwargs)
        started.append(sink)
        sink.start()
        return sink

    yield make
    for sink in started:
        sink.close()


# ------------------------------------------------------------------------------ what is shown

def test_every_schema_field_has_a_named_series():
    """No field of the control-port source is left to the fallback names."""
    for spec in pi.SCHEMA:
        for field in spec.fields:
            assert (spec.name, field.name) in prom.CONTROL, (spec.name, field.name)
            if field.type == "string":
                assert (spec.name, field.name) in prom.STRING_LABELS
    # the flags are spelt as tor writes them
    assert {prom.CONTROL[("relay", "flag_" + f.lower())].labels for f in pi.FLAGS} == \
        {(("flag", f),) for f in pi.FLAGS}


def test_values_equal_the_samples_for_every_kind_of_node(sink_factory):
    statuses = [pi.status("relay-1"), pi.status("bridge-1", kind="bridge"), pi.status("client-1", kind="client"),
                pi.status("noservice", kind="client", service="")]
    sink = sink_factory()
    sink.update(statuses, {"buffer_points": 7, "cycle_seconds": 10.0})
    text = scrape(sink)
    served = parse(text)
    expected = {}
    for status in statuses:
        expected |= expected_control(status)
        assert served[("tor2influxdb2_up", frozenset(base_labels(status).items()))] == 1
    assert only_tor(served) == expected
    # every control-port series is a gauge, as prometheus-tor_exporter's are
    assert {t for name, t in types(text).items() if name.startswith("tor_")} == {"gauge"}
    assert served[("tor2influxdb2_buffer_points", frozenset())] == 7
    assert served[("tor2influxdb2_cycle_seconds", frozenset())] == 10.0
    # a client writes no relay series; a tor without service has only host
    assert not [k for k in served if k[0] == "tor_fingerprint" and ("host", "client-1") in k[1]]
    assert ("tor_read_bytes", frozenset({("host", "noservice")})) in served


def test_prometheus_tor_exporter_names(sink_factory):
    relay = pi.status("relay-x")
    sink = sink_factory()
    sink.update([relay], {})
    text = scrape(sink)
    served, typed = parse(text), types(text)
    base = base_labels(relay)
    samples = {s.measurement: s for s in relay.samples}
    for (measurement, field), (name, labels) in EXPORTER.items():
        key = (name, frozenset({**base, **labels}.items()))
        assert served[key] == samples[measurement].fields[field], name
        assert typed[name] == "gauge"
    tags = dict(samples["traffic"].tags) | dict(samples["relay"].tags)
    for tag in ("version", "fingerprint", "nickname"):
        assert served[(f"tor_{tag}", frozenset({**base, tag: tags[tag]}.items()))] == 1
    status_field = samples["status"].fields["version_status"]
    assert served[("tor_version_status", frozenset({**base, "version_status": status_field}.items()))] == 1
    acc = samples["accounting"].fields
    assert served[("tor_accounting_read_limit_bytes", frozenset(base.items()))] == acc["read_bytes"] + acc["read_left"]
    assert served[("tor_accounting_write_limit_bytes", frozenset(base.items()))] == \
        acc["written_bytes"] + acc["written_left"]
    assert {v for k, v in served.items() if k[0] == "tor_flags"} <= {0.0, 1.0}
    assert len([k for k in served if k[0] == "tor_flags"]) == len(pi.FLAGS)


def test_metricsport_families_keep_tors_names(sink_factory):
    relay = pi.status("exit-1", metricsport=True)
    sink = sink_factory()
    sink.update([relay], {})
    text = scrape(sink)
    served, typed = parse(text), types(text)
    assert only_tor(served) == expected_control(relay) | expected_metricsport(relay)
    # TYPE lines: tor's own, but a counter without _total is untyped (prometheus_client would rename it)
    page = pi.METRICSPORT_PAGE.read_text()
    for name, typ in types(page).items():
        want = "untyped" if typ == "counter" and not name.endswith("_total") else typ
        assert typed[name] == want, name
    assert typed["tor_relay_traffic_bytes"] == "untyped" and typed["tor_relay_dos_total"] == "counter"
    assert typed["tor_relay_circuits_total"] == "gauge"


def test_prometheus_client_reads_the_same_from_tor_and_from_us(sink_factory):
    """tor's own page and ours, read by prometheus_client: the same series and values, with host and
    service added, except that it renames tor's counters without _total (and ours keep the name)."""
    relay = TorStatus("exit-2", "tor", True, 1.0, tuple(pi.metricsport_samples("exit-2", as_served=True)),
                      sources={"metricsport": True})
    sink = sink_factory()
    sink.update([relay], {})
    ours = {(n, labels - {("host", "exit-2"), ("service", "tor")}): v for (n, labels), v in only_tor(parse(
        scrape(sink))).items()}
    page = pi.METRICSPORT_PAGE.read_text()
    theirs = parse(page)
    renamed = {n for n, t in types(page).items() if t == "counter" and not n.endswith("_total")}
    assert renamed == {"tor_relay_traffic_bytes", "tor_bug_reached_count"}
    assert {(n[:-6] if n[:-6] in renamed else n, labels): v for (n, labels), v in theirs.items()} == ours


def test_histograms(sink_factory):
    bounds = ("10", "100", "1000", "10000", "+Inf")
    sample = pi.histogram_sample("onion-1", bounds=bounds)
    status = TorStatus("onion-1", "tor", True, 1.0, (sample,), sources={"metricsport": True})
    sink = sink_factory()
    sink.update([status], {})
    text = scrape(sink)
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == sample.measurement]
    assert family.type == "histogram"
    labels = {k: v for k, v in sample.tags if k != "version"}
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got == {**{(f"{sample.measurement}_bucket", b): sample.fields[b] for b in bounds},
                   (f"{sample.measurement}_count", None): sample.fields["count"],
                   (f"{sample.measurement}_sum", None): sample.fields["sum"]}
    assert all({k: v for k, v in s.labels.items() if k != "le"} == labels for s in family.samples)
    # buckets in increasing order, +Inf last, as Prometheus wants them
    les = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
    assert les == sorted(bounds, key=float)


def test_a_tor_that_goes_down_shows_up_0_and_no_values(sink_factory):
    sink = sink_factory()
    first = [pi.status("a", metricsport=True), pi.status("b", metricsport=True)]
    sink.update(first, {})
    before = parse(scrape(sink))
    assert only_tor(before, "b") == expected_control(first[1]) | expected_metricsport(first[1])
    second = [pi.status("a", metricsport=True, cycle=1, last_success=1_700_000_010.0),
              pi.status("b", up=False, metricsport=True, last_success=1_700_000_000.5)]
    sink.update(second, {})
    after = parse(scrape(sink))
    assert only_tor(after, "b") == {}
    b = frozenset({("host", "b"), ("service", "tor")})
    assert after[("tor2influxdb2_up", b)] == 0
    assert after[("tor2influxdb2_source_up", b | {("source", "control-port")})] == 0
    assert after[("tor2influxdb2_source_up", b | {("source", "metricsport")})] == 0
    assert after[("tor2influxdb2_last_poll_timestamp_seconds", b)] == 1_700_000_000.5
    # the other tor shows this cycle's values, not the last one's
    assert only_tor(after, "a") == expected_control(second[0]) | expected_metricsport(second[0])
    assert only_tor(after, "a") != only_tor(before, "a")
    # and b comes back
    sink.update([second[0], pi.status("b", cycle=2)], {})
    assert only_tor(parse(scrape(sink)), "b") == expected_control(pi.status("b", cycle=2))


def test_a_stalled_daemon_shows_every_tor_down(sink_factory):
    now = [1000.0]
    sink = sink_factory(stale_after=30, clock=lambda: now[0])
    statuses = [pi.status("a"), pi.status("b", kind="client")]
    sink.update(statuses, {"buffer_points": 0})
    assert only_tor(parse(scrape(sink)))
    now[0] += 31
    stale = parse(scrape(sink))
    assert only_tor(stale) == {}
    assert {v for k, v in stale.items() if k[0] in ("tor2influxdb2_up", "tor2influxdb2_source_up")} == {0}
    assert ("tor2influxdb2_last_update_timestamp_seconds", frozenset()) in stale
    sink.update(statuses, {})
    assert only_tor(parse(scrape(sink))) == expected_control(statuses[0]) | expected_control(statuses[1])


def test_http_details(sink_factory, caplog):
    sink = sink_factory()
    sink.update([pi.status("a")], {})
    status, headers, plain = get(sink.port)
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    status, headers, zipped = get(sink.port, headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(zipped) == plain
    status, headers, body = get(sink.port, method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(plain)
    assert get(sink.port, "/nothing")[0] == 404
    assert get(sink.port, method="POST")[0] == 501
    # a bad request: a short answer, no traceback anywhere, and the server goes on
    caplog.set_level(logging.DEBUG, "tor2influxdb2")
    with socket.create_connection(("127.0.0.1", sink.port)) as s:
        s.sendall(b"\x16\x03\x01garbage \xff\r\n\r\n")
        answer = s.recv(1000)
    assert answer.startswith(b"HTTP/1.0 400 ") and b"garbage" not in answer
    with socket.create_connection(("127.0.0.1", sink.port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
        assert s.recv(1000).startswith(b"HTTP/1.0 431 ")
    assert "Traceback" not in caplog.text
    assert get(sink.port)[2] == plain


def test_close_is_prompt_even_with_a_connection_open(sink_factory):
    sink = sink_factory()
    idle = socket.create_connection(("127.0.0.1", sink.port))
    try:
        start = time.monotonic()
        sink.close()
        took = time.monotonic() - start
        assert took < 1.0
        try:  # the open connection was closed too
            assert idle.recv(10) == b""
        except ConnectionResetError:
            pass
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", sink.port), timeout=1).close()
    finally:
        idle.close()


def test_update_only_stores_and_one_scrape_renders(sink_factory):
    sink = sink_factory()
    statuses = [pi.status(f"t{i}") for i in range(50)]
    sink.update(statuses, {})
    first = sink.exposition()
    assert sink.exposition() is first  # served as made until the next update
    sink.update(statuses, {})
    assert sink.exposition() is not first


def test_a_tor_back_after_a_cycle_down_shows_all_its_series():
    renderer = prom.Renderer()
    up = pi.status("a", metricsport=True)
    full = renderer.render([up], {}, 1.0, True)
    assert only_tor(parse(renderer.render([pi.status("a", up=False, metricsport=True)], {}, 1.0, True))) == {}
    assert renderer.render([up], {}, 1.0, True) == full


def test_what_is_kept_between_cycles_stays_bounded():
    renderer = prom.Renderer()
    sizes = []
    for cycle in range(12):  # every cycle a new version tag: every series' label text is new
        statuses = [TorStatus(f"t{i}", "tor", True, 1.0, tuple(
            Sample(s.measurement, make_tags({**dict(s.tags), "version": f"0.4.{cycle}"}), s.fields, s.time_ms)
            for s in pi.control_samples(f"t{i}")), sources={"control-port": True}) for i in range(100)]
        text = renderer.render(statuses, {}, 1.0, True)
        sizes.append(len(renderer._plans))
        assert f'version="0.4.{cycle}"' in text and f'version="0.4.{cycle - 1}"' not in text
    per_cycle = sizes[0]
    assert max(sizes) <= 2.5 * per_cycle + 1000


def test_metricsport_family_conflicts(caplog):
    renderer = prom.Renderer()

    def status(*samples):
        return [TorStatus("a", "", True, 1.0, samples, sources={"metricsport": True})]

    tags = make_tags({"host": "a"})
    gauge, counter = Sample("tor_x_total", tags, {"gauge": 3}, 0), Sample("tor_x_total", tags, {"counter": 4}, 0)
    assert types(renderer.render(status(gauge), {}, 1.0, True))["tor_x_total"] == "gauge"
    text = renderer.render(status(counter), {}, 1.0, True)  # a newer tor types it otherwise: shown so
    assert types(text)["tor_x_total"] == "counter" and parse(text)[("tor_x_total", frozenset({("host", "a")}))] == 4
    others = [Sample("tor_x_total", make_tags({"host": "a", "k": v}), {"gauge": 5}, 0) for v in "vw"]
    text = renderer.render(status(counter, *others), {}, 1.0, True)  # both at once: the type with more series
    assert types(text)["tor_x_total"] == "gauge"
    assert {k for k in parse(text) if k[0] == "tor_x_total"} == {
        ("tor_x_total", frozenset({("host", "a"), ("k", v)})) for v in "vw"}
    assert "'tor_x_total' comes as gauge and as counter: only the type with more series is shown" in caplog.text
    # a MetricsPort family may not take a control-port series' name
    text = renderer.render(status(Sample("tor_uptime", tags, {"gauge": 1}, 0)), {}, 1.0, True)
    assert "tor_uptime" not in text and "'tor_uptime' not shown" in caplog.text


# ------------------------------------------------------------------------------ configuration

@pytest.mark.parametrize("value,expected", [
    ("9099", ("127.0.0.1", 9099)), ("127.0.0.1:9099", ("127.0.0.1", 9099)), ("[::1]:9099", ("::1", 9099)),
    ("localhost:9100", ("127.0.0.1", 9100)), ("0.0.0.0:9099", ("0.0.0.0", 9099)), ("[::]:9099", ("::", 9099)),
])
def test_listen_values(value, expected):
    assert prom.parse_listen(value) == (expected, None)


@pytest.mark.parametrize("value,words", [
    (":9099", "0.0.0.0:9099"), ("::1:9099", "brackets"), ("example.org:9099", "IP address"),
    ("127.0.0.1", "no port"), ("127.0.0.1:0", "1 to 65535"), ("70000", "1 to 65535"), ("[127.0.0.1]:9", "brackets"),
    ("[::1]9099", "[IPv6 address]:port"),
    ("9" * 5000, "1 to 65535"), ("127.0.0.1:" + "9" * 5000, "1 to 65535"), ("[::1]:" + "1" * 5000, "1 to 65535"),
    ("127.0.0.1:\u00b2", "1 to 65535"), ("\u00b2", "1 to 65535"), ("127.0.0.1:\u0669\u0660\u0669\u0669", "1 to 65535"),
])
def test_listen_problems(value, words):
    address, problem = prom.parse_listen(value)
    assert address is None and problem.startswith("PROMETHEUS_LISTEN: ") and words in problem


def test_config_from_env(tmp_path):
    assert prom.config_from_env({}) == (None, [])
    config, problems = prom.config_from_env({"PROMETHEUS_BASIC_AUTH_FILE": "/x"})
    assert config is None and problems == ["PROMETHEUS_BASIC_AUTH_FILE is set but PROMETHEUS_LISTEN is not "
                                           "(set it to serve /metrics, e.g. PROMETHEUS_LISTEN=127.0.0.1:9099)"]
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": "[::1]:9199"})
    assert problems == [] and (config.host, config.port, config.users, config.tls_cert) == ("::1", 9199, (), None)
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": "9099", "PROMETHEUS_TLS_CERT": "/c"})
    assert config is None and problems[0].startswith("PROMETHEUS_TLS_CERT and PROMETHEUS_TLS_KEY: set both")
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": "9099",
                                             "PROMETHEUS_BASIC_AUTH_FILE": str(tmp_path / "missing")})
    assert problems == [f"PROMETHEUS_BASIC_AUTH_FILE: cannot read {tmp_path / 'missing'}: No such file or directory"]


def test_auth_file_problems_never_quote_a_password(tmp_path):
    secrets_ = [secrets.token_hex(2), "$2b$12$" + secrets.token_hex(8), secrets.token_urlsafe(12),
                secrets.token_urlsafe(12) + " ", "lonely" + secrets.token_hex(6)]
    text = (f"# users\n\ndave:{secrets_[0]}\nerin:{secrets_[1]}\nfrank:{secrets_[2]}\nfrank:{secrets_[2]}\n"
            f"gina:{secrets_[3]}\n{secrets_[4]}\nhank:\n")
    path = tmp_path / "auth"
    path.write_text(text)
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": "9099", "PROMETHEUS_BASIC_AUTH_FILE": str(path)})
    assert config is None
    assert [re.match(r"PROMETHEUS_BASIC_AUTH_FILE: line (\d+)", p).group(1) for p in problems] == \
        ["3", "4", "6", "7", "8", "9"]
    for word in ("shorter than 8", "not one", "listed twice", "space", "not user:password", "empty"):
        assert any(word in p for p in problems), word
    joined = "\n".join(problems)
    for secret in secrets_:
        assert secret.strip() not in joined
        assert secret.strip() in REDACTOR  # registered before anything could print them


def test_auth_file_empty(tmp_path):
    path = tmp_path / "auth"
    path.write_text("# nobody\n")
    _, problems = prom.config_from_env({"PROMETHEUS_LISTEN": "9099", "PROMETHEUS_BASIC_AUTH_FILE": str(path)})
    assert problems == ["PROMETHEUS_BASIC_AUTH_FILE: no user:password line"]


def test_default_deployment_imports_neither_bcrypt_nor_prometheus_client():
    code = textwrap.dedent("""
        import sys
        from tor2influxdb2.sinks import prometheus as p
        assert p.config_from_env({}) == (None, [])
        config, problems = p.config_from_env({"PROMETHEUS_LISTEN": "0"})
        users, _ = p.parse_basic_auth("u:plain-password-1")
        sink = p.PrometheusSink(p.PrometheusConfig(port=0, users=users))
        sink.start(); sink.update([], {}); sink.render(); sink.close()
        print(sorted(m for m in ("bcrypt", "prometheus_client") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ authentication

@pytest.fixture
def auth_sink(sink_factory, tmp_path):
    import bcrypt
    plain, hashed, hashed_y = (secrets.token_urlsafe(16) for _ in range(3))
    bob = bcrypt.hashpw(hashed.encode(), bcrypt.gensalt(4)).decode()
    carol = bcrypt.hashpw(hashed_y.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
    path = tmp_path / "auth"
    path.write_text(f"alice:{plain}\nbob:{bob}\ncarol:{carol}\n")
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": "127.0.0.1:0",
                                             "PROMETHEUS_BASIC_AUTH_FILE": str(path)})
    assert problems == ["PROMETHEUS_LISTEN: '127.0.0.1:0': the port must be a number from 1 to 65535"]
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": str(free_port()),
                                             "PROMETHEUS_BASIC_AUTH_FILE": str(path)})
    assert problems == [] and [u.name for u in config.users] == ["alice", "bob", "carol"]
    assert plain not in repr(config) and bob not in repr(config)
    sink = sink_factory(config)
    # a tor whose nickname is the password: /metrics must not show it
    relay = pi.status("relay-a")
    samples = tuple(Sample(s.measurement, make_tags({**dict(s.tags), "nickname": plain}) if s.measurement == "relay"
                           else s.tags, s.fields, s.time_ms) for s in relay.samples)
    sink.update([TorStatus("relay-a", "tor", True, 1.0, samples, sources={"control-port": True})], {})
    return sink, {"alice": plain, "bob": hashed, "carol": hashed_y}


def test_auth(auth_sink, caplog):
    caplog.set_level(logging.DEBUG, "tor2influxdb2")
    sink, passwords = auth_sink
    status, headers, body = get(sink.port)
    assert status == 401 and headers["WWW-Authenticate"] == 'Basic realm="tor2influxdb2", charset="UTF-8"'
    assert get(sink.port, "/")[0] == 401 and get(sink.port, "/nothing")[0] == 401
    for user, password in passwords.items():
        status, _, body = get(sink.port, auth=(user, password))
        assert status == 200, user
        assert get(sink.port, auth=(user, password))[0] == 200  # remembered: no second bcrypt check needed
        assert get(sink.port, auth=(user, password + "x"))[0] == 401
        assert get(sink.port, auth=(user, password[:-1]))[0] == 401
    assert get(sink.port, auth=("mallory", passwords["alice"]))[0] == 401
    assert get(sink.port, auth=("bob", passwords["alice"]))[0] == 401
    for header in ("Bearer x", "Basic", "Basic !!!!", "Basic " + base64.b64encode(b"no colon").decode(),
                   "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()):
        assert get(sink.port, headers={"Authorization": header})[0] == 401
    text = body.decode()
    assert "tor_nickname" in text and passwords["alice"] not in text and 'nickname="****"' in text
    for password in passwords.values():
        assert password not in caplog.text
    assert "401" in caplog.text  # the refusals were logged (at debug), without what was sent


def test_bcrypt_reads_72_bytes_like_htpasswd(sink_factory):
    import bcrypt
    long = secrets.token_hex(50)  # 100 bytes
    hashed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4)).decode()
    users, problems = prom.parse_basic_auth(f"long:{hashed}\n")
    sink = sink_factory(PrometheusConfig(port=0, users=users))
    sink.update([], {})
    assert get(sink.port, auth=("long", long))[0] == 200


# ------------------------------------------------------------------------------ TLS

def openssl(*args, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def certs(tmp_path):
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed")
    for name in ("a", "b"):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", "/CN=tor2influxdb2 test",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", cwd=tmp_path)
    openssl("pkey", "-in", "a.key", "-aes256", "-passout", "pass:" + secrets.token_hex(8), "-out", "enc.key",
            cwd=tmp_path)
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    return tmp_path


def test_tls(certs, sink_factory, caplog):
    env = {"PROMETHEUS_LISTEN": str(free_port()), "PROMETHEUS_TLS_CERT": str(certs / "a.crt"),
           "PROMETHEUS_TLS_KEY": str(certs / "a.key")}
    config, problems = prom.config_from_env(env)
    assert problems == []
    sink = sink_factory(config)
    sink.update([pi.status("a")], {})
    context = ssl.create_default_context(cafile=str(certs / "a.crt"))
    status, _, body = get(sink.port, context=context)
    assert status == 200 and only_tor(parse(body.decode())) == expected_control(pi.status("a"))
    # another CA is refused by the client; a plain HTTP request gets no metrics
    with pytest.raises(ssl.SSLCertVerificationError):
        get(sink.port, context=ssl.create_default_context(cafile=str(certs / "b.crt")))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(sink.port)
    # a client that never says hello does not hold up the others
    with socket.create_connection(("127.0.0.1", sink.port)):
        assert get(sink.port, context=context)[0] == 200
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("cert,key,words", [
    ("a.crt", "enc.key", "PROMETHEUS_TLS_KEY: {d}/enc.key is encrypted with a passphrase"),
    ("a.crt", "b.key", "PROMETHEUS_TLS_KEY: {d}/b.key is not a PEM private key of the certificate"),
    ("junk.crt", "a.key", "PROMETHEUS_TLS_CERT: {d}/junk.crt holds no PEM certificate"),
    ("a.crt", "nothing.key", "PROMETHEUS_TLS_KEY: cannot read {d}/nothing.key: No such file or directory"),
])
def test_tls_problems(certs, cert, key, words):
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": "9099", "PROMETHEUS_TLS_CERT": str(certs / cert),
                                             "PROMETHEUS_TLS_KEY": str(certs / key)})
    assert config is None and len(problems) == 1 and problems[0].startswith(words.format(d=certs)), problems


def test_listening_where_taken_is_one_clear_line(sink_factory):
    sink = sink_factory()
    with pytest.raises(prom.ConfigError) as raised:
        PrometheusSink(PrometheusConfig(port=sink.port)).start()
    assert raised.value.problems == [f"PROMETHEUS_LISTEN: cannot listen on 127.0.0.1:{sink.port}: "
                                     "Address already in use"]


# ------------------------------------------------------------------------------ non-loopback

def test_non_loopback_address_warns(tmp_path):
    """0.0.0.0 is bound inside a network namespace of its own (only its own lo): reachable from nowhere."""
    if not shutil.which("unshare"):
        pytest.fail("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
    code = textwrap.dedent("""
        import logging, subprocess, sys, urllib.request
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        from tor2influxdb2.sinks import prometheus as p
        config, problems = p.config_from_env({"PROMETHEUS_LISTEN": "0.0.0.0:9099"})
        assert problems == [], problems
        sink = p.PrometheusSink(config); sink.start(); sink.update([], {})
        print(urllib.request.urlopen("http://127.0.0.1:9099/metrics", timeout=5).status)
        sink.close()
    """)
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "200"
    assert "WARNING prometheus: PROMETHEUS_LISTEN 0.0.0.0:9099 is not a loopback address" in out.stderr


def test_loopback_does_not_warn(sink_factory, caplog):
    caplog.set_level(logging.INFO, "tor2influxdb2")
    sink_factory(PrometheusConfig("::1", 0))
    sink_factory(PrometheusConfig("127.0.0.2", 0))
    assert "loopback" not in caplog.text and caplog.text.count("prometheus: serving http://") == 2


# ------------------------------------------------------------------------------ a real Prometheus

PROMETHEUS = shutil.which("prometheus")


def prom_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as resp:
        import json
        answer = json.load(resp)
    assert answer["status"] == "success"
    return answer["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: apt-get install "
                    "--no-install-recommends prometheus, with service starts disabled)")
def test_a_real_prometheus_scrapes_what_is_served(sink_factory, auth_sink, certs, tmp_path):
    """Prometheus scrapes two sinks, one with Basic auth (plain password), one over TLS with a bcrypt
    user, and its query API returns the values served."""
    sink, passwords = auth_sink
    relay = pi.status("relay-p", metricsport=True)
    sink.update([relay, pi.status("down-p", up=False)], {"buffer_points": 5})
    users, _ = prom.parse_basic_auth(f"bob:{sink.auth.users['bob'].bcrypt_hash.decode()}\n")
    config, problems = prom.config_from_env({"PROMETHEUS_LISTEN": str(free_port()),
                                             "PROMETHEUS_TLS_CERT": str(certs / "a.crt"),
                                             "PROMETHEUS_TLS_KEY": str(certs / "a.key")})
    tls_sink = sink_factory(PrometheusConfig(config.host, config.port, users, config.tls_cert, config.tls_key))
    tls_sink.update([pi.status("client-p", kind="client")], {})
    port = free_port()
    (tmp_path / "alice.pw").write_text(passwords["alice"])
    (tmp_path / "bob.pw").write_text(passwords["bob"])
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
        scrape_configs:
          - job_name: plain
            static_configs: [{{targets: ["127.0.0.1:{sink.port}"]}}]
            basic_auth: {{username: alice, password_file: {tmp_path / "alice.pw"}}}
          - job_name: tls
            scheme: https
            tls_config: {{ca_file: {certs / "a.crt"}}}
            static_configs: [{{targets: ["127.0.0.1:{tls_sink.port}"]}}]
            basic_auth: {{username: bob, password_file: {tmp_path / "bob.pw"}}}
    """))
    started = time.monotonic()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        wait_for(lambda: len(prom_query(port, "up == 1")) == 2, 30, 0.2, what="both targets up in Prometheus")
        took = time.monotonic() - started
        served = parse(get(sink.port, auth=("alice", passwords["alice"]))[2].decode())
        served |= parse(get(tls_sink.port, auth=("bob", passwords["bob"]),
                            context=ssl.create_default_context(cafile=str(certs / "a.crt")))[2].decode())
        for name in ("tor_read_bytes", "tor_flags", "tor_relay_traffic_bytes", "tor_relay_dos_total",
                     "tor_relay_circuits_total", "tor_accounting_read_limit_bytes", "tor_guards",
                     "tor2influxdb2_up", "tor2influxdb2_buffer_points"):
            result = prom_query(port, name)
            assert result, name
            for series in result:
                labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "job", "instance")}
                assert float(series["value"][1]) == served[(name, frozenset(labels.items()))], (name, labels)
            assert len(result) == len([k for k in served if k[0] == name])
        assert prom_query(port, 'tor2influxdb2_up{host="down-p"}')[0]["value"][1] == "0"
        assert prom_query(port, '{host="down-p",__name__=~"tor_.*"}') == []
        print(f"Prometheus {PROMETHEUS}: both targets scraped and queryable {took:.1f} s after start")
    finally:
        stop_process(proc)


class SocksStandIn:
    """A SOCKS5 proxy on 127.0.0.1 standing in for tor's SocksPort (a tor with DisableNetwork 1 reaches
    no onion service): it records the address each CONNECT names and connects every one to `port`."""

    def __init__(self, port: int):
        import threading
        self.port, self.asked = port, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import threading
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket):
        with client:
            client.settimeout(10)
            greeting = client.recv(2)
            client.recv(greeting[1])
            client.sendall(b"\x05\x00")  # no authentication
            head = client.recv(4)
            if head[3] == 3:  # a domain name: what tor needs to reach an .onion
                name = client.recv(client.recv(1)[0]).decode()
            else:
                name = socket.inet_ntop(socket.AF_INET if head[3] == 1 else socket.AF_INET6,
                                        client.recv(4 if head[3] == 1 else 16))
            port = int.from_bytes(client.recv(2), "big")
            self.asked.append((head[3], name, port))
            upstream = socket.create_connection(("127.0.0.1", self.port))
            client.sendall(b"\x05\x00\x00\x01" + bytes(4) + bytes(2))
            client.settimeout(None)
            pump(client, upstream, join=10)
            upstream.close()

    def close(self):
        self.server.close()


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed")
def test_prometheus_reaches_an_onion_name_through_a_socks5_proxy_url(auth_sink, tmp_path):
    """What the README's onion recipe relies on: with proxy_url socks5://, Prometheus hands the .onion
    name to the proxy unresolved (SOCKS5 domain address), as tor's SocksPort needs."""
    sink, passwords = auth_sink
    onion = base64.b32encode(secrets.token_bytes(35)).decode().lower() + ".onion"
    socks = SocksStandIn(sink.port)
    port = free_port()
    (tmp_path / "alice.pw").write_text(passwords["alice"])
    (tmp_path / "prometheus.yml").write_text(textwrap.dedent(f"""
        global: {{scrape_interval: 1s, scrape_timeout: 1s}}
        scrape_configs:
          - job_name: onion
            proxy_url: socks5://127.0.0.1:{socks.address[1]}
            static_configs: [{{targets: ["{onion}:9099"]}}]
            basic_auth: {{username: alice, password_file: {tmp_path / "alice.pw"}}}
    """))
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        wait_for(lambda: prom_query(port, "up == 1"), 30, 0.2, what="the onion target up in Prometheus")
        assert (3, onion, 9099) in socks.asked and all(a == (3, onion, 9099) for a in socks.asked)
        served = parse(get(sink.port, auth=("alice", passwords["alice"]))[2].decode())
        (series,) = prom_query(port, "tor_read_bytes")
        assert series["metric"]["instance"] == f"{onion}:9099"
        assert float(series["value"][1]) == served[("tor_read_bytes", frozenset({("host", "relay-a"),
                                                                                ("service", "tor")}))]
    finally:
        stop_process(proc)
        socks.close()
