"""The README's picture: the search page of `search-cli serve` over a real index, after
searching 夏季连衣裙 and clicking the second result, in Debian's chromium.

    python docs/screenshot.py online-loop/index docs/search-page.png
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx
from playwright.sync_api import sync_playwright


def main(index: str, out: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    feedback = tempfile.mkdtemp(prefix="screenshot-feedback-")
    server = subprocess.Popen(
        ["search-cli", "serve", "--index", index, "--port", str(port), "--feedback-dir", feedback],
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{url}/")
            page.fill("#q", "夏季连衣裙")
            page.press("#q", "Enter")
            page.wait_for_selector(".result")
            page.locator(".result").nth(1).locator(".title").click()
            page.wait_for_selector(".result[data-click-state=recorded]")
            page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
