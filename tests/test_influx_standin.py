"""Self-tests of the InfluxDB 2 stand-in, seen through the real influxdb-client library."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import urllib.request

import pytest
import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from influx_standin import ENVOY_503_TEXT, HANG, Answer, InfluxStandin
from support import free_port, wait_for

pytestmark = pytest.mark.timeout(30)

TOKEN, ORG, BUCKET = "test-token", "test-org", "test-bucket"


@pytest.fixture
def influx():
    with InfluxStandin() as standin:
        yield standin


def client_for(standin: InfluxStandin, token: str = TOKEN, org: str = ORG, **kw) -> InfluxDBClient:
    return InfluxDBClient(url=standin.url, token=token, org=org, timeout=kw.pop("timeout", 5_000), **kw)


def write(standin: InfluxStandin, record, bucket: str = BUCKET, **kw):
    """Write synchronously with a fresh client; returns None or raises what the client raises."""
    precision = kw.pop("write_precision", WritePrecision.NS)
    with client_for(standin, **kw) as client:
        return client.write_api(write_options=SYNCHRONOUS).write(
            bucket=bucket, record=record, write_precision=precision)


def refused(standin: InfluxStandin, record, **kw) -> ApiException:
    with pytest.raises(ApiException) as info:
        write(standin, record, **kw)
    return info.value


def body(exc: ApiException) -> dict:
    return json.loads(exc.body)


def assert_error(exc: ApiException, status: int, code: str, message: str | None = None):
    assert exc.status == status
    assert exc.headers["Content-Type"] == "application/json; charset=utf-8"
    assert exc.headers["X-Platform-Error-Code"] == code
    assert exc.headers["X-Influxdb-Build"] == "OSS"
    parsed = body(exc)
    assert list(parsed) == ["code", "message"]
    assert parsed["code"] == code
    if message is not None:
        assert parsed["message"] == message
        assert exc.message == message
    return parsed


# ------------------------------------------------------------------------ accepting

def test_accepts_a_write_and_stores_lines_with_ns_timestamps(influx):
    write(influx, ["traffic,host=alpha read=10i,written=20i 1700000000000000000",
                   "circuits,host=alpha built=3i 1700000000000000001"])
    assert influx.accepted_lines() == [
        "traffic,host=alpha read=10i,written=20i 1700000000000000000",
        "circuits,host=alpha built=3i 1700000000000000001"]
    (req,) = influx.writes()
    assert req.status == 204 and influx.write_requests == 1
    assert req.header("authorization") == f"Token {TOKEN}"      # headers as sent
    assert req.query == {"org": ORG, "bucket": BUCKET, "precision": "ns"}
    assert TOKEN not in repr(req) and TOKEN not in repr(influx)
    point = influx.accepted_points()[0]
    assert point.measurement == "traffic" and point.tags == {"host": "alpha"}
    assert point.fields == {"read": 10, "written": 20}
    assert point.field_types == {"read": "integer", "written": "integer"}


@pytest.mark.parametrize("precision, stamp", [(WritePrecision.S, "1700000000"),
                                               (WritePrecision.MS, "1700000000000"),
                                               (WritePrecision.US, "1700000000000000"),
                                               (WritePrecision.NS, "1700000000000000000")])
def test_precision_is_normalised_to_nanoseconds(influx, precision, stamp):
    write(influx, f"m v=1i {stamp}", write_precision=precision)
    assert influx.accepted_lines() == ["m v=1i 1700000000000000000"]
    assert influx.writes()[0].query["precision"] == precision


def test_line_without_timestamp_gets_server_time_truncated_to_precision(influx):
    before = time.time_ns()
    write(influx, "m v=1i", write_precision=WritePrecision.S)
    (point,) = influx.accepted_points()
    assert point.time_ns % 1_000_000_000 == 0
    assert before - 1_000_000_000 < point.time_ns <= time.time_ns()


def test_gzip_body_is_decompressed(influx):
    write(influx, "m,host=a v=1.5 1", enable_gzip=True)
    (req,) = influx.writes()
    assert req.header("Content-Encoding") == "gzip"
    assert gzip.decompress(req.raw_body) == b"m,host=a v=1.5 1"
    assert influx.accepted_lines() == ["m,host=a v=1.5 1"]


def test_health_and_ping(influx):
    with urllib.request.urlopen(influx.url + "/health", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        health = json.loads(resp.read())
    assert health["name"] == "influxdb" and health["status"] == "pass"
    assert health["message"] == "ready for queries and writes"
    assert health["version"].startswith("v2.7.") and health["checks"] == []
    with client_for(influx) as client:
        assert client.ping() is True
    assert [r.status for r in influx.requests] == [200, 204]
    assert influx.requests[1].response_headers["X-Influxdb-Version"].startswith("v2.7.")
    assert influx.write_requests == 0


# ------------------------------------------------------------ the real refusals

def test_wrong_token_401(influx):
    exc = refused(influx, "m v=1i 1", token="wrong-token")
    assert_error(exc, 401, "unauthorized", "unauthorized access")
    assert influx.accepted_lines() == []


def test_unknown_org_404(influx):
    exc = refused(influx, "m v=1i 1", org="nope")
    assert_error(exc, 404, "not found", 'organization name "nope" not found')


def test_unknown_bucket_404(influx):
    exc = refused(influx, "m v=1i 1", bucket="nope")
    assert_error(exc, 404, "not found", 'bucket "nope" not found')


def test_no_write_permission_403(influx):
    influx.deny_write()
    exc = refused(influx, "m v=1i 1")
    assert_error(exc, 403, "forbidden", "insufficient permissions for write")
    influx.deny_write(False)
    write(influx, "m v=1i 1")
    assert influx.accepted_lines() == ["m v=1i 1"]


def test_malformed_line_400_stores_nothing(influx):
    exc = refused(influx, ["m v=1i 1", "traffic,host=a read= 2"])
    assert_error(exc, 400, "invalid", "unable to parse 'traffic,host=a read= 2': missing field value")
    assert influx.accepted_lines() == []


def test_max_lines_413(influx):
    influx.max_lines(2)
    exc = refused(influx, ["m v=1i 1", "m v=2i 2", "m v=3i 3"])
    assert_error(exc, 413, "request too large", "unable to read data: points batch is too large")
    write(influx, ["m v=1i 1", "m v=2i 2"])
    assert len(influx.accepted_lines()) == 2


def test_field_type_conflict_422_keeps_the_other_points(influx):
    write(influx, "traffic,host=a read=1i 1")
    exc = refused(influx, ["traffic,host=a read=2.5 2", "traffic,host=a written=3i 2"])
    assert_error(exc, 422, "unprocessable entity",
                 "failure writing points to database: partial write: field type conflict: "
                 'input field "read" on measurement "traffic" is type float, already exists '
                 "as type integer dropped=1")
    assert influx.accepted_lines() == ["traffic,host=a read=1i 1", "traffic,host=a written=3i 2"]


def test_preset_field_type(influx):
    influx.set_field_type("traffic", "read", "integer")
    exc = refused(influx, 'traffic read="x" 1')
    assert "is type string, already exists as type integer dropped=1" in body(exc)["message"]


# ------------------------------------------------------------- programmed answers

@pytest.mark.parametrize("status, code", [(500, "internal error"), (503, "unavailable"),
                                          (429, "too many requests"), (403, "forbidden"),
                                          (400, "invalid"), (422, "unprocessable entity")])
def test_standing_answer(influx, status, code):
    influx.answer(status)
    for _ in range(2):
        exc = refused(influx, "m v=1i 1")
        assert_error(exc, status, code)
    assert influx.accepted_lines() == [] and influx.write_requests == 2
    influx.answer(204)
    write(influx, "m v=1i 1")
    assert influx.accepted_lines() == ["m v=1i 1"]


def test_retry_after_header(influx):
    influx.answer(429, retry_after=7)
    exc = refused(influx, "m v=1i 1")
    assert_error(exc, 429, "too many requests",
                 "org 04014de4ed590000 has exceeded limited_write plan limit")
    assert exc.headers["Retry-After"] == "7" and exc.retry_after == "7"
    influx.answer(503, message="shutting down")
    exc = refused(influx, "m v=1i 1")
    assert_error(exc, 503, "unavailable", "shutting down")
    assert exc.headers["Retry-After"] == "1"          # default for 429 / 503
    influx.answer(500, retry_after=None)
    assert "Retry-After" not in refused(influx, "m v=1i 1").headers


def test_raw_body_answer(influx):
    influx.answer(503, body=ENVOY_503_TEXT, content_type="text/plain", retry_after=None)
    exc = refused(influx, "m v=1i 1")
    assert exc.status == 503 and exc.body == ENVOY_503_TEXT.decode()


def test_script_then_back_to_standing_answer(influx):
    influx.script([500, Answer(503, retry_after=2), {"status": 429, "message": "slow down"}, 204])
    seen = []
    for i in range(5):
        try:
            write(influx, f"m v={i}i {i}")
            seen.append(204)
        except ApiException as exc:
            seen.append((exc.status, exc.headers.get("Retry-After"), body(exc)["message"][:9]))
    assert seen == [(500, None, "unexpecte"), (503, "2", "service u"), (429, "1", "slow down"), 204, 204]
    assert influx.accepted_lines() == ["m v=3i 3", "m v=4i 4"]


def test_programmed_answers_come_before_the_real_checks(influx):
    influx.script([503])
    assert refused(influx, "m v=1i 1", token="wrong").status == 503
    assert refused(influx, "m v=1i 1", token="wrong").status == 401


# ------------------------------------------------------------------- poison lines

def test_poison_line_422_nothing_stored_until_split(influx):
    influx.reject_line("bad=")
    batch = ["good v=1i 1", "poison,host=a bad=1.5 2", "good v=2i 3"]
    exc = refused(influx, batch)
    assert_error(exc, 422, "unprocessable entity",
                 "failure writing points to database: partial write: field type conflict: "
                 'input field "bad" on measurement "poison" is type float, already exists '
                 "as type integer dropped=1")
    assert influx.accepted_lines() == []
    write(influx, [batch[0], batch[2]])
    assert influx.accepted_lines() == ["good v=1i 1", "good v=2i 3"]
    assert refused(influx, batch[1]).status == 422


def test_poison_line_400_with_predicate(influx):
    influx.reject_line(lambda line: line.startswith("x "), status=400, reason="bad timestamp")
    exc = refused(influx, ["ok v=1i 1", "x v=1i 2", "x v=1i 3"])
    assert_error(exc, 400, "invalid",
                 "unable to parse 'x v=1i 2': bad timestamp\nunable to parse 'x v=1i 3': bad timestamp")
    assert influx.accepted_lines() == []
    influx.reject_line(None)
    write(influx, "x v=1i 2")
    assert influx.accepted_lines() == ["x v=1i 2"]


# ------------------------------------------------------------ hangs and outages

def test_hang_client_timeout_fires_and_stop_is_prompt():
    standin = InfluxStandin().start()
    try:
        standin.hang()
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            write(standin, "m v=1i 1", timeout=300)
        assert time.monotonic() - started < 3
        assert standin.write_requests == 1 and standin.writes()[0].hung
        assert standin.writes()[0].status is None
        raw = socket.create_connection(("127.0.0.1", standin.port), timeout=5)
        raw.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: standin.hanging >= 1 and len(standin.requests) == 2, 5,
                 what="a still connected, hung /ping")  # hang() holds every path
    finally:
        started = time.monotonic()
        standin.stop()
        assert time.monotonic() - started < 2
    assert raw.recv(100) == b""      # closed without an answer
    raw.close()
    assert standin.hanging == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("influx-standin")]


def test_scripted_hang_holds_one_write_only(influx):
    influx.script([HANG])
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        write(influx, "m v=1i 1", timeout=200)
    write(influx, "m v=2i 2")
    assert influx.accepted_lines() == ["m v=2i 2"]
    assert [(r.hung, r.status) for r in influx.writes()] == [(True, None), (False, 204)]


def test_hung_request_is_released_by_answer_and_connection_closed(influx):
    influx.hang()
    raw = socket.create_connection(("127.0.0.1", influx.port), timeout=5)
    body_ = b"m v=1i 1"
    raw.sendall(b"POST /api/v2/write?org=test-org&bucket=test-bucket HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Token test-token\r\nContent-Length: %d\r\n\r\n%s" % (len(body_), body_))
    wait_for(lambda: influx.hanging == 1, 5, what="request held")
    influx.answer(204)
    assert raw.recv(100) == b""
    raw.close()
    wait_for(lambda: influx.hanging == 0 and influx.open_connections == 0, 5, what="thread released")
    assert influx.accepted_lines() == []
    write(influx, "m v=1i 1")
    assert influx.accepted_lines() == ["m v=1i 1"]


def test_hung_thread_ends_when_client_gives_up(influx):
    influx.hang()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        write(influx, "m v=1i 1", timeout=200)
    wait_for(lambda: influx.hanging == 0, 5, what="hung handler noticing the client left")


def test_stop_start_same_port_refused_then_accepted():
    port = free_port()
    standin = InfluxStandin(port=port).start()
    try:
        with client_for(standin) as client:   # one client, its pooled connection reused
            api = client.write_api(write_options=SYNCHRONOUS)
            api.write(bucket=BUCKET, record="m v=1i 1")
            standin.stop()
            assert standin.port == port and not standin.running
            with pytest.raises(urllib3.exceptions.NewConnectionError) as info:
                api.write(bucket=BUCKET, record="m v=2i 2")
            assert "refused" in str(info.value).lower()
            standin.start()
            assert standin.port == port
            api.write(bucket=BUCKET, record="m v=3i 3")
        assert standin.accepted_lines() == ["m v=1i 1", "m v=3i 3"]
        assert [r.status for r in standin.writes()] == [204, 204]
    finally:
        standin.stop()


def test_wait_helpers(influx):
    write(influx, ["m v=1i 1", "m v=2i 2"])
    assert len(influx.wait_for_writes(1, timeout=1)) == 1
    assert influx.wait_for_lines(2, timeout=1) == ["m v=1i 1", "m v=2i 2"]
    with pytest.raises(AssertionError):
        influx.wait_for_lines(3, timeout=0.1)
