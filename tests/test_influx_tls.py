"""The InfluxDB sink over verified TLS (a private CA made with openssl; VictoriaMetrics serving TLS
itself; a TLS front that requires a client certificate): verified writes, refusals that keep the
points and make the daemon unhealthy with one clear line, INFLUX_TLS_VERIFY=false, bad files at start."""

from __future__ import annotations

import pytest

from support import Daemon, run_daemon, wait_for
from tls_support import mtls_front, pki, victoria_tls  # noqa: F401  (fixtures, used by name)

KEY_PASSWORD_MARK = "never-print-this-key-password"


def env_for(tmp_path, url, tor, name, **extra):
    return {"TOR_HOSTS": tor.entry(name), "INFLUX_URL": url, "INFLUX_ORGANIZATION": "o", "INFLUX_BUCKET": "b",
            "INFLUX_TOKEN": "tok-tls", "RUN_EVERY_SECONDS": "1", "TOR_TIMEOUT": "0.8", "VERBOSE": "true",
            "HEALTHCHECK_FILE": str(tmp_path / "health"), **extra}


def run_cycles(env, cycles=3):
    daemon = Daemon(env).start()
    try:
        daemon.wait_for_line(rf"cycle {cycles} done")
    finally:
        assert daemon.stop() == 0, daemon.output
    return daemon


def test_a_verified_write_with_our_own_ca(tmp_path, make_tor, pki, victoria_tls):  # noqa: F811
    tor = make_tor(auth="none")
    run_cycles(env_for(tmp_path, victoria_tls.url, tor, "tls-ok", INFLUX_CA_CERT=str(pki.ca_bundle)))
    wait_for(lambda: len(victoria_tls.samples("traffic_read", host="tls-ok")) >= 3, 10, what="points over TLS")


def test_a_certificate_that_fails_verification_is_a_configuration_problem(tmp_path, make_tor, pki,  # noqa: F811
                                                                           victoria_tls):  # noqa: F811
    tor = make_tor(auth="none")
    daemon = Daemon(env_for(tmp_path, victoria_tls.url, tor, "tls-wrong-ca", INFLUX_CA_CERT=str(pki.wrong_ca_cert),
                            BUFFER_DIR=str(tmp_path / "buffer"))).start()
    try:
        daemon.wait_for_line(r"cycle 4 done")
        health = (tmp_path / "health").read_text()
    finally:
        assert daemon.stop() == 0
    errors = [line for line in daemon.output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "TLS failed: certificate verify failed" in errors[0], daemon.output
    assert "next try in 30 s" in errors[0]
    assert health.startswith("FAILED") and "points kept: TLS failed" in health, health
    assert "kept in BUFFER_DIR" in daemon.output  # the points are kept, never dropped
    assert not victoria_tls.samples("traffic_read", host="tls-wrong-ca")


def test_tls_verify_false_writes_and_warns(tmp_path, make_tor, victoria_tls):  # noqa: F811
    tor = make_tor(auth="none")
    daemon = run_cycles(env_for(tmp_path, victoria_tls.url, tor, "tls-noverify", INFLUX_TLS_VERIFY="false"))
    assert "INFLUX_TLS_VERIFY=false: InfluxDB's certificate is not checked" in daemon.output
    wait_for(lambda: victoria_tls.samples("traffic_read", host="tls-noverify"), 10, what="points")


def test_a_client_certificate_with_an_encrypted_key(tmp_path, make_tor, pki, mtls_front):  # noqa: F811
    tor = make_tor(auth="none")
    password = tmp_path / "key-password"
    password.write_text(pki.client_key_password() + "\n")
    env = env_for(tmp_path, mtls_front.url, tor, "tls-client-cert", INFLUX_CA_CERT=str(pki.ca_cert),
                  INFLUX_CLIENT_CERT=str(pki.client_cert), INFLUX_CLIENT_KEY=str(pki.client_key_encrypted),
                  INFLUX_CLIENT_KEY_PASSWORD_FILE=str(password))
    daemon = run_cycles(env)
    assert mtls_front.requests and {r.client_subject for r in mtls_front.requests} == {pki.client_subject}
    assert pki.client_key_password() not in daemon.output
    without = run_cycles({k: v for k, v in env.items() if not k.startswith("INFLUX_CLIENT")}, cycles=2)
    assert "TLS failed" in without.output  # the front refuses a client without a certificate


@pytest.mark.parametrize("extra, needle", [
    ({"INFLUX_CA_CERT": "/nonexistent/ca.pem"}, "INFLUX_CA_CERT: /nonexistent/ca.pem is not a readable PEM bundle"),
    ({"INFLUX_CLIENT_KEY": "KEY"}, "INFLUX_CLIENT_KEY is set without INFLUX_CLIENT_CERT"),
    ({"INFLUX_CLIENT_CERT": "CERT", "INFLUX_CLIENT_KEY": "ENCRYPTED"},
     "an encrypted key needs INFLUX_CLIENT_KEY_PASSWORD_FILE"),
    ({"INFLUX_CLIENT_CERT": "CERT", "INFLUX_CLIENT_KEY": "ENCRYPTED", "INFLUX_CLIENT_KEY_PASSWORD_FILE": "WRONG"},
     "wrong INFLUX_CLIENT_KEY_PASSWORD_FILE"),
    ({"INFLUX_CA_CERT": "NOTPEM"}, "is not a readable PEM bundle"),
])
def test_unusable_tls_files_are_configuration_errors(tmp_path, pki, extra, needle):  # noqa: F811
    wrong = tmp_path / "wrong"
    wrong.write_text(KEY_PASSWORD_MARK)
    notpem = tmp_path / "notpem"
    notpem.write_text("hello")
    paths = {"KEY": str(pki.client_key), "CERT": str(pki.client_cert), "ENCRYPTED": str(pki.client_key_encrypted),
             "WRONG": str(wrong), "NOTPEM": str(notpem)}
    env = {"TOR_HOSTS": "127.0.0.1:1::x", "INFLUX_URL": "https://127.0.0.1:1", "INFLUX_ORGANIZATION": "o",
           "INFLUX_BUCKET": "b", "INFLUX_TOKEN": "tok-tls", **{k: paths.get(v, v) for k, v in extra.items()}}
    r = run_daemon(env)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert KEY_PASSWORD_MARK not in r.stderr + r.stdout
