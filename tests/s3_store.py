"""A local S3-compatible store for the tests: moto's server on 127.0.0.1 (a free port), started and stopped by the
test that uses it; nothing leaves the machine. Clients find it through AWS_ENDPOINT_URL, as they would find any
S3-compatible store."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_store(bucket: str, upload: Path, prefix: str = "shards") -> Iterator[str]:
    """Serve the files of `upload` (and its sub-folders) as s3://BUCKET/PREFIX/...; yields that URL."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {key: os.environ.get(key) for key in [*CREDENTIALS, "AWS_ENDPOINT_URL"]}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    S3FileSystem.clear_instance_cache()
    try:
        fs = S3FileSystem()
        fs.mkdir(bucket)
        for path in sorted(upload.rglob("*")):
            if path.is_file() and not path.name.startswith("shard_index"):
                fs.put_file(str(path), f"{bucket}/{prefix}/{path.relative_to(upload).as_posix()}")
        yield f"s3://{bucket}/{prefix}"
    finally:
        S3FileSystem.clear_instance_cache()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
