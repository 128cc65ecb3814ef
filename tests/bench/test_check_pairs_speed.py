"""bench/check_pairs_speed.py builds the folder it says and checks every pair in it."""

import re

from bench.check_pairs_speed import main


def test_it_checks_every_pair_of_the_folder_it_builds(capsys):
    main(["--n", "30"])
    assert re.fullmatch(
        r"checked 30 pairs \(512×512 JPEG \+ PNG\) in [\d.]+ s \([\d,]+ pairs/s\), 0 bad; "
        r"their fingerprint \(run record, latent cache\) took [\d.]+ s\n",
        capsys.readouterr().out,
    )
