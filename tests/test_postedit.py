"""EditWorld's post-edit: the input survives exactly outside the mask and the edit inside it; the
sampler override is exact (no blend, whole-image mask = plain InstructPix2Pix); seeding and batch
independence; the pixel-difference fallback around SDEdit; masks written beside outputs; the registry."""
from __future__ import annotations

import pytest
import torch

from baselines.postedit import (
    PostEditInstructPix2Pix,
    PostEditWrapper,
    dilate,
    feather,
    pixel_mask,
    post_edit,
    save_mask,
    stay_global,
)
from ip2p.editor import load_editor
from ip2p.protocol import EditRequest, Editor
from ip2p.util.hashing import hash_bytes
from ip2p.util.io import load_image, png_bytes
from ip2p.data.world.examples import world_examples

LOCAL = ["attribute-colour", "add", "remove", "move"]
IP2P = {"image_guidance_scale": 1.5, "guidance_scale": 7.5, "num_inference_steps": 6}


@pytest.fixture(scope="module")
def ip2p():
    return load_editor("world:ip2p", device="cpu")


@pytest.fixture(scope="module")
def pe(ip2p):
    ed = post_edit(ip2p)
    assert isinstance(ed, PostEditInstructPix2Pix)
    return ed


@pytest.fixture(scope="module")
def items():
    return list(world_examples("val", 4, categories=LOCAL))


def _req(ex, seed=0, **knobs):
    return EditRequest(image=ex.load_input(), instruction=ex.instruction, input_caption=ex.input_caption,
                       output_caption=ex.output_caption, knobs={**IP2P, **knobs}, seed=seed, item_id=ex.item_id)


def _check_outside_exact_inside_changed(outs, masks, inputs):
    for out, m, x in zip(outs, masks, inputs):
        assert m.shape == x.shape[-2:] and float(m.min()) >= 0 and float(m.max()) <= 1
        outside = m == 0
        assert 0 < int(outside.sum()) < m.numel()  # a local mask: neither empty nor the whole image
        assert torch.equal(out[:, outside], x[:, outside])  # bit-exact input outside the mask
        assert float((out - x).abs()[:, m > 0].max()) > 0.05  # and an edit inside it


def test_outside_the_mask_is_exactly_the_input_and_inside_is_edited(ip2p, pe, items):
    outs = pe.run([_req(ex) for ex in items])
    inputs = [ex.load_input() for ex in items]
    _check_outside_exact_inside_changed(outs, pe.last_masks, inputs)
    # the plain editor's VAE round trip costs the unedited region; post-edit does not
    plain = ip2p.run([_req(ex) for ex in items])
    for p, out, m, x in zip(plain, outs, pe.last_masks, inputs):
        assert float((p - x).abs()[:, m == 0].mean()) > 1e-3


def test_without_blend_and_with_a_whole_image_mask_it_is_plain_instructpix2pix(ip2p, pe, items):
    everything = {"blend_start": 1.0, "mask_threshold": 0.0, "refine_threshold": 0.0, "mask_dilation": 0,
                  "mask_feather": 0}
    outs = pe.run([_req(ex, **everything) for ex in items[:2]])
    assert all(bool((m == 1).all()) for m in pe.last_masks)
    plain = ip2p.run([_req(ex) for ex in items[:2]])
    for a, b in zip(outs, plain):
        assert torch.equal(a, b)  # the sampler override draws the same noise and takes the same steps


def test_a_mask_over_the_global_fraction_is_the_whole_image(pe):
    score = torch.zeros(2, 10, 10)
    score[0, :, :6] = 1.0  # 60% of the image above the threshold
    score[1, :, :4] = 1.0  # 40%
    half = pixel_mask(score, (10, 10), 0.5, 0, global_fraction=0.5)
    assert bool(half[0].all()) and int(half[1].sum()) == 40
    assert int(pixel_mask(score, (10, 10), 0.5, 0, global_fraction=1.0)[0].sum()) == 60  # 1: never whole
    assert not bool(pixel_mask(torch.zeros(1, 4, 4), (4, 4), 0.5, 0, global_fraction=0.0).any())  # empty stays empty
    # during sampling an image once global stays global; its batch mates do not
    whole = torch.zeros(2, dtype=torch.bool)
    full, most, part = torch.ones(4, 4, dtype=torch.bool), torch.ones(4, 4, dtype=torch.bool), torch.eye(4, dtype=torch.bool)
    most[0] = False  # 75% of the image
    assert torch.equal(stay_global(torch.stack([part, part]), whole, 0.5), torch.stack([part, part])) and not whole.any()
    assert torch.equal(stay_global(torch.stack([most, part]), whole, 0.5), torch.stack([full, part]))
    assert whole.tolist() == [True, False]
    assert torch.equal(stay_global(torch.stack([part, part]), whole, 0.5), torch.stack([full, part]))
    never = torch.zeros(1, dtype=torch.bool)  # global_fraction 1: no mask is made global, not even an entire one
    assert torch.equal(stay_global(full[None], never, 1.0), full[None]) and not never.any()
    assert torch.equal(stay_global(part[None], never, 1.0), part[None])
    # global edits (night): with the default rule their final masks are the whole image; without it,
    # holes keep patches of the day scene, and the rule changes the sampling (the blend), not only the mask
    night = list(world_examples("val", 4, categories=["night"]))
    flat = {"refine_threshold": 0.0, "mask_feather": 0, "num_inference_steps": 20}
    outs = pe.run([_req(ex, **flat) for ex in night])
    assert all(bool((m == 1).all()) for m in pe.last_masks)
    holes = pe.run([_req(ex, global_fraction=1.0, **flat) for ex in night])
    assert any(bool((m == 0).any()) for m in pe.last_masks)
    x = [ex.load_input() for ex in night]
    kept = [int((m == 0).sum()) for m in pe.last_masks]
    for a, b, m, xi, k in zip(outs, holes, pe.last_masks, x, kept):
        if k:  # where the rule-less mask has a hole, it kept the input; the whole-image mask did not
            assert torch.equal(b[:, m == 0], xi[:, m == 0]) and float((a - xi).abs()[:, m == 0].mean()) > 0.05


def test_same_seed_same_output_and_batch_mates_do_not_matter(pe, items):
    alone = pe.run([_req(items[1], seed=3)])[0]
    mask_alone = pe.last_masks[0]
    assert torch.equal(pe.run([_req(items[1], seed=3)])[0], alone)
    batched = pe.run([_req(items[0], seed=2), _req(items[1], seed=3), _req(items[2], seed=4, mask_threshold=0.5)])
    # batched UNet GEMMs round differently from single ones (~1e-6), as for InstructPix2Pix itself
    assert float((batched[1] - alone).abs().max()) <= 1e-4
    assert torch.equal(pe.last_masks[1], mask_alone)
    assert float((pe.run([_req(items[1], seed=4)])[0] - alone).abs().max()) > 1e-3


def test_blend_start_changes_the_sampling_not_only_the_composite(pe, items):
    knobs = {"refine_threshold": 0.0, "mask_feather": 0}
    never = pe.run([_req(ex, blend_start=1.0, **knobs) for ex in items])
    always = pe.run([_req(ex, blend_start=0.0, **knobs) for ex in items])
    assert any(float((a - b).abs().max()) > 1e-2 for a, b in zip(never, always))


def test_edit_api_and_bad_knobs(pe, items):
    x = items[0].load_input()
    out = pe.edit(x, items[0].instruction, num_inference_steps=4, seeds=1, mask_threshold=0.4)
    assert out.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"item 'bad'.*mask_threshold"):
        pe.run([EditRequest(image=x, instruction="erase it", knobs={"mask_threshold": 1.5}, item_id="bad")])
    empty = pe.run([EditRequest(image=x, instruction="")])
    assert torch.equal(empty[0], x) and float(pe.last_masks[0].max()) == 0.0


def test_fallback_wrapper_around_sdedit_and_masks_beside_outputs(items, tmp_path):
    from baselines.sdedit import load_sdedit

    ed = post_edit(load_sdedit("world:sd", device="cpu", resize=None), mask_dir=tmp_path)
    assert isinstance(ed, PostEditWrapper) and ed.name == "sdedit+postedit" and isinstance(ed, Editor)
    assert "blend_start" not in ed.knobs and {"strength", "mask_threshold"} <= set(ed.knobs)
    reqs = [EditRequest(image=ex.load_input(), instruction=ex.instruction, output_caption=ex.output_caption,
                        knobs={"strength": 0.6, "num_inference_steps": 5, "mask_threshold": 0.3}, seed=i)
            for i, ex in enumerate(items[:2])]
    outs = ed.run(reqs)
    _check_outside_exact_inside_changed(outs, ed.last_masks, [r.image for r in reqs])
    assert ed.identity()["method"] == "sdedit+postedit" and ed.identity()["wrapped"] == "sdedit"
    for out, m in zip(outs, ed.last_masks):
        sha = hash_bytes(png_bytes(out), length=32)  # the result store's name for this output image
        saved = load_image(tmp_path / sha[:2] / f"{sha}.mask.png")
        assert torch.allclose(saved[0], m, atol=0.5 / 255)


def test_mask_functions():
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 3:6, 3:6] = True
    assert int(dilate(m, 1).sum()) == 25 and int(dilate(m, 0).sum()) == 9
    soft = feather(dilate(m, 2), 2)  # a 7x7 square
    assert torch.equal(soft > 0, dilate(m, 2)) and float(soft[0, 4, 4]) == 1.0
    assert abs(float(soft[0, 1, 1]) - 1 / 3) < 1e-6  # on the edge: 1 of the 3 erosions keeps it
    corner = torch.zeros(1, 6, 6, dtype=torch.bool)
    corner[0, :3, :3] = True
    assert float(feather(corner, 2)[0, 0, 0]) == 1.0  # the image border does not erode
    score = torch.tensor([[[0.0, 1.0], [0.2, 0.1]]])
    big = pixel_mask(score, (8, 8), 0.5, 0)
    assert big.shape == (1, 8, 8) and bool(big[0, 1, 6]) and not bool(big[0, 6, 1])
    assert not bool(pixel_mask(torch.zeros(1, 2, 2), (4, 4), 0.0, 0).any())  # no change: empty mask


def test_save_mask_is_named_after_the_output(tmp_path):
    out = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = save_mask(tmp_path, out, torch.ones(8, 8))
    assert path.name == f"{hash_bytes(png_bytes(out), length=32)}.mask.png"


def test_registry_and_a_sweep_run(tmp_path):
    from ip2p.registry import get_method
    from bench.spec import parse_spec
    from bench.store import load_results
    from bench.sweep import run_sweep

    info = get_method("instructpix2pix+postedit")
    assert {"image_guidance_scale", "blend_start", "mask_threshold", "refine_threshold"} <= set(info.knobs)
    assert "blend_start" not in get_method("text2live+postedit").knobs
    spec = parse_spec({
        "name": "pe", "dataset": {"kind": "world", "split": "val", "limit": 2, "categories": ["remove"]},
        "methods": [{"name": "instructpix2pix+postedit", "model": "world:ip2p",
                     "knobs": {"num_inference_steps": 3, "resize": None}, "grid": {"blend_start": [0.0, 1.0]}}],
        "metrics": {"compute": ["pixel", "target", "masked"]}, "batch_size": 4, "device": "cpu",
    })
    run_sweep(spec, tmp_path / "run", progress=False)
    rows = load_results(tmp_path / "run")
    assert len(rows) == 4 and rows["method"].eq("instructpix2pix+postedit").all()
    assert '"postedit"' in rows["model_identity"].iloc[0]
