"""Is one world:ip2p better than another? Both edit the same first ``--n`` world test items under
issue 21's protocol (20 steps, sI 1.5, sT 7.5); per category, the paired L1 difference to the exact
target (b - a) with the protocol's 95% bootstrap interval, each one's edit success and the items only
one of them edits right, and the same over items whose input is drawn at night and by day
(``ip2p.world.evaluate.compare_editors``). Used to decide whether a new
training stage is shipped (world-training/ip2p/stage8/).

    python scripts/compare_stages.py A B [--n 192] [--out compare.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the editor compared against (e.g. world:ip2p, the shipped one)")
    ap.add_argument("b", help="the new editor (a pipeline folder)")
    ap.add_argument("--n", type=int, default=192, help="first n world test items (the protocol's 192)")
    ap.add_argument("--out", type=Path, help="also write the table as JSON")
    args = ap.parse_args()

    from ip2p.models import resolve_source
    from ip2p.world.evaluate import compare_editors

    a, b = resolve_source(args.a), resolve_source(args.b)
    table = compare_editors(a, b, n=args.n)
    print(f"a = {args.a}, b = {args.b}; {args.n} items")
    print(f"{'category':16s} {'success a':>9s} {'success b':>9s} {'b only':>6s} {'a only':>6s}  L1 b - a [95%]")
    for c, r in table.items():
        mean, lo, hi = r["paired_l1_b_minus_a"]
        print(f"{c:16s} {r['success_a']:9.2f} {r['success_b']:9.2f} {r['b_wins']:6d} {r['a_wins']:6d}  "
              f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    if args.out:
        args.out.write_text(json.dumps({"a": args.a, "b": args.b, "n": args.n, "by_category": table}, indent=1))


if __name__ == "__main__":
    main()
