"""The Streamlit demo in a real browser: `streamlit run app.py` on a free localhost port, headless Chromium
(Debian's chromium + chromium-driver, driven by selenium) opens every page, clicks Generate on Faces and Digits,
checks that the images render and that no page shows a traceback, and takes a screenshot of each page.

Skipped unless /usr/bin/chromium (or `chromium` on PATH), chromedriver and selenium are all present; .ci/run
installs the first two. Screenshots go to a temporary folder, or to $DLCV_SCREENSHOTS:

    DLCV_SCREENSHOTS=docs/screenshots python -m pytest tests/test_browser.py

With $DLCV_SCREENSHOTS set the app runs on the shipped checkpoints/ only; otherwise tiny random stand-ins fill in
face models missing from checkpoints/, so the Generate path is always exercised.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium + chromium-driver")
PAGES = {"overview": "", "faces": "faces", "digits": "digits", "adaptation": "adaptation", "results": "results"}
IMAGES_JS = ("return Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img'))"
             ".filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_folder(tmp_path: Path) -> Path:
    """The shipped checkpoints, plus tiny random face models for those not shipped (unless taking screenshots)."""
    shipped = ROOT / "checkpoints"
    if os.environ.get("DLCV_SCREENSHOTS"):
        return shipped
    from dlcv import checkpoint
    from dlcv.models import build_model
    from dlcv.models.gan import GeneratorConfig

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for existing in shipped.iterdir() if shipped.is_dir() else []:
        (folder / existing.name).symlink_to(existing)
    for name, classes in (("dcgan_faces", 0), ("sngan_faces", 0), ("acgan_faces", 2)):
        if not (folder / name).exists():
            checkpoint.save(build_model("generator", GeneratorConfig(z_dim=8, width=4, num_classes=classes)), folder / name)
    return folder


@pytest.fixture(scope="module")
def streamlit_url(tmp_path_factory):
    """`streamlit run app.py` on a free localhost port; yields its URL once /_stcore/health answers ok."""
    tmp_path = tmp_path_factory.mktemp("browser")
    port = free_port()
    env = {**os.environ, "DLCV_CHECKPOINTS": str(checkpoint_folder(tmp_path)), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless=true",
               f"--server.port={port}", "--server.address=127.0.0.1", "--browser.gatherUsageStats=false",
               "--server.fileWatcherType=none", "--client.toolbarMode=minimal"]
    log = open(tmp_path / "streamlit.log", "w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start: {(tmp_path / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1600", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DLCV_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait(driver, condition, timeout: float = 60, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition, message=what)


def open_page(driver, url: str, path: str, title: str) -> None:
    """Load a page and wait until its title is shown and the script has finished running."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/{path}")
    wait(driver, lambda d: any(title in h.text for h in d.find_elements(By.CSS_SELECTOR, "h1")),
         what=f"the {title!r} page did not render")
    settle(driver)


def settle(driver, timeout: float = 120) -> None:
    """Wait for the app to stop running (the status widget's 'Running...' / stop button disappears)."""
    from selenium.webdriver.common.by import By

    time.sleep(0.5)
    wait(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'), timeout,
         "the app kept running")
    assert not driver.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), "a page shows a traceback"


def click_generate(driver, minimum: int) -> int:
    """Click the visible Generate button and wait for at least `minimum` rendered images; returns the count."""
    from selenium.webdriver.common.by import By

    buttons = [b for b in driver.find_elements(By.XPATH, "//button[.//p[normalize-space()='Generate']]")
               if b.is_displayed()]
    assert buttons, "no visible Generate button"
    buttons[0].click()
    wait(driver, lambda d: d.execute_script(IMAGES_JS) >= minimum, 120, f"fewer than {minimum} images rendered")
    settle(driver)
    return driver.execute_script(IMAGES_JS)


def test_pages_render_and_generate(browser, streamlit_url, screenshots):  # browser first: it may skip
    from selenium.webdriver.common.by import By

    titles = {"overview": "dlcv", "faces": "Faces", "digits": "Digits", "adaptation": "Domain adaptation",
              "results": "Results"}
    for page, path in PAGES.items():
        open_page(browser, streamlit_url, path, titles[page])
        if page == "faces":
            if browser.find_elements(By.XPATH, "//button[.//p[normalize-space()='Generate']]"):
                assert click_generate(browser, minimum=16) >= 16
            else:  # screenshot mode before the face checkpoints exist: the notes must say so
                assert "dcgan_faces" in browser.find_element(By.TAG_NAME, "body").text
        if page == "digits":
            assert click_generate(browser, minimum=10) >= 10
        if os.environ.get("DLCV_SCREENSHOTS"):  # charts and lazy images draw after the script has finished
            time.sleep(3)
        assert browser.save_screenshot(str(screenshots / f"{page}.png"))
        assert (screenshots / f"{page}.png").stat().st_size > 10_000
