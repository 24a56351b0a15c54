"""A small competition-shaped dataset of the project's own making, for the demo and the tests.

Each identity is a drawn face with its own proportions and colours (head shape, skin, hair style
and colour, eye spacing and colour, mouth, glasses, background). "Real photos" are drawn with
random pose, scale, light and noise; "stylised renderings" are the same person passed through one
of five styles (cartoon, sketch, watercolour, paint, pop-art), as the competition gallery is.
Training holds real and stylised images (stylised ones end in `_s`); test identities never appear
in training; test file names carry no identity; `answers.json` beside them holds the truth.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

STYLES = ("cartoon", "sketch", "watercolour", "paint", "pop-art")


@dataclass(frozen=True)
class Person:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    eyes: tuple[int, int, int]
    background: tuple[int, int, int]
    head_width: float
    head_height: float
    eye_spacing: float
    mouth_width: float
    hair_style: int
    glasses: bool


def random_person(rng: random.Random) -> Person:
    def colour(low: int = 0, high: int = 255) -> tuple[int, int, int]:
        return tuple(rng.randint(low, high) for _ in range(3))
    return Person(skin=colour(90, 240), hair=colour(0, 200), eyes=colour(0, 160), background=colour(),
                  head_width=rng.uniform(0.28, 0.4), head_height=rng.uniform(0.38, 0.5),
                  eye_spacing=rng.uniform(0.08, 0.16), mouth_width=rng.uniform(0.06, 0.16),
                  hair_style=rng.randrange(4), glasses=rng.random() < 0.3)


def draw_person(person: Person, rng: random.Random, size: int = 128) -> Image.Image:
    """One photo of the person with random pose, scale, light and noise."""
    canvas = size * 2
    image = Image.new("RGB", (canvas, canvas), person.background)
    draw = ImageDraw.Draw(image)
    scale = canvas * rng.uniform(0.9, 1.1)
    cx, cy = canvas / 2 + rng.uniform(-0.05, 0.05) * canvas, canvas / 2 + rng.uniform(-0.05, 0.05) * canvas
    w, h = person.head_width * scale, person.head_height * scale
    if person.hair_style in (1, 3):  # long hair behind the head
        draw.ellipse([cx - w * 1.15, cy - h * 1.05, cx + w * 1.15, cy + h * 1.2], fill=person.hair)
    draw.ellipse([cx - w, cy - h, cx + w, cy + h], fill=person.skin)
    if person.hair_style in (0, 1):  # fringe
        draw.chord([cx - w, cy - h * 1.05, cx + w, cy + h * 0.2], 180, 360, fill=person.hair)
    elif person.hair_style == 2:  # crew cut
        draw.chord([cx - w * 0.95, cy - h * 1.08, cx + w * 0.95, cy - h * 0.2], 180, 360, fill=person.hair)
    eye_dx, eye_y, eye_r = person.eye_spacing * scale, cy - h * 0.15, scale * 0.025
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_r * 2, eye_y - eye_r, ex + eye_r * 2, eye_y + eye_r], fill=(250, 250, 250))
        draw.ellipse([ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r], fill=person.eyes)
        if person.glasses:
            draw.ellipse([ex - eye_r * 3, eye_y - eye_r * 2.5, ex + eye_r * 3, eye_y + eye_r * 2.5], outline=(20, 20, 20), width=3)
    draw.line([cx, eye_y + eye_r, cx - eye_r, cy + h * 0.2, cx + eye_r, cy + h * 0.2], fill=tuple(c // 2 for c in person.skin), width=3)
    mouth = person.mouth_width * scale
    draw.arc([cx - mouth, cy + h * 0.3, cx + mouth, cy + h * 0.55], 10, 170, fill=(150, 40, 50), width=4)
    image = image.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, fillcolor=person.background)
    image = image.resize((size, size), Image.LANCZOS)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    # numpy noise from the seeded generator (PIL's effect_noise draws from C's unseeded rand())
    noise = np.random.default_rng(rng.getrandbits(32)).normal(128, rng.uniform(5, 25), (size, size))
    noise_image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).convert("RGB")
    return Image.blend(image, noise_image, 0.08)


def stylise(image: Image.Image, style: str) -> Image.Image:
    if style == "cartoon":
        return ImageOps.posterize(image.filter(ImageFilter.SMOOTH_MORE), 2)
    if style == "sketch":
        edges = ImageOps.invert(image.convert("L").filter(ImageFilter.FIND_EDGES))
        return ImageOps.autocontrast(edges).convert("RGB")
    if style == "watercolour":
        return ImageEnhance.Color(image.filter(ImageFilter.GaussianBlur(2))).enhance(1.6)
    if style == "paint":
        return image.filter(ImageFilter.ModeFilter(5))
    if style == "pop-art":
        return ImageOps.solarize(ImageOps.posterize(image, 1), threshold=100)
    raise ValueError(f"unknown style {style!r}; styles: {', '.join(STYLES)}")


def make_synthetic_competition(root: Path, training_identities: int = 12, test_identities: int = 6,
                               photos_per_identity: int = 3, distractors: int = 6, size: int = 128,
                               seed: int = 0) -> Path:
    """Write training/, test/query/, test/gallery/ and answers.json under root; return root."""
    root = Path(root)
    rng = random.Random(seed)
    people = [random_person(rng) for _ in range(training_identities + test_identities + distractors)]

    def save(image: Image.Image, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)

    for number, person in enumerate(people[:training_identities]):
        name = f"person_{number:03d}"
        for shot in range(photos_per_identity):
            save(draw_person(person, rng, size), root / "training" / name / f"{name}_{shot:03d}.jpg")
            rendering = stylise(draw_person(person, rng, size), rng.choice(STYLES))
            save(rendering, root / "training" / name / f"{name}_{shot:03d}_s.jpg")

    answers: dict[str, dict[str, str]] = {"query": {}, "gallery": {}}
    test_people = people[training_identities:]
    for number, person in enumerate(test_people):
        name = f"person_{training_identities + number:03d}"
        is_distractor = number >= test_identities
        shots = 1 if is_distractor else 2
        for _ in range(shots):
            if not is_distractor:
                query_name = f"{rng.getrandbits(48):012x}.jpg"
                save(draw_person(person, rng, size), root / "test" / "query" / query_name)
                answers["query"][query_name] = name
            gallery_name = f"{rng.getrandbits(48):012x}.jpg"
            save(stylise(draw_person(person, rng, size), rng.choice(STYLES)), root / "test" / "gallery" / gallery_name)
            answers["gallery"][gallery_name] = name
    (root / "answers.json").write_text(json.dumps(answers, indent=1, sort_keys=True))
    return root
