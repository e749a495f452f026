"""How the InfluxDB sink reaches the server: verified TLS with your own CA and client certificate,
and proxies: SOCKS5 (Tor: an onion InfluxDB, the database never learns where its reporters are)
or HTTP(S).

Everything here is checked at start: a CA bundle, certificate or key that cannot be loaded, or a
proxy URL of a form that would leak, is a configuration error, reported with the others. The
proxy URL is a secret (it may carry credentials, which also choose Tor's stream isolation): it is
registered with the redactor, in every form a message could show it.
"""

from __future__ import annotations

import base64
import dataclasses
import ssl
import urllib.parse

from ..errors import Failure, Reason
from ..redact import REDACTOR, Redactor, clip


@dataclasses.dataclass(frozen=True)
class TlsOptions:
    """INFLUX_CA_CERT, INFLUX_CLIENT_CERT, INFLUX_CLIENT_KEY (+ password), INFLUX_TLS_VERIFY."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    key_password: str | None = dataclasses.field(default=None, repr=False)
    verify: bool = True


def make_ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """The SSL context of every HTTPS request; ValueError (naming the variable, never a secret)
    when a file cannot be used."""
    import certifi
    try:
        context = ssl.create_default_context(cafile=tls.ca_cert or certifi.where())
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"INFLUX_CA_CERT: {tls.ca_cert} is not a readable PEM bundle of CA certificates "
                         f"({clip(getattr(exc, 'strerror', None) or exc, 80)})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.client_cert or tls.client_key:
        if not tls.client_cert:
            raise ValueError("INFLUX_CLIENT_KEY is set without INFLUX_CLIENT_CERT")
        try:
            context.load_cert_chain(tls.client_cert, tls.client_key or None,
                                    password=(lambda: tls.key_password) if tls.key_password else (lambda: ""))
        except ssl.SSLError as exc:
            hint = ("wrong INFLUX_CLIENT_KEY_PASSWORD_FILE, or the key does not match the certificate"
                    if tls.key_password or "BAD_DECRYPT" in str(exc) else
                    "an encrypted key needs INFLUX_CLIENT_KEY_PASSWORD_FILE; or the key does not match")
            raise ValueError(f"INFLUX_CLIENT_CERT/INFLUX_CLIENT_KEY: cannot load the client certificate and key "
                             f"({hint})") from None
        except OSError as exc:
            raise ValueError(f"INFLUX_CLIENT_CERT/INFLUX_CLIENT_KEY: cannot read them ({exc.strerror or exc})") \
                from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclasses.dataclass(frozen=True)
class Proxy:
    """INFLUX_PROXY: socks5h://[user:pass@]host:port, http://, https:// (credentials optional)."""

    url: str = dataclasses.field(repr=False)
    scheme: str = "socks5h"
    host: str = ""
    port: int = 0
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)

    @property
    def where(self) -> str:
        """Where the proxy is, without credentials (for the start-up log)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = ", with credentials ****" if self.username or self.password else ""
        return f"{self.scheme}://{host}:{self.port}{auth}"

    def manager(self, pool_options: dict):
        import urllib3
        if self.scheme == "socks5h":
            from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, imported only here
            return SOCKSProxyManager(self.url, username=self.username, password=self.password, num_pools=2,
                                     maxsize=1, **pool_options)
        headers = None
        if self.username is not None:
            headers = urllib3.make_headers(proxy_basic_auth=f"{self.username}:{self.password or ''}")
        plain = urllib.parse.urlunsplit((self.scheme, _netloc(self.host, self.port), "", "", ""))
        return urllib3.ProxyManager(plain, proxy_headers=headers, num_pools=2, maxsize=1, **pool_options)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


DEFAULT_PORTS = {"socks5h": 1080, "http": 8080, "https": 443}


def parse_proxy(url: str, variable: str = "INFLUX_PROXY",
                redactor: Redactor = REDACTOR) -> tuple[Proxy | None, str | None]:
    """(Proxy, None) or (None, problem). The URL is registered as a secret first: no message quotes it."""
    try:
        parts = urllib.parse.urlsplit(url)
        username = urllib.parse.unquote(parts.username) if parts.username is not None else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        port = parts.port
    except ValueError:
        return None, f"{variable}: not a valid URL (expected socks5h://[user:pass@]host:port)"
    register_proxy_secrets(url, username, password, redactor)
    scheme = parts.scheme.lower()
    if scheme in ("socks5", "socks4", "socks4a", "socks"):
        return None, (f"{variable}: {scheme}:// resolves host names locally: an .onion name cannot be resolved "
                      "so, and any other name would be asked of the local resolver, revealing where the daemon "
                      "writes; use socks5h:// (the proxy resolves names; with Tor: socks5h://127.0.0.1:9050)")
    if scheme not in DEFAULT_PORTS:
        return None, f"{variable}: the scheme must be socks5h, http or https"
    if not parts.hostname:
        return None, f"{variable}: no proxy host in it"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None, f"{variable}: must be scheme://[user:pass@]host:port, without a path"
    port = port or DEFAULT_PORTS[scheme]
    clean = f"{scheme}://{_netloc(parts.hostname, port)}"  # credentials go separately
    return Proxy(clean, scheme, parts.hostname, port, username, password), None


def register_proxy_secrets(url: str, username: str | None, password: str | None,
                           redactor: Redactor = REDACTOR) -> None:
    redactor.add(url, password)
    if username:
        redactor.add(username)
        pair = f"{username}:{password or ''}"
        redactor.add(pair)
        redactor.add_form(base64.b64encode(pair.encode()).decode())


# tor's SOCKS5 reply codes (with the SocksPort's ExtendedErrors flag for 0xF0-0xF7): transient ones
# are retried with backoff, the others are configuration problems (points kept, unhealthy).
SOCKS_REPLIES = {
    0x01: (Reason.HTTP_TRANSIENT, "general failure of the SOCKS proxy"),
    0x02: (Reason.PROXY, "the proxy's rules do not allow this connection"),
    0x03: (Reason.HTTP_TRANSIENT, "network unreachable (from the proxy)"),
    0x04: (Reason.HTTP_TRANSIENT, "host unreachable (from the proxy)"),
    0x05: (Reason.HTTP_TRANSIENT, "connection refused (at the far end of the proxy)"),
    0x06: (Reason.HTTP_TRANSIENT, "TTL expired: the proxy timed out"),
    0x07: (Reason.PROXY, "the proxy does not support the command"),
    0x08: (Reason.PROXY, "the proxy does not support the address type"),
    0xF0: (Reason.HTTP_TRANSIENT, "onion service descriptor not found (normal for a while after the service "
                                  "starts)"),
    0xF1: (Reason.HTTP_TRANSIENT, "onion service descriptor is invalid"),
    0xF2: (Reason.HTTP_TRANSIENT, "onion service introduction failed"),
    0xF3: (Reason.HTTP_TRANSIENT, "onion service rendezvous failed"),
    0xF4: (Reason.PROXY, "the onion service needs client authorization (ClientOnionAuthDir)"),
    0xF5: (Reason.PROXY, "the onion service refused this client's authorization"),
    0xF6: (Reason.PROXY, "invalid onion address (check INFLUX_URL)"),
    0xF7: (Reason.HTTP_TRANSIENT, "onion service introduction timed out"),
}


def socks_failure(exc: BaseException) -> Failure | None:
    """A Failure for a PySocks error found in the exception chain, or None."""
    try:
        import socks
    except ImportError:
        return None
    if isinstance(exc, socks.SOCKS5AuthError):
        return Failure(Reason.PROXY, "the SOCKS proxy refused the credentials of INFLUX_PROXY")
    if isinstance(exc, socks.SOCKS5Error):
        text = str(getattr(exc, "msg", exc))
        try:
            code = int(text.split(":", 1)[0], 16)
        except ValueError:
            code = None
        reason, meaning = SOCKS_REPLIES.get(code, (Reason.HTTP_TRANSIENT, "the SOCKS proxy failed"))
        shown = f"0x{code:02X}" if code is not None else "?"
        return Failure(reason, f"through the proxy: {meaning} (SOCKS reply {shown})")
    if isinstance(exc, socks.GeneralProxyError):
        return Failure(Reason.HTTP_TRANSIENT, f"the SOCKS proxy failed: {clip(getattr(exc, 'msg', exc), 120)}")
    if isinstance(exc, socks.ProxyConnectionError):
        return Failure(Reason.HTTP_TRANSIENT, "cannot reach the SOCKS proxy (is tor's SocksPort there?)")
    return None
