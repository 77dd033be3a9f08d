"""``clip4vla-search serve`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``), driven by Selenium, against a server on a free localhost port over a tiny
generated index. Types a query, checks the grid, clicks the first result and checks that the
player starts at the matched window (``currentTime``) and plays.

Nothing is downloaded: the driver is given explicitly, so Selenium Manager never runs. Without
the two binaries (or Selenium) the test skips and says which is missing; ``.ci/run`` installs them
with apt-get where it can.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask")

from clip4vla.search import DEFAULT_NAME, main
from clip4vla.serve.app import create_app
from clip4vla.serve.library import Library
from audio_media import write_sound
from media_factory import write_video

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                  "--window-size=1280,900")


def browser_or_skip():
    """A headless Chromium WebDriver, or a skip that names what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.is_file():
            pytest.skip(f"{binary} not found: install Debian's {package} package (.ci/run does, where apt-get can)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="clip4vla-chromium-")
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver, profile


@pytest.fixture(scope="module")
def server(tmp_path_factory, micro_export):
    """The page over a tiny index (a 14-s video of 4 windows, a short one, a sound file), served by
    werkzeug on a free 127.0.0.1 port in a thread."""
    from werkzeug.serving import make_server

    folder = tmp_path_factory.mktemp("browser") / "videos"
    folder.mkdir()
    write_video(folder / "long.mp4", seconds=14.0, fps=5)
    write_video(folder / "short.mp4", seconds=3.0, fps=10)
    t = np.arange(2 * 16000) / 16000
    write_sound(folder / "tone.wav", (0.2 * np.sin(2 * np.pi * 500 * t)).astype(np.float32))
    assert main(["index", str(folder), "--model", str(micro_export), "--no-progress"]) == 0
    library = Library(folder, folder / DEFAULT_NAME)
    app = create_app(library)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/", app
    httpd.shutdown()
    httpd.server_close()


def test_type_a_query_click_the_first_result_and_it_plays_from_the_matched_window(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    address, app = server
    # a query whose best match is a later window of the long video, so "starts at the window" is
    # not the same as "starts at 0" (the micro model is seeded: the choice is deterministic)
    client = app.test_client()
    query, top = None, None
    for text in ("a red circle", "a siren wails", "a dog barks", "green bars moving", "rain on a roof", "a loud bell",
                 "a blue square", "someone speaks", "a small shape", "music", "a car", "birds sing"):
        rows = client.get("/api/search", query_string={"q": text, "modality": "v", "k": 3}).get_json()["results"]
        if rows and rows[0]["path"].endswith("long.mp4") and rows[0]["start"] > 0:
            query, top = text, rows[0]
            break
    assert query is not None, "no candidate query ranks a later window of long.mp4 first"

    driver, profile = browser_or_skip()
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(address)
        wait.until(lambda d: "files" in d.find_element(By.ID, "status").text)
        assert "3 files (6 windows)" in driver.find_element(By.ID, "status").text
        driver.find_element(By.CSS_SELECTOR, "#modality option[value='v']").click()
        box = driver.find_element(By.ID, "q")
        box.send_keys(query)
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        assert 1 <= len(cards) <= 3
        first = cards[0]
        assert "long.mp4" in first.text and f"{top['score']:.3f}" in first.text
        assert f"{top['start']:.1f} s–{top['end']:.1f} s" in first.text
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('#results .card img'); return i.complete && i.naturalWidth > 0"))
        # record where the player is when it has sought and when it starts playing
        driver.execute_script("""
            const v = document.getElementById('player-video');
            window.seenAt = {};
            v.addEventListener('seeked', () => { window.seenAt.seeked ??= v.currentTime; });
            v.addEventListener('playing', () => { window.seenAt.playing ??= v.currentTime; });""")
        first.click()
        wait.until(lambda d: d.execute_script("return window.seenAt.playing !== undefined"))
        seen = driver.execute_script("return window.seenAt")
        assert seen["seeked"] == pytest.approx(top["start"], abs=0.01)
        assert seen["playing"] == pytest.approx(top["start"], abs=0.25)
        # it plays: time moves on from the window's start
        wait.until(lambda d: d.execute_script(
            f"const v = document.getElementById('player-video'); return !v.paused && v.currentTime > {top['start'] + 0.3}"))
        assert driver.execute_script("return document.getElementById('player-video').src").endswith(f"/media/{top['id']}")
        highlight = driver.execute_script("return document.getElementById('timeline-window').style.left")
        assert float(highlight.rstrip("%")) == pytest.approx(100 * top["start"] / 14.0, abs=1.0)
        assert "matched" in driver.find_element(By.ID, "now-span").text
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
