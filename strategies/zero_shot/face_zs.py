"""face-zs: dlib's face pipeline as a zero-shot encoder (no training).

Detect the largest face (HOG, `upsample` times up-sampled; with detector="hog+cnn" dlib's CNN
face detector then tries the images HOG missed), align it on 5 landmarks into a 150 px chip,
describe it with the 128-D ResNet descriptor (toolkit.models.faces). When no face is found
(stylised renderings defeat the detectors far more often than photos), a centred square box
(`fallback` of the shorter side, shifted down by `fallback_dy`) stands in for the detection.
Install with `pip install -e ".[face]"`; nothing is downloaded.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from strategies import register
from strategies.base import Encoder, Fitted, Strategy, WeightsStatus, WeightsUnavailable, fingerprint_of, \
    l2_normalise
from toolkit.models import faces
from toolkit.retrieval.embed import model_processes

CHIP_SIZE = 150          # what the ResNet descriptor was trained on; it must stay 150
DESCRIPTOR_DIM = 128
MODELS = ("predictor", "recogniser")   # the model files this strategy reads (toolkit.models.faces)
CENTRE_BOX = "centre box"                # the stage that counts the images no detector found a face in
# For the cost estimate of detector=hog+cnn: the CNN detector's seconds per image HOG missed (one
# CPU process, 250 px images; measured 0.31) and the share of images HOG misses (measured 0.047 on
# the lfw-style test set, benchmarks/face_detector_cascade.py).
CNN_SECONDS_PER_MISS = 0.3
NOMINAL_HOG_MISSES = 0.05


class FaceEncoder(Encoder):
    """PIL image -> (aligned 150x150 chip, the detector that found the face or None) -> 128-D unit
    descriptor. `stages` counts the newly embedded images by detector (and CENTRE_BOX).

    dlib's descriptor runs on one core per process, so it runs in the embedding's worker processes
    (encodes_in_workers), one per core, each after its own decoding and detection."""

    batch_size = 32

    flippable = True
    encodes_in_workers = True

    def __init__(self, predictor_path: str, recogniser_path: str, fingerprint: str,
                 upsample: int = 0, fallback: float = 0.45, fallback_dy: float = 0.0,
                 num_jitters: int = 0, batch_size: int = 32, detectors: Sequence[str] = ("hog",)):
        self.predictor_path = str(predictor_path)
        self.recogniser_path = str(recogniser_path)
        self.fingerprint = fingerprint
        self.upsample = int(upsample)
        self.fallback = float(fallback)
        self.fallback_dy = float(fallback_dy)
        self.num_jitters = int(num_jitters)
        self.batch_size = int(batch_size)
        self.detectors = tuple(detectors)
        self.stages = {stage: 0 for stage in (*self.detectors, CENTRE_BOX)}
        self._recogniser = None

    def __getstate__(self):
        # Workers get paths and options only; each process builds its own dlib objects.
        state = self.__dict__.copy()
        state["_recogniser"] = None
        return state

    # -- worker side ---------------------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, str | None]:
        """(the chip, the name of the detector that found the face; None: the centre box)."""
        rgb = faces.rgb_array(image)
        box, found_by = faces.first_face(rgb, self.detectors, self.upsample)
        if box is None:
            box = faces.centre_box(rgb.shape[0], rgb.shape[1], self.fallback, self.fallback_dy)
        return faces.aligned_chip(rgb, box, CHIP_SIZE, self.predictor_path), found_by

    def collate(self, items: Sequence[tuple[np.ndarray, str | None]]
                ) -> tuple[list[np.ndarray], list[str | None]]:
        return [chip for chip, _ in items], [found_by for _, found_by in items]

    # -- main process --------------------------------------------------------------------------
    def encode(self, batch: tuple[list[np.ndarray], list[str | None] | None]) -> np.ndarray:
        chips, _ = batch
        if not len(chips):
            return np.zeros((0, DESCRIPTOR_DIM), dtype=np.float32)
        if self._recogniser is None:
            self._recogniser = faces.dlib_object("recogniser", self.recogniser_path)
        return l2_normalise(faces.describe(self._recogniser, chips, self.num_jitters))

    def flip(self, batch: tuple[list[np.ndarray], list[str | None] | None]) -> tuple[list[np.ndarray], None]:
        """The chips mirrored left-right; detections dropped so faces are not counted twice."""
        chips, _ = batch
        return [np.ascontiguousarray(chip[:, ::-1]) for chip in chips], None

    def batch_stats(self, batch: tuple[list[np.ndarray], list[str | None] | None]) -> dict[str, int] | None:
        """How many faces of the batch each detector found (CENTRE_BOX: none); None for a flipped batch."""
        _, found_by = batch
        if found_by is None:
            return None
        counts: dict[str, int] = {}
        for stage in found_by:
            counts[stage or CENTRE_BOX] = counts.get(stage or CENTRE_BOX, 0) + 1
        return counts

    def add_stats(self, stats: dict[str, int] | None) -> None:
        for stage, count in (stats or {}).items():
            self.stages[stage] = self.stages.get(stage, 0) + count

    @property
    def faces_found(self) -> int:
        return sum(count for stage, count in self.stages.items() if stage != CENTRE_BOX)

    @property
    def faces_missed(self) -> int:
        return self.stages.get(CENTRE_BOX, 0)

    def report(self) -> str:
        """E.g. "faces: 1900 HOG, 80 CNN, 17 centre box of 1997 newly embedded images"."""
        total = sum(self.stages.values())
        if not total:
            return ""
        counts = ", ".join(f"{count} {stage.upper() if stage in faces.DETECTORS else stage}"
                           for stage, count in self.stages.items())
        return f"faces: {counts} of {total} newly embedded images"

    @property
    def missed_fraction(self) -> float:
        total = self.faces_found + self.faces_missed
        return self.faces_missed / total if total else 0.0


@register
class FaceZeroShot(Strategy):
    """Options: detector ("hog"; "hog+cnn": dlib's CNN face detector on the images HOG missed, at
    most 640 px on the longest side, never up-sampled), upsample (HOG detector up-sampling, 0),
    fallback (centre-box side as a fraction of the shorter side, 0.45), fallback_dy (its downward
    shift, 0.0), num_jitters (0), batch_size (32)."""

    name = "face-zs"
    summary = "dlib HOG (then CNN) face detector + 5-point alignment + 128-D ResNet descriptor (zero-shot)"
    images_per_second_cpu = 14.0   # in each describing process (one per core): measured 13-15 img/s
    uses_gpu = False               # dlib's descriptor runs on the CPU: on a cluster it asks for a core

    DEFAULTS = {"detector": faces.DEFAULT_CHAIN, "upsample": 0, "fallback": 0.45, "fallback_dy": 0.0,
                "num_jitters": 0, "batch_size": 32}

    def __init__(self, **options: Any):
        super().__init__(**options)     # names checked against DEFAULTS; self.settings (strategies.base)
        self.detectors = faces.detector_chain(self.settings["detector"], "face-zs detector")
        if int(self.settings["upsample"]) < 0 or int(self.settings["num_jitters"]) < 0:
            raise ValueError("face-zs upsample and num_jitters must be >= 0")
        if not 0.05 <= float(self.settings["fallback"]) <= 1.0:
            raise ValueError("face-zs fallback is a fraction of the image side in [0.05, 1]")

    @property
    def models(self) -> tuple[str, ...]:
        return MODELS + faces.chain_models(self.detectors)

    def weights_status(self) -> WeightsStatus:
        return faces.weights_status(self.models)

    def estimate_seconds(self, n_images: int, context=None) -> float:
        """The nominal speed of each describing process, times the processes (one per core unless
        the race's workers say), plus the CNN detector on the share of images HOG nominally misses."""
        processes = model_processes(context.num_workers if context is not None else None)
        seconds = super().estimate_seconds(n_images, context) / processes
        if "cnn" in self.detectors:
            seconds += n_images * NOMINAL_HOG_MISSES * CNN_SECONDS_PER_MISS
        return seconds

    def fit(self, training: Sequence = (), context=None, deadline: float | None = None) -> Fitted:
        return Fitted(self.encoder())

    def encoder(self) -> FaceEncoder:
        status = self.weights_status()
        if not status.available_offline:
            raise WeightsUnavailable(f"face-zs needs dlib and its models: {status.detail}")
        paths = faces.model_paths(self.models)
        settings = self.settings
        detection: dict[str, Any] = {"detector": "+".join(self.detectors)}
        if self.detectors != ("hog",):  # HOG alone keeps the fingerprint it had before the cascade
            detection["detector_sides"] = [faces.DETECTOR_SIDES[name] for name in self.detectors]
            detection["cnn_upsample"] = faces.CNN_UPSAMPLE
        fingerprint = fingerprint_of(
            "face-zs/v1",
            {kind: [path.name, path.stat().st_size] for kind, path in sorted(paths.items())},
            {**detection, "upsample": int(settings["upsample"]),
             "fallback": [float(settings["fallback"]), float(settings["fallback_dy"])],
             "num_jitters": int(settings["num_jitters"]),
             "chip": [CHIP_SIZE, faces.CHIP_PADDING]},
        )
        return FaceEncoder(paths["predictor"], paths["recogniser"], fingerprint,
                           upsample=settings["upsample"], fallback=settings["fallback"],
                           fallback_dy=settings["fallback_dy"],
                           num_jitters=settings["num_jitters"],
                           batch_size=settings["batch_size"], detectors=self.detectors)
