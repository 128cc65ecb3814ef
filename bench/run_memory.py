"""Run a command and print its peak memory: the kernel's maximum resident set, and the peaks of its
anonymous and file-backed parts, sampled from /proc/<pid>/status (Linux).

    .venv/bin/python -m bench.run_memory -- .venv/bin/python tutorial_train.py --config models/cldm_v15.yaml ...

Only the command's own process is measured, not processes it starts (use `--workers 0` for training).
The maximum resident set comes from `wait4`, and Linux counts in it the resident set of the process
that forked the command; so run this tool as its own small process, as above, not from inside a big one.
File-backed pages (a memory-mapped checkpoint, shared libraries) count in the resident set but the
kernel can drop them under pressure; anonymous memory is what runs a machine out of memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ldm.flags import HelpFormatter

GB = 1024**2  # /proc and ru_maxrss report kB


@dataclass
class MemoryPeaks:
    """Peaks of one process, in GB."""

    max_rss: float
    anonymous: float
    file_backed: float
    returncode: int


def status_kb(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmHWM, RssAnon, RssFile, ...); empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if v.strip().endswith("kB")}
    except (FileNotFoundError, ProcessLookupError):
        return {}


def measure(
    cmd: list[str], interval: float = 0.5, on_sample: Callable[[dict[str, int]], None] | None = None
) -> MemoryPeaks:
    """Run `cmd` to completion; sample its anonymous and file-backed resident memory every `interval` s, and hand
    each sample (/proc/<pid>/status in kB) to `on_sample`."""
    proc = subprocess.Popen(cmd)
    anon = file_backed = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        sample = status_kb(proc.pid)
        anon = max(anon, sample.get("RssAnon", 0))
        file_backed = max(file_backed, sample.get("RssFile", 0))
        if on_sample is not None:
            on_sample(sample)
        time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return MemoryPeaks(usage.ru_maxrss / GB, anon / GB, file_backed / GB, proc.returncode)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("give the command to measure after --")
    peaks = measure(cmd, args.interval)
    print(
        f"max resident set {peaks.max_rss:.1f} GB; sampled every {args.interval:g} s: anonymous at most "
        f"{peaks.anonymous:.1f} GB, file-backed at most {peaks.file_backed:.1f} GB; exit code {peaks.returncode}"
    )
    return peaks.returncode


if __name__ == "__main__":
    sys.exit(main())
