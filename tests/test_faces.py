"""toolkit.models.faces' detector cascade on real images: HOG, then dlib's CNN face detector on what
HOG missed (lfw-style-mini), its shrinking of large images, and FaceCrop with a chain of detectors."""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason='dlib / face_recognition_models not installed: pip install -e ".[face]"')

# The FaceCrop of face_crop=True as it was before detectors could be chained (part of fingerprints).
HOG_CROP_REPR = ("FaceCrop(size=73, padding=0.25, upsample=0, detect_side=640, "
                 "predictor=shape_predictor_5_face_landmarks.dat:9150489, else=whole image)")


def _rgb(path: Path) -> np.ndarray:
    from toolkit.models import faces

    with Image.open(path) as image:
        return faces.rgb_array(image)


@pytest.fixture(scope="module")
def gallery(mini_benchmark):
    """The mini test gallery (stylised renderings): {"hog": [rgb...], "missed": [rgb...]} by HOG."""
    from toolkit.models import faces

    found: dict[str, list[np.ndarray]] = {"hog": [], "missed": []}
    for path in sorted((mini_benchmark / "test" / "gallery").glob("*.jpg")):
        rgb = _rgb(path)
        found["hog" if faces.largest_face(rgb) is not None else "missed"].append(rgb)
    assert found["missed"], "HOG finds a face in every mini gallery image: these tests need a harder one"
    return found


def test_detector_chains_and_a_clear_error():
    from toolkit.models import faces

    assert faces.detector_chain("hog") == ("hog",) and faces.detector_chain(" HOG+CNN ") == ("hog", "cnn")
    assert faces.DEFAULT_CHAIN == "hog" and set(faces.DETECTORS) == {"hog", "cnn"}
    assert faces.chain_models(("hog",)) == () and faces.chain_models(("hog", "cnn")) == ("cnn",)
    for bad in ("cnn+hog", "mtcnn", None, True):
        with pytest.raises(ValueError, match=r"^thing must be one of hog, hog\+cnn, not ") as error:
            faces.detector_chain(bad, "thing")
        assert "\n" not in str(error.value)
    assert faces.weights_status(("predictor", "cnn")).available_offline
    with pytest.raises(ValueError, match="FaceCrop detectors"):
        faces.FaceCrop(73, detectors=("hog", "mtcnn"))


def test_cnn_detector_answers_rectangles_where_hog_missed(gallery):
    """The CNN detector gives dlib.rectangles (its most confident box) and finds a face in some
    gallery images HOG missed (3 of 6 measured); first_face names the detector that found it."""
    import dlib
    from toolkit.models import faces

    cnn = faces.dlib_object("cnn", faces.model_paths(["cnn"])["cnn"])
    assert faces.dlib_object("cnn", faces.model_paths(["cnn"])["cnn"]) is cnn, "one per process"
    answers = [cnn(rgb, 0) for rgb in gallery["missed"]]
    assert all(isinstance(boxes, dlib.rectangles) for boxes in answers)
    rescued = [rgb for rgb, boxes in zip(gallery["missed"], answers) if len(boxes)]
    assert rescued, "the CNN detector found no face HOG missed in the mini gallery"

    box, found_by = faces.first_face(rescued[0], ("hog", "cnn"))
    assert found_by == "cnn" and isinstance(box, dlib.rectangle)
    assert box == max(cnn(rescued[0], 0), key=lambda rect: rect.area())
    assert 40 < box.width() < 250 and box.left() < 125 < box.right() and box.top() < 125 < box.bottom()
    assert faces.first_face(rescued[0], ("hog",)) == (None, None)
    hog_box, found_by = faces.first_face(gallery["hog"][0], ("hog", "cnn"))
    assert found_by == "hog" and hog_box == faces.largest_face(gallery["hog"][0])


def test_cnn_sees_large_images_shrunk_and_answers_in_their_pixels(gallery):
    """A rescued face scaled up past DETECTOR_SIDES["cnn"] is still found, its box scaled up with it
    (at 640 px one of these images also gives a faint false face as large as the real one: the most
    confident box is the one kept)."""
    from toolkit.models import faces

    rgb = next(rgb for rgb in gallery["missed"] if faces.largest_face(rgb, detector="cnn") is not None)
    small = faces.largest_face(rgb, detector="cnn")
    big = np.asarray(Image.fromarray(rgb).resize((1000, 1000), Image.BILINEAR))
    assert faces.DETECTOR_SIDES["cnn"] == faces.FACE_DETECTION_SIDE < 1000
    box, found_by = faces.first_face(big, ("cnn",))
    assert found_by == "cnn"
    scale = 1000 / rgb.shape[0]
    for got, want in ((box.left(), small.left()), (box.top(), small.top()),
                      (box.right(), small.right()), (box.bottom(), small.bottom())):
        assert abs(got - want * scale) < 0.1 * small.width() * scale


def test_face_crop_with_the_cascade(gallery):
    """FaceCrop's HOG default keeps its repr; with ("hog", "cnn") it names the chain, crops a face
    HOG missed and pickles without dlib objects."""
    from toolkit.models import faces

    hog_only = faces.FaceCrop(size=73)
    assert repr(hog_only) == HOG_CROP_REPR and repr(faces.FaceCrop(73, detectors=("hog",))) == HOG_CROP_REPR
    cascade = faces.FaceCrop(size=73, detectors=("hog", "cnn"))
    assert repr(cascade) != HOG_CROP_REPR and "detectors=hog+cnn(mmod_human_face_detector.dat:" in repr(cascade)
    clone = pickle.loads(pickle.dumps(cascade))
    assert len(pickle.dumps(cascade)) < 2_000 and repr(clone) == repr(cascade)

    images = [Image.fromarray(rgb) for rgb in gallery["missed"]]
    assert [hog_only.crop(image)[1] for image in images] == [False] * len(images)
    crops = [clone.crop(image) for image in images]
    assert any(found for _, found in crops)
    for (cropped, found), image in zip(crops, images):
        assert cropped.size == ((73, 73) if found else image.size)
    chip, found = cascade.crop(Image.fromarray(gallery["hog"][0]))
    assert found and np.array_equal(np.asarray(chip), np.asarray(hog_only(Image.fromarray(gallery["hog"][0]))))


def test_trained_strategies_take_a_chain_for_face_crop():
    """face_crop=True (or "hog") builds today's HOG crop; "hog+cnn" the cascade; a bad chain fails
    with one line."""
    from strategies import create_strategy

    assert create_strategy("triplet").make_face_crop(64) is None
    assert create_strategy("triplet", face_crop=False).make_face_crop(64) is None
    plain = repr(create_strategy("triplet", face_crop=True).make_face_crop(64))
    assert plain == HOG_CROP_REPR
    assert repr(create_strategy("triplet", face_crop="hog").make_face_crop(64)) == plain
    cascade = create_strategy("triplet", face_crop="hog+cnn").make_face_crop(64)
    assert cascade.detectors == ("hog", "cnn") and repr(cascade) != plain
    with pytest.raises(ValueError, match=r"triplet: face_crop .* must be one of hog, hog\+cnn, not 'hgo'"):
        create_strategy("triplet", face_crop="hgo")          # at creation, before any race starts
