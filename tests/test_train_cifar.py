"""examples/train_cifar.py and train_folder.py end to end: a few epochs on real data write a
checkpoint, the logs and the three pictures; bad arguments and missing data are clear errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CIFAR = ROOT / "examples" / "train_cifar.py"
TRAIN_FOLDER = ROOT / "examples" / "train_folder.py"


def run(script, *args, cwd, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CUPYCNN_DEVICE", None)
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_outputs(log_dir, epochs, validation=True):
    for name in ("last.h5", "log.csv", "curves.png", "confusion_matrix.png",
                 "predictions.png", "summary.json") + (("best.h5",) if validation else ()):
        assert (log_dir / name).exists(), name
    assert list((log_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len((log_dir / "log.csv").read_text(encoding="utf-8").splitlines()) == epochs + 1
    for picture in ("curves.png", "confusion_matrix.png", "predictions.png"):
        assert (log_dir / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((log_dir / "summary.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("device, epochs, floor", [("numpy", 3, 0.9), ("sim", 3, 0.9)])
def test_digits_run_writes_checkpoint_logs_and_pictures(tmp_path, device, epochs, floor):
    out = run(TRAIN_CIFAR, "--dataset", "digits", "--epochs", str(epochs), "--device", device,
              "--log-dir", "run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = assert_outputs(tmp_path / "run", epochs, validation=False)   # digits: all training
    assert summary["device"] == device and summary["epochs"] == epochs
    assert summary["test_accuracy"] > floor                      # 10 classes: chance is 0.1
    assert "test: loss" in out.stdout


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    common = ("--dataset", "digits", "--device", "numpy", "--batch-size", "256", "--log-dir",
              "run", "--no-progress", "--model", "simple_cnn")
    first = run(TRAIN_CIFAR, *common, "--epochs", "2", "--epochs-per-run", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run(TRAIN_CIFAR, *common, "--epochs", "2", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from run/last.h5 after epoch 1" in second.stdout
    assert "epoch 2/2" in second.stdout and "epoch 1/2" not in second.stdout


def test_cifar10_offline_says_which_file_to_put_where(tmp_path):
    out = run(TRAIN_CIFAR, "--device", "numpy", "--data-dir", "nowhere", cwd=tmp_path,
              timeout=120)
    assert out.returncode == 2
    assert "cifar-10-python.tar.gz" in out.stderr and "--dataset digits" in out.stderr
    assert "Traceback" not in out.stderr


def test_cifar10_from_the_official_archive(tmp_path):
    """A small archive in the official format under --data-dir trains like the real one."""
    from cifar_archives import extracted_python_archive
    extracted_python_archive(tmp_path / "data", train_per_batch=16, test=16)
    out = run(TRAIN_CIFAR, "--device", "numpy", "--data-dir", "data", "--model", "simple_cnn",
              "--epochs", "1", "--batch-size", "24", "--log-dir", "run", "--no-progress",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cifar10: 72 training, 8 validation, 16 test images 32x32x3, 10 classes" \
        in out.stdout
    assert_outputs(tmp_path / "run", 1)


def test_bad_arguments_are_one_clear_line(tmp_path):
    out = run(TRAIN_CIFAR, "--dataset", "digits", "--batch-size", "100000", "--device",
              "numpy", "--epochs", "1", cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "smaller than one batch" in out.stderr
    out = run(TRAIN_CIFAR, "--dataset", "mnist", cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "unknown dataset 'mnist'" in out.stderr


def _photo_folder(root):
    """Two classes of real photos (scikit-image's and scikit-learn's), a few crops of each."""
    from PIL import Image
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images
    photos = {"animal": [skdata.chelsea(), skdata.cat() if hasattr(skdata, "cat") else
                         skdata.chelsea()[::-1]],
              "scene": list(load_sample_images().images)}
    rng = np.random.default_rng(0)
    for cls, images in photos.items():
        (root / cls).mkdir(parents=True)
        for i in range(12):
            image = images[i % len(images)]
            h, w = image.shape[:2]
            top, left = rng.integers(0, h // 3), rng.integers(0, w // 3)
            crop = image[top:top + 2 * h // 3, left:left + 2 * w // 3]
            Image.fromarray(crop).save(root / cls / f"{cls}_{i}.jpg")


def test_train_folder_on_real_photos(tmp_path):
    _photo_folder(tmp_path / "photos")
    out = run(TRAIN_FOLDER, "--dataset", "folder:photos", "--image-size", "32", "--crop",
              "--model", "simple_cnn", "--epochs", "2", "--batch-size", "8", "--device",
              "numpy", "--log-dir", "run", "--no-progress", "--val-fraction", "0.2",
              "--l1", "1e-5", "--penalize", "head", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 classes" in out.stdout
    assert_outputs(tmp_path / "run", 2)
    assert list((tmp_path / "data" / "cache").glob("photos-all-32-crop.h5"))


def test_grid_search_picks_by_validation(tmp_path):
    """Digits' recipe holds no validation set out: the grid holds one out by itself (before,
    it printed a table of nan%, marked a "best" anyway and drew a blank heatmap)."""
    script = ROOT / "examples" / "grid_search.py"
    out = run(script, "--lr", "0.003", "0.0003", "--weight-decay", "0", "1e-4", "--log-dir",
              "grid", "--", "--dataset", "digits", "--epochs", "1", "--batch-size", "256",
              "--device", "numpy", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "holding out --val-fraction 0.15 to compare the pairs on" in out.stdout
    assert "nan" not in out.stdout.split("weight decay")[-1]
    assert "1222 training, 216 validation" in out.stdout
    rows = (tmp_path / "grid" / "grid.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "lr,weight_decay,best_val_accuracy,test_accuracy" and len(rows) == 5
    assert out.stdout.count("<- best by validation") == 1
    assert (tmp_path / "grid" / "grid.png").read_bytes()[:4] == b"\x89PNG"
    best_val = max(float(r.split(",")[2]) for r in rows[1:])
    marked = next(l for l in out.stdout.splitlines() if "<- best" in l)
    assert float(marked.split()[2].rstrip("%")) == pytest.approx(100 * best_val, abs=0.006)


def test_grid_search_refuses_to_pick_without_validation(tmp_path):
    out = run(ROOT / "examples" / "grid_search.py", "--lr", "0.1", "--weight-decay", "0", "--",
              "--dataset", "digits", "--val-fraction", "0", cwd=tmp_path)
    assert out.returncode == 2
    assert "--val-fraction 0 leaves no validation set" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_transfer_learning_from_torchvision_weights(tmp_path):
    """A torchvision-format .pth (written by torch) loads into the model; the new head keeps
    its initialisation; with --freeze-backbone only the head changes."""
    torch = pytest.importorskip("torch")
    import cupycnn
    from cupycnn import models
    _photo_folder(tmp_path / "photos")
    cupycnn.use("numpy")
    donor = models.resnet18(num_classes=1000)            # torchvision's ImageNet layout
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in donor.state_dict().items()},
               tmp_path / "resnet18.pth")
    out = run(TRAIN_FOLDER, "--dataset", "folder:photos", "--image-size", "32", "--crop",
              "--model", "resnet18", "--epochs", "1", "--batch-size", "8", "--device", "numpy",
              "--log-dir", "run", "--no-progress", "--val-fraction", "0.2", "--pretrained",
              "resnet18.pth", "--freeze-backbone", "--stem", "imagenet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loaded 120 tensors from resnet18.pth; kept the new initialisation of fc.weight " \
           "(1000, 512) -> (2, 512), fc.bias (1000,) -> (2,)" in out.stdout
    from cupycnn.checkpoint import load_checkpoint
    trained = load_checkpoint(tmp_path / "run" / "last.h5").model_state
    donor_state = donor.state_dict()
    np.testing.assert_array_equal(trained["layer3.0.conv1.weight"],
                                  donor_state["layer3.0.conv1.weight"])


@pytest.mark.parametrize("device", ["numpy", "sim"])
def test_two_ranks_train_and_report_the_global_test_accuracy(tmp_path, device):
    """mpiexec -n 2 train_cifar.py --dataset digits: the test accuracy it prints (all-reduced
    over the two ranks' shards) is what one process computes from the saved checkpoint."""
    import re
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("CUPYCNN_DEVICE", None)
    out = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(TRAIN_CIFAR),
                          "--dataset", "digits", "--epochs", "2" if device == "numpy" else "1",
                          "--device", device, "--log-dir", "run", "--no-progress",
                          "--batch-size", "128"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 rank(s) (mpi), batch 128 (64 per rank)" in out.stdout
    assert out.stdout.count("test: loss") == 1                     # rank 0 alone prints
    printed = float(re.search(r"accuracy ([0-9.]+)% \(359 images\)", out.stdout).group(1))

    import cupycnn
    from cupycnn import data, models
    from cupycnn.checkpoint import load_checkpoint
    from cupycnn.losses import SoftmaxCrossEntropy
    from cupycnn.optim import SGD
    from cupycnn.train import Trainer
    cupycnn.use(device)
    c = load_checkpoint(tmp_path / "run" / "last.h5")
    model = models.build(c.config["model"], **c.config["model_kwargs"])
    c.restore(model)
    test = data.Loader(data.Digits(train=False, seed=0), 256, shuffle=False,
                       transform=data.Normalize(c.normalization["mean"], c.normalization["std"]))
    single = Trainer(model, SGD(model.parameters(), lr=0.0), SoftmaxCrossEntropy(),
                     progress=False).evaluate(test)
    assert single["count"] == 359
    assert round(100 * single["accuracy"], 2) == printed
