"""Tiny random diffusers editing pipelines, built from configs (as diffusers' own pipeline tests build theirs)
and saved as folders: one builder per family of ``baselines.diffusers_pipelines``."""
from __future__ import annotations

from pathlib import Path

import torch

CLIP_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, hidden_act="gelu", projection_dim=32, bos_token_id=49406,
                 eos_token_id=49407, pad_token_id=1)


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    from ip2p.builtin import openai_clip_tokenizer_dir

    return CLIPTokenizer.from_pretrained(str(openai_clip_tokenizer_dir()))


def _sd_parts(kind: str):
    from ip2p.models import build_builtin

    c = build_builtin("tiny", seed=0, kind=kind)
    return dict(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet)


def _no_checker():
    return dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_sd_ip2p():
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from ip2p.models import build_builtin

    sched = build_builtin("tiny", seed=0).scheduler
    return StableDiffusionInstructPix2PixPipeline(**_sd_parts("ip2p"), scheduler=EulerAncestralDiscreteScheduler.from_config(
        sched.config), **_no_checker())


def _sd_t2i_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def build_ledits():
    from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusion

    from diffusers import UNet2DConditionModel

    sched = DPMSolverMultistepScheduler.from_config(_sd_t2i_scheduler().config, algorithm_type="sde-dpmsolver++",
                                                    solver_order=2)
    torch.manual_seed(0)  # its attention masks read cross-attention maps at 1/4 of the latent size: 3 levels
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32, 32),
                                down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)
    return LEditsPPPipelineStableDiffusion(**{**_sd_parts("t2i"), "unet": unet}, scheduler=sched, **_no_checker())


def build_diffedit():
    from diffusers import DDIMInverseScheduler, StableDiffusionDiffEditPipeline

    sched = _sd_t2i_scheduler()
    return StableDiffusionDiffEditPipeline(**_sd_parts("t2i"), scheduler=sched,
                                           inverse_scheduler=DDIMInverseScheduler.from_config(sched.config),
                                           **_no_checker())


def build_sdxl_ip2p():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64)
    vae = AutoencoderKL(block_out_channels=[32, 32], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        layers_per_block=1, sample_size=32)
    te = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_TEXT))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    tok = _clip_tokenizer()
    return StableDiffusionXLInstructPix2PixPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                                                    tokenizer_2=tok, unet=unet, scheduler=sched,
                                                    force_zeros_for_empty_prompt=True, add_watermarker=False)


def t5_tokenizer():
    """A T5 tokenizer over a few words and the letters (no sentencepiece model needed)."""
    from transformers import T5TokenizerFast

    words = "a the make it turn into add remove blue red green square circle photo of cat dog on with".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def build_flux_kontext():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16,), layers_per_block=1,
                        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035, down_block_types=["DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D"])
    te = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))
    tok2 = t5_tokenizer()
    te2 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                  decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    return FluxKontextPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=te,
                               tokenizer=_clip_tokenizer(), text_encoder_2=te2, tokenizer_2=tok2,
                               transformer=transformer, image_encoder=None, feature_extractor=None)


BUILDERS = {
    "diffusers-ip2p": build_sd_ip2p,
    "sdxl-ip2p": build_sdxl_ip2p,
    "flux-kontext": build_flux_kontext,
    "ledits-pp": build_ledits,
    "diffedit": build_diffedit,
}


def save_tiny(family: str, folder: Path) -> Path:
    """Build ``family``'s tiny pipeline and save it as a diffusers folder."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        pipe = BUILDERS[family]()
    pipe.save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------- Qwen-Image-Edit (Qwen2.5-VL text encoder)

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def qwen_processor():
    """A byte-level Qwen2 tokenizer (the 256 byte symbols, no merges, Qwen's special tokens) and a
    Qwen2-VL processor that keeps images small (at most 56x56 pixels reach the vision tower)."""
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from ip2p.util.bpe import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[])
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
                            tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
    return tok, proc


def build_qwen_image_edit(cls_name: str = "QwenImageEditPipeline"):
    import diffusers
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok, proc = qwen_processor()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tok), rope_theta=1e6,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        hidden_size=16, vocab_size=len(tok), image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    te = Qwen2_5_VLForConditionalGeneration(cfg)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=4, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return getattr(diffusers, cls_name)(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=te,
                                        tokenizer=tok, processor=proc, transformer=transformer)


BUILDERS["qwen-image-edit"] = build_qwen_image_edit
BUILDERS["qwen-image-edit-plus"] = lambda: build_qwen_image_edit("QwenImageEditPlusPipeline")


def small_qwen_conditioning(monkeypatch, side: int = 64) -> None:
    """Qwen-Image-Edit resizes its condition image to a 1024x1024 area (a constant of diffusers' pipeline);
    for CPU tests the pipelines' own code runs with that area shrunk to ``side`` x ``side``."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    for mod in (edit, plus):
        orig = mod.calculate_dimensions
        monkeypatch.setattr(mod, "calculate_dimensions",
                            (lambda f: lambda area, ratio: f(area * side * side / (1024 * 1024), ratio))(orig))
