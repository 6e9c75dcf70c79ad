"""A tiny text-to-image Stable Diffusion folder with random weights, built in code.

For smoke tests of the trainer and loaders where nothing can be downloaded: a real
``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel`` and ``CLIPTokenizer`` (byte-level
vocabulary of single characters, no merges) and a ``DDPMScheduler`` with SD's betas, saved with
``save_pretrained`` in the standard diffusers layout.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins CLIP's byte-level BPE uses for bytes, in CLIP's order."""
    from ip2p.util.bpe import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_tokenizer(folder: str | Path, max_length: int = 16):
    """A CLIPTokenizer whose tokens are single characters (with and without ``</w>``)."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for ch in _byte_chars():
        vocab[ch] = len(vocab)
    for ch in _byte_chars():
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length,
                        pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return tok


def make_tiny_sd(folder: str | Path, seed: int = 0, sample_size: int = 16) -> Path:
    """Write a tiny text-to-image diffusers folder (about 1 MB) and return its path.

    VAE: 2 blocks (downsampling 2x), 4 latent channels; UNet: 2 blocks, 8/16 channels, cross
    attention 16; text encoder: 2 layers, width 16, 16 tokens. ``sample_size`` is the UNet's
    latent size (the pipeline's default image size is ``2 * sample_size``).
    """
    from ip2p.util.io import replacing_dir

    with replacing_dir(folder) as tmp:
        _write_tiny_sd(Path(tmp), seed, sample_size)
    return Path(folder)


def _write_tiny_sd(folder: Path, seed: int, sample_size: int) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = write_tiny_tokenizer(folder / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, projection_dim=16))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        layers_per_block=1, norm_num_groups=4, sample_size=2 * sample_size)
    unet = UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              steps_offset=1, prediction_type="epsilon")
    text_encoder.save_pretrained(folder / "text_encoder")
    vae.save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0",
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
