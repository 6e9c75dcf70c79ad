"""The small world's generator: determinism, exact masks, disjoint splits, categories, phrasings."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from ip2p.world import CATEGORIES
from ip2p.data.world.examples import make_example, scene_seed, split_of_seed, world_captions, world_examples
from ip2p.data.world.edits import TEMPLATES
from ip2p.data.world.scenes import (
    BACKGROUNDS,
    COLOURS,
    KINDS,
    Scene,
    Shape,
    footprint,
    render,
    shape_pixels,
)


def test_examples_are_deterministic_and_prefix_stable():
    a = list(world_examples("train", 30, seed=3))
    b = list(world_examples("train", 12, seed=3))
    for x, y in zip(a, b):
        assert x.item_id == y.item_id and x.instruction == y.instruction
        assert torch.equal(x.input_image, y.input_image) and torch.equal(x.target_image, y.target_image)
        assert torch.equal(x.mask, y.mask)
    other = list(world_examples("train", 12, seed=4))
    assert [e.instruction for e in other] != [e.instruction for e in b]


def test_night_p_draws_more_night_inputs_and_changes_nothing_else():
    def night(e):
        return e.metadata["input_scene"]["night"]

    base = list(world_examples("train", 300, categories=["add", "remove", "move"]))
    more = list(world_examples("train", 300, categories=["add", "remove", "move"], night_p=0.3))
    share = sum(map(night, base)) / 300, sum(map(night, more)) / 300
    assert 0.04 < share[0] < 0.17 and 0.2 < share[1] < 0.42
    assert all("night_p" not in e.metadata for e in base) and all(e.metadata["night_p"] == 0.3 for e in more)
    # only the night flag's draw changes: an item drawn by day under both is the same item
    day = [(a, b) for a, b in zip(base, more) if not night(a) and not night(b)]
    assert len(day) > 150
    for a, b in day:
        assert a.instruction == b.instruction and torch.equal(a.input_image, b.input_image)
        assert torch.equal(a.target_image, b.target_image)
    with pytest.raises(ValueError, match="night_p"):
        make_example("train", 0, night_p=1.5)


def test_example_fields_and_exact_masks():
    for e in world_examples("val", 48):
        x, y, m = e.load_input(), e.load_target(), e.load_mask()
        assert x.shape == y.shape == (3, 64, 64) and x.dtype == torch.float32
        assert m.shape == (64, 64) and m.dtype == torch.bool
        assert 0 <= x.min() and x.max() <= 1
        changed = (x != y).any(0)
        assert torch.equal(changed, m), e.item_id
        assert m.any(), f"{e.item_id}: a {e.category} edit that changes nothing"
        assert e.item_id.startswith("val-") and split_of_seed(e.metadata["scene_seed"]) == "val"
        assert e.input_caption != e.output_caption, e.item_id


def test_remove_mask_is_the_removed_shape_footprint():
    """A local edit changes exactly the pixels the shape covered (independent of the diff)."""
    n = 0
    for e in world_examples("test", 40, categories=["remove"]):
        before = {tuple(sorted(s.items())) for s in e.metadata["input_scene"]["shapes"]}
        after = {tuple(sorted(s.items())) for s in e.metadata["target_scene"]["shapes"]}
        (gone,) = before - after
        shape = Shape(**dict(gone))
        cov, _ = shape_pixels(shape, e.metadata["input_scene"]["style"])
        assert np.array_equal(e.mask.numpy(), cov), e.item_id
        n += 1
    assert n == 40


def test_night_and_background_edits_touch_whole_image_regions():
    for e in world_examples("test", 6, categories=["night"]):
        assert e.mask.float().mean() > 0.95 and e.target_image.mean() < e.input_image.mean()
    for e in world_examples("test", 6, categories=["background"]):
        fg = torch.zeros(64, 64, dtype=torch.bool)
        for s in e.metadata["input_scene"]["shapes"]:
            fg |= torch.from_numpy(footprint(Shape(**s)))
        assert e.mask[~fg].all(), e.item_id  # every background pixel changed


def test_gravity_puts_every_shape_on_the_floor_or_on_another():
    for e in world_examples("test", 24, categories=["gravity"]):
        shapes = e.metadata["target_scene"]["shapes"]
        cells = {(s["row"], s["col"]) for s in shapes}
        for s in shapes:
            assert s["row"] == 2 or (s["row"] + 1, s["col"]) in cells, e.item_id


def test_splits_disjoint_by_scene_seed():
    seeds = {sp: {e.metadata["scene_seed"] for e in world_examples(sp, 60)} for sp in ("train", "val", "test")}
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]
    # the ranges themselves are disjoint, not just these samples
    assert scene_seed("train", (1 << 24) - 1, (1 << 15) - 1, "captions") < scene_seed("val", 0, 0)
    assert split_of_seed(scene_seed("test", 5, 2)) == "test"
    with pytest.raises(ValueError, match="split"):
        next(world_examples("training", 1))


def test_every_category_occurs_and_filter_works():
    ex = list(world_examples("train", 2 * len(CATEGORIES)))
    counts = collections.Counter(e.category for e in ex)
    assert set(counts) == set(CATEGORIES) and len(CATEGORIES) >= 12
    only = list(world_examples("test", 6, categories=["melt", "add"]))
    assert [e.category for e in only] == ["melt", "add"] * 3
    assert all("puddle" in e.output_caption for e in only if e.category == "melt")
    with pytest.raises(ValueError, match="categories"):
        next(world_examples("test", 1, categories=["teleport"]))


def test_held_out_phrasings_only_outside_train():
    held = {c: {t.split("{")[0] for t, h in TEMPLATES[c] if h} for c in CATEGORIES}
    assert all(held[c] for c in CATEGORIES)
    train = list(world_examples("train", 600))
    assert not any(e.metadata["held_out_phrasing"] for e in train)
    test = list(world_examples("test", 600))
    assert sum(e.metadata["held_out_phrasing"] for e in test) > 60
    # string check too: a held-out template's text never starts a training instruction
    for e in train:
        t = TEMPLATES[e.category][e.metadata["template"]][0]
        assert not TEMPLATES[e.category][e.metadata["template"]][1], (e.item_id, t)


def test_render_is_exact_and_shapes_distinct():
    scene = Scene("white", "plain", False, (Shape("circle", "red", "large", 1, 1),))
    img = render(scene)
    red = (img == np.array(COLOURS["red"], dtype=np.uint8)).all(2)
    assert np.array_equal(red, footprint(scene.shapes[0]))
    # the four kinds draw four different footprints of comparable area
    areas = {}
    fps = {}
    for k in KINDS:
        fps[k] = footprint(Shape(k, "red", "large", 1, 1))
        areas[k] = fps[k].sum()
    assert len({fp.tobytes() for fp in fps.values()}) == len(KINDS)
    assert max(areas.values()) < 2.5 * min(areas.values())
    assert len(set(BACKGROUNDS.values()) | set(COLOURS.values())) == len(BACKGROUNDS) + len(COLOURS)


def test_world_captions():
    pairs = world_captions("train", 50, seed=1)
    assert len(pairs) == 50 and pairs[0][0].shape == (3, 64, 64)
    caps = [c for _, c in pairs]
    assert len(set(caps)) > 45 and all("background" in c or " on " in c for c in caps)
    assert caps == [c for _, c in world_captions("train", 50, seed=1)]
    assert any("night" in c for c in caps) or any("night" in c for _, c in world_captions("train", 200, seed=1))
