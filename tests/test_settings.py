"""settings: every variable, its bounds, the secrets, and every bad configuration reported at once."""

import pytest

from support import run_daemon
from tor2influxdb2.errors import ConfigError
from tor2influxdb2.redact import Redactor
from tor2influxdb2.settings import config_from_env

INFLUX = {"INFLUX_HOST": "influxdb", "INFLUX_ORGANIZATION": "org", "INFLUX_BUCKET": "bucket",
          "INFLUX_TOKEN": "tok-en-123"}


def settings(**env):
    return config_from_env({**INFLUX, **env}, redactor=Redactor())


def problems_of(env, mode="daemon"):
    with pytest.raises(ConfigError) as info:
        config_from_env(env, mode=mode, redactor=Redactor())
    return info.value.problems


def test_entries_are_split_on_commas_spaces_and_empty_entries_ignored():
    s = settings(TOR_HOSTS=" 127.0.0.1:9051:pw:a ,  [::1]:9052:b,,unix:/run/c.sock:c ,")
    assert [h.name for h in s.tor_hosts] == ["a", "b", "c"]
    assert [h.where for h in s.tor_hosts] == ["127.0.0.1:9051", "[::1]:9052", "unix:/run/c.sock"]
    assert [h.label for h in s.tor_hosts] == ["TOR_HOSTS entry 1", "TOR_HOSTS entry 2", "TOR_HOSTS entry 4"]


def test_tor_hosts_file_one_entry_per_line_with_comments_and_a_byte_order_mark(tmp_path):
    f = tmp_path / "hosts"
    f.write_bytes("\ufeff# my relays\r\n10.0.0.2:9051:pw,with,commas:relay1\n\n  [::1]:9051:relay2\n".encode())
    s = settings(TOR_HOSTS_FILE=str(f))
    assert [(h.name, h.password) for h in s.tor_hosts] == [("relay1", "pw,with,commas"), ("relay2", None)]


def test_influx_token_file_for_docker_secrets(tmp_path):
    f = tmp_path / "token"
    f.write_text("s3cr3t-token\n")
    s = config_from_env({**INFLUX, "INFLUX_TOKEN": "", "INFLUX_TOKEN_FILE": str(f), "TOR_HOSTS": "h:1:n"},
                        redactor=Redactor())
    assert s.influx_token == "s3cr3t-token"


@pytest.mark.parametrize("content, ok", [("tok\n", True), ("tok\r\n", True), ("tok", True), ("tok\n\n", False),
                                         ("to\nk", False), ("tok\x00", False), ("tök", False), ("to k", False),
                                         ("\ttok", False), ("", False)])
def test_token_files_are_validated_and_never_echoed(tmp_path, content, ok):
    f = tmp_path / "token"
    f.write_text(content, encoding="utf-8")
    env = {**INFLUX, "INFLUX_TOKEN": "", "INFLUX_TOKEN_FILE": str(f), "TOR_HOSTS": "h:1:n"}
    if ok:
        assert config_from_env(env, redactor=Redactor()).influx_token == "tok"
        return
    problems = problems_of(env)
    assert any(p.startswith("INFLUX_TOKEN_FILE:") for p in problems), problems
    assert not any("tok" in p.replace("token", "") for p in problems), problems


def test_secrets_are_registered_for_masking_as_soon_as_read(tmp_path):
    redactor = Redactor()
    with pytest.raises(ConfigError):
        config_from_env({"TOR_HOSTS": "10.0.0.1:9051:pw-one:a,10.0.0.1:bad:pw-two,x:n", "INFLUX_TOKEN": "tok\nen"},
                        redactor=redactor)
    for secret in ("pw-one", "tok\nen", "tok\\nen"):
        assert redactor.mask(f"x {secret} y") == "x **** y", secret


@pytest.mark.parametrize("env, url", [
    ({"INFLUX_HOST": "influxdb"}, "http://influxdb:8086"),
    ({"INFLUX_HOST": "influxdb", "INFLUX_PORT": "9999"}, "http://influxdb:9999"),
    ({"INFLUX_HOST": "http://influxdb", "INFLUX_PORT": "8086"}, "http://influxdb:8086"),
    ({"INFLUX_HOST": "https://influx.example.org"}, "https://influx.example.org:8086"),
    ({"INFLUX_HOST": "192.168.0.1", "INFLUX_PORT": "8086"}, "http://192.168.0.1:8086"),
    ({"INFLUX_HOST": "", "INFLUX_URL": "https://eu-central-1-1.aws.cloud2.influxdata.com"},
     "https://eu-central-1-1.aws.cloud2.influxdata.com"),
    ({"INFLUX_HOST": "", "INFLUX_URL": "http://[::1]:8086/influx/"}, "http://[::1]:8086/influx"),
    ({"INFLUX_HOST": "", "INFLUX_URL": "http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion"},
     "http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion"),
])
def test_influx_url_forms(env, url):
    assert settings(TOR_HOSTS="h:1:n", **env).influx_url == url


def test_defaults_are_the_originals():
    s = settings(TOR_HOSTS="h:9051:n")
    assert (s.period, s.service_tag, s.send_version_tag, s.verbose, s.healthcheck_file) == \
        (10, "tor", True, False, "/healthcheck")
    assert s.tor_timeout == 5 and s.metric_sets == ("core",)


@pytest.mark.parametrize("value, expected", [("TRUE", True), ("False", False), ("true", True), ("no", False)])
def test_booleans_are_case_insensitive(value, expected):
    assert settings(TOR_HOSTS="h:1:n", INFLUX_SEND_VERSION_TAG=value).send_version_tag is expected


def test_empty_service_tag_means_none():
    assert settings(TOR_HOSTS="h:1:n", INFLUX_SERVICE_TAG="").service_tag == ""


def test_tor_timeout_defaults_below_a_short_period():
    assert settings(TOR_HOSTS="h:1:n", RUN_EVERY_SECONDS="2").tor_timeout < 2


def test_test_mode_needs_only_tor_hosts():
    s = config_from_env({"TOR_HOSTS": "127.0.0.1:9051:n"}, mode="test", redactor=Redactor())
    assert s.influx_url is None and s.tor_hosts[0].name == "n"


@pytest.mark.parametrize("value, expected", [
    ("core", ("core",)), ("all", ("core", "status", "relay", "accounting", "guards", "bandwidth", "daemon")),
    ("status, Relay ,core", ("core", "status", "relay")), ("bandwidth,", ("bandwidth",)),
])
def test_metric_sets(value, expected):
    assert settings(TOR_HOSTS="h:1:n", METRIC_SETS=value).metric_sets == expected


def test_bad_metric_set_lists_the_valid_ones():
    [problem] = problems_of({**INFLUX, "TOR_HOSTS": "h:1:n", "METRIC_SETS": "core,peaks"})
    assert problem == ("METRIC_SETS: 'peaks' is not a metric set; the sets are core, status, relay, accounting, "
                       "guards, bandwidth, daemon (or all)")


# ------------------------------------------------------------------------ bad configurations

@pytest.mark.parametrize("tor_hosts, needle", [
    ("", "TOR_HOSTS: not set"),
    ("10.0.0.1", "TOR_HOSTS entry 1: expected HOST:PORT:NAME"),
    ("10.0.0.1:0:n", "TOR_HOSTS entry 1: the port (second field) is not a number from 1 to 65535"),
    ("a:1:x,b:2:x", "TOR_HOSTS entry 2: its name (the last field) is already used by TOR_HOSTS entry 1"),
    ("10.0.0.1:9051:pw,with,comma:name", "if a password contains ','"),
])
def test_bad_tor_hosts(tor_hosts, needle):
    problems = problems_of({**INFLUX, "TOR_HOSTS": tor_hosts})
    assert any(needle in p for p in problems), problems


def test_a_password_with_a_comma_is_never_quoted():
    problems = problems_of({**INFLUX, "TOR_HOSTS": "10.0.0.1:9051:hunter,zz8:relay"})
    assert problems and not any("zz8" in p or "hunter" in p for p in problems), problems


def test_every_problem_is_reported_together_without_secrets():
    problems = problems_of({
        "TOR_HOSTS": "10.0.0.1:99999:hunter2:a,10.0.0.2:9051:hunter3:a,10.0.0.3:9051:hunter4:",
        "RUN_EVERY_SECONDS": "0", "INFLUX_PORT": "80x", "INFLUX_TOKEN": "tok-en-123",
    })
    text = "\n".join(problems)
    for needle in ("TOR_HOSTS entry 1: the port", "TOR_HOSTS entry 3: the name", "RUN_EVERY_SECONDS",
                   "INFLUX_PORT", "INFLUX_HOST: not set", "INFLUX_ORGANIZATION: not set", "INFLUX_BUCKET: not set"):
        assert needle in text
    assert len(problems) >= 7
    for secret in ("hunter2", "hunter3", "hunter4", "tok-en-123"):
        assert secret not in text


@pytest.mark.parametrize("env, needle", [
    ({"RUN_EVERY_SECONDS": "ten"}, "RUN_EVERY_SECONDS: 'ten' is not a whole number from 1 to 86400"),
    ({"RUN_EVERY_SECONDS": "2.5"}, "RUN_EVERY_SECONDS"),
    ({"RUN_EVERY_SECONDS": "-1"}, "RUN_EVERY_SECONDS"),
    ({"RUN_EVERY_SECONDS": "10000000000"}, "RUN_EVERY_SECONDS"),
    ({"RUN_EVERY_SECONDS": "1_0"}, "RUN_EVERY_SECONDS"),
    ({"RUN_EVERY_SECONDS": "١٠"}, "RUN_EVERY_SECONDS"),
    ({"INFLUX_TIMEOUT": "inf"}, "INFLUX_TIMEOUT: 'inf' is not a number from 0.1 to 600"),
    ({"INFLUX_TIMEOUT": "nan"}, "INFLUX_TIMEOUT"),
    ({"INFLUX_TIMEOUT": "1e300"}, "INFLUX_TIMEOUT"),
    ({"INFLUX_TIMEOUT": "601"}, "INFLUX_TIMEOUT"),
    ({"INFLUX_TIMEOUT": "0"}, "INFLUX_TIMEOUT"),
    ({"BUFFER_MAX_POINTS": "0"}, "BUFFER_MAX_POINTS"),
    ({"BUFFER_MAX_POINTS": "1000000000000"}, "BUFFER_MAX_POINTS"),
    ({"BUFFER_MAX_MEMORY": "10"}, "BUFFER_MAX_MEMORY"),
    ({"BUFFER_MAX_MEMORY": "lots"}, "BUFFER_MAX_MEMORY"),
    ({"INFLUX_PORT": "0"}, "INFLUX_PORT"),
    ({"INFLUX_PORT": "abc"}, "INFLUX_PORT"),
    ({"TOR_TIMEOUT": "10"}, "TOR_TIMEOUT: 10 s must be below RUN_EVERY_SECONDS (10 s)"),
    ({"TOR_TIMEOUT": "x"}, "TOR_TIMEOUT"),
    ({"TOR_TIMEOUT": "1e9"}, "TOR_TIMEOUT"),
    ({"INFLUX_SEND_VERSION_TAG": "maybe"}, "INFLUX_SEND_VERSION_TAG"),
    ({"VERBOSE": "very"}, "VERBOSE"),
    ({"INFLUX_HOST": "ftp://influx"}, "scheme must be http or https"),
    ({"INFLUX_HOST": "http://user:pw@influx"}, "must not contain credentials"),
    ({"INFLUX_HOST": "http//influx"}, "a scheme must be followed by '://'"),
    ({"INFLUX_HOST": "http:/influx"}, "a scheme must be followed by '://'"),
    ({"INFLUX_HOST": "http://exa mple:8086"}, "neither a DNS name nor an IP address"),
    ({"INFLUX_HOST": "http://influx:80x"}, "not a valid URL"),
    ({"INFLUX_HOST": "http://influx/?org=x"}, "without query"),
    ({"INFLUX_URL": "http://x:8086"}, "INFLUX_URL and INFLUX_HOST are both set"),
    ({"INFLUX_HOST": "http://influx:8086", "INFLUX_PORT": "9999"}, "contradicts"),
    ({"INFLUX_TOKEN": "tök-en"}, "non-ASCII"),
    ({"INFLUX_TOKEN_FILE": "/nonexistent/token", "INFLUX_TOKEN": ""}, "INFLUX_TOKEN_FILE: cannot read /nonexistent/token"),
    ({"TOR_HOSTS_FILE": "/nonexistent/hosts", "TOR_HOSTS": ""}, "TOR_HOSTS_FILE: cannot read /nonexistent/hosts"),
    ({"INFLUX_SERVICE_TAG": "to\\r"}, "INFLUX_SERVICE_TAG: the service tag contains a backslash"),
])
def test_bad_values(env, needle):
    problems = problems_of({**INFLUX, "TOR_HOSTS": "h:1:n", **env})
    assert any(needle in p for p in problems), problems
    assert not any("pw" in p.split(":", 1)[1] for p in problems if "credentials" in p)


@pytest.mark.parametrize("missing", ["INFLUX_HOST", "INFLUX_ORGANIZATION", "INFLUX_BUCKET", "INFLUX_TOKEN"])
def test_missing_influx_variable_outside_test_mode(missing):
    env = {**INFLUX, "TOR_HOSTS": "h:1:n"}
    del env[missing]
    assert any(p.startswith(missing) for p in problems_of(env))
    config_from_env(env, mode="test", redactor=Redactor())  # -t needs none of them


@pytest.mark.parametrize("typo, meant", [("TOR_HOST", "TOR_HOSTS"), ("INFLUX_ORG", "INFLUX_ORGANIZATION"),
                                         ("INFLUXDB_TOKEN", "INFLUX_TOKEN"), ("INFLUX_BUKET", "INFLUX_BUCKET")])
def test_misspelt_variables_are_named(typo, meant):
    env = {**INFLUX, "TOR_HOSTS": "h:1:n"}
    value = env.pop(meant, "10.0.0.1:9051:n")
    env[typo] = value
    problems = problems_of(env)
    assert any(p.startswith(f"{meant}: not set ({typo} is set: did you mean {meant}?)") for p in problems), problems
    assert not any(value in p for p in problems if value != "10.0.0.1:9051:n")


def test_unknown_variables_are_warned_about_by_name_only():
    s = settings(TOR_HOSTS="h:1:n", INFLUX_TIMEOUTS="5", TOR_PASSWORD="s3cr3t")
    assert "INFLUX_TIMEOUTS is set but tor2influxdb2 does not read it (did you mean INFLUX_TIMEOUT?)" in s.warnings
    assert not any("s3cr3t" in w for w in s.warnings)


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


@pytest.mark.parametrize("env, needle", [
    ({"TOR_HOSTS": "127.0.0.1:" + "9" * 5000 + ":hunter2:a"},
     "TOR_HOSTS entry 1: the port (second field) is not a number from 1 to 65535"),
    ({"TOR_HOSTS": "unix:/run/tor/" + "c" * 100 + ":hunter2:a"},
     "TOR_HOSTS entry 1: the unix socket path is longer than 107 bytes"),
    ({"TOR_METRICS_PORTS": "n=127.0.0.1:" + "9" * 5000}, "TOR_METRICS_PORTS entry 1: the port is not a number"),
    ({"TOR_METRICS_PORTS": "n=unix:/run/tor/" + "m" * 100}, "TOR_METRICS_PORTS entry 1: the unix socket path is "
                                                            "longer than 107 bytes"),
    ({"TOR_METRICS_PORTS": "n=http://127.0.0.1:0/metrics"}, "TOR_METRICS_PORTS entry 1: the URL's port"),
    ({"PROMETHEUS_LISTEN": "9" * 5000}, "PROMETHEUS_LISTEN: '99999"),
    ({"PROMETHEUS_LISTEN": "127.0.0.1:\u00b2"}, "PROMETHEUS_LISTEN: '127.0.0.1:\u00b2': the port must be a number"),
    ({"PROMETHEUS_LISTEN": "\u00b2"}, "the port must be a number from 1 to 65535"),
    ({"INFLUX_PORT": "9" * 5000}, "INFLUX_PORT: '99999"),
], ids=["tor-hosts-port", "tor-hosts-socket", "metrics-port", "metrics-socket", "metrics-url-port-0",
        "prometheus-digits", "prometheus-superscript", "prometheus-superscript-alone", "influx-port"])
def test_hostile_ports_and_socket_paths_exit_2_with_the_usual_message(env, needle):
    """Thousands of digits (beyond int()'s limit), a digit int() refuses, a path too long for a unix
    socket: one configuration error each, exit status 2, no traceback, no password."""
    r = run_daemon({**INFLUX, "TOR_HOSTS": "127.0.0.1:9051:pw:n", **env}, timeout=20)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert all(line.startswith("configuration error: ") for line in lines), r.stderr
    assert any(needle in line for line in lines), r.stderr
    assert "Traceback" not in r.stderr and "hunter2" not in r.stderr + r.stdout
    assert all(len(line) < 300 for line in lines)


def test_a_second_metricsport_for_a_tor_never_quotes_its_name():
    """HOST:PORT:NAME: the name may be a password typed without its name; the entry is named instead."""
    problems = problems_of({**INFLUX, "TOR_HOSTS": "10.0.0.1:9051:relay,10.0.0.2:9051:hunter2pw",
                            "TOR_METRICS_PORTS": "hunter2pw=127.0.0.1:9035,hunter2pw=127.0.0.1:9036"})
    assert problems == ["TOR_METRICS_PORTS entry 2: TOR_HOSTS entry 2 already has a MetricsPort "
                        "(TOR_METRICS_PORTS entry 1)"]


def test_unreadable_file_exits_2(tmp_path, as_other_user):
    secret = tmp_path / "token"
    secret.write_text("x")
    secret.chmod(0)
    r = as_other_user({**INFLUX, "INFLUX_TOKEN": "", "INFLUX_TOKEN_FILE": str(secret), "TOR_HOSTS": "h:1:n"})
    assert r.returncode == 2 and "INFLUX_TOKEN_FILE: cannot read" in r.stderr, r.stderr


def test_directory_given_as_file_exits_2(tmp_path):
    r = run_daemon({**INFLUX, "TOR_HOSTS_FILE": str(tmp_path)})
    assert r.returncode == 2 and "TOR_HOSTS_FILE: cannot read" in r.stderr, r.stderr


@pytest.mark.parametrize("env, expected", [({"SHARD": "2/5"}, (2, 5)), ({"SHARD_INDEX": "0", "SHARD_COUNT": "3"}, (0, 3)),
                                           ({}, None)])
def test_shard_forms(env, expected):
    s = settings(TOR_HOSTS="h:1:a,h:1:b,h:1:c,h:1:d", **env)
    assert s.shard == expected and len(s.all_tor_hosts) == 4
    assert len(s.tor_hosts) == 4 if expected is None else len(s.tor_hosts) <= 4


@pytest.mark.parametrize("env", [{"SHARD": "5/5"}, {"SHARD": "1/0"}, {"SHARD": "a/b"}, {"SHARD_INDEX": "1"},
                                 {"SHARD": "1/2", "SHARD_COUNT": "2"}, {"SHARD": "-1/3"}])
def test_bad_shards(env):
    assert any(p.startswith("SHARD") for p in problems_of({**INFLUX, "TOR_HOSTS": "h:1:n", **env}))


def test_test_mode_shows_which_tors_this_replica_owns():
    hosts = ",".join(f"127.0.0.1:1::r{i}" for i in range(20))
    outputs = [run_daemon({"TOR_HOSTS": hosts, "SHARD": f"{i}/3"}, "-t").stdout.splitlines()[0] for i in range(3)]
    owned = [line.split(": ", 2)[2].split(", ") for line in outputs]
    assert sorted(sum(owned, [])) == sorted(f"r{i}" for i in range(20))
    assert outputs[0].startswith(f"Shard 0/3: this replica polls {len(owned[0])} of the 20 tors of TOR_HOSTS: ")
