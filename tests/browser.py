"""Debian's headless Chromium driven by Selenium, for tests that check a web UI in a real browser.

`make test` installs the packages (chromium, chromium-driver); elsewhere the tests using this skip.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
# Flags that keep Chromium off the network except for the page it is sent to.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: `apt-get install chromium chromium-driver` (make test does)")
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")


@contextlib.contextmanager
def chromium(profile: Path, width: int = 1600, height: int = 1000):
    """A headless Chromium (fresh profile in ``profile``) under chromedriver; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2)


def text_xpath(text: str, tag: str = "*") -> str:
    """XPath of the innermost ``tag`` elements whose text (their descendants' included) is ``text``."""
    same = f"normalize-space()='{text}'"
    return f"//{tag}[{same} and not(.//{tag}[{same}])]"


def artifacts_dir() -> Path:
    """Where tests leave files for a person to look at (screenshots): kept after the run."""
    path = Path(os.environ.get("GUIDE_RAY_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(driver, path: Path) -> Path:
    """Save the page as PNG at ``path`` and check it is a real, non-blank image of the window."""
    import numpy as np
    from PIL import Image

    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = Image.open(io.BytesIO(png)).convert("L")
    size = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    assert image.size == tuple(size), (image.size, size)
    assert np.asarray(image).std() > 10, f"{path} is nearly blank"
    return path
