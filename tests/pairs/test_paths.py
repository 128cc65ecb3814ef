"""Paths that come from data never lead outside their root: prompt-file rows, shard member names (unpacked), a
server's held-out list; shard sets with one key twice are refused, and a re-written set leaves no old shard."""

import functools
import http.server
import io
import json
import tarfile
import threading

import numpy as np
import pytest

from pairs.paths import DataPathError, within
from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, read_prompt_file
from pairs.shards import INDEX_FILE, ShardError, ShardIndex, member_key
from training.data.shard_dataset import ShardPairs
from training.data.shard_fetch import fetch_shards
from training.data.shard_writer import shards_to_folder, write_shards


@pytest.mark.parametrize("rel", ["/etc/passwd", "../x.png", "source/../../x.png", "C:/x.png", ""])
def test_a_path_that_leaves_its_root_is_refused(tmp_path, rel):
    with pytest.raises(DataPathError, match="prompt.json:3"):
        within(tmp_path, rel, where="prompt.json:3")


def test_a_symbolic_link_out_of_the_root_is_refused_and_one_inside_is_not(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "root" / "inner").mkdir()
    (tmp_path / "root" / "alias").symlink_to(tmp_path / "root" / "inner")
    with pytest.raises(DataPathError, match="symbolic link"):
        within(tmp_path / "root", "link/a.png", where="row 1")
    assert within(tmp_path / "root", "alias/a.png", where="row 1") == tmp_path / "root" / "alias" / "a.png"


def test_a_prompt_file_row_outside_its_folder_is_named_by_file_and_line(tmp_path):
    rows = [{"source": "source/a.png", "target": "target/a.png", "prompt": "p"}] * 2
    rows.append({"source": "../../../tmp/evil.png", "target": "target/a.png", "prompt": "p"})
    (tmp_path / PROMPT_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataPathError, match=rf"{PROMPT_FILE}:3 'source'"):
        read_prompt_file(tmp_path / PROMPT_FILE)


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png() -> bytes:
    import cv2

    return cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()


@pytest.mark.parametrize("key", ["/{abs}/k", "../../k", "a/../../k"])
def test_a_shard_member_named_outside_is_refused_and_nothing_is_written_there(tmp_path, key):
    target = tmp_path / "elsewhere"
    key = key.format(abs=str(target).lstrip("/"))
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "pairs-000000.tar", [(f"{key}.png", _png()), (f"{key}.hint.png", _png()), (f"{key}.txt", b"p")])
    with pytest.raises(ShardError, match="pairs-000000.tar"):
        shards_to_folder(str(shards), tmp_path / "out")
    assert not target.exists() and not (tmp_path / "k.png").exists()
    with pytest.raises(ShardError, match="not a relative path"):
        ShardPairs(shards)


def test_keys_repeated_across_shards_are_refused_naming_both_and_never_merged(toy_data, tmp_path):
    one, two = write_shards(toy_data, tmp_path / "a", shard_size=100), write_shards(toy_data, tmp_path / "b")
    both = tmp_path / "both"
    both.mkdir()
    (both / "pairs-000000.tar").write_bytes(one[0].read_bytes())
    (both / "pairs-000001.tar").write_bytes(two[0].read_bytes())
    with pytest.raises(ShardError, match=r"pairs-000000.tar and again in .*pairs-000001.tar"):
        ShardPairs(both)
    with pytest.raises(ShardError, match="again in"):
        shards_to_folder(str(both), tmp_path / "merged")
    assert not (tmp_path / "merged" / PROMPT_FILE).exists()


def test_keys_with_dots_in_a_folder_name_are_read_as_webdataset_reads_them(tmp_path):
    assert member_key("dogs.v2/n02085620_7.hint.png") == ("dogs.v2/n02085620_7", "hint.png")
    assert member_key("000001.jpg") == ("000001", "jpg")
    shards = tmp_path / "shards"
    shards.mkdir()
    key = "dogs.v2/n02085620_7"
    _tar(shards / "pairs-000000.tar", [(f"{key}.png", _png()), (f"{key}.hint.png", _png()), (f"{key}.txt", b"a dog")])
    pairs = ShardPairs(shards)
    assert len(pairs) == 1 and pairs.prompt(0) == "a dog"
    back = shards_to_folder(str(shards), tmp_path / "back")
    assert (back / "target" / "dogs.v2" / "n02085620_7.png").is_file()


def test_a_damaged_index_is_built_again(toy_data, tmp_path):
    write_shards(toy_data, tmp_path / "s", shard_size=20)
    assert len(ShardPairs(tmp_path / "s")) == 46
    (tmp_path / "s" / INDEX_FILE).write_bytes(b"PK\x03\x04 not a zip any more")
    assert len(ShardPairs(tmp_path / "s")) == 46
    assert ShardIndex.load(tmp_path / "s" / INDEX_FILE).shards  # and saved whole again


def test_writing_a_shard_set_again_with_another_size_leaves_only_the_new_set(toy_data, tmp_path):
    write_shards(toy_data, tmp_path / "s", shard_size=5)
    assert len(list((tmp_path / "s").glob("*.tar"))) == 10
    write_shards(toy_data, tmp_path / "s", shard_size=20)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.tar")) == [f"pairs-{i:06d}.tar" for i in range(3)]
    assert len(ShardPairs(tmp_path / "s")) == 46
    assert not list(tmp_path.glob(".s.*"))  # no staging folder left


def test_a_non_utf8_caption_is_a_bad_pair_of_the_pre_flight_check_naming_shard_and_key(tmp_path):
    from training.data.check_pairs import check_shard_pairs

    shards = tmp_path / "shards"
    shards.mkdir()
    members = []
    for key, text in (("000000", b"fine"), ("000001", b"\xff\xfe bad")):
        members += [(f"{key}.png", _png()), (f"{key}.hint.png", _png()), (f"{key}.txt", text)]
    _tar(shards / "pairs-000000.tar", members)
    bad = check_shard_pairs(ShardPairs(shards), multiple=64)
    assert [b.index for b in bad] == [1] and "'000001'" in bad[0].reason and "UTF-8" in bad[0].reason


@pytest.fixture
def hostile_server(toy_data, tmp_path):
    folder = tmp_path / "served"
    write_shards(toy_data, folder, shard_size=100)
    rows = read_prompt_file(folder / VAL_PROMPT_FILE)
    rows[0] = {**rows[0], "source": "../../escaped.png"}
    (folder / VAL_PROMPT_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_server_whose_held_out_list_names_paths_outside_gets_nothing_written_there(hostile_server, tmp_path):
    out = tmp_path / "run" / "data"
    with pytest.raises(ShardError, match=r"prompt_val.json:1 'source'"):
        fetch_shards(f"{hostile_server}/pairs-{{000000..000000}}.tar", out)
    assert not (tmp_path / "escaped.png").exists() and not (tmp_path / "run" / "escaped.png").exists()
