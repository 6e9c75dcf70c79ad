"""`accelerate launch` with 2 CPU processes trains a tiny model through `ip2p train`, and the
folder it writes loads in diffusers' InstructPix2Pix pipeline and in ip2p.load_editor."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_writes_a_loadable_pipeline(tmp_path):
    from ip2p.train.tiny import make_tiny_sd

    base = make_tiny_sd(tmp_path / "base")
    out = tmp_path / "out"
    # accelerate's own CPU multi-process launch needs MPI; its torchrun launcher (--multi_gpu)
    # with the trainer's --cpu gives 2 gloo processes on one machine
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "ip2p.cli", "train", "--cpu", "--base", str(base), "--data", "world:train", "--data-option", "n=8",
           "--out", str(out), "--steps", "2", "--batch-size", "1", "--resolution", "32", "--val-examples", "0",
           "--report-to", "none", "--no-progress", "--checkpoint-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = json.loads((out / "training_config.json").read_text())
    assert run["world_size"] == 2 and run["final_step"] == 2
    assert (out / "checkpoints" / "step-00000001" / "random_states_1.pkl").is_file()  # rank 1 took part

    # the same global batch in one process (batch 2) gives the same weights: data positions and
    # all randomness depend on the step, not on how processes share it
    from safetensors.torch import load_file

    from ip2p.train import TrainConfig, train

    single = train(TrainConfig(base=str(base), data="world:train", data_options={"n": 8}, out=str(tmp_path / "single"),
                               max_steps=2, batch_size=2, resolution=32, val_examples=0, report_to="none",
                               progress=False, checkpoint_every=1, cpu=True))
    a = load_file(str(out / "checkpoints" / "step-00000002" / "model.safetensors"))
    b = load_file(str(single / "checkpoints" / "step-00000002" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    first = load_file(str(out / "checkpoints" / "step-00000001" / "model.safetensors"))
    assert any(not torch.allclose(a[n], first[n], atol=1e-5) for n in a)

    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(out)
    assert pipe.unet.config.in_channels == 8 and pipe.safety_checker is None
    assert pipe.unet.conv_in.weight[:, 4:].abs().sum() > 0  # the new channels were trained
    img = torch.rand(1, 3, 32, 32)
    res = pipe("make it red", image=img, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="pt").images
    assert res.shape == (1, 3, 32, 32) and torch.isfinite(res).all()

    import ip2p
    from ip2p.protocol import EditRequest

    editor = ip2p.load_editor(str(out), resize=None)
    (edited,) = editor.run([EditRequest(image=img[0], instruction="make it red", knobs={"num_inference_steps": 2})])
    assert edited.shape == (3, 32, 32) and torch.isfinite(edited).all()
