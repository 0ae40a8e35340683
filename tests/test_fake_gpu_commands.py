"""The commands a GPU user runs, run on the cuda device's code paths without a GPU: each process
starts with tests/stubs/fake_gpu first on PYTHONPATH, so `import cupy` finds tests/fake_cupy.py's
stand-in (CuPy 14.2's API, its streams, memory pool and graphs; the kernels run by the emulator).

One test, in steps:
- The training command on cuda, recorded and replayed as a CUDA graph at bf16, trains bit for bit
  as on sim (the same kernels: what differs is the cuda path around them, the loader's device
  copy and prefetch stream, the graph's capture and replays, the checkpoint's reads from the
  device), and writes what it writes on sim.
- It resumes from its checkpoint on cuda; `cupycnn evaluate` on cuda gives the test figures the
  training printed; `cupycnn predict` on cuda classifies image files as on numpy.
Data-parallel training on two fake GPUs under mpiexec (fake NCCL, sync-BN, a CUDA graph) is the
MPI path's on sim, bit for bit; the README's GPU command (`mpirun -n 2 python
examples/train_cifar.py`: CIFAR-10, ResNet-18) runs on two fake GPUs. And `cupycnn gradcheck --device cuda`: the whole suite passes.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_GPU = Path(__file__).resolve().parent / "stubs" / "fake_gpu"
TRAIN_CIFAR = ROOT / "examples" / "train_cifar.py"
COLORS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def run(*args, cwd, fake_gpu=True, launcher=(), timeout=600):
    """`python ARGS` (under `launcher`, e.g. mpiexec -n 2), on the fake GPU if asked: stdout."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUPYCNN_FAKE_GPU_SEED="7")
    env.pop("CUPYCNN_DEVICE", None)
    if fake_gpu:
        env["PYTHONPATH"] = os.pathsep.join([str(FAKE_GPU), env.get("PYTHONPATH", "")])
    out = subprocess.run([*map(str, launcher), sys.executable, *map(str, args)], cwd=cwd,
                         capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def _folder(root, per_class=16):
    """Three classes of 8x8 PNGs, each a noisy patch of its colour."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, color in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(color, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")


def _training(device, cwd, *extra):
    return run(TRAIN_CIFAR, "--dataset", "folder:images", "--image-size", "8", "--model",
               "simple_cnn", "--batch-size", "8", "--val-fraction", "0.25", "--device", device,
               "--precision", "bf16", "--cuda-graph", "--log-dir", f"run-{device}",
               "--no-progress", *extra, cwd=cwd, fake_gpu=device == "cuda")


def _figures(log_dir):
    """log.csv without its timings: every epoch's losses, accuracies and learning rates."""
    with open(log_dir / "log.csv", newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if "second" not in k and "time" not in k}
                for row in csv.DictReader(f)]


def _weights(path):
    found = {}

    def keep(name, item):
        if isinstance(item, h5py.Dataset) and item.dtype.kind == "f":
            found[name] = item[()]
    with h5py.File(path, "r") as f:
        f.visititems(keep)
    return found


def test_train_resume_evaluate_and_predict_on_cuda(tmp_path):
    """(One test: its steps build on each other, and under xdist a module fixture would train
    once per worker.)"""
    cwd = tmp_path
    _folder(cwd / "images")
    outputs = {device: _training(device, cwd, "--epochs", "2") for device in ("cuda", "sim")}

    # The training: on cuda, with a graph at bf16, sim's bit for bit.
    cuda, sim = (json.loads((cwd / f"run-{d}" / "summary.json").read_text(encoding="utf-8"))
                 for d in ("cuda", "sim"))
    assert (cuda["device"], cuda["precision"], sim["device"]) == ("cuda", "bf16", "sim")
    assert "device cuda at bf16" in outputs["cuda"]
    assert (cuda["test_loss"], cuda["test_accuracy"]) == (sim["test_loss"], sim["test_accuracy"])
    assert _figures(cwd / "run-cuda") == _figures(cwd / "run-sim")
    assert len(_figures(cwd / "run-cuda")) == 2
    w_cuda, w_sim = _weights(cwd / "run-cuda" / "last.h5"), _weights(cwd / "run-sim" / "last.h5")
    assert w_cuda.keys() == w_sim.keys() and len(w_cuda) > 4
    for name in w_cuda:
        np.testing.assert_array_equal(w_cuda[name], w_sim[name], err_msg=name)
    for picture in ("curves.png", "confusion_matrix.png", "predictions.png"):
        assert (cwd / "run-cuda" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # evaluate: the figures the training printed for its test set
    evaluated = run("-m", "cupycnn", "evaluate", "--checkpoint", "run-cuda/last.h5", "--dataset",
                    "folder:images", "--image-size", "8", "--device", "cuda", cwd=cwd)
    assert f"accuracy {100 * cuda['test_accuracy']:.2f}%" in evaluated, evaluated

    # predict: the same classes and probabilities as the numpy device's
    images = [f"images/{name}/{name}_0.png" for name in COLORS]
    on_cuda = run("-m", "cupycnn", "predict", "--checkpoint", "run-cuda/last.h5", "--top-k", "3",
                  "--device", "cuda", *images, cwd=cwd)
    on_numpy = run("-m", "cupycnn", "predict", "--checkpoint", "run-cuda/last.h5", "--top-k",
                   "3", "--device", "numpy", *images, cwd=cwd, fake_gpu=False)
    assert [line.split()[:2] for line in on_cuda.splitlines()] == \
        [line.split()[:2] for line in on_numpy.splitlines()]

    # resume: a third epoch from the checkpoint, still on the graph
    resumed = _training("cuda", cwd, "--epochs", "3", "--resume")
    assert "resumed from run-cuda/last.h5 after epoch 2" in resumed
    assert "epoch 3/3" in resumed and "epoch 2/3" not in resumed
    assert len(_figures(cwd / "run-cuda")) == 3


def test_data_parallel_training_on_two_gpus_is_sim_bit_for_bit(tmp_path):
    """`mpirun -n 2 ... --device cuda`: two fake GPUs, the gradients and synchronised batchnorm's
    statistics all-reduced by (fake) NCCL on its own stream, the whole step a CUDA graph at bf16
    with the collectives captured in it; the MPI path on sim gives the same bits."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    _folder(tmp_path / "images")
    for device in ("cuda", "sim"):
        out = run(TRAIN_CIFAR, "--dataset", "folder:images",
                  "--image-size", "8", "--model", "simple_cnn", "--batch-size", "8",
                  "--val-fraction", "0.25", "--device", device, "--precision", "bf16",
                  "--cuda-graph", "--sync-bn", "--epochs", "2", "--log-dir", f"run-{device}",
                  "--no-progress", cwd=tmp_path, fake_gpu=device == "cuda",
                  launcher=(mpiexec, "-n", "2"))
        assert f"device {device} at bf16, 2 rank(s) ({'nccl' if device == 'cuda' else 'mpi'})" \
            in out, out
    assert _figures(tmp_path / "run-cuda") == _figures(tmp_path / "run-sim")
    w_cuda, w_sim = (_weights(tmp_path / f"run-{d}" / "last.h5") for d in ("cuda", "sim"))
    assert w_cuda.keys() == w_sim.keys() and len(w_cuda) > 4
    for name in w_cuda:
        np.testing.assert_array_equal(w_cuda[name], w_sim[name], err_msg=name)


def test_the_readme_gpu_command_on_two_fake_gpus(tmp_path):
    """`mpirun -n 2 python examples/train_cifar.py`, the recipe as it stands (CIFAR-10 from an
    archive in the official format under --data-dir, ResNet-18, SGD with a one-cycle rate) on
    two fake GPUs with NCCL: it trains, evaluates and writes its files on rank 0."""
    from cifar_archives import extracted_python_archive
    extracted_python_archive(tmp_path / "data", train_per_batch=4, test=8)
    out = run(TRAIN_CIFAR, "--data-dir", "data", "--epochs", "1", "--batch-size", "8",
              "--no-progress", "--log-dir", "run", cwd=tmp_path,
              launcher=(Path(sys.executable).parent / "mpiexec", "-n", "2"))
    assert "cifar10: 18 training, 2 validation, 8 test images 32x32x3, 10 classes; resnet18" \
        in out, out
    assert "device cuda at fp32, 2 rank(s) (nccl)" in out and "test: loss" in out, out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert (summary["device"], summary["ranks"], summary["model"]) == ("cuda", 2, "resnet18")
    assert len(_figures(tmp_path / "run")) == 1


def test_the_gradient_check_suite_on_cuda(tmp_path):
    """`cupycnn gradcheck --device cuda`: every case of the suite, the analytic gradients from
    the kernels launched through CuPy's API (the fake's), against finite differences."""
    out = run("-m", "cupycnn", "gradcheck", "--device", "cuda", cwd=tmp_path)
    last = out.strip().splitlines()[-1]
    cases = int(last.split()[0])
    assert last == f"{cases} of {cases} cases passed" and cases >= 30, out[-2000:]
