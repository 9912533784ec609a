"""Batch inspection on a Ray cluster (Ray Data): actors each hold one :class:`pmad.Detector`.

    import ray, pmad.ray
    ray.init()                                           # or ray.init(address="auto")
    ds = ray.data.read_images("data/bottle/test", include_paths=True, mode="RGB")
    scores = pmad.ray.inspect(ds, "model", "bottle", concurrency=2, batch_size=8)
    scores.write_json("scores")                          # JSON lines: path, score, ...

:func:`inspect` is ``ds.map_batches(Predictor, ...)`` with the arguments filled in; use
:class:`Predictor` directly for anything else Ray Data offers. Why actors: opening a
detector maps the backbone and loads the class, so each actor opens it once and then
scores every batch it is given; Ray Data moves the decoded images to the actors and
streams the results out, on one machine or many.

Fail closed: an image the engine rejects, a NaN score or an unknown class raises in the
actor, and Ray Data fails the whole job (it never writes a row without a score).
Ray is an optional dependency (``pip install "pmad[ray]"``); importing this module without
it raises an ImportError that says so.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

try:
    import ray
    import ray.data
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        'pmad.ray needs Ray Data: pip install "ray[data]" (or pip install "pmad[ray]")'
    ) from e

from . import Detector

__all__ = ["Predictor", "inspect"]


class Predictor:
    """A Ray Data callable class: ``ds.map_batches(Predictor, fn_constructor_kwargs=...)``.

    Each Ray actor makes one ``Predictor``, which opens one :class:`pmad.Detector` on
    ``model_dir`` and scores every batch the actor gets against ``class_name``.

    Input batches (numpy format, as ``ray.data.read_images(..., include_paths=True)``
    makes them) hold uint8 images in ``image_column`` (an ``N x H x W x C`` array, or an
    object array of images of different sizes) and, if present, their paths in
    ``path_column``. Output batches hold ``path`` (when given), ``score`` (float32),
    ``threshold`` (float32, the class's calibrated threshold), ``verdict``
    (``"anomalous"`` / ``"normal"``) and, with ``maps=True``, ``map`` (float32 ``S x S``).

    ``threads``: the engine's CPU threads in this actor. Default: the CPUs Ray gave the
    actor (``num_cpus`` of ``map_batches``), so actors on one node do not oversubscribe it.
    """

    def __init__(
        self,
        model_dir: str,
        class_name: str,
        device: str = "cpu",
        weights: Optional[str] = None,
        image_column: str = "image",
        path_column: str = "path",
        maps: bool = False,
        bgr: bool = False,
        threads: Optional[int] = None,
    ):
        if threads is None:
            threads = _assigned_cpus()
        if threads is not None:
            # The engine's thread pool starts on first use and reads this variable then.
            os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        self.detector = Detector(model_dir, device=device, weights=weights)
        self.class_name = class_name
        # Looks the class up now: an unknown class fails when the actor starts, before any
        # image is read, with the engine's ClassNotRegisteredError.
        self.threshold = np.float32(self.detector.threshold(class_name))
        self.image_column = image_column
        self.path_column = path_column
        self.maps = maps
        self.bgr = bgr

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.image_column not in batch:
            raise KeyError(
                f"pmad.ray.Predictor: the batch has no column {self.image_column!r} "
                f"(columns: {sorted(batch)}); pass image_column="
            )
        images = list(batch[self.image_column])
        result = self.detector.inspect(self.class_name, images, bgr=self.bgr, maps=self.maps)
        if not np.all(np.isfinite(result.scores)):
            # The engine already refuses NaN scores; this guards the contract here too.
            raise ValueError("pmad.ray.Predictor: a non-finite score")
        out: Dict[str, Any] = {}
        if self.path_column in batch:
            out["path"] = np.asarray(batch[self.path_column])
        n = len(images)
        out["score"] = result.scores
        out["threshold"] = np.full(n, self.threshold, dtype=np.float32)
        out["verdict"] = np.where(result.verdicts, "anomalous", "normal")
        if self.maps:
            out["map"] = result.maps
        return out


def inspect(
    ds: "ray.data.Dataset",
    model_dir: str,
    class_name: str,
    *,
    concurrency: int = 1,
    batch_size: int = 8,
    num_cpus: float = 1,
    num_gpus: Optional[float] = None,
    device: str = "cpu",
    weights: Optional[str] = None,
    maps: bool = False,
    threads: Optional[int] = None,
) -> "ray.data.Dataset":
    """Scores every image of ``ds`` against ``class_name`` of the model at ``model_dir``.

    ``concurrency`` actors, each holding one detector, ``num_cpus`` CPUs (and
    ``num_gpus`` GPUs, with ``device="cuda"``); ``batch_size`` images go through one
    backbone pass. Returns a lazy Dataset of ``path, score, threshold, verdict`` rows
    (``map`` too with ``maps=True``): write it with ``write_json`` / ``write_parquet``, or
    iterate it. ``model_dir`` and the weights must be readable at the same path on every
    node that runs an actor.
    """
    remote_args: Dict[str, Any] = {"num_cpus": num_cpus}
    if num_gpus is not None:
        remote_args["num_gpus"] = num_gpus
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs=dict(
            model_dir=str(model_dir),
            class_name=class_name,
            device=device,
            weights=None if weights is None else str(weights),
            maps=maps,
            threads=threads,
        ),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=concurrency,
        **remote_args,
    )


def _assigned_cpus() -> Optional[int]:
    """Whole CPUs Ray assigned to this actor (None outside a Ray worker)."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker (e.g. a Predictor made by hand)
        return None
    if not cpus:
        return None
    return max(1, int(cpus))
