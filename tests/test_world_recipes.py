"""World recipes: fixed seeds reproduce weights exactly; the `ip2p world` commands are registered."""
from __future__ import annotations

import pytest
import torch

from ip2p.util.hashing import hash_folder


def test_vae_recipe_is_deterministic(tmp_path):
    from ip2p.world.train_vae import train_vae

    n = torch.get_num_threads()
    try:
        recs = [train_vae(tmp_path / f"run{i}", steps=2, batch=4, decoder_steps=1) for i in range(2)]
    finally:
        torch.set_num_threads(n)
    a, b = (hash_folder(tmp_path / f"run{i}", suffixes=(".safetensors",)) for i in range(2))
    assert a == b
    assert recs[0]["scaling_factor"] == recs[1]["scaling_factor"] > 0
    assert recs[0]["config"]["steps"] == 2 and "wall_time_s" in recs[0]
    # a different seed gives different weights
    train_vae(tmp_path / "other", steps=2, batch=4, decoder_steps=0, seed=5)
    torch.set_num_threads(n)
    assert hash_folder(tmp_path / "other", suffixes=(".safetensors",)) != a


def test_world_commands_registered():
    from typer.testing import CliRunner

    from ip2p.cli import app

    out = CliRunner().invoke(app, ["world", "--help"])
    assert out.exit_code == 0, out.output
    for cmd in ("build-tokenizer", "train-vae", "train-sd", "train-clip", "cards", "report"):
        assert cmd in out.output
    bad = CliRunner().invoke(app, ["world", "train-clip", "--which", "huge"])
    assert bad.exit_code != 0 and "metric" in (bad.output + str(bad.exception))


def test_sharpen_posterior_keeps_mean_and_decoder_and_refuses_twice(tmp_path):
    from diffusers import AutoencoderKL

    from ip2p.world.train_vae import build_vae, sharpen_posterior

    torch.manual_seed(0)
    build_vae().save_pretrained(str(tmp_path / "vae"))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = AutoencoderKL.from_pretrained(str(tmp_path / "vae")).encode(x).latent_dist
    rec = sharpen_posterior(tmp_path / "vae", logvar_shift=-10.0)
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    with torch.no_grad():
        after = vae.encode(x).latent_dist
    assert torch.equal(after.mean, before.mean)
    assert torch.allclose(after.std, before.std * torch.exp(torch.tensor(-5.0)), rtol=1e-4)
    assert rec["posterior_std_after"] < rec["posterior_std_before"] / 100
    assert rec["config"]["posterior_logvar_shift"] == -10.0 and "sharpen-vae" in rec["command"]
    with pytest.raises(RuntimeError, match="already"):
        sharpen_posterior(tmp_path / "vae")


def test_decoder_finetune_on_edits_keeps_the_encoder_and_refuses_twice(tmp_path):
    from diffusers import AutoencoderKL

    from ip2p.world.train_vae import build_vae, finetune_decoder_on_edits

    torch.manual_seed(0)
    build_vae().save_pretrained(str(tmp_path / "vae"))
    before = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    rec = finetune_decoder_on_edits(tmp_path / "vae", n_items=4, steps=3, batch=4, eval_n=12)
    after = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    b, a = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(a[k], b[k]) for k in b if k.startswith("decoder."))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(after.encode(x).latent_dist.mean, before.encode(x).latent_dist.mean)
    assert rec["edit_roundtrip_l1_before"]["n"] == 12 and set(rec["edit_roundtrip_l1_after"]["l1_by_category"])
    assert rec["config"]["edit_decoder_steps"] == 3 and "finetune-vae-decoder" in rec["command"]
    with pytest.raises(RuntimeError, match="already"):
        finetune_decoder_on_edits(tmp_path / "vae", n_items=4, steps=1, batch=4, eval_n=12)
