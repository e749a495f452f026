#!/usr/bin/env python3
"""Instructions per steady host-poll of the whole daemon, counted by valgrind's callgrind.

On a shared machine the CPU figures of run_bench.py move by 10-20 % from one run to the next, and a
change of a few percent cannot be seen in them. Instructions are counted, not timed: the same code
against the same fake fleet gives the same count within about 1 % (the order in which tors answer
varies), whatever else the machine is doing. They are not time (a cache miss costs no instruction, a tight C loop many cheap
ones), so they compare two versions of the daemon; the README's figures stay the timed ones.

For each metric set, run_bench.py runs the daemon under callgrind twice against the fake fleet,
for 5 and for 10 cycles (RUN_EVERY_SECONDS=6, TOR_TIMEOUT=5: the daemon runs ~50x slower under
valgrind); the difference of the two totals over 5 cycles x hosts is what one steady host-poll
costs, start-up and connecting cancelled out. About a minute per run.

  .venv/bin/python bench/instructions.py                       # this checkout, 100 hosts, core and all
  .venv/bin/python bench/instructions.py --daemon /tmp/base/tor_to_influxdb2.py --metric-sets all
  .venv/bin/python bench/instructions.py --keep /tmp/cg   # keep the callgrind files (callgrind_annotate)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHORT, LONG = 5, 10


def count(args, sets: str, cycles: int, tmp: Path) -> int:
    out = tmp / f"callgrind.{sets}.{cycles}"
    wrapper = tmp / "python"
    wrapper.write_text("#!/bin/sh\n"
                       'if [ "$1" = "-m" ] && [ "$2" = "tor_to_influxdb2" ]; then\n'
                       f'    exec valgrind --tool=callgrind --callgrind-out-file="$T2I_CALLGRIND_OUT" '
                       f'"{args.python}" "$@"\n'
                       "fi\n"
                       f'exec "{args.python}" "$@"\n')
    wrapper.chmod(0o755)
    # (a trailing ";": one METRIC_SETS value, commas and all)
    cmd = [sys.executable, str(HERE / "run_bench.py"), "--sizes", str(args.hosts), "--metric-sets", sets + ";",
           "--repeat", "1", "--hung-size", "0", "--cycles", str(cycles), "--run-every", "6", "--tor-timeout", "5",
           "--python", str(wrapper), "--daemon", args.daemon, "--env", f"T2I_CALLGRIND_OUT={out}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text = out.read_text(errors="replace") if out.exists() else ""
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if run.returncode != 0 or match is None:
        sys.exit(f"instructions.py: the run of {sets} for {cycles} cycles gave no count:\n{run.stdout[-800:]}")
    return int(match.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--daemon", default=str(ROOT / "tor_to_influxdb2.py"), help="the daemon's entry point")
    venv = ROOT / ".venv" / "bin" / "python"  # (a snapshot without one: the Python running this script)
    p.add_argument("--python", default=str(venv) if venv.exists() else sys.executable,
                   help="its interpreter (default: the checkout's .venv, else this script's)")
    p.add_argument("--hosts", type=int, default=100, help="fake tors (default 100)")
    p.add_argument("--metric-sets", default="core;all",
                   help="METRIC_SETS values to count, separated by ';' (default core;all)")
    p.add_argument("--keep", metavar="DIR", help="keep the callgrind output files in DIR "
                   "(callgrind.<sets>.<cycles>; callgrind_annotate shows where the instructions went)")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("instructions.py: valgrind is not installed (apt-get install valgrind)")
    sets_list = [s.strip() for s in args.metric_sets.split(";") if s.strip()]
    per = {}
    with tempfile.TemporaryDirectory(prefix="t2i-instructions-") as tmp:
        where = Path(args.keep or tmp)
        where.mkdir(parents=True, exist_ok=True)
        for sets in sets_list:
            short, long = (count(args, sets, n, where) for n in (SHORT, LONG))
            per[sets] = (long - short) / (LONG - SHORT) / args.hosts
            print(f"{sets}: {per[sets]:,.0f} instructions per steady host-poll ({args.hosts} hosts, {args.daemon})",
                  flush=True)
    if "core" in per and "all" in per:
        print(f"all / core: {per['all'] / per['core']:.2f}")


if __name__ == "__main__":
    main()
