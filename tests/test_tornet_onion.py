"""Onion services on the private Tor network (tests/tornet.py), and real MetricsPort captures.

Two v3 onion services run as extra tors of the network: `web` leads to the network's HTTP
target, `late` to a port on which nothing listens until a test starts a server there (the
way a later test hands a service the port of its VictoriaMetrics). The client reaches them by
name through its SOCKS port (ExtendedErrors on, so tor answers the onion failure codes F0-F7).

tests/data/metricsport/ holds MetricsPort pages captured here; T2I_RECAPTURE=1 rewrites them
(see the README there).

Run: .venv/bin/python -m pytest -m tornet tests/test_tornet_onion.py
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from support import wait_for
from tornet import (BODY_SIZE, WELL_FORMED_UNKNOWN_ONION, HttpTarget, OnionService, foreign_lines,
                    foreign_sockets, http_get_url, socks_reply_code)

pytestmark = [pytest.mark.tornet, pytest.mark.usefixtures("tornet_on_loopback"),
              pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")]

DATA = Path(__file__).resolve().parent / "data" / "metricsport"
RECAPTURE = os.environ.get("T2I_RECAPTURE") == "1"
REACH_TIMEOUT = 90  # measured 4-19 s, once 34 s (first start and restarts, loaded machine)
DOWN_TIMEOUT = 60  # F2 (3-12 s) or 06 (after the client's SocksTimeout, 10 s) for a stopped service


@pytest.fixture(scope="module")
def services(tornet):
    """Both onion services, started together (they publish in parallel); `web` reachable.
    Stopped and removed from the network at the end of the module."""
    late_port = tornet.port()  # nothing listens here until test_service_whose_target_comes_later
    started: list[OnionService] = []
    try:
        started.append(tornet.add_onion_service("web", tornet.http.port))
        started.append(tornet.add_onion_service("late", late_port, virtual_port=8428))
        web = started[0]
        web.wait_reachable(REACH_TIMEOUT)
        print(f"\nweb: reachable {web.last_wait['since_start']:.1f} s after its tor started {web.last_wait}; "
              f"web {web.timings}, late {started[1].timings}")
        yield {svc.name: svc for svc in started}
    finally:
        for svc in started:
            tornet.remove_onion_service(svc)


# ----------------------------------------------------------------------------- helpers

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> (name, labels, value) per sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def value(samples, name: str, **labels) -> float:
    """The one sample `name` with exactly these labels (among others)."""
    hits = [v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def families(text: str) -> set[tuple[str, str]]:
    """(family, type) of every '# TYPE' line."""
    return {tuple(line.split()[2:4]) for line in text.splitlines() if line.startswith("# TYPE ")}


def tor_version(node) -> str:
    with node.controller() as c:
        return c.get_info("version").split()[0]


def check_exit_capture(text: str) -> None:
    """What the exit's page must show to be worth keeping: ntor v3 handshakes, exit streams and
    megabytes of traffic."""
    samples = parse_metrics(text)
    assert value(samples, "tor_relay_load_onionskins_total", type="ntor_v3", action="processed") > 0
    assert value(samples, "tor_relay_streams_total", type="BEGIN") > 0
    for direction in ("read", "written"):
        assert value(samples, "tor_relay_traffic_bytes", direction=direction) >= BODY_SIZE
    assert value(samples, "tor_relay_flag", type="Exit") == 1


def check_onion_capture(text: str, onion_id: str | None = None) -> str:
    """What the service's page must show: tor_hs_* families, every series labelled with one
    onion address (`onion_id` if given), rendezvous done and application bytes moved.
    Returns the onion label."""
    samples = parse_metrics(text)
    hs = [(n, lab, v) for n, lab, v in samples if n.startswith("tor_hs_")]
    assert hs, "no tor_hs_* samples"
    labels = {lab.get("onion") for _, lab, _ in hs}
    assert len(labels) == 1 and re.fullmatch(r"[a-z2-7]{56}", str(next(iter(labels)))), labels
    (label,) = labels
    if onion_id is not None:
        assert label == onion_id, f"tor_hs_* labelled {label}, the service is {onion_id}"
    assert value(samples, "tor_hs_rdv_num_total") >= 1
    assert value(samples, "tor_hs_intro_established_count") >= 1
    assert value(samples, "tor_hs_app_write_bytes_total", port="80") > 0
    assert value(samples, "tor_hs_app_read_bytes_total", port="80") >= BODY_SIZE
    return label


# -------------------------------------------------------------------------------- tests

def test_onion_service_answers_a_get_through_the_client(tornet, services):
    """A GET by onion name through the client's SOCKS port returns the target's bodies."""
    web = services["web"]
    assert web.get("/small") == tornet.http.bodies["/small"]
    assert http_get_url(tornet.client.socks_port, web.url("/small")) == tornet.http.bodies["/small"]
    assert web.get("/blob") == tornet.http.bodies["/blob"]


def test_onion_metricsport_labels_hs_families_with_its_address(tornet, services):
    """The service's MetricsPort: tor_hs_* series carry onion=<its address without .onion>,
    and the bytes the service read from its application grow by at least what was fetched."""
    web = services["web"]
    before = parse_metrics(web.metrics())
    read0 = value(before, "tor_hs_app_read_bytes_total", onion=web.onion_id, port="80")
    assert web.get("/blob") == tornet.http.bodies["/blob"]
    text = web.metrics()
    assert check_onion_capture(text, web.onion_id) == web.onion_id
    read1 = value(parse_metrics(text), "tor_hs_app_read_bytes_total", onion=web.onion_id, port="80")
    assert read1 - read0 >= BODY_SIZE, f"tor_hs_app_read_bytes_total grew by {read1 - read0:g}"
    assert web.address == web.onion_id + ".onion"


def test_extended_socks_reply_codes(tornet, services):
    """ExtendedErrors: a well-formed address nobody publishes -> F0, a malformed one -> F6,
    a running service whose target does not listen -> 01."""
    socks = tornet.client.socks_port
    web = services["web"]
    assert socks_reply_code(socks, "abcdef.onion", 80, timeout=10) == 0xF6
    # one character of the key changed: 56 valid base32 characters, the checksum no longer fits
    bad_checksum = web.address[:10] + ("a" if web.address[10] != "a" else "b") + web.address[11:]
    assert socks_reply_code(socks, bad_checksum, 80, timeout=10) == 0xF6
    assert socks_reply_code(socks, WELL_FORMED_UNKNOWN_ONION, 80, timeout=30) == 0xF0
    assert web.reply_code(30) == 0
    with pytest.raises(ValueError):  # a name other than .onion would make the exit resolve it
        socks_reply_code(socks, "localhost", 80)
    late = services["late"]
    late.wait_reply({0x01}, REACH_TIMEOUT)  # F0 until its descriptor is out, then 01


def test_service_whose_target_comes_later(tornet, services):
    """The second service answers once something listens on its target port (a later test
    hands such a service the port of its own server)."""
    late = services["late"]
    server = HttpTarget(port=late.target_port)
    try:
        late.wait_reachable(REACH_TIMEOUT)
        assert late.get("/small") == server.bodies["/small"]
    finally:
        server.stop()


def test_restarted_onion_service_answers_again(tornet, services):
    """Stopped: the client answers F2 (introduction failed) or, while an intro point still
    acknowledges introductions for the stopped tor, 06 once its SocksTimeout ran out; never 0.
    Started again: same address, reachable again within a bounded time, GET works."""
    web = services["web"]
    address = web.address
    web.stop()
    try:
        down = web.wait_unreachable(DOWN_TIMEOUT)
        down_info = dict(web.last_wait)
    finally:
        web.start()  # the later tests need it, whatever happened
    assert down_info["reply"] in (0xF2, 0x06) and 0 not in down_info["codes"], down_info
    assert web.address == address
    back = web.wait_reachable(REACH_TIMEOUT)
    assert web.get("/small") == tornet.http.bodies["/small"]
    print(f"\nweb stopped: 0x{down_info['reply']:02X} after {down:.1f} s {down_info}; restarted: reachable {back:.1f} s "
          f"after start() returned, {web.last_wait['since_start']:.1f} s after its tor started {web.last_wait}")


def test_metricsport_captures(tornet, services):
    """The exit's page while a fetch flows through it, and the service's after several fetches,
    show what tests/data/metricsport/ claims; the stored captures for this tor version have
    the same families. T2I_RECAPTURE=1 rewrites the stored files with these pages."""
    web = services["web"]
    version = tor_version(tornet.exit)
    exit_path = DATA / f"relay-exit-{version}.prom"
    onion_path = DATA / f"onion-service-{version}.prom"

    # the exit, mid-transfer: a thread fetches the blob four times; the page is taken once the
    # exit has carried a blob's worth more than before, while the thread still runs
    read0 = value(parse_metrics(tornet.exit.metrics()), "tor_relay_traffic_bytes", direction="read")
    errors = []

    def fetch():
        try:
            for _ in range(4):
                assert tornet.fetch("/blob") == tornet.http.bodies["/blob"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    fetcher = threading.Thread(target=fetch)
    fetcher.start()
    try:
        def mid_transfer():
            text = tornet.exit.metrics()
            read = value(parse_metrics(text), "tor_relay_traffic_bytes", direction="read")
            return text if read - read0 >= BODY_SIZE else None
        exit_text = wait_for(mid_transfer, 30, interval=0.1, what="the exit carrying a blob")
        flowing = fetcher.is_alive()
    finally:
        fetcher.join(60)
    assert not errors, errors
    check_exit_capture(exit_text)

    for _ in range(3):
        assert web.get("/small") == tornet.http.bodies["/small"]
    assert web.get("/blob") == tornet.http.bodies["/blob"]
    onion_text = web.metrics()
    check_onion_capture(onion_text, web.onion_id)

    if RECAPTURE:
        assert flowing, "the fetch ended before the exit's page was taken: run again"
        DATA.mkdir(parents=True, exist_ok=True)
        exit_path.write_text(exit_text)
        onion_path.write_text(onion_text)
        print(f"\nwrote {exit_path.name} and {onion_path.name} (service {web.address})")
        return
    if not exit_path.exists() or not onion_path.exists():
        pytest.skip(f"no captures for tor {version} in {DATA}: run with T2I_RECAPTURE=1")
    stored_exit, stored_onion = exit_path.read_text(), onion_path.read_text()
    check_exit_capture(stored_exit)
    check_onion_capture(stored_onion)
    assert families(stored_exit) == families(exit_text)
    assert families(stored_onion) == families(onion_text)


def test_watchdog_saw_only_loopback_sockets_of_the_onion_tors(tornet, services):
    """The ss watchdog covers the onion tors: ss shows their sockets, all in 127.0.0.0/8."""
    pids = {svc.node.pid for svc in services.values()}
    assert None not in pids and pids <= tornet.pids
    out = subprocess.run(["ss", "-tuanpH"], capture_output=True, text=True, check=True).stdout
    for pid in pids:
        assert foreign_lines(out, {pid})[0] > 0, f"ss shows no socket of onion tor pid {pid}"
    assert foreign_sockets(set(tornet.pids)) == []
    assert tornet.violations == []
