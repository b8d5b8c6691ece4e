"""Screenshot of the dashboard on the demo's ledger, for docs/visibility.md.

    python scripts/docs_dashboard_demo.py [--out docs/images/dashboard-demo.png]

Runs `spendgate demo` into a temporary directory (history, live traffic, the
demo's alert rules), serves its config again, signs in with the demo's admin
key in headless Debian Chromium (/usr/bin/chromium, driven by Playwright) and
takes a full-page screenshot. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" / "dashboard-demo.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        subprocess.run([sys.executable, "-m", "spendgate.cli", "demo", "--dir", str(demo), "--port", "0",
                        "--live-seconds", "5"], check=True, stdout=subprocess.DEVNULL)
        key = (demo / "admin-key").read_text().strip()
        port = free_port()
        env = {**os.environ, "SPENDGATE_ADMIN_KEY": key}
        server = subprocess.Popen([sys.executable, "-m", "spendgate.cli", "serve", "--config", str(demo / "spendgate.yaml"),
                                   "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{url}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{url}/dashboard?range=30d")
                page.fill("#key", key)
                page.click("button[type=submit]")
                page.wait_for_function("() => document.body.dataset.loaded", timeout=20000)
                page.wait_for_timeout(800)  # chart animations
                page.screenshot(path=args.out, full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
