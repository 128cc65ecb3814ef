import numpy as np
import pytest
import torch

from training.data.dataset import PairDataset
from training.data.latent_cache import CachedPairs, build_latent_cache


def _collate(items):
    return {
        k: (torch.from_numpy(np.stack([i[k] for i in items])) if k != "txt" else [i[k] for i in items])
        for k in items[0]
    }


def test_cached_inputs_equal_encoding_on_the_fly(tiny_model, toy_data, tmp_path):
    dataset = PairDataset(toy_data, empty_prompt_p=0.5, seed=1)
    folder = build_latent_cache(tiny_model, dataset, tmp_path / "cache", batch_size=4)
    cached = CachedPairs(dataset, folder)
    indices = range(len(dataset))
    raw_batch = _collate([dataset.get(i, 3) for i in indices])
    cached_batch = _collate([cached.get(i, 3) for i in indices])
    assert "" in raw_batch["txt"]  # empty prompts map to the empty-prompt context
    z_raw, c_raw = tiny_model.get_input(raw_batch, "jpg", generator=torch.Generator().manual_seed(0))
    z_cached, c_cached = tiny_model.get_input(cached_batch, "jpg", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z_cached, z_raw, atol=2e-3, rtol=2e-3)  # float16 storage
    torch.testing.assert_close(c_cached["c_crossattn"][0], c_raw["c_crossattn"][0], atol=2e-3, rtol=2e-3)
    assert torch.equal(c_cached["c_concat"][0], c_raw["c_concat"][0])
    assert build_latent_cache(tiny_model, dataset, folder) == folder  # complete caches are reused


def test_a_cache_of_shards_equals_the_cache_of_the_same_folder(tiny_model, toy_data, tmp_path):
    from training.data.shard_dataset import ShardPairs
    from training.data.shard_writer import write_shards

    write_shards(toy_data, tmp_path / "shards", shard_size=16)
    folder, shards = (
        PairDataset(toy_data, empty_prompt_p=0.5, seed=1),
        ShardPairs(tmp_path / "shards", empty_prompt_p=0.5, seed=1),
    )
    a = CachedPairs(folder, build_latent_cache(tiny_model, folder, tmp_path / "a", batch_size=4))
    b = CachedPairs(shards, build_latent_cache(tiny_model, shards, tmp_path / "b", batch_size=4))
    for i in (0, 17, 45):
        x, y = a.get(i, 2), b.get(i, 2)
        assert all(np.array_equal(x[k], y[k]) for k in ("moments", "context", "hint")) and x["txt"] == y["txt"]
    with pytest.raises(ValueError, match="not built from the pairs"):
        CachedPairs(shards.subset(range(10)), tmp_path / "b")


def test_cache_refuses_random_flips(tiny_model, toy_data, tmp_path):
    with pytest.raises(ValueError, match="flips"):
        build_latent_cache(tiny_model, PairDataset(toy_data, hflip=True), tmp_path / "cache")


def test_a_cache_is_rebuilt_for_other_pairs_of_the_same_count_or_other_weights(tiny_model, toy_data, tmp_path, caplog):
    import shutil

    from pairs.prompt_file import read_prompt_file

    data = tmp_path / "data"
    shutil.copytree(toy_data, data)
    folder = tmp_path / "cache"
    build_latent_cache(tiny_model, PairDataset(data), folder)
    old = np.load(folder / "moments.npy").copy()
    rows = read_prompt_file(data / "prompt.json")
    first, second = data / rows[0]["target"], data / rows[1]["target"]
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)  # other pictures, the same number of pairs
    second.write_bytes(a)
    with caplog.at_level("WARNING"):
        build_latent_cache(tiny_model, PairDataset(data), folder)
    assert "built from other inputs (data)" in caplog.text
    new = np.load(folder / "moments.npy")
    assert np.array_equal(new[0], old[1]) and np.array_equal(new[1], old[0]) and np.array_equal(new[2:], old[2:])
    caplog.clear()
    with torch.no_grad():
        next(tiny_model.first_stage_model.parameters()).add_(0.1)  # another VAE
    with caplog.at_level("WARNING"):
        build_latent_cache(tiny_model, PairDataset(data), folder)
    assert "(vae)" in caplog.text and not np.array_equal(np.load(folder / "moments.npy"), new)


def test_cached_pairs_refuse_a_cache_of_other_pairs(tiny_model, toy_data, tmp_path):
    folder = build_latent_cache(tiny_model, PairDataset(toy_data), tmp_path / "cache")
    with pytest.raises(ValueError, match="not built from the pairs"):
        CachedPairs(PairDataset(toy_data).subset(range(10)), folder)


def test_a_step_with_cached_latents_decodes_no_target_image(tiny_model, toy_data, tmp_path, monkeypatch):
    """The cache holds the targets' latents: an item reads its hint and prompt, never its target (whose decode
    was thrown away), from a folder and from shards alike."""
    import annotator.util
    import training.data.dataset
    import training.data.shard_dataset
    from training.data.shard_dataset import ShardPairs
    from training.data.shard_writer import write_shards

    write_shards(toy_data, tmp_path / "shards", shard_size=16)
    datasets = (PairDataset(toy_data, seed=1), ShardPairs(tmp_path / "shards", seed=1))
    caches = [
        CachedPairs(d, build_latent_cache(tiny_model, d, tmp_path / f"c{i}", batch_size=8))
        for i, d in enumerate(datasets)
    ]
    decoded = []

    def counting(source, **kwargs):
        decoded.append(source)
        return annotator.util.read_rgb(source, **kwargs)

    monkeypatch.setattr(training.data.dataset, "read_rgb", counting)
    monkeypatch.setattr(training.data.shard_dataset, "read_rgb", counting)
    for cached in caches:
        decoded.clear()
        items = [cached.get(i, 0) for i in range(4)]
        assert len(decoded) == 4 and all("jpg" not in item for item in items)  # one decode an item: its hint
    assert all("source" in str(path) for path in decoded if not isinstance(path, bytes))
