#!/usr/bin/env bash
# Everything a session with a lent GPU runs, in one call of the device tool, fitted to what
# comes back from it: at most 8 files of $OUT and the last 12,000 characters of output.
#
#   bash benchmarks/gpu_session.sh            on the GPU machine (OUT=... or ./gpu-results)
#   bash benchmarks/gpu_session.sh --dry-run  here or in CI: every step at tiny sizes, on sim or numpy,
#                                             or on cuda on the fake GPU (tests/fake_cupy.py)
#
# It writes exactly three files to $OUT: logs.tar.gz (every step's log and outputs),
# SUMMARY.txt (each step's status and time, then the table of figures) and figures.json (every
# figure of the run, machine-readable), and prints the compact table last. A first smoke step of
# a few seconds says whether anything else can work (CuPy compiles and launches a kernel;
# `from mpi4py import MPI` and its outcome; NCCL; versions; GPU name and clocks). Each step runs
# under its own time limit, and the whole under TOTAL_SECONDS: a step that would start with less
# than its limit left is skipped and said so; a failing step does not stop the others. The
# measurements come first, the test suite last: a lease that runs short loses tests, not figures.
#
# Adding a step is one line in the STEPS table below:
#     name | seconds | command on the GPU | command for --dry-run (sim/numpy, tiny sizes)
# Commands run from the repository root with bash; $STEP_DIR is a folder of the step's own
# (its files go into the tarball), and a step that writes $STEP_DIR/figures.json (a flat object
# of name -> number, or of name -> {"value": number, "unit": text}) has its figures in
# figures.json and the table. "-" as a dry-run command: the step has no dry run (say why in a
# comment). The sum of the seconds stays at most TOTAL_SECONDS, and that at most 420 s
# (tests/test_gpu_session.py): the lease is 15 minutes of device time in all, a machine start of
# 1-2 minutes included, and a session must have room to run this script twice. What a step
# measures that another step also measures is trimmed first (the digits and augmentation
# benchmarks were dropped for that; the cuda tests are the step's own files, not the suite).
#
# The GPU image lacks tensorboardX and has mpi4py without an MPI library. Wheels carried in .whl/
# (docs/BENCHMARKS.md, "Running on a lent GPU", says how to fetch them) are installed first;
# without the mpich wheel the steps that need MPI say so and are skipped.
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-gpu-results}
TOTAL_SECONDS=${TOTAL_SECONDS:-400}          # under 7 minutes, smoke step included
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 OUT_LOGS=$LOGS
START=$(date +%s)

STEPS=$(cat <<'EOF'
smoke            |  25 | $PY benchmarks/gpu_smoke.py                                   | $FAKE_GPU $PY benchmarks/gpu_smoke.py
ceilings         |  20 | $PY benchmarks/gpu_ceilings.py --json $STEP_DIR/figures.json   | $PY benchmarks/gpu_ceilings.py --dry-run --json $STEP_DIR/figures.json
conv2d           |  40 | $PY benchmarks/conv2d.py --device cuda --versions tiled,tensor_core --repeats 5 --budget 30 --json $STEP_DIR/figures.json | $PY benchmarks/conv2d.py --dry-run --json $STEP_DIR/figures.json
resnet18_step    |  30 | $PY benchmarks/resnet18_step.py --device cuda --batch 128 --steps 5 --json $STEP_DIR/figures.json | $FAKE_GPU $PY benchmarks/resnet18_step.py --device cuda --batch 1 --steps 1 --warmup 0 --repeats 1 --no-torch --json $STEP_DIR/figures.json
step_graph       |  75 | $PY benchmarks/step_graph.py --device cuda --batch 256 512 --precision bf16 fp32 --unfolded-statistics --steps 4 --warmup 2 --repeats 3 --json $STEP_DIR/figures.json | $PY benchmarks/step_graph.py --device sim --batch 2 --steps 1 --warmup 0 --repeats 1 --no-torch --launch-only --precision bf16 fp32 --unfolded-statistics --json $STEP_DIR/figures.json
train_synthetic  |  25 | $PY examples/train_cifar.py --dataset synthetic --synthetic-size 2560 --device cuda --precision bf16 --cuda-graph --epochs 2 --log-dir $STEP_DIR/run --no-progress | $PY examples/train_cifar.py --dataset synthetic --synthetic-size 64 --batch-size 16 --device numpy --precision bf16 --cuda-graph --epochs 1 --log-dir $STEP_DIR/run --no-progress
distributed      |  25 | needs_mpi && $PY benchmarks/distributed_gpu_check.py         | needs_mpi && $PY benchmarks/distributed_gpu_check.py --device sim --model small --batch 4
imagenet_pipeline|  70 | $PY examples/train_imagenet.py --synthetic 1280 --synthetic-dir /tmp/cupycnn-synthetic-imagenet --benchmark --benchmark-steps 6 --batch-size 128 --workers 14 --device cuda --no-progress --log-dir $STEP_DIR/run --json $STEP_DIR/figures.json | $PY examples/train_imagenet.py --synthetic 12 --synthetic-dir /tmp/cupycnn-synthetic-dry --benchmark --benchmark-steps 2 --batch-size 2 --image-size 32 --workers 2 --model resnet18 --device numpy --no-progress --log-dir $STEP_DIR/run --json $STEP_DIR/figures.json
gradcheck_cuda   |  25 | $PY -m cupycnn.gradcheck_suite --device cuda                 | $FAKE_GPU $PY -m cupycnn.gradcheck_suite --device cuda --layer dense
pytest_cuda      |  55 | $PY -m pytest -m cuda -q -n 4 -p no:cacheprovider -x tests/test_kernels_tensor_core.py tests/test_bf16.py tests/test_fused.py tests/test_plan_graph.py tests/test_trainer_graphed.py | $PY -m pytest -m cuda -q -p no:cacheprovider tests/test_bf16.py tests/test_fused.py tests/test_plan_graph.py tests/test_trainer_graphed.py
EOF
)

# Wheels the image lacks, carried in .whl/ (a failure here is reported by the smoke step).
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$LOGS/wheels.log" 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The project itself, importable from this checkout (no build, no network).
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

needs_mpi() {   # true when `from mpi4py import MPI` works; else say why, exit status 3
  if $PY -c "from mpi4py import MPI" 2>/dev/null; then return 0; fi
  echo "skipped: mpi4py cannot load an MPI library here (carry the mpich wheel in .whl/)"
  return 3
}
export -f needs_mpi
export PY
# A dry run's cuda steps run on the fake GPU of tests/fake_cupy.py (the cuda code paths, the
# kernels on the emulator): its stub first on PYTHONPATH for that command.
export FAKE_GPU="env PYTHONPATH=$ROOT/tests/stubs/fake_gpu:$PYTHONPATH"

: > "$WORK/steps.tsv"
while IFS='|' read -r name seconds command dry; do
  name=$(echo "$name" | xargs); seconds=$(echo "$seconds" | xargs)
  [ -z "$name" ] && continue
  [ "$DRY" = 1 ] && command=$dry
  command=$(echo "$command" | sed 's/^ *//; s/ *$//')
  STEP_DIR=$LOGS/$name
  mkdir -p "$STEP_DIR"
  export STEP_DIR
  # A dry run on a shared CPU gets three times the time: it tests the steps, not their speed.
  [ "$DRY" = 1 ] && seconds=$(( 3 * seconds ))
  left=$(( TOTAL_SECONDS * (1 + 2 * DRY) - ($(date +%s) - START) ))
  if [ "$command" = "-" ]; then
    printf '%s\tno-dry-run\t0\t%s\n' "$name" "$seconds" >> "$WORK/steps.tsv"; continue
  fi
  if [ "$left" -lt "$seconds" ]; then
    printf '%s\tskipped (%s s left of the session, needs %s)\t0\t%s\n' "$name" "$left" \
      "$seconds" "$seconds" >> "$WORK/steps.tsv"
    continue
  fi
  t0=$(date +%s)
  timeout -k 5 "$seconds" bash -c "$command" > "$LOGS/$name.log" 2>&1
  status=$?
  took=$(( $(date +%s) - t0 ))
  case $status in
    0) verdict=ok ;;
    3) verdict="skipped ($(tail -1 "$LOGS/$name.log"))" ;;
    124|137) verdict="TIMEOUT after $seconds s" ;;
    *) verdict="FAILED (exit $status)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$verdict" "$took" "$seconds" >> "$WORK/steps.tsv"
  echo "== $name: $verdict, $took s" >&2
done <<< "$STEPS"

# Three files back: the summary, the figures, every log in one tarball.
$PY benchmarks/gpu_session_summary.py "$WORK/steps.tsv" "$LOGS" "$OUT" $([ "$DRY" = 1 ] && echo --dry-run) \
  > "$WORK/table.txt" 2> "$LOGS/summary.log"
summary_status=$?
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs steps.tsv
cat "$WORK/table.txt"
rm -rf "$WORK"
[ $summary_status = 0 ] || { echo "the summary failed: see summary.log in logs.tar.gz" >&2; exit 1; }
