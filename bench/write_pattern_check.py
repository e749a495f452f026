#!/usr/bin/env python3
"""Does fake_tor.py write replies as tor does? The same client pattern against a real tor and the fake.

tor writes a control reply from its output buffer in chunks of about 4 KB, one send() each,
without TCP_NODELAY; a reply larger than one chunk can then wait for the client's delayed ACK
(~40 ms on Linux) unless the client sets TCP_QUICKACK. This script asks a real tor
(DisableNetwork 1, on 127.0.0.1) for a reply of ~12 KB (GETINFO config/names) and the fake
for one of similar size (circuit-status of 60 circuits), --count times per connection with
and without TCP_QUICKACK at several gaps, and prints how the reply arrived (bytes of each
recv) and how many requests stalled for more than 20 ms. Similar counts mean the fake's
write pattern reproduces tor's.

Run: .venv/bin/python bench/write_pattern_check.py [--count 12]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from support import Tor, stop_process  # noqa: E402


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"AUTHENTICATE\r\n")
    s.recv(100)
    return s


def ask(s: socket.socket, command: bytes, quickack: bool) -> tuple[float, list[int]]:
    t0 = time.monotonic()
    s.sendall(command + b"\r\n")
    buf, sizes = b"", []
    while not buf.endswith(b"250 OK\r\n"):
        if quickack:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed")
        sizes.append(len(data))
        buf += data
    return time.monotonic() - t0, sizes


def pattern(name: str, port: int, command: bytes, count: int) -> None:
    for gap in (0.05, 0.5):
        for quickack in (False, True):
            s = connect(port)
            times, first = [], None
            for _ in range(count):
                t, sizes = ask(s, command, quickack)
                times.append(t)
                first = first or sizes
                time.sleep(gap)
            s.close()
            print(f"{name:9s} gap {gap:4.2f} s QUICKACK {'on ' if quickack else 'off'}: reply {sum(first):6d} B "
                  f"in recvs of {first}; median {statistics.median(times) * 1000:5.2f} ms, "
                  f"stalls > 20 ms: {sum(t > 0.02 for t in times)}/{count}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=12, help="requests per connection (default 12)")
    args = p.parse_args()
    tor = Tor(Path(tempfile.mkdtemp(prefix="t2i-writes-")), auth="none").start()
    fake = subprocess.Popen([sys.executable, str(HERE / "fake_tor.py"), "--json", "--ports", "1", "--latency-ms", "0",
                             "--circuits", "60", "--auth", "null", "--no-sink", "--max-seconds", "300"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(fake.stdout.readline())["ports"][0]
        pattern("real tor", tor.port, b"GETINFO config/names", args.count)
        pattern("fake tor", port, b"GETINFO circuit-status", args.count)
    finally:
        stop_process(fake)
        tor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
