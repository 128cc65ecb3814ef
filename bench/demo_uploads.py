"""Peak memory of the demo server under concurrent adversarial uploads: pictures that claim far more pixels than
their files hold (a 169-megapixel deflate TIFF of under 1 MB, a PNG header claiming 900 megapixels) and large
pictures just under the cap, each sent to the page's preview and to its Run button at once.

    .venv/bin/python -m bench.demo_uploads --uploads 20

It starts `gradio_canny2image.py` on the toy model on a local port, samples the server's resident set (with any
child processes) every 20 ms, and prints it idle, at its peak, and the difference. Loopback traffic only.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from PIL import Image

from annotator.canny import DEFAULT_THRESHOLDS
from ldm.flags import HelpFormatter

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
EDGES = (DEFAULT_THRESHOLDS.low, DEFAULT_THRESHOLDS.high)  # the page's threshold sliders


def adversarial_files(folder: Path) -> list[Path]:
    """Small files that decode to huge pictures, and big pictures the demo accepts (just under its cap)."""
    from demo.canny2image import MAX_INPUT_PIXELS

    tiff = folder / "deflate_169mp.tif"
    Image.new("L", (13_000, 13_000)).save(tiff, compression="tiff_adobe_deflate")
    bomb = folder / "header_900mp.png"
    bomb.write_bytes(_png_header(30_000, 30_000))
    side = int(MAX_INPUT_PIXELS**0.5) - 8
    big_png, big_jpg = folder / "under_cap.png", folder / "under_cap.jpg"
    Image.new("RGB", (side, side), (30, 120, 200)).save(big_png)
    Image.new("RGB", (side, side), (200, 120, 30)).save(big_jpg, quality=90)
    return [tiff, bomb, big_png, big_jpg]


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and its children."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(uploads: int, *, timeout: float) -> dict[str, float]:
    from gradio_client import handle_file

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "gradio_canny2image.py"), "--port", str(port), "--device", "cpu"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    process = psutil.Process(server.pid)
    try:
        client = _connect(f"http://127.0.0.1:{port}/", server, timeout=timeout)
        time.sleep(2)
        idle = max(tree_rss(process) for _ in range(10) if not time.sleep(0.05))
        peak, stop = [idle], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], tree_rss(process))
                time.sleep(0.02)

        with tempfile.TemporaryDirectory() as tmp:
            files = adversarial_files(Path(tmp))
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=uploads) as pool:
                jobs = [pool.submit(_send, client, handle_file(str(files[i % len(files)])), i) for i in range(uploads)]
                outcomes = [job.result(timeout=timeout) for job in jobs]
            seconds = time.perf_counter() - start
            stop.set()
            sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "idle_mb": idle / MB,
        "peak_mb": peak[0] / MB,
        "over_idle_mb": (peak[0] - idle) / MB,
        "refused": sum(o == "refused" for o in outcomes),
        "answered": sum(o == "answered" for o in outcomes),
        "seconds": seconds,
    }


def _connect(url: str, server: subprocess.Popen, *, timeout: float):
    from gradio_client import Client

    deadline = time.time() + timeout
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the demo server exited with code {server.returncode}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not up yet: gradio_client raises several kinds while the server starts
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _send(client, upload, i: int) -> str:
    """Upload i goes to the preview (even i) or to Run (odd i, one sample at the model's size, two DDIM steps)."""
    try:
        if i % 2 == 0:
            client.predict(upload, api_name="/show_upload")
        else:
            client.predict(upload, "", 1, 64, 1.0, False, *EDGES, 2, 9.0, 0, 0.0, "", "", api_name="/process")
    except Exception as err:  # the page's gr.Error arrives as an AppError
        return "refused" if "pixels" in str(err) or "picture" in str(err) else f"failed: {err}"
    return "answered"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--uploads", type=int, default=20, help="concurrent uploads")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for the server and the answers")
    args = p.parse_args(argv)
    r = run(args.uploads, timeout=args.timeout)
    print(
        f"{args.uploads} concurrent uploads: idle {r['idle_mb']:.0f} MB, peak {r['peak_mb']:.0f} MB, "
        f"{r['over_idle_mb']:.0f} MB over idle; {r['refused']} refused, {r['answered']} answered "
        f"in {r['seconds']:.1f} s"
    )
    return 0 if r["refused"] + r["answered"] == args.uploads else 1


if __name__ == "__main__":
    sys.exit(main())
