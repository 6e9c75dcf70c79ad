"""Why does world:ip2p fail on one category? Edits that category's items (or, with ``--input night``,
the items whose input scene is drawn at night, of any category) among the first ``--n``
world test items exactly as issue 21's protocol does (20 steps, sI 1.5, sT 7.5, seed = item index,
resize none), prints per item the exact edit success and its two parts (the share of the input-to-
target distance closed inside the edit mask; the mean change outside it) and writes a grid: inputs,
edits, targets, one column per item.

    python scripts/category_failures.py --category background --out world-training/ip2p/stage5/background-failures.png
    python scripts/category_failures.py --input night --out world-training/ip2p/stage7/night-input-failures.png
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", help="one category (default: every category)")
    ap.add_argument("--input", choices=("any", "night", "day"), default="any",
                    help="only items whose input scene is drawn at night, or by day")
    ap.add_argument("--editor", default="world:ip2p")
    ap.add_argument("--n", type=int, default=192, help="first n world test items (the protocol's 192)")
    ap.add_argument("--out", type=Path, required=True, help="PNG: inputs / edits / targets")
    args = ap.parse_args()

    import torch
    import torchvision

    from ip2p.data.world.examples import make_example
    from ip2p.metrics.success import TAU_OUTSIDE, RHO_INSIDE, edit_success
    from ip2p.world.evaluate import EDIT_PROTOCOL as P, _edit_all

    def wanted(e) -> bool:
        night = e.metadata["input_scene"]["night"]
        return (args.category in (None, e.category)
                and (args.input == "any" or night == (args.input == "night")))

    found = [(i, e) for i in range(args.n) if wanted(e := make_example("test", i))]
    what = f"--category {args.category or 'any'} --input {args.input}"
    if not found:
        raise SystemExit(f"{what}: no such item among the first {args.n} test items")
    index, items = (list(x) for x in zip(*found))
    out = _edit_all(args.editor, items, P["steps"], P["image_guidance_scale"], P["guidance_scale"], seeds=index)
    inp, tgt = (torch.stack([getattr(e, k) for e in items]) for k in ("input_image", "target_image"))
    cols = edit_success(inp, out, tgt, torch.stack([e.mask for e in items]))
    print(f"{args.editor}, {what}: protocol {P['sampler']}, {P['steps']} steps, sI {P['image_guidance_scale']}, "
          f"sT {P['guidance_scale']}; "
          f"success = closed >= {1 - RHO_INSIDE} and outside <= {TAU_OUTSIDE}")
    for j, (i, e) in enumerate(found):
        print(f"item {i:4d}  success {cols['edit_success'][j]:.0f}  closed {cols['edit_inside_closed'][j]:6.2f}  "
              f"outside {cols['edit_outside_l1'][j]:.3f}  {e.category:16s} {e.instruction}")
    s = cols["edit_success"]
    print(f"success {float(s[~torch.isnan(s)].mean()):.3f} over {len(items)} items")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torchvision.utils.save_image(torch.cat([inp, out, tgt]), args.out, nrow=len(items))
    print(f"grid (rows: input, edit, target): {args.out}")


if __name__ == "__main__":
    main()
