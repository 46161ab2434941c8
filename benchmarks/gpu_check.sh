#!/usr/bin/env bash
# One go on a machine lent a CUDA GPU, in under 5 minutes: the `gpu`-marked tests, the CUDA
# kernels against their references on real hardware, and every benchmark with --device gpu.
#
#   bash benchmarks/gpu_check.sh [--dry-run]        # from the repository root
#
# Writes under $OUT (default ./gpu-out): env.txt, install.log, pytest-*.txt / .xml, bench-*.jsonl
# (one JSON line per measurement) with bench-*.err, and summary.txt. Every step is bounded by
# `timeout` and by the whole run's budget (GPU_CHECK_BUDGET seconds, default 280); a failing
# step is recorded and the next one runs. The exit code is the number of failed steps.
# The device machine may lack packages: missing ones are installed with pip first, bounded too
# (GPU_CHECK_INSTALL=0 skips that). PYTHON picks the interpreter (default python3).
set -u
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-./gpu-out}"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-280}"
START=$SECONDS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the tree as it is, installed or not
export MINIVAE_DATA="${MINIVAE_DATA:-../shared/data}" MINIVAE_OFFLINE=1 MINIVAE_PROGRESS_EVERY=10
unset NUMBA_ENABLE_CUDASIM  # real hardware, not the simulator
if [ "$DRY" = 0 ]; then
  mkdir -p "$OUT" || { echo "cannot create $OUT"; exit 1; }
  : > "$OUT/summary.txt"
fi
FAILED=0

# step NAME LIMIT_S STDOUT_FILE CMD...: run CMD under `timeout`, within what is left of the budget
step() {
  local name=$1 limit=$2 out=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$DRY" = 1 ]; then
    echo "[dry-run] $name (<= $limit s): $* > $out"
    return 0
  fi
  if [ "$limit" -lt 10 ]; then
    echo "SKIP  $name: budget spent" | tee -a "$OUT/summary.txt"
    FAILED=$((FAILED + 1))
    return 0
  fi
  local t0=$SECONDS rc
  echo "== $name (limit $limit s)"
  timeout -k 5 "$limit" "$@" > "$out" 2> "${out%.*}.err"
  rc=$?
  local verdict=ok
  [ "$rc" -ne 0 ] && verdict=FAIL && FAILED=$((FAILED + 1))
  [ "$rc" -eq 124 ] && verdict="FAIL (timed out)"
  printf '%-17s %-20s rc=%-3s %4ss  %s\n' "$verdict" "$name" "$rc" "$((SECONDS - t0))" \
    "$(tail -n 1 "$out" | cut -c1-120)" | tee -a "$OUT/summary.txt"
  [ "$rc" -ne 0 ] && tail -n 5 "${out%.*}.err" | sed 's/^/      /'
  return 0
}

# --- environment and missing packages ----------------------------------------------------------
step env 20 "$OUT/env.txt" bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $PY -V"
missing=$("$PY" - <<'EOF' 2>/dev/null
import importlib.util as u
need = {"numpy": "numpy", "numba": "numba", "h5py": "h5py", "click": "click", "tqdm": "tqdm",
        "pytest": "pytest", "cupy": "cupy-cuda12x", "numba_cuda": "numba-cuda[cu12]"}
print(" ".join(pkg for mod, pkg in need.items() if u.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ] && [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
  # shellcheck disable=SC2086  # one word per package
  step install 120 "$OUT/install.log" "$PY" -m pip install --disable-pip-version-check $missing
else
  [ "$DRY" = 0 ] && echo "not installed (GPU_CHECK_INSTALL=0 or none missing): $missing" > "$OUT/install.log"
fi
step versions 30 "$OUT/versions.txt" "$PY" -c "
import numpy, numba, cupy
from numba import cuda
print('numpy', numpy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__)
print('cupy devices', cupy.cuda.runtime.getDeviceCount(), 'numba.cuda available', cuda.is_available())"

# --- tests ------------------------------------------------------------------------------------
step pytest-gpu 120 "$OUT/pytest-gpu.txt" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
  --junitxml="$OUT/pytest-gpu.xml" tests
step pytest-cuda-kernels 90 "$OUT/pytest-cuda-kernels.txt" "$PY" -m pytest -m cuda -q -rs \
  -p no:cacheprovider --junitxml="$OUT/pytest-cuda-kernels.xml" tests

# --- benchmarks: small sizes, one JSON line per measurement ----------------------------------
step bench-kernels 40 "$OUT/bench-kernels.jsonl" "$PY" benchmarks/kernels.py --device gpu --repeats 3 --calls 10
step bench-ais 40 "$OUT/bench-ais.jsonl" "$PY" benchmarks/ais.py --device gpu --n 10,100 --repeats 3 \
  --only leapfrog,forward
step bench-localopt 60 "$OUT/bench-localopt.jsonl" "$PY" benchmarks/localopt.py --device gpu --repeats 3 --steps 10 \
  --families ffg,flow,fullcov
step bench-train-epoch 40 "$OUT/bench-train-epoch.jsonl" "$PY" benchmarks/train_epoch.py --device gpu --batches 50
step bench-train-epoch-flow 40 "$OUT/bench-train-epoch-flow.jsonl" "$PY" benchmarks/train_epoch.py --device gpu \
  --q flow --batches 50
step bench-train-epoch-fullcov 40 "$OUT/bench-train-epoch-fullcov.jsonl" "$PY" benchmarks/train_epoch.py \
  --device gpu --q fullcov --batches 50
step bench-conv-step 30 "$OUT/bench-conv-step.jsonl" "$PY" benchmarks/conv_step.py --device gpu --repeats 3

# --- summary ------------------------------------------------------------------------------------
[ "$DRY" = 1 ] && exit 0
for f in "$OUT"/pytest-*.txt; do
  [ -f "$f" ] && ! grep -qE '[0-9]+ passed' "$f" && FAILED=$((FAILED + 1))
done
{
  echo "---- $FAILED failed step(s), $((SECONDS - START)) s in all (budget $BUDGET s)"
  for f in "$OUT"/pytest-*.txt; do
    [ -f "$f" ] || continue
    echo "$(basename "$f"): $(grep -E '(passed|failed|skipped|error|deselected)' "$f" | tail -n 1)"
    grep -qE '[0-9]+ passed' "$f" || echo "  FAIL: no test passed there (all skipped: is the GPU visible?)"
  done
  for f in "$OUT"/bench-*.jsonl; do
    [ -f "$f" ] && echo "$(basename "$f"): $(grep -c '^{' "$f") JSON line(s)"
  done
} | tee -a "$OUT/summary.txt"
exit "$FAILED"
