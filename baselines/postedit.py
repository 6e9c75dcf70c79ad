"""EditWorld's post-edit (Yang et al. 2024, arXiv 2405.14785) as a wrapper around an editor: keep the
input wherever the edit does not reach, so the VAE round trip no longer costs the unedited region.

With guidance terms (InstructPix2Pix, :class:`PostEditInstructPix2Pix`), during sampling:

1. Locate the edit. At every step the UNet already evaluates ``eps(z_t, I, c_T)`` (text and image)
   and ``eps(z_t, I, null)`` (image only); their difference, averaged over latent channels and over
   the steps so far, is the edit score of each latent cell::

       score = mean_steps mean_channels |eps(z_t, I, c_T) - eps(z_t, I, null)|

   bilinearly upsampled to pixels, normalised by its maximum over the image, thresholded
   (``> mask_threshold``) and dilated by ``mask_dilation`` pixels. DiffEdit computes its mask the
   same way (from the difference of two noise predictions, averaged, normalised and binarised;
   diffusers' ``StableDiffusionDiffEditPipeline.generate_mask``, which normalises by a multiple of
   the mean where this normalises by the maximum). A mask that then covers more than
   ``global_fraction`` of the image becomes the whole image: the edit is global (a new background,
   night), and the holes left in its mask are where the score's floor dips under the threshold, not
   regions the edit leaves alone (blended back, they left patches of the old scene; on world:val
   the score's floor is 0.1-0.25 of its peak on local edits and about 0.3 on global ones). During
   sampling the mask of every step is made so, and an image once global stays global for the later
   steps and the final mask: the running score is noisy, and a night edit whose mask dipped to 49%
   for one late step had the day scene blended back into half the image.
2. Keep the input outside the mask during sampling. From step ``round(blend_start * steps)`` on,
   after each Euler-ancestral step to ``sigma'`` the latent is blended with the input's noised
   latent: ``x = m * x + (1 - m) * (z_in + sigma' * n0)``, with ``m`` the current mask max-pooled to
   latent cells, ``z_in = scaling_factor * posterior mode of the input`` (the sampler's latent is
   the *scaled* VAE latent: ``x = z + sigma * noise`` in k-diffusion's parameterisation, while the
   image-conditioning latent stays unscaled) and ``n0`` the request's initial noise (drawn from its
   seed, so no extra draw shifts the sampler's per-step noise). At the last step ``sigma' = 0``, so
   the latent outside the mask is exactly ``z_in``.
3. Refine the final mask (EditWorld refines its mask with a segmentation model; this is a
   model-free stand-in): keep only the mask's pixels where the decoded output differs from the
   input by more than ``refine_threshold`` times that difference's maximum inside the mask (grown
   by one pixel; 0 turns refinement off). The guidance terms say where the model means to edit,
   the pixels where it did; the cut drops the halo of VAE round-trip error around an edit.
4. Composite pixels: ``out = soft * decoded + (1 - soft) * input`` where ``soft`` is the final mask
   feathered inward over ``mask_feather`` pixels (the mean of the mask's 0..F-fold 3x3 erosions), so
   every pixel outside the mask is exactly the input's, and the seam fades in inside it.

Without guidance terms (SDEdit, Text2Live: :class:`PostEditWrapper`), the score is the per-pixel
``mean_channels |output - input|`` of the wrapped editor's result, then the same normalisation,
threshold, dilation, global rule (``global_fraction``, decided once), feather and pixel composite
(``blend_start`` and ``refine_threshold`` do not apply).

Every editor keeps the masks of its last ``run`` in ``last_masks`` (``[H, W]`` float in [0, 1], 0 outside)
and, with ``mask_dir``, writes each as ``<mask_dir>/<sha[:2]>/<sha>.mask.png``, where ``sha`` names
the output's PNG bytes exactly as the result store names images (``mask_dir=<run>/images`` puts
each mask beside its output image).

On the shared core (``ip2p.core``) the InstructPix2Pix version is its own sampling loop (``sample``:
the paper's Euler ancestral with the score and the latent blend) and a pixel hook (``finish``:
refinement and composite); requests of one mask setting share a chunk (``group``).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ip2p.core import Chunk
from ip2p.editor import InstructPix2PixEditor, load_editor
from ip2p.errors import SpecError
from ip2p.protocol import EditRequest, Knob, knob_defaults, resolve_knobs, who
from ip2p.util.hashing import hash_bytes
from ip2p.util.io import atomic_write_bytes, png_bytes

# defaults chosen on world:val items (see the issue-14 note; global_fraction: the issue-21 note of session 17),
# not on the test split
MASK_KNOB_DECLS: Mapping[str, Knob] = {
    "mask_threshold": Knob("float", default=0.3, minimum=0.0, maximum=1.0,
                           doc="edit score (normalised by its maximum) above which a pixel is edited"),
    "mask_dilation": Knob("int", default=2, minimum=0, doc="pixels the thresholded mask grows by"),
    "mask_feather": Knob("int", default=1, minimum=0, doc="pixels over which the composite fades in, inside the mask"),
    "global_fraction": Knob("float", default=0.5, minimum=0.0, maximum=1.0,
                            doc="a thresholded mask covering more than this fraction of the image becomes the whole "
                                "image: the edit is global (1: never)"),
}
GUIDED_KNOB_DECLS: Mapping[str, Knob] = {
    **MASK_KNOB_DECLS,
    "blend_start": Knob("float", default=0.25, minimum=0.0, maximum=1.0,
                        doc="fraction of the steps after which the input latent is blended back outside the mask"),
    "refine_threshold": Knob("float", default=0.3, minimum=0.0, maximum=1.0,
                             doc="cut the guidance mask to pixels whose output-input difference exceeds this fraction "
                                 "of its maximum inside the mask (0: no cut)"),
}
MASK_KNOBS: Mapping[str, Any] = knob_defaults(MASK_KNOB_DECLS)
GUIDED_KNOBS: Mapping[str, Any] = knob_defaults(GUIDED_KNOB_DECLS)
REFINE_GROW = 1  # pixels the refinement's changed-pixel mask grows by before it cuts the guidance mask


# ---------------------------------------------------------------- masks as pure functions

def normalise_score(score: torch.Tensor) -> torch.Tensor:
    """``[B, h, w]`` non-negative scores divided by each image's maximum (all-zero stays zero)."""
    peak = score.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(peak > 0, score / peak.clamp_min(torch.finfo(score.dtype).tiny), torch.zeros_like(score))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``[B, H, W]`` by a ``(2r+1)^2`` square."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0.5


def feather(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Soft mask ``[B, H, W]`` in [0, 1] from a binary one: the mean of its 0..``width``-fold 3x3
    erosions (the image border does not erode). Exactly 0 outside ``mask``; 1 deep inside."""
    m = mask[:, None].float()
    acc = m.clone()
    cur = m
    for _ in range(width):
        cur = -F.max_pool2d(-cur, 3, stride=1, padding=1)  # max_pool pads with -inf: border = inside
        acc = acc + cur
    return (acc / (width + 1))[:, 0]


def pixel_mask(score: torch.Tensor, size: tuple[int, int], threshold: float, dilation: int,
               global_fraction: float = 1.0, whole: torch.Tensor | None = None) -> torch.Tensor:
    """Binary ``[B, H, W]`` mask from edit scores ``[B, h, w]``: bilinearly upsampled to ``size``
    (a latent cell covers 8x8 pixels; interpolating the score places the boundary between cell
    centres instead of on the cell grid), normalised by the maximum, ``> threshold``, dilated by
    ``dilation`` pixels; an image whose mask then covers more than ``global_fraction`` of it gets
    the whole image (a global edit: the holes left in its mask are where the score's floor dips
    under the threshold, not regions the edit leaves alone). ``whole``: the images found global at
    earlier sampling steps, kept global and updated (``stay_global``)."""
    score = score.float()
    if tuple(score.shape[-2:]) != tuple(size):
        score = F.interpolate(score[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    mask = dilate(normalise_score(score) > threshold, int(dilation))
    if whole is None:
        whole = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    return stay_global(mask, whole, global_fraction)


def stay_global(mask: torch.Tensor, whole: torch.Tensor, global_fraction: float) -> torch.Tensor:
    """One sampling step's masks ``[B, H, W]`` (binary, not yet made global) as the whole image for
    every image found global at this step (its mask covers more than ``global_fraction``) or at an
    earlier one; ``whole`` (``[B]`` bool, those images) is updated in place."""
    whole |= mask.flatten(1).float().mean(1) > global_fraction
    return mask | whole.view(-1, 1, 1)


def refine_mask(guide: torch.Tensor, edited: torch.Tensor, original: torch.Tensor, threshold: float) -> torch.Tensor:
    """The guidance mask ``guide`` (``[H, W]`` bool) cut to where the output changed: pixels whose
    ``mean_channels |edited - original|`` exceeds ``threshold`` times its maximum inside ``guide``,
    grown by ``REFINE_GROW`` pixels. ``threshold == 0`` returns ``guide``."""
    if threshold <= 0:
        return guide
    diff = (edited.float() - original.float()).abs().mean(0) * guide
    changed = normalise_score(diff[None]) > threshold
    return guide & dilate(changed, REFINE_GROW)[0]


def composite_outside(edited: torch.Tensor, original: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """``soft * edited + (1 - soft) * original``, and ``original`` itself wherever ``soft == 0``
    (images ``[3, H, W]``, mask ``[H, W]``)."""
    s = soft.to(edited.dtype)[None]
    return torch.where(s > 0, s * edited + (1 - s) * original.to(edited.dtype), original.to(edited.dtype))


def save_mask(mask_dir: str | os.PathLike, output: torch.Tensor, soft: torch.Tensor) -> Path:
    """Write ``soft`` (``[H, W]`` in [0, 1]) as a grey PNG named after ``output``'s PNG bytes, the
    way the result store names the output image; atomically."""
    sha = hash_bytes(png_bytes(output), length=32)
    return atomic_write_bytes(Path(mask_dir) / sha[:2] / f"{sha}.mask.png", png_bytes(soft[None].expand(3, -1, -1)))


# ---------------------------------------------------------------- InstructPix2Pix, with guidance terms

class PostEditInstructPix2Pix(InstructPix2PixEditor):
    """InstructPix2Pix with EditWorld's post-edit (module docstring). Paper sampler only."""

    name = "instructpix2pix+postedit"
    declared_knobs: Mapping[str, Knob] = {**InstructPix2PixEditor.declared_knobs, **GUIDED_KNOB_DECLS}

    def __init__(self, components, *, mask_dir: str | os.PathLike | None = None, **kwargs):
        super().__init__(components, **kwargs)
        self.mask_dir = mask_dir
        self.last_masks: list[torch.Tensor] = []
        self._masks: dict[int, torch.Tensor] = {}  # request index -> binary guidance mask, this run

    @classmethod
    def from_editor(cls, editor: InstructPix2PixEditor, **kwargs) -> "PostEditInstructPix2Pix":
        """The same model and settings as ``editor`` (components shared), with post-edit."""
        return cls(editor.components, device=editor.device, dtype=editor.dtype, max_batch=editor.max_batch,
                   resize=editor.resize, resolution=editor.resolution, **kwargs)

    def identity_extra(self) -> dict[str, Any]:
        return {"postedit": {"score": "mean over steps and channels of |eps(z,I,c_T) - eps(z,I,null)|",
                             "normalise": "max", "latent_blend": "z_in + sigma * initial noise",
                             "composite": "input pixels outside the feathered mask"}}

    def group(self, knobs) -> Any:  # one mask setting per chunk
        return (knobs["scheduler"],) + tuple(knobs[k] for k in GUIDED_KNOBS)

    def run(self, requests: Sequence[EditRequest], *, progress: bool = False) -> list[torch.Tensor]:
        """Protocol entry point: InstructPix2Pix's knobs plus the post-edit knobs. Fills
        ``last_masks`` (an empty mask where the instruction is empty); writes them under ``mask_dir``."""
        return self._with_masks(lambda: super(PostEditInstructPix2Pix, self).run(requests, progress=progress))

    def run_same_size(self, requests: Sequence[EditRequest], *, progress: bool = False) -> torch.Tensor:
        return self._with_masks(lambda: super(PostEditInstructPix2Pix, self).run_same_size(requests, progress=progress))

    def _with_masks(self, call):
        self._masks, soft = {}, {}
        self._soft = soft
        try:
            outs = call()
        finally:
            self._masks = {}
        self.last_masks = [soft.get(i, torch.zeros(o.shape[-2:])) for i, o in enumerate(outs)]
        if self.mask_dir is not None:
            for out, m in zip(outs, self.last_masks):
                save_mask(self.mask_dir, out, m)
        return outs

    def finish(self, index, request, knobs, decoded, processed) -> torch.Tensor:
        """Refine the guidance mask by the pixels that changed, feather it and composite the input back."""
        hard = refine_mask(self._masks[index], decoded, processed, float(knobs["refine_threshold"]))
        soft = feather(hard[None], int(knobs["mask_feather"]))[0]
        self._soft[index] = soft
        return composite_outside(decoded, processed, soft)

    # ------------------------------------------------------------ the sampling loop

    def sample(self, chunk: Chunk) -> torch.Tensor:
        """The editor's paper sampler (the one loop, same noise draws) with two hooks: the edit score
        accumulated from the guidance branches, and the latent blend after each step; then the
        chunk's final pixel masks."""
        k0 = chunk.knobs[0]
        if k0["scheduler"] not in (None, "paper") or self.scheduler is not None:
            raise SpecError(f"{self.name}: post-edit runs the paper's Euler ancestral sampler only; remove 'scheduler'")
        latent = chunk.image_cond[0]
        threshold, dilation, share = float(k0["mask_threshold"]), int(k0["mask_dilation"]), float(k0["global_fraction"])
        f = self.vae_scale_factor
        size = (latent.shape[-2] * f, latent.shape[-1] * f)
        score = torch.zeros(latent.shape[0], *latent.shape[-2:], device=self.device)
        # an image whose mask was global at a step stays global: the score's early steps are noisy, and a
        # global edit's mask that dips under global_fraction for one late step would blend the input back there
        whole = torch.zeros(latent.shape[0], dtype=torch.bool, device=self.device)

        def add_score(cond, img_cond, uncond) -> None:
            score.add_((cond - img_cond).abs().mean(1))

        def make_blend(sigmas, n0):
            z_in = latent.float() * self.components.vae.config.scaling_factor
            blend_from = int(round(float(k0["blend_start"]) * chunk.steps))

            def blend(i: int, x: torch.Tensor) -> torch.Tensor | None:
                if i < blend_from:
                    return None
                keep = pixel_mask(score / (i + 1), size, threshold, dilation, share, whole)
                m = F.max_pool2d(keep[:, None].float(), f, stride=f)
                return m * x + (1 - m) * (z_in + float(sigmas[i + 1]) * n0)

            return blend

        x = self.sample_paper(chunk, on_branches=add_score, make_callback=make_blend)
        masks = pixel_mask(score / chunk.steps, size, threshold, dilation, share, whole).cpu()
        for j, idx in enumerate(chunk.indices):
            self._masks[idx] = masks[j]
        return x


# ---------------------------------------------------------------- any editor: the pixel fallback

class PostEditWrapper:
    """Post-edit for an editor that exposes no guidance terms (SDEdit, Text2Live): the wrapped
    editor's output, kept only where it differs from the input (module docstring)."""

    def __init__(self, editor, *, mask_dir: str | os.PathLike | None = None):
        self.editor = editor
        self.name = f"{editor.name}+postedit"
        clash = sorted(set(editor.declared_knobs) & set(MASK_KNOB_DECLS))
        if clash:
            raise SpecError(f"post-edit: the wrapped editor {editor.name!r} already has knob {clash[0]!r}")
        self.declared_knobs: Mapping[str, Knob] = {**editor.declared_knobs, **MASK_KNOB_DECLS}
        self.knobs: Mapping[str, Any] = knob_defaults(self.declared_knobs)
        self.mask_dir = mask_dir
        self.last_masks: list[torch.Tensor] = []

    def identity(self) -> dict[str, Any]:
        ident = dict(self.editor.identity())
        ident.update(method=self.name, wrapped=self.editor.name,
                     postedit={"score": "mean over channels of |output - input|", "normalise": "max",
                               "composite": "input pixels outside the feathered mask"})
        return ident

    @staticmethod
    def _inner(r: EditRequest) -> EditRequest:
        return replace(r, knobs={k: v for k, v in r.knobs.items() if k not in MASK_KNOB_DECLS})

    def metric_input(self, request: EditRequest) -> torch.Tensor:
        """The wrapped editor's processed input (what the metrics compare against)."""
        return self.editor.metric_input(self._inner(request))

    def run(self, requests: Sequence[EditRequest], **kwargs) -> list[torch.Tensor]:
        masks = [resolve_knobs(MASK_KNOB_DECLS, {k: v for k, v in r.knobs.items() if k in MASK_KNOB_DECLS},
                               method=self.name, item_id=r.item_id, index=i) for i, r in enumerate(requests)]
        inner = [self._inner(r) for r in requests]
        edited = self.editor.run(inner)
        outs, soft = [], []
        for i, (r, k, y) in enumerate(zip(inner, masks, edited)):
            x = self.editor.metric_input(r)
            if tuple(x.shape) != tuple(y.shape):
                raise ValueError(f"{who(r.item_id, i)}: {self.editor.name} returned {tuple(y.shape)} for an input it "
                                 f"processes to {tuple(x.shape)}; post-edit needs them equal")
            score = (y.float() - x.float()).abs().mean(0, keepdim=True)
            hard = pixel_mask(score, tuple(y.shape[-2:]), float(k["mask_threshold"]), int(k["mask_dilation"]),
                              float(k["global_fraction"]))
            m = feather(hard, int(k["mask_feather"]))[0]
            soft.append(m)
            outs.append(composite_outside(y.float(), x.float(), m))
        self.last_masks = soft
        if self.mask_dir is not None:
            for out, m in zip(outs, soft):
                save_mask(self.mask_dir, out, m)
        return outs


def post_edit(editor, *, mask_dir: str | os.PathLike | None = None):
    """Post-edit around ``editor``: :class:`PostEditInstructPix2Pix` for an InstructPix2Pix editor
    (guidance terms), :class:`PostEditWrapper` (pixel difference) for any other protocol editor."""
    if isinstance(editor, PostEditInstructPix2Pix) or isinstance(editor, PostEditWrapper):
        raise SpecError(f"{editor.name}: post-edit is already applied")
    if isinstance(editor, InstructPix2PixEditor):
        return PostEditInstructPix2Pix.from_editor(editor, mask_dir=mask_dir)
    return PostEditWrapper(editor, mask_dir=mask_dir)


# ---------------------------------------------------------------- registry

def _register() -> None:
    from baselines.sdedit import load_sdedit
    from baselines.text2live import load_text2live
    from ip2p.registry import get_method, register_method

    def ip2p_factory(model: str | None = None, device: str | None = None, mask_dir=None, **options):
        return post_edit(load_editor(model or "world:ip2p", device=device, **options), mask_dir=mask_dir)

    def sdedit_factory(model: str | None = None, device: str | None = None, mask_dir=None, **options):
        return PostEditWrapper(load_sdedit(model or "world:sd", device=device, **options), mask_dir=mask_dir)

    def text2live_factory(model: str | None = None, device: str | None = None, metric_clip=None, mask_dir=None,
                          **options):
        return PostEditWrapper(load_text2live(model or "ViT-B-32", device=device, metric_clip=metric_clip, **options),
                               mask_dir=mask_dir)

    for inner, factory, extra, demo_knobs in (
        ("instructpix2pix", ip2p_factory, GUIDED_KNOB_DECLS, {"num_inference_steps": 20, "guidance_scale": 7.5}),
        ("sdedit", sdedit_factory, MASK_KNOB_DECLS, {"num_inference_steps": 20}),
        ("text2live", text2live_factory, MASK_KNOB_DECLS, {}),
    ):
        base = get_method(inner)
        register_method(
            f"{inner}+postedit", factory, {**base.knobs, **extra},
            editor_class=PostEditInstructPix2Pix if inner == "instructpix2pix" else None,
            default_model=base.default_model,
            description=f"{base.description}; with EditWorld's post-edit (input kept outside the edit mask, "
                        + ("mask from the guidance terms)" if inner == "instructpix2pix"
                           else "mask from the output-input difference)"),
            demo_model=base.demo_model, demo_knobs={**base.demo_knobs, **demo_knobs},
            # the demo shows post-edit on world:ip2p (on 48 items, beside the 192-item sI sweep)
            demo_grid={"image_guidance_scale": [1.5, 2.5]} if inner == "instructpix2pix" else None,
            demo_limit=48 if inner == "instructpix2pix" else None,
            curve_knob=base.curve_knob, replace=True,
        )


_register()

__all__ = ["PostEditInstructPix2Pix", "PostEditWrapper", "post_edit", "pixel_mask", "feather", "dilate",
           "normalise_score", "stay_global", "composite_outside", "save_mask", "MASK_KNOBS", "GUIDED_KNOBS"]
