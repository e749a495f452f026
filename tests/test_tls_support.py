"""The TLS fixtures are real: the PKI verifies (or fails) as openssl and urllib3 see it,
VictoriaMetrics really serves HTTPS, the TLS front really requires a client certificate."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time

import pytest
import urllib3

from support import port_open, wait_for
from tls_support import (TlsFront, VictoriaMetricsTLS, cert_sha256, make_pki,
                         mtls_front, pki, victoria_tls)  # noqa: F401  (pytest fixtures)

WRITE = "/api/v2/write?org=tests&bucket=tls&precision=s"


def openssl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


def point(host: str, value: int) -> tuple[bytes, int]:
    """One line of line protocol for series tlstest_value{host=...}, and its timestamp (s)."""
    ts = int(time.time())
    return f"tlstest,host={host} value={value} {ts}\n".encode(), ts


def client(**kwargs) -> urllib3.PoolManager:
    return urllib3.PoolManager(retries=False, timeout=10, **kwargs)


def post_point(http: urllib3.PoolManager, url: str, host: str, value: int, **kwargs) -> int:
    body, ts = point(host, value)
    r = http.request("POST", url + WRITE, body=body,
                     headers={"Authorization": "Token not-a-real-token",
                              "Content-Type": "text/plain; charset=utf-8"}, **kwargs)
    assert r.status == 204, (r.status, r.data)
    return ts


# ------------------------------------------------------------------------------ the PKI

def test_pki_certificates_verify_as_openssl_sees_them(pki):
    for cert in (pki.server_cert, pki.client_cert, pki.wrong_host_server_cert):
        assert openssl("verify", "-x509_strict", "-CAfile", str(pki.ca_cert), str(cert)).returncode == 0
    for cert in (pki.wrong_ca_server_cert, pki.wrong_ca_client_cert):
        assert openssl("verify", "-CAfile", str(pki.ca_cert), str(cert)).returncode != 0
        assert openssl("verify", "-CAfile", str(pki.wrong_ca_cert), str(cert)).returncode == 0
        assert openssl("verify", "-CAfile", str(pki.ca_bundle), str(cert)).returncode == 0
    assert openssl("verify", "-CAfile", str(pki.ca_bundle), str(pki.server_cert)).returncode == 0
    expired = openssl("verify", "-CAfile", str(pki.ca_cert), str(pki.expired_server_cert))
    assert expired.returncode != 0 and "certificate has expired" in expired.stdout + expired.stderr

    text = openssl("x509", "-in", str(pki.server_cert), "-noout", "-text").stdout
    assert "ecdsa-with-SHA256" in text and "NIST CURVE: P-256" in text and "Version: 3" in text
    assert "IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, DNS:localhost" in text
    assert "TLS Web Server Authentication" in text
    client_text = openssl("x509", "-in", str(pki.client_cert), "-noout", "-text").stdout
    assert "TLS Web Client Authentication" in client_text
    assert "TLS Web Server Authentication" not in client_text
    assert pki.server_names == ("127.0.0.1", "::1", "localhost")

    for key in (pki.ca_key, pki.server_key, pki.client_key, pki.client_key_encrypted,
                pki.client_key_encrypted_legacy, pki.client_key_password_file):
        assert key.stat().st_mode & 0o077 == 0, key


def test_encrypted_client_keys_need_their_passphrase(pki):
    assert pki.client_key_encrypted.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    legacy = pki.client_key_encrypted_legacy.read_text()
    assert "Proc-Type: 4,ENCRYPTED" in legacy and "DEK-Info: AES-256-CBC," in legacy
    password = pki.client_key_password()
    assert password and password == password.strip()
    for key in (pki.client_key_encrypted, pki.client_key_encrypted_legacy):
        ctx = ssl.create_default_context()
        with pytest.raises(ssl.SSLError):
            ctx.load_cert_chain(pki.client_cert, key, password="not the passphrase")
        ctx.load_cert_chain(pki.client_cert, key, password=password)
        # the same key as the plain one: its public half matches the client certificate
        pub = openssl("pkey", "-in", str(key), "-passin", f"file:{pki.client_key_password_file}",
                      "-pubout").stdout
        assert pub and pub == openssl("x509", "-in", str(pki.client_cert), "-noout", "-pubkey").stdout


def test_make_pki_puts_extra_names_in_the_server_certificates(tmp_path):
    onion = "a" * 56 + ".onion"
    custom = make_pki(tmp_path / "pki", dns_names=(onion,))
    assert custom.server_names == ("127.0.0.1", "::1", "localhost", onion)
    for cert in (custom.server_cert, custom.wrong_ca_server_cert):
        san = openssl("x509", "-in", str(cert), "-noout", "-ext", "subjectAltName").stdout
        assert f"DNS:localhost, DNS:{onion}" in san
    later, _ = custom.issue_server_cert("later", dns_names=("b" * 56 + ".onion",), loopback=False)
    san = openssl("x509", "-in", str(later), "-noout", "-ext", "subjectAltName").stdout
    assert "DNS:" + "b" * 56 + ".onion" in san and "127.0.0.1" not in san
    assert openssl("verify", "-CAfile", str(custom.ca_cert), str(later)).returncode == 0


# ---------------------------------------------------------------- VictoriaMetrics over TLS

def test_victoria_tls_takes_a_write_and_gives_it_back(victoria_tls, pki):
    assert victoria_tls.url.startswith("https://127.0.0.1:")
    ts = post_point(client(ca_certs=str(pki.ca_cert)), victoria_tls.url, "tls-vm", 42)
    assert victoria_tls.samples("tlstest_value", host="tls-vm") == [(ts * 1000, 42.0)]
    # a bundle where the right CA is the second certificate works as well
    ts2 = post_point(client(ca_certs=str(pki.ca_bundle)), victoria_tls.url, "tls-vm-bundle", 7)
    assert victoria_tls.samples("tlstest_value", host="tls-vm-bundle") == [(ts2 * 1000, 7.0)]


def test_victoria_tls_is_not_trusted_with_the_wrong_ca(victoria_tls, pki):
    with pytest.raises(urllib3.exceptions.SSLError, match="unable to get local issuer certificate"):
        post_point(client(ca_certs=str(pki.wrong_ca_cert)), victoria_tls.url, "tls-wrong-ca", 1)
    assert victoria_tls.samples("tlstest_value", host="tls-wrong-ca") == []


@pytest.mark.parametrize("which, error, control", [
    ("wrong_ca_server", "unable to get local issuer certificate", {"ca_certs": "wrong_ca_cert"}),
    ("wrong_host_server", "IP address mismatch", {"ca_certs": "ca_cert", "assert_hostname": "wrong_host_name"}),
    ("expired_server", "certificate has expired", None),
], ids=["wrong-ca", "wrong-host", "expired"])
def test_bad_server_certificates_fail_verification(tmp_path, pki, which, error, control):
    vm = VictoriaMetricsTLS(tmp_path, getattr(pki, f"{which}_cert"), getattr(pki, f"{which}_key"),
                            ca=None).start()
    try:
        with pytest.raises(urllib3.exceptions.SSLError, match=error):
            post_point(client(ca_certs=str(pki.ca_cert)), vm.url, which, 1)
        if control is not None:  # the certificate is good for what it really is
            kwargs = {k: str(getattr(pki, v)) for k, v in control.items()}
            post_point(client(**kwargs), vm.url, which, 2)
        assert [v for _, v in vm.samples("tlstest_value", host=which)] == ([2.0] if control else [])
    finally:
        vm.stop()


# ---------------------------------------------------------------- the client-cert front

@pytest.mark.parametrize("key", ["client_key", "client_key_encrypted", "client_key_encrypted_legacy"])
def test_front_forwards_requests_with_the_client_certificate(mtls_front, victoria, pki, key):
    password = pki.client_key_password() if "encrypted" in key else None
    http = client(ca_certs=str(pki.ca_cert), cert_file=str(pki.client_cert),
                  key_file=str(getattr(pki, key)), key_password=password)
    host = f"tls-front-{key}"
    stamps = [post_point(http, mtls_front.url, host, value) for value in (1, 2, 3)]
    assert {ts * 1000 for ts in stamps} == {t for t, _ in victoria.samples("tlstest_value", host=host)}
    assert sorted(v for _, v in victoria.samples("tlstest_value", host=host))[-1] == 3.0

    assert mtls_front.handshakes == 1 and mtls_front.refused == 0  # one connection, kept alive
    requests = mtls_front.requests
    assert [(r.method, r.target, r.status) for r in requests] == [("POST", WRITE, 204)] * 3
    assert {r.client_subject for r in requests} == {pki.client_subject}
    assert {r.client_cert_sha256 for r in requests} == {cert_sha256(pki.client_cert)}
    assert {r.tls_version for r in requests} == {"TLSv1.3"}
    assert requests[-1].body == f"tlstest,host={host} value=3 {stamps[-1]}\n".encode()
    assert requests[-1].header("Authorization") == "Token not-a-real-token"
    assert "not-a-real-token" not in repr(requests[-1])

    got = http.request("GET", mtls_front.url + "/api/v1/export?match[]=tlstest_value{host=%22" + host + "%22}")
    assert got.status == 200 and host.encode() in got.data  # the query string reaches upstream


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("cert, reason", [
    (None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
    ("wrong_ca_client", "CERTIFICATE_VERIFY_FAILED"),
], ids=["no-cert", "wrong-ca-cert"])
def test_front_refuses_clients_without_a_good_certificate(mtls_front, pki, cert, reason, tls):
    kwargs = {"ssl_minimum_version": tls, "ssl_maximum_version": tls}
    if cert:
        kwargs.update(cert_file=str(getattr(pki, f"{cert}_cert")), key_file=str(getattr(pki, f"{cert}_key")))
    with pytest.raises((urllib3.exceptions.SSLError, urllib3.exceptions.ProtocolError)):
        post_point(client(ca_certs=str(pki.ca_cert), **kwargs), mtls_front.url, "tls-refused", 1)
    wait_for(lambda: mtls_front.refused == 1, 5, what="the refused handshake counted")
    assert reason in mtls_front.refusals[0]
    assert mtls_front.requests == [] and mtls_front.handshakes == 0


def test_front_without_client_ca_serves_an_onion_name(tmp_path, pki, victoria):
    onion = "c" * 56 + ".onion"
    cert, key = pki.issue_server_cert("onion-server", dns_names=(onion,), loopback=False)
    with TlsFront(victoria.url, cert, key) as front:
        pool = urllib3.HTTPSConnectionPool("127.0.0.1", front.port, ca_certs=str(pki.ca_cert),
                                           server_hostname=onion, retries=False, timeout=10)
        assert pool.request("GET", "/health").data == b"OK"
        with pytest.raises(urllib3.exceptions.SSLError, match="IP address mismatch"):
            client(ca_certs=str(pki.ca_cert)).request("GET", front.url + "/health")
        assert front.requests[0].client_subject == "" and front.requests[0].client_cert_sha256 == ""


def test_front_stops_promptly_with_an_idle_connection_open(pki, victoria):
    front = TlsFront(victoria.url, pki.server_cert, pki.server_key, client_ca=pki.ca_cert).start()
    http = client(ca_certs=str(pki.ca_cert), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    assert http.request("GET", front.url + "/health").data == b"OK"  # the connection stays open
    before = threading.active_count()
    started = time.monotonic()
    front.stop()
    assert time.monotonic() - started < 2
    assert not port_open(front.port)
    assert threading.active_count() <= before - 2  # the accept loop and the connection's thread
