"""Robust image decoding for competition data.

Every strategy reads its training, query and gallery images through
:func:`load_rgb`, which turns whatever a competition ships (greyscale, palette,
alpha, CMYK, 16-bit and float TIFFs, rotated phone photos, animated GIFs) into
a plain, fully loaded 8-bit RGB :class:`PIL.Image.Image`, and turns every way a
file can be bad (empty, truncated, not an image, decompression bomb) into one
exception type, :class:`UnreadableImage`, whose message names the file and says
what is wrong with it.  Callers that must produce an answer for every test
image can substitute :func:`placeholder_image` for an unreadable one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from toolkit.machine.interrupts import raise_if_stopped
__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImage",
    "is_image_name",
    "load_rgb",
    "placeholder_image",
]

#: Lowercase file-name suffixes treated as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
    }
)

#: Colour used to flatten transparent pixels.
_BACKGROUND = (255, 255, 255)

#: Colour of :func:`placeholder_image`.
_PLACEHOLDER_GREY = (128, 128, 128)

_SIXTEEN_BIT_MAX = 65535


def is_image_name(path: str | os.PathLike[str]) -> bool:
    """Whether *path* names an image file, judged by its suffix alone.

    The suffix check is case-insensitive.  Hidden files (names starting with
    ``.``), which includes the macOS AppleDouble companions ``._photo.jpg``
    that hold resource forks rather than pixels, are never images.
    """
    name = Path(path).name
    if not name or name.startswith("."):
        return False
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


class UnreadableImage(Exception):
    """An image file that cannot be decoded.

    ``path`` is the file at fault and ``reason`` a short human explanation,
    e.g. ``"empty file (0 bytes)"``; ``str()`` gives ``"<path>: <reason>"``.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def placeholder_image(size: tuple[int, int] = (224, 224)) -> Image.Image:
    """A mid-grey RGB image of *size* (width, height).

    Callers use it in place of an unreadable test image so that every query
    and gallery item still gets an embedding and an answer.
    """
    return Image.new("RGB", size, _PLACEHOLDER_GREY)


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode *path* into a fully loaded 8-bit RGB image, upright, file closed.

    * EXIF orientation is applied (``ImageOps.exif_transpose``).
    * Multi-frame files (animated GIF, multi-page TIFF) give their first frame.
    * Alpha (``RGBA``, ``LA``, ``PA``, palette or greyscale transparency) is
      composited onto a white background.
    * 16-bit greyscale (``I;16``, ``I;16B`` ...) is scaled by 255/65535, so
      the full 16-bit range maps onto the full 8-bit range; Pillow's own
      ``convert("L")`` clips such images to near-white instead.
    * 32-bit integer ``I`` images are treated as 8-bit if their values fit in
      0..255, as 16-bit if they fit in 0..65535, and otherwise stretched from
      their minimum to their maximum.
    * Float ``F`` images are treated as 0..1 if their values fit there, as
      0..255 if they fit there, and otherwise stretched from their minimum to
      their maximum.

    Raises :class:`UnreadableImage` for any file that cannot be decoded
    (missing, empty, truncated, corrupt, not an image, decompression bomb);
    no other exception type escapes for a bad file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnreadableImage(path, "file not found; check the path") from None
    except OSError as error:
        raise UnreadableImage(path, f"cannot read file ({error.strerror or error})") from None
    if path.is_dir():
        raise UnreadableImage(path, "is a folder, not an image file")
    if size == 0:
        raise UnreadableImage(path, "empty file (0 bytes)")

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat
            # the warning like the error so a bomb never gets decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _refuse_bomb(opened)
                opened.load()  # the first frame; later frames are never read
                upright = _upright(opened)
                rgb = _to_rgb(upright)
                if rgb is opened:
                    rgb = rgb.copy()
                rgb.load()
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(
            path, f"image too large, refused as a possible decompression bomb ({error})"
        ) from error
    except PermissionError as error:
        raise UnreadableImage(path, "permission denied; check the file's permissions") from error
    except UnidentifiedImageError as error:
        raise UnreadableImage(
            path, "not an image file (Pillow does not recognise its contents)"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as error:
        # Truncated files raise OSError("image file is truncated ..."); other
        # corruption surfaces as any of these depending on the format plugin.
        raise UnreadableImage(path, f"truncated or corrupt image data ({_describe(error)})") from error
    except MemoryError as error:
        raise UnreadableImage(path, "not enough memory to decode this image") from error
    except Exception as error:  # the boundary: nothing else escapes for a bad file
        raise_if_stopped(error)     # ... but a Ctrl-C that an import wrapped: the file is not to blame
        raise UnreadableImage(path, f"could not decode image ({_describe(error)})") from error
    return rgb


def _describe(error: BaseException) -> str:
    message = str(error).strip()
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _refuse_bomb(image: Image.Image) -> None:
    """Refuse images over ``Image.MAX_IMAGE_PIXELS`` even if warnings are muted."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} = {pixels:,} pixels exceeds the limit of {limit:,}"
        )


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block is not fatal."""
    try:
        transposed = ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF: the pixels are still fine
        return image
    return image if transposed is None else transposed


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, flattening alpha onto white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        return _grey_array_to_rgb(np.asarray(image), kind="16-bit")
    if mode == "I":
        return _grey_array_to_rgb(np.asarray(image), kind="integer")
    if mode == "F":
        return _grey_array_to_rgb(np.asarray(image), kind="float")
    if mode == "La":  # premultiplied; Pillow converts it to RGBA only via LA
        image, mode = image.convert("LA"), "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in image.info:
        return _flatten_alpha(image.convert("RGBA"))
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX ...


def _flatten_alpha(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_array_to_rgb(values: np.ndarray, *, kind: str) -> Image.Image:
    """Scale a single-channel array to 8 bits, as RGB.

    *kind* is ``"16-bit"`` (always scaled by 255/65535, so a dark 16-bit image
    stays dark), ``"integer"`` or ``"float"`` (range guessed from the values,
    see :func:`load_rgb`).
    """
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    if kind == "16-bit":
        scaled = values * (255.0 / _SIXTEEN_BIT_MAX)
    elif kind == "float" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif kind == "integer" and low >= 0.0 and high <= _SIXTEEN_BIT_MAX:
        scaled = values * (255.0 / _SIXTEEN_BIT_MAX)
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
