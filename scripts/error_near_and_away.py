"""Where does a latent editor's L1 to the exact target come from, near the edit or away from it? Per
category of the first ``--n`` world test items under issue 21's protocol, the editor's L1, its VAE's
round trip of the target (the ceiling) and identity's, each split into the part from pixels near the
true edit (its mask grown by ``--margin`` px) and the part from the pixels away from it
(``ip2p.world.evaluate.error_near_and_away``). Identity is exact away from the edit; a latent editor
regenerates every pixel, so where the edit is small (replace, colour, add) its error away from the
edit alone can cost as much as leaving the input.

    python scripts/error_near_and_away.py [--editor world:ip2p] [--n 192] [--out table.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--editor", default="world:ip2p", help="an InstructPix2Pix pipeline folder or world: name")
    ap.add_argument("--n", type=int, default=192, help="first n world test items (the protocol's 192)")
    ap.add_argument("--margin", type=int, default=2, help="pixels the edit mask is grown by")
    ap.add_argument("--out", type=Path, help="also write the table as JSON")
    args = ap.parse_args()

    from ip2p.models import resolve_source
    from ip2p.world.evaluate import EDIT_PROTOCOL, error_near_and_away

    table = error_near_and_away(resolve_source(args.editor), args.n, args.margin)
    print(f"{'category':16s} {'near share':>10s}  {'editor near + away':>19s}  {'round trip near + away':>23s}  identity")
    for c, r in table.items():
        e, rt = r["editor"], r["roundtrip"]
        print(f"{c:16s} {r['near_share']:10.3f}  {e['near']:.4f} + {e['away']:.4f}  {rt['near']:11.4f} + {rt['away']:.4f}"
              f"  {r['identity']['l1']:.4f}")
    if args.out:
        args.out.write_text(json.dumps({"editor": args.editor, "n": args.n, "margin_px": args.margin,
                                        "protocol": EDIT_PROTOCOL, "categories": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
