"""WebDataset shards of pairs: written reproducibly from a prepared folder, read back with the same bytes and
prompts, indexed from their headers (cached, and rebuilt when a shard changes), and bad shards named."""

import tarfile

import pytest

from pairs.prompt_file import PROMPT_FILE, VAL_PROMPT_FILE, read_prompt_file
from pairs.shards import INDEX_FILE, ShardError, ShardIndex, expand_shards, write_shard
from training.data.shard_writer import shards_to_folder, write_shards


def test_a_folder_round_trips_through_shards_with_the_same_bytes_and_prompts(toy_data, tmp_path):
    shards = write_shards(toy_data, tmp_path / "shards", shard_size=10)
    assert [p.name for p in shards] == [f"pairs-{i:06d}.tar" for i in range(5)]  # 46 pairs
    again = write_shards(toy_data, tmp_path / "again", shard_size=10)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(shards, again))  # reproducible bytes
    back = shards_to_folder(str(tmp_path / "shards"), tmp_path / "back")
    before, after = read_prompt_file(toy_data / PROMPT_FILE), read_prompt_file(back / PROMPT_FILE)
    assert [r["prompt"] for r in after] == [r["prompt"] for r in before]
    for old, new in zip(before, after):
        for key in ("source", "target"):
            assert (back / new[key]).read_bytes() == (toy_data / old[key]).read_bytes()
    assert read_prompt_file(back / VAL_PROMPT_FILE) == read_prompt_file(toy_data / VAL_PROMPT_FILE)


def test_the_brace_spec_names_the_shards_and_the_index_is_cached_and_checked(toy_data, tmp_path):
    write_shards(toy_data, tmp_path / "s", shard_size=20)
    spec = str(tmp_path / "s" / "pairs-{000000..000002}.tar")
    assert expand_shards(spec) == [str(tmp_path / "s" / f"pairs-{i:06d}.tar") for i in range(3)]
    cache = tmp_path / "s" / INDEX_FILE
    index = ShardIndex.of(expand_shards(spec), cache=cache)
    assert len(index) == 46 and cache.is_file()
    assert ShardIndex.of(expand_shards(spec), cache=cache).fingerprint() == index.fingerprint()
    write_shard(tmp_path / "s" / "pairs-000002.tar", [])  # rewritten: the cached index no longer matches
    with pytest.raises(ShardError, match="hold no samples|no .* member"):
        ShardIndex.of(expand_shards(spec)[2:], cache=cache)


def test_a_truncated_shard_and_a_sample_missing_a_member_are_named(toy_data, tmp_path):
    (shard,) = write_shards(toy_data, tmp_path / "s", shard_size=100)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"pairs-000000.tar is truncated"):
        ShardIndex.build([str(shard)], [(0, 0)])
    bad = tmp_path / "bad.tar"
    write_shard(bad, [("000000001.jpg", b"x"), ("000000001.txt", b"a prompt")])
    with pytest.raises(ShardError, match=r"bad.tar, sample '000000001': no hint.png member"):
        ShardIndex.build([str(bad)], [(0, 0)])
    assert tarfile.is_tarfile(bad)
