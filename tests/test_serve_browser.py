"""The page at / in a real headless Chromium (Debian's chromium + chromium-driver, installed
by `make test`), against a real `clipsearch serve` process: type a query, see thumbnails
that really loaded with a red circle first, open one, "more like this", back button."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serve_support import REPO, indexed_library, png_bytes, start_server

SCREENSHOTS = REPO / ".screenshots"  # git-ignored
TOKEN = "browser-test-token-0123456789"
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMEDRIVER is None or shutil.which("chromium") is None,
    reason="needs Debian's chromium and chromium-driver (`make test` installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def loaded_thumbnails(driver) -> list[dict]:
    return driver.execute_script("""
        return [...document.querySelectorAll('#grid img')].map(img => ({
            src: img.getAttribute('src'), alt: img.alt, width: img.naturalWidth,
            done: img.complete}));""")


def test_search_page_in_a_real_browser(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    lib_dir = indexed_library(tmp_path)
    proc, base = start_server(lib_dir, "--token", TOKEN)
    wait = WebDriverWait(browser, 30)
    try:
        browser.get(f"{base}/?token={TOKEN}")  # kept in a cookie, dropped from the URL
        wait.until(lambda d: d.current_url == base + "/")
        box = wait.until(ec.element_to_be_clickable((By.ID, "q")))
        wait.until(lambda d: "24 photos" in d.find_element(By.ID, "status-text").text)
        box.send_keys("a red circle", Keys.ENTER)
        wait.until(lambda d: len(loaded_thumbnails(d)) >= 24)  # one page: every photo
        # naturalWidth > 0: the thumbnails really came back and decoded (the first rows;
        # lazy loading leaves those far below the fold for later)
        wait.until(lambda d: all(t["width"] > 0 for t in loaded_thumbnails(d)[:8]))
        thumbs = loaded_thumbnails(browser)
        assert thumbs[0]["alt"].startswith("red-circle"), thumbs[:3]
        assert browser.current_url.endswith("/?q=a+red+circle")
        SCREENSHOTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "search.png"))

        browser.find_element(By.CSS_SELECTOR, "#grid .card").click()  # the large view
        wait.until(lambda d: d.find_element(By.ID, "viewer").get_attribute("open") is not None)
        wait.until(lambda d: d.execute_script(
            "return document.getElementById('viewer-img').naturalWidth") > 0)
        assert browser.find_element(By.ID, "viewer-name").text.startswith("red-circle")
        wait.until(lambda d: "B" in d.find_element(By.ID, "viewer-size").text)  # bytes shown
        browser.save_screenshot(str(SCREENSHOTS / "viewer.png"))

        browser.find_element(By.ID, "more").click()  # more like this
        wait.until(lambda d: "similar=" in d.current_url)
        wait.until(lambda d: loaded_thumbnails(d) and loaded_thumbnails(d)[0]["width"] > 0)
        similar = [t["alt"] for t in loaded_thumbnails(browser)]
        assert similar and not any(a.startswith("red-circle") for a in similar[:1])
        assert "photos like red-circle" in browser.find_element(By.ID, "summary").text
        browser.save_screenshot(str(SCREENSHOTS / "similar.png"))

        browser.back()  # the query comes back from the URL
        wait.until(lambda d: d.current_url.endswith("/?q=a+red+circle"))
        wait.until(lambda d: loaded_thumbnails(d)
                   and loaded_thumbnails(d)[0]["alt"].startswith("red-circle"))
        assert browser.find_element(By.ID, "q").get_attribute("value") == "a red circle"

        # search by an image (the file picker; drop and paste send the same request)
        probe = tmp_path / "probe.png"
        probe.write_bytes(png_bytes("yellow", 96))
        browser.find_element(By.ID, "image").send_keys(str(probe))
        wait.until(lambda d: "like your image" in d.find_element(By.ID, "summary").text)
        wait.until(lambda d: loaded_thumbnails(d) and loaded_thumbnails(d)[0]["width"] > 0)
        assert loaded_thumbnails(browser)[0]["alt"].startswith("yellow")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert Path(SCREENSHOTS / "search.png").stat().st_size > 10_000


def test_progress_bar_of_a_run_started_from_the_page(tmp_path, browser):
    """With several serving processes (--workers 2) the page's requests and its event
    stream may land on any of them: the bar still follows the one run to its end."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.helpers import draw_photos

    lib_dir = indexed_library(tmp_path)
    draw_photos(lib_dir.parent / "photos" / "new", per_pair=10, seed=6, size=256)
    proc, base = start_server(lib_dir, "--token", TOKEN, "--workers", "2")
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    try:
        browser.get(f"{base}/?token={TOKEN}")
        wait.until(lambda d: "24 photos" in d.find_element(By.ID, "status-text").text)
        browser.find_element(By.ID, "reindex").click()
        wait.until(lambda d: d.find_element(By.ID, "progress").is_displayed()
                   and d.find_element(By.ID, "status-text").text.startswith("Indexing")
                   and d.find_element(By.ID, "progress-bar").value_of_css_property("width")
                   not in ("0px", "auto"))
        wait.until(lambda d: "264 photos" in d.find_element(By.ID, "status-text").text)
        assert not browser.find_element(By.ID, "progress").is_displayed()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
