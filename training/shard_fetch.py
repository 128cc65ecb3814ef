"""Shards named by URL (`https://host/pairs-{000000..000099}.tar`), fetched once into a local folder that the
shard reader then seeks into: each file is streamed to a temporary name, checked against the size the server
gives, and renamed, so an interrupted fetch resumes with the files it finished. The held-out pairs and
dataset.json beside the shards are fetched too when the server has them."""

from __future__ import annotations

import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

from ldm.util import atomic_write
from pairs.manifest import MANIFEST_FILE
from pairs.prompt_file import VAL_PROMPT_FILE, read_prompt_file
from pairs.shards import ShardError, expand_shards

logger = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://")
CHUNK = 1 << 20


def is_url_spec(data: str) -> bool:
    return str(data).startswith(URL_SCHEMES)


def fetch(url: str, dst: Path, *, timeout: float = 60.0) -> bool:
    """Download `url` to `dst` (atomically); False when the server has no such file (404). A file already there
    of the size the server gives is kept."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only: is_url_spec)
            length = response.headers.get("Content-Length")
            if dst.is_file() and length is not None and dst.stat().st_size == int(length):
                return True
            with atomic_write(dst) as tmp, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f, CHUNK)
                got = f.tell()
            if length is not None and got != int(length):
                dst.unlink(missing_ok=True)
                raise ShardError(f"{url}: got {got} of {length} bytes; fetch it again (the run resumes the fetch)")
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return False
        raise ShardError(f"{url}: the server answered {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise ShardError(f"{url} cannot be fetched ({err}); check the address and the network") from None
    return True


def fetch_shards(spec: str, out: Path) -> Path:
    """Fetch the shards of a URL spec into `out`, with the held-out folder and manifest beside them; `out`."""
    urls = expand_shards(spec)
    out.mkdir(parents=True, exist_ok=True)
    for number, url in enumerate(urls):
        if not fetch(url, out / Path(url).name):
            raise ShardError(f"{url} does not exist (404); check the shard range of {spec}")
        logger.info("fetched shard %d of %d: %s", number + 1, len(urls), url)
    base = urls[0].rsplit("/", 1)[0] + "/"
    fetch(urljoin(base, MANIFEST_FILE), out / MANIFEST_FILE)
    if fetch(urljoin(base, VAL_PROMPT_FILE), out / VAL_PROMPT_FILE):
        try:
            rows = read_prompt_file(out / VAL_PROMPT_FILE)  # every path checked to stay inside `out`
        except ValueError as err:
            (out / VAL_PROMPT_FILE).unlink()
            raise ShardError(f"the server's {VAL_PROMPT_FILE}: {err}") from None
        for row in rows:
            for rel in (row["source"], row["target"]):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                if not fetch(urljoin(base, rel), out / rel):
                    raise ShardError(f"{urljoin(base, rel)} (a held-out pair of {VAL_PROMPT_FILE}) does not exist")
    return out
