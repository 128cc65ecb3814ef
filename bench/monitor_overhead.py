r"""The controllability monitor's cost: the same run twice, with the monitor off and at its configured interval.

    .venv/bin/python -m bench.monitor_overhead                       # the toy quickstart (models/cldm_toy.yaml)
    .venv/bin/python -m bench.monitor_overhead --max-steps 600       # a shorter toy run
    .venv/bin/python -m bench.monitor_overhead --config models/cldm_v15.yaml --accelerator gpu \
        --data training/dogs --init models/control_sd15_ini.ckpt --max-steps 2000

Any further flags go to tutorial_train.py as they are. Both runs write into a temporary folder that is removed
afterwards. Printed: each run's wall time, the evals the monitor ran and their mean time, and the monitor's share
of the run without it. The share includes the one strength-0 baseline, so a short run overstates it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ldm.flags import HelpFormatter
from training.control_curve import read_curve
from tutorial_train import main as train_main


def timed_run(flags: list[str], output: Path, eval_every: str | None) -> float:
    extra = ["--eval-every", "0"] if eval_every == "0" else ([] if eval_every is None else ["--eval-every", eval_every])
    start = time.perf_counter()
    code = train_main([*flags, "--output", str(output), "--ckpt-every", "1000000", "--logger", "csv", *extra])
    if code != 0:
        raise SystemExit(f"tutorial_train.py exited with {code} (flags: {' '.join(flags)})")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--eval-every", help="the interval to measure (default: the config's)")
    args, flags = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="monitor_overhead_") as tmp:
        off = timed_run(flags, Path(tmp) / "off", "0")
        on = timed_run(flags, Path(tmp) / "on", args.eval_every)
        rows = read_curve(Path(tmp) / "on")
    sampled = [r["seconds"] for r in rows if r["step"] > 0]
    mean = sum(sampled) / len(sampled) if sampled else 0.0
    print(f"run without the monitor: {off:.1f} s; with it: {on:.1f} s")
    print(f"evals: {len(rows)} rows ({len(sampled)} sampled after step 0), {mean:.2f} s each on average")
    print(f"monitor overhead: {on - off:.1f} s = {(on - off) / off:.1%} of the run without it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
