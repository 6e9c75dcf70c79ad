"""bench.edit_grid: one row per category with the stored images, a dash where an image is missing."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from bench.edit_grid import edit_grid


def _colour(i, m):
    return (200, 10 + 40 * i, 30 + 150 * m)  # not grey: the figure's text is grey


def _run(tmp_path, categories, missing=()):
    rows = []
    for i, cat in enumerate(categories):
        for m, (method, knobs) in enumerate((("ip2p", '{"image_guidance_scale":1.5}'), ("identity", "{}"))):
            name = f"images/{i}-{m}.png"
            if name not in missing:
                (tmp_path / "images").mkdir(exist_ok=True)
                Image.fromarray(np.array(_colour(i, m), np.uint8)[None, None].repeat(8, 0).repeat(8, 1)).save(tmp_path / name)
            rows.append(dict(method=method, knobs=knobs, method_index=m, setting_index=0, seed=0, item_id=f"w{i}",
                             item_index=i, category=cat, instruction=f"do {cat}", input_image=f"images/{i}-1.png",
                             output_image=name, target_image=f"images/{i}-0.png"))
    return pd.DataFrame(rows)


def test_one_row_per_category_with_the_stored_pixels(tmp_path):
    df = _run(tmp_path, ["add", "move", "add", "night"])
    one = edit_grid(tmp_path, df, tmp_path / "one.png")
    two = edit_grid(tmp_path, df, tmp_path / "two.png", per_category=2)
    h1, h2 = Image.open(one).size[1], Image.open(two).size[1]
    assert h2 > h1  # 3 rows (add, move, night) then 4 (add twice)
    colours = {tuple(int(v) for v in c) for c in np.asarray(Image.open(one).convert("RGB")).reshape(-1, 3)}
    assert {_colour(0, 0), _colour(0, 1), _colour(1, 0), _colour(3, 1)} <= colours  # the rows' images
    assert _colour(2, 0) not in colours  # item 2 (the second "add") is not in the one-per-category grid
    assert _colour(2, 0) in {tuple(int(v) for v in c) for c in np.asarray(Image.open(two).convert("RGB")).reshape(-1, 3)}


def test_missing_images_are_dashes_and_no_images_is_no_figure(tmp_path):
    df = _run(tmp_path, ["add", "move"], missing={"images/0-0.png"})
    (tmp_path / "images" / "1-0.png").write_bytes(b"\x89PNG not an image")  # corrupt
    colours = {tuple(int(v) for v in c) for c in np.asarray(Image.open(edit_grid(tmp_path, df, tmp_path / "g.png"))
                                                               .convert("RGB")).reshape(-1, 3)}
    assert _colour(0, 1) in colours and _colour(1, 1) in colours  # the readable images are drawn
    assert edit_grid(tmp_path, df.assign(output_image=None), tmp_path / "none.png") is None
