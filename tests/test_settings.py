"""Section 1, settings: every TOR_HOSTS form and every bad configuration."""

import pytest

import tor_to_influxdb2 as t2i
from support import run_daemon

INFLUX = {"INFLUX_HOST": "influxdb", "INFLUX_ORGANIZATION": "org", "INFLUX_BUCKET": "bucket",
          "INFLUX_TOKEN": "tok-en-123"}


def settings(**env):
    return t2i.config_from_env({**INFLUX, **env})


def problems_of(env, test_mode=False):
    with pytest.raises(t2i.ConfigError) as info:
        t2i.config_from_env(env, test_mode=test_mode)
    return info.value.problems


# ----------------------------------------------------------------------------- TOR_HOSTS forms

@pytest.mark.parametrize("entry, expected", [
    ("192.168.0.1:9051:rpi2", dict(address="192.168.0.1", port=9051, password=None, name="rpi2")),
    ("10.0.0.2:9051:mypassw0rd:rpi3", dict(address="10.0.0.2", port=9051, password="mypassw0rd", name="rpi3")),
    ("10.0.0.2:9051:pa:ss:wo:rd:rpi3", dict(address="10.0.0.2", port=9051, password="pa:ss:wo:rd", name="rpi3")),
    ("raspberry.home:9051:rpi3", dict(address="raspberry.home", port=9051, password=None, name="rpi3")),
    ("tor_relay:9051:pw:relay", dict(address="tor_relay", port=9051, password="pw", name="relay")),
    ("localhost:9051:local", dict(address="localhost", port=9051, password=None, name="local")),
    ("[::1]:9051:v6", dict(address="::1", port=9051, password=None, name="v6")),
    ("[2001:db8::7]:9051:p:w:v6", dict(address="2001:db8::7", port=9051, password="p:w", name="v6")),
    ("10.0.0.2:9051::nopw", dict(address="10.0.0.2", port=9051, password=None, name="nopw")),
    ("unix:/run/tor/control:sock", dict(socket_path="/run/tor/control", password=None, name="sock")),
    ("unix:/run/tor/control:se:cret:sock", dict(socket_path="/run/tor/control", password="se:cret", name="sock")),
])
def test_tor_host_forms(entry, expected):
    host = t2i.parse_tor_host(entry)
    for key, value in expected.items():
        assert getattr(host, key) == value, key


def test_entries_are_split_on_commas_and_spaces_ignored():
    s = settings(TOR_HOSTS=" 127.0.0.1:9051:pw:a ,  [::1]:9052:b,unix:/run/c.sock:c ")
    assert [h.name for h in s.tor_hosts] == ["a", "b", "c"]
    assert [h.where for h in s.tor_hosts] == ["127.0.0.1:9051", "[::1]:9052", "unix:/run/c.sock"]


def test_password_never_in_repr_or_description():
    host = t2i.parse_tor_host("10.0.0.2:9051:hunter2secret:relay")
    assert "hunter2secret" not in repr(host)
    assert "hunter2secret" not in host.describe()
    assert "****" in host.describe()
    assert "tok-en-123" not in repr(settings(TOR_HOSTS="10.0.0.2:9051:relay"))


def test_tor_hosts_file_one_entry_per_line_with_comments(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# my relays\n10.0.0.2:9051:pw,with,commas:relay1\n\n  [::1]:9051:relay2\n")
    s = settings(TOR_HOSTS_FILE=str(f))
    assert [(h.name, h.password) for h in s.tor_hosts] == [("relay1", "pw,with,commas"), ("relay2", None)]


def test_influx_token_file_for_docker_secrets(tmp_path):
    f = tmp_path / "token"
    f.write_text("s3cr3t-token\n")
    s = t2i.config_from_env({**INFLUX, "INFLUX_TOKEN": "", "INFLUX_TOKEN_FILE": str(f), "TOR_HOSTS": "h:1:n"})
    assert s.influx_token == "s3cr3t-token"


@pytest.mark.parametrize("env, url", [
    ({"INFLUX_HOST": "influxdb"}, "http://influxdb:8086"),
    ({"INFLUX_HOST": "influxdb", "INFLUX_PORT": "9999"}, "http://influxdb:9999"),
    ({"INFLUX_HOST": "http://influxdb", "INFLUX_PORT": "8086"}, "http://influxdb:8086"),
    ({"INFLUX_HOST": "https://influx.example.org"}, "https://influx.example.org:8086"),
    ({"INFLUX_HOST": "192.168.0.1", "INFLUX_PORT": "8086"}, "http://192.168.0.1:8086"),
    ({"INFLUX_HOST": "", "INFLUX_URL": "https://eu-central-1-1.aws.cloud2.influxdata.com"},
     "https://eu-central-1-1.aws.cloud2.influxdata.com"),
    ({"INFLUX_HOST": "", "INFLUX_URL": "http://[::1]:8086/influx/"}, "http://[::1]:8086/influx"),
])
def test_influx_url_forms(env, url):
    assert settings(TOR_HOSTS="h:1:n", **env).influx_url == url


def test_defaults_are_the_originals():
    s = settings(TOR_HOSTS="h:9051:n")
    assert (s.period, s.service_tag, s.send_version_tag, s.verbose, s.healthcheck_file) == \
        (10, "tor", True, False, "/healthcheck")
    assert s.tor_timeout == 5


@pytest.mark.parametrize("value, expected", [("TRUE", True), ("False", False), ("true", True), ("no", False)])
def test_booleans_are_case_insensitive(value, expected):
    assert settings(TOR_HOSTS="h:1:n", INFLUX_SEND_VERSION_TAG=value).send_version_tag is expected


def test_empty_service_tag_means_none():
    assert settings(TOR_HOSTS="h:1:n", INFLUX_SERVICE_TAG="").service_tag == ""


def test_tor_timeout_defaults_below_a_short_period():
    s = settings(TOR_HOSTS="h:1:n", RUN_EVERY_SECONDS="2")
    assert s.tor_timeout < 2


def test_test_mode_needs_only_tor_hosts():
    s = t2i.config_from_env({"TOR_HOSTS": "127.0.0.1:9051:n"}, test_mode=True)
    assert s.influx_url is None and s.tor_hosts[0].name == "n"


# ------------------------------------------------------------------------ bad configurations

@pytest.mark.parametrize("tor_hosts, needle", [
    ("", "TOR_HOSTS: not set or empty"),
    ("10.0.0.1", "TOR_HOSTS entry 1: expected HOST:PORT:NAME"),
    ("10.0.0.1:9051", "TOR_HOSTS entry 1: expected HOST:PORT:NAME"),
    ("10.0.0.1:0:n", "TOR_HOSTS entry 1: port '0' is not a number from 1 to 65535"),
    ("10.0.0.1:65536:n", "TOR_HOSTS entry 1: port '65536'"),
    ("10.0.0.1:http:n", "TOR_HOSTS entry 1: port 'http'"),
    ("10.0.0.1:9051:pw:", "TOR_HOSTS entry 1: the name"),
    ("a:1:x,b:2:x", "TOR_HOSTS entry 2: name 'x' is already used by TOR_HOSTS entry 1"),
    ("::1:9051:n", "must be written in brackets"),
    ("[::1:9051:n", "has no ']'"),
    ("[zz::1]:9051:n", "is not an IPv6 address"),
    ("unix:relative/path:n", "must be absolute"),
    ("bad host!:9051:n", "neither an IPv4 address nor a DNS name"),
    ("a:1:x,,b:2:y", "TOR_HOSTS entry 2: the host is empty"),
])
def test_bad_tor_hosts(tor_hosts, needle):
    problems = problems_of({**INFLUX, "TOR_HOSTS": tor_hosts})
    assert any(needle in p for p in problems), problems


def test_every_problem_is_reported_together_without_secrets():
    problems = problems_of({
        "TOR_HOSTS": "10.0.0.1:99999:hunter2:a,10.0.0.2:9051:hunter3:a,10.0.0.3:9051:hunter4:",
        "RUN_EVERY_SECONDS": "0", "INFLUX_PORT": "80x", "INFLUX_TOKEN": "tok-en-123",
    })
    text = "\n".join(problems)
    for needle in ("TOR_HOSTS entry 1: port", "TOR_HOSTS entry 3: the name", "RUN_EVERY_SECONDS",
                   "INFLUX_PORT", "INFLUX_HOST: not set", "INFLUX_ORGANIZATION: not set", "INFLUX_BUCKET: not set"):
        assert needle in text
    assert len(problems) >= 7
    for secret in ("hunter2", "hunter3", "hunter4", "tok-en-123"):
        assert secret not in text


@pytest.mark.parametrize("env, needle", [
    ({"RUN_EVERY_SECONDS": "ten"}, "RUN_EVERY_SECONDS: 'ten' is not an integer >= 1"),
    ({"RUN_EVERY_SECONDS": "2.5"}, "RUN_EVERY_SECONDS"),
    ({"RUN_EVERY_SECONDS": "-1"}, "RUN_EVERY_SECONDS"),
    ({"INFLUX_PORT": "0"}, "INFLUX_PORT"),
    ({"INFLUX_PORT": "abc"}, "INFLUX_PORT"),
    ({"TOR_TIMEOUT": "10"}, "TOR_TIMEOUT: 10 s must be below RUN_EVERY_SECONDS (10 s)"),
    ({"TOR_TIMEOUT": "x"}, "TOR_TIMEOUT"),
    ({"INFLUX_SEND_VERSION_TAG": "maybe"}, "INFLUX_SEND_VERSION_TAG"),
    ({"VERBOSE": "very"}, "VERBOSE"),
    ({"INFLUX_HOST": "ftp://influx"}, "scheme must be http or https"),
    ({"INFLUX_HOST": "http://user:pw@influx"}, "must not contain credentials"),
    ({"INFLUX_URL": "http://x:8086"}, "INFLUX_URL and INFLUX_HOST are both set"),
    ({"INFLUX_HOST": "http://influx:8086", "INFLUX_PORT": "9999"}, "contradicts"),
    ({"INFLUX_TOKEN_FILE": "/nonexistent/token"}, "INFLUX_TOKEN_FILE: cannot read /nonexistent/token"),
    ({"TOR_HOSTS_FILE": "/nonexistent/hosts"}, "TOR_HOSTS_FILE: cannot read /nonexistent/hosts"),
    ({"BUFFER_MAX_POINTS": "0"}, "BUFFER_MAX_POINTS"),
])
def test_bad_values(env, needle):
    problems = problems_of({**INFLUX, "TOR_HOSTS": "h:1:n", **env})
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("missing", ["INFLUX_HOST", "INFLUX_ORGANIZATION", "INFLUX_BUCKET", "INFLUX_TOKEN"])
def test_missing_influx_variable_outside_test_mode(missing):
    env = {**INFLUX, "TOR_HOSTS": "h:1:n"}
    del env[missing]
    assert any(p.startswith(missing) for p in problems_of(env))
    t2i.config_from_env(env, test_mode=True)  # -t needs none of them


def test_bad_configuration_exits_2_with_one_line_per_problem_and_no_traceback():
    r = run_daemon({"TOR_HOSTS": "10.0.0.1:0:hunter2:a,10.0.0.2:9051:b,10.0.0.3:9051:b",
                    "RUN_EVERY_SECONDS": "x", "INFLUX_TOKEN": "tok-en-123"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert all(line.startswith("configuration error: ") for line in lines), r.stderr
    assert any("entry 1" in line for line in lines) and any("entry 3" in line for line in lines)
    assert "Traceback" not in r.stderr and "hunter2" not in r.stderr + r.stdout
    assert "tok-en-123" not in r.stderr + r.stdout
    assert len(lines) >= 6


def test_unreadable_file_exits_2(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("x")
    secret.chmod(0)
    import os
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    r = run_daemon({**INFLUX, "INFLUX_TOKEN": "", "INFLUX_TOKEN_FILE": str(secret), "TOR_HOSTS": "h:1:n"})
    assert r.returncode == 2 and "INFLUX_TOKEN_FILE: cannot read" in r.stderr


def test_directory_given_as_file_exits_2(tmp_path):
    r = run_daemon({**INFLUX, "TOR_HOSTS_FILE": str(tmp_path)})
    assert r.returncode == 2 and "TOR_HOSTS_FILE: cannot read" in r.stderr, r.stderr


@pytest.mark.parametrize("entry", ["::1:9051:n", "fe80::1:9051:n", "2001:db8::1:9051:pw:n"])
def test_bare_ipv6_is_explained(entry):
    with pytest.raises(ValueError, match="brackets"):
        t2i.parse_tor_host(entry)


def test_hex_looking_host_with_colon_password_is_not_ipv6():
    host = t2i.parse_tor_host("beef:9051:cafe:babe:name")
    assert (host.address, host.port, host.password, host.name) == ("beef", 9051, "cafe:babe", "name")
