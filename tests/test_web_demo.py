"""tools/web_demo.py: a real browser (headless Chromium) uploads a photo and gets the Python API's
segmentation; requests of several users at once keep to their own vocabulary; bad requests and bad
options get a message that says what to change; a stopped server leaves no upload behind."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from io import BytesIO
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import FIXTURES, REPO, TINY_CONFIG, TINY_WEIGHTS, require_fixtures, skip_outside_ci
from cliptrase_d2.api import Segmenter
from cliptrase_d2.errors import ConfigError, UserError
from cliptrase_d2.visualization import draw_labels, palette

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
    shown = draw_labels(result.image, result.labels, result.class_names)
    colors = palette(len(result.class_names))
    shares = [
        [name, f"{share * 100:.2f}", colors[result.class_names.index(name)]]
        for name, share in result.pixel_shares().items()
    ]
    return result, shown, shares


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
        # background words are encoded as classes are: 21 of them are refused as 21 classes are
        ("cup", ", ".join(f"word{i}" for i in range(21)), "21 background words: .* at most 20"),
        ("background, cup", "wall", "background"),
        # a near miss of a key is refused as the demo and the API refuse it, not one class
        ("VOC 21", "", "did you mean 'voc21'"),
        ("voc21,", "sky", "did you mean 'voc21'"),
        ("coco-object", "", "did you mean 'coco_object80'"),
    ]:
        with pytest.raises(ValueError, match=message):
            web_demo.parse_vocabulary(text, background, 20)


def test_sample_images_under_a_quoted_tilde_dataset_root(monkeypatch):
    """DETECTRON2_DATASETS="~/datasets" (quoted, the shell left the ~) is the home folder."""
    import importlib

    monkeypatch.setenv("DETECTRON2_DATASETS", "~/datasets")
    try:
        reloaded = importlib.reload(web_demo)
        expected = os.path.join(os.path.expanduser("~"), "datasets", "cliptrase_sample_voc21")
        assert reloaded.SAMPLE_IMAGES == os.path.join(expected, "images")
    finally:
        monkeypatch.delenv("DETECTRON2_DATASETS")
        importlib.reload(web_demo)


def test_check_image(tmp_path):
    require_fixtures()
    assert web_demo.check_image(PHOTO, web_demo.Limits()) == (600, 400)
    with pytest.raises(ValueError, match="Upload a photo"):
        web_demo.check_image(None, web_demo.Limits())
    with pytest.raises(
        ValueError, match=r"600 x 400 pixels \(0.2 megapixels\); this server accepts up to 0.1:"
    ):
        web_demo.check_image(PHOTO, web_demo.Limits(max_megapixels=0.1))
    with pytest.raises(ValueError, match="MB; this server accepts up to 0.01 MB"):
        web_demo.check_image(PHOTO, web_demo.Limits(max_upload_mb=0.01))
    # over Pillow's own limit (a small file of 400 megapixels): an image too large, not "no image"
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)
    with pytest.raises(ValueError, match="far more pixels than the 16 megapixels this server"):
        web_demo.check_image(str(huge), web_demo.Limits())
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not an image") as error:
        web_demo.check_image(str(text), web_demo.Limits())
    assert str(tmp_path) not in str(error.value)  # the server's copy of an upload stays private


@pytest.mark.parametrize("option", ["--max-upload-mb", "--max-megapixels", "--max-classes"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_limits_refuse_zero_negative_and_non_finite_before_any_work(option, value):
    if option == "--max-classes" and value in ("nan", "inf"):
        value = "-5"  # an int option: argparse itself refuses nan
    # the weights file does not exist: a check after the model's loading would name it instead
    argv = [option, value, "--opts", "MODEL.WEIGHTS", "/nonexistent/weights.pt"]
    with pytest.raises(ConfigError, match=f"{option} must be a number above 0"):
        web_demo.main(argv)


def test_max_megapixels_is_the_decoding_limit(monkeypatch):
    """--max-megapixels above Pillow's default limit (89 M pixels): the images it accepts are
    decoded, not refused after check_image as "damaged or truncated"."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with pytest.raises(UserError, match="nonexistent.pt not found"):  # stops at the model
        web_demo.main(["--max-megapixels", "100", "--opts", "MODEL.WEIGHTS", "/nonexistent.pt"])
    assert Image.MAX_IMAGE_PIXELS == 100_000_000


@pytest.mark.parametrize("option", ["--concurrency", "--queue-size"])
def test_queue_options_refuse_zero(option):
    with pytest.raises(ConfigError, match=f"{option} must be a number above 0, got 0"):
        web_demo.main([option, "0", "--opts", "MODEL.WEIGHTS", "/nonexistent/weights.pt"])


def test_busy_port_is_a_one_line_error():
    """A port another program listens on stops the server before the model loads, in one line."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = subprocess.run(
            [sys.executable, os.path.join(REPO, "tools", "web_demo.py"), "--port", str(port)],
            cwd=REPO,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert process.returncode == 1
    assert "Traceback" not in process.stderr
    assert (
        process.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: cannot serve on 127.0.0.1:{port} (Address already in use): pass another --port"
        )
    )
    with pytest.raises(ConfigError, match="--port must be between 1 and 65535, got 70000"):
        web_demo.main(["--port", "70000"])
    # a --host that is not this machine's: the message says to change --host, not --port
    for host in ("no-such-host.invalid", "192.0.2.1"):
        with pytest.raises(ConfigError, match=f"cannot serve on {host}:.*give a --host of this"):
            web_demo.main(["--host", host])


@pytest.mark.parametrize("protocol", ["standard", "paper"])
def test_each_head_runs_with_its_authors_refinement(protocol):
    """The page's head runs as tools/compare.py runs it: PEARL with its TLP, the other peers
    without refinement, CLIPtrase with the protocol's own (no override)."""
    models = web_demo.Models("", ["MODEL.DEVICE", "cpu"])
    for head in sorted(web_demo.HEADS):
        refine = {"cliptrase": [], "pearl": ["tlp"]}.get(head, ["none"])
        assert models.options(head, protocol) == [
            *("MODEL.DEVICE", "cpu", "MODEL.CLIPTRASE.HEAD", head),
            *("MODEL.CLIPTRASE.PROTOCOL", protocol),
            *(["MODEL.CLIPTRASE.REFINE", *refine] if refine else []),
        ]


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
    assert {name for _, shares, _ in results[1::3] for name, *_ in shares} <= {
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
    """The web demo on loopback with the tiny CLIP (a subprocess): its url, process, log, and
    the folders where Gradio keeps uploads (gradio) and the demo its label maps (tmp)."""
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
    gradio, tmp = tmp_path_factory.mktemp("gradio"), tmp_path_factory.mktemp("tmp")
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(gradio), TMPDIR=str(tmp))
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
    yield SimpleNamespace(url=url, process=process, log=log, gradio=gradio, tmp=tmp)
    if process.poll() is None:
        process.kill()
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
    browser.get(server.url)
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
    want = [[name, share, "rgba({}, {}, {}, 1)".format(*color)] for name, share, color in shares]
    deadline = time.monotonic() + 60
    while True:  # the table's rows may render a moment after the image
        rows = [
            [cell.get_attribute("textContent").strip() for cell in row[1:]]
            + [
                row[0]
                .find_element(By.CSS_SELECTOR, "span")
                .value_of_css_property("background-color")
            ]
            for row in (
                tr.find_elements(By.CSS_SELECTOR, "td")
                for tr in browser.find_elements(By.CSS_SELECTOR, "#shares tbody tr")
            )
        ]
        if rows == want or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert rows == want  # names, shares and the colours the overlay gives each class
    # the legend is where the image's toolbar (fullscreen, download, ...) does not cover it
    legend = browser.find_element(By.CSS_SELECTOR, "#shares table").rect
    toolbar = browser.find_element(By.CSS_SELECTOR, "#overlay .icon-button-wrapper").rect
    assert toolbar["width"] > 0 and legend["height"] > 0
    apart_x = (
        legend["x"] >= toolbar["x"] + toolbar["width"]
        or toolbar["x"] >= legend["x"] + legend["width"]
    )
    apart_y = (
        legend["y"] >= toolbar["y"] + toolbar["height"]
        or toolbar["y"] >= legend["y"] + legend["height"]
    )
    assert apart_x or apart_y, f"the legend {legend} is under the toolbar {toolbar}"


def test_browser_empty_vocabulary_shows_the_error(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url)
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


def test_browser_non_image_upload_shows_the_error_without_server_paths(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    browser.get(server.url)
    _wait(browser, "#photo input[type=file]").send_keys(os.path.realpath(notes))
    _text_box(browser, "vocabulary").send_keys("cup, table")
    time.sleep(2)  # the upload arrives (the page shows no preview of a non-image)
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    _wait(browser, ".toast-body", timeout=120)
    deadline = time.monotonic() + 60
    while True:
        shown = " ".join(
            toast.get_attribute("textContent")
            for toast in browser.find_elements(By.CSS_SELECTOR, ".toast-body")
        )
        if "not an image" in shown or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert "The upload is not an image this server can read" in shown
    assert "Could not preprocess" not in shown and str(server.gradio) not in shown
    assert "/tmp" not in shown and "path" not in shown


def test_sigterm_stops_the_server_cleanly_and_removes_the_uploads(server):
    """Runs last: the uploads of the tests above are on disk until the server stops."""
    uploads = [f for _, _, files in os.walk(server.gradio) for f in files]
    assert uploads, "the browser tests above should have left uploads to remove"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "closing server" in log
    assert os.listdir(server.gradio) == []  # uploads, results, Gradio's copies of the samples
    assert os.listdir(server.tmp) == []  # the label maps' folder
