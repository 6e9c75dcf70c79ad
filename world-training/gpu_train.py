"""The prepared GPU run for world:sd (issue 21): the recipe of ``ip2p world train-sd``, longer, on the
GPU, sized to the minutes the device gives it; evaluated and packed under --out for the way back.

world:sd draws its own caption top-1 0.31 after 2,000 steps and 0.53 after 3,200 (2 CPU cores); its
training length is the lever, and a GPU trains it in minutes. Steps: a 200-step probe of the same
recipe measures the rate; the run then takes ``floor(rate * minutes * 0.85 / 500) * 500`` steps
(at most --max-steps), because the recipe's cosine schedule is a function of its step count and
only a finished run exports weights. Every random draw stays on the CPU's generators, so a CPU run
with the recorded command draws the same batches.

Writes under --out, as each part ends: ``sd-probe.json`` (rate), ``sd-train.json`` (the recipe's
training record: command, steps, wall time, GPU), ``sd-eval.json`` (``evaluate_sd``: caption top-1
among 32 etc., beside the shipped world:sd's figures measured in the same run), ``world-sd.tar``
(unet/, text_encoder/, scheduler/, model_index.json: untar into ``ip2p/world/weights/sd`` to ship,
then rerun the reports that stand on world:sd).

CPU dry run (tiny: 20-step probe, 40 steps): ``python world-training/gpu_train.py --device cpu --smoke --out /tmp/x``
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write(out: Path, name: str, obj: dict) -> None:
    (out / name).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out / name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=4.0, help="training minutes after the probe")
    ap.add_argument("--max-steps", type=int, default=30000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/world-sd-gpu"))
    ap.add_argument("--smoke", action="store_true", help="CPU dry run of the code path: tiny probe and run")
    args = ap.parse_args(argv)

    import torch

    from ip2p.world import SD_DIR, WEIGHTS_DIR
    from ip2p.world.evaluate import evaluate_sd
    from ip2p.world.sd_recipe import train_sd

    out, work = args.out, args.work
    out.mkdir(parents=True, exist_ok=True)
    if work.exists():
        shutil.rmtree(work)
    n_images = 512 if args.smoke else 16384
    probe_steps = 20 if args.smoke else 200

    def fresh(name: str) -> Path:  # a pipeline folder holding the shipped VAE and tokenizer
        d = work / name
        for part in ("vae", "tokenizer"):
            shutil.copytree(SD_DIR / part, d / part)
        return d

    # the probe encodes the caption pool once; the run reuses its latents cache
    probe_run = work / "probe-run"
    train_sd(fresh("probe"), run_dir=probe_run, steps=probe_steps // 2, n_images=n_images, device=args.device)
    t0 = time.time()
    train_sd(work / "probe", run_dir=probe_run, steps=probe_steps, n_images=n_images, device=args.device)
    # resuming from step probe_steps/2 -> probe_steps: the second half's wall time, model set-up included
    rate = (probe_steps - probe_steps // 2) / (time.time() - t0)
    steps = 40 if args.smoke else max(500, min(args.max_steps, int(rate * args.minutes * 60 * 0.85 / 500) * 500))
    _write(out, "sd-probe.json", {"device": args.device, "probe_steps_timed": probe_steps - probe_steps // 2,
                                  "steps_per_s": round(rate, 2), "minutes": args.minutes, "chosen_steps": steps,
                                  "torch": torch.__version__,
                                  "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})

    run_dir = work / "run"
    run_dir.mkdir(parents=True)
    for cache in probe_run.glob("latents-*.pt"):
        shutil.copy2(cache, run_dir / cache.name)
    sd_new = fresh("sd")
    rec = train_sd(sd_new, run_dir=run_dir, steps=steps, n_images=n_images, device=args.device)
    _write(out, "sd-train.json", rec)

    clip = WEIGHTS_DIR / "clip"
    ev = {"trained": evaluate_sd(sd_new, clip), "shipped": evaluate_sd(SD_DIR, clip),
          "command": f"python world-training/gpu_train.py --device {args.device} --minutes {args.minutes}"
                     + (" --smoke" if args.smoke else "") + f" (training: {rec['command']})"}
    _write(out, "sd-eval.json", ev)
    with tarfile.open(out / "world-sd.tar", "w") as tar:
        for part in ("unet", "text_encoder", "scheduler", "model_index.json"):
            tar.add(sd_new / part, arcname=part)
    print(f"wrote {out / 'world-sd.tar'}: caption top-1 {ev['trained']['clip_top1_among_n']} "
          f"(shipped {ev['shipped']['clip_top1_among_n']}) after {steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
