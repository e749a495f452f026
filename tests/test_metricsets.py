"""sources.control.metricsets: what each set asks and writes, on real tors (DisableNetwork 1): a client,
a relay (ORPort set), accounting; the schema's types hold for every field written."""

from __future__ import annotations

import random
import threading
import time

import pytest

from peers import RecordingProxy
from tor2influxdb2.model import field_type
from tor2influxdb2.poller import Poller
from tor2influxdb2.sources.control.metricsets import (FLAGS, SCHEMA, SET_NAMES, Answers, Plan, _last_pairs,
                                                      effective_rates, parse_int, parse_ns)
from tor2influxdb2.targets import TorHost, parse_tor_host

ALL = Plan(SET_NAMES)
SPECS = {spec.name: spec for spec in SCHEMA}


def poll(host, plan=ALL, cycles=1):
    poller = Poller([host], timeout=5, period=6, plan=plan)
    try:
        for _ in range(cycles):
            [result] = poller.poll_all(threading.Event())
        return result
    finally:
        poller.close()


def by_measurement(result):
    return {s.measurement: s for s in result.samples}


def assert_schema_types(result):
    for sample in result.samples:
        spec = SPECS[sample.measurement]
        types = {f.name: f.type for f in spec.fields}
        for name, value in sample.fields.items():
            assert types[name] == field_type(value), (sample.measurement, name, value)
        assert {k for k, _ in sample.tags} <= set(spec.tags)


def test_a_client_writes_every_set_but_relay(make_tor):
    tor = make_tor(auth="none")
    result = poll(parse_tor_host(tor.entry("client")), cycles=2)
    assert result.ok, result.error
    got = by_measurement(result)
    assert set(got) == {"traffic", "connections", "handshakes", "status", "accounting", "guards", "bandwidth"}
    assert result.kind == "client"
    assert_schema_types(result)
    with tor.controller() as c:
        assert got["status"].fields["descriptor_limit"] == int(c.get_info("process/descriptor-limit"))
        assert got["status"].fields["network_liveness"] == 0  # DisableNetwork 1
        assert got["status"].fields["version_status"] == c.get_info("status/version/current")
        assert got["guards"].fields == {"up": 0, "down": 0, "never_connected": 0, "unusable": 0, "total": 0}
    assert got["accounting"].fields == {"enabled": 0, "hibernating": "awake"}  # no made-up zeros


def test_a_relay_writes_its_fingerprint_nickname_and_effective_rates(make_tor):
    tor = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto", "Nickname tor2influxdb2test", "BandwidthRate 5 MB",
                                       "RelayBandwidthRate 2 MB", "MaxAdvertisedBandwidth 3 MB",
                                       "BandwidthBurst 8 MB"))
    result = poll(parse_tor_host(tor.entry("relay")))
    assert result.ok and result.kind == "relay", result.error
    got = by_measurement(result)
    assert "guards" not in got  # guards are a client's
    relay = got["relay"]
    with tor.controller() as c:
        fingerprint = c.get_info("fingerprint")
        rate = min(int(c.get_conf("BandwidthRate")), int(c.get_conf("RelayBandwidthRate")),
                   int(c.get_conf("MaxAdvertisedBandwidth")))
        burst = min(int(c.get_conf("BandwidthBurst")), int(c.get_conf("RelayBandwidthBurst")))
        reach_or = int(c.get_info("status/reachability-succeeded/or"))
    assert dict(relay.tags)["fingerprint"] == fingerprint and dict(relay.tags)["nickname"] == "tor2influxdb2test"
    assert relay.fields["effective_rate"] == rate == 2 * 1024 * 1024
    assert relay.fields["effective_burst"] == burst
    assert relay.fields["reachable_or"] == reach_or
    assert relay.fields["in_consensus"] == 0 and "consensus_weight" not in relay.fields  # DisableNetwork
    assert all(relay.fields[f"flag_{f.lower()}"] == 0 for f in FLAGS)
    assert_schema_types(result)


def test_accounting_with_accountingmax(make_tor):
    tor = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto", "AccountingMax 10 GB", "AccountingStart day 00:00"))
    got = by_measurement(poll(parse_tor_host(tor.entry("acct"))))
    acct = got["accounting"].fields
    with tor.controller() as c:
        left = [int(x) for x in c.get_info("accounting/bytes-left").split()]
        end = c.get_info("accounting/interval-end")
    assert acct["enabled"] == 1 and acct["hibernating"] == "awake"
    assert [acct["read_left"], acct["written_left"]] == left == [10 * 1024 ** 3] * 2
    assert acct["interval_end"] == int(time.mktime(time.strptime(end, "%Y-%m-%d %H:%M:%S"))) - time.timezone
    assert acct["interval_end"] > time.time()


def commands_of_polls(tor, polls=3, between=None, full=False) -> list[list[str]]:
    """The commands (their first word, or with `full` the whole line) the daemon sent in each poll
    (the first: with the set-up); `between(i, result)` runs after poll i."""
    proxy = RecordingProxy(tor.port)
    try:
        poller = Poller([TorHost("t", "127.0.0.1", proxy.port)], timeout=5, period=6, plan=ALL)
        out, seen = [], 0
        try:
            for i in range(polls):
                [result] = poller.poll_all(threading.Event())
                assert result.ok, result.error
                commands = [c if full else c.split()[0] for c in proxy.commands()]
                out.append(commands[seen:])
                seen = len(commands)
                if between is not None:
                    between(i, result)
        finally:
            poller.close()
        return out
    finally:
        proxy.close()


def test_accounting_details_are_asked_only_while_accounting_is_on(make_tor):
    """Without AccountingMax tor answers zeros and 1970 for accounting/bytes, bytes-left and interval-end:
    they are asked while accounting is on only. The poll that finds it switched on (SETCONF) asks them at
    once, so that poll already has them; the poll that finds it off has only enabled and hibernating."""
    tor = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto",))
    results = []

    def between(i, result):
        results.append(by_measurement(result)["accounting"].fields)
        with tor.controller() as c:
            if i == 1:
                c.set_conf("AccountingMax", "10 GB")
            elif i == 3:
                c.reset_conf("AccountingMax")

    polls = commands_of_polls(tor, polls=6, between=between, full=True)
    main = [next(c for c in poll if c.startswith("GETINFO version ")) for poll in polls]
    asks_details = ["accounting/bytes " in c for c in main]
    assert asks_details == [True, False, False, True, True, False], main  # first poll: not known yet
    details = "GETINFO accounting/bytes accounting/bytes-left accounting/interval-end"
    assert [poll.count(details) for poll in polls] == [0, 0, 1, 0, 0, 0], polls
    assert [r["enabled"] for r in results] == [0, 0, 1, 1, 0, 0]
    assert results[2]["read_left"] == results[2]["written_left"] == 10 * 1024 ** 3 and results[2]["interval_end"]
    assert results[2].keys() == results[3].keys()  # the switching poll is complete
    assert results[4] == results[5] == {"enabled": 0, "hibernating": "awake"}


def commands_of_three_polls(tor) -> list[str]:
    return [c for poll in commands_of_polls(tor) for c in poll]


SETUP = ["PROTOCOLINFO", "AUTHENTICATE", "SETEVENTS", "GETINFO", "GETCONF"]


def test_round_trips_one_getinfo_for_a_client_pipelined_questions_for_a_relay(make_tor):
    """A client: one GETINFO a poll. A relay that is not in the consensus (DisableNetwork): the
    reachability GETINFO and its ns/id entry at every poll, so that the poll after its first
    consensus shows it listed; GETCONF once (tor announces changes: CONF_CHANGED)."""
    client = make_tor(auth="none")
    relay = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto",))
    assert commands_of_three_polls(client) == SETUP + ["GETINFO"] * 3
    assert commands_of_three_polls(relay) == SETUP + ["GETINFO", "GETINFO", "GETCONF", "GETINFO"] + \
        ["GETINFO", "GETINFO", "GETINFO"] * 2


def test_a_listed_relays_consensus_entry_is_asked_once_per_refresh(make_tor, monkeypatch):
    import tor2influxdb2.sources.control.session as session
    monkeypatch.setattr(session, "parse_ns", lambda text: (True, 20, frozenset({"Running", "Valid"})))
    relay = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto",))
    per_poll = ["GETINFO", "GETINFO"]
    # NS_REFRESH and CONF_REFRESH: 300 s
    assert commands_of_three_polls(relay) == SETUP + per_poll + ["GETCONF", "GETINFO"] + per_poll * 2


def effective_rate(result):
    return by_measurement(result)["relay"].fields["effective_rate"]


def test_a_changed_bandwidth_option_shows_at_the_next_poll(make_tor):
    """The GETCONF answer is kept only while tor says nothing changed: a SETCONF by another
    controller, or a reload of a changed torrc (SIGHUP), shows in the relay point at the next poll."""
    import signal
    tor = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto", "BandwidthRate 5 MB"))
    rates = []

    def change(i, result):
        rates.append(effective_rate(result))
        if i == 1:
            with tor.controller() as c:
                c.set_conf("RelayBandwidthRate", "1 MB")
        elif i == 3:
            torrc = tor.workdir / "torrc"
            torrc.write_text(torrc.read_text().replace("BandwidthRate 5 MB", "BandwidthRate 3 MB"))
            tor.proc.send_signal(signal.SIGHUP)  # tor rereads its torrc: RelayBandwidthRate back to 0
            time.sleep(1)

    polls = commands_of_polls(tor, polls=6, between=change)
    assert rates == [5 * 2 ** 20, 5 * 2 ** 20, 2 ** 20, 2 ** 20, 3 * 2 ** 20, 3 * 2 ** 20]
    assert ["GETCONF" in poll[len(SETUP):] if i == 0 else "GETCONF" in poll for i, poll in enumerate(polls)] == \
        [True, False, True, False, True, False]


def test_without_configuration_events_the_options_are_asked_at_every_poll(make_tor, monkeypatch):
    """A tor that refuses the subscription (here: an event name it does not know, which fails the whole
    SETEVENTS) is asked GETCONF at every poll, and CONN_BW alone is asked for again."""
    import tor2influxdb2.sources.control.session as session
    monkeypatch.setattr(session, "EVENTS", (("CONN_BW", "bandwidth"), ("NO_SUCH_EVENT", "relay")))
    tor = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto",))
    polls = commands_of_polls(tor)
    assert polls[0][:3] == ["PROTOCOLINFO", "AUTHENTICATE", "SETEVENTS"] and polls[0].count("SETEVENTS") == 2
    assert all("GETCONF" in poll for poll in polls[1:])


def test_the_options_are_asked_again_every_refresh(make_tor, monkeypatch):
    import tor2influxdb2.sources.control.session as session
    monkeypatch.setattr(session, "CONF_REFRESH", 0.0)
    tor = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto",))
    assert all("GETCONF" in poll for poll in commands_of_polls(tor)[1:])


def test_version_and_version_status_are_asked_at_every_poll(make_tor):
    """Nothing kept: a tor upgrade shows in the version tag and version_status at the next poll."""
    tor = make_tor(auth="none", extra=("ORPort 127.0.0.1:auto",))
    for poll in commands_of_polls(tor, full=True):
        [main] = [c.split()[1:] for c in poll if c.startswith("GETINFO version ")]
        assert "status/version/current" in main


def test_core_alone_still_arrives_when_an_optional_key_fails(make_tor, monkeypatch):
    """A set whose key tor refuses costs that set, never the core."""
    import tor2influxdb2.sources.control.metricsets as ms
    monkeypatch.setitem(ms.SET_KEYS, "status", ms.SET_KEYS["status"] + ("fingerprint",))  # 551 on a client
    tor = make_tor(auth="none")
    result = poll(parse_tor_host(tor.entry("c")), plan=Plan(("core", "status", "bandwidth")), cycles=2)
    assert result.ok, result.error
    assert set(by_measurement(result)) == {"traffic", "connections", "handshakes", "bandwidth"}


# ------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("conf, expected", [
    ({"BandwidthRate": "1073741824", "BandwidthBurst": "1073741824", "RelayBandwidthRate": "0",
      "RelayBandwidthBurst": "0", "MaxAdvertisedBandwidth": "1073741824"}, (1073741824, 1073741824)),
    ({"BandwidthRate": "5000000", "BandwidthBurst": "10000000", "RelayBandwidthRate": "2000000",
      "RelayBandwidthBurst": "3000000", "MaxAdvertisedBandwidth": "4000000"}, (2000000, 3000000)),
    ({"BandwidthRate": "5000000", "BandwidthBurst": "10000000", "RelayBandwidthRate": "0",
      "RelayBandwidthBurst": "0", "MaxAdvertisedBandwidth": "1000000"}, (1000000, 10000000)),
])
def test_effective_rates_as_tor_computes_them(conf, expected):
    assert effective_rates(conf) == expected


def test_ns_entry():
    entry = ("r exit NbC16MUK16vTVxj/haimXCLDj4A bVLflzWz++KU6qYlLe7vTYwvGgM 2038-01-01 00:00:00 127.0.0.1 46953 0\n"
             "s Exit Fast Guard HSDir Running Stable Valid\nw Bandwidth=20\np reject 1-65535")
    assert parse_ns(entry) == (True, 20, frozenset({"Exit", "Fast", "Guard", "HSDir", "Running", "Stable", "Valid"}))
    assert parse_ns("") == (False, None, frozenset())


def test_bandwidth_covers_the_seconds_since_the_last_poll():
    answers = Answers()
    answers.values = {"bw-event-cache": " ".join(f"{r},{w}" for r, w in [(900, 9)] * 5 + [(10, 1), (30, 2), (20, 3)])}
    answers.elapsed = 3.1
    [(_, fields, _)] = Plan(("bandwidth",)).build(answers)
    assert fields == {"read_rate_max": 30, "written_rate_max": 3, "read_rate_mean": 20.0,
                      "written_rate_mean": 2.0, "seconds": 3}


@pytest.mark.parametrize("elapsed, seconds", [(None, 300), (0.2, 1), (0.7, 1), (1.4, 1), (9.6, 10), (299.4, 299),
                                              (299.6, 300), (400.0, 300)])
def test_bandwidth_covers_the_seconds_since_the_last_poll_within_what_tor_keeps(elapsed, seconds):
    answers = Answers()
    answers.values = {"bw-event-cache": " ".join(f"{i},{2 * i}" for i in range(1, 301))}  # tor keeps 300 s
    answers.elapsed = elapsed
    [(_, fields, _)] = Plan(("bandwidth",)).build(answers)
    assert fields["seconds"] == seconds
    assert (fields["read_rate_max"], fields["written_rate_max"]) == (300, 600)
    assert fields["read_rate_mean"] == sum(range(301 - seconds, 301)) / seconds


def test_bandwidth_pairs_read_at_once_equal_reading_them_one_by_one():
    """_last_pairs reads well-formed "read,written" items with one regular expression; whatever tor (or
    a peer) sends, the numbers are those of reading each item alone, a malformed item left out."""
    rng = random.Random(20261202)
    pieces = ["0", "7", "123456", "9" * 18, "9" * 19, "1" * 20, "", " ", "01", "+1", "-1", "1_0", "\u0663", "1.5",
              "x", "1,2", "\t3"]

    def one_by_one(text, wanted):  # every space-separated item of the last `wanted`, alone
        pairs = [(parse_int(read), parse_int(written))
                 for read, _, written in (item.partition(",") for item in text.split(" ")[-wanted:])]
        pairs = [pair for pair in pairs if None not in pair]
        return [read for read, _ in pairs], [written for _, written in pairs]

    for _ in range(3000):
        items = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.8:
                items.append(f"{rng.randrange(10 ** rng.randint(1, 18))},{rng.randrange(10 ** rng.randint(1, 18))}")
            else:
                items.append(rng.choice(pieces) + rng.choice(["", ",", ",,", " "]) + rng.choice(pieces))
        text, wanted = rng.choice(["", " "]).join(items), rng.randint(1, 14)
        assert _last_pairs(text, wanted) == one_by_one(text, wanted), (text, wanted)
    text = " ".join(["1,2"] * 299 + ["3,40"])
    answers = Answers()
    answers.values, answers.elapsed = {"bw-event-cache": text}, 2.0
    [(_, fields, _)] = Plan(("bandwidth",)).build(answers)
    assert fields == {"read_rate_max": 3, "written_rate_max": 40, "read_rate_mean": 2.0, "written_rate_mean": 21.0,
                      "seconds": 2}


def test_guard_states_are_counted():
    answers = Answers()
    answers.kind = "client"
    answers.values = {"entry-guards": ("$92CD45441526048416558C49E7514C22E34DFBE0~auth1 up\n"
                                      "$79C3D55558186D78943FEB5ADEA2B5EA35F325F3~auth3 down 2026-12-01 20:00:00\n"
                                      "$FC5B9B9EF1331FECC5F192FEC62931D48D4F19AD~auth2 never-connected\n"
                                      "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA unusable 2026-12-01 20:00:00")}
    [(_, fields, _)] = Plan(("guards",)).build(answers)
    assert fields == {"up": 1, "down": 1, "never_connected": 1, "unusable": 1, "total": 4}


def test_what_is_kept_between_polls_follows_every_change():
    """The parsed status, accounting, guards, rates and consensus fields are reused only for the same
    answer texts: a poll whose answers changed gets the new values (the same memo across polls)."""
    plan, memo = Plan(SET_NAMES), {}
    conf = {"Nickname": "r", "BandwidthRate": "5000", "BandwidthBurst": "9000", "RelayBandwidthRate": "0",
            "RelayBandwidthBurst": "0", "MaxAdvertisedBandwidth": "5000"}
    base = {"version": "0.4.9.11", "traffic/read": "1", "traffic/written": "2", "stats/ntor/requested": "0",
            "stats/ntor/assigned": "0", "stats/tap/requested": "0", "stats/tap/assigned": "0", "uptime": "10",
            "network-liveness": "up", "status/circuit-established": "1", "dormant": "0",
            "status/enough-dir-info": "1", "status/bootstrap-phase": "NOTICE BOOTSTRAP PROGRESS=100 TAG=done",
            "status/version/current": "recommended", "process/descriptor-limit": "1000",
            "accounting/enabled": "0", "accounting/hibernating": "awake", "accounting/bytes": "0 0",
            "accounting/bytes-left": "0 0", "accounting/interval-end": "1970-01-01 00:00:00",
            "entry-guards": "$92CD45441526048416558C49E7514C22E34DFBE0~a up"}

    def build(kind, values, conf=conf, ns=(True, 20, frozenset({"Running"})), reach=None):
        a = Answers()
        a.values, a.counts = values, {"circuit-status": 0, "stream-status": 0}
        a.kind, a.fingerprint, a.conf, a.ns, a.reach, a.memo = kind, "A" * 40, conf, ns, reach or {}, memo
        return {m: fields for m, fields, _ in plan.build(a)}

    first = build("client", base)
    assert first["status"]["version_status"] == "recommended" and first["guards"]["up"] == 1
    changed = dict(base, **{"status/version/current": "obsolete", "dormant": "1", "uptime": "12",
                            "accounting/enabled": "1", "accounting/hibernating": "soft",
                            "accounting/bytes": "5 6", "accounting/bytes-left": "7 8",
                            "entry-guards": "$92CD45441526048416558C49E7514C22E34DFBE0~a down 2026-12-01 20:00:00"})
    second = build("client", changed)
    assert (second["status"]["version_status"], second["status"]["dormant"], second["status"]["uptime"]) == \
        ("obsolete", 1, 12)
    assert (second["accounting"]["hibernating"], second["accounting"]["read_bytes"],
            second["accounting"]["written_left"]) == ("soft", 5, 8)
    assert (second["guards"]["up"], second["guards"]["down"]) == (0, 1)
    relay = build("relay", base)["relay"]
    assert (relay["effective_rate"], relay["consensus_weight"], relay["flag_running"], relay["flag_exit"]) == \
        (5000, 20, 1, 0)
    relay = build("relay", base, conf=dict(conf, RelayBandwidthRate="3000"), ns=(True, 30, frozenset({"Exit"})))["relay"]
    assert (relay["effective_rate"], relay["consensus_weight"], relay["flag_running"], relay["flag_exit"]) == \
        (3000, 30, 0, 1)
    assert build("relay", base, ns=(False, None, frozenset()))["relay"]["in_consensus"] == 0
    reached = build("relay", base, reach={"status/reachability-succeeded/or": "1",
                                          "status/reachability-succeeded/dir": "0"})["relay"]
    assert (reached["reachable_or"], reached["reachable_dir"], reached["consensus_weight"]) == (1, 0, 20)
    reached = build("relay", base, reach={"status/reachability-succeeded/or": "0",
                                          "status/reachability-succeeded/dir": "1"})["relay"]
    assert (reached["reachable_or"], reached["reachable_dir"]) == (0, 1)
    assert "reachable_or" not in build("relay", base)["relay"]
    assert build("client", base) == first  # and back


def test_a_hostile_version_answer_becomes_a_clean_tag(make_tor):
    from fake_control import FakeControlPort
    reply = ("250-version=0.4.9.11\\ ,evil=1\r\n250-traffic/read=1\r\n250-traffic/written=2\r\n"
             "250-stats/ntor/requested=0\r\n250-stats/ntor/assigned=0\r\n250-stats/tap/requested=0\r\n"
             "250-stats/tap/assigned=0\r\n250-circuit-status=\r\n250-stream-status=\r\n250 OK\r\n")
    fake = FakeControlPort({"GETINFO": reply.encode()})
    try:
        result = poll(TorHost("h", "127.0.0.1", fake.port), plan=Plan(("core",)))
    finally:
        fake.close()
    assert dict(result.samples[0].tags)["version"] == "0.4.9.11_"
