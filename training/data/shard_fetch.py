"""Shards named by URL (`https://host/pairs-{000000..000099}.tar`, `s3://bucket/pairs-{...}.tar`, `gs://...`),
fetched once into a local folder that the shard reader then seeks into. fsspec reads every store: http(s) with
its own client, s3:// and gs:// through s3fs and gcsfs (requirements-remote.txt), credentials and endpoints from
the store's usual environment (AWS_ENDPOINT_URL, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...).

Each file is streamed to a partial file named for the store's version of it (ETag or Last-Modified), so an
interrupted fetch, or a retried one, goes on from the bytes it has; the finished file is checked against the
size the store gives and, where it gives one, its MD5 (S3's single-part ETag, GCS's md5Hash, Content-MD5), and
renamed into place. `fetched.json` records what each local file is (its URL, size and version): a later start
keeps a file only when the store still gives the same, and fetches it again otherwise. The ranks of a node take
turns under a file lock; the first fetches, the others find a record checked after they started."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import filelock
import fsspec
import psutil

from ldm.util import write_text_atomically
from pairs.manifest import MANIFEST_FILE
from pairs.prompt_file import VAL_PROMPT_FILE, read_prompt_file
from pairs.shards import ShardError, expand_shards

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://")
RECORD_FILE = "fetched.json"
LOCK_FILE = ".fetch.lock"
CHUNK = 1 << 22  # 4 MiB a read: what a cut connection loses of its last read
ATTEMPTS = 5  # tries of one file before the fetch stops (each goes on from the bytes already fetched)
BACKOFF_S = 1.0  # the wait before the second try, doubled before each next one
REMOTE_EXTRA = "pip install -r requirements-remote.txt"


def is_url_spec(data: str) -> bool:
    return str(data).startswith(URL_SCHEMES)


@dataclass(frozen=True)
class Remote:
    """What the store says of one file: its size (None where an http server does not say), its version (ETag,
    or Last-Modified; None where it gives neither), its MD5 where the store gives one, and its content type."""

    size: int | None
    version: str | None
    md5: str | None
    mimetype: str | None


def _md5_of(info: dict, *, s3: bool) -> str | None:
    """The hex MD5 a store gives: S3's ETag of a single-part upload (a multi-part one, `...-N`, is not an MD5),
    GCS's base64 md5Hash, or an http Content-MD5 header."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if etag and len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) and s3:
        return etag
    for key in ("md5Hash", "Content-MD5"):
        if info.get(key):
            try:
                return base64.b64decode(info[key]).hex()
            except ValueError:
                return None
    return None


def _remote(fs: fsspec.AbstractFileSystem, path: str) -> Remote:
    try:
        info = fs.info(path)
    except FileNotFoundError as err:  # fsspec's http info says so of every failure: the cause tells a refusal
        cause = err.__cause__  # (403), a server error or no connection from a missing file (404)
        if cause is None or getattr(cause, "status", 404) == 404:
            raise
        raise cause from None
    version = info.get("ETag") or info.get("etag") or info.get("generation") or info.get("Last-Modified")
    size = info.get("size")
    return Remote(
        size=int(size) if size is not None else None,
        version=str(version) if version else None,
        md5=_md5_of(info, s3="s3" in _protocols(fs)),
        mimetype=info.get("mimetype") or info.get("ContentType") or info.get("contentType"),
    )


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:  # s3fs or gcsfs not installed
        raise ShardError(f"{url}: reading this store needs its fsspec package ({err}); {REMOTE_EXTRA}") from None
    except ValueError as err:  # an unknown protocol
        raise ShardError(f"{url}: {err}") from None


def local_name(url: str) -> str:
    """The file name of `url` without its query string (`.../pairs-000001.tar?sig=...` → `pairs-000001.tar`)."""
    return PurePosixPath(urlsplit(url).path).name


def sibling(url: str, rel: str) -> str:
    """The URL of `rel` in the folder of `url`, with `url`'s query string (a token signs a folder as often as a
    file): `https://h/d/a.tar?t=1`, `val/x.png` → `https://h/d/val/x.png?t=1`."""
    parts = urlsplit(url)
    path = posixpath.join(posixpath.dirname(parts.path), rel)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _permanent(err: BaseException) -> bool:
    """An error that another try cannot mend: a missing file, no permission, an http 4xx."""
    status = getattr(err, "status", None) or getattr(err, "code", None)
    return isinstance(err, (FileNotFoundError, PermissionError, ShardError)) or (
        isinstance(status, int) and 400 <= status < 500
    )


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:512].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in start


def _check_tar_head(url: str, head: bytes, remote: Remote) -> None:
    """A shard's first bytes: an HTML page (a login or error page served with status 200) and anything else
    without the tar magic are named before the rest is fetched."""
    if (remote.mimetype or "").startswith("text/html") or _looks_like_html(head):
        raise ShardError(
            f"{url} is an HTML page, not a tar shard (a login page, an error page or a listing served in its "
            f"place); check the address, and the token or cookie the store needs"
        )
    if len(head) >= 262 and head[257:262] != b"ustar":
        raise ShardError(f"{url} is not a tar file (no tar header at its start); check that the address names a shard")


def _partial(dst: Path, remote: Remote) -> Path:
    """Where `dst` is fetched to: named for the store's version, so bytes of another version are never
    continued (a store that gives no version is fetched from the start each time)."""
    tag = hashlib.sha1(str(remote.version).encode()).hexdigest()[:12] if remote.version else f"{os.getpid()}"
    return dst.with_name(f".{dst.name}.{tag}.part")


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _open_at(fs: fsspec.AbstractFileSystem, path: str, start: int, chunk: int):  # noqa: ANN202 (an fsspec file object)
    """`path` opened for reading from byte `start`. An http file read from its start is one streamed GET (a file
    read in ranges would be one request a block); other stores, and a resumed http file, are read in ranges."""
    if start == 0 and "http" in _protocols(fs):
        return fs.open(path, "rb", block_size=0)
    src = fs.open(path, "rb", block_size=chunk, cache_type="none")
    src.seek(start)
    return src


def _download(
    fs: fsspec.AbstractFileSystem, path: str, url: str, dst: Path, remote: Remote, *, tar: bool, chunk: int
) -> None:
    """One try: go on from the partial file's bytes (where the store gives a version and a size), append to
    it, and when it is whole, check it and rename it to `dst`."""
    part = _partial(dst, remote)
    for stale in dst.parent.glob(f".{dst.name}.*.part"):  # bytes of another version of the file
        if stale != part:
            stale.unlink(missing_ok=True)
    start = part.stat().st_size if part.is_file() and remote.version and remote.size is not None else 0
    start = 0 if remote.size is not None and start > remote.size else start

    def want(done: int) -> int:
        return chunk if remote.size is None else min(chunk, remote.size - done)

    src = _open_at(fs, path, start, chunk)
    try:
        block = src.read(want(start)) if want(start) > 0 else b""
    except ValueError as err:  # an http server that serves no ranges: the file is fetched from its start
        if not start:
            raise
        logger.info("%s: %s; fetching it from the start", url, err)
        src.close()
        start, src = 0, _open_at(fs, path, 0, chunk)
        block = src.read(want(0))
    if start:
        logger.info("%s: going on from byte %d of %d", url, start, remote.size)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with src, open(part, "r+b" if start else "wb") as out:
            if start:
                for old in iter(lambda: out.read(chunk), b""):  # the bytes fetched before
                    digest.update(old)
            while block:
                if out.tell() == 0 and tar:
                    _check_tar_head(url, block, remote)
                digest.update(block)
                out.write(block)
                block = src.read(want(out.tell())) if want(out.tell()) > 0 else b""
            out.flush()
            os.fsync(out.fileno())
            got = out.tell()
    except ShardError:
        part.unlink(missing_ok=True)
        raise
    if remote.size is not None and got != remote.size:
        raise OSError(f"got {got} of {remote.size} bytes")  # a connection cut short: tried again
    if remote.md5 is not None and digest.hexdigest() != remote.md5:
        part.unlink(missing_ok=True)
        raise OSError(f"its MD5 {digest.hexdigest()} is not the store's {remote.md5}")
    os.replace(part, dst)


class Fetcher:
    """Fetches files into `out` and keeps `fetched.json`, the record of what each local file is."""

    def __init__(self, out: Path, *, attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S, chunk: int = CHUNK):
        self.out, self.attempts, self.backoff_s, self.chunk = out, attempts, backoff_s, chunk
        self.record = self._read_record()

    def _read_record(self) -> dict:
        try:
            record = json.loads((self.out / RECORD_FILE).read_text())
            return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else {"files": {}}
        except (OSError, ValueError):  # none yet, or damaged: every file is checked against the store again
            return {"files": {}}

    def save(self, **fields: object) -> None:
        self.record.update(fields)
        write_text_atomically(self.out / RECORD_FILE, json.dumps(self.record, indent=1, sort_keys=True))

    def intact(self, rel: str) -> bool:
        """`out/rel` is there with the size the record gives it."""
        entry, dst = self.record["files"].get(rel, {}), self.out / rel
        return bool(entry) and dst.is_file() and entry.get("size") in (None, dst.stat().st_size)

    def _have(self, rel: str, entry: dict) -> bool:
        """`out/rel` is the store's current version of its URL: the record says so, and it has the recorded size."""
        return entry["version"] is not None and self.record["files"].get(rel) == entry and self.intact(rel)

    def fetch(self, url: str, rel: str, *, tar: bool = False) -> bool:
        """`url` fetched to `out/rel`; False when the store has no such file. A local file is kept when the record
        says it is the store's current version of `url`."""
        fs, path = _filesystem(url)
        dst = self.out / rel
        for attempt in range(1, self.attempts + 1):
            try:
                remote = _remote(fs, path)
                entry = {"url": url, "size": remote.size, "version": remote.version}
                if self._have(rel, entry):
                    return True
                self.record["files"].pop(rel, None)
                dst.parent.mkdir(parents=True, exist_ok=True)
                _download(fs, path, url, dst, remote, tar=tar, chunk=self.chunk)
                self.record["files"][rel] = entry
                self.save()
                return True
            except FileNotFoundError:
                return False
            except Exception as err:  # noqa: BLE001 (each store raises its own: aiohttp, botocore, google)
                permanent = _permanent(err)
                if permanent or attempt == self.attempts:
                    if isinstance(err, ShardError):
                        raise
                    tries = "" if permanent else f" after {attempt} tries"
                    raise ShardError(
                        f"{url} cannot be fetched{tries} ({type(err).__name__}: {err}); check the address, the "
                        f"network and the credentials, and run again: the fetch goes on with the files it has"
                    ) from None
                wait = self.backoff_s * 2 ** (attempt - 1)
                logger.warning("%s: %s (%s); trying again in %.0f s", url, type(err).__name__, err, wait)
                time.sleep(wait)
        raise AssertionError("unreachable")


def _refuse_other_shards(out: Path, names: set[str], spec: str) -> None:
    """A tar in `out` that `spec` does not name would be trained on (the reader takes the folder's tars)."""
    others = sorted(p.name for p in out.glob("*.tar") if p.name not in names)
    if others:
        raise ShardError(
            f"{out} holds {others[0]}{f' and {len(others) - 1} more' if len(others) > 1 else ''}, which {spec} "
            f"does not name (fetched for another --data); delete {out}, or use another --output"
        )


def fetch_shards(
    spec: str, out: Path, *, attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S, chunk: int = CHUNK
) -> Path:
    """Fetch the shards of a URL spec into `out`, with the held-out pairs and manifest beside them; `out`. The
    processes of one node (DDP ranks) take turns: the first fetches, and the others find the record it wrote
    after they started, and trust it."""
    urls = expand_shards(spec)
    names = [local_name(url) for url in urls]
    if len(set(names)) != len(names):
        raise ShardError(f"{spec} names one file twice")
    out.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(out.parent / f".{out.name}{LOCK_FILE}")):
        fetcher = Fetcher(out, attempts=attempts, backoff_s=backoff_s, chunk=chunk)
        record = fetcher.record
        started = psutil.Process().create_time()
        fresh = record.get("spec") == spec and record.get("complete") and record.get("checked_at", 0) >= started
        if fresh and all(fetcher.intact(rel) for rel in record["files"]):
            return out  # another rank of this node checked every file against the store after this one started
        _refuse_other_shards(out, set(names), spec)
        fetcher.save(spec=spec, complete=False)
        for number, (url, name) in enumerate(zip(urls, names, strict=True)):
            if not fetcher.fetch(url, name, tar=True):
                raise ShardError(f"{url} does not exist; check the shard range of {spec}")
            logger.info("shard %d of %d: %s", number + 1, len(urls), url)
        _fetch_beside(fetcher, urls[0])
        fetcher.save(complete=True, checked_at=time.time())
    return out


def _fetch_beside(fetcher: Fetcher, first: str) -> None:
    """dataset.json and prompt_val.json beside the shards, and the held-out pairs the latter names, when the store
    has them."""
    out = fetcher.out
    fetcher.fetch(sibling(first, MANIFEST_FILE), MANIFEST_FILE)
    if not fetcher.fetch(sibling(first, VAL_PROMPT_FILE), VAL_PROMPT_FILE):
        return
    try:
        rows = read_prompt_file(out / VAL_PROMPT_FILE)  # every path checked to stay inside `out`
    except ValueError as err:
        (out / VAL_PROMPT_FILE).unlink()
        fetcher.record["files"].pop(VAL_PROMPT_FILE, None)
        fetcher.save()
        raise ShardError(f"the store's {VAL_PROMPT_FILE}: {err}") from None
    for row in rows:
        for rel in (row["source"], row["target"]):
            if not fetcher.fetch(sibling(first, rel), rel):
                raise ShardError(f"{sibling(first, rel)} (a held-out pair of {VAL_PROMPT_FILE}) does not exist")
