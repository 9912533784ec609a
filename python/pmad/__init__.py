"""pmad: cross-class industrial anomaly detection (PMAD) from Python.

A thin layer over the Rust engine (``pmad._pmad``): it checks numpy images (uint8,
H x W x 3 RGB, or gray / RGBA / BGR), passes them to the engine, which computes with the
GIL released, and returns numpy arrays.

    import numpy as np, pmad
    det = pmad.Detector("model")                 # a model directory (pmad.Detector.create)
    det.register("bottle", normal_images)        # >= 2 normal images, no retraining
    scores, maps, verdicts = det.inspect("bottle", images)
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _pmad
from ._pmad import ClassNotRegisteredError, PmadError

__all__ = [
    "Detector",
    "load_image",
    "Inspection",
    "Registration",
    "PmadError",
    "ClassNotRegisteredError",
]

ImageLike = np.ndarray
Images = Union[np.ndarray, Sequence[np.ndarray]]

# Channels of the last axis -> the engine's pixel format (3 channels: RGB unless bgr=True).
_FORMATS = {1: "gray", 3: "rgb", 4: "rgba"}


class Inspection(NamedTuple):
    """Result of :meth:`Detector.inspect`, one entry per image (``N`` = 1 for one image)."""

    scores: np.ndarray
    """float32 ``[N]``: the image anomaly scores."""
    maps: Optional[np.ndarray]
    """float32 ``[N, S, S]``: the anomaly maps (``S``: the model's map size); ``None`` when
    :meth:`Detector.inspect` was called with ``maps=False``."""
    verdicts: np.ndarray
    """bool ``[N]``: ``scores > threshold`` of the class (True: anomalous)."""


class Registration(NamedTuple):
    """Result of :meth:`Detector.register`."""

    n_prototypes: int
    n_images: int
    thresholds: Dict[str, float]


def _frame(img: np.ndarray, index: int, bgr: bool) -> Tuple[bytes, int, int, str]:
    """One image as (packed bytes, height, width, format); errors name its index."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"image {index}: expected a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        # Fail closed: a float image in [0, 1] read as bytes would be silently wrong.
        raise TypeError(f"image {index}: expected dtype uint8, got {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in _FORMATS:
        raise ValueError(
            f"image {index}: expected shape H x W x C with C in (1, 3, 4), got {img.shape}"
        )
    h, w, c = img.shape
    fmt = "bgr" if (c == 3 and bgr) else _FORMATS[c]
    return (np.ascontiguousarray(img).tobytes(), h, w, fmt)


def _frames(images: Images, bgr: bool) -> List[Tuple[bytes, int, int, str]]:
    """A single image (H x W [x C]), a batch (N x H x W x C) or a list of images."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [_frame(images[i], i, bgr) for i in range(images.shape[0])]
        return [_frame(images, 0, bgr)]
    if isinstance(images, (str, bytes)):
        raise TypeError("expected numpy images, got a string")
    return [_frame(img, i, bgr) for i, img in enumerate(images)]


def load_image(path) -> np.ndarray:
    """Decodes an image file (PNG/JPEG/BMP/TIFF, gray/RGB/RGBA, 8 or 16 bits) into an
    H x W x 3 uint8 RGB array, exactly as the ``pmad`` CLI reads it."""
    data, h, w = _pmad.load_image(str(path))
    return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)


class Detector:
    """A pmad model directory opened for inspection and registration.

    ``device`` is ``"cpu"`` (or ``"cuda"`` for a build with the CUDA backend);
    ``weights`` overrides the backbone file (default: as the ``pmad`` CLI finds it,
    ``$PMAD_WEIGHTS_DIR``, then the checkout's ``weights/``, then ``~/.cache/pmad/weights``).
    One detector may be shared by threads: inspections run in parallel, without the GIL.
    """

    def __init__(self, model_dir, device: str = "cpu", weights: Optional[str] = None):
        self._inner = _pmad.Detector(str(model_dir), device, None if weights is None else str(weights))

    @staticmethod
    def create(model_dir) -> None:
        """Creates a new, empty model directory (the default, untrained configuration)."""
        _pmad.Detector.create(str(model_dir))

    @property
    def classes(self) -> List[str]:
        """The registered classes, sorted."""
        return self._inner.classes

    @property
    def model_dir(self) -> str:
        """The model directory."""
        return str(self._inner.model_dir)

    def threshold(self, class_name: str) -> float:
        """The calibrated threshold of ``class_name`` (for the model's default score)."""
        return self._inner.threshold(class_name)

    def register(self, class_name: str, images: Images, bgr: bool = False) -> Registration:
        """Registers ``class_name`` from at least 2 normal images (no retraining): its
        prototypes and a threshold calibrated on the same images. Replaces a class of the
        same name atomically."""
        n_proto, n_img, thresholds = self._inner.register(class_name, _frames(images, bgr))
        return Registration(n_proto, n_img, dict(thresholds))

    def inspect(
        self, class_name: str, images: Images, bgr: bool = False, maps: bool = True
    ) -> Inspection:
        """Scores images against ``class_name``: an H x W x 3 uint8 array (RGB; BGR with
        ``bgr=True``; gray H x W and RGBA work too), an N x H x W x C batch, or a list of
        arrays of any sizes. Returns ``(scores, maps, verdicts)`` with one entry per image.
        ``maps=False`` returns scores and verdicts only (``maps`` is then ``None``): no map
        is copied into Python, and on a GPU nothing but the scores comes down."""
        scores, _thresholds, verdicts, map_bytes, size = self._inner.inspect(
            class_name, _frames(images, bgr), maps
        )
        n = len(scores)
        return Inspection(
            np.asarray(scores, dtype=np.float32),
            np.frombuffer(map_bytes, dtype=np.float32).reshape(n, size, size) if maps else None,
            np.asarray(verdicts, dtype=bool),
        )
