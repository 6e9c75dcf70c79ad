"""The world's exact edit-success metric (ip2p.metrics.success) and the oracle reference editor."""
from __future__ import annotations

import math

import pytest
import torch

from ip2p.metrics.success import RHO_INSIDE, TAU_OUTSIDE, edit_success


def _scene(h=16, w=16):
    """A grey input with a red 2x2 square; the target turns the square blue (mask = the square)."""
    inp = torch.full((1, 3, h, w), 0.5)
    inp[0, :, 4:6, 4:6] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    tgt = inp.clone()
    tgt[0, :, 4:6, 4:6] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]
    mask = (inp != tgt).any(1)
    return inp, tgt, mask


def test_exact_target_scores_one_and_identity_zero():
    inp, tgt, mask = _scene()
    assert edit_success(inp, tgt, tgt, mask)["edit_success"].item() == 1.0
    cols = edit_success(inp, inp, tgt, mask)
    assert cols["edit_success"].item() == 0.0
    assert cols["edit_inside_closed"].item() == pytest.approx(0.0)
    assert cols["edit_outside_l1"].item() == 0.0


def test_one_pixel_miss_inside_the_mask():
    inp, tgt, mask = _scene()
    out = tgt.clone()
    out[0, :, 4, 4] = inp[0, :, 4, 4]  # one of the 4 mask pixels left as the input
    cols = edit_success(inp, out, tgt, mask)
    assert cols["edit_inside_closed"].item() == pytest.approx(0.75)  # 3 of 4 pixels done
    assert cols["edit_success"].item() == 1.0  # nearer the target than the input inside
    # the same miss in a one-pixel edit is the whole edit: it fails
    mask1 = torch.zeros_like(mask)
    mask1[0, 4, 4] = True
    tgt1 = inp.clone()
    tgt1[0, :, 4, 4] = tgt[0, :, 4, 4]
    miss = edit_success(inp, inp, tgt1, mask1)
    assert miss["edit_success"].item() == 0.0 and miss["edit_inside_closed"].item() == pytest.approx(0.0)
    # three of four pixels missed: fails (closed 0.25 < 1 - rho)
    out3 = inp.clone()
    out3[0, :, 5, 5] = tgt[0, :, 5, 5]
    assert edit_success(inp, out3, tgt, mask)["edit_success"].item() == 0.0


def test_a_change_outside_the_mask_fails():
    inp, tgt, mask = _scene()
    out = tgt.clone()
    out[0, :, 10:16, :] = 0.0  # a block outside the mask turned black (mean change outside 0.19)
    cols = edit_success(inp, out, tgt, mask)
    assert cols["edit_inside_closed"].item() == pytest.approx(1.0)
    assert cols["edit_outside_l1"].item() > TAU_OUTSIDE
    assert cols["edit_success"].item() == 0.0
    # a faint global shift under the tolerance is kept
    faint = (tgt + 0.5 * TAU_OUTSIDE).clamp(0, 1)
    assert edit_success(inp, faint, tgt, mask)["edit_success"].item() == 1.0


def test_the_band_next_to_the_mask_is_not_outside():
    inp, tgt, mask = _scene()  # mask rows/cols 4..5
    ring = tgt.clone()
    ring[0, :, 3, 3:7] = 0.0  # the 1-pixel band around the mask: a decoder's edge, not counted
    assert edit_success(inp, ring, tgt, mask)["edit_outside_l1"].item() == 0.0
    far = tgt.clone()
    far[0, :, 1, 3:7] = 0.0  # two pixels away: counted
    assert edit_success(inp, far, tgt, mask)["edit_outside_l1"].item() > 0.0


def test_empty_mask_is_missing_and_full_mask_has_no_outside():
    inp, _, _ = _scene()
    empty = torch.zeros(1, 16, 16, dtype=torch.bool)
    cols = edit_success(inp, inp, inp, empty)
    assert math.isnan(cols["edit_success"].item()) and math.isnan(cols["edit_inside_closed"].item())
    full = torch.ones(1, 16, 16, dtype=torch.bool)
    tgt = 1 - inp
    cols = edit_success(inp, tgt, tgt, full)
    assert math.isnan(cols["edit_outside_l1"].item()) and cols["edit_success"].item() == 1.0


def test_bad_mask_is_refused_by_name():
    inp, tgt, mask = _scene()
    with pytest.raises(ValueError, match="masks"):
        edit_success(inp, tgt, tgt, mask.float())


def test_world_items_target_one_identity_zero_every_category():
    from ip2p.metrics.success import calibrate

    rep = calibrate("test", n=24)
    assert rep["scores"]["exact_target"]["overall"] == 1.0
    assert set(rep["scores"]["identity"]["by_category"].values()) == {0.0}
    assert len(rep["scores"]["identity"]["by_category"]) == 12
    assert rep["rho_inside"] == RHO_INSIDE


def test_suite_declares_direction_and_only_adds_columns_when_asked():
    from ip2p.metrics.suite import COLUMNS, MetricSuite

    assert COLUMNS["edit_success"].better == "higher" and COLUMNS["edit_outside_l1"].better == "lower"
    inp, tgt, mask = _scene()
    plain = MetricSuite()
    assert "edit_success" not in plain(inp, tgt, targets=tgt, masks=mask)
    assert "success" not in plain.spec()
    on = MetricSuite(success=True)
    cols = on(inp, tgt, targets=tgt, masks=mask)
    assert cols["edit_success"].item() == 1.0
    assert on.spec()["success"]["rho_inside"] == RHO_INSIDE
    assert "edit_success" in on.columns(targets=True, masks=True)


def test_oracle_returns_the_target_bit_for_bit_and_names_items_without_one():
    from baselines.oracle import OracleEditor
    from ip2p.errors import SpecError
    from ip2p.protocol import EditRequest
    from ip2p.data.world.examples import make_example

    ed = OracleEditor()
    exs = [make_example("test", i) for i in range(3)]
    outs = ed.run([EditRequest(image=e.input_image, instruction=e.instruction, item_id=e.item_id,
                               target=e.target_image) for e in exs])
    for e, o in zip(exs, outs):
        assert torch.equal(o, e.target_image)
    lazy = ed.run([EditRequest(image=exs[0].input_image, instruction="", target=lambda: exs[0].target_image)])
    assert torch.equal(lazy[0], exs[0].target_image)
    with pytest.raises(SpecError, match="'test-000001'.*no target"):
        ed.run([EditRequest(image=exs[1].input_image, instruction="", item_id="test-000001")])


def test_sweep_of_oracle_and_identity_on_world_scores_success(tmp_path):
    from bench.spec import parse_spec
    from bench.store import load_results
    from bench.sweep import run_sweep

    spec = parse_spec({"name": "succ", "dataset": {"kind": "world", "split": "test", "limit": 12},
                       "methods": [{"name": "oracle"}, {"name": "identity"}],
                       "metrics": {"compute": ["pixel", "success"]}, "device": "cpu", "batch_size": 12})
    run_sweep(spec, tmp_path / "run")
    df = load_results(tmp_path / "run")
    by = df.groupby("method")["edit_success"].mean()
    assert by["oracle"] == 1.0 and by["identity"] == 0.0
    assert (df[df.method == "oracle"]["edit_outside_l1"].fillna(0) == 0).all()  # NaN: a night edit has no outside
