"""bench.demo_uploads builds files that claim far more pixels than they hold, and each is refused before decoding."""

import pytest

from bench.demo_uploads import adversarial_files
from demo.canny2image import GenerationInputError, read_upload


@pytest.mark.slow
def test_the_adversarial_files_are_small_and_the_huge_ones_are_refused(tmp_path):
    tiff, header, big_png, big_jpg = adversarial_files(tmp_path)
    assert tiff.stat().st_size < 1 << 20 and header.stat().st_size < 1 << 10
    for huge in (tiff, header):
        with pytest.raises(GenerationInputError, match="pixels"):
            read_upload(huge, preview=True)
    assert max(read_upload(big_jpg, preview=True).shape[:2]) <= 1024
