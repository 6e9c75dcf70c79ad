"""Edits of the small world: for each category, how a scene changes and how to ask for it.

An edit maps an input scene to a target scene and an instruction. Each category has several
instruction phrasings; the ones marked held out never appear in the training split, so a test can
ask whether a model generalises to unseen wordings. World-dynamics categories (gravity, night,
melt, growth) are named after EditWorld's: the instruction names a cause, the model must infer
the effect.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ip2p.data.world.scenes import (
    BACKGROUNDS,
    GRID,
    KINDS,
    PUDDLE,
    SIZES,
    STYLES,
    Scene,
    Shape,
    free_cells,
    position_phrase,
    random_shape,
    unused_colours,
)

# (template, held_out). Placeholders are filled per edit (see ``_fields``).
TEMPLATES: dict[str, list[tuple[str, bool]]] = {
    "attribute-colour": [
        ("make the {obj} {c2}", False),
        ("turn the {obj} {c2}", False),
        ("change the color of the {obj} to {c2}", False),
        ("paint the {obj} {c2}", True),
        ("recolor the {obj} so it is {c2}", True),
    ],
    "attribute-size": [
        ("make the {obj} {bigger}", False),
        ("{grow} the {obj}", False),
        ("change the {obj} to a {size2} one", False),
        ("resize the {obj} so it is {size2}", True),
    ],
    "replace": [
        ("replace the {obj} with a {k2}", False),
        ("turn the {obj} into a {k2}", False),
        ("change the {obj} to a {c} {k2}", False),
        ("swap the {obj} for a {c} {k2}", True),
    ],
    "add": [
        ("add {thing} {pos}", False),
        ("put {thing} {pos}", False),
        ("draw {thing} {pos}", False),
        ("place {thing} {pos}", True),
    ],
    "remove": [
        ("remove the {obj}", False),
        ("delete the {obj}", False),
        ("take away the {obj}", False),
        ("get rid of the {obj}", True),
        ("erase the {obj}", True),
    ],
    "move": [
        ("move the {obj} {dest}", False),
        ("shift the {obj} {dest}", False),
        ("slide the {obj} {dest}", True),
    ],
    "background": [
        ("make the background {bg2}", False),
        ("change the background to {bg2}", False),
        ("paint the background {bg2}", False),
        ("give it a {bg2} background", True),
        ("switch the background to {bg2}", True),
    ],
    "global-style": [
        ("make the shapes {style_adj}", False),
        ("draw the shapes {style_how}", False),
        ("change the style to {style_name}", False),
        ("redraw everything {style_how}", True),
    ],
    "gravity": [
        ("let gravity act", False),
        ("let the shapes fall", False),
        ("drop everything to the ground", False),
        ("what happens when gravity is turned on", True),
        ("let everything fall down", True),
    ],
    "night": [
        ("make it night", False),
        ("let night fall", False),
        ("turn day into night", False),
        ("show the scene at night", True),
        ("what would it look like after sunset", True),
    ],
    "melt": [
        ("let the {obj} melt", False),
        ("melt the {obj}", False),
        ("the {obj} is made of ice, let it melt", False),
        ("the {obj} melts in the sun", True),
        ("heat up the {obj} until it melts", True),
    ],
    "growth": [
        ("let the shapes grow", False),
        ("let the small shapes grow up", False),
        ("let time pass so the shapes grow", False),
        ("wait until the shapes are fully grown", True),
    ],
}

CATEGORIES: list[str] = list(TEMPLATES)
WORLD_DYNAMICS = ("gravity", "night", "melt", "growth")

_DEST = {
    (0, 0): "to the top left", (0, 1): "to the top", (0, 2): "to the top right",
    (1, 0): "to the left", (1, 1): "to the middle", (1, 2): "to the right",
    (2, 0): "to the bottom left", (2, 1): "to the bottom", (2, 2): "to the bottom right",
}
_STYLE_ADJ = {"plain": "solid", "outlined": "outlined", "striped": "striped"}
_STYLE_HOW = {"plain": "filled in", "outlined": "as outlines", "striped": "with stripes"}
_STYLE_NAME = {"plain": "plain", "outlined": "outline", "striped": "stripes"}


@dataclass(frozen=True)
class Edit:
    category: str
    target: Scene
    instruction: str
    template: int  # index into TEMPLATES[category]
    held_out: bool
    fields: tuple[tuple[str, str], ...] = ()  # the template's filled-in fields, as (name, value)

    def phrasings(self, include_held_out: bool = True) -> list[str]:
        """This edit's instruction in every phrasing of its category (held-out ones too by default)."""
        return [text.format(**dict(self.fields)) for text, held in TEMPLATES[self.category]
                if include_held_out or not held]


def _pick(rng: np.random.Generator, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))]


def _obj(s: Shape) -> str:
    return f"{s.colour} {s.kind}"


def _swap(scene: Scene, old: Shape, new: Shape | None) -> Scene:
    shapes = tuple(new if s == old else s for s in scene.shapes if new is not None or s != old)
    return scene.replace(shapes=shapes)


def _attribute_colour(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    if not shapes or not unused_colours(scene):
        return None
    s = _pick(rng, shapes)
    c2 = _pick(rng, unused_colours(scene))
    return _swap(scene, s, dataclasses.replace(s, colour=c2)), {"obj": _obj(s), "c2": c2}


def _attribute_size(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    if not shapes:
        return None
    s = _pick(rng, shapes)
    size2 = "large" if s.size == "small" else "small"
    up = size2 == "large"
    fields = {"obj": _obj(s), "size2": size2, "bigger": "bigger" if up else "smaller",
              "grow": "enlarge" if up else "shrink"}
    return _swap(scene, s, dataclasses.replace(s, size=size2)), fields


def _replace(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    if not shapes:
        return None
    s = _pick(rng, shapes)
    k2 = _pick(rng, [k for k in KINDS if k != s.kind])
    return _swap(scene, s, dataclasses.replace(s, kind=k2)), {"obj": _obj(s), "k2": k2, "c": s.colour}


def _add(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    cells, colours = free_cells(scene), unused_colours(scene)
    if len(scene.shapes) >= 3 or not cells or not colours:
        return None
    s = random_shape(rng, cells, colours)
    thing = f"a {s.size} {s.colour} {s.kind}"
    pos = position_phrase(s.row, s.col, int(rng.integers(2)))
    return scene.replace(shapes=scene.shapes + (s,)), {"thing": thing, "pos": pos}


def _remove(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    if not shapes:
        return None
    s = _pick(rng, shapes)
    return _swap(scene, s, None), {"obj": _obj(s)}


def _move(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    cells = free_cells(scene)
    if not shapes or not cells:
        return None
    s = _pick(rng, shapes)
    r, c = _pick(rng, cells)
    return _swap(scene, s, dataclasses.replace(s, row=r, col=c)), {"obj": _obj(s), "dest": _DEST[(r, c)]}


def _background(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    bg2 = _pick(rng, [b for b in BACKGROUNDS if b != scene.background])
    return scene.replace(background=bg2), {"bg2": bg2}


def _global_style(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    if not shapes:
        return None
    st = _pick(rng, [s for s in STYLES if s != scene.style])
    fields = {"style_adj": _STYLE_ADJ[st], "style_how": _STYLE_HOW[st], "style_name": _STYLE_NAME[st]}
    return scene.replace(style=st), fields


def _gravity(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    moved = []
    for col in range(GRID):
        column = sorted((s for s in scene.shapes if s.col == col), key=lambda s: -s.row)
        for k, s in enumerate(column):
            moved.append(dataclasses.replace(s, row=GRID - 1 - k))
    target = scene.replace(shapes=tuple(moved))
    if set(target.shapes) == set(scene.shapes):
        return None  # everything already rests on the ground
    return target, {}


def _night(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    if scene.night:
        return None
    return scene.replace(night=True), {}


def _melt(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    # a shape melts into a puddle on the floor of its column; the floor must be free
    ok = [s for s in shapes if all(o == s or (o.row, o.col) != (GRID - 1, s.col) for o in scene.shapes)]
    if not ok:
        return None
    s = _pick(rng, ok)
    return _swap(scene, s, dataclasses.replace(s, kind=PUDDLE, row=GRID - 1)), {"obj": _obj(s)}


def _growth(scene: Scene, shapes: list[Shape], rng: np.random.Generator) -> tuple[Scene, dict] | None:
    small = [s for s in shapes if s.size == "small"]
    if not small:
        return None
    grown = tuple(dataclasses.replace(s, size="large") if s in small else s for s in scene.shapes)
    return scene.replace(shapes=grown), {}


_APPLY = {"attribute-colour": _attribute_colour, "attribute-size": _attribute_size, "replace": _replace, "add": _add, "remove": _remove, "move": _move, "background": _background, "global-style": _global_style, "gravity": _gravity, "night": _night, "melt": _melt, "growth": _growth}


def _apply(category: str, scene: Scene, rng: np.random.Generator) -> tuple[Scene, dict] | None:
    """The target scene and the template fields, or None when the edit does not apply."""
    if category not in _APPLY:
        raise ValueError(f"unknown edit category {category!r}; expected one of {CATEGORIES}")
    return _APPLY[category](scene, [s for s in scene.shapes if s.kind != PUDDLE], rng)


def make_edit(scene: Scene, category: str, rng: np.random.Generator, *, allow_held_out: bool) -> Edit | None:
    """One edit of ``category`` on ``scene``; None when it does not apply to this scene."""
    out = _apply(category, scene, rng)
    if out is None:
        return None
    target, fields = out
    choices = [i for i, (_, held) in enumerate(TEMPLATES[category]) if allow_held_out or not held]
    t = _pick(rng, choices)
    text, held = TEMPLATES[category][t]
    return Edit(category=category, target=target, instruction=text.format(**fields), template=t, held_out=held,
                fields=tuple(sorted(fields.items())))


def all_instruction_words() -> set[str]:
    """Every word any instruction can contain (for building and checking the tokenizer)."""
    fillers = {
        "obj": [f"{c} {k}" for c in ["red"] for k in KINDS],
        "c2": [], "k2": list(KINDS), "c": [], "size2": list(SIZES), "bigger": ["bigger", "smaller"],
        "grow": ["enlarge", "shrink"], "thing": [f"a {s}" for s in SIZES],
        "pos": [position_phrase(r, c, v) for r in range(GRID) for c in range(GRID) for v in range(2)],
        "dest": list(_DEST.values()), "bg2": list(BACKGROUNDS),
        "style_adj": list(_STYLE_ADJ.values()), "style_how": list(_STYLE_HOW.values()),
        "style_name": list(_STYLE_NAME.values()),
    }
    words: set[str] = set()
    for temps in TEMPLATES.values():
        for text, _ in temps:
            for w in text.replace(",", " ").split():
                if not w.startswith("{"):
                    words.add(w)
    for vals in fillers.values():
        for v in vals:
            words.update(v.split())
    return words


__all__ = ["TEMPLATES", "CATEGORIES", "WORLD_DYNAMICS", "Edit", "make_edit", "all_instruction_words"]
