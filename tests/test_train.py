"""Trainer pieces and exact resume, on a tiny real Stable Diffusion built in code (CPU)."""
from __future__ import annotations

import json

import pytest
import torch

from ip2p.train.conditioning import apply_conditioning_dropout, conditioning_dropout_masks
from ip2p.train.ema import EMA, ema_decay
from ip2p.train.samples import EpochOrder, paired_crop_flip, sample_position
from ip2p.train.unet_init import widen_conv_in


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from ip2p.train.tiny import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd"), seed=0)


def test_widen_conv_in_copies_weights_and_bias_and_zeros_new_channels(tiny_sd):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    old_w, old_b = unet.conv_in.weight.detach().clone(), unet.conv_in.bias.detach().clone()
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10, 500])
    text = torch.randn(2, 16, 16)
    with torch.no_grad():
        before = unet(x, t, text).sample
    widen_conv_in(unet, 8)
    w = unet.conv_in.weight
    assert w.shape == (old_w.shape[0], 8, *old_w.shape[2:]) and unet.config.in_channels == 8
    assert torch.equal(w[:, :4], old_w) and torch.equal(unet.conv_in.bias, old_b)
    assert torch.count_nonzero(w[:, 4:]) == 0 and w.requires_grad
    with torch.no_grad():  # with zeros in the new channels the model computes what it did before
        after = unet(torch.cat([x, torch.randn_like(x)], 1), t, text).sample
    assert torch.allclose(before, after, atol=1e-6)
    assert widen_conv_in(unet, 8).conv_in is unet.conv_in  # already wide: untouched


def test_conditioning_dropout_frequencies():
    r = torch.rand(20_000, generator=torch.Generator().manual_seed(1))
    drop_text, drop_image = conditioning_dropout_masks(r, 0.05)
    freq = {
        "text only": (drop_text & ~drop_image).float().mean().item(),
        "both": (drop_text & drop_image).float().mean().item(),
        "image only": (~drop_text & drop_image).float().mean().item(),
        "none": (~drop_text & ~drop_image).float().mean().item(),
    }
    want = {"text only": 0.05, "both": 0.05, "image only": 0.05, "none": 0.85}
    for k in want:
        assert abs(freq[k] - want[k]) < 0.01, (k, freq[k])
    # the exact boundaries of the reference: text if r < 0.10; image if 0.05 <= r < 0.15
    edges = torch.tensor([0.0, 0.0499, 0.05, 0.0999, 0.10, 0.1499, 0.15, 0.9])
    dt, di = conditioning_dropout_masks(edges, 0.05)
    assert dt.tolist() == [True, True, True, True, False, False, False, False]
    assert di.tolist() == [False, False, True, True, True, True, False, False]


def test_apply_conditioning_dropout_uses_null_text_and_zero_image():
    text = torch.randn(3, 5, 4)
    null = torch.randn(1, 5, 4)
    img = torch.randn(3, 4, 2, 2)
    t, i = apply_conditioning_dropout(text, null, img, torch.tensor([0.02, 0.07, 0.5]), 0.05)
    assert torch.equal(t[0], null[0]) and torch.equal(t[1], null[0]) and torch.equal(t[2], text[2])
    assert torch.equal(i[0], img[0]) and torch.count_nonzero(i[1]) == 0 and torch.equal(i[2], img[2])


def test_ema_decay_schedule_and_update():
    assert ema_decay(1) == pytest.approx(2 / 11) and ema_decay(90) == pytest.approx(91 / 100)
    assert ema_decay(10**7) == 0.9999
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p])
    p.data.fill_(1.0)
    ema.step([p])  # shadow = 2/11 * 0 + 9/11 * 1
    p.data.fill_(3.0)
    ema.step([p])  # decay 3/12
    assert torch.allclose(ema.shadow[0], torch.full((3,), 3 / 12 * 9 / 11 + 9 / 12 * 3.0))
    q = torch.nn.Parameter(torch.zeros(3))
    ema.copy_to([q])
    assert torch.equal(q.data, ema.shadow[0])


def test_paired_crop_flip_is_identical_for_both_images():
    a = torch.rand(3, 20, 24)
    b = a + 1.0  # aligned with a, distinguishable
    flips = 0
    for s in range(40):
        g = torch.Generator().manual_seed(s)
        ca, cb = paired_crop_flip(a, b, 16, g)
        assert ca.shape == (3, 16, 16) and torch.allclose(cb - ca, torch.ones_like(ca), atol=1e-5)
        # the crop is a window of a (resized so the short side is 16), possibly mirrored
        flips += not any(torch.equal(ca, w) for w in _windows(a, 16))
    assert 10 <= flips <= 30  # p = 0.5


def _windows(a, size):
    import torch.nn.functional as F

    h, w = a.shape[-2:]
    f = size / min(h, w)
    r = F.interpolate(a[None], size=(max(size, round(h * f)), max(size, round(w * f))), mode="bilinear",
                      antialias=True, align_corners=False)[0]
    return [r[:, i : i + size, j : j + size] for i in range(r.shape[1] - size + 1) for j in range(r.shape[2] - size + 1)]


def test_data_order_is_a_permutation_per_epoch_and_positions_are_disjoint():
    order = EpochOrder(7, seed=3)
    for epoch in range(3):
        assert sorted(order.index(epoch * 7 + i) for i in range(7)) == list(range(7))
    kw = dict(grad_accum=2, world_size=3, batch_size=4)
    pos = [sample_position(s, m, r, j, **kw) for s in range(2) for m in range(2) for r in range(3) for j in range(4)]
    assert sorted(pos) == list(range(48))


def _unet_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_stop_and_resume_gives_the_same_weights(tiny_sd, tmp_path):
    from safetensors.torch import load_file

    from ip2p.train import TrainConfig, train

    kw = dict(base=str(tiny_sd), data="world:train", data_options={"n": 24}, batch_size=2, grad_accum=2,
              resolution=32, val_examples=0, progress=False, report_to="none", checkpoint_every=0, lr=1e-3, seed=5)
    k = 2
    full = train(TrainConfig(out=str(tmp_path / "full"), max_steps=2 * k, **kw))
    part = train(TrainConfig(out=str(tmp_path / "part"), max_steps=k, **kw))
    part_k = load_file(str(part / "checkpoints" / f"step-{k:08d}" / "model.safetensors"))
    train(TrainConfig(out=str(tmp_path / "part"), max_steps=2 * k, resume="latest", **kw))
    a = load_file(str(full / "checkpoints" / f"step-{2 * k:08d}" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / f"step-{2 * k:08d}" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[n], part_k[n]) for n in a)  # training went on after the resume
    # the exported (EMA) weights agree too, and the EMA saw 2k updates
    ea, eb = _unet_weights(full), _unet_weights(part)
    assert all(torch.equal(ea[n], eb[n]) for n in ea)
    run = json.loads((part / "training_config.json").read_text())
    assert run["final_step"] == 2 * k and run["ema_updates"] == 2 * k and run["ema_weights_exported"]
    # a different seed gives a different run (the comparison above can fail)
    other = train(TrainConfig(out=str(tmp_path / "other"), max_steps=k, **{**kw, "seed": 6}))
    c = load_file(str(other / "checkpoints" / f"step-{k:08d}" / "model.safetensors"))
    assert any(not torch.equal(c[n], part_k[n]) for n in c)


def test_loss_uses_scaled_posterior_sample_target_and_unscaled_mode_condition(tiny_sd):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from ip2p.train.trainer import instruct_pix2pix_loss

    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae").eval()
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet"), 8)
    with torch.no_grad():
        unet.conv_in.weight[:, 4:].normal_()  # make the condition channels matter
    sched = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler")
    g = torch.Generator().manual_seed(0)
    batch = {"input": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "edited": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
             "r": torch.tensor([0.5, 0.5]), "t_unit": torch.tensor([0.1, 0.7]),
             "noise": torch.randn(2, 4, 16, 16, generator=g), "posterior_eps": torch.randn(2, 4, 16, 16, generator=g)}
    text = torch.randn(2, 16, 16, generator=g)
    null = torch.zeros(1, 16, 16)
    with torch.no_grad():
        got = instruct_pix2pix_loss(unet, vae, sched, batch, text, null, 0.05, torch.float32)
        post_e = vae.encode(batch["edited"]).latent_dist
        target_latent = vae.config.scaling_factor * (post_e.mean + post_e.std * batch["posterior_eps"])
        cond = vae.encode(batch["input"]).latent_dist.mode()
        t = torch.tensor([100, 700])
        noisy = sched.add_noise(target_latent, batch["noise"], t)
        want = torch.nn.functional.mse_loss(unet(torch.cat([noisy, cond], 1), t, text).sample, batch["noise"])
        wrong = torch.nn.functional.mse_loss(
            unet(torch.cat([noisy, cond * vae.config.scaling_factor], 1), t, text).sample, batch["noise"])
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6) and not torch.allclose(got, wrong, rtol=1e-3)


def test_bad_image_during_training_raises_or_is_skipped(tmp_path):
    from PIL import Image

    from ip2p.data import open_dataset
    from ip2p.errors import DataRowError
    from ip2p.train.samples import TrainSamples

    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows = [{"input_image": f"{i}.png", "edited_image": "bad.png" if i == 1 else f"{i}.png", "instruction": "x"} for i in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = open_dataset(tmp_path / "m.jsonl", verify_images=False)  # the bad image is found while training
    kw = dict(seed=0, resolution=16, latent_channels=4, latent_factor=2)
    strict = TrainSamples(ds, on_bad_row="raise", **kw)
    bad_pos = next(p for p in range(3) if strict.order.index(p) == 1)
    with pytest.raises(DataRowError) as e:
        strict[bad_pos]
    assert "m.jsonl:2" in str(e.value) and "target_image" in str(e.value) and "bad.png" in str(e.value)
    lenient = TrainSamples(ds, on_bad_row="skip", **kw)
    item = lenient[bad_pos]  # the next row instead, deterministically
    assert item["input"].shape == (3, 16, 16) and lenient.bad.counts() == {"target_image": 1}
    assert torch.equal(item["input"], lenient[bad_pos]["input"])


def test_stop_at_step_keeps_the_schedule_of_max_steps(tiny_sd, tmp_path):
    """A stage stopped by ``stop_at_step`` (as world:ip2p's stage 2, at 2,485 of a 2,500-step cosine
    schedule) equals that run's checkpoint at the step, and differs from a run whose max_steps is the step."""
    from safetensors.torch import load_file

    from ip2p.train import TrainConfig, train

    kw = dict(base=str(tiny_sd), data="world:train", data_options={"n": 16}, batch_size=2, resolution=32,
              val_examples=0, progress=False, report_to="none", lr=1e-2, lr_schedule="cosine", seed=3)
    full = train(TrainConfig(out=str(tmp_path / "full"), max_steps=4, checkpoint_every=1, **kw))
    stopped = train(TrainConfig(out=str(tmp_path / "stop"), max_steps=4, stop_at_step=3, checkpoint_every=0, **kw))
    short = train(TrainConfig(out=str(tmp_path / "short"), max_steps=3, checkpoint_every=0, **kw))
    ckpt = lambda f: load_file(str(f / "checkpoints" / "step-00000003" / "model.safetensors"))  # noqa: E731
    a, b, c = ckpt(full), ckpt(stopped), ckpt(short)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)  # the lr of step 3 depends on max_steps
    run = json.loads((stopped / "training_config.json").read_text())
    assert run["final_step"] == 3 and run["config"]["stop_at_step"] == 3 and run["config"]["max_steps"] == 4
    with pytest.raises(Exception, match="stop_at_step"):
        TrainConfig(base="b", data="d", out="o", max_steps=4, stop_at_step=5).validate()


def test_time_limit_stops_at_a_step_and_exports(tiny_sd, tmp_path):
    from ip2p.train import TrainConfig, train

    out = train(TrainConfig(base=str(tiny_sd), data="world:train", data_options={"n": 4}, out=str(tmp_path / "t"),
                            max_steps=50, batch_size=1, resolution=32, val_examples=0, progress=False, report_to="none",
                            checkpoint_every=0, time_limit_minutes=0.0))
    run = json.loads((out / "training_config.json").read_text())
    assert run["final_step"] == 1 and (out / "checkpoints" / "step-00000001").is_dir()
    assert run["base_changed_during_training"] == [] and set(run["frozen_weights_hashes"]) == {"vae", "text_encoder"}
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_a_run_resumed_after_its_time_limit_rewrites_its_card_but_not_a_measured_one(tiny_sd, tmp_path):
    """World:ip2p's stage 5 stopped by a time limit at step 5,430 and resumed to 7,000: the card must
    say the step the export holds, while a card with measurements is never overwritten."""
    from ip2p.train import TrainConfig, train

    kw = dict(base=str(tiny_sd), data="world:train", data_options={"n": 4}, out=str(tmp_path / "t"), max_steps=3,
              batch_size=1, resolution=32, val_examples=0, progress=False, report_to="none", checkpoint_every=1)
    out = train(TrainConfig(time_limit_minutes=0.0, **kw))
    assert "Steps: 1 of a 3-step run" in (out / "README.md").read_text()
    train(TrainConfig(resume="latest", **kw))
    card = (out / "README.md").read_text()
    assert "Steps: 3 of a 3-step run" in card and "Steps: 1 of" not in card
    assert json.loads((out / "training_config.json").read_text())["final_step"] == 3
    measured = card.replace("Not measured yet.", "edit success 0.86 (192 items)")
    (out / "README.md").write_text(measured)
    train(TrainConfig(resume="latest", **dict(kw, max_steps=4)))
    assert (out / "README.md").read_text() == measured


def test_training_on_from_an_instruct_pix2pix_folder_starts_from_its_weights(tiny_sd, tmp_path):
    """A second stage (`--base` an exported InstructPix2Pix folder, as world:ip2p's stage 2) keeps the
    8-channel conv_in and every trained weight instead of widening a text-to-image UNet again."""
    from ip2p.train import TrainConfig, train

    kw = dict(data="world:train", data_options={"n": 8}, batch_size=1, resolution=32, val_examples=0, progress=False,
              report_to="none", checkpoint_every=0, ema=False)
    first = train(TrainConfig(base=str(tiny_sd), out=str(tmp_path / "s1"), max_steps=2, lr=1e-3, **kw))
    second = train(TrainConfig(base=str(first), out=str(tmp_path / "s2"), max_steps=1, lr=1e-9, lr_schedule="cosine", **kw))
    w1, w2 = _unet_weights(first), _unet_weights(second)
    assert w1["conv_in.weight"][:, 4:].abs().max() > 1e-4  # stage 1 trained the image channels
    assert w2["conv_in.weight"].shape[1] == 8
    assert w1.keys() == w2.keys()
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=1e-6), name
    run = json.loads((second / "training_config.json").read_text())
    assert run["config"]["base"] == str(first) and run["config"]["lr_schedule"] == "cosine"
    assert run["base_unet_in_channels"] == 8
    card = (second / "README.md").read_text()  # the card says what was done, not the first stage's story
    assert "trained on from its weights" in card and "widened" not in card
    assert "cosine decay to 0 at step 1" in card and "constant" not in card
    assert "widened to 8 channels" in (first / "README.md").read_text()


def test_train_command_maps_every_option_to_its_config_field(monkeypatch):
    import typer
    from typer.testing import CliRunner

    import ip2p.train.trainer as trainer
    from ip2p.train.cli import register
    from ip2p.train.config import TrainConfig

    seen = []
    monkeypatch.setattr(trainer, "train", lambda cfg: seen.append(cfg) or "out")  # the mapping, not training
    app = typer.Typer()
    register(app)
    app.command("other")(lambda: None)
    common = ["train", "--base", "b", "--data", "d", "--out", "o"]
    r = CliRunner().invoke(app, common + ["--clip-filter", "--min-clip-image", "0.5", "--max-per-prompt", "2",
                                          "--data-option", "n=20", "--data-option", "x=1.5", "--data-option", "k=v",
                                          "--max-grad-norm", "0", "--steps", "7", "--no-ema", "--snr-gamma", "5",
                                          "--val-text-guidance", "6", "--cpu"])
    assert r.exit_code == 0, r.output
    assert seen[-1] == TrainConfig(
        base="b", data="d", out="o", data_options={"n": 20, "x": 1.5, "k": "v"}, max_grad_norm=None, max_steps=7,
        clip_filter={"min_image": 0.5, "min_direction": 0.2, "min_sim_0": 0.2, "min_sim_1": 0.2, "max_per_prompt": 2},
        ema=False, snr_gamma=5.0, val_text_guidance=6.0, cpu=True)
    assert CliRunner().invoke(app, common).exit_code == 0
    assert seen[-1] == TrainConfig(base="b", data="d", out="o")  # the CLI's defaults are the config's
