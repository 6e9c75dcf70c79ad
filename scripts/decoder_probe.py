"""Would a better decoder move the per-category L1 targets? A probe, not a recipe: fine-tunes only
the decoder of world:sd's VAE (encoder and latent space frozen, so world:sd's and world:ip2p's UNets
stay valid, as SD's ft-MSE decoder was made) on fresh world training images with the VAE recipe's
loss (or plain L1, ``--loss l1``: the protocol's metric; in bfloat16 autocast as the recipe trains,
or ``--precision fp32``), for ``--minutes``, then measures per category of the protocol's test
items: the round trip of the exact targets against identity (``scripts/latent_ceiling.py``'s table)
before and after, and world:ip2p's issue-21 figures with the fine-tuned decoder in place of its own.
Writes ``--out`` (JSON); ships nothing.

    python scripts/decoder_probe.py --minutes 12 --out world-training/decoder-probe.json
    python scripts/decoder_probe.py --minutes 12 --precision fp32 --loss l1 --latent-noise 0.03 --lr 1e-4 \
        --out world-training/decoder-probe-fp32-l1.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def _finetune(vae, args) -> dict:
    """Train the decoder of ``vae`` in place for ``args.minutes``; its step count, wall time, losses."""
    import torch
    from tqdm import tqdm

    from ip2p.world.recipe import setup
    from ip2p.world.vae_recipe import LATENT_NOISE, reconstruction_loss, training_batch

    gen = setup(seed=7)
    noise = LATENT_NOISE if args.latent_noise is None else args.latent_noise
    bf16 = args.precision == "bf16"
    train = [p for n, p in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))]
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in train:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(train, lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    vae.train()
    # training batches past the VAE recipe's three phases (3,000 + 1,500 + 1,000 steps): images it has not seen
    step, t0, losses = 0, time.time(), []
    bar = tqdm(desc="decoder", unit="step")
    while time.time() - t0 < args.minutes * 60:
        x = training_batch(10_000 + step, args.batch, seed=0)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mean = vae.encode(x).latent_dist.mean.float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rec = vae.decode(mean + noise * torch.randn(mean.shape, generator=gen)).sample.float()
        loss = reconstruction_loss(rec, x) if args.loss == "recipe" else (rec - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    vae.eval()
    return {"steps": step, "train_wall_s": round(time.time() - t0, 1),
            "loss_first_last_50": [sum(losses[:50]) / max(1, len(losses[:50])), sum(losses[-50:]) / max(1, len(losses[-50:]))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=12.0, help="fine-tuning time")
    ap.add_argument("--lr", type=float, default=5e-5, help="after a linear warm-up of 50 steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                    help="bf16: autocast, as the VAE recipe trains; fp32: full precision (about 3x slower)")
    ap.add_argument("--loss", choices=("recipe", "l1"), default="recipe",
                    help="recipe: the VAE recipe's foreground-weighted L1 + MSE; l1: plain L1, the protocol's metric")
    ap.add_argument("--latent-noise", type=float, default=None,
                    help="std of the noise on posterior means in training (default: the recipe's LATENT_NOISE)")
    ap.add_argument("--n", type=int, default=192, help="first n world test items (the protocol's 192)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from ip2p.models import load_vae
    from ip2p.world import SD_DIR, WEIGHTS_DIR
    from ip2p.world.evaluate import evaluate_edits, latent_ceiling

    vae = load_vae(SD_DIR / "vae")
    res = {"probe": vars(args) | {"out": str(args.out)}, "before": latent_ceiling(vae.eval(), args.n)}
    res.update(_finetune(vae, args))
    res["after"] = latent_ceiling(vae, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ip2p"
        shutil.copytree(WEIGHTS_DIR / "ip2p", folder)
        vae.save_pretrained(str(folder / "vae"))
        figures, _ = evaluate_edits(folder, n=args.n)
    res["ip2p_with_probe_decoder"] = {k: figures[k] for k in ("editors", "paired_l1_minus_identity", "targets")}
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"{res['steps']} decoder steps in {res['train_wall_s']} s")
    for c in res["after"]:
        b, a = res["before"][c], res["after"][c]
        p = figures["paired_l1_minus_identity"][c]
        print(f"{c:16s} round trip {b['roundtrip']:.4f} -> {a['roundtrip']:.4f} (identity {a['identity']:.4f}; "
              f"paired {a['paired'][0]:+.4f} [{a['paired'][1]:+.4f}, {a['paired'][2]:+.4f}])  "
              f"editor paired [{p['low']:+.4f}, {p['high']:+.4f}]")


if __name__ == "__main__":
    main()
