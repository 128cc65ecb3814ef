"""bench/check_pairs_speed.py builds the folder it says and checks every pair in it."""

import re

from bench.check_pairs_speed import main


def test_it_checks_every_pair_of_the_folder_it_builds(capsys):
    main(["--n", "30"])
    out = capsys.readouterr().out
    # the facts of its one line: how many pairs, how many bad, and two timings
    assert re.search(r"\b30 pairs\b", out) and re.search(r"\b0 bad\b", out), out
    assert len(re.findall(r"[\d.]+ s\b", out)) == 2, out
