"""``clip4vla-search serve`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``), driven by Selenium, against the server ``serve`` runs on a free localhost
port over a tiny generated index. Types a query, checks the grid and the scores, clicks the first result and
checks that the player starts at the matched window (``currentTime``) and plays; the first screen
browses the files and offers example queries; the player follows a sound query; the page works at
``127.0.0.1`` and ``localhost`` and is refused under another name that resolves to this machine
(DNS rebinding; Chromium maps ``attacker.example`` to 127.0.0.1, so no DNS is asked).

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
from clip4vla.serve.app import create_app, http_server, listen
from clip4vla.serve.library import Library
from audio_media import write_sound
from media_factory import write_video

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                  "--window-size=1280,900", "--host-resolver-rules=MAP attacker.example 127.0.0.1")


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
def driver():
    driver, profile = browser_or_skip()
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, micro_export):
    """The page over a tiny index (a 14-s video of 4 windows, a short one, a sound file), served by
    the server ``serve`` runs, on a free 127.0.0.1 port in a thread."""
    folder = tmp_path_factory.mktemp("browser") / "videos"
    folder.mkdir()
    write_video(folder / "long.mp4", seconds=14.0, fps=5)
    write_video(folder / "short.mp4", seconds=3.0, fps=10)
    t = np.arange(2 * 16000) / 16000
    write_sound(folder / "tone.wav", (0.2 * np.sin(2 * np.pi * 500 * t)).astype(np.float32))
    assert main(["index", str(folder), "--model", str(micro_export), "--no-progress"]) == 0
    library = Library(folder, folder / DEFAULT_NAME)
    app = create_app(library)
    app.config["library_folder"] = str(folder)
    httpd = http_server(app, listen("127.0.0.1", 0))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.port}/", app
    httpd.shutdown()
    httpd.server_close()


def test_type_a_query_click_the_first_result_and_it_plays_from_the_matched_window(server, driver):
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

    wait = WebDriverWait(driver, 30)
    driver.get(address)
    wait.until(lambda d: "files" in d.find_element(By.ID, "status").text)
    assert "3 files (6 windows)" in driver.find_element(By.ID, "status").text
    driver.find_element(By.CSS_SELECTOR, "#modality option[value='v']").click()
    driver.find_element(By.ID, "q").clear()
    box = driver.find_element(By.ID, "q")
    box.send_keys(query)
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    assert 1 <= len(cards) <= 3
    first = cards[0]
    assert "long.mp4" in first.text and f"{top['score']:.3f}" in first.text
    assert f"{top['start']:.1f} s–{top['end']:.1f} s" in first.text
    assert f"vision{top['vision']:.3f}" in first.text.replace("\n", "")  # the parts of the score
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
    # beside the player: the file's windows with their scores, the matched one marked, the playing one lit
    windows = driver.find_elements(By.CSS_SELECTOR, "#now-windows li")
    assert len(windows) == 4 and "best" in windows[top["window"]].get_attribute("class")
    for item, w in zip(windows, top["per_window"]):
        assert f"{w['start']:.1f} s–{w['end']:.1f} s" in item.text and f"{w['score']:.3f}" in item.text
    wait.until(lambda d: "now" in d.find_elements(By.CSS_SELECTOR, "#now-windows li")[top["window"]].get_attribute("class"))
    assert "the best of 4 windows" in driver.find_element(By.ID, "now-span").text
    # clicking a window plays from there
    windows[0].click()
    wait.until(lambda d: d.execute_script("const v = document.getElementById('player-video'); return v.currentTime < 3.5"))


def test_the_first_screen_offers_examples_and_browses_the_files(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    address, app = server
    wait = WebDriverWait(driver, 30)
    driver.get(address)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
    newest = app.test_client().get("/api/files").get_json()["results"]
    assert "browse: 3 indexed files, newest first" in driver.find_element(By.ID, "results-title").text
    names = [c.find_element(By.CLASS_NAME, "name").text for c in driver.find_elements(By.CSS_SELECTOR, "#results .card")]
    assert names == [f"{i + 1}. {Path(r['path']).name}" for i, r in enumerate(newest)]
    assert "whole file · 3.0 s" in driver.find_element(By.CSS_SELECTOR, "#results").text  # short.mp4: one window
    examples = driver.find_elements(By.CSS_SELECTOR, "#examples .example")
    assert len(examples) >= 3
    text = examples[0].text
    examples[0].click()
    wait.until(lambda d: "results for" in d.find_element(By.ID, "results-title").text)
    assert driver.find_element(By.ID, "q").get_attribute("value") == text
    legend = driver.find_element(By.ID, "legend")
    assert legend.is_displayed() and "cosine similarity" in legend.text and "vision" in legend.text
    rows = app.test_client().get("/api/search", query_string={"q": text, "modality": "av", "k": 12}).get_json()["results"]
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == len(rows) == 3
    number = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731  (tone.wav has no pictures)
    for card, row in zip(cards, rows):
        shown = card.text.replace("\n", "")
        assert f"{row['score']:.3f}" in shown and f"vision{number(row['vision'])}" in shown
        assert f"sound{number(row['sound'])}" in shown


def test_the_player_follows_a_sound_query(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    address, app = server
    wait = WebDriverWait(driver, 30)
    driver.get(address)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
    driver.find_elements(By.CSS_SELECTOR, "#results .card")[0].click()  # the player open on a browsed file
    wait.until(lambda d: d.find_element(By.ID, "player").is_displayed())
    driver.find_element(By.CSS_SELECTOR, "#modality option[value='a']").click()
    assert "matched against the files' sound" in driver.find_element(By.ID, "sound-mode").text
    tone = Path(app.config["library_folder"]) / "tone.wav"
    driver.find_element(By.ID, "sound").send_keys(str(tone))
    wait.until(lambda d: "results for the sound of tone.wav" in d.find_element(By.ID, "results-title").text)
    with tone.open("rb") as fh:
        rows = app.test_client().post("/api/sound", data={"file": (fh, "tone.wav"), "modality": "a", "k": "12"}).get_json()["results"]
    first = rows[0]
    assert Path(first["path"]).name == "tone.wav"
    wait.until(lambda d: d.find_element(By.ID, "now-name").text == "tone.wav")
    assert driver.execute_script("return document.getElementById('player-audio').src").endswith(f"/media/{first['id']}")
    assert not driver.find_element(By.ID, "player-video").is_displayed()
    assert "whole file" in driver.find_element(By.ID, "now-span").text  # a 2-s sound: one window, no pretend highlight
    thumbs = [i.get_attribute("src") for i in driver.find_elements(By.CSS_SELECTOR, "#results .card img")]
    assert thumbs and all(t.endswith("?show=sound") for t in thumbs)  # ranked by sound: spectrograms
    driver.find_element(By.ID, "close").click()
    assert not driver.find_element(By.ID, "player").is_displayed()


def test_without_an_index_the_page_shows_the_command_to_run(tmp_path, micro_export, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", seconds=1.0)
    httpd = http_server(create_app(Library(folder, folder / DEFAULT_NAME, micro_export)), listen("127.0.0.1", 0))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{httpd.port}/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "notice").is_displayed())
        notice = driver.find_element(By.ID, "notice")
        assert "`" not in notice.text and "no index at" in notice.text
        command = notice.find_element(By.CSS_SELECTOR, "code.command").text
        assert command == f"clip4vla-search index {folder} --model {micro_export}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_page_answers_to_its_own_names_only(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    address, _ = server
    port = address.rstrip("/").rsplit(":", 1)[1]
    wait = WebDriverWait(driver, 30)
    for name in ("127.0.0.1", "localhost"):
        driver.get(f"http://{name}:{port}/")
        wait.until(lambda d: "files" in d.find_element(By.ID, "status").text)
        assert "3 files (6 windows)" in driver.find_element(By.ID, "status").text
    driver.get(f"http://attacker.example:{port}/api/status")  # what a rebinding page's script would fetch
    text = driver.find_element(By.TAG_NAME, "body").text
    assert "this server answers to 127.0.0.1, [::1], localhost, not to 'attacker.example:" in text
    assert "files" not in text and "model" not in text
