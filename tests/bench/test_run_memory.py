"""bench/run_memory.py: the peaks it reports follow what the child really allocated, and its exit code."""

import re
import subprocess
import sys

from bench.run_memory import measure

CHILD = "import sys, time; x = bytearray({mb} << 20); time.sleep(1.0); sys.exit({code})"  # bytearray is zeroed: touched


def _run_tool(mb: int, code: int) -> tuple[int, list[float]]:
    """The tool as the README runs it: its own small process, so its resident set does not mask the child's."""
    proc = subprocess.run([sys.executable, "-m", "bench.run_memory", "--interval", "0.05", "--",
                           sys.executable, "-c", CHILD.format(mb=mb, code=code)], capture_output=True, text=True)
    found = re.search(r"max resident set ([\d.]+) GB; .* anonymous at most ([\d.]+) GB, file-backed at most ([\d.]+) GB; "
                      r"exit code (\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    return proc.returncode, [float(x) for x in found.groups()[:3]] + [int(found.group(4))]


def test_peaks_follow_the_childs_anonymous_allocation_and_the_exit_code_is_passed_on():
    code_small, (rss_small, anon_small, file_small, printed_small) = _run_tool(mb=10, code=0)
    code_big, (rss_big, anon_big, file_big, printed_big) = _run_tool(mb=400, code=3)
    assert (code_small, printed_small, code_big, printed_big) == (0, 0, 3, 3)
    assert rss_big - rss_small > 0.3  # GB (printed to 0.1): the 390 MB difference, as the kernel saw it
    assert anon_big - anon_small > 0.3  # and as the sampling saw it, as anonymous memory
    assert abs(file_big - file_small) < 0.15


def test_sampling_sees_anonymous_memory_from_inside_a_big_process_too():
    peaks = measure([sys.executable, "-c", CHILD.format(mb=300, code=0)], interval=0.05)
    assert peaks.returncode == 0 and peaks.anonymous > 0.28
