"""``ip2p ablate <spec.yaml>``: the paper's data ablations, end to end and resumable. The spec
(``bench.ablate.spec``), the stages (``bench.ablate.pipeline``), the tables (``bench.ablate.tables``)
and the command (``bench.ablate.cli``) are modules of their own.

A spec names a pool of generated pairs (``ip2p data pairs``), the CLIP filter (``ip2p data
filter``), the dataset variants (size; filter on or off; generated pairs or the small world's exact
pairs), a training recipe (``ip2p train`` options) and a harness spec (``ip2p sweep``) whose first
method is the template every variant's checkpoint is swept with. It writes, under ``--out``::

    pool/                 the generated pairs (official layout), their similarities, filter_table.md,
                          seeds_filtered.json (the kept pairs; seeds.json lists every pair)
    data/<variant>/       seeds.json of the variant's pairs (+ links to the pool's prompt folders)
    models/<variant>/     one InstructPix2Pix checkpoint per variant (a diffusers folder)
    sweep/                one sweep over every variant (one method label per variant)
    ablation.png / .pdf   the paper-style figure: one curve per variant, x = CLIP directional
                          similarity, y = CLIP image similarity (bench.plot)
    ablation_table.md / .csv   per model: its data and the mean similarities over its curve
    ablation_paired.md    the paper's questions as paired differences (filter off - on at each size;
                          each size - the next smaller one) with bootstrap intervals over test items
    timings.json, spec.yaml, sweep_spec.yaml

What is already built, trained or evaluated is not redone: the pool and the sweep resume by
themselves; a variant's data and checkpoint carry a marker with the hash of what made them, and a
killed training resumes from its newest checkpoint. A marker whose hash differs from the spec's is
an error (rename the variant or delete its folder), never a silent mix.

Spec (YAML)::

    name: world-ablation
    base: world:sd                   # what each variant is trained from (ip2p train --base): a
                                     # text-to-image model (4 image channels added) or an editor
    pairs: {model: world:sd, prompts: world:triplets, limit: 400, n_per_prompt: 8, steps: 10,
            seed: 0, batch_size: 32}
    filter: {clip: {model: world:clip, pretrained: null},
             thresholds: {min_image: 0.75, min_direction: 0.2, min_sim_0: 0.2, min_sim_1: 0.2, max_per_prompt: 4}}
    variants:                        # or grid: {source: [generated], size: [...], filter: [true, false]}
      - {name: gen-100-filtered, source: generated, size: 100, filter: true}
      - {name: world-100, source: world, size: 100}
    train: {steps: 200, batch_size: 16, resolution: 64, flip: false}   # TrainConfig fields
    sweep: ablation_sweep.yaml       # harness spec (relative to this file); methods[0] is the template
    include_base: false              # also sweep the base model (when it is an editor) as a curve
    references: {world-ip2p: world:ip2p}   # label -> model: other editors swept beside the variants
"""
from __future__ import annotations

from bench.ablate.pipeline import Timings, run_ablation, sweep_spec  # noqa: F401
from bench.ablate.spec import AblationSpec, VariantSpec, load_ablation_spec  # noqa: F401
from bench.ablate.tables import ablation_table, comparisons, paired_differences  # noqa: F401
