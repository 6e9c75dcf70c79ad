"""Small real fixtures for the harness's tests and smoke runs: a random-weights CLIP in the
metrics' folder format and a seconds-long sweep spec (tiny random InstructPix2Pix, world items).

Random weights make the numbers meaningless but every code path real: the same loaders, the same
sampler, the same metric functions a user runs.

For the regression gate: deliberately broken editors, as real model folders (a copy of a model
with its UNet damaged: ``degraded_model_folder``) or as real editors with a knob bug
(``faulty_instructpix2pix``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def random_clip_folder(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random open_clip model (open_clip's own tokenizer) in the folder format of
    ``ip2p.metrics.clip_models``; returns the folder."""
    import open_clip
    import torch

    from ip2p.metrics.clip_models import save_clip_folder

    folder = Path(folder)
    if (folder / "open_clip_config.json").exists():
        return folder
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    save_clip_folder(folder, model, TINY_CLIP_CFG,
                     {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                      "interpolation": "bicubic", "resize_mode": "squash", "image_size": 32})
    return folder


def tiny_spec(clip_folder: str | Path | None = None, *, items: int = 3, batch_size: int = 4,
              name: str = "tiny") -> dict[str, Any]:
    """A 12-unit sweep: 3 world test items x (sT in {1, 7.5}) x (sI in {1, 1.5}), 2 steps, CPU."""
    metrics: dict[str, Any] = {"compute": ["pixel", "target", "masked"]}
    if clip_folder is not None:
        metrics = {"compute": ["clip", "pixel", "target", "masked"],
                   "clip": {"model": str(clip_folder), "pretrained": None, "preprocess": "paper"}}
    return {
        "name": name,
        "dataset": {"kind": "world", "split": "test", "limit": items},
        "methods": [{"name": "instructpix2pix", "model": "tiny", "knobs": {"num_inference_steps": 2},
                     "grid": {"guidance_scale": [1.0, 7.5], "image_guidance_scale": [1.0, 1.5]}}],
        "metrics": metrics,
        "seeds": [0],
        "batch_size": batch_size,
        "device": "cpu",
    }


def assert_same_rows(a, b) -> None:
    """Row for row: same units, same image files (content hashes), same values, bit for bit."""
    import pandas as pd

    a = a.sort_values("unit_key").reset_index(drop=True)
    b = b.sort_values("unit_key").reset_index(drop=True)
    assert list(a["unit_key"]) == list(b["unit_key"])
    assert sorted(a.columns) == sorted(b.columns)
    pd.testing.assert_frame_equal(a[sorted(a.columns)], b[sorted(b.columns)], check_exact=True)


# ---- deliberately broken editors (regression-gate tests and its sensitivity measurement) -------

def degraded_model_folder(dst: str | Path, source: str = "world:ip2p", *, zero_image_conditioning: bool = False,
                          unet_noise: float = 0.0, seed: int = 0) -> Path:
    """A real InstructPix2Pix folder: a copy of ``source`` with its UNet damaged on purpose.

    ``zero_image_conditioning``: conv_in's weights on the 4 image-latent input channels set to 0
    (the model no longer sees the input image). ``unet_noise``: every floating UNet tensor gets
    Gaussian noise of ``unet_noise`` times that tensor's own standard deviation (a seeded draw)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from ip2p.models import resolve_source

    dst = Path(dst)
    shutil.copytree(resolve_source(source), dst)
    path = dst / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    if zero_image_conditioning:
        w = state["conv_in.weight"]
        latent = w.shape[1] // 2
        state["conv_in.weight"] = torch.cat([w[:, :latent], torch.zeros_like(w[:, latent:])], dim=1)
    if unet_noise:
        gen = torch.Generator().manual_seed(seed)
        for name in sorted(state):
            t = state[name]
            if t.is_floating_point() and t.numel() > 1:
                noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
                state[name] = (t.float() + unet_noise * t.float().std() * noise).to(t.dtype)
    save_file(state, str(path), metadata={"format": "pt"})
    return dst


FAULTS = {
    "swap_guidance": "sI and sT swapped (image_guidance_scale <-> guidance_scale)",
    "tenth_steps": "a tenth of the requested sampler steps (at least 1)",
}


def faulty_editor_class(fault: str):
    """An InstructPix2Pix editor whose ``run`` misreads its knobs the way a refactoring bug
    would (``FAULTS``); the weights, sampler and guidance code are the real ones."""
    from dataclasses import replace

    from ip2p.editor import InstructPix2PixEditor

    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {sorted(FAULTS)}, got {fault!r}")

    class FaultyInstructPix2PixEditor(InstructPix2PixEditor):
        def run(self, requests):
            broken = []
            for r in requests:
                k = {**self.knobs, **r.knobs}
                if fault == "swap_guidance":
                    k["image_guidance_scale"], k["guidance_scale"] = k["guidance_scale"], k["image_guidance_scale"]
                else:
                    k["num_inference_steps"] = max(1, int(k["num_inference_steps"]) // 10)
                broken.append(replace(r, knobs=k))
            return super().run(broken)

    FaultyInstructPix2PixEditor.__name__ = f"InstructPix2PixEditor_{fault}"
    return FaultyInstructPix2PixEditor


class faulty_instructpix2pix:
    """Context manager: while active, the registered method ``instructpix2pix`` builds the faulty
    editor of ``fault`` (the registry entry and the sweep's editor cache are restored on exit)."""

    def __init__(self, fault: str):
        self.fault = fault

    def __enter__(self):
        from bench.editors import clear_editor_cache
        from ip2p.registry import get_method, register_method
        from ip2p.models import load_components

        self.info = get_method("instructpix2pix")
        cls = faulty_editor_class(self.fault)

        def factory(model=None, device=None, **options):
            return cls(load_components(model or "world:ip2p"), device=device, **options)

        clear_editor_cache()
        register_method("instructpix2pix", factory, self.info.knobs, default_model=self.info.default_model,
                        description=f"InstructPix2Pix with a deliberate fault: {FAULTS[self.fault]}", replace=True)
        return self

    def __exit__(self, *exc):
        from bench.editors import clear_editor_cache
        from ip2p.registry import register_method

        i = self.info
        register_method(i.name, i.factory, i.knobs, default_model=i.default_model, description=i.description,
                        demo_model=i.demo_model, demo_grid=i.demo_grid, demo_knobs=i.demo_knobs,
                        curve_knob=i.curve_knob, replace=True)
        clear_editor_cache()
        return False
