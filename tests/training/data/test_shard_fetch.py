"""Shards named by URL are fetched once through fsspec: checked against the store's size and MD5, resumed from
the bytes a cut connection left, fetched again when the store's version changes, and named when the store
serves something else (an HTML page, a refusal, a short chunked answer). Served over loopback, by http.server
and by moto's S3 server: nothing leaves the machine."""

import functools
import hashlib
import http.server
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from s3_store import s3_store

from pairs.shards import ShardError
from training.data.shard_dataset import ShardPairs
from training.data.shard_fetch import RECORD_FILE, fetch_shards
from training.data.shard_writer import write_shards

SPEC = "pairs-{000000..000004}.tar"


@pytest.fixture(scope="module")
def shard_folder(toy_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    write_shards(toy_data, folder, shard_size=10)
    (folder / "shard_index.npz").unlink(missing_ok=True)
    return folder


@pytest.fixture
def served(shard_folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield shard_folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class StoreHandler(http.server.BaseHTTPRequestHandler):
    """A store that serves byte ranges and ETags, and misbehaves as its server's settings say: `cut` (paths whose
    first GET stops half-way), `chunked_cut` (answered chunked, and cut), `html` (a login page in their place),
    `token` (a query token it requires), `md5` (the Content-MD5 it gives)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        store, parts = self.server, urlsplit(self.path)
        path = parts.path
        store.log.append((self.command, path, self.headers.get("Range")))
        if store.token and parse_qs(parts.query).get("token") != [store.token]:
            return self._plain(403, b"forbidden")
        if path in store.html:
            return self._plain(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html")
        data = store.files.get(path)
        if data is None:
            return self._plain(404, b"no such file")
        if path in store.chunked_cut:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("ETag", f'"{store.versions.get(path, "v1")}"')
            self.end_headers()
            if body:
                self.wfile.write(b"%x\r\n%s\r\n" % (100, data[:100]))
            self.close_connection = True
            return None
        start, end = 0, len(data) - 1
        if match := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or ""):
            start, end = int(match[1]), int(match[2] or end)
        chunk = data[start : end + 1]
        self.send_response(206 if self.headers.get("Range") else 200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{store.versions.get(path, "v1")}"')
        if path in store.md5:
            self.send_header("Content-MD5", store.md5[path])
        if self.headers.get("Range"):
            self.send_header("Content-Range", f"bytes {start}-{start + len(chunk) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return None
        if path in store.cut and self.command == "GET":
            store.cut.discard(path)
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            time.sleep(0.3)  # the client reads what came before it sees the cut
            self.close_connection = True
            return None
        self.wfile.write(chunk)
        return None

    def _plain(self, status: int, text: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(text)


@pytest.fixture
def store(shard_folder):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StoreHandler)
    server.files = {f"/{p.relative_to(shard_folder).as_posix()}": p.read_bytes() for p in shard_folder.rglob("*.*")}
    server.versions, server.md5, server.log = {}, {}, []
    server.cut, server.chunked_cut, server.html, server.token = set(), set(), set(), None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def gets(server, path: str) -> list[str | None]:
    """The Range header of each GET of `path` (None: the whole file)."""
    return [rng for method, p, rng in server.log if method == "GET" and p == path]


def test_url_shards_are_fetched_whole_with_their_held_out_pairs(served, tmp_path):
    folder, url = served
    out = fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched")
    for shard in sorted(folder.glob("*.tar")):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert (out / "prompt_val.json").read_text() == (folder / "prompt_val.json").read_text()
    assert len(ShardPairs(out)) == 46
    (out / "pairs-000001.tar").write_bytes(b"cut short")  # a damaged local file is fetched again, not trusted
    fetch_shards(f"{url}/{SPEC}", out)
    assert (out / "pairs-000001.tar").read_bytes() == (folder / "pairs-000001.tar").read_bytes()
    with pytest.raises(ShardError, match=r"pairs-000005.tar does not exist"):
        fetch_shards(f"{url}/pairs-{{000000..000009}}.tar", tmp_path / "too_many")


def test_a_cut_connection_is_tried_again_from_the_bytes_it_left(store, shard_folder, tmp_path):
    server, url = store
    server.cut = {"/pairs-000001.tar"}
    out = fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched", backoff_s=0, chunk=4096)
    whole = (shard_folder / "pairs-000001.tar").read_bytes()
    assert (out / "pairs-000001.tar").read_bytes() == whole
    ranges = gets(server, "/pairs-000001.tar")
    resumed_at = int(re.match(r"bytes=(\d+)-", ranges[1])[1])  # the bytes read before the cut are kept
    assert ranges[0] is None and 0 < resumed_at <= len(whole) // 2, ranges
    assert not list(out.glob(".*.part"))


def test_a_file_is_fetched_again_when_the_stores_version_changes_and_only_then(store, shard_folder, tmp_path):
    server, url = store
    out = fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched")
    record = json.loads((out / RECORD_FILE).read_text())
    record["checked_at"] = 0  # as a later start finds it: checked before that process started
    (out / RECORD_FILE).write_text(json.dumps(record))
    server.log.clear()
    server.files["/pairs-000003.tar"] = (shard_folder / "pairs-000000.tar").read_bytes()
    server.versions["/pairs-000003.tar"] = "v2"
    fetch_shards(f"{url}/{SPEC}", out)
    assert [p for method, p, _ in server.log if method == "GET"] == ["/pairs-000003.tar"]
    assert (out / "pairs-000003.tar").read_bytes() == (shard_folder / "pairs-000000.tar").read_bytes()


def test_an_html_page_where_a_shard_belongs_is_named(store, tmp_path):
    server, url = store
    server.html = {"/pairs-000002.tar"}
    with pytest.raises(ShardError, match=r"pairs-000002.tar is an HTML page") as err:
        fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched", backoff_s=0)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "fetched" / "pairs-000002.tar").exists() and not list((tmp_path / "fetched").glob(".*"))


def test_a_query_string_is_kept_in_the_url_and_left_out_of_the_name(store, shard_folder, tmp_path):
    server, url = store
    server.token = "s3cret"
    out = fetch_shards(f"{url}/{SPEC}?token=s3cret", tmp_path / "fetched")
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in shard_folder.glob("*.tar"))
    assert (out / "prompt_val.json").is_file()  # beside the shards, with the same token
    server.log.clear()
    with pytest.raises(ShardError, match=r"pairs-000000.tar\?token=wrong cannot be fetched .*403") as err:
        fetch_shards(f"{url}/{SPEC}?token=wrong", tmp_path / "refused", backoff_s=0)
    assert "\n" not in str(err.value) and "tries" not in str(err.value)
    assert [method for method, _, _ in server.log].count("HEAD") == 1  # a refusal is not tried again


def test_a_chunked_answer_cut_short_ends_in_one_line_after_its_tries(store, tmp_path):
    server, url = store
    server.chunked_cut = {"/pairs-000000.tar"}
    with pytest.raises(ShardError, match=r"pairs-000000.tar cannot be fetched after 3 tries") as err:
        fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched", attempts=3, backoff_s=0)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "fetched" / "pairs-000000.tar").exists()


def test_a_file_whose_md5_is_not_the_stores_is_not_kept(store, shard_folder, tmp_path):
    import base64

    server, url = store
    good = (shard_folder / "pairs-000001.tar").read_bytes()
    server.md5["/pairs-000000.tar"] = base64.b64encode(
        hashlib.md5((shard_folder / "pairs-000000.tar").read_bytes()).digest()
    ).decode()
    server.md5["/pairs-000001.tar"] = base64.b64encode(hashlib.md5(good + b"x").digest()).decode()
    with pytest.raises(ShardError, match=r"pairs-000001.tar cannot be fetched after 2 tries .*MD5"):
        fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched", attempts=2, backoff_s=0)
    assert (tmp_path / "fetched" / "pairs-000000.tar").is_file()  # its MD5 matched
    assert not (tmp_path / "fetched" / "pairs-000001.tar").exists()


def test_a_folder_holding_shards_the_spec_does_not_name_is_refused(store, tmp_path):
    _, url = store
    out = fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched")
    with pytest.raises(ShardError, match=r"holds pairs-000003.tar and 1 more, which .* does not name"):
        fetch_shards(f"{url}/pairs-{{000000..000002}}.tar", out)


def test_the_processes_of_a_node_fetch_each_file_once(store, shard_folder, tmp_path):
    server, url = store
    errors: list[BaseException] = []

    def one_rank() -> None:
        try:
            fetch_shards(f"{url}/{SPEC}", tmp_path / "fetched")
        except BaseException as err:  # noqa: BLE001 (reported by the test)
            errors.append(err)

    ranks = [threading.Thread(target=one_rank) for _ in range(3)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join()
    assert not errors
    for shard in sorted(shard_folder.glob("*.tar")):
        assert len(gets(server, f"/{shard.name}")) == 1, shard.name


def test_s3_shards_are_fetched_and_checked_against_their_etag(shard_folder, tmp_path):
    with s3_store("cutenet-test", shard_folder) as base:
        out = fetch_shards(f"{base}/{SPEC}", tmp_path / "fetched")
        with pytest.raises(ShardError, match=r"pairs-000009.tar does not exist"):
            fetch_shards(f"{base}/pairs-{{000009..000009}}.tar", tmp_path / "missing")
    for shard in sorted(shard_folder.glob("*.tar")):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    record = json.loads((out / RECORD_FILE).read_text())["files"]["pairs-000000.tar"]
    assert record["version"].strip('"') == hashlib.md5((shard_folder / "pairs-000000.tar").read_bytes()).hexdigest()
    assert (out / "prompt_val.json").is_file() and Path(out / "dataset.json").is_file()
