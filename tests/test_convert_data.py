"""tool_convert_data.py between the three layouts: a prepared folder, WebDataset shards and a Hugging Face dataset
(save_to_disk and parquet); every round trip keeps the image bytes and the prompts."""

import pytest

from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, read_prompt_file
from tool_convert_data import main


def _pairs(folder):
    """(target bytes, hint bytes, prompt) of every pair, training and held out, in order."""
    out = []
    for name in (PROMPT_FILE, VAL_PROMPT_FILE):
        for row in read_prompt_file(folder / name):
            out.append(((folder / row["target"]).read_bytes(), (folder / row["source"]).read_bytes(), row["prompt"]))
    return out


@pytest.mark.parametrize(
    "via, flags",
    [("webdataset", ["--shard-size", "16"]), ("hf", []), ("hf", ["--parquet"])],
)
def test_a_round_trip_keeps_image_bytes_and_prompts(toy_data, tmp_path, via, flags):
    assert main([str(toy_data), str(tmp_path / "there"), "--to", via, *flags]) == 0
    source = str(tmp_path / "there")
    assert main([source, str(tmp_path / "back"), "--to", "folder"]) == 0
    assert _pairs(tmp_path / "back") == _pairs(toy_data)


def test_bad_requests_are_one_line_and_write_nothing(toy_data, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    assert main([str(toy_data), str(tmp_path / "full"), "--to", "webdataset"]) == 2
    assert main([str(tmp_path / "nothing"), str(tmp_path / "o"), "--to", "folder"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "not empty" in errors[0] and "neither a prepared folder" in errors[1]
    assert (tmp_path / "full" / "x").read_text() == "mine" and not (tmp_path / "o").exists()
