"""Text2Live-style baseline: protocol, seeding, batch independence, the guide-vs-metric refusal
(direct and through a sweep), and that optimising moves the composite toward the output caption."""
from __future__ import annotations

import json

import pytest
import torch

from baselines.text2live import Text2LiveEditor, load_text2live, sparsity_loss
from ip2p.errors import DataRowError, SpecError
from ip2p.protocol import EditRequest, Editor
from ip2p.data.world.examples import world_examples

FAST = {"iterations": 3, "n_aug": 2}


@pytest.fixture(scope="module")
def editor() -> Text2LiveEditor:
    return load_text2live("world:clip-guide", device="cpu", progress=False)


@pytest.fixture(scope="module")
def items():
    return list(world_examples("val", 3))


def _req(ex, seed=0, **knobs):
    return EditRequest(image=ex.load_input(), instruction=ex.instruction, input_caption=ex.input_caption,
                       output_caption=ex.output_caption, knobs={**FAST, **knobs}, seed=seed, item_id=ex.item_id)


def test_protocol_shape_range_and_identity(editor, items):
    assert isinstance(editor, Editor)
    assert set(FAST) <= set(editor.knobs)
    outs = editor.run([_req(items[0]), _req(items[1])])
    assert len(outs) == 2
    for out, ex in zip(outs, items):
        assert out.shape == ex.load_input().shape and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        assert (out - ex.load_input()).abs().max() > 1e-3  # a composite, not the input passed through
    ident = editor.identity()
    assert ident["method"] == "text2live" and ident["guide"]["backbone"] == "world:clip-guide"
    assert ident["weights_hash"] == editor.guide.clip.identity["weights_hash"]
    assert ident["guide_equals_metric"] is None  # no metric CLIP given: nothing checked, and it says so


def test_same_seed_same_output_and_batch_mates_do_not_matter(editor, items):
    a, b, c = (_req(ex, seed=s) for ex, s in zip(items, (5, 6, 7)))
    alone = editor.run([a])[0]
    assert torch.equal(editor.run([a])[0], alone)
    batched = editor.run([c, a, b])
    assert torch.equal(batched[1], alone)
    assert torch.equal(batched[2], editor.run([b])[0])
    other_seed = editor.run([_req(items[0], seed=6)])[0]
    assert (other_seed - alone).abs().max() > 1e-4


def test_zero_iterations_return_the_input(editor, items):
    out = editor.run([_req(items[0], iterations=0)])[0]
    assert torch.equal(out, items[0].load_input())


def test_optimisation_moves_the_composite_toward_the_output_caption(editor, items):
    ex = items[0]
    knobs = {"iterations": 15, "n_aug": 2, "learning_rate": 1e-2, "lambda_structure": 0.0}
    out = editor.run([_req(ex, **knobs)])[0]
    g = editor.guide
    t1 = g.encode_text(ex.output_caption)
    with torch.no_grad():
        f_in, _ = g.encode_views(torch.nn.functional.interpolate(ex.load_input()[None], size=g.size, mode="bicubic"))
        f_out, _ = g.encode_views(torch.nn.functional.interpolate(out[None], size=g.size, mode="bicubic"))
    assert float(f_out[0] @ t1) > float(f_in[0] @ t1) + 0.01


def test_sparsity_term_is_zero_for_a_transparent_layer_and_grows_with_opacity():
    assert float(sparsity_loss(torch.zeros(1, 1, 4, 4))) == 0.0
    assert 0 < float(sparsity_loss(torch.full((1, 1, 4, 4), 0.1))) < float(sparsity_loss(torch.full((1, 1, 4, 4), 0.5)))


def test_missing_captions_are_refused_naming_item_and_field(editor, items):
    bad = EditRequest(image=items[0].load_input(), instruction="x", input_caption="a", output_caption="",
                      knobs=FAST, item_id="world-7")
    with pytest.raises(DataRowError, match=r"item 'world-7'.*output_caption"):
        editor.run([_req(items[1]), bad])
    no_input = EditRequest(image=items[0].load_input(), instruction="x", output_caption="b", knobs=FAST)
    with pytest.raises(DataRowError, match="input_caption"):
        editor.run([no_input])
    assert editor.run([EditRequest(image=items[0].load_input(), instruction="x", output_caption="b",
                                   knobs={**FAST, "lambda_direction": 0.0})])[0].shape == (3, 64, 64)


def test_guide_equal_to_metric_is_refused_unless_forced():
    metric = {"model": "world:clip", "pretrained": None}
    with pytest.raises(SpecError, match=r"guide CLIP 'world:clip'.*metric CLIP 'world:clip'.*force_same_guide"):
        load_text2live("world:clip", device="cpu", metric_clip=metric)
    forced = load_text2live("world:clip", device="cpu", metric_clip=metric, force_same_guide=True)
    assert forced.identity()["guide_equals_metric"] is True and forced.identity()["force_same_guide"] is True
    ok = load_text2live("world:clip-guide", device="cpu", metric_clip=metric)
    assert ok.identity()["guide_equals_metric"] is False
    assert ok.identity()["metric_clip"]["weights_hash"] == forced.identity()["weights_hash"]


def _spec(tmp_path, options):
    from bench.spec import parse_spec

    return parse_spec({
        "name": "t2l", "dataset": {"kind": "world", "split": "val", "limit": 1},
        "methods": [{"name": "text2live", "model": "world:clip", "options": {"progress": False, **options},
                     "knobs": {"iterations": 1, "n_aug": 1}}],
        "metrics": {"compute": ["clip"], "clip": {"model": "world:clip", "pretrained": None}},
        "batch_size": 1, "device": "cpu",
    })


def test_sweep_passes_its_metric_clip_and_rows_record_a_forced_guide(tmp_path):
    from bench.store import load_results
    from bench.sweep import run_sweep

    with pytest.raises(SpecError, match="metric CLIP 'world:clip'"):
        run_sweep(_spec(tmp_path, {}), tmp_path / "refused", progress=False)
    run_sweep(_spec(tmp_path, {"force_same_guide": True}), tmp_path / "forced", progress=False)
    rows = load_results(tmp_path / "forced")
    assert len(rows) == 1
    ident = json.loads(rows["model_identity"].iloc[0])
    assert ident["guide_equals_metric"] is True and ident["metric_clip"]["backbone"] == "world:clip"
