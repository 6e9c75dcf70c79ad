#!/usr/bin/env bash
# The prepared GPU run of issue 17 (bench/perf/gpu_run.py): profiler at batch 1 and 16, throughput
# against diffusers' pipeline, the issue's checks; JSON under $OUT as each stage ends (~5-8 min).
#
# Before the device call, here, in the repository root (downloads the wheels the GPU image lacks,
# for its Python 3.12, into the git-ignored .whl/):
#     bash /work/shared/gpu/fetch-wheels.sh
# The device call: command "IP2P_GIT_COMMIT=$(git rev-parse HEAD) bash bench/perf/gpu_run.sh" (with the
# commit written out: the copy on the device has no .git), carry [".whl"], timeout_s 600.
# Afterwards: copy the returned files (summary.json, profile_b1.json, profile_b16.json,
# throughput.json, trace_b1.json.gz, gpu_run.log) into results/perf/ and commit them; each JSON
# carries the command that made it.
# CPU dry run of the same code path (tiny model, 3 steps, no wheels needed):
#     PYTHON=.venv/bin/python OUT=/tmp/smoke bash bench/perf/gpu_run.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
smoke=0
for a in "$@"; do [ "$a" = "--smoke" ] && smoke=1; done
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ip2p-site .whl/*.whl \
    || { echo "gpu_run.sh: installing the wheels in .whl/ failed" >&2; exit 3; }
  export PYTHONPATH="/tmp/ip2p-site:$PWD"
elif [ "$smoke" = 1 ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_run.sh: no wheels in .whl/: run 'bash /work/shared/gpu/fetch-wheels.sh' here first and carry .whl" >&2
  exit 3
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-results/perf/gpu_run}
mkdir -p "$OUT"
"$PY" -m bench.perf.gpu_run --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_run.log"
exit "${PIPESTATUS[0]}"
