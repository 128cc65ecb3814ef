"""Shards named by URL are fetched once, checked against the size the server gives, with their held-out pairs;
a missing shard is named. Served over loopback by http.server: nothing leaves the machine."""

import functools
import http.server
import threading

import pytest

from pairs.shards import ShardError
from training.data.shard_writer import write_shards
from training.shard_dataset import ShardPairs
from training.shard_fetch import fetch_shards


@pytest.fixture
def served(toy_data, tmp_path):
    folder = tmp_path / "served"
    write_shards(toy_data, folder, shard_size=10)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_shards_are_fetched_whole_with_their_held_out_pairs(served, tmp_path):
    folder, url = served
    out = fetch_shards(f"{url}/pairs-{{000000..000004}}.tar", tmp_path / "fetched")
    for shard in sorted(folder.glob("*.tar")):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert (out / "prompt_val.json").read_text() == (folder / "prompt_val.json").read_text()
    assert len(ShardPairs(out)) == 46
    (out / "pairs-000001.tar").write_bytes(b"cut short")  # a partial file is fetched again, not trusted
    fetch_shards(f"{url}/pairs-{{000000..000004}}.tar", out)
    assert (out / "pairs-000001.tar").read_bytes() == (folder / "pairs-000001.tar").read_bytes()
    with pytest.raises(ShardError, match=r"pairs-000005.tar does not exist \(404\)"):
        fetch_shards(f"{url}/pairs-{{000000..000009}}.tar", tmp_path / "too_many")
