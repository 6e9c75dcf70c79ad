"""The original single-file (CompVis/LDM) checkpoint layout of Stable Diffusion and InstructPix2Pix:
diffusers parameter names <-> original keys, derived from the diffusers configs.

The original checkpoint (``instruct-pix2pix-00-22000.ckpt``) is a CompVis/LDM ``LatentDiffusion``
state dict: the UNet under ``model.diffusion_model.`` in the openaimodel layout, the VAE under
``first_stage_model.`` and the CLIP text encoder under ``cond_stage_model.transformer.``. The key
mapping here is derived from the diffusers configs (block types, ``layers_per_block``, which blocks
carry attention, where the down/up samplers are), so it holds for every size of that family (the
``tiny`` built-in as well as SD 1.5). Used by loading (``ip2p.models``, shape checks before diffusers
builds anything) and by writing (``ip2p.export``); it imports neither.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import torch

from ip2p.errors import ModelLoadError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

# diffusers ResnetBlock2D parameter -> openaimodel ResBlock parameter
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers ResnetBlock2D (VAE) -> LDM ResnetBlock: same names but the 1x1 shortcut
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# diffusers Attention (VAE mid block) -> LDM AttnBlock (1x1 convolutions)
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


class _Rules:
    """Module-path rules: diffusers module prefix -> (LDM prefix, sub-module renames)."""

    def __init__(self) -> None:
        self.rules: dict[str, tuple[str, dict[str, str] | None]] = {}

    def add(self, diffusers: str, ldm: str, renames: dict[str, str] | None = None) -> None:
        if diffusers in self.rules:
            raise AssertionError(f"duplicate export rule for {diffusers}")
        self.rules[diffusers] = (ldm, renames)

    def map(self, key: str) -> str | None:
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # longest module prefix first
            head = ".".join(parts[:cut])
            if head in self.rules:
                ldm, renames = self.rules[head]
                rest = ".".join(parts[cut:])
                if renames is not None:
                    for old in sorted(renames, key=len, reverse=True):
                        if rest.startswith(old + "."):
                            rest = renames[old] + rest[len(old):]
                            break
                    else:
                        return None  # a parameter the rule does not know: refuse rather than guess
                return f"{ldm}.{rest}"
        return None


def _per_block(value: Any, n: int, what: str) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ModelLoadError(f"cannot export: {what} has {len(value)} entries for {n} blocks")
        return [int(v) for v in value]
    return [int(value)] * n


def _has_attention(block_type: str) -> bool:
    return "CrossAttn" in block_type or "Attn" in block_type


def unet_key_map(config: Any, keys: Iterable[str]) -> dict[str, str]:
    """diffusers ``UNet2DConditionModel`` key -> openaimodel key (no prefix), from its config."""
    cfg = dict(config)
    for unsupported in ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type"):
        if cfg.get(unsupported) is not None:
            raise ModelLoadError(f"cannot export the UNet: {unsupported}={cfg[unsupported]!r} has no place in the SD 1.x layout")
    down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    n = len(down_types)
    if len(up_types) != n:
        raise ModelLoadError("cannot export the UNet: it has different numbers of down and up blocks")
    lpb = _per_block(cfg["layers_per_block"], n, "layers_per_block")
    r = _Rules()
    r.add("time_embedding.linear_1", "time_embed.0")
    r.add("time_embedding.linear_2", "time_embed.2")
    r.add("conv_in", "input_blocks.0.0")
    r.add("conv_norm_out", "out.0")
    r.add("conv_out", "out.2")

    idx = 1
    for b, kind in enumerate(down_types):
        for j in range(lpb[b]):
            r.add(f"down_blocks.{b}.resnets.{j}", f"input_blocks.{idx}.0", _UNET_RESNET)
            if _has_attention(kind):
                r.add(f"down_blocks.{b}.attentions.{j}", f"input_blocks.{idx}.1")
            idx += 1
        if b < n - 1:  # diffusers: every block but the last one downsamples
            r.add(f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{idx}.0.op")
            idx += 1

    mid = cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    if mid != "UNetMidBlock2DCrossAttn":
        raise ModelLoadError(f"cannot export the UNet: mid_block_type {mid!r} is not the SD layout's")
    r.add("mid_block.resnets.0", "middle_block.0", _UNET_RESNET)
    r.add("mid_block.attentions.0", "middle_block.1")
    r.add("mid_block.resnets.1", "middle_block.2", _UNET_RESNET)

    idx = 0
    up_lpb = list(reversed(lpb))
    for b, kind in enumerate(up_types):
        layers = up_lpb[b] + 1
        for j in range(layers):
            r.add(f"up_blocks.{b}.resnets.{j}", f"output_blocks.{idx}.0", _UNET_RESNET)
            attn = _has_attention(kind)
            if attn:
                r.add(f"up_blocks.{b}.attentions.{j}", f"output_blocks.{idx}.1")
            if j == layers - 1 and b < n - 1:  # diffusers: every block but the last one upsamples
                r.add(f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{idx}.{2 if attn else 1}.conv")
            idx += 1
    return _apply(r, keys, "UNet")


def vae_key_map(config: Any, keys: Iterable[str]) -> dict[str, str]:
    """diffusers ``AutoencoderKL`` key -> LDM ``AutoencoderKL`` key (no prefix), from its config."""
    cfg = dict(config)
    n = len(cfg["down_block_types"])
    if len(cfg["up_block_types"]) != n:
        raise ModelLoadError("cannot export the VAE: it has different numbers of encoder and decoder blocks")
    lpb = int(cfg["layers_per_block"])
    r = _Rules()
    for part in ("encoder", "decoder"):
        r.add(f"{part}.conv_in", f"{part}.conv_in")
        r.add(f"{part}.conv_out", f"{part}.conv_out")
        r.add(f"{part}.conv_norm_out", f"{part}.norm_out")
        r.add(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", _VAE_RESNET)
        r.add(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTN)
        r.add(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", _VAE_RESNET)
    for i in range(n):
        for j in range(lpb):
            r.add(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RESNET)
        if i < n - 1:
            r.add(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv")
    for i in range(n):  # the LDM decoder numbers its levels from the finest: up.{n-1} runs first
        level = n - 1 - i
        for j in range(lpb + 1):
            r.add(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}", _VAE_RESNET)
        if i < n - 1:
            r.add(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv")
    r.add("quant_conv", "quant_conv")
    r.add("post_quant_conv", "post_quant_conv")
    return _apply(r, keys, "VAE")


def _apply(r: _Rules, keys: Iterable[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    unknown = []
    for k in keys:
        m = r.map(k)
        if m is None:
            unknown.append(k)
        else:
            out[k] = m
    if unknown:
        raise ModelLoadError(
            f"cannot export the {what}: {len(unknown)} parameter(s) have no place in the original layout "
            f"for this config, e.g. {unknown[:3]}"
        )
    if len(set(out.values())) != len(out):
        raise AssertionError(f"export mapping for the {what} is not one-to-one")
    return out


def _text_key(k: str) -> str:
    # transformers >= 5.6 flattens CLIPTextModel (no `text_model.` level); the original layout has it
    return TEXT_PREFIX + "text_model." + (k[len("text_model."):] if k.startswith("text_model.") else k)


def _ldm_items(unet, vae, text_encoder):
    """(original-layout key, tensor, required) for every tensor of the three models."""
    unet = getattr(unet, "_orig_mod", unet)  # torch.compile wrapper
    u = unet.state_dict()
    for k, ldm in unet_key_map(unet.config, u).items():
        yield UNET_PREFIX + ldm, u[k], True
    v = vae.state_dict()
    for k, ldm in vae_key_map(vae.config, v).items():
        t = v[k]
        if ldm.split(".")[-2] in ("q", "k", "v", "proj_out") and t.ndim == 2:
            t = t[:, :, None, None]  # LDM's AttnBlock uses 1x1 convolutions
        yield VAE_PREFIX + ldm, t, True
    te = text_encoder.state_dict()
    for k, t in te.items():
        yield _text_key(k), t, True
    # the release also stores the CLIP position ids (a non-persistent buffer in transformers)
    for name, buf in text_encoder.named_buffers():
        if name.endswith("embeddings.position_ids") and name not in te:
            yield _text_key(name), buf.to(torch.int64), False


def ldm_state_dict(components_or_pipe, *, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The original (LDM/CompVis) state dict of an InstructPix2Pix model: ``Components``, a diffusers
    pipeline, or anything with ``unet``, ``vae`` and ``text_encoder``. Floating tensors are cast to
    ``dtype`` when given; every tensor is a contiguous CPU tensor with its own storage."""
    c = components_or_pipe
    try:
        unet, vae, text_encoder = c.unet, c.vae, c.text_encoder
    except AttributeError as e:
        raise TypeError(f"export needs an object with unet, vae and text_encoder, got {type(c).__name__}") from e
    seen: set[int] = set()
    sd: dict[str, torch.Tensor] = {}
    for key, t, _ in _ldm_items(unet, vae, text_encoder):
        t = t.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.contiguous()
        if t.untyped_storage().data_ptr() in seen:  # tied/shared storage: safetensors wants it unshared
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        sd[key] = t
    return sd


def expected_ldm_shapes(config_dir: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Original-layout key -> (shape, required) for the architecture of a diffusers config folder
    (unet/, vae/, text_encoder/ configs), computed on the meta device (no memory, no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    d = str(config_dir)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(d, subfolder="text_encoder"))
    return {k: (tuple(t.shape), req) for k, t, req in _ldm_items(unet, vae, te)}


def check_single_file(path: str | os.PathLike, config_dir: str | os.PathLike) -> None:
    """Compare a ``.safetensors`` original-layout checkpoint (its header only) with the architecture
    of a diffusers config folder; raise ``ModelLoadError`` naming missing or misshapen tensors.
    Other files, and configs whose layout this module cannot derive, are left to diffusers."""
    p = Path(path)
    if p.suffix != ".safetensors" or not (Path(config_dir) / "unet" / "config.json").is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise ModelLoadError(f"cannot read single-file checkpoint {p}: {type(e).__name__}: {e}") from e
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in not in have:
        raise ModelLoadError(
            f"{p} is not an original (LDM layout) Stable Diffusion/InstructPix2Pix checkpoint: it has no {conv_in}"
        )
    try:
        want = expected_ldm_shapes(config_dir)
    except (ModelLoadError, OSError, ValueError, KeyError, TypeError):
        return  # an architecture outside this mapping: diffusers will judge
    have_in, want_in = have[conv_in][1], want[conv_in][0][1]
    if have_in != want_in:
        lat = want[UNET_PREFIX + "out.2.weight"][0][0]
        hint = (
            " It looks like a text-to-image checkpoint: fine-tune it into an editor with `ip2p train --base ...`."
            if have_in == lat else ""
        )
        raise ModelLoadError(
            f"{p}: the checkpoint's UNet takes {have_in} input channels (conv_in {list(have[conv_in])}), but the "
            f"config {config_dir} describes {want_in} in (InstructPix2Pix: {lat} noisy-latent + {want_in - lat} "
            f"image-latent channels).{hint}"
        )
    missing = [k for k, (_, req) in want.items() if req and k not in have]
    wrong = [f"{k} {list(have[k])} (expected {list(shape)})" for k, (shape, _) in want.items()
             if k in have and have[k] != shape]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[:3]}")
        if wrong:
            parts.append(f"{len(wrong)} of another shape, e.g. {wrong[:3]}")
        raise ModelLoadError(
            f"{p} does not match the architecture of config {config_dir}: " + "; ".join(parts)
            + ". Pass the config of the model the checkpoint was trained as."
        )


__all__ = [
    "ldm_state_dict",
    "expected_ldm_shapes",
    "check_single_file",
    "unet_key_map",
    "vae_key_map",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "TEXT_PREFIX",
]
