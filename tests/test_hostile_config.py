"""Hostile tier: configuration that looks plausible but is wrong, and secrets in it.

Each case runs the real daemon (tor_to_influxdb2.py). A refused configuration must end with exit
status 2, a message naming the variable, no traceback, and never a secret in any encoded form.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from hostile_peers import FakeControlPort, HttpPeer, assert_not_shown, core_answer, run_until
from support import Daemon, run_daemon

pytestmark = pytest.mark.hostile

TOKEN = "hostile-config-token-7f3a"


def base_env(tmp_path, **changes) -> dict:
    """A configuration the daemon accepts; `changes` break it (None removes a variable)."""
    env = {"TOR_HOSTS": "127.0.0.1:1:cfg", "INFLUX_URL": "http://127.0.0.1:1", "INFLUX_ORGANIZATION": "org",
           "INFLUX_BUCKET": "bucket", "INFLUX_TOKEN": TOKEN, "HEALTHCHECK_FILE": str(tmp_path / "health")}
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def refused(env: dict, *args: str) -> str:
    """Run the daemon, which must refuse `env` at once: exit 2, no traceback. Its stderr."""
    try:
        r = run_daemon(env, *args, timeout=8)
    except subprocess.TimeoutExpired:
        raise AssertionError("the daemon accepted the configuration and ran instead of refusing it") from None
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.stderr.strip(), "no message"
    for line in r.stderr.strip().splitlines():
        assert line.startswith("configuration error: "), line
    return r.stderr


# ------------------------------------------------------------------------ secrets at start

@pytest.mark.parametrize("content", [
    "tok-en\nsecond-line-9d2c\n",       # a newline inside
    "tok\x07en-bell-5e1b\n",            # a control character
    "tök-en-umlaut-4a7c",               # non-ASCII: no HTTP header carries it
    "tok€n-euro-sign-3b9d",             # not even Latin-1
    "tok en-with-space-8c2e",
], ids=["newline", "control", "non-ascii", "non-latin-1", "space"])
def test_a_token_file_that_cannot_be_a_token_is_refused_unquoted(tmp_path, content):
    token_file = tmp_path / "token"
    token_file.write_text(content, encoding="utf-8")
    err = refused(base_env(tmp_path, INFLUX_TOKEN=None, INFLUX_TOKEN_FILE=str(token_file)))
    assert "INFLUX_TOKEN_FILE:" in err
    for part in [content, content.strip(), *re.split(r"[\n\x07 ]", content.strip())]:
        if len(part) >= 4:
            assert_not_shown(err, part)


@pytest.mark.parametrize("token", ["tok€n-euro-sign-3b9d", "tök-en-umlaut-4a7c", "tok\ten-tab-1f0e"])
def test_a_token_variable_no_header_can_carry_is_refused_unquoted(tmp_path, token):
    err = refused(base_env(tmp_path, INFLUX_TOKEN=token))
    assert "INFLUX_TOKEN:" in err
    assert_not_shown(err, token)


@pytest.mark.parametrize("password", ["kv8Q\x07Rt5m-bell-77aa", "kv8Q\x1bRt5m-esc-88bb", "kv8Q\x7fRt5m-del-99cc"])
def test_a_password_with_a_control_character_is_refused_unquoted(tmp_path, password):
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1:9051:{password}:relay\n", encoding="utf-8")
    err = refused(base_env(tmp_path, TOR_HOSTS=None, TOR_HOSTS_FILE=str(hosts)))
    assert "TOR_HOSTS_FILE line 1: the password contains a control" in err
    assert_not_shown(err, password, *re.split(r"[\x00-\x1f\x7f]", password))


def test_a_password_with_commas_in_tor_hosts_is_never_quoted(tmp_path):
    password = "Pa55,w0rd-comma,Xyz-4412"
    err = refused(base_env(tmp_path, TOR_HOSTS=f"127.0.0.1:9051:{password}:relay"))
    assert "if a password contains ','" in err and "TOR_HOSTS_FILE" in err
    assert_not_shown(err, password, *password.split(","))


def test_credentials_in_influx_url_are_refused_unquoted(tmp_path):
    err = refused(base_env(tmp_path, INFLUX_URL="http://writer:url-pass-6a6b@127.0.0.1:8086"))
    assert "INFLUX_URL: must not contain credentials" in err
    assert_not_shown(err, "url-pass-6a6b")


def test_a_third_field_that_is_a_password_is_never_shown(tmp_path, make_tor):
    """HOST:PORT:X where X is the tor's password (the name forgotten): the daemon takes X for a
    name, tor asks for a password, and X must show nowhere: not in the start-up log, the log,
    the health file, nor -t."""
    tor = make_tor(auth="password", password="third-field-pw-5150")
    entry = f"127.0.0.1:{tor.port}:{tor.password}"
    daemon, health = run_until(base_env(tmp_path, TOR_HOSTS=entry, RUN_EVERY_SECONDS="1", TOR_TIMEOUT="0.8",
                                        VERBOSE="true"))
    assert "tor asks for a password and TOR_HOSTS entry 1 gives none" in daemon.output
    assert f"tor host: TOR_HOSTS entry 1 (127.0.0.1:{tor.port})" in daemon.output
    assert health.startswith("FAILED") and f"host TOR_HOSTS entry 1 (127.0.0.1:{tor.port})" in health
    test = run_daemon({"TOR_HOSTS": entry}, "-t")
    assert test.returncode == 1 and "(TOR_HOSTS entry 1): not available: tor asks for a password" in test.stdout
    for text in (daemon.output, health, test.stdout, test.stderr):
        assert_not_shown(text, tor.password)


# ------------------------------------------------------------- numbers that validate, then fail

@pytest.mark.parametrize("variable, value", [
    ("RUN_EVERY_SECONDS", "10000000000"), ("RUN_EVERY_SECONDS", "1e3"), ("RUN_EVERY_SECONDS", "-10"),
    ("RUN_EVERY_SECONDS", "١٠"),  # Arabic-Indic digits: int() would take them
    ("INFLUX_TIMEOUT", "inf"), ("INFLUX_TIMEOUT", "1e300"), ("INFLUX_TIMEOUT", "nan"), ("INFLUX_TIMEOUT", "-1"),
    ("TOR_TIMEOUT", "99999999"), ("TOR_TIMEOUT", "inf"), ("TOR_TIMEOUT", "0"),
    ("BUFFER_MAX_POINTS", "1000000000000"), ("BUFFER_MAX_MEMORY", "999999999999G"), ("BUFFER_MAX_MEMORY", "1e9"),
    ("INFLUX_PORT", "99999999999999999999"),
])
def test_huge_or_odd_numbers_are_refused(tmp_path, variable, value):
    changes = {variable: value}
    if variable == "INFLUX_PORT":
        changes.update(INFLUX_URL=None, INFLUX_HOST="127.0.0.1")
    err = refused(base_env(tmp_path, **changes))
    assert err.startswith(f"configuration error: {variable}: "), err


# ------------------------------------------------------------------------------ INFLUX_URL typos

@pytest.mark.parametrize("url", [
    "http//influx:8086", "http:/influx", "htp://influx", "http://exa mple:8086", "http://influx:80a",
    "http://[::1", "http://influx:8086?org=x", "http://",
    "http://127.0.0.1:0",                       # port 0: nothing listens there
    "http://influx:8086/api/v2/write",          # the write endpoint instead of the base URL
])
def test_influx_url_typos_are_refused(tmp_path, url):
    err = refused(base_env(tmp_path, INFLUX_URL=url))
    assert err.startswith("configuration error: INFLUX_URL: "), err


def test_influx_host_with_port_0_is_refused(tmp_path):
    err = refused(base_env(tmp_path, INFLUX_URL=None, INFLUX_HOST="127.0.0.1:0"))
    assert err.startswith("configuration error: INFLUX_HOST: "), err


# --------------------------------------------------------------------------- misspelt variables

@pytest.mark.parametrize("wrong, right", [
    ("TOR_HOST", "TOR_HOSTS"), ("INFLUX_ORG", "INFLUX_ORGANIZATION"), ("INFLUXDB_TOKEN", "INFLUX_TOKEN"),
    ("tor_hosts", "TOR_HOSTS"), ("influx_token", "INFLUX_TOKEN"), ("Influx_Bucket", "INFLUX_BUCKET"),
])
def test_a_misspelt_variable_is_named_in_the_message(tmp_path, wrong, right):
    value = "127.0.0.1:1:misspelt" if "host" in right.lower() else "misspelt-value-secret-2b2b"
    err = refused({**base_env(tmp_path, **{right: None}), wrong: value})
    assert f"{right}: not set ({wrong} is set: did you mean {right}?)" in err, err
    assert_not_shown(err, "misspelt-value-secret-2b2b")


def test_a_misspelt_extra_variable_is_a_warning_naming_the_right_one(tmp_path):
    control = FakeControlPort({"GETINFO": core_answer()})
    try:
        r = run_daemon({"TOR_HOSTS": control.entry("typo"), "tor_timeout": "3", "INFLUXDB_TOKEN": "unused-tok-3c3c"},
                       "-t")
    finally:
        control.close()
    assert r.returncode == 0, r.stderr
    assert "tor_timeout is set but tor2influxdb2 does not read it (did you mean TOR_TIMEOUT?)" in r.stderr
    assert "INFLUXDB_TOKEN is set but tor2influxdb2 does not read it (did you mean INFLUX_TOKEN?)" in r.stderr
    assert_not_shown(r.stdout + r.stderr, "unused-tok-3c3c")


# ---------------------------------------------------------------------- files and separators

def test_a_utf8_bom_and_crlf_in_the_files_are_not_part_of_the_values(tmp_path):
    """Windows editors write a byte order mark and CRLF: the name and the token are what they
    look like (the token is checked where it arrives: in the Authorization header)."""
    control = FakeControlPort({"GETINFO": core_answer()})
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"\xef\xbb\xbf" + f"127.0.0.1:{control.port}:bom-relay\r\n# comment\r\n".encode())
    token = tmp_path / "token"
    token.write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n")
    peer = HttpPeer(lambda request: (204, {}, b""))
    env = base_env(tmp_path, TOR_HOSTS=None, TOR_HOSTS_FILE=str(hosts), INFLUX_TOKEN=None,
                   INFLUX_TOKEN_FILE=str(token), INFLUX_URL=peer.url, RUN_EVERY_SECONDS="1", TOR_TIMEOUT="0.8",
                   VERBOSE="true")
    try:
        test = run_daemon(env, "-t")
        daemon = Daemon(env).start()
        try:
            daemon.wait_for_line(r"cycle 1 done in [\d.]+ s: 1/1 hosts ok")
            from support import wait_for
            wait_for(lambda: peer.requests, 5, what="a write")
        finally:
            assert daemon.stop() == 0
    finally:
        control.close()
        peer.close()
    assert test.returncode == 0 and f"Stats for host 127.0.0.1:{control.port}(bom-relay):" in test.stdout
    assert peer.requests[0].headers["Authorization"] == f"Token {TOKEN}"
    assert any(line.startswith("traffic,host=bom-relay,") for line in peer.requests[0].lines)


@pytest.mark.parametrize("hosts", ["{e},", ",{e}", "{e},,", " {e} , "])
def test_empty_entries_in_tor_hosts_are_skipped(hosts):
    control = FakeControlPort({"GETINFO": core_answer()})
    try:
        r = run_daemon({"TOR_HOSTS": hosts.format(e=control.entry("comma"))}, "-t")
    finally:
        control.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Stats for host") == 1 and f"127.0.0.1:{control.port}(comma)" in r.stdout
