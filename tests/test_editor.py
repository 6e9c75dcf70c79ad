"""The InstructPix2Pix editor: exact to diffusers and to the paper's formula, batch-invariant."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from ip2p.editor import InstructPix2PixEditor, paper_size
from ip2p.errors import ImageReadError, NonFiniteOutputError
from ip2p.guidance import dual_guidance
from tests.editor_fixtures import rand_image, tiny_pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe(seed=0)


@pytest.fixture(scope="module")
def editor(pipe):
    return InstructPix2PixEditor.from_pipe(pipe, max_batch=16)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler])
@pytest.mark.parametrize("s_t,s_i", [(7.5, 1.5), (3.0, 1.0), (1.5, 2.5)])
def test_matches_diffusers_pipeline(pipe, editor, scheduler_cls, s_t, s_i):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    img = rand_image(32, 24, seed=1)
    ref = pipe("turn the square blue", image=img[None], num_inference_steps=4, guidance_scale=s_t,
               image_guidance_scale=s_i, generator=torch.Generator().manual_seed(11), output_type="pt").images
    out = editor.edit(img, "turn the square blue", image_guidance_scale=s_i, guidance_scale=s_t,
                      num_inference_steps=4, seeds=11, scheduler=pipe.scheduler, resize=None)
    assert out.shape == ref.shape == (1, 3, 32, 24)
    assert (out - ref).abs().max().item() <= 1e-4
    # and the comparison is not vacuous: another seed gives another image
    other = editor.edit(img, "turn the square blue", image_guidance_scale=s_i, guidance_scale=s_t,
                        num_inference_steps=4, seeds=12, scheduler=pipe.scheduler, resize=None)
    assert (other - ref).abs().max().item() > 1e-2


class FixedUNet(torch.nn.Module):
    """A fake denoiser: returns one fixed tensor per conditioning case, so the guided output
    can be checked against the formula. Case is read from the inputs: zero image latent ->
    uncond; null text (all rows equal to the null embedding) -> image-only; else full."""

    def __init__(self, real_unet, null_emb, outs):
        super().__init__()
        self.config = real_unet.config
        self.null = null_emb
        self.outs = outs  # dict: cond, img, uncond -> [4, h, w]
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def forward(self, sample, t, encoder_hidden_states, return_dict=False):
        res = []
        for x, e in zip(sample, encoder_hidden_states):
            if torch.all(x[4:] == 0):
                res.append(self.outs["uncond"])
            elif torch.allclose(e, self.null[0]):
                res.append(self.outs["img"])
            else:
                res.append(self.outs["cond"])
        return (torch.stack(res),)


@pytest.mark.parametrize("s_i", [0.0, 0.5, 1.0, 1.5])
@pytest.mark.parametrize("s_t", [0.0, 1.0, 7.5])
def test_guided_output_equals_formula_for_every_scale(editor, s_i, s_t):
    g = torch.Generator().manual_seed(0)
    outs = {k: torch.randn(4, 4, 4, generator=g) for k in ("cond", "img", "uncond")}
    null = editor.encode_text([""])
    text = editor.encode_text(["make it night"])
    img_lat = torch.randn(1, 4, 4, 4, generator=g) + 3.0  # never all-zero
    real = editor.unet
    editor.unet = FixedUNet(real, null, outs)
    try:
        got = editor.guided_eps(torch.randn(1, 4, 4, 4, generator=g), torch.tensor([500.0]), img_lat, text, null,
                                torch.tensor([s_t]), torch.tensor([s_i]))
    finally:
        editor.unet = real
    want = outs["uncond"] + s_t * (outs["cond"] - outs["img"]) + s_i * (outs["img"] - outs["uncond"])
    assert torch.allclose(got[0], want, atol=1e-6)
    assert torch.allclose(dual_guidance(outs["cond"][None], outs["img"][None], outs["uncond"][None], s_t, s_i)[0], want)


def test_batched_call_equals_single_calls(editor):
    imgs = [rand_image(16, 16, seed=2), rand_image(16, 16, seed=3)]
    settings = [(1.0, 7.5), (1.5, 3.0), (2.2, 1.0)]  # (sI, sT), incl. sT <= 1 which diffusers switches off
    reqs = [(i, si, st) for i in range(2) for si, st in settings]
    batched = editor.edit([imgs[i] for i, _, _ in reqs], ["add a red circle"] * 6,
                          image_guidance_scale=[si for _, si, _ in reqs], guidance_scale=[st for _, _, st in reqs],
                          num_inference_steps=3, seeds=[7 + k for k in range(6)], resize=None)
    for k, (i, si, st) in enumerate(reqs):
        single = editor.edit(imgs[i], "add a red circle", image_guidance_scale=si, guidance_scale=st,
                             num_inference_steps=3, seeds=7 + k, resize=None)
        # batched GEMMs round differently (~1e-6 a call, CPU-kernel dependent), amplified by guidance
        assert (batched[k] - single[0]).abs().max().item() <= 1e-4, (i, si, st)
    # different settings really are different edits
    assert (batched[0] - batched[1]).abs().max().item() > 1e-3


def test_each_distinct_image_and_instruction_encoded_once(editor, monkeypatch):
    calls = {"vae_rows": 0, "text": []}
    real_encode = editor.components.vae.encode
    real_text = editor.components.text_encoder.forward

    def count_vae(x, *a, **k):
        calls["vae_rows"] += x.shape[0]
        return real_encode(x, *a, **k)

    def count_text(ids, *a, **k):
        calls["text"].append(ids.shape[0])
        return real_text(ids, *a, **k)

    monkeypatch.setattr(editor.components.vae, "encode", count_vae)
    monkeypatch.setattr(editor.components.text_encoder, "forward", count_text)
    editor.prompts.clear()
    imgs = [rand_image(16, 16, seed=s) for s in (4, 5)]
    editor.edit([imgs[0], imgs[1]] * 3, ["make it red", "make it red", "make it blue"] * 2,
                image_guidance_scale=[1.0, 1.5, 2.0, 1.0, 1.5, 2.0], num_inference_steps=1, resize=None)
    assert calls["vae_rows"] == 2
    assert sum(calls["text"]) == 3  # "make it red", "make it blue", and the null prompt ""


def test_paper_sampler_matches_diffusers_euler_ancestral_on_shared_grid(pipe, editor):
    # With 4 steps, the paper's sigmas sit at t = 999, 666, 333, 0 exactly, where diffusers'
    # linspace-spaced Euler ancestral uses the same sigmas: the two samplers must agree.
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    img = rand_image(16, 16, seed=6)
    ref = editor.edit(img, "make it snow", num_inference_steps=4, seeds=5, scheduler=pipe.scheduler, resize=None)
    paper = editor.edit(img, "make it snow", num_inference_steps=4, seeds=5, scheduler=None, resize=None)
    assert (paper - ref).abs().max().item() <= 1e-4
    # with 5 steps the grids differ (log-sigma vs sigma interpolation), and so do the outputs
    ref5 = editor.edit(img, "make it snow", num_inference_steps=5, seeds=5, scheduler=pipe.scheduler, resize=None)
    paper5 = editor.edit(img, "make it snow", num_inference_steps=5, seeds=5, scheduler=None, resize=None)
    assert (paper5 - ref5).abs().max().item() > 1e-6


@pytest.mark.parametrize("size,expected", [
    # (W, H) -> official (W, H): long side to 512, short side rounded *up* to 64, both floored to 64
    ((600, 400), (576, 384)),
    ((512, 512), (512, 512)),
    ((1000, 300), (640, 192)),
    ((300, 1000), (192, 640)),
])
def test_paper_resize_sizes(editor, size, expected):
    assert paper_size(*size, resolution=512) == expected
    from PIL import Image

    editor.resolution = 512
    try:
        out = editor.preprocess(Image.new("RGB", size, (10, 200, 30)), resize="paper")
    finally:
        editor.resolution = 16
    assert (out.shape[2], out.shape[1]) == expected
    assert torch.allclose(out[:, 0, 0], torch.tensor([10, 200, 30]) / 255.0, atol=1 / 255)


def test_empty_instruction_returns_resized_input(editor):
    img = rand_image(16, 16, seed=8)
    out = editor.edit([img, img], ["", "make it red"], num_inference_steps=2, resize=None)
    assert torch.equal(out[0], img)
    assert not torch.allclose(out[1], img, atol=1e-2)


def test_bad_inputs_get_clear_errors(editor, tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        editor.edit(str(tmp_path / "missing.png"), "x", num_inference_steps=1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        editor.edit(str(bad), "x", num_inference_steps=1)
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        editor.edit(rand_image(16, 16, 0) * 3, "x", num_inference_steps=1, resize=None)
    with pytest.raises(ValueError, match="guidance_scale: got 2 values for 3"):
        editor.edit(rand_image(16, 16, 0), ["a", "b", "c"], guidance_scale=[1.0, 2.0], num_inference_steps=1, resize=None)


def test_nan_output_names_the_request(pipe):
    bad = tiny_pipe(seed=0)
    with torch.no_grad():
        bad.unet.conv_out.bias.fill_(float("nan"))
    ed = InstructPix2PixEditor.from_pipe(bad)
    from ip2p.protocol import EditRequest

    with pytest.raises(NonFiniteOutputError, match="item 'cat-7'.*sI=1.5"):
        ed.run([EditRequest(image=rand_image(16, 16, 1), instruction="x", knobs={"num_inference_steps": 1},
                            item_id="cat-7")])


def test_edit_uses_the_editors_resize_by_default(pipe):
    ed = InstructPix2PixEditor.from_pipe(pipe, resize="diffusers")
    out = ed.edit(rand_image(17, 21, seed=9), "make it red", num_inference_steps=1)
    assert out.shape == (1, 3, 16, 20)  # floored to the VAE factor (2), not the paper's 64-multiples
    out = ed.edit(rand_image(16, 16, seed=9), "make it red", num_inference_steps=1, resize="paper")
    assert out.shape == (1, 3, 64, 64)  # the paper rule at the tiny model's resolution 16 rounds up to 64


@pytest.mark.parametrize("scheduler_cls", [None, DDIMScheduler])
def test_v_prediction_model_is_sampled_by_its_own_parameterisation(scheduler_cls):
    """A tiny random v-prediction InstructPix2Pix: the default (paper) sampler and DDIM both equal
    diffusers' pipeline with the same scheduler config (4 steps: the paper's sigmas coincide with
    Euler ancestral's linspace grid there)."""
    from ip2p.models import build_builtin

    c = build_builtin("tiny", seed=3)
    v_cfg = EulerAncestralDiscreteScheduler.from_config(c.scheduler.config, prediction_type="v_prediction").config
    ref_cls = EulerAncestralDiscreteScheduler if scheduler_cls is None else scheduler_cls
    pipe = tiny_pipe(seed=3)
    pipe.scheduler = ref_cls.from_config(v_cfg)
    ed = InstructPix2PixEditor.from_pipe(pipe)
    assert ed.prediction_type == "v_prediction"
    img = rand_image(16, 16, seed=4)
    ref = pipe("make it night", image=img[None], num_inference_steps=4, guidance_scale=7.5, image_guidance_scale=1.5,
               generator=torch.Generator().manual_seed(5), output_type="pt").images
    out = ed.edit(img, "make it night", num_inference_steps=4, seeds=5, resize=None,
                  scheduler=None if scheduler_cls is None else pipe.scheduler)
    assert (out - ref).abs().max().item() <= 1e-4
    # treating the v output as epsilon (the old defect) lands far away
    eps_pipe = tiny_pipe(seed=3)
    eps_pipe.scheduler = ref_cls.from_config(c.scheduler.config)
    eps_ref = eps_pipe("make it night", image=img[None], num_inference_steps=4, guidance_scale=7.5,
                       image_guidance_scale=1.5, generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert (eps_ref - ref).abs().max().item() > 1e-2


def test_unknown_prediction_type_is_refused_naming_it():
    from ip2p.errors import ModelLoadError
    from ip2p.models import build_builtin

    pipe = tiny_pipe(seed=0)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(ModelLoadError, match="prediction_type 'flow'"):
        InstructPix2PixEditor.from_pipe(pipe)
    assert build_builtin("tiny").prediction_type == "epsilon"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_equals_the_eager_editor(prediction_type, channels_last):
    """The editor's fast path (prepared UNet, schedule and noise made ahead) gives the eager path's
    images: within 1e-4 (channels-last sums convolutions in another order), for eps and v models."""
    from ip2p.fastpath import FastPathSettings

    def make(fast):
        p = tiny_pipe(seed=2)
        p.scheduler = EulerAncestralDiscreteScheduler.from_config(p.scheduler.config, prediction_type=prediction_type)
        return InstructPix2PixEditor.from_pipe(p, fast=fast)

    eager, fast = make(None), make(FastPathSettings(channels_last=channels_last))
    imgs = [rand_image(16, 16, seed=s) for s in (1, 2, 3)]
    kw = dict(image_guidance_scale=[1.0, 1.5, 2.0], guidance_scale=[7.5, 3.0, 1.0], num_inference_steps=5,
              seeds=[4, 5, 6], resize=None)
    a = eager.edit(imgs, ["make it red", "add snow", "make it night"], **kw)
    b = fast.edit(imgs, ["make it red", "add snow", "make it night"], **kw)
    assert (a - b).abs().max().item() <= 1e-4
    assert (a[0] - a[1]).abs().max().item() > 1e-2  # not vacuous
    assert "fast path" in fast.identity()["sampler"] and "fast path" not in eager.identity()["sampler"]
