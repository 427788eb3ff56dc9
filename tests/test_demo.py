"""tools/demo.py end to end: the reference label maps from the photos and class names, its
output files, the whole image by default, videos frame by frame, and its errors on bad input."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES, REPO, manifest_runs, require_fixtures, run_config
from cliptrase_d2.api import Segmenter
from cliptrase_d2.visualization import draw_labels, with_legend

sys.path.insert(0, os.path.join(REPO, "tools"))
import demo  # noqa: E402


def _run_demo(tmp_path, tiny_opts, *args, config_file=None, opts=()):
    argv = (
        list(args)
        + (["--config-file", config_file] if config_file else [])
        + ["--opts", *tiny_opts, *opts]
    )
    assert demo.main(argv) == 0


@pytest.mark.parametrize("run", manifest_runs())
def test_demo_reproduces_reference_labels(run, manifest, tiny_opts, tmp_path):
    """From images/*.png and the benchmark's class names to the authors' `pred`, through the
    demo."""
    config, opts = run_config(run)
    key = manifest["vocabulary_key"][run["dataset"]]
    output = tmp_path / "out"
    _run_demo(
        tmp_path,
        tiny_opts,
        "--input",
        os.path.join(FIXTURES, "images"),
        "--output",
        str(output),
        "--vocabulary",
        key,
        config_file=config,
        opts=opts,
    )
    for case in run["cases"]:
        reference = np.load(os.path.join(FIXTURES, "cases", case["file"]))["pred"]
        stem = os.path.splitext(case["image"])[0]
        labels = np.array(Image.open(output / f"{stem}_labels.png"))
        assert labels.shape == reference.shape == (run["size"], run["size"])
        agreement = (labels == reference).mean()
        assert agreement >= 0.9999, f"{case['file']}: labels agree on {agreement:.6f} of the pixels"


def test_demo_outputs(tiny_opts, tmp_path):
    require_fixtures()
    image = os.path.join(FIXTURES, "images", "chelsea.png")
    output = tmp_path / "out"
    _run_demo(
        tmp_path,
        tiny_opts,
        "--input",
        image,
        "--output",
        str(output),
        "--vocabulary",
        "cat, grass, wall",
        "--background",
        "sky, floor",
        "--side-by-side",
        "--protocol",
        "paper",
    )
    labels = np.array(Image.open(output / "chelsea_labels.png"))
    info = json.loads((output / "chelsea.json").read_text())
    assert info["class_names"] == ["cat", "grass", "wall", "background"]
    assert labels.shape == (224, 224) and labels.max() <= 3
    shares = info["pixel_share"]
    assert abs(sum(shares.values()) - 1) < 1e-9
    counts = np.bincount(labels.ravel(), minlength=4) / labels.size
    for index, name in enumerate(info["class_names"]):
        assert shares.get(name, 0.0) == pytest.approx(counts[index])
    overlay = Image.open(output / "chelsea.png")
    panel = Image.open(output / "chelsea_panel.png")
    assert overlay.height == 224 and overlay.width > 224  # legend column beside the image
    assert panel.width == 224 + overlay.width
    # the image part is Detectron2's Visualizer drawing of these labels on the 224 x 224 crop
    crop = np.asarray(panel)[:224, :224]
    drawn = draw_labels(crop, labels, info["class_names"])
    np.testing.assert_array_equal(np.asarray(overlay)[:, :224], drawn)
    np.testing.assert_array_equal(np.asarray(panel)[:224, 224:], np.asarray(overlay))
    shifted = draw_labels(crop, (labels + 1) % 4, info["class_names"])
    assert np.abs(np.asarray(overlay)[:, :224].astype(int) - shifted).mean() > 5


@pytest.mark.parametrize(
    "protocol_args, shape",
    [
        ((), (400, 600)),  # the default: the whole photo at its own size (standard protocol)
        (("--protocol", "standard"), (400, 600)),
        (("--protocol", "paper"), (224, 224)),
        (
            ("--config-file", os.path.join(REPO, "configs", "paper", "Base-paper-224.yaml")),
            (224, 224),
        ),
    ],
)
def test_whole_image_by_default_crop_only_under_paper(protocol_args, shape, tiny_opts, tmp_path):
    require_fixtures()
    output = tmp_path / "out"
    _run_demo(
        tmp_path,
        tiny_opts,
        "--input",
        os.path.join(FIXTURES, "images", "coffee.png"),
        "--output",
        str(output),
        "--vocabulary",
        "cup, table",
        *protocol_args,
        opts=["MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224"],
    )
    labels = np.array(Image.open(output / "coffee_labels.png"))
    assert labels.shape == shape
    assert Image.open(output / "coffee.png").height == shape[0]


def test_more_than_255_classes_write_16_bit_labels(tiny_opts, tmp_path):
    require_fixtures()
    vocabulary = tmp_path / "names.txt"
    vocabulary.write_text("\n".join(f"thing number {i}" for i in range(300)))
    output = tmp_path / "out"
    _run_demo(
        tmp_path,
        tiny_opts,
        "--input",
        os.path.join(FIXTURES, "images", "astronaut.png"),
        "--output",
        str(output),
        "--vocabulary",
        str(vocabulary),
        "--protocol",
        "paper",
        opts=["MODEL.CLIPTRASE.TEMPLATES", "vild14"],
    )
    labels = Image.open(output / "astronaut_labels.png")
    assert labels.mode == "I;16"
    info = json.loads((output / "astronaut.json").read_text())
    assert len(info["class_names"]) == 300
    values = np.array(labels)
    assert values.max() < 300 and set(np.unique(values)) <= set(range(300))


def test_cuda_fallback_is_logged_once(tiny_opts, tmp_path, monkeypatch):
    require_fixtures()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("cliptrase_d2").addHandler(handler)
    try:
        _run_demo(
            tmp_path,
            tiny_opts,
            "--input",
            os.path.join(FIXTURES, "images", "coffee.png"),
            "--output",
            str(tmp_path / "out"),
            "--vocabulary",
            "cup, table",
            opts=["MODEL.DEVICE", "cuda", "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224"],
        )
    finally:
        logging.getLogger("cliptrase_d2").removeHandler(handler)
    fallbacks = [r.getMessage() for r in records if "CUDA is not available" in r.getMessage()]
    assert fallbacks == ["MODEL.DEVICE=cuda but CUDA is not available: running on cpu"]


def test_glob_matching_nothing_is_an_error(tiny_opts, tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        demo.main(
            [
                "--input",
                str(tmp_path / "*.jpg"),
                "--output",
                str(tmp_path / "out"),
                "--opts",
                *tiny_opts,
            ]
        )
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_an_error(tiny_opts, tmp_path):
    require_fixtures()
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="--output folder"):
        demo.main(
            [
                "--input",
                os.path.join(FIXTURES, "images", "coffee.png"),
                "--output",
                str(blocker / "out"),
                "--opts",
                *tiny_opts,
            ]
        )


@pytest.mark.parametrize(
    "vocabulary, message", [(",", "no class names"), ("dog, cat, Dog", "duplicate name")]
)
def test_bad_vocabulary_writes_nothing(vocabulary, message, tiny_opts, tmp_path):
    require_fixtures()
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        demo.main(
            [
                "--input",
                os.path.join(FIXTURES, "images", "coffee.png"),
                "--output",
                str(output),
                "--vocabulary",
                vocabulary,
                "--opts",
                *tiny_opts,
            ]
        )
    assert not output.exists() or not os.listdir(output)


def test_an_image_the_model_refuses_is_named_and_skipped_on_request(tiny_opts, tmp_path):
    require_fixtures()
    tiny, output = tmp_path / "tiny.png", tmp_path / "out"
    Image.new("RGB", (8, 8)).save(tiny)
    argv = ["--input", str(tiny), os.path.join(FIXTURES, "images", "coffee.png")]
    argv += ["--output", str(output), "--vocabulary", "cup, table", "--opts", *tiny_opts]
    with pytest.raises(ValueError, match=f"^{tiny}: an image of 8x8 pixels is smaller than one"):
        demo.main(argv)
    assert demo.main(["--skip-bad-inputs", *argv]) == 0
    assert sorted(os.listdir(output)) == ["coffee.json", "coffee.png", "coffee_labels.png"]


def test_skipping_every_input_is_an_error(tiny_opts, tmp_path):
    tiny, cut, output = tmp_path / "tiny.png", tmp_path / "cut.png", tmp_path / "out"
    Image.new("RGB", (8, 8)).save(tiny)
    cut.write_bytes(b"\x89PNG\r\n")
    argv = ["--skip-bad-inputs", "--input", str(tiny), str(cut), "--output", str(output)]
    with pytest.raises(ValueError, match="none of the 2 input image.* nothing was written"):
        demo.main([*argv, "--vocabulary", "cup, table", "--opts", *tiny_opts])
    assert not os.listdir(output)


def test_same_stem_twice_is_an_error(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / folder / "x.png")
    inputs = demo.expand_inputs(
        [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a" / ".." / "a" / "x.png")]
    )
    assert len(inputs) == 2  # the same file under another name counts once
    with pytest.raises(ValueError, match="same outputs"):
        demo.check_outputs(inputs, str(tmp_path / "out"), panel=False, overwrite=False)


def test_a_tilde_is_the_home_folder_in_inputs_and_outputs(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "photos" / "x.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert demo.expand_inputs(["~/photos"]) == [str(tmp_path / "photos" / "x.png")]
    args = demo.get_parser().parse_args(["--video-input", "~/a.mp4", "--output", "~/out"])
    assert (args.video_input, args.output) == (str(tmp_path / "a.mp4"), str(tmp_path / "out"))


def test_outputs_never_replace_inputs_or_each_other(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32)).save(photos / "a.png")
    with pytest.raises(ValueError, match="would overwrite the input .*a.png"):
        demo.check_outputs([str(photos / "a.png")], str(photos), panel=False, overwrite=True)
    Image.new("RGB", (32, 32)).save(
        photos / "a_labels.png"
    )  # its overlay is a_labels.png, a's label map too
    inputs = demo.expand_inputs([str(photos)])
    with pytest.raises(ValueError, match="same outputs \\(a_labels.png\\)"):
        demo.check_outputs(inputs, str(tmp_path / "out"), panel=False, overwrite=True)


def test_existing_outputs_need_overwrite(tiny_opts, tmp_path):
    require_fixtures()
    output = tmp_path / "out"
    output.mkdir()
    mine = output / "coffee.png"
    mine.write_bytes(b"someone's file")
    argv = [
        "--input",
        os.path.join(FIXTURES, "images", "coffee.png"),
        "--output",
        str(output),
        "--vocabulary",
        "cup, table",
        "--opts",
        *tiny_opts,
    ]
    with pytest.raises(FileExistsError, match="coffee.png.*--overwrite"):
        demo.main(argv)
    assert mine.read_bytes() == b"someone's file" and sorted(os.listdir(output)) == ["coffee.png"]
    assert demo.main(["--overwrite", *argv]) == 0
    assert Image.open(mine).height == 400 and (output / "coffee_labels.png").exists()


@pytest.mark.parametrize(
    "signum, returncode", [(signal.SIGINT, 1), (signal.SIGTERM, 128 + signal.SIGTERM)]
)
def test_interrupted_run_leaves_whole_outputs_and_no_traceback(
    signum, returncode, tiny_opts, tmp_path
):
    """Ctrl-C or a kill while images are being written: every input has all its files or none,
    no temporary file is left, and the run ends with a line, not a traceback."""
    require_fixtures()
    photos, output = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for index in range(40):
        shutil.copy(os.path.join(FIXTURES, "images", "coffee.png"), photos / f"p{index:02d}.png")
    command = [sys.executable, os.path.join(REPO, "tools", "demo.py"), "--input", str(photos)]
    command += ["--output", str(output), "--vocabulary", "cup, table", "--batch-size", "1"]
    command += ["--opts", *tiny_opts, "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224"]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (output / "p00.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the first input is done: the next ones are being segmented or written
    process.send_signal(signum)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == returncode and "Traceback" not in stderr, stderr[-2000:]
    written = sorted(os.listdir(output))
    stems = sorted({name.split(".")[0] for name in written if name.endswith(".json")})
    assert 0 < len(stems) < 40, "the signal should come while the demo is writing"
    expected = [f"{stem}{end}" for stem in stems for end in (".json", ".png", "_labels.png")]
    assert written == sorted(expected)  # whole inputs only, no temporary file


def _write_video(path, frames, fps=5.0):
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0])
    )
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1])
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


@pytest.fixture
def tiny_video(tmp_path):
    """Three 160 x 240 RGB frames panning across coffee.png, as an mp4."""
    require_fixtures()
    photo = np.array(Image.open(os.path.join(FIXTURES, "images", "coffee.png")).convert("RGB"))
    frames = [np.ascontiguousarray(photo[100:260, 80 * i : 80 * i + 240]) for i in range(3)]
    path = tmp_path / "pan.mp4"
    _write_video(path, frames)
    return path


@pytest.fixture
def encode_text_calls(monkeypatch):
    """Counts the CLIP text tower's forward passes (the text embeddings' cost)."""
    import open_clip

    calls = []
    original = open_clip.model.CLIP.encode_text

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", counting)
    return calls


def test_video_frame_by_frame_equals_the_api(tiny_video, tiny_opts, tmp_path, encode_text_calls):
    vocabulary, background = "cup, table, saucer", "wall"
    opts = [*tiny_opts, "MODEL.CLIPTRASE.STANDARD_SHORT_SIDE", "224"]
    output = tmp_path / "out"
    argv = [
        "--video-input",
        str(tiny_video),
        "--output",
        str(output),
        "--vocabulary",
        vocabulary,
        "--background",
        background,
        "--cache-dir",
        "none",
        "--batch-size",
        "2",
        "--opts",
        *opts,
    ]
    assert demo.main(argv) == 0
    assert os.listdir(output) == ["pan.mp4"]  # written through a temporary that is gone
    video_calls = len(encode_text_calls)
    written, fps = _read_video(output / "pan.mp4")
    inputs, _ = _read_video(tiny_video)  # the frames as decoded, which is what the demo segmented
    assert len(written) == len(inputs) == 3 and fps == pytest.approx(5.0)
    segmenter = Segmenter.from_config(
        demo.PROTOCOL_CONFIGS["standard"], [*opts, "MODEL.CLIPTRASE.TEXT_CACHE_DIR", "none"]
    )
    encode_text_calls.clear()
    results = [
        segmenter.segment(inputs[0].copy(), vocabulary, background=[background], scores=False)
    ]
    # three frames cost the demo the text passes of one image: the vocabulary was encoded once
    assert video_calls == len(encode_text_calls) > 0
    results += [
        segmenter.segment(frame.copy(), vocabulary, background=[background], scores=False)
        for frame in inputs[1:]
    ]
    names = results[0].class_names
    blank = np.full((160, 240, 3), 255, dtype=np.uint8)
    legend = np.asarray(with_legend(blank, list(enumerate(names))))[:, 240:]  # every class
    for frame, result in zip(written, results):
        assert result.labels.shape == (160, 240)  # the whole frame, at its own size
        width = 240 + legend.shape[1]
        assert frame.shape == (max(160, legend.shape[0]), width + width % 2, 3)
        expected = draw_labels(result.image, result.labels, names).astype(np.int16)
        wrong = draw_labels(result.image, (result.labels + 1) % len(names), names).astype(np.int16)
        error = np.abs(frame[:160, :240].astype(np.int16) - expected).mean()
        assert error < 4, (
            f"the video frame differs from the API's overlay by {error:.2f} grey levels"
        )
        assert np.abs(frame[:160, :240].astype(np.int16) - wrong).mean() > 4 * error + 5
        assert (
            np.abs(
                frame[: legend.shape[0], 240 : 240 + legend.shape[1]].astype(np.int16) - legend
            ).mean()
            < 4
        )


def test_video_errors(tiny_video, tiny_opts, tmp_path):
    with pytest.raises(FileNotFoundError, match="--video-input .*missing.mp4 does not exist"):
        demo.main(
            [
                "--video-input",
                str(tmp_path / "missing.mp4"),
                "--output",
                str(tmp_path),
                "--opts",
                *tiny_opts,
            ]
        )
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(ValueError, match="notes.mp4"):
        demo.main(
            [
                "--video-input",
                str(not_video),
                "--output",
                str(tmp_path / "out"),
                "--vocabulary",
                "cup",
                "--opts",
                *tiny_opts,
            ]
        )
    assert not (tmp_path / "out" / "notes.mp4").exists()
    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="taken.mp4.*--overwrite"):
        demo.main(["--video-input", str(tiny_video), "--output", str(taken), "--opts", *tiny_opts])
    assert taken.read_bytes() == b"mine"
    with pytest.raises(SystemExit):  # argparse: --input and --video-input exclude each other
        demo.main(
            [
                "--video-input",
                str(tiny_video),
                "--input",
                str(tiny_video),
                "--output",
                str(tmp_path),
            ]
        )


def test_an_opencv_that_cannot_write_mp4_is_named(tiny_video, tiny_opts, tmp_path, monkeypatch):
    """An OpenCV build without the mp4v encoder: one error at the first frame, naming the output
    and the fix (it wrote nothing, and the run ended in a FileNotFoundError on a temporary)."""
    fourcc = demo.cv2.VideoWriter_fourcc
    monkeypatch.setattr(demo.cv2, "VideoWriter_fourcc", lambda *_: fourcc(*"ZZZZ"))
    output = tmp_path / "out.mp4"
    argv = ["--video-input", str(tiny_video), "--output", str(output), "--vocabulary", "cup, sky"]
    with pytest.raises(OSError, match=f"cannot write the mp4 video {output} .*pip install opencv"):
        demo.main([*argv, "--opts", *tiny_opts])
    assert os.listdir(tmp_path) == [tiny_video.name]


def test_a_folder_or_a_tiny_video_is_named(tiny_opts, tmp_path):
    require_fixtures()
    with pytest.raises(ValueError, match=f"--video-input {tmp_path} is a folder: give a video"):
        demo.main(["--video-input", str(tmp_path), "--output", str(tmp_path / "o")])
    tiny = tmp_path / "tiny.mp4"
    _write_video(tiny, [np.zeros((8, 8, 3), np.uint8)] * 2)
    argv = ["--video-input", str(tiny), "--output", str(tmp_path / "o"), "--vocabulary", "cup, sky"]
    with pytest.raises(ValueError, match=f"^the video {tiny}: an image of 8x8 pixels is smaller"):
        demo.main([*argv, "--opts", *tiny_opts])
    assert not os.listdir(tmp_path / "o")
