#!/usr/bin/env bash
# The prepared GPU run that trains the world's models (issue 21; world-training/gpu_train.py says what
# it does and writes): --model sd (world:sd, longer) or --model ip2p (one more world:ip2p stage).
# The second use of a lent GPU, after bench/perf/gpu_run.sh's figures.
#
# Before the device call, here, in the repository root (wheels the GPU image lacks, into .whl/):
#     bash /work/shared/gpu/fetch-wheels.sh
# The device call: command "bash world-training/gpu_train.sh --model ip2p --minutes 4", carry [".whl"], timeout_s 600
# (--minutes: training time after the ~1-minute probe and set-up; leave 2 minutes for evaluation).
# Afterwards: the files come back (<model>-probe.json, -train.json, -eval.json, a .tar of the weights, gpu_train.log).
# CPU dry run of the same code path: PYTHON=.venv/bin/python OUT=/tmp/smoke bash world-training/gpu_train.sh --device cpu --smoke
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ip2p-site .whl/*.whl \
    || { echo "gpu_train.sh: installing the wheels in .whl/ failed" >&2; exit 3; }
  export PYTHONPATH="/tmp/ip2p-site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=PASSIVE
OUT=${OUT:-results/world-gpu}
mkdir -p "$OUT"
"$PY" world-training/gpu_train.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_train.log"
exit "${PIPESTATUS[0]}"
