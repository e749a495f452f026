"""TOR_METRICS_PORTS (and its file), METRICSPORT_FAMILIES and ONION_LABEL, as a user writes them."""

from __future__ import annotations

import pytest

from tor2influxdb2.sources.metricsport import (DEFAULT_FAMILIES, parse_address, parse_families, parse_metrics_ports,
                                               parse_onion_label, split_file, split_pairs)
from tor2influxdb2.sources.metricsport.address import AddressError
from tor2influxdb2.sources.metricsport.schema import FAMILIES

NAMES = {"relay1", "relay2", "hs", "b", "odd=name"}


@pytest.mark.parametrize("text, host, port, path, socket_path, where", [
    ("127.0.0.1:9035", "127.0.0.1", 9035, "/metrics", None, "127.0.0.1:9035"),
    ("[::1]:9035", "::1", 9035, "/metrics", None, "[::1]:9035"),
    ("[2001:DB8::1]:1", "2001:db8::1", 1, "/metrics", None, "[2001:db8::1]:1"),
    ("tor-relay:9035", "tor-relay", 9035, "/metrics", None, "tor-relay:9035"),
    ("http://tor.example:9035/metrics", "tor.example", 9035, "/metrics", None, "tor.example:9035"),
    ("HTTP://10.0.0.2:80/prefix/metrics?x=1", "10.0.0.2", 80, "/prefix/metrics?x=1", None,
     "10.0.0.2:80/prefix/metrics?x=1"),
    ("http://[::1]:9035", "::1", 9035, "/metrics", None, "[::1]:9035"),
    ("unix:/run/tor/metrics.sock", None, None, "/metrics", "/run/tor/metrics.sock", "unix:/run/tor/metrics.sock"),
    ("  127.0.0.1:9035  ", "127.0.0.1", 9035, "/metrics", None, "127.0.0.1:9035"),
])
def test_address_forms(text, host, port, path, socket_path, where):
    address = parse_address(text)
    assert (address.host, address.port, address.path, address.socket_path) == (host, port, path, socket_path)
    assert address.where == where


def test_host_header():
    assert parse_address("[::1]:9035").host_header == "[::1]:9035"
    assert parse_address("http://tor.example:80/metrics").host_header == "tor.example:80"
    assert parse_address("unix:/run/m").host_header == "localhost"


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("127.0.0.1", "no port"),
    ("127.0.0.1:0", "port"),
    ("127.0.0.1:65536", "port"),
    ("127.0.0.1:http", "port"),
    ("127.0.0.1:" + "9" * 5000, "port is not a number from 1 to 65535"),  # beyond int()'s digit limit
    ("127.0.0.1:²", "port is not a number from 1 to 65535"),
    ("[::1]:" + "1" * 5000, "port is not a number from 1 to 65535"),
    ("http://127.0.0.1:0/metrics", "port is not a number from 1 to 65535"),
    ("http://127.0.0.1:" + "9" * 5000 + "/metrics", "port"),
    ("unix:/run/" + "m" * 103, "longer than 107 bytes"),  # sun_path holds 108 bytes, NUL included
    ("::1:9035", "brackets"),
    ("[::1:9035", "no ']'"),
    ("[not-v6]:9035", "not an IPv6"),
    ("[::1]9035", "[IPv6]:PORT"),
    ("bad_host!:9035", "neither an IP address nor a DNS name"),
    ("127.0.0.1:9035/metrics", "URL form"),
    ("https://127.0.0.1:9035/metrics", "plain HTTP"),
    ("ftp://127.0.0.1:9035/metrics", "scheme"),
    ("http://user:pw@127.0.0.1:9035/metrics", "credentials"),
    ("http://127.0.0.1/metrics", "no port"),
    ("http://127.0.0.1:99999/metrics", "port"),
    ("unix:relative/path", "absolute"),
    ("unix:/run/tor/\x07bell", "control character"),
])
def test_bad_addresses_say_why(text, words):
    with pytest.raises(AddressError) as caught:
        parse_address(text)
    assert words in str(caught.value)


def test_pairs_from_the_variable():
    text = "relay1=127.0.0.1:9035, relay2=[::1]:9036,,hs=http://hs.local:9035/metrics,b=unix:/run/b.sock,"
    found, problems = parse_metrics_ports(split_pairs(text), NAMES)
    assert problems == []
    assert {n: a.where for n, a in found.items()} == {
        "relay1": "127.0.0.1:9035", "relay2": "[::1]:9036", "hs": "hs.local:9035", "b": "unix:/run/b.sock"}
    assert found["hs"].label == "TOR_METRICS_PORTS entry 4"  # numbering follows the text


def test_a_name_with_an_equals_sign():
    found, problems = parse_metrics_ports([("e", "odd=name=127.0.0.1:1")], NAMES)
    assert problems == [] and found["odd=name"].port == 1


def test_pairs_from_a_file():
    content = "# MetricsPorts\nrelay1=127.0.0.1:9035\n\n   # indented comment\nrelay2 = 127.0.0.2:9035\n"
    pairs = split_file(content)
    assert [label for label, _ in pairs] == ["TOR_METRICS_PORTS_FILE line 2", "TOR_METRICS_PORTS_FILE line 5"]
    found, problems = parse_metrics_ports(pairs, NAMES)
    assert problems == [] and found["relay2"].host == "127.0.0.2"


def test_problems_name_the_entry_one_line_each():
    text = "relay1=127.0.0.1:9035,nobody=127.0.0.1:1,relay1=127.0.0.1:2,relay2=localhost,justtext,=1.2.3.4:5"
    found, problems = parse_metrics_ports(split_pairs(text), NAMES)
    assert list(found) == ["relay1"]
    assert len(problems) == 5
    for problem, entry, words in zip(problems, (2, 3, 4, 5, 6), (
            "no TOR_HOSTS entry is named 'nobody'", "already has a MetricsPort (TOR_METRICS_PORTS entry 1)",
            "no port", "expected NAME=ADDRESS", "empty")):
        assert problem.startswith(f"TOR_METRICS_PORTS entry {entry}: ") and words in problem, problem
        assert "\n" not in problem and "Traceback" not in problem


def test_a_second_metricsport_for_a_tor_names_its_entry_not_its_name():
    """In TOR_HOSTS' HOST:PORT:NAME form the name may be a password typed without its name."""
    names = {"hunter2pw": "TOR_HOSTS entry 2"}
    found, problems = parse_metrics_ports(split_pairs("hunter2pw=127.0.0.1:9035,hunter2pw=127.0.0.1:9036"), names)
    assert list(found) == ["hunter2pw"] and found["hunter2pw"].port == 9035
    assert problems == ["TOR_METRICS_PORTS entry 2: TOR_HOSTS entry 2 already has a MetricsPort "
                        "(TOR_METRICS_PORTS entry 1)"]


def test_families_default_all_names_and_patterns():
    default, problems = parse_families(None)
    assert problems == [] and default == parse_families("  ")[0]
    assert all(default.wants(f) for f in DEFAULT_FAMILIES) and default.wants("tor_hs_intro_num_total")
    assert not default.wants("tor_relay_connections_total")
    assert default.only == {"tor_relay_connections": (("state", "opened"), ("type", "OR"))}

    everything, problems = parse_families("ALL")
    assert problems == [] and everything.everything and everything.wants("anything_at_all")

    chosen, problems = parse_families("tor_relay_flag, tor_relay_congestion_control*")
    assert problems == []
    assert chosen.wants("tor_relay_flag") and chosen.wants("tor_relay_congestion_control_total")
    assert not chosen.wants("tor_hs_intro_num_total") and not chosen.wants("tor_relay_flags")

    extended, problems = parse_families("default,tor_relay_drop_cell_total")
    assert problems == [] and extended.wants("tor_relay_drop_cell_total") and extended.wants("tor_hs_x")
    assert extended.only == default.only  # the connections stay filtered


@pytest.mark.parametrize("text, words", [
    ("tor_relay_flagz", "not a family tor 0.4.9 serves"),
    ("tor relay", "not a metric family name"),
    ("tor_relay_*_total", "not a metric family name"),
    (",,", "no family chosen"),
])
def test_bad_families(text, words):
    _, problems = parse_families(text)
    assert len(problems) == 1 and problems[0].startswith("METRICSPORT_FAMILIES: ") and words in problems[0]


def test_every_known_family_can_be_chosen_by_name():
    selection, problems = parse_families(",".join(FAMILIES))
    assert problems == [] and all(selection.wants(f) for f in FAMILIES)


@pytest.mark.parametrize("text, mode", [(None, "hash"), ("", "hash"), ("hash", "hash"), (" Address ", "address"),
                                        ("drop", "drop")])
def test_onion_label(text, mode):
    assert parse_onion_label(text) == (mode, [])


def test_bad_onion_label():
    mode, problems = parse_onion_label("keep")
    assert mode == "hash" and len(problems) == 1
    assert problems[0].startswith("ONION_LABEL: 'keep' is not one of hash, address, drop")
