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
