#!/usr/bin/env bash
# Everything a session with a lent GPU runs, in one call of the device tool, writing what it
# found under $OUT (or ./gpu-results): the cuda test suite, the gradient checks on cuda, the
# ceilings, every GPU benchmark and a short end-to-end training run. Each step's log is its own
# file; a failing step does not stop the others; SUMMARY.txt lists each step's exit status.
#
#   (here)   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#              --platform manylinux2014_x86_64 -d .whl tensorboardX   (a wheel the image lacks)
#   (device) bash benchmarks/gpu_session.sh          with .whl carried
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1
summary="$OUT/SUMMARY.txt"
: > "$summary"
step() {   # step NAME COMMAND...: run, log to $OUT/NAME.log, note the status
  local name=$1; shift
  local start=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  echo "$name: exit $status, $(( $(date +%s) - start )) s" | tee -a "$summary"
}
{ date -u; nvidia-smi; python3 -c "import cupy; print('cupy', cupy.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
step pytest_cuda python3 -m pytest -m cuda -q -n 8 -p no:cacheprovider
step gradcheck_cuda python3 -m cupycnn.gradcheck --device cuda
step ceilings python3 benchmarks/gpu_ceilings.py
step conv2d python3 benchmarks/conv2d.py --device cuda
step augment python3 benchmarks/augment.py --device cuda
step resnet18_step python3 benchmarks/resnet18_step.py --device cuda --batch 128
step distributed_gpu_check python3 benchmarks/distributed_gpu_check.py
step digits_cuda python3 benchmarks/digits.py --device cuda
step train_synthetic python3 examples/train_cifar.py --dataset synthetic --device cuda \
  --epochs 3 --log-dir "$OUT/run_synthetic" --no-progress
cat "$summary"
