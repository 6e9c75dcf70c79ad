"""How small a degradation does a regression suite detect? Runs ``ip2p regress`` (in process) on
copies of a model whose UNet weights carry Gaussian noise of growing size (a fraction of each
tensor's own standard deviation), and on the deliberately broken editors of ``bench.testing``;
prints one line per case: exit code, number of regressed comparisons, the clearest one.

    python scripts/regress_sensitivity.py --suite smoke --golden results/golden/world-ip2p-smoke.json \
        --noise 0.002,0.005,0.01,0.02 --faults
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--golden", default="results/golden/world-ip2p-smoke.json")
    ap.add_argument("--noise", default="0.002,0.005,0.01,0.02", help="comma-separated UNet noise fractions")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the noise draw")
    ap.add_argument("--faults", action="store_true", help="also the broken editors (conditioning, sI/sT, steps)")
    ap.add_argument("--source", default="world:ip2p")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from bench.regress import run_regress, with_models
    from bench.spec import load_spec
    from bench.testing import degraded_model_folder, faulty_instructpix2pix

    spec = load_spec(args.suite)
    tmp = Path(tempfile.mkdtemp(prefix="regress-sensitivity-"))

    def gate(name: str, model: str) -> None:
        t0 = time.time()
        rep = run_regress(with_models(spec, [model]), args.golden, out=tmp / f"run-{name}", progress=False,
                          json_path=None, junit_path=None)
        worst = max(rep.regressions, key=lambda v: v.worse_lo / max(v.tolerance, 1e-12), default=None)
        clear = f"{worst.metric} [{worst.setting}] {worst.why}" if worst else "-"
        print(f"{name:28s} exit {rep.exit_code}  regressed {len(rep.regressions):2d}/{len(rep.verdicts)}  "
              f"{time.time() - t0:5.1f} s  {clear}", flush=True)

    if args.faults:
        gate("zero_image_conditioning", str(degraded_model_folder(tmp / "zero", args.source, zero_image_conditioning=True)))
        for fault in ("swap_guidance", "tenth_steps"):
            copy = degraded_model_folder(tmp / fault, args.source)
            with faulty_instructpix2pix(fault):
                gate(fault, str(copy))
    for seed in [int(s) for s in args.seeds.split(",")]:
        for noise in [float(x) for x in args.noise.split(",")]:
            folder = degraded_model_folder(tmp / f"noise-{noise:g}-{seed}", args.source, unet_noise=noise, seed=seed)
            gate(f"unet_noise={noise:g} seed={seed}", str(folder))


if __name__ == "__main__":
    main()
