"""Retrieval grids drawn with PIL: one row per query, the query then its top-10 gallery images.

Drawing only: what each cell shows (an image file, a caption, a frame colour) is decided by the
caller (toolkit.pictures.replay builds the rows of a run or a submission file). Every cell has the same
size, so a grid's geometry follows from GridLayout alone:

    margin | query | query_gap | result 1 | gap | result 2 | ... | result 10 | margin

and each cell is a coloured frame around a square thumbnail (the image letterboxed, never
cropped) with caption lines below. An image that cannot be read (or is not there) is drawn as
the grey placeholder with a red band saying so; drawing never fails because of one file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from toolkit.data.images import UnreadableImage, load_rgb, placeholder_image

HIT = (34, 160, 60)            # result of the query's identity
MISS = (214, 40, 40)           # result of another identity
QUERY = (40, 90, 200)          # the query's own frame
UNKNOWN = (185, 185, 185)      # no labels (test split): rank order only
MARK = (214, 40, 40)           # the band across an unreadable image
BACKGROUND = (255, 255, 255)
LETTERBOX = (236, 236, 236)
TEXT = (30, 30, 30)
MUTED = (110, 110, 110)


@dataclass(frozen=True)
class Cell:
    """One image of a row: the file (None: nothing to load), caption lines, frame colour."""
    path: Path | None
    caption: tuple[str, ...]
    frame: tuple[int, int, int]


@dataclass(frozen=True)
class GridRow:
    query: Cell
    results: tuple[Cell, ...]     # best first; fewer than `columns - 1` leaves blank cells


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid. Cell (row, column): column 0 is the query, 1..10 the results."""
    thumbnail: int = 128          # the square image area inside the frame
    frame: int = 5                # frame width around the thumbnail
    caption_lines: int = 2
    line_height: int = 14
    font_size: int = 11
    gap: int = 6                  # between cells
    query_gap: int = 18           # extra space between the query and its results
    margin: int = 12
    header: int = 44              # title and legend above the first row
    columns: int = 11

    @property
    def cell_width(self) -> int:
        return self.thumbnail + 2 * self.frame

    @property
    def cell_height(self) -> int:
        return self.thumbnail + 2 * self.frame + self.caption_lines * self.line_height + 4

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """Top-left pixel of the cell's frame."""
        x = self.margin + column * (self.cell_width + self.gap) + (self.query_gap if column > 0 else 0)
        y = self.header + row * (self.cell_height + self.gap)
        return x, y

    def thumbnail_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), right/bottom exclusive, of the image inside the frame."""
        x, y = self.cell_origin(row, column)
        return x + self.frame, y + self.frame, x + self.frame + self.thumbnail, y + self.frame + self.thumbnail

    def size(self, rows: int) -> tuple[int, int]:
        width = 2 * self.margin + self.columns * self.cell_width + (self.columns - 1) * self.gap + self.query_gap
        height = self.header + rows * self.cell_height + max(rows - 1, 0) * self.gap + self.margin
        return width, height


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` (Pillow >= 10.1); its small bitmap font on older ones."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def fit_text(text: str, typeface, width: int) -> str:
    """`text`, cut with '..' so that it fits in `width` pixels."""
    if typeface.getlength(text) <= width:
        return text
    while text and typeface.getlength(text + "..") > width:
        text = text[:-1]
    return text + ".."


class _Thumbnails:
    """Each file decoded and letterboxed once, however many rows show it."""

    def __init__(self, size: int, typeface):
        self.size, self.typeface, self.drawn = size, typeface, {}

    def get(self, path: Path | None) -> Image.Image:
        if path not in self.drawn:
            self.drawn[path] = self._draw(path)
        return self.drawn[path]

    def _draw(self, path: Path | None) -> Image.Image:
        square = (self.size, self.size)
        if path is None or not Path(path).exists():
            return self._marked(placeholder_image(square), "not found")
        try:
            image = load_rgb(path)
        except UnreadableImage:
            return self._marked(placeholder_image(square), "unreadable")
        return ImageOps.pad(image, square, method=Image.Resampling.BILINEAR, color=LETTERBOX)

    def _marked(self, image: Image.Image, word: str) -> Image.Image:
        draw = ImageDraw.Draw(image)
        band = max(14, self.size // 5)
        top = (self.size - band) // 2
        draw.rectangle((0, top, self.size - 1, top + band - 1), fill=MARK)
        left, upper, right, lower = draw.textbbox((0, 0), word, font=self.typeface)
        draw.text(((self.size - (right - left)) // 2 - left, top + (band - (lower - upper)) // 2 - upper), word,
                  fill=(255, 255, 255), font=self.typeface)
        return image


def render_grid(rows: Sequence[GridRow], title: str, legend: str = "",
                layout: GridLayout = GridLayout()) -> Image.Image:
    """The grid as an RGB image of layout.size(len(rows))."""
    canvas = Image.new("RGB", layout.size(len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    caption_font, title_font = font(layout.font_size), font(layout.font_size + 5)
    draw.text((layout.margin, 6), fit_text(title, title_font, canvas.width - 2 * layout.margin), fill=TEXT,
              font=title_font)
    if legend:
        draw.text((layout.margin, 27), fit_text(legend, caption_font, canvas.width - 2 * layout.margin), fill=MUTED,
                  font=caption_font)
    thumbnails = _Thumbnails(layout.thumbnail, caption_font)
    for row_number, row in enumerate(rows):
        for column, cell in enumerate((row.query, *row.results)[:layout.columns]):
            x, y = layout.cell_origin(row_number, column)
            draw.rectangle((x, y, x + layout.cell_width - 1, y + layout.thumbnail + 2 * layout.frame - 1),
                           fill=cell.frame)
            canvas.paste(thumbnails.get(cell.path), layout.thumbnail_box(row_number, column)[:2])
            caption_top = y + layout.thumbnail + 2 * layout.frame + 2
            for line_number, line in enumerate(cell.caption[:layout.caption_lines]):
                draw.text((x + 1, caption_top + line_number * layout.line_height),
                          fit_text(line, caption_font, layout.cell_width - 2),
                          fill=TEXT if line_number == 0 else MUTED, font=caption_font)
    return canvas
