"""Would more latent channels lift the ceiling that bounds replace and colour? A probe, not a recipe:
trains the world VAE's recipe (``ip2p.world.vae_recipe``: its architecture, loss, latent noise, data,
cosine lr, bf16 autocast) from scratch once per ``--channels`` value, each for the same ``--steps``
on the same batches from the same seed, then measures each one's ceiling per category on the
protocol's test items (``ip2p.world.evaluate.latent_ceiling``: the round trip of the exact target
beside identity, paired, 95%). Only the latent's channel count differs between the runs, so the
comparison is fair at equal steps even though neither run is trained as long as the shipped VAE
(5,500 steps in three phases). Writes ``--out`` (JSON); ships nothing.

    python scripts/latent_channels_probe.py --channels 4,8 --steps 400 --out world-training/latent-channels-probe.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def train(channels: int, steps: int, batch: int, lr: float, seed: int):
    """The VAE recipe's loop with ``latent_channels=channels``, for ``steps``; the model, wall seconds, last loss."""
    import torch
    from tqdm import tqdm

    from ip2p.world.recipe import n_params, setup
    from ip2p.world.vae_recipe import POSTERIOR_LOGVAR_SHIFT, _lr_lambda, build_vae, train_step, training_batch

    gen = setup(seed)
    vae = build_vae(channels)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))
    vae.train()
    t0, loss = time.time(), None
    for step in tqdm(range(steps), desc=f"vae {channels} ch"):
        loss, _ = train_step(vae, training_batch(step, batch, seed), opt, sched, gen)
    vae.eval()
    with torch.no_grad():  # as finish_vae: a nearly deterministic posterior (the round trip uses its mode anyway)
        vae.quant_conv.bias[channels:] += POSTERIOR_LOGVAR_SHIFT
    return vae, round(time.time() - t0, 1), loss.item(), n_params(vae)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", default="4,8", help="latent channel counts, comma-separated")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=8e-4, help="the VAE recipe's first phase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=192, help="first n world test items (the protocol's 192)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from ip2p.world.evaluate import latent_ceiling

    result = {"probe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "runs": {}}
    for c in [int(v) for v in args.channels.split(",")]:
        vae, wall, loss, params = train(c, args.steps, args.batch, args.lr, args.seed)
        table = latent_ceiling(vae, args.n)
        result["runs"][str(c)] = {"train_wall_s": wall, "last_loss": round(loss, 5), "parameters": params,
                                  "categories": table}
        print(f"{c} channels ({wall:.0f} s): round trip {table['all']['roundtrip']:.4f}; replace "
              f"{table['replace']['roundtrip']:.4f} vs identity {table['replace']['identity']:.4f}, paired "
              f"{table['replace']['paired'][0]:+.4f} [{table['replace']['paired'][1]:+.4f}, "
              f"{table['replace']['paired'][2]:+.4f}]", flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after each run: a stopped probe keeps its figures


if __name__ == "__main__":
    main()
