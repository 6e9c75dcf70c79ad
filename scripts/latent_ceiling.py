"""How far below identity can a latent editor go, category by category? The best any editor that
decodes through world:sd's VAE can output is the VAE round trip of the exact target; this prints, per
category of the first ``--n`` world test items, its L1 to the target beside identity's (the input)
and the paired difference (round trip - identity) with the 95% bootstrap interval issue 21's
protocol uses (``ip2p.world.evaluate.latent_ceiling``). Where that margin is small, an editor that
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

    from ip2p.models import load_vae, resolve_source
    from ip2p.world.evaluate import latent_ceiling

    table = latent_ceiling(load_vae(Path(resolve_source(args.vae)) / "vae"), args.n)
    print(f"{'category':16s} {'identity':>9s} {'round trip':>10s}  paired (round trip - identity) [95%]")
    for c, row in table.items():
        mean, lo, hi = row["paired"]
        print(f"{c:16s} {row['identity']:9.4f} {row['roundtrip']:10.4f}  {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if args.out:
        args.out.write_text(json.dumps({"n": args.n, "vae": args.vae, "categories": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
