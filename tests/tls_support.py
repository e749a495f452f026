"""TLS test infrastructure: a private PKI, VictoriaMetrics serving HTTPS, a client-cert TLS front.

* ``make_pki(directory, dns_names=())`` builds, with the ``openssl`` command line, a CA and the
  certificates the TLS tests need (see ``Pki``); the session fixture ``pki`` is one of them.
  All keys are EC P-256, all signatures SHA-256, all certificates X.509 v3 valid for a few days
  (except the deliberately expired one).
* ``VictoriaMetricsTLS`` is a real VictoriaMetrics that serves HTTPS itself (``-tls``); the session
  fixture ``victoria_tls`` serves the PKI's server certificate at ``https://127.0.0.1:PORT``.
* ``TlsFront`` terminates TLS on 127.0.0.1, can REQUIRE a client certificate signed by a CA, and
  forwards every HTTP request to a plain-HTTP upstream (e.g. a VictoriaMetrics). VictoriaMetrics
  1.79 cannot require client certificates itself (mTLS is not among its flags), so this is the
  stand-in for an InfluxDB behind a client-certificate checking proxy. The fixture ``mtls_front``
  is one in front of the session ``victoria``.

A test module uses the fixtures by importing them::

    from tls_support import pki, victoria_tls, mtls_front  # noqa: F401  (pytest fixtures)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import http.client
import os
import secrets
import socket
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support import VictoriaMetrics

__all__ = ["Pki", "make_pki", "VictoriaMetricsTLS", "TlsFront", "ForwardedRequest",
           "cert_sha256", "pki", "victoria_tls", "mtls_front"]

OPENSSL = "openssl"
LOOPBACK_NAMES = ("IP:127.0.0.1", "IP:::1", "DNS:localhost")
CLIENT_SUBJECT = "/O=tor2influxdb2 tests/CN=tor2influxdb2 test client"
WRONG_HOST_NAME = "wrong-host.invalid"

# One openssl configuration for every certificate: the varying parts come from the
# environment ($ENV::...), so nothing depends on the system's openssl.cnf.
_OPENSSL_CNF = """\
[req]
distinguished_name = req_dn
[req_dn]

[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = $ENV::PKI_SAN

[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ca]
default_ca = signer
[signer]
database = $ENV::PKI_DB
serial = $ENV::PKI_DB.serial
new_certs_dir = $ENV::PKI_NEW
default_md = sha256
policy = any_name
unique_subject = no
copy_extensions = none
[any_name]
commonName = supplied
organizationName = optional
"""


def _openssl(*args: str, env: dict[str, str] | None = None) -> None:
    # openssl expands every $ENV:: of the configuration when it loads it, so all must be set
    proc = subprocess.run([OPENSSL, *args], capture_output=True, text=True,
                          env={**os.environ, "PKI_SAN": "DNS:unused", "PKI_DB": "", "PKI_NEW": "",
                               **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")


def _asn1_time(t: datetime.datetime) -> str:
    return t.astimezone(datetime.timezone.utc).strftime("%Y%m%d%H%M%SZ")


def cert_sha256(cert: Path | bytes) -> str:
    """SHA-256 fingerprint (hex) of a PEM certificate file, or of DER bytes (getpeercert(True))."""
    der = cert if isinstance(cert, bytes) else ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    return hashlib.sha256(der).hexdigest()


def _subject_text(subject) -> str:
    """ssl's decoded subject (getpeercert()["subject"]) as "/O=.../CN=...", in certificate order."""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}
    return "".join(f"/{short.get(k, k)}={v}" for rdn in subject for k, v in rdn)


# ------------------------------------------------------------------------------- PKI

@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of a private PKI made by make_pki(). Every key is a PEM file with mode 0600.

    Signed by `ca_cert` (the CA to trust):
      server_cert/key             serverAuth, subjectAltName = `server_names`
                                  (127.0.0.1, ::1, localhost + the DNS names given to make_pki)
      client_cert/key             clientAuth, subject `client_subject`
      client_key_encrypted        the same client key, PKCS#8 encrypted (PBES2, AES-256-CBC)
      client_key_encrypted_legacy the same client key, traditional PEM ("Proc-Type: 4,ENCRYPTED",
                                  AES-256-CBC), as older tools write it
      client_key_password_file    the passphrase of both, exactly (no trailing newline)
      expired_server_cert/key     like server_cert, but valid only from 10 to 1 days ago
      wrong_host_server_cert/key  valid, but only for DNS name `wrong_host_name` (no IP, no localhost)
    Signed by the unrelated `wrong_ca_cert`:
      wrong_ca_server_cert/key    same names as server_cert
      wrong_ca_client_cert/key    clientAuth, same subject as client_cert
    ca_bundle: wrong_ca_cert followed by ca_cert in one PEM file (a bundle where the right CA
    is not the first certificate).
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    ca_bundle: Path
    server_cert: Path
    server_key: Path
    server_names: tuple[str, ...]
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    client_key_encrypted_legacy: Path
    client_key_password_file: Path
    client_subject: str
    expired_server_cert: Path
    expired_server_key: Path
    wrong_host_server_cert: Path
    wrong_host_server_key: Path
    wrong_host_name: str
    wrong_ca_cert: Path
    wrong_ca_key: Path
    wrong_ca_server_cert: Path
    wrong_ca_server_key: Path
    wrong_ca_client_cert: Path
    wrong_ca_client_key: Path

    def client_key_password(self) -> str:
        """The passphrase of the encrypted client keys (read from client_key_password_file)."""
        return self.client_key_password_file.read_text()

    def issue_server_cert(self, name: str, dns_names: tuple[str, ...] = (), days: float = 3,
                          loopback: bool = True) -> tuple[Path, Path]:
        """A further server certificate signed by ca_cert, e.g. for an .onion name known only
        once tor made the service: (cert, key) files named `name`.crt / `name`.key.
        Its subjectAltName holds `dns_names` and, if `loopback`, 127.0.0.1, ::1 and localhost."""
        names = (LOOPBACK_NAMES if loopback else ()) + tuple(f"DNS:{n}" for n in dns_names)
        now = datetime.datetime.now(datetime.timezone.utc)
        return _issue(self.directory, name, self.ca_cert, self.ca_key, "server_ext", names,
                      now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days))


def _new_key_and_csr(directory: Path, name: str, subject: str) -> tuple[Path, Path]:
    key, csr = directory / f"{name}.key", directory / "openssl-ca" / f"{name}.csr"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc",
             "-keyout", str(key), "-out", str(csr), "-subj", subject,
             "-config", str(directory / "openssl.cnf"))
    os.chmod(key, 0o600)
    return key, csr


def _make_ca(directory: Path, name: str, subject: str, days: float) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-noenc", "-keyout", str(key), "-out", str(cert), "-subj", subject, "-sha256",
             "-days", str(max(1, round(days))), "-config", str(directory / "openssl.cnf"),
             "-extensions", "ca_ext")
    os.chmod(key, 0o600)
    return cert, key


def _issue(directory: Path, name: str, ca_cert: Path, ca_key: Path, ext: str,
           names: tuple[str, ...], not_before: datetime.datetime, not_after: datetime.datetime,
           subject: str | None = None) -> tuple[Path, Path]:
    """Sign a new key's certificate with `openssl ca` (explicit validity dates, random serial)."""
    key, csr = _new_key_and_csr(directory, name, subject or f"/CN={name}")
    cert = directory / f"{name}.crt"
    work = directory / "openssl-ca"  # openssl ca's bookkeeping: its index, a copy of each cert
    db = work / f"{name}.index"
    db.write_text("")
    newcerts = work / "newcerts"
    newcerts.mkdir(exist_ok=True)
    _openssl("ca", "-batch", "-notext", "-rand_serial", "-preserveDN",
             "-config", str(directory / "openssl.cnf"), "-cert", str(ca_cert),
             "-keyfile", str(ca_key), "-in", str(csr), "-out", str(cert),
             "-startdate", _asn1_time(not_before), "-enddate", _asn1_time(not_after),
             "-extensions", ext,
             env={"PKI_SAN": ",".join(names) or "DNS:unused", "PKI_DB": str(db),
                  "PKI_NEW": str(newcerts)})
    return cert, key


def make_pki(directory: Path, dns_names: tuple[str, ...] = (), days: float = 3) -> Pki:
    """Create the whole PKI (see Pki) in `directory` with the openssl command line (~0.2 s).
    `dns_names` are added to the server certificates' subjectAltName."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    (directory / "openssl.cnf").write_text(_OPENSSL_CNF)
    (directory / "openssl-ca").mkdir(exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    names = LOOPBACK_NAMES + tuple(f"DNS:{n}" for n in dns_names)

    ca_cert, ca_key = _make_ca(directory, "ca", "/O=tor2influxdb2 tests/CN=tor2influxdb2 test CA", days)
    wrong_ca_cert, wrong_ca_key = _make_ca(directory, "wrong-ca", "/O=somebody else/CN=unrelated CA", days)
    server = _issue(directory, "server", ca_cert, ca_key, "server_ext", names, start, end)
    client = _issue(directory, "client", ca_cert, ca_key, "client_ext", (), start, end,
                    subject=CLIENT_SUBJECT)
    expired = _issue(directory, "expired-server", ca_cert, ca_key, "server_ext", names,
                     now - datetime.timedelta(days=10), now - datetime.timedelta(days=1))
    wrong_host = _issue(directory, "wrong-host-server", ca_cert, ca_key, "server_ext",
                        (f"DNS:{WRONG_HOST_NAME}",), start, end)
    wrong_ca_server = _issue(directory, "wrong-ca-server", wrong_ca_cert, wrong_ca_key,
                             "server_ext", names, start, end)
    wrong_ca_client = _issue(directory, "wrong-ca-client", wrong_ca_cert, wrong_ca_key,
                             "client_ext", (), start, end, subject=CLIENT_SUBJECT)

    password_file = directory / "client-key.password"
    password_file.touch(mode=0o600)
    password_file.write_text(secrets.token_urlsafe(24))
    encrypted = directory / "client.encrypted.key"
    legacy = directory / "client.encrypted-legacy.key"
    _openssl("pkey", "-in", str(client[1]), "-aes256", "-passout", f"file:{password_file}",
             "-out", str(encrypted))
    _openssl("ec", "-in", str(client[1]), "-aes256", "-passout", f"file:{password_file}",
             "-out", str(legacy))
    for path in (encrypted, legacy):
        os.chmod(path, 0o600)

    bundle = directory / "ca-bundle.pem"
    bundle.write_text(wrong_ca_cert.read_text() + ca_cert.read_text())

    return Pki(
        directory=directory, ca_cert=ca_cert, ca_key=ca_key, ca_bundle=bundle,
        server_cert=server[0], server_key=server[1],
        server_names=tuple(n.split(":", 1)[1] for n in names),
        client_cert=client[0], client_key=client[1], client_key_encrypted=encrypted,
        client_key_encrypted_legacy=legacy, client_key_password_file=password_file,
        client_subject=CLIENT_SUBJECT,
        expired_server_cert=expired[0], expired_server_key=expired[1],
        wrong_host_server_cert=wrong_host[0], wrong_host_server_key=wrong_host[1],
        wrong_host_name=WRONG_HOST_NAME,
        wrong_ca_cert=wrong_ca_cert, wrong_ca_key=wrong_ca_key,
        wrong_ca_server_cert=wrong_ca_server[0], wrong_ca_server_key=wrong_ca_server[1],
        wrong_ca_client_cert=wrong_ca_client[0], wrong_ca_client_key=wrong_ca_client[1],
    )


# ------------------------------------------------------------------ VictoriaMetrics over TLS

class VictoriaMetricsTLS(VictoriaMetrics):
    """A real VictoriaMetrics serving HTTPS itself on 127.0.0.1 (-tls -tlsCertFile -tlsKeyFile).

    `url` is https://127.0.0.1:PORT. Its own reads (start()'s /health, export(), samples()) trust
    `ca` and check the host name 127.0.0.1; with ca=None they do not verify at all, for a server
    started with a deliberately bad certificate (expired, wrong host, unknown CA).
    """

    def __init__(self, workdir: Path, cert: Path, key: Path, ca: Path | None):
        super().__init__(workdir, extra_args=("-tls", f"-tlsCertFile={cert}", f"-tlsKeyFile={key}"))
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert, self.key, self.ca = Path(cert), Path(key), ca
        self._context = ssl.create_default_context(cafile=str(ca) if ca else None)
        if ca is None:
            self._context.check_hostname = False
            self._context.verify_mode = ssl.CERT_NONE

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10, context=self._context) as r:
            return r.read()


# ------------------------------------------------------------------------- the TLS front

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "content-length"})


@dataclasses.dataclass(frozen=True)
class ForwardedRequest:
    """One request the front forwarded, and who sent it.

    client_subject: the client certificate's subject as "/O=.../CN=..." ("" without one);
    client_cert_sha256: its fingerprint (compare with cert_sha256(pki.client_cert)).
    headers: as received, hop-by-hop ones included; repr() hides Authorization's value.
    """

    method: str
    target: str  # path + query, as sent
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client_subject: str
    client_cert_sha256: str
    tls_version: str
    status: int  # the upstream's answer

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def __repr__(self) -> str:
        shown = tuple((k, "<redacted>" if k.lower() == "authorization" else v) for k, v in self.headers)
        return (f"ForwardedRequest({self.method} {self.target} -> {self.status}, "
                f"client={self.client_subject!r}, {self.tls_version}, headers={shown}, "
                f"body={len(self.body)} bytes)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests per connection
    server: "_FrontServer"

    def log_message(self, format, *args):  # noqa: A002 - no access log on stderr
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        front = self.server.front
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(front.upstream_host, front.upstream_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            answer_body = answer.read()
        except OSError as exc:
            upstream.close()
            self.send_error(502, f"upstream unreachable: {exc.__class__.__name__}")
            return
        upstream.close()
        der = self.connection.getpeercert(binary_form=True)
        front._record(ForwardedRequest(
            method=self.command, target=self.path, headers=tuple(self.headers.items()), body=body,
            client_subject=_subject_text((self.connection.getpeercert() or {}).get("subject", ())),
            client_cert_sha256=cert_sha256(der) if der else "",
            tls_version=self.connection.version() or "", status=answer.status))
        self.send_response_only(answer.status, answer.reason)
        for k, v in answer.getheaders():
            if k.lower() not in _HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer_body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer_body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _forward


class _FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    front: "TlsFront"

    def finish_request(self, request, client_address):
        """TLS handshake in the connection's own thread; a failed one is counted, not served."""
        front = self.front
        request.settimeout(front.timeout)
        with front._lock:
            front._open.add(request)
            front._threads.add(threading.current_thread())
        try:
            try:
                tls = front.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                front._refuse(exc)
                return
            with front._lock:
                front._open.add(tls)
                front.handshakes += 1
            try:
                self.RequestHandlerClass(tls, client_address, self)
            except OSError:
                pass  # the client went away mid-request
            finally:
                with front._lock:
                    front._open.discard(tls)
                tls.close()
        finally:
            with front._lock:
                front._open.discard(request)
                front._threads.discard(threading.current_thread())


class TlsFront:
    """TLS on 127.0.0.1 in front of a plain-HTTP upstream (threaded, standard library only).

    With `client_ca` the handshake REQUIRES a client certificate signed by it (CERT_REQUIRED);
    without, any client is served (a plain TLS terminator presenting `cert`). Each request is
    forwarded (method, path + query, headers, body) to `upstream` ("http://127.0.0.1:PORT") and the
    upstream's answer returned. `requests` lists them (ForwardedRequest); `refused` counts failed
    handshakes and `refusals` holds their reasons. Note that a bare TCP connect (a port probe)
    that closes without a handshake counts as refused too. TLS 1.2 is the minimum.
    """

    def __init__(self, upstream: str, cert: Path, key: Path, client_ca: Path | None = None,
                 timeout: float = 10):
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.port:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.timeout = timeout
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(str(cert), str(key))
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cafile=str(client_ca))
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._requests: list[ForwardedRequest] = []
        self._refusals: list[str] = []
        self.handshakes = 0
        self._server: _FrontServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ForwardedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def refusals(self) -> list[str]:
        with self._lock:
            return list(self._refusals)

    @property
    def refused(self) -> int:
        with self._lock:
            return len(self._refusals)

    def _record(self, req: ForwardedRequest) -> None:
        with self._lock:
            self._requests.append(req)

    def _refuse(self, exc: Exception) -> None:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        with self._lock:
            self._refusals.append(str(reason))

    def start(self) -> "TlsFront":
        self._server = _FrontServer(("127.0.0.1", 0), _Handler)
        self._server.front = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="tls-front",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open connections, and wait for their threads."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            still_open, threads = list(self._open), list(self._threads)
        for sock in still_open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)
        self._thread.join(5)
        self._server = None

    def __enter__(self) -> "TlsFront":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """The private PKI of the session (server names 127.0.0.1, ::1, localhost)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def victoria_tls(tmp_path_factory, pki) -> VictoriaMetricsTLS:
    """A VictoriaMetrics serving HTTPS with pki.server_cert at https://127.0.0.1:PORT."""
    vm = VictoriaMetricsTLS(tmp_path_factory.mktemp("vm-tls"), pki.server_cert, pki.server_key,
                            pki.ca_cert).start()
    yield vm
    vm.stop()


@pytest.fixture
def mtls_front(pki, victoria) -> TlsFront:
    """A TlsFront presenting pki.server_cert, requiring a client cert signed by pki.ca_cert,
    forwarding to the session's plain `victoria`. Fresh (empty records) for every test."""
    with TlsFront(victoria.url, pki.server_cert, pki.server_key, client_ca=pki.ca_cert) as front:
        yield front
