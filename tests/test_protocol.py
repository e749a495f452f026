"""sources.control.protocol: replies read in any pieces, bounded against a peer that sends too much."""

import random

import pytest

from tor2influxdb2.errors import Reason
from tor2influxdb2.sources.control.protocol import (MAX_KEPT, MAX_LINE, ProtocolViolation, ReplyReader,
                                                    _split_around, _split_lines, quote)

REPLY = (b"250-version=0.4.9.11\r\n250-traffic/read=12\r\n250+circuit-status=\r\n1 BUILT $A~a PURPOSE=GENERAL\r\n"
         b"\r\n2 BUILT $B~b\r\n.\r\n250+entry-guards=\r\n$X~x up\r\n..dotted\r\n.\r\n250-stream-status=\r\n250 OK\r\n")


def read(data: bytes, pieces: int = 1, **kw):
    reader = ReplyReader(counted=frozenset({"circuit-status", "stream-status"}), **kw)
    size = max(1, len(data) // pieces)
    out = []
    for i in range(0, len(data), size):
        out += reader.feed(data[i:i + size])
    return out, reader


@pytest.mark.parametrize("pieces", [1, 2, 7, len(REPLY)])
def test_a_reply_in_any_pieces(pieces):
    [reply], reader = read(REPLY, pieces)
    assert reply.ok and reader.idle
    assert reply.values == {"version": "0.4.9.11", "traffic/read": "12", "entry-guards": "$X~x up\n.dotted"}
    assert reply.counts == {"circuit-status": 2, "stream-status": 0}


def test_errors_and_unrecognized_keys():
    [reply], _ = read(b'552 Unrecognized key "dormant"\r\n')
    assert reply.status == 552 and reply.unrecognized_key() == "dormant"
    [reply], _ = read(b'551 Not running in server mode\r\n')
    assert reply.status == 551 and reply.unrecognized_key() is None


def test_getconf_values_and_defaults():
    [reply], _ = read(b"250-BandwidthRate=1073741824\r\n250-Nickname=exit\r\n250 __OwningControllerProcess\r\n")
    assert reply.values == {"BandwidthRate": "1073741824", "Nickname": "exit", "__OwningControllerProcess": None}


def test_several_replies_and_lf_only_lines():
    replies, reader = read(b"250 OK\n250-a=1\n250 OK\n")
    assert [r.values for r in replies] == [{}, {"a": "1"}] and reader.idle


@pytest.mark.parametrize("data, reason", [
    (b"x" * (MAX_LINE + 2), Reason.TOO_LARGE),                                   # an endless line
    (b"250+circuit-status=\r\n" + (b"a" * (MAX_LINE + 10)) + b"\r\n", Reason.TOO_LARGE),
    (b"250+ns/all=\r\n" + b"r x\r\n" * (MAX_KEPT // 5 + 10), Reason.TOO_LARGE),  # too much kept
    (b"HTTP/1.0 200 OK\r\n", Reason.PROTOCOL),                                   # not tor
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", Reason.PROTOCOL),      # TLS
])
def test_what_a_peer_cannot_make_it_hold(data, reason):
    with pytest.raises(ProtocolViolation) as info:
        read(data, pieces=max(1, len(data) // 65536))
    assert info.value.failure.reason == reason


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_a_data_blocks_dot_stuffing_is_undone_on_its_lines_not_on_the_text_after_its_key(pieces):
    data = (b"250+ns/id/A=.first\r\n..two\r\nthree..\r\n.four\r\n.\r\n"
            b"250+entry-guards=\r\n..x\r\n.\r\n250+config-text=\r\nplain\r\n.\r\n250 OK\r\n")
    [reply], reader = read(data, pieces)
    assert reply.values == {"ns/id/A": ".first\n.two\nthree..\nfour", "entry-guards": ".x", "config-text": "plain"}
    assert reader.idle


@pytest.mark.parametrize("replies", [1, 40])
def test_kept_values_are_bounded_per_reply_in_the_pieces_a_socket_gives(replies):
    """1.5 MiB of key=value lines fed in 64 KiB pieces: one reply that holds them all is too much;
    the same lines in 40 replies (each well under the bound) are read whole."""
    lines = [b"250-k%d=%s\r\n" % (i, b"v" * 100) for i in range(int(1.5 * MAX_KEPT) // 110)]
    per = -(-len(lines) // replies)
    data = b"".join(b"".join(lines[i:i + per]) + b"250 OK\r\n" for i in range(0, len(lines), per))
    if replies == 1:
        for pieces in (1, len(data) // 65536):  # (in one piece: checked when the reply ends)
            with pytest.raises(ProtocolViolation) as info:
                read(data, pieces=pieces)
            assert info.value.failure.reason == Reason.TOO_LARGE
    else:
        out, reader = read(data, pieces=len(data) // 65536)
        assert len(out) == replies and sum(len(r.values) for r in out) == len(lines) and reader.idle


def test_counted_blocks_are_counted_not_kept():
    """A 20 MB circuit-status is counted as it streams by, within the kept-bytes bound."""
    line = b"1 BUILT $AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA~relay PURPOSE=GENERAL TIME_CREATED=2026-12-01T20\r\n"
    n = 20_000_000 // len(line)
    data = b"250+circuit-status=\r\n" + line * n + b".\r\n250 OK\r\n"
    [reply], _ = read(data, pieces=len(data) // 65536)
    assert reply.counts == {"circuit-status": n}


def test_a_long_line_found_by_its_key_gives_the_same_lines_and_replies():
    """Finding a long key's line (ReplyReader's `long`) splits every text into the same lines, also
    where the key is not at a line's start, inside a data block, or ends with a bare LF or CR CR LF."""
    rng = random.Random(20261202)
    pieces = ["250-bw-event-cache=1,2 3,4", "250-bw-event-cache=", "x250-bw-event-cache=9", "250-a=1", "", "\r",
              "250 OK", ".", "250+bw-event-cache=", "250-bw-event-cache", "250-bw-event-cache=" + "5,6 " * 700]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) + rng.choice(["\r\n", "\n", "\r\r\n"]) for _ in range(rng.randrange(1, 8)))
        assert _split_around(text, ("250-bw-event-cache=",)) == _split_lines(text, "\r\n", "\n"), repr(text)
    cache = " ".join(f"{i},{2 * i}" for i in range(300))
    reply = (b"250-version=0.4.9.11\r\n250+circuit-status=\r\n1 BUILT\r\n.\r\n250-bw-event-cache=" + cache.encode()
             + b"\r\n250 OK\r\n250-status/reachability-succeeded/or=1\r\n250 OK\r\n")
    for pieces in (1, 2, 3, len(reply) // 100):
        replies, reader = read(reply, pieces, long=frozenset({"bw-event-cache"}))
        assert [(r.values, r.counts) for r in replies] == [
            ({"version": "0.4.9.11", "bw-event-cache": cache}, {"circuit-status": 1}),
            ({"status/reachability-succeeded/or": "1"}, {})] and reader.idle


def test_quoted_strings_escape_backslash_and_quote():
    assert quote('pa"ss\\word') == '"pa\\"ss\\\\word"'
