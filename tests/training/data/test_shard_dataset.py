"""Training over shards reads exactly what training over the same folder reads: the same items, draws and
prompts; a sample that does not decode is named by shard and key; URL shard lists are refused in one line."""

import numpy as np
import pytest

from pairs.shards import ShardError
from training.data.check_pairs import check_shard_pairs
from training.data.dataset import PairDataset
from training.data.shard_dataset import ShardPairs, is_shard_source
from training.data.shard_writer import write_shards


def test_shard_items_equal_the_folders_item_for_item(toy_data, tmp_path):
    write_shards(toy_data, tmp_path / "s", shard_size=7)
    assert is_shard_source(tmp_path / "s") and not is_shard_source(toy_data)
    options = dict(hflip=True, empty_prompt_p=0.5, seed=3)
    folder, shards = PairDataset(toy_data, **options), ShardPairs(tmp_path / "s", **options)
    assert len(folder) == len(shards) == 46
    for index in (0, 6, 7, 45):
        for epoch in (0, 1):
            a, b = folder.get(index, epoch), shards.get(index, epoch)
            assert a["txt"] == b["txt"] and np.array_equal(a["jpg"], b["jpg"]) and np.array_equal(a["hint"], b["hint"])
        assert shards.prompt(index) == folder.prompt(index)
    assert check_shard_pairs(shards, multiple=64) == []
    kept = shards.subset([1, 3])
    assert len(kept) == 2 and kept.prompt(0) == folder.prompt(1)
    # Another subset of the same size is other data: the latent cache and a resume must not take it for this one.
    assert shards.subset([1, 4]).fingerprint() != kept.fingerprint() != shards.fingerprint()
    assert shards.subset([1, 3]).fingerprint() == kept.fingerprint()


def test_a_sample_that_does_not_decode_is_named_and_urls_are_refused(toy_data, tmp_path):
    (shard,) = write_shards(toy_data, tmp_path / "s", shard_size=100)
    dataset = ShardPairs(tmp_path / "s")
    i = 5
    offset = int(dataset.index.offsets[i, 0])
    data = bytearray(shard.read_bytes())
    data[offset : offset + 16] = b"\0" * 16  # the target's PNG header overwritten, the tar intact
    shard.write_bytes(bytes(data))
    broken = ShardPairs(tmp_path / "s")  # re-indexed: the shard's mtime changed
    bad = check_shard_pairs(broken, multiple=64)
    assert [b.index for b in bad] == [i] and "000000005" in bad[0].target
    with pytest.raises(ShardError, match=r"pairs-000000.tar, sample '000000005': its target does not decode"):
        broken.get(i, 0)
    with pytest.raises(ShardError, match="local or mounted folder"):
        ShardPairs("https://example.com/pairs-{000000..000009}.tar")


def test_the_check_reads_a_large_members_header_and_end_only_and_still_finds_a_cut_one(tmp_path):
    import cv2

    from pairs.shards import sample_members, write_shard

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)  # incompressible: a PNG of about 800 kB
    target = cv2.imencode(".png", noise)[1].tobytes()
    hint = cv2.imencode(".png", (noise[:, :, 0] > 128).astype(np.uint8) * 255)[1].tobytes()
    members = sample_members("000000000", target, "png", hint, "noise") + sample_members(
        "000000001", target, "png", hint, "noise"
    )
    (tmp_path / "s").mkdir()
    write_shard(tmp_path / "s" / "pairs-000000.tar", members)
    dataset = ShardPairs(tmp_path / "s")
    assert len(target) > 10 * 65 * 1024 and len(dataset.member_ends(0)[0]) < 70 * 1024  # only the ends are read
    assert check_shard_pairs(dataset, multiple=64) == []
    shard = tmp_path / "s" / "pairs-000000.tar"
    end = int(dataset.index.offsets[1, 0] + dataset.index.sizes[1, 0])
    raw = bytearray(shard.read_bytes())
    raw[end - 12 : end] = bytes(12)  # sample 1's target loses its IEND chunk
    shard.write_bytes(bytes(raw))
    bad = check_shard_pairs(ShardPairs(tmp_path / "s"), multiple=64)
    assert [b.index for b in bad] == [1] and "truncated PNG" in bad[0].reason
