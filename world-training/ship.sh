#!/usr/bin/env bash
# Ship the second-generation world (issue 21) once world:ip2p's run has reached its last step, then
# regenerate everything that stands on the world's models. Each stage resumes or redoes if rerun.
#   bash world-training/ship.sh                         # every stage, in order
#   bash world-training/ship.sh golden demo             # only these stages
# Stages: sd ip2p golden cards demo baselines validity figures ablation sensitivity
# RUN (default runs/world-ip2p) holds world:ip2p's stages, stage-1 ... stage-<n> (ip2p_recipe.STAGES).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/world-ip2p}
BIN=.venv/bin
export OMP_WAIT_POLICY=PASSIVE
STAGES=${*:-sd ip2p golden cards demo baselines validity figures ablation sensitivity}
say() { echo; echo "== $(date +%H:%M:%S) $*"; }

for stage in $STAGES; do
  case $stage in
  sd) say "world:sd (second generation) into the package"
    if [ ! -d world-training/sd ]; then echo "no world-training/sd: the shipped world:sd stays (ip2p world train-sd --out <folder> makes a new one)"
    elif ! cmp -s world-training/sd/vae/diffusion_pytorch_model.safetensors \
         ip2p/world/weights/sd/vae/diffusion_pytorch_model.safetensors; then
      rm -rf ip2p/world/weights/sd.new && cp -r world-training/sd ip2p/world/weights/sd.new
      rm -rf ip2p/world/weights/sd && mv ip2p/world/weights/sd.new ip2p/world/weights/sd
    fi ;;
  ip2p) say "world:ip2p: its stages (trained already: nothing left to train), shipped, evaluated, its card"
    # `ip2p world train-ip2p` trains the recipe's STAGES into $RUN/stage-<k> (each resumable; finished
    # stages are skipped), then ships the last stage's export and writes the card with every stage.
    $BIN/ip2p world train-ip2p --run-dir "$RUN" ;;
  golden) say "smoke golden of the CI gate"
    rm -rf runs/golden-smoke
    $BIN/ip2p regress --suite smoke --golden results/golden/world-ip2p-smoke.json --update-golden \
      --out runs/golden-smoke --no-progress ;;
  cards) say "the other cards"; $BIN/ip2p world cards ;;
  demo) say "demo (a fresh run folder: the old one holds edits of other weights)"; $BIN/ip2p demo --fresh --out reports/demo ;;
  baselines) say "baselines (192 items; resumes from the demo's run)"
    rm -rf results/runs/baselines && cp -r results/runs/demo-world results/runs/baselines
    $BIN/ip2p sweep bench/suites/baselines.yaml --out results/runs/baselines --no-progress
    $BIN/ip2p aggregate results/runs/baselines --out reports/baselines
    $BIN/ip2p plot results/runs/baselines --out reports/baselines/tradeoff
    $BIN/ip2p report results/runs/baselines --out reports/baselines/report.html ;;  # + edits.png
  validity) say "validity on the baselines' edits (the same methods, settings and metric groups)"
    h() { sha256sum "ip2p/world/weights/$1/unet/diffusion_pytorch_model.safetensors" | cut -c1-12; }
    $BIN/ip2p validity --analyse-only --items 192 --run results/runs/baselines --out reports/validity \
      --label "Run on the retrained (second-generation) world models: world:ip2p (UNet sha256 $(h ip2p)...), world:sd (UNet sha256 $(h sd)...), world:clip, world:clip-guide; 192 world test items x 13 settings (the baselines suite's edits, \`results/runs/baselines\`)." ;;
  figures) say "world figures"; $BIN/ip2p world report ;;
  ablation) say "data ablation (pairs from world:sd, variants trained from world:sd, about 2 h on 2 cores; a fresh run folder)"
    rm -rf results/runs/ablation-world
    $BIN/ip2p ablate bench/ablations/world.yaml --out results/runs/ablation-world --report reports/ablation ;;
  sensitivity) say "gate sensitivity"
    $BIN/python scripts/regress_sensitivity.py --suite smoke --golden results/golden/world-ip2p-smoke.json \
      --noise 0.002,0.005,0.01,0.02 --faults | tee reports/gate-sensitivity.txt ;;
  *) echo "unknown stage: $stage (stages: sd ip2p golden cards demo baselines validity figures ablation sensitivity)" >&2; exit 2 ;;
  esac
done
say done
