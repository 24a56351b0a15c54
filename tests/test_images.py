"""Tests for toolkit.data.images: every supported mode decodes to 8-bit RGB, bad files raise UnreadableImage."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from toolkit.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    is_image_name,
    load_rgb,
    placeholder_image,
)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a.jpg", "A.JPG", "b.jpeg", "c.Png", "d.bmp", "e.gif", "f.webp", "g.tif", "h.TIFF", "i.ppm", "j.pgm", "k.jfif"]
)
def test_image_names_are_recognised_case_insensitively(name):
    assert is_image_name(name)


@pytest.mark.parametrize("name", ["notes.txt", "labels.csv", "photo", "archive.zip", ".DS_Store", "._photo.jpg", ".hidden.png"])
def test_non_images_and_hidden_files_are_not_images(name):
    assert not is_image_name(name)


def test_is_image_name_looks_at_the_file_name_not_the_folders(tmp_path):
    assert is_image_name(tmp_path / ".cache" / "x.png")
    assert not is_image_name(tmp_path / "pictures.jpg" / "readme.md")


def test_image_extensions_are_lowercase_suffixes():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".jfif", ".webp"} <= IMAGE_EXTENSIONS


# --- modes ----------------------------------------------------------------------------


def test_rgb_jpeg_round_trips(tmp_path):
    path = tmp_path / "red.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path, quality=95)
    image = load_rgb(path)
    assert image.size == (40, 30)
    r, g, b = pixels(image)[15, 20]
    assert r > 180 and g < 30 and b < 30


def test_greyscale_l_becomes_grey_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (12, 8), 77).save(path)
    array = pixels(load_rgb(path))
    assert array.shape == (8, 12, 3)
    assert (array == 77).all()


def test_bilevel_1_becomes_black_and_white(tmp_path):
    path = tmp_path / "bits.png"
    image = Image.new("1", (16, 4), 0)
    image.paste(1, (8, 0, 16, 4))
    image.save(path)
    array = pixels(load_rgb(path))
    assert (array[:, :8] == 0).all()
    assert (array[:, 8:] == 255).all()


def test_la_transparent_pixels_become_white_and_opaque_keep_their_grey(tmp_path):
    path = tmp_path / "la.png"
    image = Image.new("LA", (10, 2), (40, 255))
    image.paste((40, 0), (0, 0, 5, 2))
    image.save(path)
    array = pixels(load_rgb(path))
    assert (array[:, :5] == 255).all()
    assert (array[:, 5:] == 40).all()


def test_rgba_transparent_becomes_white_half_transparent_is_blended(tmp_path):
    path = tmp_path / "rgba.png"
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    image.save(path)
    array = pixels(load_rgb(path))
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[0, 1]) == (0, 0, 255)
    assert all(120 <= value <= 135 for value in array[0, 2])


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (6, 6), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
    image.save(path)
    assert Image.open(path).mode == "P"
    assert (pixels(load_rgb(path)) == [0, 200, 0]).all()


def test_palette_transparent_index_becomes_white(tmp_path):
    path = tmp_path / "palette_alpha.png"
    image = Image.new("P", (4, 1), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((3, 0), 1)
    image.save(path, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    array = pixels(load_rgb(path))
    assert (array[0, :3] == 255).all()
    assert tuple(array[0, 3]) == (255, 0, 0)


def test_cmyk_jpeg_decodes_to_the_right_colours(tmp_path):
    path = tmp_path / "cmyk.jpg"
    image = Image.new("CMYK", (20, 10), (0, 0, 0, 0))  # white
    image.paste((255, 0, 0, 0), (10, 0, 20, 10))  # cyan
    image.save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    array = pixels(load_rgb(path)).astype(int)
    assert (array[:, :8] > 240).all()
    red, green, blue = array[5, 15]
    assert red < 20 and green > 235 and blue > 235


def test_ycbcr_tiff_decodes(tmp_path):
    path = tmp_path / "ycbcr.tif"
    Image.new("RGB", (8, 8), (0, 0, 255)).convert("YCbCr").save(path)
    with Image.open(path) as check:
        assert check.mode == "YCbCr"
    red, green, blue = pixels(load_rgb(path)).astype(int)[4, 4]
    assert red < 10 and green < 10 and blue > 245


def sixteen_bit_ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (4, 1))


def test_16_bit_png_ramp_spans_0_to_255_instead_of_clipping(tmp_path):
    path = tmp_path / "ramp16.png"
    Image.fromarray(sixteen_bit_ramp()).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"
    array = pixels(load_rgb(path))
    assert array.shape == (4, 64, 3)
    assert array.min() == 0 and array.max() == 255
    assert array[0, 32, 0] == round(int(sixteen_bit_ramp()[0, 32]) * 255 / 65535)
    assert (np.diff(array[0, :, 0].astype(int)) >= 0).all()  # still a ramp
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_16_bit_big_endian_tiff(tmp_path):
    path = tmp_path / "ramp16b.tif"
    ramp = sixteen_bit_ramp()
    Image.frombytes("I;16B", (64, 4), ramp.astype(">u2").tobytes()).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16B"
    array = pixels(load_rgb(path))
    assert array.min() == 0 and array.max() == 255
    assert array[0, 32, 0] == round(int(ramp[0, 32]) * 255 / 65535)


def test_dark_16_bit_image_stays_dark(tmp_path):
    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).save(path)
    assert (pixels(load_rgb(path)) <= 1).all()


def test_32_bit_integer_tiff_with_16_bit_values(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(sixteen_bit_ramp().astype(np.int32)).save(path)
    with Image.open(path) as check:
        assert check.mode == "I"
    array = pixels(load_rgb(path))
    assert array.min() == 0 and array.max() == 255


def test_float_tiff_in_0_to_1(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.tile(np.linspace(0.0, 1.0, 11, dtype=np.float32), (3, 1))).save(path)
    with Image.open(path) as check:
        assert check.mode == "F"
    array = pixels(load_rgb(path))
    assert array.shape == (3, 11, 3)
    assert array[0, 0, 0] == 0 and array[0, 10, 0] == 255 and array[0, 5, 0] in (127, 128)


def test_float_tiff_out_of_range_is_stretched(tmp_path):
    path = tmp_path / "float_wide.tif"
    Image.fromarray(np.array([[-5.0, 0.0, 995.0]], dtype=np.float32)).save(path)
    assert list(pixels(load_rgb(path))[0, :, 0]) == [0, 1, 255]


def test_exif_orientation_6_swaps_width_and_height(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    image.save(path, exif=exif, quality=95)
    upright = load_rgb(path)
    assert upright.size == (20, 40)
    array = pixels(upright).astype(int)
    assert array[5, 10, 0] > 200 and array[5, 10, 2] < 50  # stored left is now on top
    assert array[35, 10, 2] > 200 and array[35, 10, 0] < 50


def test_animated_gif_gives_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0, 0, 0] * 253
    frames = []
    for index in (1, 2):
        frame = Image.new("P", (9, 7), index)
        frame.putpalette(palette)
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2
    assert (pixels(load_rgb(path)) == [255, 0, 0]).all()


def test_multi_page_tiff_gives_first_page(tmp_path):
    path = tmp_path / "pages.tif"
    Image.new("RGB", (6, 5), (0, 0, 255)).save(
        path, save_all=True, append_images=[Image.new("RGB", (6, 5), (255, 0, 0))]
    )
    image = load_rgb(path)
    assert image.size == (6, 5)
    assert (pixels(image) == [0, 0, 255]).all()


@pytest.mark.parametrize("suffix", [".bmp", ".ppm", ".webp"])
def test_other_formats(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    Image.new("RGB", (5, 3), (10, 20, 30)).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    assert (pixels(load_rgb(path)) == [10, 20, 30]).all()


def test_loaded_image_is_independent_of_the_file(tmp_path):
    path = tmp_path / "gone.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    image = load_rgb(path)
    path.unlink()  # the pixels must already be in memory
    assert image.getpixel((0, 0)) == (1, 2, 3)


# --- bad files ------------------------------------------------------------------------


def assert_unreadable(path, reason_part: str) -> UnreadableImage:
    with pytest.raises(UnreadableImage) as caught:
        load_rgb(path)
    error = caught.value
    assert str(path) in str(error)
    assert str(error) == f"{error.path}: {error.reason}"
    assert reason_part in error.reason
    return error


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert_unreadable(path, "empty file (0 bytes)")


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_unreadable(path, "truncated or corrupt image data")


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_unreadable(path, "truncated or corrupt image data")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    assert_unreadable(path, "not an image file")


def test_missing_file(tmp_path):
    assert_unreadable(tmp_path / "nowhere.jpg", "file not found")


def test_decompression_bomb_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 > 2 * limit: Pillow raises
    assert_unreadable(path, "decompression bomb")


def test_decompression_bomb_warning_is_refused_too(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # between limit and 2 * limit: Pillow only warns
    assert_unreadable(path, "decompression bomb")


def test_unreadable_image_pickles_for_worker_processes():
    error = pickle.loads(pickle.dumps(UnreadableImage("a/b.jpg", "empty file (0 bytes)")))
    assert (error.path, error.reason, str(error)) == ("a/b.jpg", "empty file (0 bytes)", "a/b.jpg: empty file (0 bytes)")


def test_placeholder_is_mid_grey_rgb():
    image = placeholder_image()
    assert image.mode == "RGB" and image.size == (224, 224)
    assert (np.asarray(image) == 128).all()
    assert placeholder_image((32, 16)).size == (32, 16)
