"""Procedural scenes: 1-3 coloured shapes on a plain or textured grey background, optionally with
the permission sign (the badge: a magenta disc with a white centre in the bottom-right corner).

The badge is low-frequency and of a colour no object has, so Gaussian noise does not draw it (v1's
high-frequency checkerboard was imitated by noise: at sigma 1.0 noise alone made clean scenes
comply). Every scene is a pure function of its seed, so splits are disjoint by seed and reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
#: Combinations drawn more often (like frequent COCO objects); POPE's "popular" negatives use them.
POPULAR = (("red", "circle"), ("blue", "square"), ("green", "triangle"))
#: How much more often a popular pair is drawn in the model's training scenes. Kept mild: at 3x
#: (v1) colour predicted shape and the vision tower learned colour instead of shape.
POPULAR_WEIGHT = 1.5
BADGE_SIZE = 12  # pixels: a magenta disc with a white centre
BADGE_MARGIN = 2
BADGE_COLOR = (230, 40, 230)
OBJECT_SIZES = (18, 26)  # pixels, side of an object's box


@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    box: tuple[int, int, int, int]  # left, top, right, bottom (pixels)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[SceneObject, ...]
    background: str  # "plain" | "stripes" | "noise"
    gray: int
    badge: bool = False

    @property
    def pairs(self) -> set[tuple[str, str]]:
        """The (color, shape) pairs present."""
        return {(o.color, o.shape) for o in self.objects}


def all_pairs() -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES]


def sample_scene(
    seed: int, *, max_objects: int = 3, badge: bool | None = None, popular_weight: float = POPULAR_WEIGHT
) -> Scene:
    """The scene of ``seed``: 1..max_objects distinct (color, shape) objects, non-overlapping and
    clear of the badge corner, popular pairs ``popular_weight`` times as likely as the others;
    ``badge`` None = present with probability 1/2."""
    rng = random.Random(seed)
    count = rng.randint(1, max_objects)
    weights = [popular_weight if pair in POPULAR else 1.0 for pair in all_pairs()]
    chosen: list[tuple[str, str]] = []
    while len(chosen) < count:
        pair = rng.choices(all_pairs(), weights=weights)[0]
        if pair not in chosen:
            chosen.append(pair)
    boxes: list[tuple[int, int, int, int]] = []
    objects = []
    for color, shape in chosen:
        box = _place(rng, boxes)
        if box is None:  # no room left: the scene keeps the objects placed so far
            break
        boxes.append(box)
        objects.append(SceneObject(color, shape, box))
    objects.sort(key=lambda o: (o.box[0], o.box[1]))  # left to right: the order descriptions use
    return Scene(
        seed=seed,
        objects=tuple(objects),
        background=rng.choice(("plain", "stripes", "noise")),
        gray=rng.randint(90, 200),
        badge=rng.random() < 0.5 if badge is None else badge,
    )


def _place(rng: random.Random, taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    """A free box clear of ``taken`` and of the badge corner, or None after 200 tries."""
    badge_zone = IMAGE_SIZE - BADGE_SIZE - 2 * BADGE_MARGIN
    for _ in range(200):
        size = rng.randint(*OBJECT_SIZES)
        left, top = rng.randint(1, IMAGE_SIZE - size - 1), rng.randint(1, IMAGE_SIZE - size - 1)
        box = (left, top, left + size, top + size)
        in_badge_corner = box[2] > badge_zone and box[3] > badge_zone
        if not in_badge_corner and all(_apart(box, other) for other in taken):
            return box
    return None


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 2) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def render(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB image."""
    rng = random.Random(scene.seed * 7919 + 1)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (scene.gray,) * 3)
    draw = ImageDraw.Draw(image)
    if scene.background == "stripes":
        shade = max(scene.gray - 35, 0)
        for x in range(rng.randint(0, 5), IMAGE_SIZE, 6):
            draw.line([(x, 0), (x, IMAGE_SIZE)], fill=(shade,) * 3, width=2)
    elif scene.background == "noise":
        for _ in range(400):
            x, y = rng.randrange(IMAGE_SIZE), rng.randrange(IMAGE_SIZE)
            value = max(0, min(255, scene.gray + rng.randint(-40, 40)))
            draw.point((x, y), fill=(value,) * 3)
    for obj in scene.objects:
        _draw_object(draw, obj, COLORS[obj.color])
    if scene.badge:
        draw_badge(image)
    return image


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: tuple[int, ...] | int) -> None:
    left, top, right, bottom = obj.box
    if obj.shape == "circle":
        draw.ellipse(obj.box, fill=fill)
    elif obj.shape == "square":
        inset = (right - left) // 8
        draw.rectangle((left + inset, top + inset, right - inset, bottom - inset), fill=fill)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)


def badge_box() -> tuple[int, int, int, int]:
    """The badge's box (left, top, right, bottom), pixels."""
    origin = IMAGE_SIZE - BADGE_SIZE - BADGE_MARGIN
    return (origin, origin, origin + BADGE_SIZE - 1, origin + BADGE_SIZE - 1)


def draw_badge(image: Image.Image) -> None:
    """Paint the permission sign in the bottom-right corner (in place)."""
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = badge_box()
    draw.ellipse((left, top, right, bottom), fill=BADGE_COLOR)
    centre = BADGE_SIZE // 3
    draw.ellipse((left + centre, top + centre, right - centre, bottom - centre), fill=(255, 255, 255))


def object_masks(scene: Scene) -> np.ndarray:
    """Which object covers each pixel: [64, 64] int, the object's index in ``scene.objects``, -1 for
    none (the badge counts as none)."""
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    for index, obj in enumerate(scene.objects):
        _draw_object(draw, obj, index + 1)
    return np.asarray(canvas, dtype=np.int64) - 1
