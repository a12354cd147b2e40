"""Render a report page in headless Chromium, with the network disabled, to a PNG screenshot.

Used by the tests (the page must render offline and not be blank) and to make the README's
screenshot. Chromium is Debian's `chromium` package (`make test` installs it where apt-get is
available); the flags below keep it from reaching any network: every host name resolves to nothing
and every request goes to a closed local port, so a page that needed the network would show holes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from superweight.errors import SuperweightError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OFFLINE_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
)


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    browser = find_browser()
    if browser is None:
        raise SuperweightError("no Chromium browser found (install Debian's `chromium` package)")
    with tempfile.TemporaryDirectory(prefix="superweight-chromium-") as profile:
        cmd = [browser, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SuperweightError(f"Chromium did not finish within {timeout:g} s") from None


def screenshot(page: str | Path, png: str | Path, width: int = 1280, height: int = 2400,
               timeout: float = 120.0) -> Path:
    """Render `page` (an HTML file) offline and write a `width` x `height` PNG screenshot."""
    page, png = Path(page).resolve(), Path(png).resolve()
    if not page.is_file():
        raise SuperweightError(f"no page at {str(page)!r}")
    png.parent.mkdir(parents=True, exist_ok=True)
    done = _run([f"--screenshot={png}", f"--window-size={width},{height}", "--hide-scrollbars",
                 page.as_uri()], timeout)
    if not png.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SuperweightError(f"Chromium wrote no screenshot: {tail}")
    return png


def dump_dom(page: str | Path, timeout: float = 120.0) -> str:
    """The page's DOM after loading offline, as Chromium serialises it."""
    page = Path(page).resolve()
    return _run(["--dump-dom", page.as_uri()], timeout).stdout
