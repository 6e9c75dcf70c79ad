"""Recipe: the world's two CLIP models in open_clip form -- ``clip`` (metrics) and ``clip-guide``
(the Text2Live-style guide), different in seed and size -- trained contrastively on world scenes.

Each folder holds ``open_clip_config.json`` ({"model_cfg", "preprocess_cfg"}) and
``open_clip_model.safetensors`` (the state dict of ``open_clip.CLIP(**model_cfg)``). The text tower
uses the world tokenizer, named by a path relative to the folder (``../sd/tokenizer``). Captions are
drawn in a random phrasing each time they are seen, so the model learns the phrasings as one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ip2p.world.recipe import WEIGHTS_DIR, RunRecord, caption_batch, n_params, setup
from ip2p.data.world.tokenizer import MODEL_MAX_LENGTH

# The world tokenizer's size and special ids (checked against the tokenizer when training).
VOCAB_SIZE = 927
EOT_ID = VOCAB_SIZE - 1

# CLIP's published normalisation (the world's images are synthetic; keeping it makes the
# preprocessing identical to a real CLIP's, so the same metric code serves both).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _model_cfg(embed_dim: int, v_width: int, v_layers: int, t_width: int, t_layers: int, heads: int) -> dict:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 64, "layers": v_layers, "width": v_width, "head_width": v_width // heads,
                       "patch_size": 8, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": MODEL_MAX_LENGTH, "vocab_size": VOCAB_SIZE, "width": t_width, "heads": heads,
                     "layers": t_layers, "mlp_ratio": 4.0, "pad_id": EOT_ID, "eos_id": EOT_ID,
                     "hf_tokenizer_name": "../sd/tokenizer"},
    }


CLIP_RECIPES = {
    "metric": dict(folder="clip", seed=0, steps=500, batch=128, lr=1e-3,
                   model_cfg=_model_cfg(embed_dim=128, v_width=128, v_layers=3, t_width=128, t_layers=2, heads=4)),
    "guide": dict(folder="clip-guide", seed=1, steps=400, batch=128, lr=1e-3,
                  model_cfg=_model_cfg(embed_dim=96, v_width=96, v_layers=2, t_width=96, t_layers=2, heads=4)),
}

PREPROCESS_CFG = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                  "resize_mode": "squash", "image_size": 64}


def build_clip(model_cfg: dict):
    import open_clip

    cfg = json.loads(json.dumps(model_cfg))
    cfg["text_cfg"].pop("hf_tokenizer_name", None)  # the tokenizer is loaded separately
    return open_clip.CLIP(**cfg)


def preprocess(images: torch.Tensor, pre: dict) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] -> normalised model input (square bicubic resize, no crop)."""
    size = pre["image_size"]
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


def train_clip(which: str, out: Path | None = None, steps: int | None = None) -> dict:
    from ip2p.metrics.clip_models import save_clip_folder
    from ip2p.models import load_tokenizer
    from ip2p.util.io import replacing_dir
    from ip2p.world.recipe import TOKENIZER_DIR

    r = dict(CLIP_RECIPES[which])
    steps = steps or r["steps"]
    batch, seed, lr = r["batch"], r["seed"], r["lr"]
    gen = setup(seed)
    out = Path(out) if out else WEIGHTS_DIR / r["folder"]
    record = RunRecord(f"ip2p world train-clip --which {which} --steps {steps}", steps=steps, batch=batch, lr=lr,
                       seed=seed, model_cfg=r["model_cfg"])
    tok = load_tokenizer(TOKENIZER_DIR)
    if len(tok) != VOCAB_SIZE or tok.eos_token_id != EOT_ID:
        raise RuntimeError(f"world tokenizer has {len(tok)} tokens (eos {tok.eos_token_id}); "
                           f"train_clip expects {VOCAB_SIZE} (eos {EOT_ID}): update VOCAB_SIZE")
    model = build_clip(r["model_cfg"])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    warm = 40
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc=f"train-clip[{which}]")
    losses = []
    for step in bar:
        imgs, caps = caption_batch("train", step * batch, batch, seed=seed, rng=rng)
        ids = tok(caps, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                  return_tensors="pt").input_ids
        fi, ft, scale = model(preprocess(imgs, PREPROCESS_CFG), ids)
        logits = scale * fi @ ft.t()
        # several items may share a caption only by chance; plain symmetric InfoNCE
        labels = torch.arange(batch)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", scale=f"{scale.item():.1f}")
    model.eval()
    with replacing_dir(out, start_from_existing=True) as tmp:  # the layout ip2p.metrics.load_clip reads
        save_clip_folder(tmp, model, r["model_cfg"], PREPROCESS_CFG)
    from ip2p.world.evaluate import evaluate_clip

    figures = evaluate_clip(out)
    return record.save(out, parameters=n_params(model), final_loss=float(np.mean(losses[-50:])), figures=figures,
                       loss_curve=[round(float(np.mean(losses[i:i + 25])), 3) for i in range(0, len(losses), 25)])
