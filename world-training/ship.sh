#!/usr/bin/env bash
# Ship the second-generation world (issue 21) once world:ip2p's run has reached its last step, then
# regenerate everything that stands on the world's models. Each step resumes if rerun.
#   bash world-training/ship.sh [RUN_DIR] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/world-ip2p-gen2}
STEPS=${2:-9000}
BIN=.venv/bin
export OMP_WAIT_POLICY=PASSIVE
step() { echo; echo "== $(date +%H:%M:%S) $*"; }

step "1. world:sd (second generation) into the package"
if ! cmp -s world-training/sd/vae/diffusion_pytorch_model.safetensors ip2p/world/weights/sd/vae/diffusion_pytorch_model.safetensors; then
  rm -rf ip2p/world/weights/sd.new && cp -r world-training/sd ip2p/world/weights/sd.new
  cp ip2p/world/weights/sd/README.md ip2p/world/weights/sd.new/README.md 2>/dev/null || true
  rm -rf ip2p/world/weights/sd && mv ip2p/world/weights/sd.new ip2p/world/weights/sd
fi
step "2. world:ip2p: ship the finished run, evaluate (issue-21 protocol), write its card"
# (the run was made by `ip2p world train-ip2p --base world-training/sd --run-dir $RUN --steps $STEPS --no-ship`;
#  rerunning it without --no-ship does the same as these two calls, after reloading the run)
$BIN/python -c "
import json, sys; from pathlib import Path
from ip2p.world.ip2p_recipe import ship_run, write_card
run = Path('$RUN'); cfg = json.loads((run / 'training_config.json').read_text())
assert cfg['final_step'] == $STEPS, f'the run is at step {cfg[\"final_step\"]}, not $STEPS'
ship_run(run); write_card()"
step "3. the other cards"
$BIN/ip2p world cards
step "4. smoke golden of the CI gate"
rm -rf runs/golden-smoke
$BIN/ip2p regress --suite smoke --golden results/golden/world-ip2p-smoke.json --update-golden --out runs/golden-smoke --no-progress
step "5. demo"
$BIN/ip2p demo --out reports/demo
step "6. baselines (192 items; resumes from the demo's run)"
rm -rf results/runs/baselines && cp -r results/runs/demo-world results/runs/baselines
$BIN/ip2p sweep bench/suites/baselines.yaml --out results/runs/baselines --no-progress
$BIN/ip2p aggregate results/runs/baselines --out reports/baselines
$BIN/ip2p plot results/runs/baselines --out reports/baselines/tradeoff
$BIN/ip2p report results/runs/baselines --out reports/baselines/report.html
step "7. validity on the baselines' edits (same methods, settings and metric groups)"
$BIN/ip2p validity --analyse-only --items 192 --run results/runs/baselines --out reports/validity
step "8. world figures"
$BIN/ip2p world report
step "9. gate sensitivity"
$BIN/python scripts/regress_sensitivity.py --suite smoke --golden results/golden/world-ip2p-smoke.json --noise 0.002,0.005,0.01,0.02 --faults | tee reports/gate-sensitivity.txt
step done
