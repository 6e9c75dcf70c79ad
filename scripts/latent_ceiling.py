"""How far below identity can a latent editor go, category by category? The best any editor that
decodes through world:sd's VAE can output is the VAE round trip of the exact target; this prints, per
category of the first ``--n`` world test items, its L1 to the target beside identity's (the input)
and the paired difference (round trip - identity) with the 95% bootstrap interval issue 21's
protocol uses (``ip2p.world.evaluate.evaluate_edits``). Where that margin is small, an editor that
misses the target in one item of sixteen loses the category to identity.

    python scripts/latent_ceiling.py [--n 192] [--out ceiling.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=192, help="first n world test items (the protocol's 192)")
    ap.add_argument("--vae", default="world:sd", help="the VAE's pipeline (its vae/ folder is used)")
    ap.add_argument("--out", type=Path, help="also write the table as JSON")
    args = ap.parse_args()

    import numpy as np
    import torch

    from ip2p.data.world.examples import make_example
    from ip2p.models import load_vae, resolve_source
    from ip2p.util.stats import bootstrap_ci

    items = [make_example("test", i) for i in range(args.n)]
    inp, tgt = (torch.stack([getattr(e, k) for e in items]) for k in ("input_image", "target_image"))
    vae = load_vae(Path(resolve_source(args.vae)) / "vae")
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(tgt[i:i + 64] * 2 - 1).latent_dist.mode()).sample
                         for i in range(0, args.n, 64)])
    rec = ((rec + 1) / 2).clamp(0, 1)
    l1_rt, l1_id = ((x - tgt).abs().flatten(1).mean(1).double().numpy() for x in (rec, inp))
    cats = [e.category for e in items]
    table = {}
    print(f"{'category':16s} {'identity':>9s} {'round trip':>10s}  paired (round trip - identity) [95%]")
    for c in sorted(set(cats)) + ["all"]:
        idx = [i for i, k in enumerate(cats) if c in ("all", k)]
        mean, lo, hi = bootstrap_ci(l1_rt[idx] - l1_id[idx], n_boot=2000, rng=np.random.default_rng(0))
        table[c] = {"identity": round(float(l1_id[idx].mean()), 5), "roundtrip": round(float(l1_rt[idx].mean()), 5),
                    "paired": [round(mean, 5), round(lo, 5), round(hi, 5)], "n": len(idx)}
        print(f"{c:16s} {l1_id[idx].mean():9.4f} {l1_rt[idx].mean():10.4f}  {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if args.out:
        args.out.write_text(json.dumps({"n": args.n, "vae": args.vae, "categories": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
