"""sinks.transport: proxies (socks5h for Tor, http) and the meaning of tor's SOCKS replies; the proxy's
credentials are secrets. Tor itself is in test_tornet_onion_influx.py; here a SOCKS5 stand-in answers."""

from __future__ import annotations

import base64

import pytest

from socks_standin import SocksStandin
from tor2influxdb2.errors import Reason, WriteError
from tor2influxdb2.redact import REDACTOR
from tor2influxdb2.sinks.influx import InfluxWriter
from tor2influxdb2.sinks.transport import parse_proxy


@pytest.fixture(autouse=True)
def clean_redactor():
    yield
    REDACTOR.clear()


@pytest.mark.parametrize("url, problem", [
    ("socks5://127.0.0.1:9050", "resolves host names locally"),
    ("socks4a://127.0.0.1:9050", "resolves host names locally"),
    ("ftp://127.0.0.1:21", "the scheme must be socks5h, http or https"),
    ("socks5h://127.0.0.1:9050/path", "without a path"),
    ("socks5h://:9050", "no proxy host"),
    ("socks5h://127.0.0.1:notaport", "not a valid URL"),
])
def test_bad_proxies_are_explained_without_the_url(url, problem):
    proxy, message = parse_proxy(url.replace("127.0.0.1", "user:s3cr3t-pw@127.0.0.1", 1))
    assert proxy is None and problem in message and "s3cr3t-pw" not in message


def test_proxy_credentials_are_secrets_in_every_form():
    proxy, problem = parse_proxy("socks5h://isolate-me:s3cr3t-pw@127.0.0.1:9050")
    assert problem is None and (proxy.host, proxy.port, proxy.username, proxy.password) == \
        ("127.0.0.1", 9050, "isolate-me", "s3cr3t-pw")
    assert "s3cr3t" not in proxy.where and "isolate-me" not in proxy.where
    basic = base64.b64encode(b"isolate-me:s3cr3t-pw").decode()
    text = f"Proxy-Authorization: Basic {basic}; pw s3cr3t-pw; url socks5h://isolate-me:s3cr3t-pw@127.0.0.1:9050"
    assert "s3cr3t" not in REDACTOR.mask(text) and basic not in REDACTOR.mask(text)


def writer_through(socks: SocksStandin, url="http://abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion:8086",
                   credentials=""):
    proxy, problem = parse_proxy(f"socks5h://{credentials}127.0.0.1:{socks.port}")
    assert problem is None
    return InfluxWriter(url, "o", "b", "tok-socks", timeout=3, connect_timeout=3, proxy=proxy)


@pytest.mark.parametrize("code, reason, needle", [
    (0xF0, Reason.HTTP_TRANSIENT, "onion service descriptor not found (normal for a while"),
    (0xF6, Reason.PROXY, "invalid onion address"),
    (0xF4, Reason.PROXY, "needs client authorization"),
    (0xF7, Reason.HTTP_TRANSIENT, "introduction timed out"),
    (0x05, Reason.HTTP_TRANSIENT, "connection refused"),
])
def test_tors_socks_replies_are_typed(code, reason, needle):
    socks = SocksStandin(reply=code)
    try:
        with pytest.raises(WriteError) as info:
            writer_through(socks).write(["m,host=h v=1i 1"])
    finally:
        socks.close()
    assert info.value.reason == reason and needle in info.value.failure.message, info.value.failure
    assert f"SOCKS reply 0x{code:02X}" in info.value.failure.message


def test_the_onion_name_reaches_the_proxy_as_a_name_and_the_write_arrives(victoria):
    from urllib.parse import urlsplit
    target = urlsplit(victoria.url)
    socks = SocksStandin(target=(target.hostname, target.port), credentials=("isolate-me", "s3cr3t-pw"))
    onion = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrstuv.onion"
    try:
        writer = writer_through(socks, f"http://{onion}:8086", credentials="isolate-me:s3cr3t-pw@")
        writer.write(["traffic,host=through-socks read=7i 1795300000000"])
    finally:
        socks.close()
    assert socks.asked == [(onion, 8086, 3)]  # address type 3: a domain name, resolved by the proxy
    assert socks.logins == [("isolate-me", "s3cr3t-pw")]
    assert victoria.samples("traffic_read", host="through-socks") == [(1795300000000, 7.0)]


def test_wrong_proxy_credentials_are_a_configuration_problem():
    socks = SocksStandin(credentials=("isolate-me", "right"))
    try:
        with pytest.raises(WriteError) as info:
            writer_through(socks, credentials="isolate-me:wrong@").write(["m,host=h v=1i 1"])
    finally:
        socks.close()
    assert info.value.reason == Reason.PROXY and "refused the credentials" in info.value.failure.message
