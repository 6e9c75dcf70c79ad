"""Loading editor components: diffusers folders, hub ids, built-ins; refusals that name the part."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

import ip2p
from ip2p.editor import InstructPix2PixEditor
from ip2p.errors import ModelLoadError
from ip2p.models import Components, build_builtin, load_components, validate_components
from tests.editor_fixtures import rand_image, tiny_pipe


def test_builtin_is_deterministic_and_named():
    a, b = build_builtin("tiny", seed=3), build_builtin("tiny", seed=3)
    assert torch.equal(a.unet.conv_in.weight, b.unet.conv_in.weight)
    assert a.unet.config.in_channels == 8 and a.source == "tiny"
    c = build_builtin("tiny", seed=4)
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)
    with pytest.raises(ModelLoadError, match="unknown built-in architecture 'nope'"):
        build_builtin("nope")


def test_diffusers_folder_round_trip(tmp_path):
    pipe = tiny_pipe(seed=1)
    pipe.save_pretrained(tmp_path / "model")
    ed_mem = InstructPix2PixEditor.from_pipe(pipe)
    ed_disk = ip2p.load_editor(str(tmp_path / "model"), device="cpu", resize=None)
    img = rand_image(16, 16, seed=0)
    a = ed_mem.edit(img, "make it red", num_inference_steps=2, seeds=1, resize=None)
    b = ed_disk.edit(img, "make it red", num_inference_steps=2, seeds=1, resize=None)
    assert torch.equal(a, b)
    assert ed_disk.identity()["weights_hash"] == ed_mem.identity()["weights_hash"]
    # and diffusers itself loads the same folder
    assert StableDiffusionInstructPix2PixPipeline.from_pretrained(tmp_path / "model").unet.config.in_channels == 8


def test_identity_hash_tracks_weights():
    e1 = InstructPix2PixEditor(build_builtin("tiny", seed=0), device="cpu")
    e2 = InstructPix2PixEditor(build_builtin("tiny", seed=0), device="cpu")
    e3 = InstructPix2PixEditor(build_builtin("tiny", seed=1), device="cpu")
    assert e1.identity()["weights_hash"] == e2.identity()["weights_hash"] != e3.identity()["weights_hash"]


def test_text_to_image_unet_is_refused_with_the_reason():
    c = build_builtin("tiny")
    cfg = dict(c.unet.config)
    cfg["in_channels"] = 4
    c.unet = UNet2DConditionModel.from_config(cfg)
    with pytest.raises(ModelLoadError, match=r"takes 4 input channels.*needs 8.*ip2p train"):
        validate_components(c)


def test_text_encoder_width_mismatch_is_refused():
    c = build_builtin("tiny")
    c.text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=48, intermediate_size=64,
                                                  num_hidden_layers=1, num_attention_heads=4))
    with pytest.raises(ModelLoadError, match=r"hidden_size=48.*cross_attention_dim=32"):
        validate_components(c)


def test_missing_hub_model_names_the_id_and_the_fix():
    with pytest.raises(ModelLoadError, match=r"'someone/not-a-real-model'.*hf download"):
        load_components("someone/not-a-real-model", local_files_only=True)


def test_folder_without_pipeline_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline folder"):
        load_components(str(tmp_path / "x"))
    pipe = tiny_pipe()
    pipe.save_pretrained(tmp_path / "m")
    import shutil

    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(ModelLoadError, match="no 'vae/' subfolder"):
        load_components(str(tmp_path / "m"))


def test_unknown_world_model_is_named():
    with pytest.raises(ModelLoadError, match="unknown world model 'world:nope'"):
        load_components("world:nope")


def test_cli_edit_writes_png_and_reports_bad_input(tmp_path):
    from ip2p.util.io import load_image, save_image

    src = tmp_path / "in.png"
    save_image(rand_image(20, 28, seed=2), src)
    out = tmp_path / "out.png"
    cmd = [sys.executable, "-m", "ip2p.cli", "edit", str(src), "-i", "make it blue", "--model", "tiny",
           "--steps", "2", "--resize", "diffusers", "--out", str(out), "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert load_image(out).shape == (3, 20, 28)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    r = subprocess.run(cmd[:4] + [str(bad)] + cmd[5:], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr
