"""bench/run_memory.py: the peaks it reports follow what the child really allocated, and its exit code."""

import re
import subprocess
import sys

from repo_paths import ROOT

from bench.run_memory import measure

CHILD = "import sys, time; x = bytearray({mb} << 20); time.sleep(0.2); sys.exit({code})"  # bytearray is zeroed: touched
# Holds its memory until the sampler has seen it (the test's on_sample writes the release file), so the
# outcome does not depend on when samples fall; exits 1 if never released.
HOLDING_CHILD = (
    "import os, sys, time; x = bytearray({mb} << 20); end = time.time() + 60\n"
    "while not os.path.exists({release!r}) and time.time() < end: time.sleep(0.01)\n"
    "sys.exit(0 if os.path.exists({release!r}) else 1)"
)


def _run_tool(mb: int, code: int) -> tuple[int, float, int]:
    """The tool as docs/training.md runs it: its own small process, so its resident set does not mask the child's."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run_memory",
            "--interval",
            "0.05",
            "--",
            sys.executable,
            "-c",
            CHILD.format(mb=mb, code=code),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    found = re.search(r"max resident set ([\d.]+) GB; .* exit code (\d+)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    return proc.returncode, float(found.group(1)), int(found.group(2))


def test_the_kernels_peak_follows_the_childs_allocation_and_the_exit_code_is_passed_on():
    code_small, rss_small, printed_small = _run_tool(mb=10, code=0)
    code_big, rss_big, printed_big = _run_tool(mb=400, code=3)
    assert (code_small, printed_small, code_big, printed_big) == (0, 0, 3, 3)
    assert rss_big - rss_small > 0.3  # GB (printed to 0.1): the 390 MB difference, as the kernel saw it


def test_sampling_sees_the_childs_anonymous_memory(tmp_path):
    release = tmp_path / "release"
    seen = []

    def on_sample(sample: dict[str, int]) -> None:
        seen.append(sample.get("RssAnon", 0))
        if seen[-1] > 300 * 1024:  # kB: the child's 300 MB are resident
            release.touch()

    peaks = measure(
        [sys.executable, "-c", HOLDING_CHILD.format(mb=300, release=str(release))], interval=0.02, on_sample=on_sample
    )
    assert peaks.returncode == 0, f"the sampler never saw 300 MB of anonymous memory (samples in kB: {seen[-5:]})"
    assert peaks.anonymous > 0.29 and peaks.file_backed < peaks.anonymous
