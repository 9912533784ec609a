"""Tests of the installed `pmad` wheel (scripts/test_python.sh builds it and installs it into
a fresh venv). Data comes from `pmad synth` ($PMAD_BIN, default target/release/pmad)."""

import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import pmad

ROOT = pathlib.Path(__file__).resolve().parents[2]
PMAD_BIN = os.environ.get("PMAD_BIN", str(ROOT / "target" / "release" / "pmad"))
CLASS = "synth_fabric"


def synth(out: pathlib.Path) -> pathlib.Path:
    subprocess.run(
        [PMAD_BIN, "synth", "--out", str(out), "--classes", "1", "--train", "8",
         "--test-good", "2", "--test-bad", "2", "--size", "128"],
        check=True, capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    return synth(tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def det(data, tmp_path_factory):
    model = tmp_path_factory.mktemp("model") / "model"
    pmad.Detector.create(model)
    d = pmad.Detector(model)
    normal = [pmad.load_image(p) for p in sorted((data / CLASS / "train" / "good").glob("*.png"))]
    reg = d.register(CLASS, normal)
    assert reg.n_images == 8 and reg.n_prototypes > 0 and reg.thresholds
    return d


def test_the_installed_wheel_is_used():
    # Not the source folder python/pmad: the compiled extension from the venv.
    assert "site-packages" in pmad.__file__, pmad.__file__
    assert hasattr(pmad._pmad, "Detector")


def test_readme_example_runs(tmp_path):
    """The README's Python block, run as written in a folder with `pmad synth` data."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    synth(tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-c", blocks[0]], cwd=tmp_path, check=True,
        capture_output=True, text=True,
    ).stdout
    assert f"['{CLASS}']" in out, out
    assert "float32" in out, out


def test_inspect_returns_float32_arrays_and_verdicts(det, data):
    good = [pmad.load_image(p) for p in sorted((data / CLASS / "test" / "good").glob("*.png"))]
    bad_dirs = [d for d in sorted((data / CLASS / "test").iterdir()) if d.name != "good"]
    bad = [pmad.load_image(p) for d in bad_dirs for p in sorted(d.glob("*.png"))]
    assert len(good) == 2 and len(bad) == 2
    scores, maps, verdicts = det.inspect(CLASS, good + bad)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert maps.dtype == np.float32 and maps.ndim == 3 and maps.shape[0] == 4
    assert maps.shape[1] == maps.shape[2] > 0
    assert verdicts.dtype == np.bool_ and verdicts.shape == (4,)
    assert np.all(np.isfinite(scores)) and np.all(np.isfinite(maps))
    t = det.threshold(CLASS)
    assert list(verdicts) == [bool(s > t) for s in scores]
    # The synthetic defects score above the normal test images.
    assert scores[2:].min() > scores[:2].max(), scores
    # One image, an N x H x W x 3 batch and a list give the same numbers.
    one = det.inspect(CLASS, good[0])
    assert one.scores.shape == (1,) and one.scores[0] == scores[0]
    batch = det.inspect(CLASS, np.stack(good))
    np.testing.assert_array_equal(batch.scores, scores[:2])
    np.testing.assert_array_equal(batch.maps, maps[:2])
    # BGR of the same pixels (OpenCV's order) with bgr=True; gray and RGBA are accepted.
    bgr = det.inspect(CLASS, good[0][:, :, ::-1].copy(), bgr=True)
    assert bgr.scores[0] == scores[0]
    rgba = np.concatenate([good[0], np.full(good[0].shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert det.inspect(CLASS, rgba).scores[0] == scores[0]
    gray = det.inspect(CLASS, good[0][:, :, 0])
    assert np.isfinite(gray.scores[0])
    # Scores only: the same scores and verdicts, no maps.
    lean = det.inspect(CLASS, good + bad, maps=False)
    assert lean.maps is None
    np.testing.assert_array_equal(lean.scores, scores)
    np.testing.assert_array_equal(lean.verdicts, verdicts)


def test_bad_inputs_raise_clear_errors(det):
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        det.inspect(CLASS, img.astype(np.float32))
    with pytest.raises(ValueError, match="image 1"):
        det.inspect(CLASS, [img, np.zeros((32, 32, 2), np.uint8)])
    with pytest.raises(ValueError, match="image 0"):
        det.inspect(CLASS, np.zeros((0, 32, 3), np.uint8))
    with pytest.raises(pmad.ClassNotRegisteredError, match="synth_nothing"):
        det.inspect("synth_nothing", img)
    with pytest.raises(pmad.PmadError, match="at least 2"):
        det.register("synth_one", [img])
    with pytest.raises(pmad.PmadError, match="model.json"):
        pmad.Detector("/nonexistent-pmad-model")


def test_classes_lists_registered_classes(det):
    assert det.classes == [CLASS]


def test_inspect_releases_the_gil(det, data):
    """While one thread is inside inspect, another keeps running Python code."""
    imgs = [pmad.load_image(p) for p in sorted((data / CLASS / "train" / "good").glob("*.png"))]
    span = {}

    def work():
        span["start"] = time.perf_counter()
        det.inspect(CLASS, imgs * 2)
        span["end"] = time.perf_counter()

    t = threading.Thread(target=work)
    ticks = []
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    start, end = span["start"], span["end"]
    assert end - start > 0.05, "inspect too short to tell"
    # Ticks in the middle half of the call: impossible if the GIL were held throughout.
    lo, hi = start + 0.25 * (end - start), start + 0.75 * (end - start)
    assert sum(lo < x < hi for x in ticks) > 100
