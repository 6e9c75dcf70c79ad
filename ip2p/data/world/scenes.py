"""Scenes of the small world: what a scene is, how it is drawn pixel-exactly, and how it is captioned.

A scene is a background colour, a global drawing style, a day/night flag and up to three shapes,
each on its own cell of a 3x3 grid. Rendering is exact (no anti-aliasing): every pixel belongs to
one shape or to the background by a test on the pixel centre, so the mask of an edit (the pixels
that change) is exact. Images are ``uint8 [64, 64, 3]`` arrays here; ``dataset`` turns them into
float tensors.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

SIZE = 64  # image side in pixels
GRID = 3  # cells per side

# name -> RGB; shape colours are kept apart from background colours so every shape is visible.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 20),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "purple": (140, 40, 180),
    "pink": (250, 120, 200),
    "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (140, 140, 140),
    "beige": (225, 205, 150),
    "light blue": (150, 200, 245),
}
KINDS = ("square", "circle", "triangle", "diamond")  # "puddle" only arises from melting
PUDDLE = "puddle"
SIZES = ("small", "large")
RADIUS = {"small": 5.0, "large": 9.0}
STYLES = ("plain", "outlined", "striped")

ROW_NAMES = ("top", "middle", "bottom")
COL_NAMES = ("left", "middle", "right")

NIGHT_SCALE = 0.35  # night multiplies every colour by this and adds a blue tint
NIGHT_TINT = (0, 10, 40)


@dataclass(frozen=True)
class Shape:
    kind: str  # one of KINDS or PUDDLE
    colour: str  # key of COLOURS
    size: str  # "small" | "large"
    row: int  # 0..2, top to bottom
    col: int  # 0..2, left to right


@dataclass(frozen=True)
class Scene:
    background: str
    style: str = "plain"
    night: bool = False
    shapes: tuple[Shape, ...] = field(default_factory=tuple)

    def replace(self, **kw) -> "Scene":
        return dataclasses.replace(self, **kw)

    def shape_with_colour(self, colour: str) -> Shape:
        for s in self.shapes:
            if s.colour == colour:
                return s
        raise KeyError(colour)

    def occupied(self) -> set[tuple[int, int]]:
        return {(s.row, s.col) for s in self.shapes}


# --------------------------------------------------------------------------------------------
# rendering


def _centre(row: int, col: int) -> tuple[float, float]:
    cell = SIZE / GRID
    return ((col + 0.5) * cell, (row + 0.5) * cell)


_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5  # pixel centres


def footprint(shape: Shape) -> np.ndarray:
    """Bool ``[64, 64]``: the pixels the shape covers when filled."""
    r = RADIUS[shape.size]
    cx, cy = _centre(shape.row, shape.col)
    dx, dy = _XX - cx, _YY - cy
    if shape.kind == "square":
        h = 0.8 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape.kind == "circle":
        return dx * dx + dy * dy <= r * r
    if shape.kind == "triangle":
        top, bottom = -r, 0.8 * r
        t = (dy - top) / (bottom - top)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r * 1.05)
    if shape.kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if shape.kind == PUDDLE:
        # a flat ellipse lying on the floor of its cell's column
        pcx, pcy = cx, SIZE - 0.35 * r - 1.0
        rx, ry = 1.45 * r, 0.35 * r
        return ((_XX - pcx) / rx) ** 2 + ((_YY - pcy) / ry) ** 2 <= 1.0
    raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {KINDS + (PUDDLE,)}")


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        m = out
        e = m.copy()
        e[1:, :] &= m[:-1, :]
        e[:-1, :] &= m[1:, :]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        out = e
    return out


def shape_pixels(shape: Shape, style: str) -> tuple[np.ndarray, np.ndarray]:
    """(covered, colour_rgb[64,64,3]) of one shape drawn in ``style`` (before night)."""
    fill = footprint(shape)
    rgb = np.zeros((SIZE, SIZE, 3), dtype=np.float64)
    rgb[:] = COLOURS[shape.colour]
    if style == "outlined":
        fill = fill & ~_erode(fill, 2)
    elif style == "striped":
        dark = (np.floor(_YY) // 2) % 2 == 1  # 2-pixel stripes, fixed to the image rows
        rgb[dark] = rgb[dark] * 0.45
    elif style != "plain":
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    return fill, rgb


def render(scene: Scene) -> np.ndarray:
    """The scene as ``uint8 [64, 64, 3]``, drawn exactly (no anti-aliasing)."""
    img = np.zeros((SIZE, SIZE, 3), dtype=np.float64)
    img[:] = BACKGROUNDS[scene.background]
    for s in scene.shapes:
        cov, rgb = shape_pixels(s, scene.style)
        img[cov] = rgb[cov]
    if scene.night:
        img = img * NIGHT_SCALE + np.asarray(NIGHT_TINT, dtype=np.float64)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# sampling


def random_shape(rng: np.random.Generator, cells: list[tuple[int, int]], colours: list[str]) -> Shape:
    row, col = cells[int(rng.integers(len(cells)))]
    return Shape(
        kind=KINDS[int(rng.integers(len(KINDS)))],
        colour=colours[int(rng.integers(len(colours)))],
        size=SIZES[int(rng.integers(2))],
        row=row,
        col=col,
    )


def free_cells(scene: Scene) -> list[tuple[int, int]]:
    occ = scene.occupied()
    return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in occ]


def unused_colours(scene: Scene) -> list[str]:
    used = {s.colour for s in scene.shapes}
    return [c for c in COLOURS if c not in used]


def random_scene(
    rng: np.random.Generator,
    *,
    n_shapes: int | None = None,
    night_p: float = 0.0,
    puddle_p: float = 0.0,
) -> Scene:
    """A random scene: 1-3 shapes (weights 0.5/0.35/0.15) with distinct colours, one per cell.

    ``night_p`` and ``puddle_p`` let caption data include the states that world-dynamics edits
    produce (night scenes; puddles on the bottom row).
    """
    if n_shapes is None:
        n_shapes = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    scene = Scene(
        background=list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
        style=STYLES[int(rng.integers(len(STYLES)))],
        night=bool(rng.random() < night_p),
    )
    for _ in range(n_shapes):
        s = random_shape(rng, free_cells(scene), unused_colours(scene))
        if puddle_p and s.row == GRID - 1 and rng.random() < puddle_p:
            s = dataclasses.replace(s, kind=PUDDLE)
        scene = scene.replace(shapes=scene.shapes + (s,))
    return scene


# --------------------------------------------------------------------------------------------
# captions

# position phrasings: a few ways of naming each cell
_POS_PHRASES: list[dict[tuple[int, int], str]] = [
    {
        (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
        (1, 0): "on the left", (1, 1): "in the middle", (1, 2): "on the right",
        (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
    },
    {
        (0, 0): "in the upper left corner", (0, 1): "at the top center", (0, 2): "in the upper right corner",
        (1, 0): "at the left side", (1, 1): "in the center", (1, 2): "at the right side",
        (2, 0): "in the lower left corner", (2, 1): "at the bottom center", (2, 2): "in the lower right corner",
    },
]

_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_STYLE_WORDS = {"plain": "", "outlined": "outlined ", "striped": "striped "}


def position_phrase(row: int, col: int, variant: int = 0) -> str:
    return _POS_PHRASES[variant % len(_POS_PHRASES)][(row, col)]


def shape_phrase(s: Shape, style: str, variant: int = 0, article: str = "a") -> str:
    size = _SIZE_WORDS[s.size][variant % 2]
    if s.kind == PUDDLE:
        return f"{article} {size} {s.colour} puddle {position_phrase(s.row, s.col, variant)}"
    return f"{article} {size} {_STYLE_WORDS[style]}{s.colour} {s.kind} {position_phrase(s.row, s.col, variant)}"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


N_CAPTION_PHRASINGS = 4


def caption(scene: Scene, phrasing: int = 0) -> str:
    """Natural-English caption of ``scene`` in one of ``N_CAPTION_PHRASINGS`` phrasings."""
    p = phrasing % N_CAPTION_PHRASINGS
    v = p % 2  # word-choice variant (position and size words)
    shapes = sorted(scene.shapes, key=lambda s: (s.row, s.col))  # reading order
    bg = scene.background
    night = " at night" if scene.night else ""
    if not shapes:
        return [
            f"an empty {bg} background{night}",
            f"{bg} background with no shapes{night}",
            f"a picture of an empty {bg} background{night}",
            f"an empty {'night ' if scene.night else ''}scene on {bg}",
        ][p]
    things = _join([shape_phrase(s, scene.style, v) for s in shapes])
    if p == 0:
        return f"{things} on a {bg} background{night}"
    if p == 1:
        return f"{bg} background with {things}{night}"
    if p == 2:
        return f"a picture of {things}, {bg} background{night}"
    return f"a {'night ' if scene.night else ''}scene with {things} on {bg}"


def all_captions(scene: Scene) -> list[str]:
    return [caption(scene, p) for p in range(N_CAPTION_PHRASINGS)]
