"""The prepared GPU run for the world's models (issue 21), sized to the minutes the device gives it,
evaluated and packed under --out for the way back.

``--model sd`` (default): the recipe of ``ip2p world train-sd``, longer, on the GPU.

world:sd draws its own caption top-1 0.31 after 2,000 steps, 0.53 after 3,200 and 0.97 after 8,000 (the
shipped one, 59 minutes on 2 CPU cores); its training length is the lever, and a GPU trains it in minutes. Steps: a 200-step probe of the same
recipe measures the rate; the run then takes ``floor(rate * minutes * 0.85 / 500) * 500`` steps
(at most --max-steps), because the recipe's cosine schedule is a function of its step count and
only a finished run exports weights. Every random draw stays on the CPU's generators, so a CPU run
with the recorded command draws the same batches.

Writes under --out, as each part ends: ``sd-probe.json`` (rate), ``sd-train.json`` (the recipe's
training record: command, steps, wall time, GPU), ``sd-eval.json`` (``evaluate_sd``: caption top-1
among 32 etc., beside the shipped world:sd's figures measured in the same run), ``world-sd.tar``
(unet/, text_encoder/, scheduler/, model_index.json: untar into ``ip2p/world/weights/sd`` to ship,
then rerun the reports that stand on world:sd).

``--model ip2p``: one more stage of world:ip2p's recipe (a warm restart from the shipped weights, as
each of its stages is), steps chosen the same way from a 100-step probe; ``ip2p-train.json`` (the
stage's record), ``ip2p-eval.json`` (issue 21's protocol, ``evaluate_edits``, 192 items, beside the
shipped model's stored figures), ``world-ip2p-unet.tar`` (unet/ and training_config.json: untar into
``ip2p/world/weights/ip2p``, add the stage to ``ip2p_recipe.STAGES``, rewrite the card with
``ip2p world evaluate-ip2p``).

CPU dry run (tiny): ``python world-training/gpu_train.py --device cpu --smoke --out /tmp/x [--model ip2p]``
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


def _steps(rate: float, minutes: float, max_steps: int) -> int:
    """Steps that fit ``minutes`` at ``rate`` with 15% to spare, in multiples of 500 (at least 500)."""
    return max(500, min(max_steps, int(rate * minutes * 60 * 0.85 / 500) * 500))


def _probe(out: Path, name: str, device: str, timed_steps: int, seconds: float, minutes: float, steps: int) -> None:
    import torch

    _write(out, name, {"device": device, "probe_steps_timed": timed_steps,
                       "steps_per_s": round(timed_steps / seconds, 2), "minutes": minutes, "chosen_steps": steps,
                       "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})


def train_world_sd(args) -> None:
    from ip2p.world import SD_DIR, WEIGHTS_DIR
    from ip2p.world.evaluate import evaluate_sd
    from ip2p.world.sd_recipe import train_sd

    out, work = args.out, args.work
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
    seconds = time.time() - t0
    timed = probe_steps - probe_steps // 2
    steps = 40 if args.smoke else _steps(timed / seconds, args.minutes, args.max_steps)
    _probe(out, "sd-probe.json", args.device, timed, seconds, args.minutes, steps)

    run_dir = work / "run"
    run_dir.mkdir(parents=True)
    for cache in probe_run.glob("latents-*.pt"):
        shutil.copy2(cache, run_dir / cache.name)
    sd_new = fresh("sd")
    rec = train_sd(sd_new, run_dir=run_dir, steps=steps, n_images=n_images, device=args.device)
    _write(out, "sd-train.json", rec)

    clip = WEIGHTS_DIR / "clip"
    ev = {"trained": evaluate_sd(sd_new, clip), "shipped": evaluate_sd(SD_DIR, clip),
          "command": f"python world-training/gpu_train.py --model sd --device {args.device} --minutes {args.minutes}"
                     + (" --smoke" if args.smoke else "") + f" (training: {rec['command']})"}
    _write(out, "sd-eval.json", ev)
    with tarfile.open(out / "world-sd.tar", "w") as tar:
        for part in ("unet", "text_encoder", "scheduler", "model_index.json"):
            tar.add(sd_new / part, arcname=part)
    print(f"wrote {out / 'world-sd.tar'}: caption top-1 {ev['trained']['clip_top1_among_n']} "
          f"(shipped {ev['shipped']['clip_top1_among_n']}) after {steps} steps", flush=True)


def train_world_ip2p(args) -> None:
    from ip2p.world import ip2p_recipe
    from ip2p.world.evaluate import evaluate_edits

    out, work = args.out, args.work
    ship = ip2p_recipe.SHIP_DIR
    if args.smoke:  # the code path on a CPU in a minute: tiny batches and data, no validation grids
        ip2p_recipe.RECIPE.update(batch_size=2, data_options={"n": 64}, val_examples=0)
    probe_steps = 4 if args.smoke else 100
    t0 = time.time()
    ip2p_recipe.train_ip2p(work / "probe", steps=probe_steps, base=str(ship), ship=False, device=args.device)
    seconds = time.time() - t0  # data set-up, model load and export included: a rate on the safe side
    steps = 6 if args.smoke else _steps(probe_steps / seconds, args.minutes, args.max_steps)
    _probe(out, "ip2p-probe.json", args.device, probe_steps, seconds, args.minutes, steps)

    stage = work / "stage"
    rec = ip2p_recipe.train_ip2p(stage, steps=steps, base=str(ship), ship=False, device=args.device)
    _write(out, "ip2p-train.json", rec)
    n = 12 if args.smoke else 192
    figures, _ = evaluate_edits(stage, n=n, steps=20)
    shipped = json.loads((ship / "evaluation.json").read_text()).get("issue21")
    _write(out, "ip2p-eval.json", {
        "trained": figures, "shipped": shipped,
        "command": f"python world-training/gpu_train.py --model ip2p --device {args.device} --minutes {args.minutes}"
                   + (" --smoke" if args.smoke else "") + f" (training: {rec['command']})"})
    with tarfile.open(out / "world-ip2p-unet.tar", "w") as tar:
        for part in ("unet", "training_config.json"):
            tar.add(stage / part, arcname=part)
    ours = figures["editors"]["editor"]
    print(f"wrote {out / 'world-ip2p-unet.tar'}: edit success {ours['edit_success']} (shipped "
          f"{shipped['editors']['editor']['edit_success'] if shipped else 'n/a'}), L1 {ours['l1_target']} "
          f"after {steps} steps", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", choices=("sd", "ip2p"), default="sd")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=4.0, help="training minutes after the probe")
    ap.add_argument("--max-steps", type=int, default=30000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/world-gpu"))
    ap.add_argument("--smoke", action="store_true", help="CPU dry run of the code path: tiny probe and run")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work.exists():
        shutil.rmtree(args.work)
    (train_world_sd if args.model == "sd" else train_world_ip2p)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
