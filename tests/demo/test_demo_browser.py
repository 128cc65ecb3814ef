"""The demo in a real browser: upload a picture, type a prompt, click Run, see the gallery."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from repo_paths import ROOT

from pairs.prompt_file import VAL_PROMPT_FILE, read_prompt_file
from training.data.toy_data import write_toy_dataset

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium missing: `make browser` installs it"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "gradio_canny2image.py", "--port", str(port), "--device", "cpu"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.time() < deadline, "demo did not start in 120 s"
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_upload_prompt_run_shows_edges_and_images(server, tmp_path):
    from playwright.sync_api import sync_playwright

    # A held-out picture of the toy quickstart's kind, so the screenshot shows what that model learnt.
    toy = write_toy_dataset(tmp_path / "toy", n=2, seed=123)
    example = read_prompt_file(toy / VAL_PROMPT_FILE)[0]
    photo = toy / example["target"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server)
        page.locator("input[type=file]").first.set_input_files(str(photo))
        page.get_by_label("Prompt").fill(example["prompt"])
        page.get_by_role("button", name="Run").click()
        page.get_by_text("Seed used").wait_for(timeout=120_000)
        gallery_images = page.locator(".gallery img, [data-testid='gallery'] img, .grid-wrap img")
        gallery_images.first.wait_for(timeout=30_000)
        assert gallery_images.count() >= 2  # the edge map and one generated image
        # Gradio fades outputs (class "pending") until the event has ended: the screenshot waits for full colour.
        page.wait_for_function("() => document.querySelectorAll('.pending').length === 0", timeout=30_000)
        shot = tmp_path / "demo.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    if os.environ.get("CUTENET_UPDATE_SCREENSHOT"):  # how docs/demo.png is made
        shutil.copy(shot, ROOT / "docs" / "demo.png")
