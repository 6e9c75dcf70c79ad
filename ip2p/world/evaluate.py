"""Sanity figures of the world's models on the test split (they go into the model cards and tests).

- VAE: reconstruction PSNR on 64 test scenes.
- CLIP: image->caption retrieval top-1 among 64 test captions; zero-shot colour and shape accuracy
  on single-shape test scenes (candidates: the scene's own caption with the colour, or the kind,
  replaced by each alternative; chance 1/8 and 1/4).
- SD: text-to-image samples (DDIM, 20 steps, guidance 7.5) scored by the metric CLIP with their own
  captions versus the same images with shuffled captions.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ip2p.data.world.examples import caption_scene, to_tensor
from ip2p.data.world.scenes import COLOURS, KINDS, Scene, caption, render


@torch.no_grad()
def clip_features(folder: str | Path, images: torch.Tensor | None = None, texts: list[str] | None = None):
    """L2-normalised image and text features of a CLIP folder (loaded through ``ip2p.metrics``)."""
    from ip2p.metrics import load_clip
    from ip2p.metrics.preprocess import paper_preprocess

    clip = load_clip(str(folder), device="cpu")
    pre = clip.preprocess_cfg
    fi = ft = None
    if images is not None:
        x = paper_preprocess(images, clip.image_size, pre["mean"], pre["std"])
        fi = torch.nn.functional.normalize(clip.model.encode_image(x), dim=-1)
    if texts is not None:
        ft = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer(list(texts))), dim=-1)
    return fi, ft


def eval_caption_items(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[str], list[Scene]]:
    from ip2p.world.recipe import caption_batch

    imgs, caps = caption_batch("test", 0, n, seed=seed)
    return imgs, caps, [caption_scene("test", i, seed) for i in range(n)]


def _single_shape_scenes(n: int) -> list[Scene]:
    out, i = [], 0
    while len(out) < n:
        s = caption_scene("test", 100_000 + i)
        i += 1
        if len(s.shapes) == 1 and s.shapes[0].kind in KINDS:
            out.append(s)
    return out


@torch.no_grad()
def zero_shot(folder: str | Path, attribute: str, n: int = 96) -> float:
    """Accuracy of picking the right colour (or kind) among captions differing only in it."""
    scenes = _single_shape_scenes(n)
    values = list(COLOURS) if attribute == "colour" else list(KINDS)
    imgs = torch.stack([to_tensor(render(s)) for s in scenes])
    texts = []
    for s in scenes:
        for v in values:
            shape = dataclasses.replace(s.shapes[0], **{attribute if attribute == "colour" else "kind": v})
            texts.append(caption(s.replace(shapes=(shape,)), 0))
    fi, ft = clip_features(folder, imgs, texts)
    sims = (fi[:, None, :] * ft.view(n, len(values), -1)).sum(-1)
    truth = torch.tensor([values.index(getattr(s.shapes[0], "colour" if attribute == "colour" else "kind"))
                          for s in scenes])
    return float((sims.argmax(1) == truth).float().mean())


@torch.no_grad()
def retrieval_top1(folder: str | Path, n: int = 64) -> float:
    imgs, caps, _ = eval_caption_items(n)
    fi, ft = clip_features(folder, imgs, caps)
    return float(((fi @ ft.t()).argmax(1) == torch.arange(n)).float().mean())


def evaluate_clip(folder: str | Path) -> dict:
    return {
        "retrieval_top1_64": round(retrieval_top1(folder), 3),
        "zero_shot_colour_acc": round(zero_shot(folder, "colour"), 3),
        "zero_shot_colour_chance": round(1 / len(COLOURS), 3),
        "zero_shot_shape_acc": round(zero_shot(folder, "kind"), 3),
        "zero_shot_shape_chance": round(1 / len(KINDS), 3),
    }


@torch.no_grad()
def sd_samples(sd_folder: str | Path, captions: list[str], steps: int = 20, guidance: float = 7.5, seed: int = 0):
    """Images ``[N, 3, 64, 64]`` in [0, 1] from the world SD (DDIM), one generator per image."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ip2p.models import load_components

    c = load_components(str(sd_folder), kind="t2i")
    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(captions))]
    out = pipe(captions, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt")
    return out.images


def _top1(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """How often each image's own caption (same index) is the nearest of all the captions."""
    hits = (image_features @ text_features.t()).argmax(1) == torch.arange(len(image_features))
    return round(float(hits.float().mean()), 3)


@torch.no_grad()
def evaluate_sd(sd_folder: str | Path, clip_folder: str | Path, n: int = 32) -> dict:
    real, caps, _ = eval_caption_items(n)
    imgs = sd_samples(sd_folder, caps)
    fi, ft = clip_features(clip_folder, imgs, caps)
    fr, _ = clip_features(clip_folder, real)
    own = (fi * ft).sum(-1)
    perm = torch.roll(torch.arange(n), 1)  # a derangement: every image gets another caption
    shuffled = (fi * ft[perm]).sum(-1)
    return {
        "clip_score_own_caption": round(float(own.mean()), 4),
        "clip_score_shuffled_caption": round(float(shuffled.mean()), 4),
        "clip_top1_among_n": _top1(fi, ft),
        "reference_true_scenes_own_caption": round(float((fr * ft).sum(-1).mean()), 4),
        "reference_true_scenes_shuffled_caption": round(float((fr * ft[perm]).sum(-1).mean()), 4),
        "reference_true_scenes_top1_among_n": _top1(fr, ft),
        "n": n, "steps": 20, "guidance": 7.5, "sampler": "DDIM",
    }


@torch.no_grad()
def evaluate_vae(vae_folder: str | Path, n: int = 192) -> dict:
    """Round-trip L1 (posterior mode) of the targets of ``n`` test edits, per category, and the
    PSNR of 64 test caption scenes' reconstructions (ip2p.metrics.pixel.psnr: torchmetrics, range 1)."""
    from ip2p.metrics.pixel import psnr
    from ip2p.models import load_vae
    from ip2p.world.recipe import caption_batch
    from ip2p.world.vae_recipe import roundtrip_l1

    vae = load_vae(vae_folder)
    x, _ = caption_batch("test", 0, 64)
    rec = ((vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample + 1) / 2).clamp(0, 1)
    p = psnr(x, rec)
    rt = roundtrip_l1(vae, "test", n=n)
    return {"test_psnr_db_mean": round(float(p.mean()), 2), "test_psnr_db_min": round(float(p.min()), 2),
            "roundtrip_l1_test_targets": rt["l1_mean"], "roundtrip_l1_by_category": rt["l1_by_category"],
            "n_test_targets": n}


__all__ = ["evaluate_clip", "evaluate_sd", "evaluate_vae", "retrieval_top1", "zero_shot", "sd_samples", "clip_features"]


# --------------------------------------------------------------------------------------------
# the editor's targets (issue 21): world:ip2p against the identity editor and the exact target

EDIT_PROTOCOL = dict(n=192, steps=20, image_guidance_scale=1.5, guidance_scale=7.5, sampler="paper (Euler ancestral)",
                     resize=None, seed="0 + item index")


def _edit_all(folder: str | Path, items, steps: int, image_guidance: float, text_guidance: float,
              batch: int = 32, seeds: list[int] | None = None) -> torch.Tensor:
    """Edited images of ``items``; item k's seed is ``seeds[k]`` (default k: the protocol's "0 + item
    index" when ``items`` are the first n test items)."""
    import ip2p
    from ip2p.protocol import EditRequest

    seeds = list(range(len(items))) if seeds is None else seeds
    editor = ip2p.load_editor(str(folder), resize=None)
    outs = []
    for s in range(0, len(items), batch):
        outs += editor.run([EditRequest(
            image=e.input_image, instruction=e.instruction, input_caption=e.input_caption,
            output_caption=e.output_caption, seed=seed, item_id=e.item_id,
            knobs={"image_guidance_scale": image_guidance, "guidance_scale": text_guidance,
                   "num_inference_steps": steps}) for e, seed in zip(items[s:s + batch], seeds[s:s + batch])])
    return torch.stack(outs).float().clamp(0, 1)


def _per_category(values: torch.Tensor, cats: list[str]) -> dict[str, float]:
    from ip2p.metrics.success import mean_by_category

    return {c: round(v, 5) for c, v in mean_by_category(values.double(), cats).items()}


def _time_of_day(e) -> str:
    """"night" when the item's input scene is drawn at night (the world's rarer inputs), else "day"."""
    return "night" if e.metadata["input_scene"]["night"] else "day"


def _protocol_items(n: int) -> tuple[list, list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` world test items (all 12 categories cycle): items, categories, inputs,
    exact targets, true edit masks."""
    from ip2p.data.world.examples import make_example

    items = [make_example("test", i) for i in range(n)]
    inp, tgt, masks = (torch.stack([getattr(e, k) for e in items]) for k in ("input_image", "target_image", "mask"))
    return items, [e.category for e in items], inp, tgt, masks


@torch.no_grad()
def evaluate_edits(folder: str | Path, n: int = 192, steps: int = 20, image_guidance: float = 1.5,
                   text_guidance: float = 7.5, vae_folder: str | Path | None = None) -> tuple[dict, torch.Tensor]:
    """The issue-21 figures of the editor in ``folder`` on the first ``n`` world:test items (all 12
    categories cycle): L1 to the exact target and exact edit success (``ip2p.metrics.success``) for
    the editor, identity and the exact target (oracle), per category (success also by the
    instruction's phrasing, trained or held out, and by the input scene's time of day); the paired difference of L1
    (editor - identity) per category with a 95% bootstrap interval over items; the VAE round trip of
    the targets. Returns (figures, edited images)."""
    from ip2p.metrics.success import edit_success
    from ip2p.world.vae_recipe import roundtrip_l1

    items, cats, inp, tgt, masks = _protocol_items(n)
    edited = _edit_all(folder, items, steps, image_guidance, text_guidance)
    res: dict = {"protocol": dict(EDIT_PROTOCOL, n=n, steps=steps, image_guidance_scale=image_guidance,
                                  guidance_scale=text_guidance), "editors": {}, "paired_l1_minus_identity": {}}
    l1 = {}
    phrasing = ["held-out phrasing" if e.metadata["held_out_phrasing"] else "trained phrasing" for e in items]
    when = [f"{_time_of_day(e)} input" for e in items]
    for name, out in (("editor", edited), ("identity", inp), ("oracle", tgt)):
        l1[name] = (out - tgt).abs().flatten(1).mean(1)
        s = edit_success(inp, out, tgt, masks)["edit_success"]
        res["editors"][name] = {"l1_target": round(float(l1[name].mean()), 5),
                                "l1_target_by_category": _per_category(l1[name], cats),
                                "edit_success": round(float(s[~torch.isnan(s)].mean()), 4),
                                "edit_success_by_category": _per_category(s, cats),
                                "edit_success_by_phrasing": _per_category(s, phrasing),
                                "edit_success_by_input": _per_category(s, when)}
    res["items_by_input"] = {k: when.count(k) for k in sorted(set(when))}
    for c, (mean, lo, hi, k) in _paired_by_category((l1["editor"] - l1["identity"]).numpy(), cats).items():
        res["paired_l1_minus_identity"][c] = {"mean": round(mean, 5), "low": round(lo, 5), "high": round(hi, 5),
                                              "n": k, "excludes_0": bool(hi < 0 or lo > 0)}
    from ip2p.models import load_vae

    res["vae_roundtrip"] = roundtrip_l1(load_vae(Path(vae_folder or Path(folder) / "vae")), "test", n=n)
    res["targets"] = edit_targets_met(res)
    return res, edited


def _paired_by_category(diff, cats: list[str], overall: bool = True) -> dict[str, tuple[float, float, float, int]]:
    """Per category (and "all" unless ``overall`` is false): (mean, low, high, n) of the per-item
    differences ``diff`` with the protocol's 95% bootstrap interval over items (2,000 resamples, seed 0)."""
    import numpy as np

    from ip2p.util.stats import bootstrap_ci

    out = {}
    for c in sorted(set(cats)) + (["all"] if overall else []):
        v = diff if c == "all" else diff[[i for i, k in enumerate(cats) if k == c]]
        out[c] = (*bootstrap_ci(v, n_boot=2000, rng=np.random.default_rng(0)), int(len(v)))
    return out


@torch.no_grad()
def compare_editors(a: str | Path, b: str | Path, n: int = 192, steps: int = 20, image_guidance: float = 1.5,
                    text_guidance: float = 7.5) -> dict[str, dict]:
    """Two editors (e.g. two training stages) on the same first ``n`` world test items under the
    protocol: per category and "all", the paired L1 difference to the exact target (b - a) as [mean,
    low, high] with the protocol's 95% bootstrap interval, each one's edit success, and the items
    that only b edits successfully ("b_wins") or only a ("a_wins"). Then the same over the items
    whose input scene is drawn at night ("input: night") and by day ("input: day"): night inputs are
    the world's rarer scenes (``NIGHT_P``)."""
    from ip2p.metrics.success import edit_success

    items, cats, inp, tgt, masks = _protocol_items(n)
    l1, ok = {}, {}
    for name, folder in (("a", a), ("b", b)):
        out = _edit_all(folder, items, steps, image_guidance, text_guidance)
        l1[name] = (out - tgt).abs().flatten(1).mean(1).double().numpy()
        ok[name] = edit_success(inp, out, tgt, masks)["edit_success"].numpy()
    diff = l1["b"] - l1["a"]
    lit = [f"input: {_time_of_day(e)}" for e in items]
    table = {}
    for labels, rows in ((cats, _paired_by_category(diff, cats)), (lit, _paired_by_category(diff, lit, overall=False))):
        for c, (mean, lo, hi, k) in rows.items():
            idx = [i for i, x in enumerate(labels) if c in ("all", x)]
            sa, sb = ok["a"][idx], ok["b"][idx]
            table[c] = {"paired_l1_b_minus_a": [round(mean, 5), round(lo, 5), round(hi, 5)], "n": k,
                        "success_a": round(float(sa.mean()), 4), "success_b": round(float(sb.mean()), 4),
                        "b_wins": int(((sb == 1) & (sa == 0)).sum()), "a_wins": int(((sa == 1) & (sb == 0)).sum())}
    return table


@torch.no_grad()
def latent_ceiling(vae, n: int = 192) -> dict[str, dict]:
    """Per category of the first ``n`` world test items (and "all"): the L1 to the exact target of
    the target's VAE round trip (posterior mode), the best any editor that decodes through ``vae``
    can output, beside identity's, and their paired difference (round trip - identity) as [mean,
    low, high] with the protocol's 95% bootstrap interval."""
    from ip2p.data.world.examples import make_example
    from ip2p.world.vae_recipe import roundtrip_l1_per_item

    items = [make_example("test", i) for i in range(n)]
    inp, tgt = (torch.stack([getattr(e, k) for e in items]) for k in ("input_image", "target_image"))
    rt = roundtrip_l1_per_item(vae, tgt).double().numpy()
    ident = (inp - tgt).abs().flatten(1).mean(1).double().numpy()
    cats = [e.category for e in items]
    out = {}
    for c, (mean, lo, hi, k) in _paired_by_category(rt - ident, cats).items():
        idx = slice(None) if c == "all" else [i for i, x in enumerate(cats) if x == c]
        out[c] = {"roundtrip": round(float(rt[idx].mean()), 5), "identity": round(float(ident[idx].mean()), 5),
                  "paired": [round(mean, 5), round(lo, 5), round(hi, 5)], "n": k}
    return out


@torch.no_grad()
def error_near_and_away(folder: str | Path, n: int = 192, margin: int = 2, steps: int = 20,
                        image_guidance: float = 1.5, text_guidance: float = 7.5) -> dict[str, dict]:
    """Where a latent editor's L1 to the exact target comes from, per category of the first ``n``
    world test items (and "all"): each image's L1 split into the part from pixels near the true edit
    (the edit mask grown by ``margin`` pixels, where any decoder blurs an edge) and the part from the
    pixels away from it, which identity (the input) gets exactly right. For the editor in ``folder``
    under the protocol, its VAE's round trip of the target (the ceiling) and identity; each row's two
    parts add up to that output's mean L1 (both divided by all pixels), and ``near_share`` is the
    share of the image near the edit."""
    import torch.nn.functional as F

    from ip2p.models import load_vae
    from ip2p.world.vae_recipe import roundtrip_images

    items, cats, inp, tgt, masks = _protocol_items(n)
    near = F.max_pool2d(masks.float()[:, None], 2 * margin + 1, 1, margin) > 0  # [N, 1, H, W]
    outputs = {"editor": _edit_all(folder, items, steps, image_guidance, text_guidance),
               "roundtrip": roundtrip_images(load_vae(Path(folder) / "vae"), tgt), "identity": inp}
    parts = {}
    for name, out in outputs.items():
        err = (out - tgt).abs().mean(1, keepdim=True)
        parts[name] = ((err * near).flatten(1).mean(1), (err * ~near).flatten(1).mean(1))
    share = near.float().flatten(1).mean(1)
    table = {}
    for c in sorted(set(cats)) + ["all"]:
        idx = [i for i, k in enumerate(cats) if c in ("all", k)]
        table[c] = {"n": len(idx), "near_share": round(float(share[idx].mean()), 4)}
        for name, (a, b) in parts.items():
            table[c][name] = {"near": round(float(a[idx].mean()), 5), "away": round(float(b[idx].mean()), 5),
                              "l1": round(float((a + b)[idx].mean()), 5)}
    return table


def edit_targets_met(res: dict) -> dict[str, bool]:
    """Issue 21's targets, each true or false, from ``evaluate_edits``'s figures."""
    ed, ident = res["editors"]["editor"], res["editors"]["identity"]
    paired = res["paired_l1_minus_identity"]
    cats = [c for c in paired if c != "all"]
    return {
        "vae_roundtrip_l1<=0.004": res["vae_roundtrip"]["l1_mean"] <= 0.004,
        "l1_below_identity_every_category_ci_excludes_0": all(paired[c]["high"] < 0 for c in cats),
        "l1_at_most_half_identity": ed["l1_target"] <= 0.5 * ident["l1_target"],
        "edit_success>=0.8": ed["edit_success"] >= 0.8,
        "edit_success>=0.6_every_category": all(v >= 0.6 for v in ed["edit_success_by_category"].values()),
    }
