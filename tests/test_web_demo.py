"""tools/web_demo.py: a real browser (headless Chromium) uploads a photo and gets the Python API's
segmentation; requests of several users at once keep to their own vocabulary; bad requests get a
message that says what to change."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, REPO, TINY_CONFIG, TINY_WEIGHTS, require_fixtures, skip_outside_ci
from cliptrase_d2.api import Segmenter
from cliptrase_d2.visualization import legend_entries, overlay, with_legend

sys.path.insert(0, os.path.join(REPO, "tools"))
import web_demo  # noqa: E402

PHOTO = os.path.join(FIXTURES, "images", "coffee.png")
# a photo and vocabulary the tiny CLIP splits into four classes
VOC_PHOTO = os.path.join(FIXTURES, "images", "vocsample.png")
VOCABULARY, BACKGROUND = "person, dog, car, bicycle", "sky, road"


def _expected(tiny_opts, vocabulary=VOCABULARY, background=BACKGROUND, image=VOC_PHOTO):
    """What the page should show: the Python API's result for the same input."""
    segmenter = Segmenter.from_config(web_demo.PROTOCOL_CONFIGS["standard"], tiny_opts)
    words = [w.strip() for w in background.split(",") if w.strip()]
    result = segmenter.segment(
        image, [n.strip() for n in vocabulary.split(",")], background=words, scores=False
    )
    entries = legend_entries(result.labels, result.class_names)
    shown = np.asarray(with_legend(overlay(result.image, result.labels), entries))
    return result, shown, [[name, f"{share * 100:.2f}"] for _, name, share in entries]


def test_parse_vocabulary():
    spec, background = web_demo.parse_vocabulary(" cup, table\nsaucer ", "wall, sky", 10)
    assert spec == ["cup", "table", "saucer"] and background == ["wall", "sky"]
    assert web_demo.parse_vocabulary("VOC21", "", 30) == ("voc21", [])
    # a path typed into the page is a class name: the server never reads its files
    assert web_demo.parse_vocabulary(os.path.join(FIXTURES, "README.md"), "", 10)[0] == [
        os.path.join(FIXTURES, "README.md")
    ]
    for text, background, message in [
        ("", "", "at least one class name"),
        (" , ,", "", "at least one class name"),
        ("cup, Cup", "", "duplicate name"),
        ("x" * 101, "", "at most 100"),
        ("voc21", "", "at most 20"),
        ("background, cup", "wall", "background"),
    ]:
        with pytest.raises(ValueError, match=message):
            web_demo.parse_vocabulary(text, background, 20)


def test_check_image(tmp_path):
    require_fixtures()
    assert web_demo.check_image(PHOTO, web_demo.Limits()) == (600, 400)
    with pytest.raises(ValueError, match="Upload a photo"):
        web_demo.check_image(None, web_demo.Limits())
    with pytest.raises(
        ValueError, match=r"600 x 400 pixels \(0.2 megapixels\); this server accepts up to 0"
    ):
        web_demo.check_image(PHOTO, web_demo.Limits(max_megapixels=0.1))
    with pytest.raises(ValueError, match="MB; this server accepts up to 0 MB"):
        web_demo.check_image(PHOTO, web_demo.Limits(max_upload_mb=0.01))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        web_demo.check_image(str(text), web_demo.Limits())


def test_simultaneous_users_keep_their_own_vocabulary(tiny_opts):
    """Two users' requests interleaved on one model: each gets exactly its sequential result."""
    require_fixtures()
    models = web_demo.Models("", [*tiny_opts, "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224"])
    limits, outputs = web_demo.Limits(), web_demo.Outputs()
    requests = [
        (PHOTO, "cup, table", ""),
        (os.path.join(FIXTURES, "images", "chelsea.png"), "cat, grass, wall", "sky"),
        (PHOTO, "spoon, saucer, tablecloth", "wall"),
    ] * 2

    def run(request):
        shown, shares, labels = web_demo.segment_request(
            models, limits, outputs, *request, "cliptrase", "standard"
        )
        return np.asarray(shown), shares, np.array(Image.open(labels))

    sequential = [run(request) for request in requests[:3]] * 2
    results = [None] * len(requests)

    def worker(index):
        results[index] = run(requests[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for (shown, shares, labels), (want_shown, want_shares, want_labels) in zip(results, sequential):
        assert shares == want_shares
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(shown, want_shown)
    assert {name for _, shares, _ in results[1::3] for name, _ in shares} <= {
        "cat",
        "grass",
        "wall",
        "background",
    }


def _require_web_packages():
    import importlib.util

    if not (importlib.util.find_spec("gradio") and importlib.util.find_spec("selenium")):
        skip_outside_ci(
            "Gradio or Selenium is not installed: "
            "python -m pip install --no-deps -r requirements/web.txt"
        )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The web demo on loopback with the tiny CLIP (a subprocess); yields its URL."""
    require_fixtures()
    _require_web_packages()
    port = _free_port()
    cache = str(tmp_path_factory.mktemp("web_text_cache"))
    log = tmp_path_factory.mktemp("web_log") / "server.log"
    command = [
        sys.executable,
        os.path.join(REPO, "tools", "web_demo.py"),
        "--port",
        str(port),
        "--opts",
        "MODEL.CLIPTRASE.CLIP_MODEL",
        TINY_CONFIG,
        "MODEL.WEIGHTS",
        TINY_WEIGHTS,
        "MODEL.CLIPTRASE.TEXT_CACHE_DIR",
        cache,
        "MODEL.DEVICE",
        "cpu",
    ]
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio"))
    )
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the web demo did not start: {log.read_text()[-3000:]}")
            time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        skip_outside_ci(
            "Chromium and its driver are not installed: run tools/install_browser.sh (as root)"
        )
    _require_web_packages()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def _wait(browser, css, timeout=300):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return Image.open(BytesIO(response.read()))


def _text_box(browser, elem_id):
    return _wait(browser, f"#{elem_id} textarea, #{elem_id} input")


def test_browser_upload_segment_and_compare_with_the_api(server, browser, tiny_opts):
    from selenium.webdriver.common.by import By

    result, shown, shares = _expected(tiny_opts)
    assert len(shares) >= 2, "the check needs a photo the tiny CLIP splits into several classes"
    browser.get(server)
    assert "test-sized CLIP" in _wait(browser, "#weights").text  # says which weights it runs
    # Chromium takes canonical paths only
    _wait(browser, "#photo input[type=file]").send_keys(os.path.realpath(VOC_PHOTO))
    _text_box(browser, "vocabulary").send_keys(VOCABULARY)
    _text_box(browser, "background").send_keys(BACKGROUND)
    _wait(browser, "#photo img")  # the upload arrived
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    link = _wait(browser, "#labels a[download]").get_attribute("href")
    np.testing.assert_array_equal(np.array(_fetch(link)), result.labels)
    rendered = _wait(browser, "#overlay img").get_attribute("src")
    np.testing.assert_array_equal(np.asarray(_fetch(rendered).convert("RGB")), shown)
    deadline = time.monotonic() + 60
    while True:  # the table's rows may render a moment after the image
        texts = [
            cell.get_attribute("textContent").strip()
            for cell in browser.find_elements(By.CSS_SELECTOR, "#shares td")
        ]
        texts = [text for text in texts if text]
        rows = [texts[i : i + 2] for i in range(0, len(texts), 2)]
        if rows == shares or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert rows == shares


def test_browser_empty_vocabulary_shows_the_error(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server)
    _wait(browser, "#photo input[type=file]").send_keys(os.path.realpath(PHOTO))
    _wait(browser, "#photo img")
    box = _text_box(browser, "vocabulary")
    box.send_keys(" , ")
    box.send_keys(Keys.TAB)
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    _wait(browser, ".toast-body", timeout=120)
    deadline = time.monotonic() + 60
    while True:  # the toast's text may fill in a moment after the toast appears
        shown = " ".join(
            toast.get_attribute("textContent")
            for toast in browser.find_elements(By.CSS_SELECTOR, ".toast-body")
        )
        if "Type at least one class name" in shown or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "Type at least one class name" in shown
    assert not browser.find_elements(By.CSS_SELECTOR, "#labels a[download]")  # no result came
