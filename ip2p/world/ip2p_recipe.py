"""Recipe of the small world's InstructPix2Pix (``world:ip2p``): train it from ``world:sd`` with
the project's trainer (``ip2p train``), evaluate it on the world's test split beside the identity
editor and the exact targets, ship it with its card. One command, resumable:

    ip2p world train-ip2p [--time-limit-minutes M]   # every stage, into runs/world-ip2p/stage-<k>; ships when done
    ip2p world evaluate-ip2p                          # re-measures the card figures of the shipped folder

The model is trained in ``STAGES``: each stage is one run of the trainer from the previous stage's
exported EMA weights, with a fresh optimiser and its own warm-up and cosine schedule (a warm restart).
A run stopped by ``--time-limit-minutes`` (or killed) continues from its newest checkpoint when the
same command runs again: the trainer resumes bit for bit, and each cosine schedule is a function of
its stage's ``max_steps`` alone, so the weights equal those of one uninterrupted run.
``--steps`` or ``--base`` train one stage of that length (or from that base) instead. Stage 1 starts
from world:sd while the shipped world:sd is the text-to-image recipe's 2,000-step run (``BASE_SD``);
after a longer world:sd is shipped, the recipe trains that base first (``<run-dir>/sd-base``).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ip2p.data.world.examples import NIGHT_P
from ip2p.train.config import TrainConfig, loss_text, lr_schedule_text
from ip2p.util.io import atomic_write_json
from ip2p.world import SD_DIR, WEIGHTS_DIR
from ip2p.world.cards import render_card
from ip2p.world.cards import write_card as write_world_card
from ip2p.world.recipe import check_device, load_record

SHIP_DIR = WEIGHTS_DIR / "ip2p"
RUN_DIR = Path("runs/world-ip2p")
SHIPPED = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler", "training_config.json")

# The recipe (second generation). flip is off: world captions and instructions name left and right.
# timestep_sampling cubic (t = (1 - u^3) T, more samples at high noise, where the edit's layout is
# decided; low noise still gets samples). bf16 autocast: ~1.5x faster on AVX512-BF16 CPUs, weights
# and EMA stay float32. 100,000 distinct training edits (regenerated on demand, ~1 ms each), so the
# editor cannot memorise its data. The cosine schedule makes the result a function of max_steps.
RECIPE = dict(base="world:sd", data="world:train", data_options={"n": 100000}, resolution=64, max_steps=30000,
              flip=False, batch_size=32, grad_accum=1, lr=5e-4, lr_warmup_steps=200, lr_schedule="cosine", seed=0,
              ema=True, ema_max_decay=0.999, timestep_sampling="cubic", mixed_precision="bf16", checkpoint_every=250,
              checkpoints_keep=2, validate_every=2000, val_examples=4, val_steps=20, num_workers=0, log_every=25,
              cpu=True, verify_images=False)

# The stages of the shipped world:ip2p (second generation), each a run of RECIPE from the previous
# stage's export. Stage 2 was stopped at step 2,485 of its 2,500-step schedule (by a time limit in
# session 8; ``stop_at_step`` reproduces that stop exactly). Stage 7 is 5,000 steps: what fit in session 12
# after stage 6. Stage 8 (session 15) draws 30% of its inputs at night (the world's default is 10%: stage 7
# repainted night scenes by day) at a lower learning rate (world-training/ip2p/stage8/). Stage 9 (session 16)
# draws half its inputs at night: stage 8 still repainted 3 of 17 night inputs (world-training/ip2p/stage9/).
STAGES = (dict(max_steps=9000), dict(max_steps=2500, stop_at_step=2485), dict(max_steps=6500), dict(max_steps=7000),
          dict(max_steps=7000), dict(max_steps=7000), dict(max_steps=5000),
          dict(max_steps=6000, lr=2e-4, data_options=dict(RECIPE["data_options"], night_p=0.3)),
          dict(max_steps=6000, lr=2e-4, data_options=dict(RECIPE["data_options"], night_p=0.5)))

# The world:sd that stage 1 starts from: the text-to-image recipe (``ip2p world train-sd``) with these
# arguments, i.e. the world:sd shipped with the second generation. When the shipped world:sd is
# another run (a longer one), ``train_ip2p`` first trains this base into ``<run_dir>/sd-base``, so
# the chain of stages still reproduces the shipped world:ip2p.
BASE_SD = dict(steps=2000)


def base_sd_matches(sd_dir: Path = SD_DIR, base_sd: dict = BASE_SD) -> bool:
    """Whether the world:sd in ``sd_dir`` was made by the text-to-image recipe with ``base_sd``: its
    training record's config equals the recipe's defaults overridden by ``base_sd`` on every key the
    two share."""
    import inspect

    from ip2p.world.sd_recipe import train_sd

    config = load_record(Path(sd_dir) / "unet").get("config")
    if not config:
        return False
    want = {k: p.default for k, p in inspect.signature(train_sd).parameters.items()
            if p.default is not inspect.Parameter.empty}
    want.update(base_sd)
    want["bf16_autocast"] = want.pop("bf16", True)
    return all(config[k] == v for k, v in want.items() if k in config)


def _base_sd(run_dir: Path, sd_dir: Path, base_sd: dict, device: str, time_limit_minutes: float | None,
             done: dict | None = None) -> str | None:
    """Stage 1's base: world:sd when the shipped world:sd is the recipe's base, else ``<run_dir>/sd-base``,
    trained here first unless stage 1 is already ``done`` (then the base its record names); None when
    the time limit stopped that training."""
    from ip2p.world.sd_recipe import train_sd

    if base_sd_matches(sd_dir, base_sd):
        return "world:sd"
    out = run_dir / "sd-base"
    if base_sd_matches(out, base_sd):
        return str(out)
    if done is not None:
        return done.get("config", {}).get("base", "world:sd")
    for part in ("vae", "tokenizer"):
        if not (out / part).exists():
            shutil.copytree(Path(sd_dir) / part, out / part)
    print(f"world:sd in {sd_dir} is not stage 1's base ({base_sd}): training that base into {out}")
    if train_sd(out, run_dir=run_dir / "sd-base-run", device=device, time_limit_minutes=time_limit_minutes,
                **base_sd) is None:
        return None
    return str(out)


def recipe_command(cfg: TrainConfig) -> str:
    """The equivalent ``ip2p train`` command."""
    opts = [f"--base {cfg.base}", f"--data {cfg.data}"]
    opts += [f"--data-option {k}={v}" for k, v in cfg.data_options.items()]
    opts += [f"--out {cfg.out}", f"--resolution {cfg.resolution}", f"--steps {cfg.max_steps}",
             f"--batch-size {cfg.batch_size}", f"--grad-accum {cfg.grad_accum}", f"--lr {cfg.lr}",
             f"--lr-warmup-steps {cfg.lr_warmup_steps}", f"--lr-schedule {cfg.lr_schedule}",
             f"--timestep-sampling {cfg.timestep_sampling}", f"--mixed-precision {cfg.mixed_precision}",
             "--flip" if cfg.flip else "--no-flip", f"--seed {cfg.seed}", "--ema" if cfg.ema else "--no-ema",
             f"--ema-max-decay {cfg.ema_max_decay}", f"--checkpoint-every {cfg.checkpoint_every}",
             f"--checkpoints-keep {cfg.checkpoints_keep}", f"--validate-every {cfg.validate_every}",
             f"--val-examples {cfg.val_examples}", "--no-verify-images"] + (["--cpu"] if cfg.cpu else [])
    if cfg.stop_at_step is not None:
        opts.append(f"--stop-at-step {cfg.stop_at_step}")
    return "ip2p train " + " ".join(opts)


@torch.no_grad()
def evaluate(folder: str | Path, n: int = 200, image_guidance: float = 1.5, text_guidance: float = 7.5,
             steps: int = 50, seed: int = 0, batch: int = 25):
    """Card figures of the editor in ``folder`` and of the identity editor on ``n`` test items.

    Returns (results dict, edited images, inputs, targets)."""
    import ip2p
    from ip2p.data.registry import open_dataset
    from ip2p.metrics.pixel import l1, psnr
    from ip2p.protocol import EditRequest

    items = list(open_dataset("world:test", n=n))
    inputs = torch.stack([e.load_input() for e in items])
    targets = torch.stack([e.load_target() for e in items])
    editor = ip2p.load_editor(str(folder), resize=None)
    outs = []
    t0 = time.time()
    for s in range(0, n, batch):
        reqs = [EditRequest(image=inputs[i], instruction=items[i].instruction, input_caption=items[i].input_caption,
                            output_caption=items[i].output_caption, seed=seed + i, item_id=items[i].item_id,
                            knobs={"image_guidance_scale": image_guidance, "guidance_scale": text_guidance,
                                   "num_inference_steps": steps})
                for i in range(s, min(n, s + batch))]
        outs.extend(editor.run(reqs))
    edit_s = time.time() - t0
    edited = torch.stack(outs).float().clamp(0, 1)
    results = {"n": n, "split": "test", "image_guidance_scale": image_guidance, "text_guidance_scale": text_guidance,
               "num_inference_steps": steps, "seed": seed, "editing_wall_s": round(edit_s, 1), "editors": {}}
    cats = sorted({e.category for e in items})
    for name, out in (("world:ip2p", edited), ("identity", inputs)):
        per = l1(targets, out)
        results["editors"][name] = {
            "l1_target": float(per.mean()), "psnr_target": float(psnr(targets, out).clamp(max=100).mean()),
            "l1_target_by_category": {c: float(per[[i for i, e in enumerate(items) if e.category == c]].mean()) for c in cats}}
    notes = []
    try:
        from ip2p.metrics import ClipSimilarity

        clip = ClipSimilarity("world:clip", device="cpu")
        caps0 = [e.input_caption for e in items]
        caps1 = [e.output_caption for e in items]
        for name, out in (("world:ip2p", edited), ("identity", inputs)):
            sims = clip(inputs, out, caps0, caps1)
            results["editors"][name]["clip_direction"] = float(sims["sim_direction"].mean())
            results["editors"][name]["clip_image"] = float(sims["sim_image"].mean())
        ref = clip(inputs, targets, caps0, caps1)  # what the exact targets score
        results["editors"]["exact target"] = {"clip_direction": float(ref["sim_direction"].mean()),
                                              "clip_image": float(ref["sim_image"].mean()), "l1_target": 0.0}
        results["editors"]["exact target"]["psnr_target"] = None
    except Exception as e:  # noqa: BLE001 - the card says what could not be measured
        notes.append(f"CLIP similarities not measured: {type(e).__name__}: {e}")
    try:
        from ip2p.metrics import LPIPS

        lp = LPIPS("alex", device="cpu")
        for name, out in (("world:ip2p", edited), ("identity", inputs)):
            results["editors"][name]["lpips_target"] = float(lp(targets, out).mean())
    except Exception as e:  # noqa: BLE001
        notes.append(f"LPIPS not measured: {type(e).__name__}: {str(e).splitlines()[0]}")
    results["notes"] = notes
    return results, edited, inputs, targets


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _category_lines(results: dict) -> str:
    a = results["editors"]["world:ip2p"]["l1_target_by_category"]
    b = results["editors"]["identity"]["l1_target_by_category"]
    return "\n".join(f"- {c}: {a[c]:.4f} / {b[c]:.4f}" for c in a)


def _base_note(base: str, i: int) -> str:
    """What a stage's base is, for the card."""
    if i > 1:
        return " (the previous stage's exported EMA weights)"
    if base == "world:sd" or Path(base).name == "sd-base":
        return f" (world:sd as `ip2p world train-sd --steps {BASE_SD['steps']}` makes it)"
    return ""


def _stage_block(run: dict, i: int, n: int) -> str:
    """The card's description of one training stage (a run of ``ip2p train``)."""
    cfg = run["config"]
    sched, loss = lr_schedule_text(cfg), loss_text(cfg)
    title = f"\n### Stage {i} of {n}\n" if n > 1 else ""
    return f"""{title}
```
{run.get('command', '')}
```
(`{run.get('recipe_command', 'ip2p world train-ip2p')}` runs it.)

- Base: `{cfg['base']}`{_base_note(cfg['base'], i)}.
- Steps: {run.get('final_step')} optimiser steps, batch {cfg['batch_size']} x accumulation {cfg['grad_accum']},
  AdamW lr {cfg['lr']} ({sched}), weight decay {cfg['weight_decay']},
  grad-norm clip {cfg['max_grad_norm']}, conditioning dropout {cfg['cond_dropout']}, resolution {cfg['resolution']},
  timesteps {cfg.get('timestep_sampling', 'uniform')}, loss {loss},
  flip {cfg['flip']}, precision {cfg['mixed_precision']}, seed {cfg['seed']}.
- Data: `{cfg['data']}` with {cfg['data_options']} ({run.get('dataset')}).
- Weights: the EMA weights (decay min({cfg['ema_max_decay']}, (1+n)/(10+n)), {run.get('ema_updates')} updates), as the paper's `extract_ema`.
- Hardware: {run.get('hardware')}; wall time {run.get('wall_time_s')} s (training run, including data set-up,
  validation grids and export). Frozen VAE / text encoder hashes: {run.get('frozen_weights_hashes')}.
"""


def model_card(run: dict, results: dict) -> str:
    rows = []
    for name in ("world:ip2p", "identity", "exact target"):
        r = results["editors"].get(name)
        if r is None:
            continue
        rows.append(f"| {name} | {_fmt(r.get('clip_direction'))} | {_fmt(r.get('clip_image'))} | "
                    f"{_fmt(r.get('l1_target'))} | {_fmt(r.get('lpips_target'))} | {_fmt(r.get('psnr_target'))} |")
    notes = "".join(f"\n- {n}" for n in results.get("notes", []))
    ours, ident = results["editors"]["world:ip2p"]["l1_target"], results["editors"]["identity"]["l1_target"]
    a = results["editors"]["world:ip2p"]["l1_target_by_category"]
    b = results["editors"]["identity"]["l1_target_by_category"]
    wins = ", ".join(f"{c} {a[c]:.3f} vs {b[c]:.3f}" for c in a if a[c] < b[c]) or "none"
    losses = ", ".join(f"{c} {a[c]:.3f} vs {b[c]:.3f}" for c in a if a[c] >= b[c])
    if ours < ident:
        verdict = (f"**world:ip2p beats the identity editor on L1 against the targets ({ours:.4f} < {ident:.4f}).** "
                   + (f"Not in every category: it loses on {losses} (`validation.png`: input | edited | target)."
                      if losses else "It does so in every category."))
    else:
        verdict = (f"**world:ip2p does NOT beat the identity editor on L1 against the targets ({ours:.4f} vs "
                   f"{ident:.4f}).** It beats identity on {wins}; it loses on {losses} (`validation.png`: "
                   f"input | edited | target).")
    stages = run.get("previous_stages", []) + [run]
    recipe = "".join(_stage_block(r, i + 1, len(stages)) for i, r in enumerate(stages))
    total_wall = round(sum(r.get("wall_time_s") or 0 for r in stages), 1)
    vae_line = ("- VAE: " + run["vae_note"] + "\n") if run.get("vae_note") else ""
    intro = f"""A diffusers `StableDiffusionInstructPix2PixPipeline` folder (64x64 images, 16x16x4 latents),
trained by this project's trainer (`ip2p train`) on the world's training edits, from the world's
text-to-image model as its recipe makes it in {BASE_SD['steps']:,} steps (`ip2p world train-sd --steps {BASE_SD['steps']}`,
stage 1's base). Load with `ip2p.load_editor("world:ip2p")` or
`StableDiffusionInstructPix2PixPipeline.from_pretrained(<this folder>)`."""
    recipe_text = f"""{recipe}
{vae_line}- Total: {sum(r.get('final_step') or 0 for r in stages)} optimiser steps, {total_wall} s of wall time.
- Versions: {json.dumps(run.get('versions', {}))}."""
    evaluation = f"""{results['n']} items of `world:test`, sI {results['image_guidance_scale']}, sT {results['text_guidance_scale']},
{results['num_inference_steps']} Euler-ancestral steps, seed {results['seed']} + item index, through
`ip2p.load_editor(..., resize=None)`. CLIP: `ip2p.metrics.ClipSimilarity("world:clip")` (paper preprocessing;
directional = cos(I1 - I0, T1 - T0) with the input/output captions). L1 and LPIPS against the exact targets
(lower is better). "identity" returns its input unchanged; "exact target" scores the true edits.

{verdict}

| editor | CLIP directional | CLIP image | L1 vs target | LPIPS vs target | PSNR vs target (dB) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
{notes}

L1 vs target per category (world:ip2p / identity):
{_category_lines(results)}

Measured by `ip2p world evaluate-ip2p` ({results.get('editing_wall_s')} s of editing on CPU);
raw figures in `evaluation.json`."""
    sections = [("Recipe", recipe_text), ("Evaluation (world test split)", evaluation)]
    if results.get("issue21"):
        sections.append(("Targets (issue 21)", _targets_section(results["issue21"])))
    return render_card("world:ip2p -- the small world's InstructPix2Pix", intro, sections)


def _targets_section(r: dict) -> str:
    """The issue-21 protocol's figures: edit success and paired L1 against identity, per category."""
    p = r["protocol"]
    ed, ident, orc = (r["editors"][k] for k in ("editor", "identity", "oracle"))
    lines = [f"{p['n']} test items, {p['steps']} steps, sI {p['image_guidance_scale']}, sT {p['guidance_scale']}, "
             f"the paper's sampler, resize none (`ip2p.world.evaluate.evaluate_edits`). Edit success: "
             f"`ip2p.metrics.success` (1 = inside the true mask nearer the target than the input, outside nearly "
             f"unchanged). Paired difference: L1(world:ip2p) - L1(identity) per item, 95% bootstrap interval.",
             "", "| category | edit success (ours / identity / oracle) | L1 ours | L1 identity | paired diff [95% CI] |",
             "|---|---|---|---|---|"]
    for c, d in r["paired_l1_minus_identity"].items():
        if c == "all":
            continue
        lines.append(f"| {c} | {ed['edit_success_by_category'][c]:.2f} / {ident['edit_success_by_category'][c]:.2f} / "
                     f"{orc['edit_success_by_category'][c]:.2f} | {ed['l1_target_by_category'][c]:.4f} | "
                     f"{ident['l1_target_by_category'][c]:.4f} | {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] |")
    d = r["paired_l1_minus_identity"]["all"]
    lines.append(f"| **all** | {ed['edit_success']:.2f} / {ident['edit_success']:.2f} / {orc['edit_success']:.2f} | "
                 f"{ed['l1_target']:.4f} | {ident['l1_target']:.4f} | {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] |")
    counts = r.get("items_by_input", {})
    if "edit_success_by_input" in ed:  # evaluations from session 15 on
        by = {**ed["edit_success_by_phrasing"], **ed["edit_success_by_input"]}
        lines += ["", "world:ip2p's edit success by the instruction's phrasing and by the input scene's time of day "
                  f"(night scenes are {NIGHT_P:.0%} of the world's inputs): "
                  + ", ".join(f"{k} {v:.2f}" + (f" ({counts[k]} of {p['n']} items)" if k in counts else "") for k, v in by.items()) + "."]
    lines += ["", f"VAE round trip of the test targets: L1 {r['vae_roundtrip']['l1_mean']}.", "",
              "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in sorted(r["targets"].items())) + "."]
    return "\n".join(lines)


def _copy_pipeline(src: Path, dst: Path) -> None:
    """The pipeline parts of ``src`` (``SHIPPED``: no checkpoints or logs) into ``dst``."""
    for name in SHIPPED:
        if (Path(src) / name).is_dir():
            shutil.copytree(Path(src) / name, dst / name)
        elif (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dst / name)


def ship_run(run_dir: Path, ship_dir: Path = SHIP_DIR) -> Path:
    """Copy the pipeline parts of a run into the shipped folder (no checkpoints or logs)."""
    from ip2p.util.io import replacing_dir

    with replacing_dir(ship_dir) as tmp:
        _copy_pipeline(run_dir, tmp)
        grids = sorted((run_dir / "validation").glob("step-*.png"))
        if grids:
            shutil.copy2(grids[-1], tmp / "validation.png")
    return ship_dir


def write_card(ship_dir: Path = SHIP_DIR, n: int = 192, steps: int = 20) -> dict:
    """Measure the card's figures (the CLIP/LPIPS table at 50 steps on 200 items, and the issue-21
    protocol at ``steps`` on ``n`` items), store them in ``evaluation.json`` and write the card."""
    from ip2p.world.evaluate import evaluate_edits

    run = json.loads((ship_dir / "training_config.json").read_text())
    results, edited, inputs, targets = evaluate(ship_dir, n=200, steps=50)
    results["issue21"], _ = evaluate_edits(ship_dir, n=n, steps=steps)
    atomic_write_json(ship_dir / "evaluation.json", results)
    write_world_card(ship_dir, model_card(run, results))
    return results


def _target(recipe: dict) -> int:
    """The step a stage ends at (``stop_at_step`` reproduces a stage that was stopped early)."""
    return recipe.get("stop_at_step") or recipe["max_steps"]


STAGE_FIELDS = ("max_steps", "lr", "data_options")  # what a stage of STAGES may set, and a run of it must have run


def _other_settings(record: dict, want: dict) -> list[str]:
    """Each of ``STAGE_FIELDS`` in which a run's record differs from ``want``, as a readable line."""
    ran = record.get("config", {})
    return [f"{k}: it ran {ran.get(k)!r}, the recipe asks {want[k]!r}" for k in STAGE_FIELDS if ran.get(k) != want[k]]


def _stage_done(run_dir: Path, recipe: dict) -> dict | None:
    """The stage's training record when ``run_dir`` holds its finished export, else None. A folder
    holding a run (finished or not) of other settings is an error naming the folder and each field:
    neither skipped as done nor trained over (which would lose that run)."""
    from ip2p.errors import SpecError

    record = Path(run_dir) / "training_config.json"
    done = json.loads(record.read_text()) if record.exists() else None
    if done is not None and (diff := _other_settings(done, recipe)):
        raise SpecError(f"{run_dir} holds a run of other settings than this stage's ({'; '.join(diff)}): "
                        "move that folder away to train the stage there, or give the stage its settings back")
    target = _target(recipe)
    if done is None or done.get("final_step") != target or not (Path(run_dir) / "unet").is_dir():
        return None
    return done


def shipped_chain(ship_dir: Path, stages: tuple[dict, ...]) -> list[dict]:
    """The training records of stages 1..n when the shipped folder is the export of stage n of
    ``stages`` (each record a run of its stage, ``_ran_stage``), else []. A longer chain continues from
    the shipped weights on a machine that has none of the earlier stages' folders."""
    record = Path(ship_dir) / "training_config.json"
    if not record.exists():
        return []
    run = json.loads(record.read_text())
    chain = [*run.get("previous_stages", []), {k: v for k, v in run.items() if k not in ("previous_stages", "recipe_command")}]
    if len(chain) > len(stages) or not all(_ran_stage(r, st) for r, st in zip(chain, stages)):
        return []
    return chain


def _ran_stage(record: dict, stage: dict) -> bool:
    """Whether a training record is a run of ``stage`` (an entry of ``STAGES``): it ended at the stage's
    step and ran RECIPE's settings with the stage's overrides of steps, learning rate and data."""
    return record.get("final_step") == _target(stage) and not _other_settings(record, dict(RECIPE, **stage))


def _seed_from_shipped(stage_dir: Path, ship_dir: Path, record: dict) -> None:
    """``stage_dir`` becomes the shipped export (the same weights, bit for bit) with its stage's record."""
    from ip2p.util.io import replacing_dir

    with replacing_dir(stage_dir) as tmp:
        _copy_pipeline(ship_dir, tmp)
        atomic_write_json(tmp / "training_config.json", record)


def _train_stage(run_dir: Path, recipe: dict, time_limit_minutes: float | None) -> dict | None:
    """One run of the trainer (resuming when ``run_dir`` has checkpoints); its record with the
    command that reproduces it, or None when the time limit stopped it first."""
    from ip2p.train.trainer import train

    run_dir = Path(run_dir)
    target = _target(recipe)
    record, wall_file = run_dir / "training_config.json", run_dir / "wall.json"
    done = _stage_done(run_dir, recipe)
    wall = json.loads(wall_file.read_text())["wall_time_s"] if wall_file.exists() else None
    if done is None:
        resume = "latest" if any((run_dir / "checkpoints").glob("*")) else None
        t0 = time.time()
        train(TrainConfig(out=str(run_dir), resume=resume, time_limit_minutes=time_limit_minutes, **recipe))
        wall = round((wall or 0.0) + time.time() - t0, 1)
        atomic_write_json(wall_file, {"wall_time_s": wall})
        done = json.loads(record.read_text())
        if done["final_step"] < target:
            print(f"{run_dir}: stopped at step {done['final_step']} of {target}; rerun the same command to continue")
            return None
    cfg = TrainConfig(out=str(run_dir), **recipe)
    done.update({"command": recipe_command(cfg), "wall_time_s": done.get("wall_time_s", wall)})
    done["config"]["base"] = cfg.base  # where this recipe keeps the base now (the same weights)
    for key in ("previous_stages", "recipe_command"):  # a stage's own record (train_ip2p sets both on the last)
        done.pop(key, None)
    atomic_write_json(record, done)
    return done


def train_ip2p(run_dir: Path = RUN_DIR, steps: int | None = None, time_limit_minutes: float | None = None,
               ship_dir: Path = SHIP_DIR, eval_n: int = 192, eval_steps: int = 20, base: str | None = None,
               ship: bool = True, stages: tuple[dict, ...] = STAGES, device: str = "cpu",
               sd_dir: Path = SD_DIR, base_sd: dict = BASE_SD) -> dict | None:
    """Train every stage (each resuming, finished ones skipped), then ship and evaluate the last.
    Stages up to the one the shipped weights are the export of (``shipped_chain``) are not retrained
    when their folders are missing: the last of them is seeded from the shipped folder.
    ``steps`` or ``base``: one stage of that length, from that base, into ``run_dir`` itself.
    ``device`` "cuda": the trainer on the GPU (the recipe's ``cpu=True`` dropped), same recipe otherwise.
    Stage 1 starts from world:sd when ``sd_dir`` holds the recipe's base (``BASE_SD``), else from that
    base trained first into ``<run_dir>/sd-base`` (``_base_sd``).

    Returns the evaluation (the last stage's record with ``ship=False``), or None when the time limit
    stopped a stage first (rerun to continue)."""
    device = check_device(device)
    run_dir = Path(run_dir)
    t0 = time.time()
    single = steps is not None or base is not None
    recipe = dict(RECIPE, cpu=device == "cpu")
    plan = ([(run_dir, dict(recipe, max_steps=steps or recipe["max_steps"], base=base or recipe["base"]))] if single else
            [(run_dir / f"stage-{k}", dict(recipe, **stage, base=recipe["base"] if k == 1 else str(run_dir / f"stage-{k - 1}")))
             for k, stage in enumerate(stages, 1)])
    # Stages the shipped weights already stand on need no folder: the chain continues from them.
    shipped = [] if single else shipped_chain(ship_dir, stages)
    records = []
    for k, (stage_dir, recipe) in enumerate(plan, 1):
        if k <= len(shipped) and _stage_done(stage_dir, recipe) is None:
            if k < len(shipped):  # a later shipped stage's export stands on this one
                records.append(shipped[k - 1])
                continue
            _seed_from_shipped(stage_dir, ship_dir, shipped[-1])
        left = None if time_limit_minutes is None else max(0.0, time_limit_minutes - (time.time() - t0) / 60)
        if not single and k == 1 and recipe["base"] == "world:sd":  # world:sd, or the recipe's base trained first
            recipe["base"] = _base_sd(run_dir, Path(sd_dir), base_sd, device, left, done=_stage_done(stage_dir, recipe))
            if recipe["base"] is None:
                return None
            left = None if time_limit_minutes is None else max(0.0, time_limit_minutes - (time.time() - t0) / 60)
        rec = _train_stage(stage_dir, recipe, left)
        if rec is None:
            return None
        records.append(rec)
    last_dir, run = plan[-1][0], records[-1]
    run["previous_stages"] = records[:-1]
    run["recipe_command"] = ("ip2p world train-ip2p" + (f" --steps {steps}" if steps else "")
                             + (f" --base {base}" if base else "") + (f" --device {device}" if device != "cpu" else ""))
    atomic_write_json(last_dir / "training_config.json", run)
    if not ship:
        return run
    ship_run(last_dir, ship_dir)
    return write_card(ship_dir, n=eval_n, steps=eval_steps)
