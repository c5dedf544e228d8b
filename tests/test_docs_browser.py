"""The built documentation site, opened in a real headless browser.

Builds the site (``mkdocs build --strict``) into a temporary folder, or uses ``HYBRID_PG_SITE`` when it
names an already built one, serves it on 127.0.0.1 and opens the landing page, the HybridPG page and a
results page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium).
Each page must render its title and content, every image on it must have loaded (a decoded image with
a width), and the browser's console must hold no error (a missing file, a script error, a request to
the network: the site must work offline).

Skipped when Chromium, chromedriver, selenium or mkdocs is missing (``pip install -e ".[docs]"`` and
``apt-get install chromium chromium-driver``); ``.ci/run`` runs it in its own step.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
#: (page, text its main heading must contain)
PAGES = [
    ("index.html", "hybrid_pg"),
    ("hybridpg.html", "HybridPG"),
    ("benchmarks/mujoco.html", "MuJoCo"),
]

pytestmark = [
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()), reason="needs Debian's chromium and chromium-driver"),
    pytest.mark.timeout(300),
]
webdriver = pytest.importorskip("selenium.webdriver", reason='needs selenium (pip install -e ".[docs]")')
pytest.importorskip("mkdocs", reason='needs mkdocs (pip install -e ".[docs]")')


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    built = os.environ.get("HYBRID_PG_SITE")
    if built:
        return Path(built)
    out = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)], cwd=ROOT, check=True, timeout=240)
    return out


@pytest.fixture(scope="module")
def server(site):
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


IMAGES_LOADED = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
Promise.all(images.map(img => img.complete ? null : new Promise(r => { img.onload = img.onerror = r; })))
  .then(() => done(images.map(img => [img.getAttribute('src'), img.complete && img.naturalWidth > 0])));
"""


@pytest.mark.parametrize("page,heading", PAGES)
def test_page_renders_with_its_images_and_no_console_error(server, browser, page, heading):
    from selenium.webdriver.common.by import By

    browser.get_log("browser")  # drop what earlier pages left
    browser.get(f"{server}/{page}")
    title = browser.find_element(By.CSS_SELECTOR, "article h1").text
    assert heading in title, f"{page}: heading {title!r}"
    assert len(browser.find_element(By.CSS_SELECTOR, "article").text) > 500, f"{page}: almost no content"
    images = browser.execute_async_script(IMAGES_LOADED)
    assert images, f"{page}: no image"
    broken = [src for src, ok in images if not ok]
    assert not broken, f"{page}: images that did not load: {broken}"
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"{page}: console errors: {errors}"
